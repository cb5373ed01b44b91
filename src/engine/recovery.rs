//! A start's reads: the write-side state restored from the last snapshot and the log,
//! the projection store opened (once per process), projection snapshots adopted, and the
//! log's records read back by ranges.

use super::snapshot;
use super::types::{panic_text, EngineError, StartReport};
use crate::domain::state::WindowPolicy;
use crate::domain::{evolve_identified, record_identity, Record, State};
use crate::log::{LogError, ReadLog};
use crate::projection::{ProjectionName, Projections};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Projection stores open in this process, by directory: the ones a stopped engine's
/// handles still hold.
static OPEN_STORES: Mutex<Vec<(PathBuf, std::sync::Weak<Projections>)>> = Mutex::new(Vec::new());

/// The projection store in `dir`. A handle of an engine this process stopped may still hold
/// it open (a client's connection, a test's variable), and sled lets one process open a
/// store once: such a store is taken over as it is. That is safe because the caller owns
/// the data directory, and an engine's threads hold that lock until they end, so nothing
/// writes the store any more; reopening it would read the same rows.
pub(super) fn open_projections(
    dir: &std::path::Path,
    options: &crate::projection::StoreOptions,
) -> Result<Arc<Projections>, EngineError> {
    let mut open = OPEN_STORES.lock().expect("open stores lock");
    open.retain(|(_, store)| store.strong_count() > 0);
    if let Some(store) = open
        .iter()
        .find(|(at, _)| at == dir)
        .and_then(|(_, store)| store.upgrade())
    {
        return Ok(store);
    }
    let store = Arc::new(Projections::open_with(dir, options)?);
    open.push((dir.to_path_buf(), Arc::downgrade(&store)));
    Ok(store)
}

/// The write-side state: the snapshot if it belongs to this log, then the records after it.
pub(super) fn restore(
    data_dir: &std::path::Path,
    reader: &dyn ReadLog,
    head_seq: u64,
    window: WindowPolicy,
) -> Result<(State, StartReport), EngineError> {
    let mut report = StartReport {
        head_seq,
        ..StartReport::default()
    };
    let mut state = match snapshot::load(data_dir) {
        Ok(Some(loaded)) if loaded.state.head_seq > head_seq => {
            return Err(EngineError::LogBehind {
                what: format!("the write-state snapshot {}", snapshot::path(data_dir).display()),
                folded: loaded.state.head_seq,
                log_head: head_seq,
                first_lost: head_seq + 1,
            })
        }
        Ok(Some(loaded)) if reader.hash_at(loaded.state.head_seq)? == Some(loaded.hash) => {
            report.snapshot_seq = Some(loaded.state.head_seq);
            loaded.state
        }
        Ok(Some(loaded)) => {
            // The same sequence number with another chain hash: another log's snapshot, or a
            // log rewritten under it. The log is the truth; the snapshot is not used.
            tracing::error!(
                seq = loaded.state.head_seq,
                "the write-state snapshot disagrees with the log's chain hash at its sequence number; \
                 not using it, folding the log from the start"
            );
            State::default()
        }
        Ok(None) => State::default(),
        Err(error @ snapshot::SnapshotError::OtherVersion { .. }) => {
            tracing::info!(%error, "folding the log from the start");
            State::default()
        }
        Err(error) => {
            tracing::error!(%error, "not using the write-state snapshot; folding the log from the start");
            State::default()
        }
    };
    // The window is a setting: a snapshot taken under another one keeps the identities it
    // let go, and the next record evicts under this one.
    state.idempotency.policy = window;
    // Opening the log has just checked every hash of the chain: read it back trusted. A
    // record that breaks an invariant of the fold (its "before" balances disagree with the
    // state, say) is a log this build cannot serve: refused with its sequence number, not
    // a panic of the start-up.
    let mut at = state.head_seq;
    let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), EngineError> {
        // Decoded, and their identities hashed, on a second thread while this one folds.
        let identified = |records: Vec<Record>| {
            records
                .into_iter()
                .map(|record| {
                    let identity = record_identity(&record);
                    (record, identity)
                })
                .collect::<Vec<_>>()
        };
        super::jobs::fold_range_prepared(reader, state.head_seq + 1, head_seq, identified, |records| {
            for (record, identity) in records {
                at = record.seq;
                evolve_identified(&mut state, &record, identity.as_ref());
                report.folded += 1;
            }
            Ok::<(), EngineError>(())
        })
    }));
    match folded {
        Ok(result) => result?,
        Err(panic) => {
            return Err(EngineError::Unfoldable {
                seq: at,
                reason: panic_text(panic.as_ref()),
            })
        }
    }
    assert_eq!(state.head_seq, head_seq, "restored state reaches the log head");
    Ok((state, report))
}

/// A projection that starts empty (its store was lost) begins from its latest snapshot
/// file, when that snapshot belongs to this log, instead of from sequence 1.
pub(super) fn adopt_projection_snapshots(
    projections: &Projections,
    reader: &dyn ReadLog,
    dir: &std::path::Path,
) -> Result<Vec<(ProjectionName, u64)>, EngineError> {
    let head = reader.head().seq;
    let mut adopted = Vec::new();
    for name in ProjectionName::ALL {
        if projections.checkpoint(name)? != 0 || head == 0 {
            continue;
        }
        let Some(info) = crate::projection::latest_projection_snapshot(dir, name).filter(|s| s.seq <= head) else {
            continue;
        };
        let Some(log_hash) = reader.hash_at(info.seq)? else {
            continue;
        };
        match projections.begin_rebuild_from_snapshot(&info, log_hash) {
            Ok(rebuild) => {
                projections.adopt_rebuild(rebuild)?;
                adopted.push((name, info.seq));
                tracing::info!(
                    projection = name.name(),
                    seq = info.seq,
                    "projection restored from its snapshot file"
                );
            }
            Err(error) => tracing::warn!(%error, "projection snapshot not usable; folding from the start"),
        }
    }
    Ok(adopted)
}

/// Records apart that one pass over the log still reads rather than seeking anew.
const REPLAY_READ_GAP_RECORDS: u64 = 4096;

/// The records of each range, in the ranges' order. Ranges are visited in sequence order;
/// one iterator serves every range that starts within [`REPLAY_READ_GAP_RECORDS`] of where
/// it stands.
pub(super) fn read_ranges(reader: &dyn ReadLog, ranges: &[(u64, u64)]) -> Result<Vec<Vec<Record>>, LogError> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i]);
    let mut out: Vec<Vec<Record>> = vec![Vec::new(); ranges.len()];
    let mut at = 0;
    while at < order.len() {
        // A run of ranges close enough to read in one pass.
        let start = ranges[order[at]].0;
        let mut end = ranges[order[at]].1;
        let mut stop = at + 1;
        while stop < order.len() && ranges[order[stop]].0 <= end.saturating_add(REPLAY_READ_GAP_RECORDS) {
            end = end.max(ranges[order[stop]].1);
            stop += 1;
        }
        let mut records = Vec::new();
        for record in reader.iter_range_trusted(start, end) {
            records.push(record?);
        }
        for &i in &order[at..stop] {
            let (first, last) = ranges[i];
            let from = (first - start) as usize;
            let to = (last - start) as usize;
            assert!(to < records.len(), "committed records are readable");
            out[i] = records[from..=to].to_vec();
        }
        at = stop;
    }
    Ok(out)
}

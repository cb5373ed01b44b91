//! The jobs behind long-running operations, also run by the offline CLI: rebuild a
//! projection, snapshot the projections, replay a window to a file.

use super::operations::{JobControl, JobError};
use crate::domain::Record;
use crate::log::{LogError, ReadLog};
use crate::projection::{latest_projection_snapshot, ProjectionName, Projections, RebuildOutcome};
use crate::query::{json, EventFilter, Replay, Window};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Records folded per step of a rebuild; also how often it checks for cancellation.
pub const REBUILD_CHUNK: u64 = 65_536;

/// Chain hash of the record at `seq`, which must be in the log.
fn hash_at(reader: &dyn ReadLog, seq: u64) -> Result<[u8; 32], JobError> {
    reader
        .hash_at(seq)?
        .ok_or_else(|| JobError::Failed(format!("no record {seq} in the log")))
}

/// Folds `name` from the start (or from its latest snapshot in `snapshot_dir`) into a fresh
/// generation, brings it and the live projection to the same checkpoint while the projector
/// waits on `apply_lock`, compares their digests, and swaps the rebuilt one in unless
/// `verify_only`.
pub fn rebuild(
    projections: &Projections,
    reader: &dyn ReadLog,
    apply_lock: &Mutex<()>,
    name: ProjectionName,
    snapshot_dir: Option<&Path>,
    verify_only: bool,
    control: &JobControl,
) -> Result<RebuildOutcome, JobError> {
    let head = reader.head().seq;
    let snapshot = snapshot_dir
        .and_then(|dir| latest_projection_snapshot(dir, name))
        .filter(|s| s.seq <= head);
    let rebuild = match &snapshot {
        Some(info) => projections.begin_rebuild_from_snapshot(info, hash_at(reader, info.seq)?)?,
        None => projections.begin_rebuild(name)?,
    };
    let start = rebuild.checkpoint()?;
    let fold_to = |target: u64| -> Result<(), JobError> {
        fold_range(reader, rebuild.checkpoint()? + 1, target, |records| {
            control.check()?;
            rebuild.apply(records)?;
            let to = records.last().map_or(start, |r| r.seq);
            control.set_progress(to - start, head.max(to) - start);
            Ok(())
        })
    };
    if let Err(error) = fold_to(head) {
        projections.abandon_rebuild(rebuild)?;
        return Err(error);
    }
    let _still = apply_lock.lock().expect("apply lock");
    let live = projections.checkpoint(name)?;
    let rebuilt = rebuild.checkpoint()?;
    if rebuilt < live {
        fold_to(live)?;
    } else if live < rebuilt {
        let records = reader.iter_range(live + 1, rebuilt).collect::<Result<Vec<_>, _>>()?;
        projections.apply(&records)?;
    }
    Ok(projections.finish_rebuild(rebuild, !verify_only)?)
}

/// Reads records `from..=to` in chunks of [`REBUILD_CHUNK`] on a second thread while `apply`
/// folds the chunk before on this one: decoding a record and folding it each take about a
/// microsecond of a core, so on two cores a rebuild (or a start's fold of the write state)
/// goes at the pace of the slower, not of their sum. Two chunks at most wait between them.
/// The chain was checked when the log was opened (`tally verify` checks it again), so the
/// records are read back trusted. An error of either side ends both; if no second thread
/// can be started, this one reads too.
pub fn fold_range<E: From<LogError>>(
    reader: &dyn ReadLog,
    from: u64,
    to: u64,
    mut apply: impl FnMut(&[Record]) -> Result<(), E>,
) -> Result<(), E> {
    fold_range_prepared(reader, from, to, |records| records, |records| apply(&records))
}

/// [`fold_range`], with `prepare` run on each chunk on the reading thread (work the fold
/// would otherwise do on its own: the identities a start's fold of the write state needs).
pub fn fold_range_prepared<C: Send, E: From<LogError>>(
    reader: &dyn ReadLog,
    from: u64,
    to: u64,
    prepare: impl Fn(Vec<Record>) -> C + Sync,
    mut apply: impl FnMut(C) -> Result<(), E>,
) -> Result<(), E> {
    if from > to {
        return Ok(());
    }
    let prepare = &prepare;
    let chunk_of = move |at: u64| {
        let end = to.min(at.saturating_add(REBUILD_CHUNK - 1));
        (
            end,
            reader
                .iter_range_trusted(at, end)
                .collect::<Result<Vec<_>, _>>()
                .map(prepare),
        )
    };
    std::thread::scope(|scope| {
        let (send, chunks) = std::sync::mpsc::sync_channel::<Result<C, LogError>>(2);
        let reading = std::thread::Builder::new()
            .name("tally-fold-read".into())
            .spawn_scoped(scope, move || {
                let mut at = from;
                while at <= to {
                    let (end, chunk) = chunk_of(at);
                    let failed = chunk.is_err();
                    // A closed channel: the folding side stopped, with an error of its own.
                    if send.send(chunk).is_err() || failed {
                        return;
                    }
                    at = end + 1;
                }
            });
        if reading.is_err() {
            let mut at = from;
            while at <= to {
                let (end, chunk) = chunk_of(at);
                apply(chunk?)?;
                at = end + 1;
            }
            return Ok(());
        }
        for chunk in chunks {
            apply(chunk?)?;
        }
        Ok(())
    })
}

/// Writes a snapshot file of every projection, each at its own checkpoint.
pub fn snapshot_projections(
    projections: &Projections,
    reader: &dyn ReadLog,
    apply_lock: &Mutex<()>,
    dir: &Path,
) -> Result<String, JobError> {
    let _still = apply_lock.lock().expect("apply lock");
    let mut written = Vec::new();
    for name in ProjectionName::ALL {
        let seq = projections.checkpoint(name)?;
        let info = projections.write_projection_snapshot(name, dir, hash_at(reader, seq)?)?;
        written.push(format!("{} at {} ({} rows)", name.name(), info.seq, info.rows));
    }
    Ok(format!("snapshots written: {}", written.join(", ")))
}

/// Writes the window's matching events to `path` as JSON lines; returns how many.
pub fn replay_to_file(
    reader: &dyn ReadLog,
    window: Window,
    filter: EventFilter,
    max_events: u64,
    path: &Path,
    control: &JobControl,
) -> Result<u64, JobError> {
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::new(file);
    let mut replay = Replay::new(reader, window, filter, max_events);
    while let Some(record) = replay.next_event()? {
        writeln!(out, "{}", json::to_json_line(&record))?;
        let progress = replay.progress();
        if progress.events_sent.is_multiple_of(1024) {
            control.check()?;
            control.set_progress(progress.percent as u64, 100);
        }
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    control.set_progress(100, 100);
    Ok(replay.progress().events_sent)
}

/// Why an export cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The file name is not one plain name: the caller's mistake.
    #[error("{0}")]
    Name(String),
    /// The tenant's directory cannot be made: the server's.
    #[error("{0}")]
    Storage(String),
}

/// Where one tenant's export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportTarget {
    /// The tenant's directory: `<exports>/<tenant_dir_name(tenant)>`.
    pub dir: PathBuf,
    /// The file in it.
    pub path: PathBuf,
    /// The file relative to the data directory (`exports/<tenant>/<file_name>`): what a
    /// caller is told, never the server's absolute path.
    pub shown: String,
}

/// The name of a tenant's directory of exports, which no tenant id can escape or share:
/// ASCII letters, digits, `-` and `_` as they are, every other byte as `%XX` (`.` too, so
/// `..` is a plain name, and `%` itself, so two ids never meet in one name).
pub fn tenant_dir_name(tenant: &str) -> String {
    let mut name = String::with_capacity(tenant.len());
    for byte in tenant.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name
}

/// Where `tenant`'s export `file_name` goes under `exports` (the data directory's
/// `exports/`): a directory per tenant, so one tenant's export never replaces another's.
pub fn export_target(exports: &Path, tenant: &str, file_name: &str) -> Result<ExportTarget, ExportError> {
    assert!(!tenant.is_empty(), "an export belongs to a tenant");
    let dir_name = tenant_dir_name(tenant);
    let dir = exports.join(&dir_name);
    let path = export_path(&dir, file_name).map_err(ExportError::Name)?;
    Ok(ExportTarget {
        shown: format!("exports/{dir_name}/{file_name}"),
        dir,
        path,
    })
}

/// A file name for an export: one plain name, no directories.
pub fn export_path(exports: &Path, file_name: &str) -> Result<PathBuf, String> {
    let valid = !file_name.is_empty()
        && file_name.len() <= 128
        && file_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !file_name.starts_with('.');
    if !valid {
        return Err(format!(
            "{} must be 1 to 128 of A-Z a-z 0-9 - _ . and not start with a dot",
            crate::domain::quote(file_name)
        ));
    }
    Ok(exports.join(file_name))
}

/// A rebuild's outcome in words.
pub fn describe(outcome: &RebuildOutcome) -> String {
    let verdict = if outcome.matched() {
        "matches the live projection"
    } else {
        "DIFFERS from the live projection"
    };
    let action = if outcome.swapped { "swapped in" } else { "verified only" };
    let start = outcome
        .from_snapshot
        .map_or("from the start".to_string(), |s| format!("from the snapshot at {s}"));
    let difference = outcome
        .first_difference
        .as_ref()
        .map_or(String::new(), |d| format!(" ({d}; left is live, right rebuilt)"));
    format!(
        "{}: rebuilt {start} to sequence {}, digest {} {verdict} ({}) at the same sequence{difference}; {action}",
        outcome.projection.name(),
        outcome.seq,
        crate::hex::hex(&outcome.rebuilt_digest),
        crate::hex::hex(&outcome.live_digest),
    )
}

//! The engine: the bounded inbox, the single-writer sequencer with group commit, the
//! projector and the expiry sweeper, started from a data directory.
//!
//! Invariant: only the sequencer thread changes the write-side state or appends to the
//! log. Everything else — the API, the sweeper — submits commands through the inbox.

mod clock;
pub mod followers;
mod handle;
pub mod jobs;
mod messages;
pub mod metrics;
pub mod operations;
pub mod owner;
pub mod pipeline;
mod projector;
mod recovery;
mod sequencer;
mod signal;
pub mod snapshot;
mod snapshotter;
pub mod sweeper;
mod types;

pub use clock::{Clock, ManualClock, SystemClock};
pub use followers::FollowerHealth;
pub use handle::EngineHandle;
pub use operations::{JobControl, JobError, OperationRecord, OperationState, Operations};
pub use owner::{DataDirLock, OwnerError};
pub use pipeline::{LetterFilter, LetterPage, LetterView, PipelineStats, ReceiptState, RedriveSelection};
pub use sequencer::MAX_GROUP_COMMIT_COMMANDS;
pub use types::{
    EngineConfig, EngineError, LogPlace, Receipt, StartReport, Status, DEFAULT_INBOX_CAPACITY,
    DEFAULT_PROJECTION_SNAPSHOT_EVERY, DEFAULT_SNAPSHOT_EVERY, DEFAULT_SNAPSHOT_INTERVAL, QUERY_CONSISTENCY_WAIT,
};

use crate::log::{FileLog, LogOptions, LogWriter};
use crate::projection::ProjectionName;
use messages::Msg;
use recovery::{adopt_projection_snapshots, open_projections, restore};
use signal::{Hurry, Signal};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::{mpsc, watch};
use types::panic_text;

/// A running engine. Dropping it without [`Engine::shutdown`] stops nothing gracefully.
pub struct Engine {
    handle: EngineHandle,
    signal: Arc<Signal>,
    hurry: Arc<Hurry>,
    sequencer: Option<JoinHandle<()>>,
    /// The projector and the snapshotter.
    followers: Vec<JoinHandle<()>>,
    report: StartReport,
    /// The data directory's lock; the threads hold it too, so it is released when the last
    /// of them ends.
    _owner: Arc<DataDirLock>,
}

impl Engine {
    /// Opens the data directory (log, then projections), restores the write-side state
    /// from the latest snapshot plus the log after it, and starts the sequencer and the
    /// projector threads.
    pub fn start(config: EngineConfig, clock: Arc<dyn Clock>) -> Result<Engine, EngineError> {
        let owner = DataDirLock::acquire(&config.data_dir)?;
        Self::start_owned(config, clock, owner)
    }

    /// [`Engine::start`] for a caller that already owns the data directory (`serve` takes
    /// the lock before it opens its ports, so that a second server exits at once).
    pub fn start_owned(config: EngineConfig, clock: Arc<dyn Clock>, owner: DataDirLock) -> Result<Engine, EngineError> {
        assert_eq!(owner.dir(), config.data_dir, "the lock is the data directory's");
        // Every thread that writes holds the lock until it ends, even if the engine is
        // dropped without a shutdown.
        let owner = Arc::new(owner);
        let options = LogOptions {
            segment_bytes: config.segment_bytes,
            durability: config.durability,
            ..LogOptions::default()
        };
        let started = std::time::Instant::now();
        let (log, opened) = FileLog::open_on(config.log_storage(), options)?;
        let log_opened = started.elapsed();
        let reader = log.reader();
        let projections = open_projections(
            &config.data_dir.join("projections"),
            &crate::projection::StoreOptions {
                cache_bytes: config.projection_cache_bytes,
                flush_age: config.projection_flush_age,
            },
        )?;
        let head = log.head();
        for name in ProjectionName::ALL {
            let checkpoint = projections.checkpoint(name)?;
            if checkpoint > head.seq {
                return Err(EngineError::LogBehind {
                    what: format!("projection {}", name.name()),
                    folded: checkpoint,
                    log_head: head.seq,
                    first_lost: head.seq + 1,
                });
            }
        }
        let adopted = adopt_projection_snapshots(&projections, &reader, &config.projection_snapshot_dir())?;
        let projections_opened = started.elapsed();
        let (state, report) = restore(&config.data_dir, &reader, head.seq, config.identity_window)?;
        let report = StartReport {
            truncated: opened.truncated,
            projections_from_snapshot: adopted,
            ..report
        };
        // Where a start's time went: what an operator waiting for SERVING wants to know.
        tracing::info!(
            ?report,
            log_open_ms = log_opened.as_millis() as u64,
            projections_open_ms = (projections_opened - log_opened).as_millis() as u64,
            fold_ms = (started.elapsed() - projections_opened).as_millis() as u64,
            "ledger state restored"
        );
        let config_for_handle = config.clone();
        let (inbox_tx, inbox_rx) = mpsc::channel(config.inbox_capacity);
        let (committed_tx, committed_rx) = watch::channel(head.seq);
        let (applied_tx, applied_rx) = watch::channel(projections.applied()?);
        let (status_tx, status_rx) = watch::channel(Status::Serving);
        let signal = Arc::new(Signal::default());
        let hurry = Arc::new(Hurry::default());
        let apply_lock = Arc::new(Mutex::new(()));
        let snapshot_saved = Arc::new(std::sync::Mutex::new(report.snapshot_seq.unwrap_or(0)));
        let snapshotter = snapshotter::Snapshotter {
            saved: snapshot_saved.clone(),
            reader: reader.clone(),
            signal: signal.clone(),
            snapshot_dir: config.data_dir.clone(),
            snapshot_every: config.snapshot_every,
            interval: config.snapshot_interval,
            window: config.identity_window,
        };
        let projector = projector::Projector {
            projections: projections.clone(),
            reader: reader.clone(),
            signal: signal.clone(),
            hurry: hurry.clone(),
            applied: applied_tx,
            apply_lock: apply_lock.clone(),
            projection_snapshot_every: config.projection_snapshot_every,
            projection_snapshot_dir: config.projection_snapshot_dir(),
        };
        let operations = Operations::load(projections.aux_tree("operations")?, clock.clone());
        let failed = status_tx.clone();
        let credentials = Arc::new(std::sync::RwLock::new(state.credentials.clone()));
        let older = Arc::new(std::sync::RwLock::new(Arc::new(state.idempotency.older.clone())));
        let sequencer = sequencer::Sequencer {
            snapshot_dir: config.data_dir.clone(),
            snapshot_saved: snapshot_saved.clone(),
            older: older.clone(),
            reader: reader.clone(),
            credentials: credentials.clone(),
            credential_records: Vec::new(),
            state,
            log: Box::new(log),
            policy: config.policy,
            clock: clock.clone(),
            inbox: inbox_rx,
            committed: committed_tx,
            projector: signal.clone(),
            status: status_tx,
            metrics: metrics::SequencerMetrics::register(),
            event_ids: sequencer::EventIds::new(),
        };
        let spawn_error = |e: std::io::Error| EngineError::Unavailable(format!("cannot start a thread: {e}"));
        let followers = Arc::new(FollowerHealth::default());
        let (owned, health, woken) = (owner.clone(), followers.clone(), signal.clone());
        let projector = std::thread::Builder::new()
            .name("tally-projector".into())
            .spawn(move || {
                let _owner = owned;
                followers::supervise(projector, health, woken)
            })
            .map_err(spawn_error)?;
        let (owned, health, woken) = (owner.clone(), followers.clone(), signal.clone());
        let snapshotter = std::thread::Builder::new()
            .name("tally-snapshots".into())
            .spawn(move || {
                let _owner = owned;
                followers::supervise(snapshotter, health, woken)
            })
            .map_err(spawn_error)?;
        let owned = owner.clone();
        let sequencer = std::thread::Builder::new()
            .name("tally-sequencer".into())
            .spawn(move || {
                let _owner = owned;
                // A broken invariant panics the sequencer (by design); say so to callers and
                // to health checks rather than looking like a shutdown.
                let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sequencer.run()));
                if let Err(panic) = run {
                    let reason = panic_text(panic.as_ref());
                    failed.send_replace(Status::Failed(format!("invariant broken: {reason}")));
                }
            })
            .map_err(spawn_error)?;
        signal.notify();
        Ok(Engine {
            handle: EngineHandle {
                inbox: inbox_tx,
                reader,
                older,
                projections,
                committed: committed_rx,
                applied: applied_rx,
                status: status_rx,
                apply_lock,
                operations,
                config: Arc::new(config_for_handle),
                credentials,
                clock,
                hurry: hurry.clone(),
                snapshot_saved: snapshot_saved.clone(),
                followers,
            },
            signal,
            hurry,
            sequencer: Some(sequencer),
            followers: vec![projector, snapshotter],
            report,
            _owner: owner,
        })
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    pub fn report(&self) -> &StartReport {
        &self.report
    }

    /// Stops accepting commands, lets the sequencer finish the batch in flight (it writes
    /// the snapshot at the head as it stops), lets the projector catch up, and waits for
    /// all three threads. Blocks the calling thread.
    pub fn shutdown(mut self) {
        // A full inbox still takes the stop message once the sequencer drains it. The send
        // runs on a thread of its own so that shutdown also works from async contexts.
        let inbox = self.handle.inbox.clone();
        let _ = std::thread::spawn(move || inbox.blocking_send(Msg::Stop)).join();
        if let Some(sequencer) = self.sequencer.take() {
            let _ = sequencer.join();
        }
        self.signal.stop();
        self.hurry.signal.stop();
        for follower in self.followers.drain(..) {
            let _ = follower.join();
        }
    }
}

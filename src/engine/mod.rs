//! The engine: the bounded inbox, the single-writer sequencer with group commit, the
//! projector and the expiry sweeper, started from a data directory.
//!
//! Invariant: only the sequencer thread changes the write-side state or appends to the
//! log. Everything else — the API, the sweeper — submits commands through the inbox.

mod clock;
pub mod followers;
mod handle;
pub mod jobs;
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

pub use clock::{Clock, ManualClock, SystemClock};
pub use followers::FollowerHealth;
pub use handle::EngineHandle;
pub use operations::{JobControl, JobError, OperationRecord, OperationState, Operations};
pub use owner::{DataDirLock, OwnerError};
pub use pipeline::{LetterFilter, LetterPage, LetterView, PipelineStats, ReceiptState, RedriveSelection};
use recovery::{adopt_projection_snapshots, open_projections, read_ranges, restore};
pub use sequencer::MAX_GROUP_COMMIT_COMMANDS;
use signal::lower_priority;
pub(crate) use signal::{Hurry, Signal};

use crate::domain::limits::EXPIRE_PULSE_MAX_HOLDS;
use crate::domain::state::{OlderIdentities, OlderRecords, WindowPolicy};
use crate::domain::{evolve, Command, CommandMeta, Identity, Policy, Record, Rejection, State};
use crate::log::{self, Durability, FileLog, FileStorage, LogError, LogOptions, LogReader, LogWriter, Storage};
use crate::projection::{ProjectionName, Projections, StoreError};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// Jobs waiting for the sequencer. A job is one request (a single command or a batch), so
/// this bounds the memory of waiting work; when it is full, callers hear
/// RESOURCE_EXHAUSTED at once instead of queueing without bound.
pub const DEFAULT_INBOX_CAPACITY: usize = 8192;

/// Records between periodic write-state snapshots (and at least 5 minutes, see the
/// snapshotter): a restart folds at most this many records, or 5 minutes' worth of them.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000_000;
/// Least time between two write-state snapshots taken while serving.
pub use snapshotter::DEFAULT_SNAPSHOT_INTERVAL;

/// Records between periodic projection snapshot files: a lost projection store or a
/// rebuild from a snapshot folds at most this many records.
pub const DEFAULT_PROJECTION_SNAPSHOT_EVERY: u64 = 1_000_000;

/// How long a query waits for the projections to reach the log head it saw on arrival.
pub const QUERY_CONSISTENCY_WAIT: Duration = Duration::from_secs(5);

/// How to start an engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub segment_bytes: u64,
    pub policy: Policy,
    pub inbox_capacity: usize,
    pub snapshot_every: u64,
    /// Least time between two periodic write-state snapshots (5 minutes).
    pub snapshot_interval: Duration,
    /// 0 turns periodic projection snapshots off (they can still be asked for).
    pub projection_snapshot_every: u64,
    /// Bytes of the projection store's page cache.
    pub projection_cache_bytes: u64,
    /// Where the log's segments live.
    pub log_place: LogPlace,
    /// How many identities the writer keeps whole in RAM (older ones are read from the log).
    pub identity_window: WindowPolicy,
}

/// Where the engine keeps its log.
#[derive(Clone, Debug, Default)]
pub enum LogPlace {
    /// Segment files in `<data-dir>/log`: what `serve` uses.
    #[default]
    DataDir,
    /// Another storage: a simulated disk that tests cut the power of.
    Storage(Arc<dyn Storage>),
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            durability: Durability::Sync,
            segment_bytes: log::DEFAULT_SEGMENT_BYTES,
            policy: Policy::default(),
            inbox_capacity: DEFAULT_INBOX_CAPACITY,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            snapshot_interval: snapshotter::DEFAULT_SNAPSHOT_INTERVAL,
            projection_snapshot_every: DEFAULT_PROJECTION_SNAPSHOT_EVERY,
            projection_cache_bytes: crate::projection::DEFAULT_CACHE_BYTES,
            log_place: LogPlace::DataDir,
            identity_window: WindowPolicy::default(),
        }
    }

    /// The storage the log lives on.
    pub fn log_storage(&self) -> Arc<dyn Storage> {
        match &self.log_place {
            LogPlace::DataDir => Arc::new(FileStorage::new(self.data_dir.join("log"))),
            LogPlace::Storage(storage) => storage.clone(),
        }
    }

    /// Where projection snapshot files go.
    pub fn projection_snapshot_dir(&self) -> PathBuf {
        self.data_dir.join("projection-snapshots")
    }

    /// Where replays to file are written.
    pub fn exports_dir(&self) -> PathBuf {
        self.data_dir.join("exports")
    }
}

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ledger refused the command.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The inbox is full: retry later.
    #[error("the ledger is busy: its inbox is full")]
    Busy,
    /// The engine stopped or failed; nothing was applied.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another process owns the data directory.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    /// Something folded from the log (a snapshot, a projection) stands further than the log
    /// now reaches: the log lost records that were acknowledged. Refused, never cut.
    #[error(
        "{what} has folded the log to sequence {folded}, but the log ends at {log_head}: \
         records {first_lost} and on, acknowledged once, are missing from the log; refusing to serve"
    )]
    LogBehind {
        what: String,
        folded: u64,
        log_head: u64,
        first_lost: u64,
    },
    /// A record of a sound chain breaks an invariant of the fold: this build cannot serve
    /// the log (a bug, or a log written by a build with other rules). Refused, named.
    #[error("record {seq} of the log does not fold into the state: {reason}; refusing to serve")]
    Unfoldable { seq: u64, reason: String },
}

/// Where the engine stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Serving,
    /// A commit failed: the process must restart to re-read the log.
    Failed(String),
    Stopped,
}

/// The result of an accepted command: its records, and whether they are the original
/// result of an earlier request (a replay).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub replayed: bool,
    pub records: Vec<Record>,
}

pub(crate) enum Outcome {
    Appended(Vec<Record>),
    Replayed { first_seq: u64, last_seq: u64 },
    Nothing,
    Rejected(Rejection),
}

pub(crate) struct Job {
    commands: Vec<(CommandMeta, Command)>,
    /// Each command's [`Identity`], worked out by the submitting task so that the sequencer
    /// does not hash the commands' texts itself.
    identities: Vec<Identity>,
    reply: oneshot::Sender<Vec<Outcome>>,
}

/// A read of the current state, answered by the sequencer after the group commit it arrived
/// with: it sees every command acknowledged before it, and nothing uncommitted.
pub(crate) struct Read {
    query: Query,
    reply: oneshot::Sender<Answer>,
}

pub(crate) enum Query {
    Account {
        tenant: String,
        account: String,
    },
    Hold(u64),
    DeadLetters {
        tenant: String,
        filter: LetterFilter,
        limit: usize,
    },
    Receipt {
        tenant: String,
        receipt_seq: u64,
    },
    PipelineStats {
        tenant: String,
    },
    RedrivePlan {
        tenant: String,
        selection: RedriveSelection,
        max: usize,
    },
    Link {
        tenant: String,
        link_id: u64,
    },
    LinksOf {
        tenant: String,
        account: String,
    },
    /// Runs a read of the committed state; the closure sends its own answer.
    Inspect(Box<dyn FnOnce(&State) + Send>),
}

pub(crate) enum Answer {
    Account(Option<crate::projection::AccountView>),
    Hold(Option<crate::projection::HoldView>),
    DeadLetters(LetterPage),
    Receipt(Option<ReceiptState>),
    PipelineStats(PipelineStats),
    RedrivePlan(Vec<u64>),
    Link(Option<crate::domain::state::Link>),
    Links(Vec<(u64, crate::domain::state::Link)>),
    /// The closure of an `Inspect` answered through its own channel.
    Inspected,
}

pub(crate) enum Msg {
    Job(Job),
    Read(Read),
    Stop,
}

/// What starting found.
#[derive(Clone, Debug, Default)]
pub struct StartReport {
    pub head_seq: u64,
    /// First sequence number and bytes of a torn tail that was cut off.
    pub truncated: Option<(u64, u64)>,
    /// Sequence number of the write-state snapshot used, if any.
    pub snapshot_seq: Option<u64>,
    /// Records folded after the snapshot.
    pub folded: u64,
    /// Projections that started from a snapshot file, and its sequence number.
    pub projections_from_snapshot: Vec<(ProjectionName, u64)>,
}

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
        let (log, opened) = FileLog::open_on(config.log_storage(), options)?;
        let reader = log.reader();
        let projections = open_projections(
            &config.data_dir.join("projections"),
            &crate::projection::StoreOptions {
                cache_bytes: config.projection_cache_bytes,
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
        let (state, report) = restore(&config.data_dir, &reader, head.seq, config.identity_window)?;
        let report = StartReport {
            truncated: opened.truncated,
            projections_from_snapshot: adopted,
            ..report
        };
        tracing::info!(?report, "ledger state restored");
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

/// What a caught panic said.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

//! The engine: the bounded inbox, the single-writer sequencer with group commit, the
//! projector and the expiry sweeper, started from a data directory.
//!
//! Invariant: only the sequencer thread changes the write-side state or appends to the
//! log. Everything else — the API, the sweeper — submits commands through the inbox.

mod clock;
pub mod followers;
pub mod jobs;
pub mod metrics;
pub mod operations;
pub mod owner;
pub mod pipeline;
mod projector;
mod sequencer;
pub mod snapshot;
mod snapshotter;
pub mod sweeper;

pub use clock::{Clock, ManualClock, SystemClock};
pub use followers::FollowerHealth;
pub use operations::{JobControl, JobError, OperationRecord, OperationState, Operations};
pub use owner::{DataDirLock, OwnerError};
pub use pipeline::{LetterFilter, LetterPage, LetterView, PipelineStats, ReceiptState, RedriveSelection};
pub use sequencer::MAX_GROUP_COMMIT_COMMANDS;

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

/// Wakes the projector; also carries the request to stop.
#[derive(Default)]
pub(crate) struct Signal {
    state: Mutex<(u64, bool)>,
    condvar: Condvar,
}

impl Signal {
    fn notify(&self) {
        self.state.lock().expect("signal lock").0 += 1;
        self.condvar.notify_all();
    }

    fn stop(&self) {
        self.state.lock().expect("signal lock").1 = true;
        self.condvar.notify_all();
    }

    /// The number of notifications so far: read it before checking for work, then
    /// [`Signal::wait_since`] it, and no notification in between is missed.
    fn generation(&self) -> u64 {
        self.state.lock().expect("signal lock").0
    }

    fn stopping(&self) -> bool {
        self.state.lock().expect("signal lock").1
    }

    /// Waits until a notification after `seen`, a stop request, or the timeout.
    fn wait_since(&self, seen: u64, timeout: Duration) {
        let guard = self.state.lock().expect("signal lock");
        let _ = self
            .condvar
            .wait_timeout_while(guard, timeout, |(generation, stop)| *generation == seen && !*stop)
            .expect("signal lock");
    }

    /// Waits until a stop request or the timeout, whatever notifications come meanwhile.
    fn wait_stop(&self, timeout: Duration) {
        let guard = self.state.lock().expect("signal lock");
        let _ = self
            .condvar
            .wait_timeout_while(guard, timeout, |(_, stop)| !*stop)
            .expect("signal lock");
    }
}

/// The followers' scheduling niceness. They are background work: balance and hold reads are
/// answered by the sequencer, history queries wait for the projector only when they come,
/// and the snapshotter only writes snapshots; so under CPU pressure the
/// sequencer and the API go first, and the followers catch up when the load eases.
const FOLLOWER_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's priority to [`FOLLOWER_NICENESS`] (Linux schedules threads
/// individually).
fn lower_priority(follower: &str) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // this thread's scheduling niceness.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, FOLLOWER_NICENESS)
    };
    if result != 0 {
        tracing::debug!(follower, error = %std::io::Error::last_os_error(), "could not lower a follower's priority");
    }
}

/// Queries waiting for the sled projections to reach the head. The projector lets commits
/// gather for a moment after one wakes it (fewer, larger sled batches); while a query waits,
/// it does not.
#[derive(Default)]
pub(crate) struct Hurry {
    waiting: std::sync::atomic::AtomicUsize,
    signal: Signal,
}

impl Hurry {
    /// Counts a waiting query until the guard drops, and wakes the projector.
    fn wait(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a Hurry);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.signal.notify();
        Waiting(self)
    }

    /// Waits up to `linger` unless a query is waiting or comes to wait meanwhile, or a stop.
    fn linger(&self, linger: Duration) {
        let asked = self.signal.generation();
        if self.waiting.load(std::sync::atomic::Ordering::Acquire) == 0 {
            self.signal.wait_since(asked, linger);
        }
    }
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

/// Projection stores open in this process, by directory: the ones a stopped engine's
/// handles still hold.
static OPEN_STORES: Mutex<Vec<(PathBuf, std::sync::Weak<Projections>)>> = Mutex::new(Vec::new());

/// The projection store in `dir`. A handle of an engine this process stopped may still hold
/// it open (a client's connection, a test's variable), and sled lets one process open a
/// store once: such a store is taken over as it is. That is safe because the caller owns
/// the data directory, and an engine's threads hold that lock until they end, so nothing
/// writes the store any more; reopening it would read the same rows.
fn open_projections(
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
fn restore(
    data_dir: &std::path::Path,
    reader: &LogReader,
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
        for record in reader.iter_range_trusted(state.head_seq + 1, head_seq) {
            let record = record?;
            at = record.seq;
            evolve(&mut state, &record);
            report.folded += 1;
        }
        Ok(())
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
fn adopt_projection_snapshots(
    projections: &Projections,
    reader: &LogReader,
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
fn read_ranges(reader: &LogReader, ranges: &[(u64, u64)]) -> Result<Vec<Vec<Record>>, LogError> {
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

/// A cheap, cloneable handle to a running engine: submit commands, read projections.
#[derive(Clone)]
pub struct EngineHandle {
    inbox: mpsc::Sender<Msg>,
    reader: LogReader,
    /// The identities that left the writer's window, as it last published them.
    older: Arc<std::sync::RwLock<Arc<OlderIdentities>>>,
    projections: Arc<Projections>,
    committed: watch::Receiver<u64>,
    applied: watch::Receiver<u64>,
    status: watch::Receiver<Status>,
    apply_lock: Arc<Mutex<()>>,
    operations: Operations,
    config: Arc<EngineConfig>,
    credentials: Arc<std::sync::RwLock<crate::domain::session::Credentials>>,
    clock: Arc<dyn Clock>,
    hurry: Arc<Hurry>,
    /// The sequence number of the newest write-state snapshot on disk.
    snapshot_saved: Arc<std::sync::Mutex<u64>>,
    followers: Arc<FollowerHealth>,
}

impl EngineHandle {
    /// Sessions and API keys as of the last commit: the sequencer changes this copy after
    /// each group commit that changed them and before it answers, so a logout is in force
    /// for every call that starts after the logout's answer.
    pub fn credentials(&self) -> std::sync::RwLockReadGuard<'_, crate::domain::session::Credentials> {
        self.credentials
            .read()
            .expect("the sequencer never panics holding the credentials")
    }

    /// Reads the committed state with `read`, on the sequencer's thread right after a group
    /// commit (so it sees every acknowledged command): for reads that are small and quick.
    pub async fn inspect<T: Send + 'static>(
        &self,
        read: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let query = Query::Inspect(Box::new(move |state: &State| {
            let _ = reply.send(read(state));
        }));
        self.read(query).await?;
        answer.await.map_err(|_| self.unavailable())
    }

    /// The deliveries due now, at most `limit`, oldest event first (see
    /// [`crate::domain::delivery::DeliveryState::due`]).
    pub async fn deliveries_due(&self, limit: usize) -> Result<Vec<(u64, u64)>, EngineError> {
        let now_us = self.now_us();
        self.inspect(move |state| state.deliveries.due(now_us, limit)).await
    }

    /// The time the sequencer would stamp now (log time), in µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Submits one command and waits until it is committed (or refused).
    pub async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, EngineError> {
        let mut results = self.submit_batch(vec![(meta, command)]).await?;
        assert_eq!(results.len(), 1, "one result per command");
        results.pop().expect("one result").map_err(EngineError::Rejected)
    }

    /// Submits commands that are decided in order, each against the state the ones before
    /// it left; answers once all are committed, one result per command.
    pub async fn submit_batch(
        &self,
        commands: Vec<(CommandMeta, Command)>,
    ) -> Result<Vec<Result<Receipt, Rejection>>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let older = self
            .older
            .read()
            .expect("the sequencer never panics publishing")
            .clone();
        let identities = commands
            .iter()
            .map(|(meta, command)| {
                let mut identity = Identity::of(meta, command);
                if !older.is_empty() {
                    identity.check_older(&older, &self.reader);
                }
                identity
            })
            .collect();
        self.send(Msg::Job(Job {
            commands,
            identities,
            reply,
        }))?;
        let outcomes = answer.await.map_err(|_| self.unavailable())?;
        let ranges: Vec<(u64, u64)> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Replayed { first_seq, last_seq } => Some((*first_seq, *last_seq)),
                _ => None,
            })
            .collect();
        let mut replayed = self.read_ranges(ranges).await?.into_iter();
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            results.push(match outcome {
                Outcome::Appended(records) => Ok(Receipt {
                    replayed: false,
                    records,
                }),
                Outcome::Nothing => Ok(Receipt {
                    replayed: false,
                    records: Vec::new(),
                }),
                Outcome::Replayed { .. } => Ok(Receipt {
                    replayed: true,
                    records: replayed.next().expect("one read per replay"),
                }),
                Outcome::Rejected(rejection) => Err(rejection),
            });
        }
        Ok(results)
    }

    /// Reads the records of each committed range `first..=last`, in one blocking task: a
    /// batch of retries costs one pass over the log where their ranges are close, not one
    /// read (and frame decode) each. Read back trusted, as the followers do: the chain was
    /// checked when the log was opened, and these records were acknowledged since.
    async fn read_ranges(&self, ranges: Vec<(u64, u64)>) -> Result<Vec<Vec<Record>>, EngineError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let reader = self.reader.clone();
        let read = tokio::task::spawn_blocking(move || read_ranges(&reader, &ranges))
            .await
            .map_err(|e| EngineError::Unavailable(format!("reader task failed: {e}")))?;
        Ok(read?)
    }

    /// Up to `pulses` retry pulses in one job; returns how many attempts were made (fewer
    /// than `pulses` means no retry is due now).
    pub async fn retry_due(&self, pulses: usize) -> Result<usize, EngineError> {
        let meta = CommandMeta {
            tenant: "system".into(),
            actor: "system:ingest".into(),
            ..CommandMeta::default()
        };
        let commands = (0..pulses).map(|_| (meta.clone(), Command::RetryDue)).collect();
        let results = self.submit_batch(commands).await?;
        Ok(results
            .iter()
            .filter(|r| matches!(r, Ok(receipt) if !receipt.records.is_empty()))
            .count())
    }

    /// The tenant's dead letters (and, if asked, retrying events) matching `filter`.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        filter: LetterFilter,
        limit: usize,
    ) -> Result<LetterPage, EngineError> {
        let query = Query::DeadLetters {
            tenant: tenant.to_string(),
            filter,
            limit,
        };
        match self.read(query).await? {
            Answer::DeadLetters(page) => Ok(page),
            _ => unreachable!("a dead-letter query is answered with letters"),
        }
    }

    /// Where one received external event stands.
    pub async fn receipt(&self, tenant: &str, receipt_seq: u64) -> Result<Option<ReceiptState>, EngineError> {
        let query = Query::Receipt {
            tenant: tenant.to_string(),
            receipt_seq,
        };
        match self.read(query).await? {
            Answer::Receipt(state) => Ok(state),
            _ => unreachable!("a receipt query is answered with a receipt"),
        }
    }

    /// The pipeline's counters and queue for a tenant.
    pub async fn pipeline_stats(&self, tenant: &str) -> Result<PipelineStats, EngineError> {
        match self.read(Query::PipelineStats { tenant: tenant.into() }).await? {
            Answer::PipelineStats(stats) => Ok(stats),
            _ => unreachable!("a stats query is answered with stats"),
        }
    }

    /// The letters a re-drive would apply, in order (see [`pipeline::redrive_plan`]).
    pub async fn redrive_plan(
        &self,
        tenant: &str,
        selection: RedriveSelection,
        max: usize,
    ) -> Result<Vec<u64>, EngineError> {
        let query = Query::RedrivePlan {
            tenant: tenant.into(),
            selection,
            max,
        };
        match self.read(query).await? {
            Answer::RedrivePlan(plan) => Ok(plan),
            _ => unreachable!("a plan query is answered with a plan"),
        }
    }

    /// A link as the ledger has it now, if it is the tenant's.
    pub async fn link(&self, tenant: &str, link_id: u64) -> Result<Option<crate::domain::state::Link>, EngineError> {
        let query = Query::Link {
            tenant: tenant.into(),
            link_id,
        };
        match self.read(query).await? {
            Answer::Link(link) => Ok(link),
            _ => unreachable!("a link query is answered with a link"),
        }
    }

    /// An account's links, newest first.
    pub async fn links_of(
        &self,
        tenant: &str,
        account: &str,
    ) -> Result<Vec<(u64, crate::domain::state::Link)>, EngineError> {
        let query = Query::LinksOf {
            tenant: tenant.into(),
            account: account.into(),
        };
        match self.read(query).await? {
            Answer::Links(links) => Ok(links),
            _ => unreachable!("a links query is answered with links"),
        }
    }

    /// One expiry pulse (holds and links); returns how many it expired.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let meta = CommandMeta {
            tenant: "system".into(),
            actor: "system:sweeper".into(),
            ..CommandMeta::default()
        };
        let receipt = self
            .submit(
                meta,
                Command::ExpireDue {
                    limit: EXPIRE_PULSE_MAX_HOLDS,
                },
            )
            .await?;
        Ok(receipt.records.len())
    }

    /// Waits until every sled projection has applied everything committed when this was
    /// called, so that a query sees every command acknowledged before it arrived.
    pub async fn wait_for_projections(&self) -> Result<(), EngineError> {
        self.wait_until(self.applied.clone()).await
    }

    /// An account as the sequencer has it: every command acknowledged before the call is in
    /// it. Goes through the inbox (full → [`EngineError::Busy`]).
    pub async fn account(
        &self,
        tenant: &str,
        account: &str,
    ) -> Result<Option<crate::projection::AccountView>, EngineError> {
        let query = Query::Account {
            tenant: tenant.to_string(),
            account: account.to_string(),
        };
        match self.read(query).await? {
            Answer::Account(view) => Ok(view),
            _ => unreachable!("an account query is answered with an account"),
        }
    }

    /// A hold as the sequencer has it.
    pub async fn hold(&self, hold_id: u64) -> Result<Option<crate::projection::HoldView>, EngineError> {
        match self.read(Query::Hold(hold_id)).await? {
            Answer::Hold(view) => Ok(view),
            _ => unreachable!("a hold query is answered with a hold"),
        }
    }

    async fn read(&self, query: Query) -> Result<Answer, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Read(Read { query, reply }))?;
        answer.await.map_err(|_| self.unavailable())
    }

    /// Puts a message in the inbox without waiting: a full inbox is [`EngineError::Busy`].
    fn send(&self, message: Msg) -> Result<(), EngineError> {
        self.inbox.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ::metrics::counter!(metrics::INBOX_FULL_TOTAL).increment(1);
                EngineError::Busy
            }
            mpsc::error::TrySendError::Closed(_) => self.unavailable(),
        })
    }

    async fn wait_until(&self, mut applied: watch::Receiver<u64>) -> Result<(), EngineError> {
        let target = *self.committed.borrow();
        if *applied.borrow() >= target {
            return Ok(());
        }
        if let Some(trouble) = self.followers.of(<projector::Projector as followers::Follower>::NAME) {
            // Waiting would only time out: say why now.
            return Err(EngineError::Unavailable(format!(
                "projections are behind the log (at {}, head {target}): the projector {trouble}",
                *applied.borrow()
            )));
        }
        let _waiting = self.hurry.wait();
        let caught_up = tokio::time::timeout(QUERY_CONSISTENCY_WAIT, applied.wait_for(|&seq| seq >= target)).await;
        match caught_up {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(self.unavailable()),
            Err(_) => Err(EngineError::Unavailable(format!(
                "projections did not reach sequence {target} within {QUERY_CONSISTENCY_WAIT:?}"
            ))),
        }
    }

    fn unavailable(&self) -> EngineError {
        match &*self.status.borrow() {
            Status::Failed(reason) => EngineError::Unavailable(format!("the ledger failed and must restart: {reason}")),
            _ => EngineError::Unavailable("the ledger is shutting down".into()),
        }
    }

    /// Jobs and reads waiting in the inbox for the sequencer.
    pub fn inbox_depth(&self) -> usize {
        self.inbox.max_capacity() - self.inbox.capacity()
    }

    /// Bytes of committed records in the log (frames included, segment headers and the
    /// preallocated room not).
    pub fn log_bytes(&self) -> u64 {
        self.reader.committed_bytes()
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Whether health should say SERVING: the engine serves and its followers fold the log.
    pub fn serving(&self) -> bool {
        *self.status.borrow() == Status::Serving && self.followers.summary().is_none()
    }

    /// What keeps the projector or the snapshotter from reading the log, if anything:
    /// health reports NOT_SERVING while there is something.
    pub fn followers(&self) -> &FollowerHealth {
        &self.followers
    }

    /// A watch of the engine's status, for health reporting.
    pub fn status_watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Sequence number of the last committed record.
    pub fn committed_seq(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Sequence number of the newest write-state snapshot on disk: a restart after a crash
    /// folds the log after it.
    pub fn snapshot_seq(&self) -> u64 {
        *self.snapshot_saved.lock().expect("no panic holds the snapshot lock")
    }

    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// A watch of the last committed sequence number, for subscriptions.
    pub fn committed_watch(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Starts rebuilding one projection (or all, one after the other) as an operation.
    pub fn start_rebuild(
        &self,
        only: Option<ProjectionName>,
        verify_only: bool,
        from_snapshot: bool,
    ) -> OperationRecord {
        let names: Vec<ProjectionName> = only.map_or(ProjectionName::ALL.to_vec(), |n| vec![n]);
        let description = format!(
            "rebuild {}{}{}",
            names.iter().map(|n| n.name()).collect::<Vec<_>>().join(", "),
            if verify_only { ", verify only" } else { "" },
            if from_snapshot {
                ", from the latest snapshot"
            } else {
                ""
            }
        );
        let (projections, reader, lock) = (self.projections.clone(), self.reader.clone(), self.apply_lock.clone());
        let snapshot_dir = from_snapshot.then(|| self.config.projection_snapshot_dir());
        self.operations.start("rebuild", None, description, move |control| {
            let mut lines = Vec::new();
            let mut mismatched = Vec::new();
            for name in names {
                let outcome = jobs::rebuild(
                    &projections,
                    &reader,
                    &lock,
                    name,
                    snapshot_dir.as_deref(),
                    verify_only,
                    control,
                )?;
                if !outcome.matched() {
                    mismatched.push(name.name());
                }
                lines.push(jobs::describe(&outcome));
            }
            if verify_only && !mismatched.is_empty() {
                return Err(JobError::Failed(format!(
                    "projections differ from a fold of the log: {}; {}",
                    mismatched.join(", "),
                    lines.join("; ")
                )));
            }
            Ok(lines.join("; "))
        })
    }

    /// Starts writing a snapshot file of every projection.
    pub fn start_projection_snapshot(&self) -> OperationRecord {
        let (projections, reader, lock) = (self.projections.clone(), self.reader.clone(), self.apply_lock.clone());
        let dir = self.config.projection_snapshot_dir();
        self.operations.start(
            "projection_snapshot",
            None,
            format!("snapshot every projection into {}", dir.display()),
            move |_| jobs::snapshot_projections(&projections, &reader, &lock, &dir),
        )
    }

    /// Starts writing a window of events to `<data-dir>/exports/<tenant>/<file_name>` as
    /// JSON lines, an operation of `tenant` (whose events `filter` must confine it to).
    /// What it reports names the file relative to the data directory, never its absolute path.
    pub fn start_replay_to_file(
        &self,
        tenant: &str,
        window: crate::query::Window,
        filter: crate::query::EventFilter,
        max_events: u64,
        file_name: &str,
    ) -> Result<OperationRecord, jobs::ExportError> {
        let target = jobs::export_target(&self.config.exports_dir(), tenant, file_name)?;
        if let Err(error) = std::fs::create_dir_all(&target.dir) {
            tracing::error!(%error, dir = %target.dir.display(), "cannot create the exports directory");
            return Err(jobs::ExportError::Storage(format!(
                "cannot create the directory of {}: {}",
                target.shown,
                error.kind()
            )));
        }
        let reader = self.reader.clone();
        let description = format!("replay {window:?} to {}", target.shown);
        Ok(self
            .operations
            .start("replay_to_file", Some(tenant), description, move |control| {
                let written = jobs::replay_to_file(&reader, window, filter, max_events, &target.path, control)?;
                Ok(format!("{written} events written to {}", target.shown))
            }))
    }

    /// The indexes and the log together, for queries through the indexes.
    pub fn indexed(&self) -> crate::query::indexed::Indexed<'_> {
        crate::query::indexed::Indexed {
            projections: self.projections(),
            reader: self.reader(),
        }
    }

    pub fn projections(&self) -> &Projections {
        &self.projections
    }
}

/// The log answers for identities older than the writer's window.
impl OlderRecords for LogReader {
    fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, String> {
        let to = to.min(self.head().seq);
        if from > to {
            return Ok(Vec::new());
        }
        let seqs: Vec<u64> = (from..=to).collect();
        self.read_seqs(&seqs).map_err(|e| e.to_string())
    }
}

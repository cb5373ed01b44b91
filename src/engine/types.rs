//! The engine's plain types: how an engine is started (its configuration, where its log
//! lives, the defaults), what a start found, where a running engine stands, what an
//! accepted command returns, and the engine's errors (with the words of a caught panic).

use super::owner::OwnerError;
use crate::domain::state::WindowPolicy;
use crate::domain::{Policy, Record, Rejection};
use crate::log::{self, Durability, FileStorage, LogError, Storage};
use crate::projection::{ProjectionName, StoreError};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Jobs waiting for the sequencer. A job is one request (a single command or a batch), so
/// this bounds the memory of waiting work; when it is full, callers hear
/// RESOURCE_EXHAUSTED at once instead of queueing without bound.
pub const DEFAULT_INBOX_CAPACITY: usize = 8192;

/// Records between periodic write-state snapshots (and at least 5 minutes, see the
/// snapshotter): a restart folds at most this many records, or 5 minutes' worth of them.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 1_000_000;

/// Least time between two periodic write-state snapshots by default. A snapshot costs a
/// fold of the records since the last one and a write of the whole state: taking one every
/// N records at a high command rate would spend a core on it. A restart folds at most this
/// much time of commands instead, at about 500,000 records a second on this kind of
/// machine (`benches/restart.sh`, BENCHMARKS.md).
pub const DEFAULT_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);

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
    /// How long folded projection records wait at most to be written to the store.
    pub projection_flush_age: Duration,
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
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            projection_snapshot_every: DEFAULT_PROJECTION_SNAPSHOT_EVERY,
            projection_cache_bytes: crate::projection::DEFAULT_CACHE_BYTES,
            projection_flush_age: crate::projection::FLUSH_AGE,
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

/// What a caught panic said.
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

//! The log's plain types: when an append counts as done, what opening does with a torn
//! tail, the sizing of segments, the head of a log, and the errors of the log layer.

use std::path::PathBuf;

/// When an append counts as done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fdatasync after every group commit, before anyone hears "ok". The default.
    #[default]
    Sync,
    /// Written to the OS page cache only: a machine crash (not a process crash) can lose
    /// acknowledged commands. For benchmarks and tests.
    Buffered,
}

/// What opening does with a torn tail (a final frame cut short by a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Cut the torn frame off and go on; it was never acknowledged.
    #[default]
    TruncateTornTail,
    /// Refuse to open; for tools that must not change the log.
    Refuse,
}

/// Sizing and policies of a file log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Size each segment file is preallocated to (an fdatasync on a preallocated file does
    /// not have to update the file size).
    pub segment_bytes: u64,
    pub durability: Durability,
    pub recovery: Recovery,
}

/// Segment size: large enough that rolling over is rare, small enough to preallocate fast.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Smallest segment that still holds the largest frame of a few records.
pub const MIN_SEGMENT_BYTES: u64 = 64 << 10;

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            durability: Durability::Sync,
            recovery: Recovery::TruncateTornTail,
        }
    }
}

/// The last record of the log (or of a prefix of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    pub seq: u64,
    pub ts_us: u64,
    pub hash: [u8; 32],
}

/// Errors of the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record before the tail does not verify: the log is refused.
    #[error("log corrupt at sequence {seq} ({path}, byte {offset}): {reason}")]
    Corrupt {
        seq: u64,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A torn tail, when the recovery policy is to refuse.
    #[error("torn tail at sequence {seq} ({path}, byte {offset}): {reason}")]
    TornTail {
        seq: u64,
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The writer failed earlier; nothing more can be appended safely.
    #[error("the log writer failed earlier and accepts no more appends")]
    Poisoned,
    /// A read by sequence number asked for one the log does not hold (0, or past the head).
    #[error("sequence {seq} is not in the log (its head is {head})")]
    NotInLog { seq: u64, head: u64 },
}

impl LogError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { path, source }
    }
}

//! The log: the only source of truth. Append-only segment files of batch frames; every
//! record chained to the one before by blake3.
//!
//! Invariant: a record is visible to readers only once the frame holding it has been
//! written (and, with [`Durability::Sync`], fdatasync'ed). Nothing here knows about sled,
//! tokio or the API; the engine drives the writer, projections and queries use readers.

pub mod codec;
mod file;
mod locator;
mod reader;
mod scan;
pub mod sim;
pub mod storage;

use std::path::PathBuf;

pub use file::FileLog;
pub use reader::{LogReader, RecordIter};
pub use scan::{verify, verify_storage, Verified, FORMAT_VERSION};
pub use sim::SimDisk;
pub use storage::{FileStorage, Storage, StorageFile};

use crate::domain::{Envelope, Event, Record};

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

/// The writing side of a log, behind a trait so that another store (a replicated stream)
/// is a second implementation, not a rewrite.
pub trait LogWriter: Send {
    /// Encodes and chains a record into the pending batch; returns its hash.
    fn stage(&mut self, seq: u64, ts_us: u64, envelope: &Envelope, event: &Event) -> [u8; 32];
    /// Writes the pending batch (one write per segment touched) and, with
    /// [`Durability::Sync`], waits until it is on disk. On error the writer is poisoned.
    fn commit(&mut self) -> Result<(), LogError>;
    /// The last committed record.
    fn head(&self) -> Head;
    /// A reader over committed records.
    fn reader(&self) -> LogReader;
}

/// Reads one record by sequence number (`None` if the log does not hold it), with one
/// positioned read ([`LogReader::read_seqs`]).
pub fn read_one(reader: &LogReader, seq: u64) -> Result<Option<Record>, LogError> {
    // The head only moves forward: a sequence number at or before it stays readable.
    if seq == 0 || seq > reader.head().seq {
        return Ok(None);
    }
    Ok(reader.read_seqs(&[seq])?.pop())
}

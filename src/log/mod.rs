//! The log: the only source of truth. Append-only segment files of batch frames; every
//! record chained to the one before by blake3.
//!
//! Invariant: a record is visible to readers only once the frame holding it has been
//! written (and, with [`Durability::Sync`], fdatasync'ed). Nothing here knows about sled,
//! tokio or the API; the engine drives the writer, projections and queries use readers.

pub mod codec;
mod file;
mod locator;
mod read;
mod reader;
mod scan;
pub mod sim;
pub mod storage;
mod types;
mod writer;

pub use file::FileLog;
pub use read::{read_one, ReadLog, Records};
pub use reader::{LogReader, RecordIter};
pub use scan::{verify, verify_storage, Verified, FORMAT_VERSION};
pub use sim::SimDisk;
pub use storage::{FileStorage, Storage, StorageFile};
pub use types::{Durability, Head, LogError, LogOptions, Recovery, DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
pub use writer::LogWriter;

//! The writing side of a log, as a trait: the file log is one implementation.

use super::read::ReadLog;
use super::types::{Head, LogError};
use crate::domain::{Envelope, Event};

/// The writing side of a log, behind a trait so that another store (a replicated stream)
/// is a second implementation, not a rewrite.
pub trait LogWriter: Send {
    /// Encodes and chains a record into the pending batch; returns its hash.
    fn stage(&mut self, seq: u64, ts_us: u64, envelope: &Envelope, event: &Event) -> [u8; 32];
    /// Writes the pending batch (one write per segment touched) and, with
    /// [`Durability::Sync`](super::types::Durability::Sync), waits until it is on disk. On error the writer is poisoned.
    fn commit(&mut self) -> Result<(), LogError>;
    /// The last committed record.
    fn head(&self) -> Head;
    /// A reader over committed records.
    fn reader(&self) -> std::sync::Arc<dyn ReadLog>;
}

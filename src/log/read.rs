//! The reading side of a log, as a trait: what engine, queries, the API and the deliverer
//! read the log through. The file log's [`LogReader`](super::LogReader) is one
//! implementation; a replicated stream or a test's records in memory are others.

use super::types::{Head, LogError};
use crate::domain::Record;

/// Committed records in sequence order; an error ends the walk (the bytes no longer verify,
/// or a read failed).
pub type Records = Box<dyn Iterator<Item = Result<Record, LogError>> + Send>;

/// Reads committed records. Every method sees the log as of the call: records up to the
/// head then, never a record that is not yet committed. Implementations check what they read
/// (the blake3 chain), except where a method says it may trust it.
pub trait ReadLog: Send + Sync {
    /// The last committed record.
    fn head(&self) -> Head;

    /// The records `seqs` (ascending, distinct), in that order, each checked against the chain;
    /// the cost follows `seqs.len()`, not the log's size. A sequence number not in the log
    /// (0, or past the head) is [`LogError::NotInLog`].
    fn read_seqs(&self, seqs: &[u64]) -> Result<Vec<Record>, LogError>;

    /// Records `from..=to` (clamped to the head as of now), in order, checked.
    fn iter_range(&self, from: u64, to: u64) -> Records;

    /// Like [`ReadLog::iter_range`], for the engine's own followers, which read back what
    /// the sequencer has just written and chained: an implementation may skip the chain
    /// check (the file log does; its chain is checked whenever it is opened).
    fn iter_range_trusted(&self, from: u64, to: u64) -> Records {
        self.iter_range(from, to)
    }

    /// Records with a timestamp ≥ `ts_us`, up to `to`.
    fn iter_from_time(&self, ts_us: u64, to: u64) -> Records;

    /// Bytes of committed records as stored (a measure of the log's size, for metrics).
    fn committed_bytes(&self) -> u64;

    /// Records from `from` to the head as of now.
    fn iter_from(&self, from: u64) -> Records {
        self.iter_range(from, u64::MAX)
    }

    /// The chain hash after record `seq` (the genesis hash at 0), or `None` past the head.
    fn hash_at(&self, seq: u64) -> Result<Option<[u8; 32]>, LogError> {
        if seq == 0 {
            return Ok(Some(super::codec::GENESIS_HASH));
        }
        Ok(read_one(self, seq)?.map(|record| record.hash))
    }

    /// Sequence number of the last record with a timestamp at or before `ts_us` (0 if none).
    fn seq_at_time(&self, ts_us: u64) -> Result<u64, LogError> {
        let head = self.head();
        if ts_us >= head.ts_us {
            return Ok(head.seq);
        }
        match self
            .iter_from_time(ts_us.saturating_add(1), head.seq)
            .next()
            .transpose()?
        {
            Some(first_after) => Ok(first_after.seq - 1),
            None => Ok(head.seq),
        }
    }
}

/// Reads one record by sequence number (`None` if the log does not hold it), with one
/// point read ([`ReadLog::read_seqs`]).
pub fn read_one<R: ReadLog + ?Sized>(reader: &R, seq: u64) -> Result<Option<Record>, LogError> {
    // The head only moves forward: a sequence number at or before it stays readable.
    if seq == 0 || seq > reader.head().seq {
        return Ok(None);
    }
    Ok(reader.read_seqs(&[seq])?.pop())
}

/// A shared reader reads as what it shares, so `&Arc<dyn ReadLog>` goes wherever a
/// `&dyn ReadLog` does.
impl<T: ReadLog + ?Sized> ReadLog for std::sync::Arc<T> {
    fn head(&self) -> Head {
        (**self).head()
    }

    fn read_seqs(&self, seqs: &[u64]) -> Result<Vec<Record>, LogError> {
        (**self).read_seqs(seqs)
    }

    fn iter_range(&self, from: u64, to: u64) -> Records {
        (**self).iter_range(from, to)
    }

    fn iter_range_trusted(&self, from: u64, to: u64) -> Records {
        (**self).iter_range_trusted(from, to)
    }

    fn iter_from_time(&self, ts_us: u64, to: u64) -> Records {
        (**self).iter_from_time(ts_us, to)
    }

    fn committed_bytes(&self) -> u64 {
        (**self).committed_bytes()
    }

    fn hash_at(&self, seq: u64) -> Result<Option<[u8; 32]>, LogError> {
        (**self).hash_at(seq)
    }

    fn seq_at_time(&self, ts_us: u64) -> Result<u64, LogError> {
        (**self).seq_at_time(ts_us)
    }
}

//! Readers: iterate committed records from any sequence number or timestamp, starting at
//! the nearest sparse index entry so that the cost follows what is read, not the log size.
//! Every frame is checked again as it is read (hash chain included).

use super::codec::{self, FRAME_HEADER_LEN};
use super::scan::{self, IndexEntry, SEGMENT_HEADER_LEN};
use super::storage::{FileStorage, Storage, StorageFile};
use super::{Head, LogError};
use crate::domain::Record;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Read-ahead per reader: large sequential reads, few system calls.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// What the writer publishes to readers after each commit.
pub(crate) struct Shared {
    pub storage: Arc<dyn Storage>,
    pub state: RwLock<SharedState>,
}

pub(crate) struct SharedState {
    pub head: Head,
    /// Bytes of committed frames across all segments.
    pub bytes: u64,
    pub segments: BTreeMap<u64, PathBuf>,
    pub index: Vec<IndexEntry>,
}

/// A handle for reading committed records; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Opens a log directory for reading only: checks it as `verify` does and never writes,
    /// so it is safe beside a running server. A torn tail (or a frame being written right
    /// now) is simply not part of what it reads; corruption before the tail is an error.
    pub fn open(dir: &std::path::Path) -> Result<LogReader, LogError> {
        Self::open_on(Arc::new(FileStorage::new(dir)))
    }

    /// [`LogReader::open`] on any storage.
    pub fn open_on(storage: Arc<dyn Storage>) -> Result<LogReader, LogError> {
        let scan = scan::scan(storage.as_ref())?;
        let segments = scan.segments.iter().map(|s| (s.first_seq, s.path.clone())).collect();
        Ok(LogReader::new(Arc::new(Shared {
            storage,
            state: RwLock::new(SharedState {
                head: scan.head,
                bytes: scan.committed_bytes(),
                segments,
                index: scan.index,
            }),
        })))
    }

    /// The chain hash after record `seq` (the genesis hash at 0), or `None` past the head.
    pub fn hash_at(&self, seq: u64) -> Result<Option<[u8; 32]>, LogError> {
        if seq == 0 {
            return Ok(Some(super::codec::GENESIS_HASH));
        }
        Ok(super::read_one(self, seq)?.map(|record| record.hash))
    }

    /// Sequence number of the last record with a timestamp at or before `ts_us` (0 if none).
    pub fn seq_at_time(&self, ts_us: u64) -> Result<u64, LogError> {
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

    /// The last committed record.
    /// Bytes of committed frames across all segments.
    pub fn committed_bytes(&self) -> u64 {
        self.shared.state.read().expect("log index lock poisoned").bytes
    }

    pub fn head(&self) -> Head {
        self.shared.state.read().expect("log index lock poisoned").head
    }

    /// Records `from..=to` (clamped to the head as of now), in order.
    pub fn iter_range(&self, from: u64, to: u64) -> RecordIter {
        let state = self.shared.state.read().expect("log index lock poisoned");
        let from = from.max(1);
        let to = to.min(state.head.seq);
        let at = state.index.partition_point(|e| e.seq <= from).saturating_sub(1);
        RecordIter::new(self.shared.clone(), state.index.get(at).copied(), from, to, 0)
    }

    /// Like [`LogReader::iter_range`], without checking record hashes: for the engine's own
    /// followers, which read back what the sequencer has just written and chained. The
    /// chain is checked whenever the log is opened and by every other reader.
    pub fn iter_range_trusted(&self, from: u64, to: u64) -> RecordIter {
        let mut iter = self.iter_range(from, to);
        iter.verify = false;
        iter
    }

    /// Records from `from` to the head as of now.
    pub fn iter_from(&self, from: u64) -> RecordIter {
        self.iter_range(from, u64::MAX)
    }

    /// Records with a timestamp ≥ `ts_us`, up to `to`: the read starts at the time index
    /// entry just before the window.
    pub fn iter_from_time(&self, ts_us: u64, to: u64) -> RecordIter {
        let state = self.shared.state.read().expect("log index lock poisoned");
        let to = to.min(state.head.seq);
        let at = state.index.partition_point(|e| e.ts_us < ts_us).saturating_sub(1);
        let entry = state.index.get(at).copied();
        let from = entry.map_or(1, |e| e.seq);
        RecordIter::new(self.shared.clone(), entry, from, to, ts_us)
    }
}

/// Iterator over committed records; yields an error (once) if the bytes on disk no longer
/// verify.
pub struct RecordIter {
    shared: Arc<Shared>,
    from: u64,
    to: u64,
    min_ts_us: u64,
    segment: u64,
    file: Option<(u64, Arc<dyn StorageFile>, PathBuf)>,
    offset: u64,
    frame_seq: u64,
    last_hash: Option<[u8; 32]>,
    chunk: Vec<u8>,
    chunk_offset: u64,
    ready: VecDeque<Record>,
    done: bool,
    verify: bool,
}

impl RecordIter {
    fn new(shared: Arc<Shared>, entry: Option<IndexEntry>, from: u64, to: u64, min_ts_us: u64) -> Self {
        let entry = entry.unwrap_or(IndexEntry {
            seq: 1,
            ts_us: 0,
            segment: 1,
            offset: SEGMENT_HEADER_LEN as u64,
        });
        Self {
            shared,
            from,
            to,
            min_ts_us,
            segment: entry.segment,
            file: None,
            offset: entry.offset,
            frame_seq: entry.seq,
            last_hash: None,
            chunk: Vec::new(),
            chunk_offset: 0,
            ready: VecDeque::new(),
            done: from > to,
            verify: true,
        }
    }

    fn corrupt(&self, seq: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            seq,
            path: self.file.as_ref().map(|f| f.2.clone()).unwrap_or_default(),
            offset: self.offset,
            reason: reason.into(),
        }
    }

    /// Bytes `offset..offset + len` of the current segment (fewer at the end of the file).
    fn bytes(&mut self, len: usize) -> Result<&[u8], LogError> {
        let in_chunk =
            self.offset >= self.chunk_offset && self.offset + len as u64 <= self.chunk_offset + self.chunk.len() as u64;
        if !in_chunk {
            if self.file.as_ref().is_none_or(|f| f.0 != self.segment) {
                let path = {
                    let state = self.shared.state.read().expect("log index lock poisoned");
                    state.segments.get(&self.segment).cloned()
                };
                let path = path.ok_or_else(|| self.corrupt(self.frame_seq, "segment missing"))?;
                let file = self
                    .shared
                    .storage
                    .open_read(&scan::segment_name(self.segment))
                    .map_err(LogError::io(&path))?;
                self.file = Some((self.segment, file, path));
            }
            let (_, file, path) = self.file.as_ref().expect("opened above");
            self.chunk.resize(len.max(READ_CHUNK_BYTES), 0);
            let filled = match file.read_at(&mut self.chunk, self.offset) {
                Ok(filled) => filled,
                Err(e) => {
                    let error = LogError::io(path)(e);
                    // A failed read leaves nothing half-filled behind for the next call.
                    self.chunk.clear();
                    return Err(error);
                }
            };
            self.chunk.truncate(filled);
            self.chunk_offset = self.offset;
        }
        let start = (self.offset - self.chunk_offset) as usize;
        let end = (start + len).min(self.chunk.len());
        Ok(&self.chunk[start..end])
    }

    /// Reads the next frame into `ready`.
    fn read_frame(&mut self) -> Result<(), LogError> {
        let expected = self.frame_seq;
        let header = codec::decode_frame_header(self.bytes(FRAME_HEADER_LEN)?, expected)
            .map_err(|e| self.corrupt(e.seq, e.reason))?;
        let Some(header) = header else {
            let next = {
                let state = self.shared.state.read().expect("log index lock poisoned");
                state.segments.range(self.segment + 1..).next().map(|(first, _)| *first)
            };
            let next = next.ok_or_else(|| self.corrupt(expected, "the log ends before its head"))?;
            if next != expected {
                return Err(self.corrupt(expected, format!("next segment starts at {next}")));
            }
            (self.segment, self.offset) = (next, SEGMENT_HEADER_LEN as u64);
            // The read-ahead belongs to the previous segment.
            self.chunk.clear();
            return Ok(());
        };
        if self.last_hash.is_some_and(|h| h != header.prev_hash) {
            return Err(self.corrupt(expected, "frame does not continue the hash chain"));
        }
        let (from, to, min_ts, verify) = (self.from, self.to, self.min_ts_us, self.verify);
        let frame = self.bytes(header.frame_len)?;
        if frame.len() < header.frame_len {
            return Err(self.corrupt(expected, "frame cut short"));
        }
        let mut decoded = Vec::new();
        let (mut pos, mut prev, mut seq) = (FRAME_HEADER_LEN, header.prev_hash, expected);
        let mut failure = None;
        for _ in 0..header.record_count {
            match codec::decode_raw(&frame[pos..header.frame_len], &prev, seq, verify) {
                Ok(raw) => {
                    if seq >= from && seq <= to && raw.ts_us >= min_ts {
                        match raw.decode() {
                            Ok(record) => decoded.push(record),
                            Err(e) => {
                                failure = Some(e);
                                break;
                            }
                        }
                    }
                    (prev, pos, seq) = (raw.hash, pos + raw.len, seq + 1);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            return Err(self.corrupt(e.seq, e.reason));
        }
        self.ready.extend(decoded);
        self.last_hash = Some(prev);
        self.offset += header.frame_len as u64;
        self.frame_seq = seq;
        Ok(())
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.ready.pop_front() {
                return Some(Ok(record));
            }
            if self.done || self.frame_seq > self.to {
                return None;
            }
            if let Err(e) = self.read_frame() {
                self.done = true;
                return Some(Err(e));
            }
        }
    }
}

//! Readers: iterate committed records from any sequence number or timestamp, starting at
//! the nearest sparse index entry so that the cost follows what is read, not the log size;
//! or read chosen records by sequence number, each where the dense locator says it is.
//! Every frame is checked again as it is read (hash chain included); a record read alone
//! is checked against the chain hash stored just before it.

use super::codec::{self, FRAME_HEADER_LEN, HASH_LEN};
use super::locator::{Location, Locator};
use super::read::{ReadLog, Records};
use super::scan::{self, IndexEntry, Scan, SEGMENT_HEADER_LEN};
use super::storage::{FileStorage, Storage, StorageFile};
use super::types::{Head, LogError};
use crate::domain::Record;
use std::collections::VecDeque;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

/// Read-ahead per reader: large sequential reads, few system calls.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Wanted records this close (from the end of one to the chain hash before the next) are
/// read together: reading the bytes between costs less than another system call, and on a
/// disk that seeks, much less than another seek.
const COALESCE_GAP_BYTES: u64 = 16 << 10;

/// A read of several wanted records stops growing at this size, so that the buffer of a
/// point read stays small whatever it is asked for; a single longer record is read whole.
const MAX_POINT_READ_BYTES: u64 = 1 << 20;

/// What the writer publishes to readers after each commit.
pub(crate) struct Shared {
    pub storage: Arc<dyn Storage>,
    pub state: RwLock<SharedState>,
}

pub(crate) struct SharedState {
    pub head: Head,
    /// Bytes of committed frames across all segments.
    pub bytes: u64,
    /// Every segment, and where each committed record is in it: exactly the records up to
    /// `head`, since the writer extends it in the same update that moves the head.
    pub locator: Locator,
    pub index: Vec<IndexEntry>,
}

impl SharedState {
    /// What a scan found: the committed records up to its head (a torn tail left out).
    pub fn from_scan(scan: Scan) -> Self {
        assert_eq!(
            scan.locator.last_seq(),
            scan.head.seq,
            "the scan located every record up to its head"
        );
        SharedState {
            head: scan.head,
            bytes: scan.committed_bytes(),
            locator: scan.locator,
            index: scan.index,
        }
    }
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
        Ok(LogReader::new(Arc::new(Shared {
            storage,
            state: RwLock::new(SharedState::from_scan(scan)),
        })))
    }

    /// The records `seqs`, in that order, each read where the dense locator says it is: one
    /// positioned read per record, or one for several when they lie within 16 KiB of each
    /// other in a segment (`COALESCE_GAP_BYTES`). The cost follows `seqs.len()`, not
    /// the log's size. Each record is checked as it is read: its length fields, its sequence
    /// number, and its hash against the chain hash stored in the 32 bytes just before it (the
    /// previous record's hash, or its frame header's); a record that fails is
    /// [`LogError::Corrupt`] naming its sequence number, segment and offset.
    ///
    /// A sequence number that is not in the log (0, or past the head) is refused with
    /// [`LogError::NotInLog`] before anything is read.
    ///
    /// # Panics
    ///
    /// If `seqs` is not ascending with no repeats: a caller's bug.
    pub fn read_seqs(&self, seqs: &[u64]) -> Result<Vec<Record>, LogError> {
        assert!(
            seqs.windows(2).all(|pair| pair[0] < pair[1]),
            "read_seqs takes ascending, distinct sequence numbers"
        );
        let Located { locations, paths } = self.locate(seqs)?;
        let mut records = Vec::with_capacity(seqs.len());
        let mut file: Option<(u64, Arc<dyn StorageFile>)> = None;
        let mut buffer = Vec::new();
        // Reads come in segment order, as `paths` does.
        let mut paths = paths.iter().peekable();
        for read in plan_point_reads(&locations) {
            while paths.peek().is_some_and(|(first, _)| *first != read.segment) {
                paths.next();
            }
            let path = &paths.peek().expect("every read's segment has its path").1;
            let open = match file.take() {
                Some((segment, open)) if segment == read.segment => open,
                _ => self
                    .shared
                    .storage
                    .open_read(&scan::segment_name(read.segment))
                    .map_err(LogError::io(path))?,
            };
            buffer.resize((read.end - read.start) as usize, 0);
            let filled = open.read_at(&mut buffer, read.start).map_err(LogError::io(path))?;
            for at in read.records.clone() {
                let (seq, location) = (seqs[at], locations[at]);
                let record = decode_located(&buffer[..filled], read.start, location, seq).map_err(|reason| {
                    LogError::Corrupt {
                        seq,
                        path: path.clone(),
                        offset: location.offset,
                        reason,
                    }
                })?;
                records.push(record);
            }
            file = Some((read.segment, open));
        }
        Ok(records)
    }

    /// Where each of `seqs` is, and the path of each segment they are in, as of now.
    fn locate(&self, seqs: &[u64]) -> Result<Located, LogError> {
        let state = self.shared.state.read().expect("log index lock poisoned");
        let head = state.head.seq;
        let mut locations = Vec::with_capacity(seqs.len());
        let mut paths: Vec<(u64, PathBuf)> = Vec::new();
        for &seq in seqs {
            if seq == 0 || seq > head {
                return Err(LogError::NotInLog { seq, head });
            }
            let location = state
                .locator
                .locate(seq)
                .expect("the locator holds every record up to the head");
            if paths.last().is_none_or(|(first, _)| *first != location.segment) {
                let path = state.locator.path(location.segment).expect("located");
                paths.push((location.segment, path.to_path_buf()));
            }
            locations.push(location);
        }
        Ok(Located { locations, paths })
    }

    /// Bytes of committed frames across all segments.
    pub fn committed_bytes(&self) -> u64 {
        self.shared.state.read().expect("log index lock poisoned").bytes
    }

    /// Bytes of memory the dense locator's record offsets take (4 a record, and what its
    /// vectors hold in reserve for the segment being written).
    pub fn locator_bytes(&self) -> usize {
        self.shared
            .state
            .read()
            .expect("log index lock poisoned")
            .locator
            .offset_bytes()
    }

    /// The last committed record.
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

/// Where the records a point read wants are, taken in one go under the lock.
struct Located {
    locations: Vec<Location>,
    /// The path of each segment they are in, in segment order.
    paths: Vec<(u64, PathBuf)>,
}

/// One positioned read of [`LogReader::read_seqs`]: bytes `start..end` of a segment,
/// holding the wanted records `records` (indexes into the sequence numbers asked for).
struct PointRead {
    segment: u64,
    start: u64,
    end: u64,
    records: Range<usize>,
}

/// Groups the located records (ascending) into reads: a record joins the read before it when
/// it is in the same segment, starts within [`COALESCE_GAP_BYTES`] of that read's end and
/// keeps it under [`MAX_POINT_READ_BYTES`]. Each record's read starts at the 32 bytes before
/// it, the chain hash it continues.
fn plan_point_reads(locations: &[Location]) -> Vec<PointRead> {
    let mut reads: Vec<PointRead> = Vec::new();
    for (at, location) in locations.iter().enumerate() {
        let start = location.offset - HASH_LEN as u64;
        match reads.last_mut() {
            Some(read)
                if read.segment == location.segment
                    && start <= read.end + COALESCE_GAP_BYTES
                    && location.end - read.start <= MAX_POINT_READ_BYTES =>
            {
                read.end = location.end;
                read.records.end = at + 1;
            }
            _ => reads.push(PointRead {
                segment: location.segment,
                start,
                end: location.end,
                records: at..at + 1,
            }),
        }
    }
    reads
}

/// Decodes and checks the record at `location` from `buffer`, which holds the segment's
/// bytes from `buffer_start` on.
fn decode_located(buffer: &[u8], buffer_start: u64, location: Location, seq: u64) -> Result<Record, String> {
    let from = (location.offset - HASH_LEN as u64 - buffer_start) as usize;
    let to = (location.end - buffer_start) as usize;
    let bytes = buffer
        .get(from..to)
        .ok_or("the segment file ends before the record does")?;
    let (prev_hash, record) = bytes.split_at(HASH_LEN);
    let prev_hash: [u8; 32] = prev_hash.try_into().expect("32 bytes");
    let raw = codec::decode_raw(record, &prev_hash, seq, true).map_err(|e| e.reason)?;
    // What follows a record is the next one or the next frame's header. A record that
    // verifies and ends elsewhere was rewritten, hashes and all, since the log was opened.
    let gap = record.len() - raw.len;
    if gap != 0 && gap != FRAME_HEADER_LEN {
        return Err(format!("record ends {gap} bytes before where the next one starts"));
    }
    raw.decode().map_err(|e| e.reason)
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
                    state.locator.path(self.segment).map(|path| path.to_path_buf())
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
                state.locator.next_segment(self.segment)
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

impl ReadLog for LogReader {
    fn head(&self) -> Head {
        LogReader::head(self)
    }

    fn read_seqs(&self, seqs: &[u64]) -> Result<Vec<Record>, LogError> {
        LogReader::read_seqs(self, seqs)
    }

    fn iter_range(&self, from: u64, to: u64) -> Records {
        Box::new(LogReader::iter_range(self, from, to))
    }

    fn iter_range_trusted(&self, from: u64, to: u64) -> Records {
        Box::new(LogReader::iter_range_trusted(self, from, to))
    }

    fn iter_from_time(&self, ts_us: u64, to: u64) -> Records {
        Box::new(LogReader::iter_from_time(self, ts_us, to))
    }

    fn committed_bytes(&self) -> u64 {
        LogReader::committed_bytes(self)
    }
}

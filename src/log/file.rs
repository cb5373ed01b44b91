//! The file log: segment files in one directory, written by one writer with group commit.

use super::codec::{self, FRAME_HEADER_LEN};
use super::read::ReadLog;
use super::reader::{LogReader, Shared, SharedState};
use super::scan::{self, IndexEntry, Scan, INDEX_STRIDE_BYTES, SEGMENT_HEADER_LEN};
use super::storage::{FileStorage, Storage, StorageFile};
use super::types::{Durability, Head, LogError, LogOptions, Recovery, MIN_SEGMENT_BYTES};
use super::writer::LogWriter;
use crate::domain::{Envelope, Event};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The segment being appended to.
struct Active {
    file: Arc<dyn StorageFile>,
    path: PathBuf,
    first_seq: u64,
    /// Where the next frame goes.
    offset: u64,
    capacity: u64,
    /// Offset of the last sparse index entry in this segment.
    last_indexed: Option<u64>,
}

/// A record encoded into the pending batch.
struct Staged {
    seq: u64,
    ts_us: u64,
    prev_hash: [u8; 32],
    /// Where the record starts in the batch's bytes (its frame's records).
    at: usize,
}

/// What opening found and did.
#[derive(Clone, Debug, Default)]
pub struct OpenReport {
    pub head: Head,
    pub segments: usize,
    /// A torn final frame that was cut off: first lost sequence number and bytes cleared.
    pub truncated: Option<(u64, u64)>,
}

/// An append-only log in a directory of preallocated segment files.
pub struct FileLog {
    storage: Arc<dyn Storage>,
    options: LogOptions,
    active: Active,
    head: Head,
    staged_head: Head,
    staged: Vec<u8>,
    staged_records: Vec<Staged>,
    frame: Vec<u8>,
    shared: Arc<Shared>,
    poisoned: bool,
}

impl FileLog {
    /// Opens (or creates) the log in `dir`: verifies every record's hash and the chain,
    /// handles a torn tail as `options.recovery` says, and refuses corruption before the
    /// tail with the bad sequence number.
    pub fn open(dir: &Path, options: LogOptions) -> Result<(FileLog, OpenReport), LogError> {
        Self::open_on(Arc::new(FileStorage::new(dir)), options)
    }

    /// [`FileLog::open`] on any storage (a simulated disk in tests).
    pub fn open_on(storage: Arc<dyn Storage>, options: LogOptions) -> Result<(FileLog, OpenReport), LogError> {
        assert!(
            options.segment_bytes >= MIN_SEGMENT_BYTES,
            "segments must hold a few records"
        );
        storage.create_dir().map_err(LogError::io(storage.path("")))?;
        let mut scan = scan::scan(storage.as_ref())?;
        let mut report = OpenReport {
            head: scan.head,
            ..OpenReport::default()
        };
        if let Some(torn) = scan.torn.take() {
            if options.recovery == Recovery::Refuse {
                return Err(LogError::TornTail {
                    seq: torn.seq,
                    path: torn.path,
                    offset: torn.offset,
                    reason: torn.reason,
                });
            }
            repair(storage.as_ref(), &torn)?;
            tracing::warn!(
                first_lost_seq = torn.seq,
                segment = %torn.path.display(),
                offset = torn.offset,
                bytes = torn.dirty_end - torn.offset,
                reason = %torn.reason,
                "cut off a torn tail (a group commit interrupted before it was acknowledged)"
            );
            report.truncated = Some((torn.seq, torn.dirty_end - torn.offset));
        }
        report.segments = scan.segments.len();
        let active = match scan.segments.last() {
            Some(last) => reopen_segment(storage.as_ref(), last, &scan, &options)?,
            None => create_segment(storage.as_ref(), scan.head.seq + 1, &options)?,
        };
        let head = scan.head;
        let mut state = SharedState::from_scan(scan);
        if state.locator.last_segment() != Some(active.first_seq) {
            // A new log: its first segment was created just now.
            state
                .locator
                .add_segment(active.first_seq, active.path.clone(), active.offset);
        }
        let shared = Arc::new(Shared {
            storage: storage.clone(),
            state: RwLock::new(state),
        });
        let log = FileLog {
            storage,
            options,
            active,
            head,
            staged_head: head,
            staged: Vec::with_capacity(1 << 20),
            staged_records: Vec::new(),
            frame: Vec::with_capacity(1 << 20),
            shared,
            poisoned: false,
        };
        Ok((log, report))
    }

    /// Writes the staged records as one frame: a group commit is all or nothing, because a
    /// frame cut short is a torn tail and is cut off whole. A commit never spans segments
    /// (a crash between two segments' syncs would keep its first part, half a command): one
    /// that does not fit what is left of the segment rolls to a new one first, and one larger
    /// than a whole segment makes that segment larger.
    fn write_staged(&mut self) -> Result<(), LogError> {
        let first = &self.staged_records[0];
        let (first_seq, first_ts_us, first_prev_hash) = (first.seq, first.ts_us, first.prev_hash);
        let size = (FRAME_HEADER_LEN + self.staged.len()) as u64;
        let mut new_segment = None;
        if self.active.offset + size > self.active.capacity && self.active.offset > SEGMENT_HEADER_LEN as u64 {
            self.active = create_segment(self.storage.as_ref(), first_seq, &self.options)?;
            new_segment = Some(self.active.path.clone());
        }
        if self.active.offset + size > self.active.capacity {
            let capacity = self.active.offset + size;
            self.active
                .file
                .extend_to(capacity)
                .map_err(LogError::io(&self.active.path))?;
            self.active.capacity = capacity;
        }
        self.frame.clear();
        codec::encode_frame_header(
            &mut self.frame,
            self.staged.len(),
            self.staged_records.len() as u32,
            first_seq,
            &first_prev_hash,
        );
        self.frame.extend_from_slice(&self.staged);
        self.active
            .file
            .write_all_at(&self.frame, self.active.offset)
            .map_err(LogError::io(&self.active.path))?;
        let mut new_index = None;
        if self
            .active
            .last_indexed
            .is_none_or(|at| self.active.offset - at >= INDEX_STRIDE_BYTES)
        {
            new_index = Some(IndexEntry {
                seq: first_seq,
                ts_us: first_ts_us,
                segment: self.active.first_seq,
                offset: self.active.offset,
            });
            self.active.last_indexed = Some(self.active.offset);
        }
        let frame_offset = self.active.offset;
        self.active.offset += size;
        self.sync_active()?;
        let records_offset = frame_offset + FRAME_HEADER_LEN as u64;
        let mut shared = self.shared.state.write().expect("log index lock poisoned");
        if let Some(path) = new_segment {
            shared
                .locator
                .add_segment(self.active.first_seq, path, SEGMENT_HEADER_LEN as u64);
        }
        // Readers locate the frame's records from the moment they see the new head: both
        // change under this one lock.
        let offsets = self.staged_records.iter().map(|r| records_offset + r.at as u64);
        shared
            .locator
            .push_frame(self.active.first_seq, offsets, self.active.offset);
        assert_eq!(
            shared.locator.last_seq(),
            self.staged_head.seq,
            "the locator holds every committed record"
        );
        shared.index.extend(new_index);
        shared.head = self.staged_head;
        shared.bytes += size;
        Ok(())
    }

    fn sync_active(&self) -> Result<(), LogError> {
        if self.options.durability == Durability::Sync {
            self.active.file.sync_data().map_err(LogError::io(&self.active.path))?;
        }
        Ok(())
    }
}

impl LogWriter for FileLog {
    fn stage(&mut self, seq: u64, ts_us: u64, envelope: &Envelope, event: &Event) -> [u8; 32] {
        assert_eq!(seq, self.staged_head.seq + 1, "records are staged in gapless sequence");
        assert!(ts_us >= self.staged_head.ts_us, "timestamps never decrease");
        let prev_hash = self.staged_head.hash;
        let at = self.staged.len();
        let hash = codec::encode_record(&mut self.staged, &prev_hash, seq, ts_us, envelope, event);
        self.staged_records.push(Staged {
            seq,
            ts_us,
            prev_hash,
            at,
        });
        self.staged_head = Head { seq, ts_us, hash };
        hash
    }

    fn commit(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if self.staged_records.is_empty() {
            return Ok(());
        }
        let result = self.write_staged();
        if result.is_err() {
            // What reached the disk is unknown; only reopening (and its scan) can tell.
            self.poisoned = true;
            return result;
        }
        self.head = self.staged_head;
        self.staged.clear();
        self.staged_records.clear();
        Ok(())
    }

    fn head(&self) -> Head {
        self.head
    }

    fn reader(&self) -> Arc<dyn ReadLog> {
        Arc::new(LogReader::new(self.shared.clone()))
    }
}

/// Clears a torn tail so that the next scan sees the end of the log where it now is.
fn repair(storage: &dyn Storage, torn: &scan::Torn) -> Result<(), LogError> {
    let io = LogError::io(&torn.path);
    if torn.header_torn {
        return storage.remove(&torn.name).map_err(io);
    }
    let file = storage.open_write(&torn.name).map_err(LogError::io(&torn.path))?;
    let zeros = vec![0u8; (torn.dirty_end - torn.offset) as usize];
    file.write_all_at(&zeros, torn.offset)
        .map_err(LogError::io(&torn.path))?;
    file.sync_data().map_err(io)
}

fn create_segment(storage: &dyn Storage, first_seq: u64, options: &LogOptions) -> Result<Active, LogError> {
    let name = scan::segment_name(first_seq);
    let path = storage.path(&name);
    let file = storage
        .create(&name, options.segment_bytes)
        .map_err(LogError::io(&path))?;
    file.write_all_at(&scan::segment_header(first_seq), 0)
        .map_err(LogError::io(&path))?;
    file.sync_data().map_err(LogError::io(&path))?;
    Ok(Active {
        file,
        path,
        first_seq,
        offset: SEGMENT_HEADER_LEN as u64,
        capacity: options.segment_bytes,
        last_indexed: None,
    })
}

fn reopen_segment(
    storage: &dyn Storage,
    segment: &scan::SegmentInfo,
    scan: &Scan,
    options: &LogOptions,
) -> Result<Active, LogError> {
    let (first_seq, path, end, len) = (segment.first_seq, &segment.path, segment.end, segment.len);
    let file = storage.open_write(&segment.name).map_err(LogError::io(path))?;
    let capacity = len.max(options.segment_bytes);
    if len < capacity {
        file.extend_to(capacity).map_err(LogError::io(path))?;
    }
    let last_indexed = scan
        .index
        .iter()
        .rev()
        .find(|e| e.segment == first_seq)
        .map(|e| e.offset);
    Ok(Active {
        file,
        path: path.clone(),
        first_seq,
        offset: end,
        capacity,
        last_indexed,
    })
}

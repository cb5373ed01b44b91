//! Reading a log directory from the start: segment headers, frames, the hash chain. Used
//! when opening the log for writing (with repair of a torn tail) and by `tally verify`
//! (read-only).
//!
//! A bad frame is a *torn tail* when it is the last thing written in the last segment and it
//! is incomplete: the file ends inside it, or one of the disk sectors it spans was never
//! written (still zeros in the preallocated file). The crash cut the last group commit
//! short, and nobody heard "ok" for it. Anything else — a complete frame that fails its
//! checks (bit rot in acknowledged data), a bad frame followed by a good one, or a bad frame
//! in an earlier segment — is corruption, named by the sequence number of the first bad
//! record.

use super::codec::{self, DecodeError, FRAME_HEADER_LEN};
use super::locator::Locator;
use super::storage::{FileStorage, Storage};
use super::types::{Head, LogError};
use crate::domain::EventKind;
use std::path::{Path, PathBuf};

/// Segment header, 64 bytes: magic, format version, first sequence number, and a blake3
/// of the first 32 bytes.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"TALLYSEG";
/// The log format version this build writes and reads.
/// Version 2 added the event kinds of the ingest pipeline (8 to 14), version 3 those of
/// account links (15 to 19), version 4 the refused comp (20), version 5 sessions and API keys
/// (21 to 25), version 6 endpoints and deliveries (26 to 33); the byte layout is that of version 1, so older segments are
/// read as they are, and a log may hold several versions (segments written before and
/// after an upgrade). An older build refuses a newer segment instead of failing on a kind
/// it does not know.
pub const FORMAT_VERSION: u32 = 6;

/// The oldest segment format version this build reads.
pub const OLDEST_READ_VERSION: u32 = 1;
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Distance between sparse index entries: a read starts at most this many bytes before
/// the record it wants.
pub(crate) const INDEX_STRIDE_BYTES: u64 = 64 << 10;

/// Where a frame starts: the sparse sequence and time index is a list of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub seq: u64,
    pub ts_us: u64,
    /// First sequence number of the segment (its file name).
    pub segment: u64,
    pub offset: u64,
}

pub(crate) fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    header[0..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let digest = blake3::hash(&header[..32]);
    header[32..64].copy_from_slice(digest.as_bytes());
    header
}

fn check_segment_header(bytes: &[u8], first_seq: u64) -> Result<(), String> {
    let header = bytes.get(..SEGMENT_HEADER_LEN).ok_or("segment header cut short")?;
    if &header[0..8] != SEGMENT_MAGIC {
        return Err("not a Tally segment (bad magic)".into());
    }
    if blake3::hash(&header[..32]).as_bytes() != &header[32..64] {
        return Err("segment header checksum does not match".into());
    }
    let version = codec::u32_at(header, 8);
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "segment format version {version}; this build reads {OLDEST_READ_VERSION} to {FORMAT_VERSION}"
        ));
    }
    let named = codec::u64_at(header, 16);
    if named != first_seq {
        return Err(format!(
            "segment header says it starts at {named}, its name says {first_seq}"
        ));
    }
    Ok(())
}

/// The file name of the segment whose first record is `first_seq`.
pub(crate) fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The segment files of a log's storage, by first sequence number.
pub(crate) fn list_segments(storage: &dyn Storage) -> Result<Vec<(u64, String)>, LogError> {
    let names = storage.list().map_err(LogError::io(storage.path("")))?;
    let mut segments: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|name| {
            let first = name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok())?;
            Some((first, name))
        })
        .collect();
    segments.sort();
    // Readers open a segment by the name the log gives it: a file named otherwise (`1.seg`)
    // would be scanned and then never read. The log did not write it; it is refused.
    if let Some((first_seq, name)) = segments.iter().find(|(first, name)| *name != segment_name(*first)) {
        return Err(LogError::Corrupt {
            seq: *first_seq,
            path: storage.path(name),
            offset: 0,
            reason: format!(
                "a segment file named {name}; the log names it {}",
                segment_name(*first_seq)
            ),
        });
    }
    Ok(segments)
}

/// A torn final frame (or a torn segment header) found by the scan.
#[derive(Clone, Debug)]
pub(crate) struct Torn {
    pub name: String,
    pub path: PathBuf,
    pub offset: u64,
    pub seq: u64,
    pub reason: String,
    /// End of the non-zero bytes of the segment: what repair has to clear.
    pub dirty_end: u64,
    /// The segment's own header is torn: the file holds nothing and is removed.
    pub header_torn: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct SegmentInfo {
    pub first_seq: u64,
    pub name: String,
    pub path: PathBuf,
    /// Offset just past the last valid frame.
    pub end: u64,
    pub len: u64,
}

pub(crate) struct Scan {
    pub head: Head,
    pub segments: Vec<SegmentInfo>,
    pub index: Vec<IndexEntry>,
    /// Every record of the segments above, up to the head (the torn tail left out).
    pub locator: Locator,
    pub torn: Option<Torn>,
}

impl Scan {
    /// Bytes of valid frames across all segments.
    pub fn committed_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.end - SEGMENT_HEADER_LEN as u64).sum()
    }
}

struct FrameSummary {
    len: usize,
    first_ts: u64,
    last_seq: u64,
    last_ts: u64,
    last_hash: [u8; 32],
}

/// Checks one frame at the start of `bytes`, continuing the chain from `prev_hash`, and
/// puts where each of its records starts (from the start of the frame) in `record_starts`.
/// `Ok(None)`: zeros, the end of the written part of the segment.
fn walk_frame(
    bytes: &[u8],
    expected_seq: u64,
    prev_hash: &[u8; 32],
    last_ts: u64,
    record_starts: &mut Vec<usize>,
) -> Result<Option<FrameSummary>, DecodeError> {
    record_starts.clear();
    let Some(header) = codec::decode_frame_header(bytes, expected_seq)? else {
        return Ok(None);
    };
    let fail = |reason: &str| DecodeError {
        seq: expected_seq,
        reason: reason.to_string(),
    };
    if header.prev_hash != *prev_hash {
        return Err(fail("frame does not continue the hash chain"));
    }
    let frame = bytes.get(..header.frame_len).ok_or_else(|| fail("frame cut short"))?;
    let (mut pos, mut prev, mut seq, mut ts) = (FRAME_HEADER_LEN, *prev_hash, expected_seq, last_ts);
    let mut first_ts = None;
    for _ in 0..header.record_count {
        if pos == header.frame_len {
            // Every record the frame's length holds is read: the count is what is wrong.
            return Err(fail("frame header counts more records than it holds"));
        }
        let record = codec::decode_raw(&frame[pos..], &prev, seq, true)?;
        if record.ts_us < ts {
            return Err(DecodeError {
                seq,
                reason: "timestamp goes backwards".into(),
            });
        }
        if EventKind::from_code(record.kind).is_none() {
            return Err(DecodeError {
                seq,
                reason: format!("unknown event kind {}", record.kind),
            });
        }
        first_ts.get_or_insert(record.ts_us);
        record_starts.push(pos);
        // A frame that `valid_frame_after` finds names its own first sequence number, which
        // may be the largest there is: nothing can follow it.
        let next = seq.checked_add(1).ok_or_else(|| DecodeError {
            seq,
            reason: "sequence number out of range".into(),
        })?;
        (prev, ts, pos, seq) = (record.hash, record.ts_us, pos + record.len, next);
    }
    if pos != header.frame_len {
        return Err(fail("frame length does not match its records"));
    }
    Ok(Some(FrameSummary {
        len: header.frame_len,
        first_ts: first_ts.expect("frames hold at least one record"),
        last_seq: seq - 1,
        last_ts: ts,
        last_hash: prev,
    }))
}

/// Bytes a disk writes atomically. A power cut leaves each sector of an unfinished write
/// wholly old or wholly new, never part of each; a process killed mid-write leaves whole
/// pages (a multiple of this) unwritten. The log's segments are preallocated with zeros,
/// so a part of a frame that was never written is a run of zeros covering whole sectors.
pub(crate) const SECTOR_BYTES: usize = 512;

/// Whether the bad frame at `offset` of the last segment (`bytes`, the whole file) is a
/// write cut short rather than damage. A frame is acknowledged only after its every sector
/// is on disk, so one that is incomplete — the file ends inside it, or a sector it spans
/// holds only zeros where the frame should be — was never acknowledged. A complete frame
/// that fails its checks had its bytes changed after they were written: corruption. So is
/// a frame whose every record is there and verifies, continuing the chain from `prev_hash`,
/// while its header disagrees (its length or count damaged, which would otherwise make
/// the zeros after it look like part of it).
fn incomplete_frame(bytes: &[u8], offset: usize, expected_seq: u64, prev_hash: &[u8; 32]) -> bool {
    if offset + FRAME_HEADER_LEN > bytes.len() {
        return true;
    }
    let end = if codec::u32_at(bytes, offset) == codec::FRAME_MAGIC {
        let declared_records = codec::u32_at(bytes, offset + 8);
        // A header that counts no records is not a frame whose records all verify: its
        // count may be a sector of it that never reached the disk (zeros).
        if declared_records > 0
            && records_that_verify(bytes, offset, expected_seq, prev_hash, declared_records) == declared_records
        {
            return false;
        }
        offset + (codec::u32_at(bytes, offset + 4) as usize).max(FRAME_HEADER_LEN)
    } else {
        // No frame length to trust: the frame reaches at most to the last written byte.
        let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(offset, |at| at + 1);
        dirty_end.max(offset + FRAME_HEADER_LEN)
    };
    if end > bytes.len() {
        return true;
    }
    let mut start = offset;
    while start < end {
        let sector_end = (start / SECTOR_BYTES + 1) * SECTOR_BYTES;
        if bytes[start..end.min(sector_end)].iter().all(|&b| b == 0) {
            return true;
        }
        start = sector_end;
    }
    false
}

/// How many records, at most `max`, follow the frame header at `offset` one after the
/// other with their hashes continuing the chain.
fn records_that_verify(bytes: &[u8], offset: usize, mut seq: u64, prev_hash: &[u8; 32], max: u32) -> u32 {
    let (mut at, mut prev, mut verified) = (offset + FRAME_HEADER_LEN, *prev_hash, 0);
    while verified < max {
        match codec::decode_raw(&bytes[at..], &prev, seq, true) {
            Ok(record) => (at, prev, seq, verified) = (at + record.len, record.hash, seq + 1, verified + 1),
            Err(_) => break,
        }
    }
    verified
}

/// Is there a frame after `from` that checks out on its own and lies beyond `head_seq`?
/// If so, the bad bytes before it are not a torn tail but damage to written data.
fn valid_frame_after(bytes: &[u8], from: usize, head_seq: u64) -> bool {
    let magic = codec::FRAME_MAGIC.to_le_bytes();
    (from..bytes.len().saturating_sub(FRAME_HEADER_LEN)).any(|at| {
        if bytes[at..at + 4] != magic {
            return false;
        }
        let first_seq = codec::u64_at(bytes, at + 16);
        let prev: [u8; 32] = bytes[at + 24..at + 56].try_into().expect("32 bytes");
        first_seq > head_seq
            && matches!(
                walk_frame(&bytes[at..], first_seq, &prev, 0, &mut Vec::new()),
                Ok(Some(_))
            )
    })
}

/// Scans the whole log.
pub(crate) fn scan(storage: &dyn Storage) -> Result<Scan, LogError> {
    let listed = list_segments(storage)?;
    let mut result = Scan {
        head: Head {
            hash: codec::GENESIS_HASH,
            ..Head::default()
        },
        segments: Vec::new(),
        index: Vec::new(),
        locator: Locator::default(),
        torn: None,
    };
    // Reused from frame to frame: the scan allocates nothing per frame.
    let mut record_starts = Vec::new();
    for (position, (first_seq, name)) in listed.iter().enumerate() {
        let last = position + 1 == listed.len();
        let path = &storage.path(name);
        let bytes = storage.read_all(name).map_err(LogError::io(path))?;
        let expected = result.head.seq + 1;
        let corrupt = |seq: u64, offset: usize, reason: String| LogError::Corrupt {
            seq,
            path: path.clone(),
            offset: offset as u64,
            reason,
        };
        if *first_seq != expected {
            return Err(corrupt(
                expected,
                0,
                format!("segment starts at {first_seq}, expected {expected}"),
            ));
        }
        if let Err(reason) = check_segment_header(&bytes, *first_seq) {
            let empty = bytes
                .get(SEGMENT_HEADER_LEN..)
                .is_none_or(|rest| rest.iter().all(|&b| b == 0));
            if last && empty {
                result.torn = Some(Torn {
                    name: name.clone(),
                    path: path.clone(),
                    offset: 0,
                    seq: expected,
                    reason,
                    dirty_end: bytes.len() as u64,
                    header_torn: true,
                });
                break;
            }
            return Err(corrupt(expected, 0, reason));
        }
        let mut offset = SEGMENT_HEADER_LEN;
        let mut last_indexed: Option<usize> = None;
        result
            .locator
            .add_segment(*first_seq, path.clone(), SEGMENT_HEADER_LEN as u64);
        let failure = loop {
            let head = result.head;
            match walk_frame(
                &bytes[offset..],
                head.seq + 1,
                &head.hash,
                head.ts_us,
                &mut record_starts,
            ) {
                Ok(None) => match bytes[offset..].iter().rposition(|&b| b != 0) {
                    None => break None,
                    Some(_) => {
                        break Some(DecodeError {
                            seq: head.seq + 1,
                            reason: "zeros where a frame should be, with data after them".into(),
                        })
                    }
                },
                Ok(Some(frame)) => {
                    if last_indexed.is_none_or(|at| (offset - at) as u64 >= INDEX_STRIDE_BYTES) {
                        result.index.push(IndexEntry {
                            seq: head.seq + 1,
                            ts_us: frame.first_ts,
                            segment: *first_seq,
                            offset: offset as u64,
                        });
                        last_indexed = Some(offset);
                    }
                    result.head = Head {
                        seq: frame.last_seq,
                        ts_us: frame.last_ts,
                        hash: frame.last_hash,
                    };
                    let starts = record_starts.iter().map(|start| (offset + start) as u64);
                    result
                        .locator
                        .push_frame(*first_seq, starts, (offset + frame.len) as u64);
                    offset += frame.len;
                }
                Err(error) => break Some(error),
            }
        };
        if let Some(error) = failure {
            let head = result.head;
            if !last
                || valid_frame_after(&bytes, offset + 1, head.seq)
                || !incomplete_frame(&bytes, offset, head.seq + 1, &head.hash)
            {
                return Err(corrupt(error.seq, offset, error.reason));
            }
            let dirty_end = bytes.iter().rposition(|&b| b != 0).map_or(offset, |at| at + 1);
            result.torn = Some(Torn {
                name: name.clone(),
                path: path.clone(),
                offset: offset as u64,
                // The whole frame is cut: its first record is the first one lost.
                seq: head.seq + 1,
                reason: error.reason,
                dirty_end: dirty_end as u64,
                header_torn: false,
            });
        }
        result.segments.push(SegmentInfo {
            first_seq: *first_seq,
            name: name.clone(),
            path: path.clone(),
            end: offset as u64,
            len: bytes.len() as u64,
        });
    }
    Ok(result)
}

/// What `tally verify` reports of a sound log.
#[derive(Clone, Debug)]
pub struct Verified {
    pub head: Head,
    pub segments: usize,
    /// A torn final frame that opening the log would cut off: `(first lost seq, bytes)`.
    pub torn_tail: Option<(u64, u64)>,
}

/// Verifies a log directory without changing it: every segment header, frame and record
/// hash, the chain from the first record to the last. Corruption before the tail is an
/// error naming the bad sequence number.
pub fn verify(dir: &Path) -> Result<Verified, LogError> {
    verify_storage(&FileStorage::new(dir))
}

/// [`verify`] on any storage.
pub fn verify_storage(storage: &dyn Storage) -> Result<Verified, LogError> {
    let scan = scan(storage)?;
    Ok(Verified {
        head: scan.head,
        segments: scan.segments.len(),
        torn_tail: scan.torn.map(|t| (t.seq, t.dirty_end - t.offset)),
    })
}

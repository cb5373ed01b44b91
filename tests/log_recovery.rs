//! Protects the log's promises: a torn tail (the file cut at any byte of the last frame, or
//! any of its sectors never written) is cut off and the log goes on from the record before
//! it; a complete last frame that fails its checks is corruption, never cut off as a tear;
//! a flipped bit anywhere in an earlier record is refused with that record's sequence
//! number, by opening and by `verify`; the chain
//! continues across segments and restarts; readers return exactly the committed records by
//! sequence number and by time.

mod support;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tally::domain::{Envelope, Event};
use tally::log::{self, Durability, FileLog, LogError, LogOptions, LogWriter, Recovery, MIN_SEGMENT_BYTES};

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: MIN_SEGMENT_BYTES,
        durability: Durability::Buffered,
        recovery: Recovery::TruncateTornTail,
    }
}

fn event(seq: u64) -> (Envelope, Event) {
    support::sample_record(seq, 0)
}

/// Appends records `from..=to` in frames of `per_frame`, timestamps 1000 × seq.
fn append(log: &mut FileLog, from: u64, to: u64, per_frame: u64) {
    for seq in from..=to {
        let (envelope, event) = event(seq);
        log.stage(seq, seq * 1000, &envelope, &event);
        if (seq - from + 1).is_multiple_of(per_frame) || seq == to {
            log.commit().expect("commit");
        }
    }
}

fn write_log(dir: &Path, records: u64, per_frame: u64) {
    let (mut log, _) = FileLog::open(dir, options()).expect("open");
    append(&mut log, 1, records, per_frame);
}

/// `(offset, len, first_seq, record_count)` of every frame of a segment file.
fn frames(path: &Path) -> Vec<(usize, usize, u64, u32)> {
    let bytes = fs::read(path).unwrap();
    let mut at = 64;
    let mut out = Vec::new();
    while at + 56 <= bytes.len() && bytes[at..at + 4] != [0; 4] {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        let count = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
        let first = u64::from_le_bytes(bytes[at + 16..at + 24].try_into().unwrap());
        out.push((at, len, first, count));
        at += len;
    }
    out
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    paths.sort();
    paths
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for path in segments(from) {
        fs::copy(&path, to.path().join(path.file_name().unwrap())).unwrap();
    }
    to
}

fn head_seq(dir: &Path) -> Result<u64, LogError> {
    FileLog::open(dir, options()).map(|(log, _)| log.head().seq)
}

#[test]
fn records_survive_reopen_and_the_chain_continues() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 10, 3);
    let (mut log, report) = FileLog::open(dir.path(), options()).unwrap();
    assert_eq!((report.head.seq, report.truncated), (10, None));
    append(&mut log, 11, 20, 4);
    drop(log);
    let verified = log::verify(dir.path()).unwrap();
    assert_eq!(verified.head.seq, 20);
    let records: Vec<_> = FileLog::open(dir.path(), options())
        .unwrap()
        .0
        .reader()
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    for record in &records {
        let (envelope, event) = event(record.seq);
        assert_eq!(
            (&record.envelope, &record.event, record.ts_us),
            (&envelope, &event, record.seq * 1000)
        );
    }
}

/// Bytes a disk writes atomically (the log's own assumption, `SECTOR_BYTES` in scan.rs).
const SECTOR: usize = 512;

/// A log of five one-record frames and a last frame of eight records (6 to 13) that spans
/// several sectors: the segment and the last frame's offset and length.
fn log_with_a_long_last_frame(dir: &Path) -> (PathBuf, usize, usize) {
    let (mut log, _) = FileLog::open(dir, options()).expect("open");
    append(&mut log, 1, 5, 1);
    append(&mut log, 6, 13, 8);
    drop(log);
    let segment = segments(dir).pop().unwrap();
    let (offset, len, first, count) = *frames(&segment).last().unwrap();
    assert_eq!((first, count), (6, 8));
    assert!(len > 2 * SECTOR, "the last frame spans several sectors");
    (segment, offset, len)
}

/// Applies `damage` to a copy of `dir`'s segment and returns the copy.
fn damaged_copy(dir: &Path, segment: &Path, damage: impl FnOnce(&fs::File)) -> tempfile::TempDir {
    let copy = copy_dir(dir);
    let path = copy.path().join(segment.file_name().unwrap());
    damage(&OpenOptions::new().read(true).write(true).open(&path).unwrap());
    copy
}

/// The frame's sector pieces: its bytes cut at every sector boundary of the file.
fn sector_pieces(offset: usize, len: usize) -> Vec<(usize, usize)> {
    let mut pieces = Vec::new();
    let mut start = offset;
    while start < offset + len {
        let end = ((start / SECTOR + 1) * SECTOR).min(offset + len);
        pieces.push((start, end));
        start = end;
    }
    pieces
}

/// One way to tear the last frame, applied to the segment file.
type Tear = Box<dyn Fn(&fs::File)>;

#[test]
fn a_torn_tail_is_cut_off_whichever_of_its_sectors_reached_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offset, len) = log_with_a_long_last_frame(dir.path());
    let pieces = sector_pieces(offset, len);
    // What a crash can leave of the last group commit: the file cut short at any byte; the
    // frame's later sectors never written (zeros in the preallocated file); or any one
    // sector of it not written while the others were (a disk may reorder them).
    let mut tears: Vec<(String, Tear)> = Vec::new();
    for cut in 1..len {
        tears.push((
            format!("file cut at frame byte {cut}"),
            Box::new(move |file: &fs::File| file.set_len((offset + cut) as u64).unwrap()),
        ));
    }
    for (at, &(start, _)) in pieces.iter().enumerate().skip(1) {
        tears.push((
            format!("sectors from piece {at} on never written"),
            Box::new(move |file: &fs::File| file.write_all_at(&vec![0; offset + len - start], start as u64).unwrap()),
        ));
    }
    for (at, &(start, end)) in pieces.iter().enumerate() {
        tears.push((
            format!("sector piece {at} alone never written"),
            Box::new(move |file: &fs::File| file.write_all_at(&vec![0; end - start], start as u64).unwrap()),
        ));
    }
    for (what, tear) in tears {
        let copy = damaged_copy(dir.path(), &segment, tear);
        let verified = log::verify(copy.path()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(verified.head.seq, 5, "{what}");
        assert_eq!(
            verified.torn_tail.map(|t| t.0),
            Some(6),
            "{what}: a torn tail is reported"
        );
        let (mut log, report) = FileLog::open(copy.path(), options()).unwrap();
        assert_eq!(report.head.seq, 5, "{what}");
        assert_eq!(report.truncated.map(|t| t.0), Some(6), "{what}");
        // The log goes on from the record before the tear, and verifies.
        append(&mut log, 6, 7, 1);
        drop(log);
        assert_eq!(log::verify(copy.path()).unwrap().head.seq, 7, "{what}");
    }
}

#[test]
fn a_frame_header_torn_across_a_sector_boundary_is_a_tear() {
    // The last frame's 56-byte header straddles a sector boundary and only its first sector
    // reached the disk: its magic is there, its length and count are zeros. Found by the
    // simulated disk (tests/disk_faults.rs), which called it corruption.
    for padding in 1..400u64 {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = FileLog::open(dir.path(), options()).expect("open");
        append(&mut log, 1, padding, padding);
        append(&mut log, padding + 1, padding + 8, 8);
        drop(log);
        let segment = segments(dir.path()).pop().unwrap();
        let (offset, len, _, _) = *frames(&segment).last().unwrap();
        let boundary = (offset / SECTOR + 1) * SECTOR;
        if boundary - offset > 8 || boundary - offset < 4 {
            continue;
        }
        let copy = damaged_copy(dir.path(), &segment, |file| {
            let end = (boundary + SECTOR).min(offset + len);
            file.write_all_at(&vec![0; end - boundary], boundary as u64).unwrap()
        });
        let verified = log::verify(copy.path()).unwrap_or_else(|e| panic!("header cut at {}: {e}", boundary - offset));
        assert_eq!(verified.head.seq, padding);
        assert_eq!(verified.torn_tail.map(|t| t.0), Some(padding + 1));
        return;
    }
    panic!("no layout put a frame header across a sector boundary");
}

#[test]
fn a_complete_last_frame_that_fails_its_checks_is_corruption_not_a_tear() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, offset, len) = log_with_a_long_last_frame(dir.path());
    let bytes = fs::read(&segment).unwrap();
    // Which record each byte of the frame belongs to (header bytes: the first).
    let mut bounds = Vec::new();
    let mut at = offset + 56;
    for seq in 6..=13u64 {
        let record_len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        bounds.push((at, at + record_len, seq));
        at += record_len;
    }
    // A record's bytes name that record; the frame header's name a record of the frame (a
    // damaged length makes the first record that no longer fits the one named).
    let record_of = |byte: usize| {
        bounds
            .iter()
            .find(|b| (b.0..b.1).contains(&byte))
            .map_or(6..=13, |b| b.2..=b.2)
    };
    // Bit rot anywhere in the frame, header included (a damaged length must not make the
    // zeros after the frame look like an unwritten part of it), and the frame's last bytes
    // zeroed within a sector that was written.
    let mut damage: Vec<(usize, Vec<u8>, std::ops::RangeInclusive<u64>)> = Vec::new();
    for (byte, &value) in bytes.iter().enumerate().skip(offset).take(len) {
        for bit in [0, 7] {
            damage.push((byte, vec![value ^ (1 << bit)], record_of(byte)));
        }
    }
    let (last_start, last_end) = *sector_pieces(offset, len).last().unwrap();
    for zeros in 1..(last_end - last_start) {
        // Only where the sector still holds a written byte: a sector of nothing but zeros
        // is exactly what an unwritten one looks like.
        let changes = bytes[last_end - zeros..last_end].iter().any(|&b| b != 0);
        if changes && bytes[last_start..last_end - zeros].iter().any(|&b| b != 0) {
            damage.push((last_end - zeros, vec![0; zeros], 13..=13));
        }
    }
    for (at, new_bytes, expected) in damage {
        let copy = damaged_copy(dir.path(), &segment, |file| {
            file.write_all_at(&new_bytes, at as u64).unwrap()
        });
        for result in [log::verify(copy.path()).map(|_| ()), head_seq(copy.path()).map(|_| ())] {
            match result {
                Err(LogError::Corrupt { seq, .. }) => {
                    assert!(
                        expected.contains(&seq),
                        "byte {at} changed to {new_bytes:?}: seq {seq}, expected {expected:?}"
                    )
                }
                other => panic!(
                    "{} bytes from {at} changed (seq {expected:?}) and not refused: {other:?}",
                    new_bytes.len()
                ),
            }
        }
    }
}

#[test]
fn refuse_policy_reports_a_torn_tail_instead_of_cutting_it() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 3, 1);
    let segment = segments(dir.path()).pop().unwrap();
    let (offset, len, _, _) = *frames(&segment).last().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len((offset + len - 1) as u64)
        .unwrap();
    let refused = FileLog::open(
        dir.path(),
        LogOptions {
            recovery: Recovery::Refuse,
            ..options()
        },
    );
    assert!(
        matches!(refused, Err(LogError::TornTail { seq: 3, .. })),
        "{:?}",
        refused.err()
    );
}

#[test]
fn a_flipped_bit_in_any_earlier_record_is_refused_with_its_sequence_number() {
    let dir = tempfile::tempdir().unwrap();
    // Frames of one, three and one records: every record but those of the last frame.
    let (mut log, _) = FileLog::open(dir.path(), options()).unwrap();
    append(&mut log, 1, 2, 1);
    append(&mut log, 3, 5, 3);
    append(&mut log, 6, 7, 1);
    drop(log);
    let segment = segments(dir.path()).pop().unwrap();
    let all = frames(&segment);
    let bytes = fs::read(&segment).unwrap();
    for &(offset, len, first, count) in &all[..all.len() - 1] {
        // Record boundaries inside the frame, to know which sequence number a byte belongs to.
        let mut bounds = Vec::new();
        let mut at = offset + 56;
        for n in 0..count as u64 {
            let record_len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            bounds.push((at, at + record_len, first + n));
            at += record_len;
        }
        for byte in offset..offset + len {
            let expected = bounds
                .iter()
                .find(|(start, end, _)| (*start..*end).contains(&byte))
                .map_or(first, |b| b.2);
            let copy = copy_dir(dir.path());
            let path = copy.path().join(segment.file_name().unwrap());
            let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let mut one = [0u8];
            file.read_exact_at(&mut one, byte as u64).unwrap();
            file.write_all_at(&[one[0] ^ (1 << (byte % 8))], byte as u64).unwrap();
            for result in [head_seq(copy.path()).map(|_| ()), log::verify(copy.path()).map(|_| ())] {
                match result {
                    Err(LogError::Corrupt { seq, .. }) => assert_eq!(seq, expected, "flipped byte {byte}"),
                    other => panic!("flipped byte {byte} (seq {expected}) was not refused: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn the_log_rolls_over_segments_and_reads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 2000, 7);
    assert!(segments(dir.path()).len() > 3, "small segments roll over");
    assert_eq!(log::verify(dir.path()).unwrap().head.seq, 2000);
    let (log, _) = FileLog::open(dir.path(), options()).unwrap();
    let reader = log.reader();
    let seqs = |it: log::Records| it.map(|r| r.unwrap().seq).collect::<Vec<_>>();
    assert_eq!(seqs(reader.iter_range(1, 2000)), (1..=2000).collect::<Vec<_>>());
    assert_eq!(seqs(reader.iter_range(777, 1234)), (777..=1234).collect::<Vec<_>>());
    assert_eq!(seqs(reader.iter_range(1999, 5000)), vec![1999, 2000]);
    assert_eq!(log::read_one(&reader, 1500).unwrap().unwrap().seq, 1500);
    assert!(log::read_one(&reader, 2001).unwrap().is_none());
    // By time: the first record at or after 1,234,500 µs is seq 1235.
    assert_eq!(
        seqs(reader.iter_from_time(1_234_500, 1240)),
        (1235..=1240).collect::<Vec<_>>()
    );
    assert_eq!(seqs(reader.iter_from_time(0, 3)), vec![1, 2, 3]);
}

#[test]
fn damage_in_an_earlier_segment_is_corruption_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 2000, 7);
    let first = segments(dir.path()).remove(0);
    let (offset, len, frame_first, _) = *frames(&first).last().unwrap();
    OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .write_all_at(&[0; 8], (offset + len - 8) as u64)
        .unwrap();
    match head_seq(dir.path()) {
        Err(LogError::Corrupt { seq, .. }) => assert!(seq >= frame_first, "seq {seq}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn a_segment_torn_while_being_created_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5, 1);
    // A crash between creating the next segment and writing its header.
    let torn = dir.path().join(format!("{:020}.seg", 6));
    fs::write(&torn, vec![0u8; 4096]).unwrap();
    let (mut log, report) = FileLog::open(dir.path(), options()).unwrap();
    assert_eq!((report.head.seq, report.truncated.map(|t| t.0)), (5, Some(6)));
    assert!(!torn.exists());
    append(&mut log, 6, 6, 1);
    assert_eq!(log.head().seq, 6);
}

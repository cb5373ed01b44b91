//! Protects the log's promises: a torn tail (at any byte of the last frame) is cut off and
//! the log goes on from the record before it; a flipped bit anywhere in an earlier record
//! is refused with that record's sequence number, by opening and by `verify`; the chain
//! continues across segments and restarts; readers return exactly the committed records by
//! sequence number and by time.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tally::domain::event::{AccountOpened, PointsAwarded, PromotionSource};
use tally::domain::{Effect, Envelope, Event};
use tally::log::{self, Durability, FileLog, LogError, LogOptions, LogWriter, Recovery, MIN_SEGMENT_BYTES};

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: MIN_SEGMENT_BYTES,
        durability: Durability::Buffered,
        recovery: Recovery::TruncateTornTail,
    }
}

fn event(seq: u64) -> (Envelope, Event) {
    let envelope = Envelope {
        event_id: uuid::Uuid::from_u128(seq as u128),
        tenant: "t1".into(),
        stream: format!("p{}", seq % 7),
        actor: "tester".into(),
        idempotency_key: format!("k{seq}"),
        ..Envelope::default()
    };
    let event = if seq.is_multiple_of(3) {
        Event::AccountOpened(AccountOpened { tier: "Member".into() })
    } else {
        Event::PointsAwarded(PointsAwarded {
            points: seq,
            source: tally::domain::event::AwardSource::Promotion(PromotionSource {
                promotion_id: "p".into(),
                external_reward_id: format!("r{seq}"),
            }),
            effect: Effect {
                posted_before: 0,
                posted_after: seq,
                held_before: 0,
                held_after: 0,
                lifetime_before: 0,
                lifetime_after: seq,
                tier_before: "Member".into(),
                tier_after: "Member".into(),
            },
        })
    };
    (envelope, event)
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

#[test]
fn a_torn_tail_at_every_byte_of_the_last_frame_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 6, 1);
    let segment = segments(dir.path()).pop().unwrap();
    let (offset, len, first, _) = *frames(&segment).last().unwrap();
    assert_eq!(first, 6);
    for cut in 0..len {
        // Two ways a crash leaves the frame: its later pages never written (zeros in the
        // preallocated file), or the file itself cut short.
        for zero_fill in [true, false] {
            let copy = copy_dir(dir.path());
            let path = copy.path().join(segment.file_name().unwrap());
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            if zero_fill {
                file.write_all_at(&vec![0; len - cut], (offset + cut) as u64).unwrap();
            } else {
                file.set_len((offset + cut) as u64).unwrap();
            }
            let verified = log::verify(copy.path()).unwrap();
            assert_eq!(verified.head.seq, 5, "cut at {cut} (zero fill {zero_fill})");
            assert_eq!(
                verified.torn_tail.is_some(),
                cut > 0,
                "cut at {cut}: a torn tail is reported"
            );
            let (mut log, report) = FileLog::open(copy.path(), options()).unwrap();
            assert_eq!(report.head.seq, 5, "cut at {cut}");
            assert_eq!(report.truncated.map(|t| t.0), (cut > 0).then_some(6));
            // The log goes on from the record before the tear, and verifies.
            append(&mut log, 6, 7, 1);
            drop(log);
            assert_eq!(log::verify(copy.path()).unwrap().head.seq, 7);
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
        .write_all_at(&[0xAB], (offset + len - 1) as u64)
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
    let seqs = |it: log::RecordIter| it.map(|r| r.unwrap().seq).collect::<Vec<_>>();
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

//! Protects reads by sequence number (`LogReader::read_seqs`, `log::read_one`,
//! `LogReader::hash_at`), which go straight to a record through the in-memory locator:
//!
//! - for any seed, random subsets read exactly the records `iter_range` reads (hashes
//!   included), across many segments (some grown past their size by one large frame) and
//!   frames of up to hundreds of records, records of a few bytes to tens of KiB;
//! - right after each commit through the writer's own locator, after a failed fsync and
//!   the reopening that cuts the torn frame off, and through the locator a reopening scan
//!   rebuilds (reader and writer): all of them locate every record alike;
//! - a flipped bit in a record, in its stored hash or in the chain hash before it is
//!   refused as corruption naming that record, its segment and offset, while every record
//!   the bit does not touch reads as before;
//! - a sequence number the log does not hold is refused, never read.
//!
//! `TALLY_READ_SEEDS=N` runs N seeds (default 12); failures print their seed.

mod support;

use std::sync::Arc;
use support::Rng;
use tally::domain::Record;
use tally::log::{
    self, Durability, FileLog, FileStorage, LogError, LogOptions, LogReader, LogWriter, ReadLog, Recovery, SimDisk,
    Storage, MIN_SEGMENT_BYTES,
};

fn options(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        durability: Durability::Sync,
        recovery: Recovery::TruncateTornTail,
    }
}

fn seeds() -> u64 {
    std::env::var("TALLY_READ_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12)
}

/// Runs `check` for every seed, naming the seed of a failure.
fn for_each_seed(check: impl Fn(u64) + std::panic::RefUnwindSafe) {
    for seed in 0..seeds() {
        if let Err(panic) = std::panic::catch_unwind(|| check(seed)) {
            eprintln!("failed with seed {seed} (TALLY_READ_SEEDS runs more)");
            std::panic::resume_unwind(panic);
        }
    }
}

/// Mostly small records, some of a KiB or so, a few longer than the reads' coalescing gap.
fn pad(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=69 => rng.below(40) as usize,
        70..=96 => 100 + rng.below(1400) as usize,
        _ => 2000 + rng.below(20_000) as usize,
    }
}

/// Stages and commits `count` records after the head in one frame.
fn commit(log: &mut FileLog, rng: &mut Rng, count: u64) -> Result<(), LogError> {
    let head = log.head().seq;
    for seq in head + 1..=head + count {
        let (envelope, event) = support::sample_record(seq, pad(rng));
        log.stage(seq, seq * 1000, &envelope, &event);
    }
    log.commit()
}

/// Commits a frame of a random number of records.
fn commit_random(log: &mut FileLog, rng: &mut Rng) -> Result<(), LogError> {
    let count = frame_size(rng);
    commit(log, rng, count)
}

/// Records per frame: ones, tens, or hundreds (a frame then fills or outgrows a small segment).
fn frame_size(rng: &mut Rng) -> u64 {
    let most = [1, 8, 64, 400][rng.below(4) as usize];
    1 + rng.below(most)
}

/// Some sequence numbers of `1..=head`, ascending: a random density from one in a thousand
/// to all of them, with the last few always among them (what was just committed).
fn subset(rng: &mut Rng, head: u64) -> Vec<u64> {
    let per_mille = [1, 10, 100, 500, 1000][rng.below(5) as usize];
    (1..=head)
        .filter(|&seq| seq + 3 > head || rng.below(1000) < per_mille)
        .collect()
}

/// The one check: `read_seqs(seqs)` gives exactly `model`'s records for them, and so do
/// `read_one` and `hash_at` for a few.
fn check(reader: &dyn ReadLog, model: &[Record], seqs: &[u64], rng: &mut Rng, context: &str) {
    let read = reader
        .read_seqs(seqs)
        .unwrap_or_else(|e| panic!("{context}: read_seqs: {e}"));
    let expected: Vec<&Record> = seqs.iter().map(|&seq| &model[seq as usize - 1]).collect();
    assert_eq!(read.len(), expected.len(), "{context}: one record per sequence number");
    for (got, want) in read.iter().zip(expected) {
        assert_eq!(got, want, "{context}: record {}", want.seq);
    }
    for _ in 0..3.min(seqs.len()) {
        let seq = seqs[rng.below(seqs.len() as u64) as usize];
        let one = log::read_one(reader, seq).unwrap_or_else(|e| panic!("{context}: read_one({seq}): {e}"));
        assert_eq!(
            one.as_ref(),
            Some(&model[seq as usize - 1]),
            "{context}: read_one({seq})"
        );
        let hash = reader
            .hash_at(seq)
            .unwrap_or_else(|e| panic!("{context}: hash_at({seq}): {e}"));
        assert_eq!(hash, Some(model[seq as usize - 1].hash), "{context}: hash_at({seq})");
    }
}

/// Every record of the log, by iteration from the start: the reference.
fn all_records(reader: &dyn ReadLog) -> Vec<Record> {
    reader
        .iter_range(1, reader.head().seq)
        .collect::<Result<_, _>>()
        .expect("the log reads")
}

/// Appends random frames and reads random subsets right after each commit, through the
/// writer's locator; on a simulated disk, now and then a failed fsync and the reopening
/// that follows; at the end, the same through the locators a reopening scan rebuilds.
fn run_seed(storage: Arc<dyn Storage>, disk: Option<&SimDisk>, seed: u64) {
    let mut rng = Rng(seed);
    let segment_bytes = [MIN_SEGMENT_BYTES, 256 << 10, 2 << 20][(seed % 3) as usize];
    let open = || FileLog::open_on(storage.clone(), options(segment_bytes)).map(|(log, _)| log);
    let mut log = open().expect("open");
    let mut model: Vec<Record> = Vec::new();
    for step in 0..40 {
        let context = format!("seed {seed} step {step}");
        let head = log.head().seq;
        let failing = disk.filter(|_| rng.chance(10));
        if let Some(disk) = failing {
            disk.fail_syncs(1);
        }
        match commit_random(&mut log, &mut rng) {
            Ok(()) => {}
            Err(LogError::Io { .. }) if failing.is_some() => {
                // What reached the disk is unknown: the reopening's scan tells, cutting off
                // the frame if it is torn.
                drop(log);
                log = open().unwrap_or_else(|e| panic!("{context}: reopen: {e}"));
            }
            Err(e) => panic!("{context}: commit: {e}"),
        }
        let reader = log.reader();
        model.extend(
            reader
                .iter_range(head + 1, log.head().seq)
                .map(|r| r.unwrap_or_else(|e| panic!("{context}: iter_range: {e}"))),
        );
        assert_eq!(model.len() as u64, reader.head().seq, "{context}");
        let seqs = subset(&mut rng, reader.head().seq);
        check(&reader, &model, &seqs, &mut rng, &context);
    }
    let head = log.head().seq;
    let all: Vec<u64> = (1..=head).collect();
    assert_eq!(all_records(&log.reader()), model, "seed {seed}: iter_range");
    // The writer's locator, extended commit by commit, against the scan's.
    check(&log.reader(), &model, &all, &mut rng, &format!("seed {seed}: writer"));
    drop(log);
    let reader = LogReader::open_on(storage.clone()).expect("reopen");
    check(
        &reader,
        &model,
        &all,
        &mut rng,
        &format!("seed {seed}: reopened reader"),
    );
    for round in 0..5 {
        let seqs = subset(&mut rng, head);
        check(
            &reader,
            &model,
            &seqs,
            &mut rng,
            &format!("seed {seed}: reopened, round {round}"),
        );
    }
    // The writer reopened: its locator is the scan's, then extended again.
    let mut log = open().expect("reopen the writer");
    commit_random(&mut log, &mut rng).expect("commit after reopening");
    model.extend(all_records(&log.reader()).drain(head as usize..));
    let all: Vec<u64> = (1..=log.head().seq).collect();
    check(
        &log.reader(),
        &model,
        &all,
        &mut rng,
        &format!("seed {seed}: writer reopened"),
    );
}

#[test]
fn random_subsets_read_what_iter_range_reads_on_a_simulated_disk() {
    for_each_seed(|seed| {
        let disk = SimDisk::new(seed, "/sim/log");
        run_seed(Arc::new(disk.clone()), Some(&disk), seed);
    });
}

#[test]
fn random_subsets_read_what_iter_range_reads_on_files() {
    for seed in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        run_seed(Arc::new(FileStorage::new(dir.path())), None, 1000 + seed);
    }
}

/// Where a record is on disk: its segment file, offset and length, and whether it is the
/// first of its frame (the 32 bytes before it are then the frame header's chain hash).
#[derive(Clone, Debug)]
struct OnDisk {
    name: String,
    offset: u64,
    len: u64,
    first_in_frame: bool,
}

/// Every record of every segment, by walking the frames as docs/FORMAT.md lays them out.
fn records_on_disk(disk: &SimDisk) -> Vec<OnDisk> {
    let u32_at = |bytes: &[u8], at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let mut out = Vec::new();
    for (name, _) in disk.files() {
        let bytes = disk.read_all(&name).unwrap();
        let mut frame = 64;
        while frame + 56 <= bytes.len() && u32_at(&bytes, frame) != 0 {
            let (frame_len, count) = (u32_at(&bytes, frame + 4), u32_at(&bytes, frame + 8));
            let mut at = frame + 56;
            for n in 0..count {
                let len = u32_at(&bytes, at);
                out.push(OnDisk {
                    name: name.clone(),
                    offset: at as u64,
                    len: len as u64,
                    first_in_frame: n == 0,
                });
                at += len;
            }
            frame += frame_len;
        }
    }
    out
}

#[test]
fn a_flipped_bit_is_corruption_of_the_records_it_touches_only() {
    for_each_seed(|seed| {
        let mut rng = Rng(seed);
        let disk = SimDisk::new(seed, "/sim/log");
        let (mut log, _) = FileLog::open_on(Arc::new(disk.clone()), options(MIN_SEGMENT_BYTES)).unwrap();
        while log.head().seq < 1500 {
            commit_random(&mut log, &mut rng).unwrap();
        }
        // Opened before the damage: opening after it would refuse the whole log.
        let reader = log.reader();
        let model = all_records(&reader);
        let on_disk = records_on_disk(&disk);
        assert_eq!(on_disk.len(), model.len(), "seed {seed}: the walk finds every record");
        for trial in 0..40 {
            let seq = 1 + rng.below(model.len() as u64);
            let record = &on_disk[seq as usize - 1];
            // A bit of the record (hash included), or of the chain hash stored before it.
            let byte = record.offset - 32 + rng.below(32 + record.len);
            let bit = rng.below(8) as u8;
            let context = format!("seed {seed} trial {trial}: seq {seq}, byte {byte} bit {bit}");
            // The records whose check reads the byte: a record's stored hash is also what the
            // next one in its frame is chained to (the first of a frame is chained to its
            // frame header's copy).
            let next_in_frame = on_disk.get(seq as usize).is_some_and(|next| !next.first_in_frame);
            let touched = if byte < record.offset && !record.first_in_frame {
                vec![seq - 1, seq]
            } else if byte >= record.offset + record.len - 32 && next_in_frame {
                vec![seq, seq + 1]
            } else {
                vec![seq]
            };
            assert!(disk.flip_bit(&record.name, byte, bit), "{context}");
            match reader.read_seqs(&[seq]) {
                Err(LogError::Corrupt {
                    seq: named,
                    path,
                    offset,
                    ..
                }) => {
                    assert_eq!(named, seq, "{context}");
                    assert_eq!(offset, record.offset, "{context}");
                    assert!(path.ends_with(&record.name), "{context}: {}", path.display());
                }
                other => panic!("{context}: not refused: {other:?}"),
            }
            assert!(log::read_one(&reader, seq).is_err(), "{context}: read_one");
            assert!(reader.hash_at(seq).is_err(), "{context}: hash_at");
            // Asked among its neighbours (one coalesced read), it is still the one named.
            let around: Vec<u64> = (seq.saturating_sub(3).max(1)..=(seq + 3).min(model.len() as u64)).collect();
            match reader.read_seqs(&around) {
                Err(LogError::Corrupt { seq: named, .. }) => assert_eq!(named, touched[0], "{context}"),
                other => panic!("{context}: not refused among neighbours: {other:?}"),
            }
            let others: Vec<u64> = (1..=model.len() as u64).filter(|s| !touched.contains(s)).collect();
            check(&reader, &model, &others, &mut rng, &context);
            assert!(disk.flip_bit(&record.name, byte, bit), "{context}: flip back");
            check(&reader, &model, &[seq], &mut rng, &format!("{context}, repaired"));
        }
    });
}

#[test]
fn sequence_numbers_outside_the_log_are_refused() {
    let disk = SimDisk::new(7, "/sim/log");
    let (mut log, _) = FileLog::open_on(Arc::new(disk.clone()), options(MIN_SEGMENT_BYTES)).unwrap();
    let reader = log.reader();
    assert!(reader.read_seqs(&[]).unwrap().is_empty());
    assert!(matches!(
        reader.read_seqs(&[1]),
        Err(LogError::NotInLog { seq: 1, head: 0 })
    ));
    commit(&mut log, &mut Rng(7), 10).unwrap();
    for (seqs, refused) in [(&[0, 1][..], 0), (&[10, 11], 11), (&[3, 99], 99)] {
        match reader.read_seqs(seqs) {
            Err(LogError::NotInLog { seq, head: 10 }) => assert_eq!(seq, refused, "{seqs:?}"),
            other => panic!("{seqs:?}: {other:?}"),
        }
    }
    assert_eq!(reader.read_seqs(&[1, 10]).unwrap().len(), 2);
    assert!(log::read_one(&reader, 0).unwrap().is_none());
    assert!(log::read_one(&reader, 11).unwrap().is_none());
    assert_eq!(reader.hash_at(0).unwrap(), Some([0; 32]));
    assert_eq!(reader.hash_at(11).unwrap(), None);
    assert_eq!(reader.hash_at(10).unwrap(), Some(log.head().hash));
}

#[test]
#[should_panic(expected = "ascending, distinct")]
fn sequence_numbers_out_of_order_are_a_bug() {
    let disk = SimDisk::new(7, "/sim/log");
    let (mut log, _) = FileLog::open_on(Arc::new(disk), options(MIN_SEGMENT_BYTES)).unwrap();
    commit(&mut log, &mut Rng(7), 10).unwrap();
    let _ = log.reader().read_seqs(&[2, 2]);
}

//! Protects what "acknowledged" means when the disk misbehaves, on a simulated disk
//! (`tally::log::SimDisk`): writes are volatile until fsync, a power cut loses or tears (by
//! sector) every unsynced write, an fsync, a write or a read can fail, bits rot.
//!
//! - For any seed: every record whose commit returned `Ok` survives any mix of failed
//!   fsyncs, failed writes, failed reads and power cuts, byte for byte; a failed commit
//!   poisons the writer (no later append is accepted); reopening always succeeds (a tear is
//!   cut off, never refused) and never invents records.
//! - A bit flipped in written data is refused with a sequence number, never cut off.
//! - The harness can see a missing fdatasync: with `Durability::Buffered` a power cut loses
//!   acknowledged records (the test that shows the simulation has teeth).
//! - The engine on a failing disk: a failed fsync answers the caller "unavailable" (never
//!   ok), refuses all later commands, and a restart recovers every acknowledged command; a
//!   retry then is applied once.
//!
//! `TALLY_DISK_SEEDS=N` runs N seeds (default 300); failures print their seed.

mod support;

use std::sync::Arc;
use support::{meta, Rng};
use tally::domain::{AwardRequest, Command, Envelope, Event};
use tally::engine::{EngineConfig, EngineError, LogPlace, Status};
use tally::log::{
    Durability, FileLog, LogError, LogOptions, LogReader, LogWriter, Recovery, SimDisk, Storage, MIN_SEGMENT_BYTES,
};

fn options(durability: Durability) -> LogOptions {
    LogOptions {
        segment_bytes: MIN_SEGMENT_BYTES,
        durability,
        recovery: Recovery::TruncateTornTail,
    }
}

fn event(seq: u64) -> (Envelope, Event) {
    support::sample_record(seq, (seq % 40) as usize)
}

fn open(disk: &SimDisk, durability: Durability) -> Result<FileLog, LogError> {
    FileLog::open_on(Arc::new(disk.clone()), options(durability)).map(|(log, _)| log)
}

/// Every record `1..=upto` reads back with the hash it was acknowledged with.
fn check_acknowledged(disk: &SimDisk, hashes: &[[u8; 32]], upto: u64, context: &str) {
    let reader = LogReader::open_on(Arc::new(disk.clone())).unwrap_or_else(|e| panic!("{context}: reader: {e}"));
    let mut seq = 0;
    for record in reader.iter_range(1, upto) {
        let record = record.unwrap_or_else(|e| panic!("{context}: read: {e}"));
        seq += 1;
        assert_eq!(record.seq, seq, "{context}");
        assert_eq!(record.hash, hashes[seq as usize - 1], "{context}: record {seq} changed");
    }
    assert_eq!(seq, upto, "{context}: acknowledged records missing");
}

/// Opens until the disk lets it (an injected read failure refuses one open; nothing else
/// may).
fn reopen(disk: &SimDisk, durability: Durability, context: &str) -> FileLog {
    for _ in 0..3 {
        match open(disk, durability) {
            Ok(log) => return log,
            Err(LogError::Io { .. }) => continue,
            Err(e) => panic!("{context}: reopening refused the log: {e}"),
        }
    }
    panic!("{context}: the log does not open")
}

fn run_seed(seed: u64) {
    let mut rng = Rng(seed);
    let disk = SimDisk::new(seed, "/sim/log");
    let mut log = open(&disk, Durability::Sync).unwrap();
    // Hashes of every record that exists (acknowledged or found on disk after a fault).
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut acknowledged = 0u64;
    for step in 0..60 {
        let context = format!("seed {seed} step {step}");
        let head = log.head().seq;
        assert!(
            head >= acknowledged,
            "{context}: the head went below what was acknowledged"
        );
        hashes.truncate(head as usize);
        let count = 1 + rng.below(24);
        let mut staged = Vec::new();
        for seq in head + 1..=head + count {
            let (envelope, event) = event(seq);
            staged.push(log.stage(seq, seq * 1000, &envelope, &event));
        }
        match rng.below(100) {
            0..=9 => disk.fail_syncs(1),
            10..=14 => disk.fail_writes(1),
            // A crash between two syncs of this commit (one that rolls to a new segment
            // syncs more than once), or right after its last.
            15..=24 => disk.cut_power_after_syncs(1 + rng.below(3) as u32),
            _ => {}
        }
        match log.commit() {
            Ok(()) => {
                hashes.extend(staged);
                acknowledged = head + count;
            }
            Err(LogError::Io { .. }) => {
                // Poisoned: nothing more goes in until the log is read again from disk.
                let (envelope, event) = event(head + count + 1);
                log.stage(head + count + 1, (head + count + 1) * 1000, &envelope, &event);
                assert!(
                    matches!(log.commit(), Err(LogError::Poisoned)),
                    "{context}: a failed commit poisons the writer"
                );
                if rng.chance(50) {
                    disk.power_cut();
                }
                disk.power_on();
                if rng.chance(30) {
                    disk.fail_reads(1);
                }
                log = reopen(&disk, Durability::Sync, &context);
                let found = log.head().seq;
                // A group commit is all or nothing: a crash never leaves part of it (and so
                // part of a command) in the log.
                assert!(
                    found == head || found == head + count,
                    "{context}: reopened at {found}; the failed commit was {}..={}",
                    head + 1,
                    head + count
                );
                if found > head {
                    hashes.extend(staged);
                }
                check_acknowledged(&disk, &hashes, found, &context);
                continue;
            }
            Err(e) => panic!("{context}: {e}"),
        }
        disk.keep_power();
        if rng.chance(15) {
            // A power cut at rest: everything acknowledged was synced.
            drop(log);
            disk.power_cut();
            disk.power_on();
            log = reopen(&disk, Durability::Sync, &context);
            assert_eq!(log.head().seq, acknowledged, "{context}: a power cut at rest");
            check_acknowledged(&disk, &hashes, acknowledged, &context);
        }
    }
    // A cut armed in the last step may have gone off after its commit was acknowledged.
    disk.power_on();
    check_acknowledged(&disk, &hashes, acknowledged, &format!("seed {seed} end"));
    tally::log::verify_storage(&disk).unwrap_or_else(|e| panic!("seed {seed}: verify: {e}"));
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(seed) = std::env::var("TALLY_DISK_SEED") {
        return vec![seed.parse().expect("TALLY_DISK_SEED is a number")];
    }
    let count = std::env::var("TALLY_DISK_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default);
    (1..=count)
        .map(|n: u64| n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

fn for_each_seed(default: u64, run: impl Fn(u64)) {
    for seed in seeds(default) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed)));
        if let Err(panic) = outcome {
            eprintln!("failed for seed {seed}; replay it with TALLY_DISK_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn acknowledged_records_survive_failed_syncs_writes_reads_and_power_cuts() {
    for_each_seed(300, run_seed);
}

#[test]
fn a_group_commit_that_rolls_to_a_new_segment_is_all_or_nothing() {
    // Fill most of the first segment, then commit a batch that does not fit what is left,
    // and cut the power after each possible number of syncs: the reopened log holds the
    // whole batch or none of it, never the part that went to the first segment.
    for syncs in 0..4u32 {
        for seed in 1..=10u64 {
            let context = format!("seed {seed}, power cut after {syncs} syncs");
            let disk = SimDisk::new(seed, "/sim/log");
            let mut log = open(&disk, Durability::Sync).unwrap();
            let mut seq = 0;
            while disk.written_len(&disk.files()[0].0) < MIN_SEGMENT_BYTES - 4096 {
                seq += 1;
                let (envelope, event) = event(seq);
                log.stage(seq, seq * 1000, &envelope, &event);
                log.commit().unwrap();
            }
            let before = seq;
            for _ in 0..100 {
                seq += 1;
                let (envelope, event) = event(seq);
                log.stage(seq, seq * 1000, &envelope, &event);
            }
            disk.cut_power_after_syncs(syncs);
            let committed = log.commit().is_ok();
            drop(log);
            disk.power_cut();
            disk.power_on();
            let found = reopen(&disk, Durability::Sync, &context).head().seq;
            if committed {
                assert_eq!(found, seq, "{context}: an acknowledged commit was lost");
            } else {
                assert!(
                    found == before || found == seq,
                    "{context}: reopened at {found}, inside the commit {}..={seq}",
                    before + 1
                );
            }
        }
    }
}

#[test]
fn a_flipped_bit_in_written_data_is_refused_with_a_sequence_number() {
    for_each_seed(100, |seed| {
        let mut rng = Rng(seed);
        let disk = SimDisk::new(seed, "/sim/log");
        let mut log = open(&disk, Durability::Sync).unwrap();
        let records = 20 + rng.below(200);
        for seq in 1..=records {
            let (envelope, event) = event(seq);
            log.stage(seq, seq * 1000, &envelope, &event);
            if rng.chance(30) || seq == records {
                log.commit().unwrap();
            }
        }
        drop(log);
        let files = disk.files();
        let (name, _) = &files[rng.below(files.len() as u64) as usize];
        // Past the 64-byte segment header, inside what was written.
        let written = disk.written_len(name);
        let offset = 64 + rng.below(written - 64);
        assert!(disk.flip_bit(name, offset, rng.below(8) as u8));
        let refused = |result: Result<u64, LogError>, what: &str| match result {
            Err(LogError::Corrupt { seq, .. }) => {
                assert!(
                    (1..=records).contains(&seq),
                    "seed {seed}: {what} names sequence {seq} of {records}"
                )
            }
            other => panic!("seed {seed}: {what} of a log with bit {offset} of {name} flipped: {other:?}"),
        };
        refused(tally::log::verify_storage(&disk).map(|v| v.head.seq), "verify");
        refused(open(&disk, Durability::Sync).map(|log| log.head().seq), "open");
    });
}

#[test]
fn without_fdatasync_a_power_cut_loses_acknowledged_records() {
    // The same writes with durability Buffered: the harness must see the loss, or it could
    // not see a missing fsync either.
    let mut lost = 0;
    for seed in 1..=20u64 {
        let disk = SimDisk::new(seed, "/sim/log");
        let mut log = open(&disk, Durability::Buffered).unwrap();
        for seq in 1..=50 {
            let (envelope, event) = event(seq);
            log.stage(seq, seq * 1000, &envelope, &event);
            log.commit().unwrap();
        }
        drop(log);
        disk.power_cut();
        disk.power_on();
        // Lost sectors anywhere in the unsynced frames: the log ends early (a tear) or has
        // a hole before its end (refused as damage). Either way acknowledged records are gone.
        match open(&disk, Durability::Buffered) {
            Ok(log) if log.head().seq == 50 => {}
            Ok(_) | Err(LogError::Corrupt { .. }) => lost += 1,
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert!(
        lost >= 15,
        "a power cut without fsync lost acknowledged records in {lost} of 20 runs"
    );
}

// --- The engine on a failing disk ---------------------------------------------------------

fn engine_config(dir: &std::path::Path, disk: &SimDisk) -> EngineConfig {
    EngineConfig {
        durability: Durability::Sync,
        segment_bytes: MIN_SEGMENT_BYTES,
        log_place: LogPlace::Storage(Arc::new(disk.clone()) as Arc<dyn Storage>),
        ..EngineConfig::new(dir)
    }
}

fn award(account: &str, reward: &str, points: u64) -> Command {
    Command::Award {
        account: account.into(),
        source: AwardRequest::Promotion {
            points,
            promotion_id: "promo".into(),
            external_reward_id: reward.into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fsync_is_never_acknowledged_and_a_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(7, "/sim/log");
    let config = engine_config(dir.path(), &disk);
    let mut engine = support::TestEngine::start_with(dir, config);
    let handle = engine.handle();
    handle
        .submit(meta("open"), Command::OpenAccount { account: "p1".into() })
        .await
        .unwrap();
    handle.submit(meta("a1"), award("p1", "r1", 100)).await.unwrap();

    disk.fail_syncs(1);
    let failed = handle.submit(meta("a2"), award("p1", "r2", 50)).await;
    assert!(
        matches!(failed, Err(EngineError::Unavailable(_))),
        "a command whose fsync failed is not acknowledged: {failed:?}"
    );
    assert!(matches!(handle.status(), Status::Failed(_)), "{:?}", handle.status());
    let after = handle.submit(meta("a3"), award("p1", "r3", 5)).await;
    assert!(matches!(after, Err(EngineError::Unavailable(_))), "{after:?}");

    // The process restarts (the disk's cache dropped what the failed fsync lost).
    engine.restart();
    let handle = engine.handle();
    let head = handle.reader().head().seq;
    assert!((2..=3).contains(&head), "acknowledged records kept, head {head}");
    // The caller retries with the same key: applied once whatever the failed commit left.
    let retried = handle.submit(meta("a2"), award("p1", "r2", 50)).await.unwrap();
    assert_eq!(retried.replayed, head == 3, "retry after an unknown outcome");
    handle.wait_for_projections().await.unwrap();
    let head = handle.reader().head().seq;
    let account = handle.indexed().account_at("t1", "p1", head);
    assert_eq!(account.unwrap().unwrap().account.posted, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_under_load_keeps_every_acknowledged_command() {
    for seed in 1..=8u64 {
        let dir = tempfile::tempdir().unwrap();
        let disk = SimDisk::new(seed, "/sim/log");
        let config = engine_config(dir.path(), &disk);
        let mut engine = support::TestEngine::start_with(dir, config);
        let handle = engine.handle();
        handle
            .submit(meta("open"), Command::OpenAccount { account: "p1".into() })
            .await
            .unwrap();
        // Commands in flight from many tasks while the power goes.
        let mut tasks = Vec::new();
        for n in 0..64u64 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("k{n}");
                handle
                    .submit(meta(&key), award("p1", &format!("r{n}"), n + 1))
                    .await
                    .ok()
                    .map(|_| n)
            }));
            if n == 32 {
                disk.power_cut();
            }
        }
        let mut acknowledged = Vec::new();
        for task in tasks {
            if let Some(n) = task.await.unwrap() {
                acknowledged.push(n);
            }
        }
        disk.power_on();
        engine.restart();
        let handle = engine.handle();
        let records: Vec<_> = handle.reader().iter_from(1).collect::<Result<_, _>>().unwrap();
        for n in &acknowledged {
            let key = format!("k{n}");
            assert!(
                records.iter().any(|r| r.envelope.idempotency_key == key),
                "seed {seed}: acknowledged award {key} lost in the power cut"
            );
        }
        // Every award found is applied once, acknowledged or not.
        let mut keys: Vec<&str> = records.iter().map(|r| r.envelope.idempotency_key.as_str()).collect();
        keys.sort();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "seed {seed}: a command applied twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_read_at_start_refuses_that_start_only() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SimDisk::new(3, "/sim/log");
    let config = engine_config(dir.path(), &disk);
    let mut engine = support::TestEngine::start_with(dir, config.clone());
    engine
        .handle()
        .submit(meta("open"), Command::OpenAccount { account: "p1".into() })
        .await
        .unwrap();
    engine.engine.take().unwrap().shutdown();
    disk.fail_reads(1);
    let clock = engine.clock.clone();
    let refused = tally::engine::Engine::start(config.clone(), clock.clone());
    assert!(
        matches!(refused, Err(EngineError::Log(LogError::Io { .. }))),
        "{:?}",
        refused.err()
    );
    let again = tally::engine::Engine::start(config, clock).expect("the next start reads the disk");
    assert_eq!(again.handle().reader().head().seq, 1);
    engine.engine = Some(again);
}

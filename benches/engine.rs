//! Durable award throughput of the engine in-process, next to the machine's own limits
//! measured in the same run (fdatasync rate and sequential bandwidth on a preallocated
//! file, blake3 over a record, MessagePack encode and decode of an event, sled inserts), so
//! ratios hold on a noisy machine; then cost growth: the same throughput with 1M and 10M
//! events (with idempotency keys, as the API writes them) already in the log. Each figure
//! is the median of three runs.
//!
//!     cargo bench --bench engine
//!
//! `TALLY_BENCH_SECONDS` sets the length of each run (default 3); `TALLY_BENCH_GROWTH`
//! the larger prefilled log (default 10000000; 0 skips cost growth). `TALLY_BENCH_CASE`
//! runs only the award cases whose name contains it, without limits or cost growth (for a
//! profiler: `TALLY_BENCH_CASE="durable, 8"`; `alone` runs the sequencer's work alone).

mod common;

use common::{generate, keyed, median, open, producers_rate, seconds, sled_insert_rates, timed, Keys, Measured};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tally::domain::{AwardRequest, Command, CommandMeta};
use tally::engine::{Engine, EngineConfig, SystemClock};
use tally::log::Durability;

/// The allocator the server runs with (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;
const ACCOUNTS: u64 = common::ACCOUNTS;
/// The first award number of the next run.
static NEXT_RUN: AtomicU64 = AtomicU64::new(0);

/// Writes of `block_bytes`, each followed by fdatasync, cycling through a preallocated file
/// of `file_bytes`: writes per second.
fn synced_writes_per_second(file_bytes: u64, block_bytes: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("probe"))
        .unwrap();
    file.set_len(file_bytes).unwrap();
    file.write_all_at(&vec![1u8; file_bytes as usize], 0).unwrap();
    file.sync_all().unwrap();
    let block = vec![7u8; block_bytes as usize];
    let blocks = file_bytes / block_bytes;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < seconds() {
        file.write_all_at(&block, (n % blocks) * block_bytes).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// 4 KiB writes + fdatasync: the ceiling on durable group commits per second.
fn fdatasync_rate() -> f64 {
    synced_writes_per_second(64 << 20, 4096)
}

/// 1 MiB writes + fdatasync: bytes per second the disk takes durably in large writes.
fn sequential_bandwidth() -> f64 {
    synced_writes_per_second(256 << 20, 1 << 20) * (1 << 20) as f64
}

fn award(n: u64) -> (CommandMeta, Command) {
    let meta = keyed(format!("award-{n}"));
    let command = Command::Award {
        account: format!("p{}", n % ACCOUNTS),
        source: AwardRequest::Promotion {
            points: 1 + n % 50,
            promotion_id: "bench".into(),
            external_reward_id: format!("bench-r{n}"),
        },
    };
    (meta, command)
}

/// A promotion award payload as the engine writes it (the log encodes the payload struct).
fn award_event() -> tally::domain::event::PointsAwarded {
    use tally::domain::event::{AwardSource, PointsAwarded, PromotionSource};
    PointsAwarded {
        points: 25,
        source: AwardSource::Promotion(PromotionSource {
            promotion_id: "bench".into(),
            external_reward_id: "bench-r1234567".into(),
        }),
        effect: tally::domain::Effect {
            posted_before: 1000,
            posted_after: 1025,
            held_before: 0,
            held_after: 0,
            lifetime_before: 1000,
            lifetime_after: 1025,
            tier_before: "Member".into(),
            tier_after: "Member".into(),
        },
    }
}

/// The sequencer's own work, alone on one thread: decide each award (its identity worked
/// out beforehand, as the producers' tasks work it out in the engine), stage its record
/// (envelope, MessagePack, chain hash, into the pending frame), fold it into the state, and
/// write the frame (without fdatasync) every 1000 commands, as one producer's batch. No
/// inbox, no answers, no followers, no event ids or metrics, and the records dropped once
/// folded: the ceiling of the engine rates below on this machine, whatever the other core
/// does.
fn sequencer_work_alone() -> f64 {
    use tally::domain::{decide_identified, evolve_identified, Decision, Envelope, Identity, Policy, Record, State};
    use tally::log::{FileLog, LogOptions, LogWriter};
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        durability: Durability::Buffered,
        ..LogOptions::default()
    };
    let (mut log, _) = FileLog::open(&dir.path().join("log"), options).unwrap();
    let policy = Policy::default();
    let mut state = State::default();
    // As the engine's sequencer does: the identities worked out beforehand, the first
    // event folded with its command's.
    let apply = |log: &mut FileLog,
                 state: &mut State,
                 (meta, command, identity): &(CommandMeta, Command, Identity),
                 now_us: u64| {
        let Ok(Decision::Append(emitted)) = decide_identified(
            &policy,
            state,
            meta,
            command,
            identity,
            now_us,
            &tally::domain::state::NoOlderRecords,
        ) else {
            panic!("every bench command is accepted");
        };
        for (at, e) in emitted.into_iter().enumerate() {
            let seq = state.head_seq + 1;
            let key = meta.idempotency.as_ref().expect("bench commands are keyed");
            let envelope = Envelope {
                event_id: uuid::Uuid::from_u128(seq as u128),
                tenant: e.tenant,
                stream: e.account,
                actor: meta.actor.clone(),
                idempotency_key: key.key.clone(),
                ..Envelope::default()
            };
            let hash = log.stage(seq, now_us, &envelope, &e.event);
            let record = Record {
                seq,
                ts_us: now_us,
                envelope,
                event: e.event,
                hash,
            };
            evolve_identified(state, &record, identity.for_record(meta, at, &record.envelope.tenant));
        }
    };
    let identified = |(meta, command): (CommandMeta, Command)| {
        let identity = Identity::of(&meta, &command);
        (meta, command, identity)
    };
    let now_us = common::T0;
    for a in 0..ACCOUNTS {
        apply(&mut log, &mut state, &identified(open(a)), now_us);
    }
    log.commit().unwrap();
    // The commands are made beforehand, as the producers make them on their own threads:
    // more than the run can take, so that it lasts the bench's length and the idempotency
    // index grows as in the engine cases.
    let first = NEXT_RUN.fetch_add(1 << 40, Ordering::Relaxed);
    let enough = (seconds().as_secs_f64() * 800_000.0) as u64;
    let commands: Vec<_> = (first..first + enough).map(|n| identified(award(n))).collect();
    let mut done = 0usize;
    let start = Instant::now();
    while start.elapsed() < seconds() && done + 1000 <= commands.len() {
        for command in &commands[done..done + 1000] {
            apply(&mut log, &mut state, command, now_us);
        }
        log.commit().unwrap();
        done += 1000;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Operations per second of `f`, over the bench's run length.
fn rate(mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < seconds() {
        for _ in 0..1000 {
            f();
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The per-record limits: blake3 over `record_bytes`, MessagePack encode and decode of an
/// award event.
fn cpu_limits(record_bytes: usize) -> (f64, f64, f64) {
    let bytes = vec![42u8; record_bytes];
    let blake3 = rate(|| {
        std::hint::black_box(blake3::hash(std::hint::black_box(&bytes)));
    });
    let event = award_event();
    let encode = rate(|| {
        std::hint::black_box(rmp_serde::to_vec(std::hint::black_box(&event)).unwrap());
    });
    let encoded = rmp_serde::to_vec(&event).unwrap();
    let decode = rate(|| {
        std::hint::black_box(
            rmp_serde::from_slice::<tally::domain::event::PointsAwarded>(std::hint::black_box(&encoded)).unwrap(),
        );
    });
    (blake3, encode, decode)
}

/// Awards per second from `producers` concurrent tasks, each submitting `per_submit`
/// commands at a time and waiting for the answer before the next.
fn awards_per_second(durability: Durability, producers: u64, per_submit: u64) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    awards_per_second_in(dir.path(), durability, producers, per_submit).0
}

/// The same, on a data directory that may hold a log already; also the average bytes per
/// record of the log.
fn awards_per_second_in(
    data_dir: &std::path::Path,
    durability: Durability,
    producers: u64,
    per_submit: u64,
) -> (Measured, f64) {
    let config = EngineConfig {
        durability,
        ..EngineConfig::new(data_dir)
    };
    let engine = Engine::start(config, Arc::new(SystemClock)).unwrap();
    let runtime = common::runtime();
    let rate = runtime.block_on(async {
        let handle = engine.handle();
        common::open_accounts(&handle, ACCOUNTS).await;
        // Numbers never repeat within a process, so that a run on a reused log awards anew
        // instead of replaying the run before it.
        let first = NEXT_RUN.fetch_add(1 << 40, Ordering::Relaxed);
        producers_rate(&handle, producers, per_submit, first, award).await
    });
    drop(runtime);
    let handle = engine.handle();
    let record_bytes = handle.log_bytes() as f64 / handle.committed_seq() as f64;
    engine.shutdown();
    (rate, record_bytes)
}

/// Durable awards (8 producers, 1000 per submit) with `prefill` keyed events already in the
/// log: the restore time, the resident memory after it, and the median rate of three runs
/// (each run adds its awards to the same log).
fn cost_growth(prefill: u64) {
    let dir = tempfile::tempdir().unwrap();
    if prefill > 0 {
        generate(dir.path(), prefill, Keys::PerCommand);
    }
    let config = EngineConfig::new(dir.path());
    let (engine, restore) = timed(|| Engine::start(config, Arc::new(SystemClock)).unwrap());
    engine.shutdown();
    let rates = (0..RUNS)
        .map(|_| awards_per_second_in(dir.path(), Durability::Sync, 8, 1000).0.per_second)
        .collect();
    println!(
        "durable, 8 producers, 1000 per submit, {prefill} events already in the log: {:.0} awards/s (restore {restore:.1} s)",
        median(rates)
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Ok(only) = std::env::var("TALLY_BENCH_CASE") {
        if only == "alone" {
            println!("the sequencer's work alone: {:.0} awards/s", sequencer_work_alone());
        } else {
            award_cases(&only, None);
        }
        return;
    }
    let limit = median((0..RUNS).map(|_| fdatasync_rate()).collect());
    println!("limit: fdatasync of 4 KiB on a preallocated file: {limit:.0}/s (the ceiling on durable group commits)");
    let bandwidth = median((0..RUNS).map(|_| sequential_bandwidth()).collect());
    println!(
        "limit: 1 MiB writes + fdatasync on a preallocated file: {:.0} MiB/s",
        bandwidth / (1 << 20) as f64
    );
    let (_, record_bytes) = awards_per_second_in(tempfile::tempdir().unwrap().path(), Durability::Buffered, 8, 1000);
    let limits: Vec<_> = (0..RUNS).map(|_| cpu_limits(record_bytes as usize)).collect();
    let blake3 = median(limits.iter().map(|l| l.0).collect());
    let encode = median(limits.iter().map(|l| l.1).collect());
    let decode = median(limits.iter().map(|l| l.2).collect());
    println!("limit: blake3 over a record of {record_bytes:.0} bytes (frame share included): {blake3:.0}/s");
    println!("limit: MessagePack encode of an award event: {encode:.0}/s; decode: {decode:.0}/s");
    println!(
        "limit: the log's bandwidth in records of that size: {:.0} records/s",
        bandwidth / record_bytes
    );
    let (single, _) = sled_insert_rates(200_000);
    println!("limit: sled 0.34 inserts of 150-byte rows, one by one: {single:.0}/s");
    let alone = median((0..RUNS).map(|_| sequencer_work_alone()).collect());
    println!(
        "limit: the sequencer's work alone on one thread (decide, stage, evolve; no fdatasync): {alone:.0} awards/s"
    );
    award_cases("", Some(limit));
    let growth: u64 = std::env::var("TALLY_BENCH_GROWTH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    if growth > 0 {
        for prefill in [0, growth / 10, growth] {
            cost_growth(prefill);
        }
    }
}

/// The award cases whose name contains `only`, each the median of three runs; durable ones
/// as a ratio to the fdatasync `limit` when it was measured.
fn award_cases(only: &str, limit: Option<f64>) {
    let cases: [(&str, Durability, u64, u64); 4] = [
        ("durable, 1 producer, 1 command per submit", Durability::Sync, 1, 1),
        ("durable, 64 producers, 1 command per submit", Durability::Sync, 64, 1),
        (
            "durable, 8 producers, 1000 commands per submit",
            Durability::Sync,
            8,
            1000,
        ),
        (
            "buffered, 8 producers, 1000 commands per submit",
            Durability::Buffered,
            8,
            1000,
        ),
    ];
    for (name, durability, producers, per_submit) in cases.into_iter().filter(|c| c.0.contains(only)) {
        let mut runs: Vec<Measured> = (0..RUNS)
            .map(|_| awards_per_second(durability, producers, per_submit))
            .collect();
        runs.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
        let median_run = &runs[RUNS / 2];
        let rate = median_run.per_second;
        let per_sync = match limit {
            Some(limit) if durability == Durability::Sync => {
                format!(" ({:.1}× the fdatasync ceiling)", rate / limit)
            }
            _ => String::new(),
        };
        println!("{name}: {rate:.0} awards/s{per_sync}");
        println!("  where the CPU went (that run): {}", median_run.cpu_split());
    }
}

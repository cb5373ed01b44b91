//! Durable award throughput of the engine in-process, next to the machine's own limit (the
//! fdatasync rate of a preallocated file) measured in the same run, so the ratio holds on a
//! noisy machine. Each figure is the median of three runs.
//!
//!     cargo bench --bench engine
//!
//! `TALLY_BENCH_SECONDS` sets the length of each run (default 3).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tally::domain::{AwardRequest, Command, CommandMeta, IdempotencyKey};
use tally::engine::{Engine, EngineConfig, SystemClock};
use tally::log::Durability;

const RUNS: usize = 3;
const ACCOUNTS: u64 = 10_000;

fn seconds() -> Duration {
    Duration::from_secs_f64(
        std::env::var("TALLY_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

/// 4 KiB writes, each followed by fdatasync, into a preallocated file: the ceiling on
/// durable group commits per second.
fn fdatasync_rate() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("probe"))
        .unwrap();
    file.set_len(64 << 20).unwrap();
    file.write_all_at(&vec![1u8; 64 << 20], 0).unwrap();
    file.sync_all().unwrap();
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < seconds() {
        file.write_all_at(&block, (n % 16_000) * 4096).unwrap();
        file.sync_data().unwrap();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn award(n: u64) -> (CommandMeta, Command) {
    let meta = CommandMeta {
        tenant: "bench".into(),
        actor: "bench".into(),
        idempotency: Some(IdempotencyKey {
            key: format!("award-{n}"),
            scope: String::new(),
        }),
        ..CommandMeta::default()
    };
    let command = Command::Award {
        account: format!("p{}", n % ACCOUNTS),
        source: AwardRequest::Promotion {
            points: 1 + n % 50,
            promotion_id: "bench".into(),
            external_reward_id: format!("r{n}"),
        },
    };
    (meta, command)
}

/// Awards per second from `producers` concurrent tasks, each submitting `per_submit`
/// commands at a time and waiting for the answer before the next.
fn awards_per_second(durability: Durability, producers: u64, per_submit: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability,
        ..EngineConfig::new(dir.path())
    };
    let engine = Engine::start(config, Arc::new(SystemClock)).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rate = runtime.block_on(async {
        let handle = engine.handle();
        let opens = (0..ACCOUNTS)
            .map(|a| {
                let meta = CommandMeta {
                    tenant: "bench".into(),
                    actor: "bench".into(),
                    idempotency: Some(IdempotencyKey {
                        key: format!("open-{a}"),
                        scope: String::new(),
                    }),
                    ..CommandMeta::default()
                };
                (
                    meta,
                    Command::OpenAccount {
                        account: format!("p{a}"),
                    },
                )
            })
            .collect::<Vec<_>>();
        for chunk in opens.chunks(4096) {
            handle.submit_batch(chunk.to_vec()).await.unwrap();
        }
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + seconds();
        let start = Instant::now();
        let tasks: Vec<_> = (0..producers)
            .map(|_| {
                let (handle, next, done) = (handle.clone(), next.clone(), done.clone());
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let first = next.fetch_add(per_submit, Ordering::Relaxed);
                        let batch = (first..first + per_submit).map(award).collect();
                        let results = handle.submit_batch(batch).await.unwrap();
                        assert!(results.iter().all(|r| r.is_ok()));
                        done.fetch_add(per_submit, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
    });
    drop(runtime);
    engine.shutdown();
    rate
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let limit = median((0..RUNS).map(|_| fdatasync_rate()).collect());
    println!("fdatasync of 4 KiB on a preallocated file: {limit:.0}/s (the ceiling on durable group commits)");
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
    for (name, durability, producers, per_submit) in cases {
        let rate = median(
            (0..RUNS)
                .map(|_| awards_per_second(durability, producers, per_submit))
                .collect(),
        );
        let per_sync = if durability == Durability::Sync {
            format!(" ({:.1}× the fdatasync ceiling)", rate / limit)
        } else {
            String::new()
        };
        println!("{name}: {rate:.0} awards/s{per_sync}");
    }
}

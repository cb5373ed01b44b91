//! The engine's resident memory as records accumulate, in-process: awards in batches of
//! 1,000 from 8 producers over 10,000 accounts (or more) with a short identity window (1 s of log
//! time), the resident memory (VmRSS) and its peak so far (VmHWM) printed every 500,000
//! records, once the projections have caught up. Between two lines, what grows is what the
//! engine keeps per record; the peak shows the write-state snapshots' transient memory (one
//! every million records here).
//!
//!     cargo bench --bench memory
//!
//! `TALLY_MEMORY_RECORDS` (default 6000000), `TALLY_MEMORY_ACCOUNTS` (default 10000),
//! `TALLY_MEMORY_CACHE_MIB` (the projection
//! store's cache, default the engine's), `TALLY_MEMORY_PROJECTION_SNAPSHOT_EVERY`
//! (default the engine's; 0 turns projection snapshots off).

mod common;

use common::keyed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tally::domain::state::WindowPolicy;
use tally::domain::{AwardRequest, Command, CommandMeta};
use tally::engine::{Engine, EngineConfig, SystemClock};
use tally::log::Durability;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STEP: u64 = 500_000;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn accounts() -> u64 {
    static ACCOUNTS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ACCOUNTS.get_or_init(|| env("TALLY_MEMORY_ACCOUNTS").unwrap_or(common::ACCOUNTS))
}

fn award(n: u64) -> (CommandMeta, Command) {
    let command = Command::Award {
        account: format!("p{}", n % accounts()),
        source: AwardRequest::Promotion {
            points: 1 + n % 50,
            promotion_id: "bench".into(),
            external_reward_id: format!("bench-r{n}"),
        },
    };
    (keyed(format!("award-{n}")), command)
}

/// A line of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

fn rss_mib() -> f64 {
    status_mib("VmRSS")
}

/// The highest resident memory so far (snapshots are transient peaks).
fn peak_mib() -> f64 {
    status_mib("VmHWM")
}

fn main() {
    let records = env("TALLY_MEMORY_RECORDS").unwrap_or(6_000_000);
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig {
        durability: Durability::Sync,
        identity_window: WindowPolicy::new(1, 256 << 20),
        ..EngineConfig::new(dir.path())
    };
    // A write-state snapshot every million records, as a server makes one under a long
    // load (its five-minute floor would leave this run without any).
    config.snapshot_interval = std::time::Duration::ZERO;
    if let Some(mib) = env("TALLY_MEMORY_CACHE_MIB") {
        config.projection_cache_bytes = mib << 20;
    }
    if let Some(every) = env("TALLY_MEMORY_PROJECTION_SNAPSHOT_EVERY") {
        config.projection_snapshot_every = every;
    }
    let engine = Engine::start(config, Arc::new(SystemClock)).unwrap();
    let runtime = common::runtime();
    println!(
        "{:>10} {:>9} {:>14} {:>9}",
        "records", "rss_mib", "bytes/record", "peak_mib"
    );
    runtime.block_on(async {
        let handle = engine.handle();
        common::open_accounts(&handle, accounts()).await;
        let next = Arc::new(AtomicU64::new(0));
        let mut last = (handle.committed_seq(), rss_mib());
        while handle.committed_seq() < records {
            let target = (handle.committed_seq() / STEP + 1) * STEP;
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (handle, next) = (handle.clone(), next.clone());
                    tokio::spawn(async move {
                        while handle.committed_seq() < target {
                            let from = next.fetch_add(1000, Ordering::Relaxed);
                            let batch = (from..from + 1000).map(award).collect();
                            handle.submit_batch(batch).await.unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            // The projector catches up before each reading (a slow one under a profiler
            // takes longer than one wait allows).
            while handle.wait_for_projections().await.is_err() {}
            let (seq, rss) = (handle.committed_seq(), rss_mib());
            println!(
                "{seq:>10} {rss:>9.0} {:>14.1} {:>9.0}",
                (rss - last.1) * 1048576.0 / (seq - last.0) as f64,
                peak_mib()
            );
            last = (seq, rss);
        }
    });
    drop(runtime);
    engine.shutdown();
}

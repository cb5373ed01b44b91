//! The engine's resident memory as records accumulate, in-process: awards in batches of
//! 1,000 from 8 producers over 10,000 accounts (or more) with a short identity window (1 s of log
//! time), the resident memory (VmRSS), its peak so far (VmHWM) and the heap bytes the program
//! holds (a counting allocator) printed every 500,000
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

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::Arc;
use tally::domain::state::WindowPolicy;
use tally::domain::{AwardRequest, Command, CommandMeta};
use tally::engine::{Engine, EngineConfig, SystemClock};
use tally::log::Durability;

/// mimalloc, as the server uses, counting the bytes the program holds: resident memory
/// that grows while these do not is the allocator's, not the engine's.
struct Counting;

static HELD: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        HELD.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        HELD.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap_mib() -> f64 {
    HELD.load(Ordering::Relaxed) as f64 / 1048576.0
}

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
        "{:>10} {:>9} {:>14} {:>9} {:>9} {:>14}",
        "records", "rss_mib", "bytes/record", "peak_mib", "heap_mib", "heap b/record"
    );
    runtime.block_on(async {
        let handle = engine.handle();
        common::open_accounts(&handle, accounts()).await;
        let next = Arc::new(AtomicU64::new(0));
        let mut last = (handle.committed_seq(), rss_mib(), heap_mib());
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
            let (seq, rss, heap) = (handle.committed_seq(), rss_mib(), heap_mib());
            println!(
                "{seq:>10} {rss:>9.0} {:>14.1} {:>9.0} {heap:>9.0} {:>14.1}",
                (rss - last.1) * 1048576.0 / (seq - last.0) as f64,
                peak_mib(),
                (heap - last.2) * 1048576.0 / (seq - last.0) as f64,
            );
            last = (seq, rss, heap);
        }
    });
    drop(runtime);
    engine.shutdown();
}

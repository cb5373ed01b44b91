//! The ingest pipeline in-process, durable: external events per second next to plain award
//! commands measured in the same run (the same points, the same producers), so the ratio
//! says what receiving, deduplicating and recording an outcome costs on top of the award;
//! then a retry storm: events that all failed because their members were not enrolled,
//! retried once the members are, through the sweeper's `RetryDue` pulses. Each figure is
//! the median of three runs.
//!
//!     cargo bench --bench ingest
//!
//! `TALLY_BENCH_SECONDS` sets the length of each run (default 3).

mod common;

use common::{median, producers_rate, timed};
use std::sync::Arc;
use std::time::Instant;
use tally::domain::event::ExternalBody;
use tally::domain::{AwardRequest, Command, CommandMeta, IdempotencyKey};
use tally::engine::{Engine, EngineConfig, EngineHandle, ManualClock};

/// The allocator the server runs with (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;
const MEMBERS: u64 = 10_000;
/// Events per submit from each producer: what `tally ingest` sends per batch.
const PER_SUBMIT: u64 = 512;
const PRODUCERS: u64 = 8;
/// Events in the retry storm.
const STORM: u64 = 100_000;

fn meta(key: String, scope: &str) -> CommandMeta {
    CommandMeta {
        tenant: "bench".into(),
        actor: "bench".into(),
        idempotency: Some(IdempotencyKey {
            key,
            scope: scope.into(),
        }),
        ..CommandMeta::default()
    }
}

fn external(n: u64) -> (CommandMeta, Command) {
    let body = ExternalBody::PointsAward {
        member_id: format!("m{}", n % MEMBERS),
        points: 1 + n % 100,
        promotion_id: format!("promo-{n}"),
    };
    let command = Command::Ingest {
        source: "promo".into(),
        external_id: format!("x-{n}"),
        body,
    };
    (meta(format!("x-{n}"), "ingest:promo"), command)
}

fn award(n: u64) -> (CommandMeta, Command) {
    let command = Command::Award {
        account: format!("m{}", n % MEMBERS),
        source: AwardRequest::Promotion {
            points: 1 + n % 100,
            promotion_id: format!("promo-{n}"),
            external_reward_id: format!("promo:x-{n}"),
        },
    };
    (meta(format!("a-{n}"), ""), command)
}

fn start(dir: &std::path::Path) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(common::T0));
    (Engine::start(EngineConfig::new(dir), clock.clone()).unwrap(), clock)
}

async fn open_members(handle: &EngineHandle) {
    let opens: Vec<_> = (0..MEMBERS)
        .map(|m| {
            (
                meta(format!("open-{m}"), ""),
                Command::OpenAccount {
                    account: format!("m{m}"),
                },
            )
        })
        .collect();
    for chunk in opens.chunks(4096) {
        handle.submit_batch(chunk.to_vec()).await.unwrap();
    }
}

/// Commands per second from `PRODUCERS` tasks, each submitting `PER_SUBMIT` at a time.
fn rate(make: fn(u64) -> (CommandMeta, Command)) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (engine, _) = start(dir.path());
    let runtime = common::runtime();
    let rate = runtime.block_on(async {
        let handle = engine.handle();
        open_members(&handle).await;
        producers_rate(&handle, PRODUCERS, PER_SUBMIT, 0, make).await.per_second
    });
    drop(runtime);
    engine.shutdown();
    rate
}

/// Retries per second: `STORM` events fail for want of their members, the members enroll,
/// and the retries run as the sweeper would run them (pulses of 256, one job at a time).
fn retry_storm() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let (engine, clock) = start(dir.path());
    let runtime = common::runtime();
    let rate = runtime.block_on(async {
        let handle = engine.handle();
        let events: Vec<_> = (0..STORM).map(external).collect();
        for chunk in events.chunks(4096) {
            let results = handle.submit_batch(chunk.to_vec()).await.unwrap();
            assert!(results.iter().all(|r| r.is_ok()));
        }
        open_members(&handle).await;
        clock.advance(3_600_000_000);
        let (retried, elapsed) = {
            let start = Instant::now();
            let mut retried = 0;
            loop {
                let n = handle
                    .retry_due(tally::engine::sweeper::RETRY_PULSES_PER_JOB)
                    .await
                    .unwrap();
                retried += n;
                if n == 0 {
                    break;
                }
            }
            (retried, start.elapsed().as_secs_f64())
        };
        assert_eq!(retried as u64, STORM, "every event is retried once");
        retried as f64 / elapsed
    });
    drop(runtime);
    engine.shutdown();
    rate
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut awards = Vec::new();
    let mut ingests = Vec::new();
    for _ in 0..RUNS {
        awards.push(rate(award));
        ingests.push(rate(external));
    }
    let (awards, ingests) = (median(awards), median(ingests));
    println!("durable, {PRODUCERS} producers, {PER_SUBMIT} per submit: award commands {awards:.0}/s");
    println!(
        "durable, {PRODUCERS} producers, {PER_SUBMIT} per submit: external points.award events {ingests:.0}/s ({:.2}× the award rate)",
        ingests / awards
    );
    let (storm, elapsed) = timed(|| median((0..RUNS).map(|_| retry_storm()).collect()));
    println!("retry storm of {STORM} events after their members enrolled: {storm:.0} retries/s ({elapsed:.0} s for three runs with set-up)");
}

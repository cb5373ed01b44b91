//! What the benches share: medians, timing, and a generator of valid logs written
//! directly (no engine), so that logs of 10M events take seconds to make.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;
use tally::domain::event::{AccountOpened, AwardSource, PointsAwarded, PromotionSource};
use tally::domain::{Effect, Envelope, Event};
use tally::log::{Durability, FileLog, LogOptions, LogWriter};

/// Accounts in a generated log, all in tenant `bench`, named `p0`, `p1`, ….
pub const ACCOUNTS: u64 = 10_000;
/// Events per second of log time: a one-hour window is 360,000 events at any log size.
pub const RATE: u64 = 100;
/// 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000_000;

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed().as_secs_f64())
}

/// Whether generated awards carry idempotency keys, as the API's do (each then holds an
/// entry of the durable idempotency index in the write-side state).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    None,
    PerCommand,
}

/// Writes `events` records: account openings, then promotion awards spread over them.
pub fn generate(data_dir: &Path, events: u64, keys: Keys) {
    let options = LogOptions {
        durability: Durability::Buffered,
        ..LogOptions::default()
    };
    let (mut log, _) = FileLog::open(&data_dir.join("log"), options).unwrap();
    let mut posted = vec![0u64; ACCOUNTS as usize];
    for seq in 1..=events {
        let ts = T0 + (seq - 1) * 1_000_000 / RATE;
        let account = (seq - 1) % ACCOUNTS;
        let envelope = Envelope {
            event_id: uuid::Uuid::from_u128(seq as u128),
            tenant: "bench".into(),
            stream: format!("p{account}"),
            correlation_id: format!("order-{}", seq / 3),
            actor: format!("pos-{}", seq % 50),
            idempotency_key: match keys {
                Keys::PerCommand => format!("k{seq}"),
                Keys::None => String::new(),
            },
            ..Envelope::default()
        };
        let event = if seq <= ACCOUNTS {
            Event::AccountOpened(AccountOpened { tier: "Member".into() })
        } else {
            let before = posted[account as usize];
            let points = 1 + seq % 9;
            posted[account as usize] += points;
            Event::PointsAwarded(PointsAwarded {
                points,
                source: AwardSource::Promotion(PromotionSource {
                    promotion_id: "bench".into(),
                    external_reward_id: format!("r{seq}"),
                }),
                effect: Effect {
                    posted_before: before,
                    posted_after: before + points,
                    held_before: 0,
                    held_after: 0,
                    lifetime_before: before,
                    lifetime_after: before + points,
                    tier_before: "Member".into(),
                    tier_after: "Member".into(),
                },
            })
        };
        log.stage(seq, ts, &envelope, &event);
        if seq % 4096 == 0 {
            log.commit().unwrap();
        }
    }
    log.commit().unwrap();
}

/// Rows per second sled takes, one insert at a time and in batches, `rows` of each.
pub fn sled_insert_rates(rows: u64) -> (f64, f64) {
    let key = |n: u64| {
        let mut key = format!("bench\0p{}\0", n % ACCOUNTS).into_bytes();
        key.extend_from_slice(&n.to_be_bytes());
        key
    };
    let value = vec![7u8; 150];
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let single = db.open_tree("single").unwrap();
    let (_, one_by_one) = timed(|| {
        for n in 0..rows {
            single.insert(key(n), value.clone()).unwrap();
        }
    });
    let batched = db.open_tree("batched").unwrap();
    let (_, in_batches) = timed(|| {
        for chunk in 0..rows / 4096 {
            let mut batch = sled::Batch::default();
            for n in chunk * 4096..(chunk + 1) * 4096 {
                batch.insert(key(n), value.clone());
            }
            batched.apply_batch(batch).unwrap();
        }
    });
    (rows as f64 / one_by_one, (rows / 4096 * 4096) as f64 / in_batches)
}

/// Length of each measured run: `TALLY_BENCH_SECONDS` (default 3).
pub fn seconds() -> std::time::Duration {
    std::time::Duration::from_secs_f64(
        std::env::var("TALLY_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

/// Commands per second from `producers` concurrent tasks, each submitting `per_submit`
/// commands made by `make` (numbered from `first`, never twice) and waiting for the answer
/// before the next, for [`seconds`]. Every command must be accepted.
pub async fn producers_rate(
    handle: &tally::engine::EngineHandle,
    producers: u64,
    per_submit: u64,
    first: u64,
    make: fn(u64) -> (tally::domain::CommandMeta, tally::domain::Command),
) -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let next = Arc::new(AtomicU64::new(first));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + seconds();
    let start = Instant::now();
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let (handle, next, done) = (handle.clone(), next.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let from = next.fetch_add(per_submit, Ordering::Relaxed);
                    let batch = (from..from + per_submit).map(make).collect();
                    let results = handle.submit_batch(batch).await.unwrap();
                    assert!(results.iter().all(|r| r.is_ok()), "every command is accepted");
                    done.fetch_add(per_submit, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

//! What the benches share: medians, timing, and a generator of valid logs written
//! directly (no engine), so that logs of 10M events take seconds to make.
#![allow(dead_code)]

use std::path::Path;
use std::time::Instant;
use tally::domain::event::{AccountOpened, AwardSource, PointsAwarded, PromotionSource};
use tally::domain::{Effect, Envelope, Event};
use tally::log::{Durability, FileLog, LogOptions, LogWriter};

/// A command's metadata in tenant `bench`, by actor `bench`, with idempotency key `key`.
pub fn keyed(key: String) -> tally::domain::CommandMeta {
    tally::domain::CommandMeta {
        tenant: "bench".into(),
        actor: "bench".into(),
        idempotency: Some(tally::domain::IdempotencyKey {
            key,
            scope: String::new(),
        }),
        ..tally::domain::CommandMeta::default()
    }
}

/// The runtime the benches drive an engine from: two workers, as the machine has two cores.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Account `p{a}`'s opening, in tenant `bench`.
pub fn open(a: u64) -> (tally::domain::CommandMeta, tally::domain::Command) {
    let command = tally::domain::Command::OpenAccount {
        account: format!("p{a}"),
    };
    (keyed(format!("open-{a}")), command)
}

/// Opens accounts `p0` … `p{count - 1}` in tenant `bench`, in batches of 4,096.
pub async fn open_accounts(handle: &tally::engine::EngineHandle, count: u64) {
    let opens: Vec<_> = (0..count).map(open).collect();
    for chunk in opens.chunks(4096) {
        handle.submit_batch(chunk.to_vec()).await.unwrap();
    }
}

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

/// A measured run: commands per second, and the CPU time each kind of thread of this
/// process spent per command meanwhile.
pub struct Measured {
    pub per_second: f64,
    /// µs of CPU per command, by thread name (the tokio workers, which run the producers
    /// and their submitting tasks, under one name).
    pub cpu_us: std::collections::BTreeMap<String, f64>,
}

impl Measured {
    /// `name: 1.2 µs, …` in decreasing order, and their sum.
    pub fn cpu_split(&self) -> String {
        let mut parts: Vec<_> = self.cpu_us.iter().filter(|(_, &us)| us >= 0.05).collect();
        parts.sort_by(|a, b| b.1.total_cmp(a.1));
        let total: f64 = self.cpu_us.values().sum();
        let listed: Vec<_> = parts.iter().map(|(name, us)| format!("{name} {us:.2}")).collect();
        format!("{} = {total:.2} µs of CPU a command", listed.join(" + "))
    }
}

/// CPU seconds (user and system) each thread of this process has used so far, summed by
/// thread name, from `/proc/self/task`. Threads that ended are not counted.
pub fn cpu_by_thread() -> std::collections::BTreeMap<String, f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut by_name = std::collections::BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("Linux: /proc/self/task") {
        let task = task.expect("a task entry").path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Fields after the name (which may hold spaces) in parentheses: utime and stime are
        // the 14th and 15th of the line, the 12th and 13th after it.
        let after_name = &stat[stat.rfind(')').expect("stat names the thread") + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // Numbered threads (sled's I/O pool) under one name.
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit())
            .trim_end_matches('-');
        *by_name.entry(name.to_string()).or_insert(0.0) += ticks / ticks_per_second;
    }
    by_name
}

/// Commands per second from `producers` concurrent tasks, each submitting `per_submit`
/// commands made by `make` (numbered from `first`, never twice) and waiting for the answer
/// before the next, for [`seconds`]; and where the CPU went meanwhile. Every command must
/// be accepted.
pub async fn producers_rate(
    handle: &tally::engine::EngineHandle,
    producers: u64,
    per_submit: u64,
    first: u64,
    make: fn(u64) -> (tally::domain::CommandMeta, tally::domain::Command),
) -> Measured {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let next = Arc::new(AtomicU64::new(first));
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + seconds();
    let cpu_before = cpu_by_thread();
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
    let elapsed = start.elapsed().as_secs_f64();
    let commands = done.load(Ordering::Relaxed) as f64;
    let cpu_us = cpu_by_thread()
        .into_iter()
        .map(|(name, seconds)| {
            let before = cpu_before.get(&name).copied().unwrap_or(0.0);
            (name, (seconds - before) * 1e6 / commands)
        })
        .collect();
    Measured {
        per_second: commands / elapsed,
        cpu_us,
    }
}

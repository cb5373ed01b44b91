//! Reading the past: open + verify, replay in-process and over gRPC, the cost of a
//! one-hour window on logs of 1M and 10M events (it must not grow with the log), point
//! reads of scattered records by sequence number, and projection rebuild rates. Logs are
//! generated directly (valid events with consistent balances, 100 events per second of log
//! time) so that 10M events take seconds to write. Each figure is the median of three runs.
//!
//!     cargo bench --bench replay
//!
//! `TALLY_BENCH_SMALL=1` uses 100k and 1M events instead, for a quick look.
//! `TALLY_BENCH_ONLY=point-reads` measures only the point reads (on both log sizes);
//! `TALLY_BENCH_ONLY=rebuild` only the rebuilds, beside the log's read rate (smaller log);
//! `TALLY_BENCH_ONLY=history` only the history of an account with 10,000 events.

mod common;

use common::{generate, median, sled_insert_rates, timed, Keys, RATE, T0};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tally::engine::{jobs, Engine, EngineConfig, SystemClock};
use tally::log::{Durability, LogReader};
use tally::projection::{ProjectionName, Projections};
use tally::query::{EventFilter, Replay, Window};

/// The allocator the server runs with (`src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RUNS: usize = 3;

fn replay_count(reader: &LogReader, window: Window, filter: EventFilter) -> u64 {
    let mut replay = Replay::new(reader, window, filter, 0);
    while replay.next_event().unwrap().is_some() {}
    replay.progress().events_sent
}

/// Replays a window of `seconds` of log time from the middle of the log.
fn window_in_the_middle(reader: &LogReader, events: u64, seconds: u64) -> f64 {
    let middle = T0 + events / 2 * 1_000_000 / RATE;
    let window = Window::Time {
        from_us: middle,
        to_us: Some(middle + seconds * 1_000_000),
    };
    median(
        (0..RUNS)
            .map(|_| timed(|| assert_eq!(replay_count(reader, window, EventFilter::default()), seconds * RATE)).1)
            .collect(),
    )
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let small = std::env::var("TALLY_BENCH_SMALL").is_ok();
    let (size_a, size_b) = if small {
        (100_000, 1_000_000)
    } else {
        (1_000_000, 10_000_000)
    };
    if std::env::var("TALLY_BENCH_ONLY").is_ok_and(|only| only == "point-reads") {
        for size in [size_a, size_b] {
            let dir = tempfile::tempdir().unwrap();
            generate(dir.path(), size, Keys::None);
            point_reads(&LogReader::open(&dir.path().join("log")).unwrap());
        }
        return;
    }
    if std::env::var("TALLY_BENCH_ONLY").is_ok_and(|only| only == "history") {
        long_history();
        return;
    }
    if std::env::var("TALLY_BENCH_ONLY").is_ok_and(|only| only == "rebuild") {
        let dir = tempfile::tempdir().unwrap();
        generate(dir.path(), size_a, Keys::None);
        rebuilds(&LogReader::open(&dir.path().join("log")).unwrap(), size_a);
        return;
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (dir, size) in dirs.iter().zip([size_a, size_b]) {
        let ((), seconds) = timed(|| generate(dir.path(), size, Keys::None));
        println!("generated {size} events in {seconds:.1} s");
    }
    for (dir, size) in dirs.iter().zip([size_a, size_b]) {
        let seconds = median(
            (0..RUNS)
                .map(|_| timed(|| LogReader::open(&dir.path().join("log")).unwrap()).1)
                .collect(),
        );
        println!(
            "open + verify of {size} events: {seconds:.2} s ({:.0} events/s)",
            size as f64 / seconds
        );
    }
    let reader_a = LogReader::open(&dirs[0].path().join("log")).unwrap();
    let reader_b = LogReader::open(&dirs[1].path().join("log")).unwrap();
    let all = Window::Sequence { from: 1, to: None };
    let full = median(
        (0..RUNS)
            .map(|_| timed(|| replay_count(&reader_a, all, EventFilter::default())).1)
            .collect(),
    );
    println!(
        "replay in-process, every event of {size_a}: {:.0} events/s",
        size_a as f64 / full
    );
    let none = EventFilter {
        accounts: vec!["nobody".into()],
        ..EventFilter::default()
    };
    let scan = median(
        (0..RUNS)
            .map(|_| timed(|| replay_count(&reader_a, all, none.clone())).1)
            .collect(),
    );
    println!(
        "replay in-process, filter matching nothing: {:.0} records/s scanned",
        size_a as f64 / scan
    );
    let seconds = if small { 360 } else { 3600 };
    let (window_a, window_b) = (
        window_in_the_middle(&reader_a, size_a, seconds),
        window_in_the_middle(&reader_b, size_b, seconds),
    );
    println!(
        "{seconds} s window ({} events) in a log of {size_a}: {window_a:.3} s; of {size_b}: {window_b:.3} s; ratio {:.2}",
        seconds * RATE,
        window_b / window_a
    );
    point_reads(&reader_a);
    point_reads(&reader_b);

    // The limit a rebuild runs into: sled's own insert rate for history-like rows.
    let (single, batched) = sled_insert_rates(size_a);
    println!("limit: sled 0.34 inserts of 150-byte rows into a fresh tree: {single:.0}/s one by one, {batched:.0}/s in batches of 4096");

    rebuilds(&reader_a, size_a);
    // The live projector folds all four in turn and writes them: its catch-up rate.
    let store = tempfile::tempdir().unwrap();
    let projections = Projections::open(store.path()).unwrap();
    let (_, seconds) = timed(|| {
        for from in (1..=size_a).step_by(4096) {
            let records: Vec<_> = reader_a
                .iter_range(from, from + 4095)
                .collect::<Result<_, _>>()
                .unwrap();
            projections.apply(&records).unwrap();
            projections.write_due().unwrap();
        }
        projections.write_pending().unwrap();
    });
    println!(
        "all four projections in turn (the live projector catching up), {size_a} events: {seconds:.1} s ({:.0} events/s)",
        size_a as f64 / seconds
    );
    drop(projections);

    // Rebuild time against log size: the same projection from both logs; linear means the
    // cost per event stays the same.
    let (seconds_a, seconds_b) = (
        fold_seconds(&reader_a, ProjectionName::History),
        fold_seconds(&reader_b, ProjectionName::History),
    );
    println!(
        "rebuild of history from {size_a} events: {seconds_a:.2} s; from {size_b}: {seconds_b:.2} s; cost per event ratio {:.2} (1.00 is linear)",
        (seconds_b / size_b as f64) / (seconds_a / size_a as f64)
    );

    grpc_replay(dirs[0].path(), size_a);
}

/// Records a point read fetches, spread at random over the whole log.
const POINT_READS: usize = 10_000;
/// Of those, how many the old way (a sequential reader per record) reads: it is slow.
const POINT_READS_ONE_BY_ONE: usize = 300;

/// Reads `POINT_READS` records of one random spread (sorted) with `read_seqs`, one by one
/// with `read_one`, and, for a few hundred of them, the old way: `iter_range(seq, seq)`,
/// which reads ahead a whole chunk for each. The log was just written, so its files are in
/// the page cache: this measures the reads' own cost, not a disk's.
fn point_reads(reader: &LogReader) {
    let head = reader.head().seq;
    let mut state = 0x5EED_u64;
    let mut seqs = std::collections::BTreeSet::new();
    while seqs.len() < POINT_READS {
        // xorshift64: a fixed spread for every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        seqs.insert(1 + state % head);
    }
    let seqs: Vec<u64> = seqs.into_iter().collect();
    let per_record_us = |seconds: f64, records: usize| seconds * 1e6 / records as f64;
    let batch = median(
        (0..RUNS)
            .map(|_| {
                let (records, seconds) = timed(|| reader.read_seqs(&seqs).unwrap());
                assert!(records.iter().map(|r| r.seq).eq(seqs.iter().copied()));
                seconds
            })
            .collect(),
    );
    let one_by_one = median(
        (0..RUNS)
            .map(|_| {
                timed(|| {
                    for &seq in &seqs {
                        assert_eq!(tally::log::read_one(reader, seq).unwrap().unwrap().seq, seq);
                    }
                })
                .1
            })
            .collect(),
    );
    let step = POINT_READS / POINT_READS_ONE_BY_ONE;
    let sample: Vec<u64> = seqs.iter().step_by(step).copied().collect();
    let old = median(
        (0..RUNS)
            .map(|_| {
                timed(|| {
                    for &seq in &sample {
                        assert_eq!(reader.iter_range(seq, seq).next().unwrap().unwrap().seq, seq);
                    }
                })
                .1
            })
            .collect(),
    );
    println!(
        "point reads, {POINT_READS} records spread over {head}: read_seqs {:.2} µs/record; read_one each {:.2} µs/record; \
         iter_range(seq, seq) each ({} of them) {:.1} µs/record; locator {:.2} bytes/record",
        per_record_us(batch, seqs.len()),
        per_record_us(one_by_one, seqs.len()),
        sample.len(),
        per_record_us(old, sample.len()),
        reader.locator_bytes() as f64 / head as f64,
    );
}

/// The whole history of one account with 10,000 awards among 1M other records, read through
/// the history index and the log as GetHistory reads it: median of five, and the same for a
/// page of 100.
fn long_history() {
    use tally::domain::{AwardRequest, Command, CommandMeta, IdempotencyKey};
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), 1_000_000, Keys::None);
    let config = EngineConfig {
        durability: Durability::Buffered,
        projection_snapshot_every: 0,
        ..EngineConfig::new(dir.path())
    };
    let engine = Engine::start(config, Arc::new(SystemClock)).unwrap();
    let handle = engine.handle();
    let runtime = common::runtime();
    let meta = |key: String| CommandMeta {
        tenant: "long".into(),
        actor: "bench".into(),
        idempotency: Some(IdempotencyKey {
            key,
            scope: String::new(),
        }),
        ..CommandMeta::default()
    };
    runtime.block_on(async {
        let open = Command::OpenAccount {
            account: "member".into(),
        };
        handle.submit_batch(vec![(meta("open".into()), open)]).await.unwrap();
        for batch in 0..10u64 {
            let awards = (0..1000u64)
                .map(|n| {
                    let n = batch * 1000 + n;
                    let award = Command::Award {
                        account: "member".into(),
                        source: AwardRequest::Promotion {
                            points: 1,
                            promotion_id: "bench".into(),
                            external_reward_id: format!("long-{n}"),
                        },
                    };
                    (meta(format!("award-{n}")), award)
                })
                .collect();
            handle.submit_batch(awards).await.unwrap();
        }
        while handle.wait_for_projections().await.is_err() {}
    });
    for (what, limit) in [("every entry", 20_000), ("a page of 100", 100)] {
        let mut entries = 0;
        let seconds = median(
            (0..5)
                .map(|_| {
                    timed(|| {
                        entries = handle
                            .indexed()
                            .history("long", "member", 0, limit)
                            .unwrap()
                            .unwrap()
                            .len()
                    })
                    .1
                })
                .collect(),
        );
        println!(
            "history of an account with 10,000 awards in a log of {}, {what}: {:.2} ms ({entries} entries)",
            handle.committed_seq(),
            seconds * 1e3
        );
    }
    drop(runtime);
    engine.shutdown();
}

/// Rebuild of each projection into a fresh generation, medians of three (the fold alone, in
/// the chunks a rebuild uses; the swap and the live catch-up are not timed), beside the
/// log's own decode rate in the same run: the records read back as a rebuild reads them
/// (trusted, in rebuild chunks) and doing nothing with them.
fn rebuilds(reader: &LogReader, size: u64) {
    let decode = median(
        (0..RUNS)
            .map(|_| timed(|| jobs::fold_range(reader, 1, size, |_| Ok::<(), tally::log::LogError>(())).unwrap()).1)
            .collect(),
    );
    let decode_rate = size as f64 / decode;
    println!("the log read back as a rebuild reads it, {size} events: {decode_rate:.0} events/s");
    for name in ProjectionName::ALL {
        let seconds = median((0..RUNS).map(|_| fold_seconds(reader, name)).collect());
        let rate = size as f64 / seconds;
        println!(
            "rebuild of {} from {size} events: {seconds:.2} s ({rate:.0} events/s, {:.2}x the log's read rate)",
            name.name(),
            rate / decode_rate
        );
    }
}

/// Seconds to fold the whole log into a fresh generation of `name`, as a rebuild does (the
/// log read on a second thread).
fn fold_seconds(reader: &LogReader, name: ProjectionName) -> f64 {
    let store = tempfile::tempdir().unwrap();
    let projections = Projections::open(store.path()).unwrap();
    let rebuild = projections.begin_rebuild(name).unwrap();
    let head = reader.head().seq;
    let (_, seconds) = timed(|| {
        jobs::fold_range(reader, 1, head, |records| {
            Ok::<(), tally::engine::JobError>(rebuild.apply(records)?)
        })
        .unwrap();
    });
    assert_eq!(rebuild.checkpoint().unwrap(), head);
    projections.abandon_rebuild(rebuild).unwrap();
    seconds
}

/// Streams the whole smaller log over gRPC on loopback, once the server's projections have
/// caught up (so they do not compete for the two cores).
fn grpc_replay(data_dir: &Path, events: u64) {
    use tally::api::proto::{audit_client::AuditClient, replay_response::Item, ReplayRequest};
    let runtime = common::runtime();
    let config = EngineConfig {
        durability: Durability::Buffered,
        projection_snapshot_every: 0,
        ..EngineConfig::new(data_dir)
    };
    let engine = Engine::start(config, Arc::new(SystemClock)).unwrap();
    let handle = engine.handle();
    let rate = runtime.block_on(async move {
        while handle.wait_for_projections().await.is_err() {}
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = tally::api::ApiSettings::for_data_dir(&handle.config().data_dir).unwrap();
        let server = tokio::spawn(tally::api::serve(handle.clone(), settings, listener, async {
            let _ = stopped.await;
        }));
        let mut client = AuditClient::connect(format!("http://{address}")).await.unwrap();
        // The server's key ring (made in the data directory with its settings) signs an
        // auditor's token.
        let auth = tally::api::auth::AuthSettings::for_data_dir(&handle.config().data_dir).unwrap();
        let roles = [tally::domain::access::Role::Auditor];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let token = tally::api::auth::operator_token(&auth, "bench", "bench", &roles, now, 3600);
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            let start = Instant::now();
            let mut request = tonic::Request::new(ReplayRequest::default());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let mut stream = client.replay(request).await.unwrap().into_inner();
            let mut received = 0u64;
            while let Some(message) = stream.message().await.unwrap() {
                if let Some(Item::Event(_)) = message.item {
                    received += 1;
                }
            }
            assert_eq!(received, events);
            rates.push(events as f64 / start.elapsed().as_secs_f64());
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        median(rates)
    });
    println!("replay over gRPC (loopback, one stream), every event of {events}: {rate:.0} events/s");
    engine.shutdown();
}

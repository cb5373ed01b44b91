//! Protects time-window replay and subscriptions: a replay of a window returns exactly the
//! records a full scan filtered by the same predicate returns (random logs, windows by
//! sequence number and by time, random filters), in order, and respects its maximum and
//! cancellation; over gRPC it streams the same events with progress ending in `done`. A
//! subscription's hand-over from history to live under concurrent writes loses and repeats
//! nothing, and its checkpoints only move forward and reach the head. Replay reads the log
//! only through `ReadLog`: the same windows over the records held in memory give the same
//! answers, and the trait's own `seq_at_time` and `hash_at` agree with the file log's.

mod support;

use support::{random_workload, request, MemoryLog, Rng, TestEngine, TestServer, ACTORS, TENANTS};
use tally::domain::{EventKind, Record};
use tally::engine::{jobs, JobControl, JobError};
use tally::log::ReadLog;
use tally::query::{subscribe, EventFilter, Replay, Window};

fn random_filter(rng: &mut Rng) -> EventFilter {
    let pick = |rng: &mut Rng, options: &[&str]| -> Vec<String> {
        if rng.below(2) == 0 {
            Vec::new()
        } else {
            vec![options[rng.below(options.len() as u64) as usize].to_string()]
        }
    };
    EventFilter {
        tenant: (rng.below(2) == 0).then(|| TENANTS[rng.below(2) as usize].to_string()),
        kinds: if rng.below(2) == 0 {
            Vec::new()
        } else {
            vec![EventKind::ALL[rng.below(7) as usize], EventKind::PointsAwarded]
        },
        accounts: pick(rng, &["p0", "p1", "p2", "p3"]),
        correlation_ids: if rng.below(3) == 0 {
            vec![format!("order-{}", rng.below(20))]
        } else {
            Vec::new()
        },
        actors: pick(rng, &ACTORS),
        idempotency: None,
    }
}

fn in_window(record: &Record, window: Window, head: u64) -> bool {
    match window {
        Window::Sequence { from, to } => record.seq >= from && record.seq < to.unwrap_or(head + 1),
        Window::Time { from_us, to_us } => record.ts_us >= from_us && to_us.is_none_or(|to| record.ts_us < to),
    }
}

fn replayed(reader: &dyn ReadLog, window: Window, filter: EventFilter, max: u64) -> Vec<u64> {
    let mut replay = Replay::new(reader, window, filter, max);
    let mut seqs = Vec::new();
    while let Some(record) = replay.next_event().unwrap() {
        seqs.push(record.seq);
    }
    assert!(replay.progress().done && replay.progress().percent == 100.0);
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_replay_equals_a_filtered_full_scan() {
    for seed in 1..=4u64 {
        let engine = TestEngine::start();
        let mut rng = Rng(seed * 7919);
        random_workload(&engine, &mut rng, 400).await;
        let all: Vec<Record> = engine.handle().reader().iter_from(1).collect::<Result<_, _>>().unwrap();
        let head = all.last().unwrap().seq;
        let (t0, t1) = (all[0].ts_us, all.last().unwrap().ts_us);
        let file = engine.handle().reader().clone();
        let memory = MemoryLog(all.clone());
        for _ in 0..50 {
            let ts_us = t0.saturating_sub(1) + rng.below(t1 - t0 + 3);
            let seq = rng.below(head + 2);
            let context = format!("seed {seed}: at {ts_us} µs, seq {seq}");
            assert_eq!(
                file.seq_at_time(ts_us).unwrap(),
                memory.seq_at_time(ts_us).unwrap(),
                "{context}"
            );
            assert_eq!(file.hash_at(seq).unwrap(), memory.hash_at(seq).unwrap(), "{context}");
        }
        for case in 0..60 {
            let window = if rng.below(2) == 0 {
                let from = 1 + rng.below(head);
                let to = (rng.below(3) > 0).then(|| from + rng.below(head));
                Window::Sequence { from, to }
            } else if rng.below(2) == 0 {
                let from_us = t0 + rng.below(t1 - t0 + 1);
                let to_us = (rng.below(3) > 0).then(|| from_us + rng.below(t1 - t0 + 1));
                Window::Time { from_us, to_us }
            } else {
                // Bounds exactly on records' timestamps, where off-by-one mistakes show.
                let a = all[rng.below(all.len() as u64) as usize].ts_us;
                let b = all[rng.below(all.len() as u64) as usize].ts_us;
                Window::Time {
                    from_us: a.min(b),
                    to_us: Some(a.max(b)),
                }
            };
            let filter = random_filter(&mut rng);
            let expected: Vec<u64> = all
                .iter()
                .filter(|r| in_window(r, window, head) && filter.matches(r))
                .map(|r| r.seq)
                .collect();
            assert_eq!(
                replayed(&file, window, filter.clone(), 0),
                expected,
                "seed {seed} case {case}: {window:?} {filter:?}"
            );
            assert_eq!(
                replayed(&memory, window, filter.clone(), 0),
                expected,
                "seed {seed} case {case}, in memory: {window:?} {filter:?}"
            );
            let max = 1 + rng.below(5);
            let limited = replayed(&file, window, filter, max);
            assert_eq!(
                limited,
                expected.iter().copied().take(max as usize).collect::<Vec<_>>(),
                "seed {seed} case {case}: max {max}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_replay_to_file_stops() {
    let engine = TestEngine::start();
    random_workload(&engine, &mut Rng(5), 1500).await;
    let control = JobControl::detached();
    control.cancel();
    let path = engine.dir.path().join("cancelled.jsonl");
    let window = Window::Sequence { from: 1, to: None };
    let result = jobs::replay_to_file(
        engine.handle().reader(),
        window,
        EventFilter::default(),
        0,
        &path,
        &control,
    );
    assert_eq!(result, Err(JobError::Cancelled));
    let written = std::fs::read_to_string(&path).unwrap().lines().count();
    assert!(
        written < engine.handle().committed_seq() as usize,
        "stopped early ({written} lines)"
    );
    let full = jobs::replay_to_file(
        engine.handle().reader(),
        window,
        EventFilter::default(),
        0,
        &path,
        &JobControl::detached(),
    )
    .unwrap();
    assert_eq!(full, engine.handle().committed_seq());
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&path).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["seq"].as_u64(), first["kind"].as_str()),
        (Some(1), Some("account.opened"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_grpc_streams_the_window_with_progress() {
    use tally::api::proto::{
        audit_client::AuditClient, replay_response::Item, EventFilter as WireFilter, ReplayRequest,
    };
    let mut server = TestServer::start().await;
    random_workload(&server.engine, &mut Rng(11), 300).await;
    let mut client = AuditClient::new(server.channel().await);
    let all: Vec<Record> = server
        .engine
        .handle()
        .reader()
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<u64> = all
        .iter()
        .filter(|r| {
            r.seq >= 20 && r.seq < 250 && r.envelope.tenant == "t1" && r.event.kind() == EventKind::PointsAwarded
        })
        .map(|r| r.seq)
        .collect();
    let ask = ReplayRequest {
        from_sequence: 20,
        to_sequence: 250,
        filter: Some(WireFilter {
            kinds: vec!["points.awarded".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut stream = client.replay(request(ask, "t1", "auditor")).await.unwrap().into_inner();
    let (mut seqs, mut last_progress) = (Vec::new(), None);
    while let Some(message) = stream.message().await.unwrap() {
        match message.item.unwrap() {
            Item::Event(e) => {
                assert_eq!((e.tenant.as_str(), e.kind.as_str()), ("t1", "points.awarded"));
                assert_eq!(e.hash.len(), 64);
                seqs.push(e.sequence);
            }
            Item::Progress(p) => last_progress = Some(p),
        }
    }
    assert_eq!(seqs, expected);
    let done = last_progress.expect("a final progress message");
    assert!(done.done && done.percent == 100.0 && done.events_sent == expected.len() as u64);
    let bad = client
        .replay(request(
            ReplayRequest {
                from_sequence: 10,
                from_time_us: 5,
                ..Default::default()
            },
            "t1",
            "a",
        ))
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::InvalidArgument);
    let bad_kind = ReplayRequest {
        filter: Some(WireFilter {
            kinds: vec!["nope".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        client.replay(request(bad_kind, "t1", "a")).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_hands_over_from_history_to_live_without_gap_or_duplicate() {
    let engine = TestEngine::start();
    let mut rng = Rng(3);
    random_workload(&engine, &mut rng, 200).await;
    let handle = engine.handle();
    for filter in [
        EventFilter::default(),
        EventFilter {
            kinds: vec![EventKind::HoldReserved],
            ..EventFilter::default()
        },
    ] {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let subscription = tokio::spawn(subscribe::run(
            handle.reader().clone(),
            handle.committed_watch(),
            1,
            filter.clone(),
            50,
            tx,
        ));
        // Writes go on while the subscriber reads history and then follows live.
        let writer = {
            let engine_handle = handle.clone();
            tokio::spawn(async move {
                for n in 0..300 {
                    let meta = support::meta_as("t1", "svc", &format!("live-{}-{n}", filter_id(&engine_handle)), "");
                    let command = tally::domain::Command::OpenAccount {
                        account: format!("live-{n}"),
                    };
                    engine_handle.submit(meta, command).await.unwrap();
                }
            })
        };
        let mut delivered = Vec::new();
        let mut checkpoints: Vec<u64> = Vec::new();
        let mut writer = writer;
        let mut writing = true;
        loop {
            tokio::select! {
                finished = &mut writer, if writing => {
                    finished.unwrap();
                    writing = false;
                }
                delivery = rx.recv() => match delivery.unwrap().unwrap() {
                    subscribe::Delivery::Event(record) => delivered.push(record.seq),
                    subscribe::Delivery::Checkpoint(seq) => {
                        assert!(checkpoints.last().is_none_or(|&last| seq > last), "checkpoints move forward");
                        assert!(delivered.last().is_none_or(|&last| last <= seq));
                        checkpoints.push(seq);
                    }
                },
            }
            // Once the writes are done, the subscription catches up and says so.
            if !writing && checkpoints.last() == Some(&handle.committed_seq()) {
                break;
            }
        }
        subscription.abort();
        let all: Vec<Record> = handle.reader().iter_from(1).collect::<Result<_, _>>().unwrap();
        let expected: Vec<u64> = all.iter().filter(|r| filter.matches(r)).map(|r| r.seq).collect();
        assert_eq!(delivered, expected, "every matching record once, in order");
    }
}

fn filter_id(handle: &tally::engine::EngineHandle) -> u64 {
    handle.committed_seq()
}

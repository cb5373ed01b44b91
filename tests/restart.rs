//! Protects restarts: the write-side state comes back from the snapshot file plus the log
//! after it (or from the log alone, when the snapshot is missing, belongs to another log,
//! or has any bit flipped: a damaged snapshot is never trusted, and a retried command stays
//! a replay), projections catch up from their checkpoints or fold again from scratch when
//! their store is gone, a log corrupted before its tail stops the engine from starting,
//! naming the bad sequence number, and a snapshot or projection that folded further than
//! the log now reaches (the log lost acknowledged records) stops it too, naming both heads.

mod support;

use std::os::unix::fs::FileExt;
use support::{meta, TestEngine};
use tally::domain::{AwardRequest, Command};
use tally::engine::{Engine, EngineError};
use tally::log::LogError;

async fn workload(engine: &TestEngine, from: u64, to: u64) {
    let h = engine.handle();
    for n in from..to {
        let account = format!("p{}", n % 3);
        h.submit(
            meta(&format!("open-{account}")),
            Command::OpenAccount {
                account: account.clone(),
            },
        )
        .await
        .unwrap();
        let source = AwardRequest::Promotion {
            points: 10 + n,
            promotion_id: "p".into(),
            external_reward_id: format!("r{n}"),
        };
        h.submit(
            meta(&format!("a{n}")),
            Command::Award {
                account: account.clone(),
                source,
            },
        )
        .await
        .unwrap();
        let hold = h
            .submit(
                meta(&format!("r{n}")),
                Command::Reserve {
                    account,
                    amount: 5,
                    ttl_seconds: 60,
                },
            )
            .await
            .unwrap()
            .records[0]
            .seq;
        if n % 2 == 0 {
            h.submit(
                meta(&format!("c{n}")),
                Command::Commit {
                    hold_id: hold,
                    amount: Some(3),
                },
            )
            .await
            .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_returns_from_snapshot_and_log_tail() {
    let mut engine = TestEngine::start();
    workload(&engine, 0, 30).await;
    let before = engine.digests().await;
    let head = engine.handle().committed_seq();
    engine.restart();
    let report = engine.engine.as_ref().unwrap().report().clone();
    assert_eq!(
        (report.head_seq, report.snapshot_seq, report.folded),
        (head, Some(head), 0),
        "graceful stop leaves a snapshot at the head"
    );
    assert_eq!(engine.digests().await, before);
    // The restored state answers retries with the original results and goes on.
    let handle = engine.handle();
    let replay = handle.submit(
        meta("a7"),
        Command::Award {
            account: "p1".into(),
            source: AwardRequest::Promotion {
                points: 17,
                promotion_id: "p".into(),
                external_reward_id: "r7".into(),
            },
        },
    );
    assert!(replay.await.unwrap().replayed);
    workload(&engine, 30, 40).await;
}

/// The snapshotter keeps no copy of the state: it restores one from the last snapshot and
/// the log when a snapshot is due (here after every 50 records, at once), writes it, and
/// lets it go. A restart after a crash folds only the log after it, to the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshotter_writes_snapshots_from_the_last_one_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = tally::engine::EngineConfig {
        durability: tally::log::Durability::Buffered,
        segment_bytes: 1 << 20,
        snapshot_every: 50,
        snapshot_interval: std::time::Duration::ZERO,
        ..tally::engine::EngineConfig::new(dir.path())
    };
    let mut engine = TestEngine::start_with(dir, config);
    let mut taken = Vec::new();
    for round in 0..3 {
        workload(&engine, round * 20, round * 20 + 20).await;
        let h = engine.handle();
        let head = h.committed_seq();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while h.snapshot_seq() + 50 <= head {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the newest snapshot stayed at {} of {head}",
                h.snapshot_seq()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        taken.push(h.snapshot_seq());
    }
    assert!(taken.windows(2).all(|w| w[0] < w[1]), "snapshots advance: {taken:?}");
    let expected = engine.handle().inspect(|state| state.clone()).await.unwrap();
    // A crash image: the log and the snapshot as the running engine left them (not the
    // projections, which a start folds again from the log); the engine then stops.
    let snapshot_at = *taken.last().unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_crash_image(engine.dir.path(), copy.path());
    engine.engine.take().unwrap().shutdown();
    let crashed_dir_config = tally::engine::EngineConfig {
        data_dir: copy.path().to_path_buf(),
        ..engine.config.clone()
    };
    let restarted = tally::engine::Engine::start(crashed_dir_config, engine.clock.clone()).unwrap();
    let report = restarted.report().clone();
    assert!(report.snapshot_seq.unwrap_or(0) >= snapshot_at, "{report:?}");
    assert_eq!(
        report.snapshot_seq.unwrap() + report.folded,
        expected.head_seq,
        "{report:?}"
    );
    let state = restarted.handle().inspect(|state| state.clone()).await.unwrap();
    assert!(state == expected, "the restored state is the state");
    restarted.shutdown();
}

/// A graceful stop writes the snapshot at the head itself: the next start folds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_leaves_a_snapshot_at_the_head() {
    let mut engine = TestEngine::start();
    workload(&engine, 0, 20).await;
    let head = engine.handle().committed_seq();
    engine.restart();
    let report = engine.engine.as_ref().unwrap().report().clone();
    assert_eq!(report.snapshot_seq, Some(head), "{report:?}");
    assert_eq!(report.folded, 0, "{report:?}");
    assert_eq!(engine.handle().snapshot_seq(), head);
}

/// Copies a data directory as a crash would leave it, without its projections.
fn copy_crash_image(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_name() == "projections" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_crash_image(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_projections_fold_again_from_the_log() {
    let mut engine = TestEngine::start();
    workload(&engine, 0, 25).await;
    let before = engine.digests().await;
    engine.engine.take().unwrap().shutdown();
    std::fs::remove_dir_all(engine.dir.path().join("projections")).unwrap();
    engine.engine = Some(Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
    let report = engine.engine.as_ref().unwrap().report().clone();
    assert_eq!(
        (report.snapshot_seq, report.folded),
        (Some(report.head_seq), 0),
        "the write-state snapshot is a file of its own"
    );
    assert_eq!(engine.digests().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_foreign_snapshot_means_folding_the_log() {
    let mut engine = TestEngine::start();
    workload(&engine, 0, 20).await;
    let mut other = TestEngine::start();
    workload(&other, 100, 110).await;
    assert!(
        other.handle().committed_seq() < engine.handle().committed_seq(),
        "a shorter log, so only the hash tells them apart"
    );
    let before = engine.digests().await;
    engine.engine.take().unwrap().shutdown();
    other.engine.take().unwrap().shutdown();
    // A snapshot taken from another log: its chain hash does not match this one.
    let snapshot = tally::engine::snapshot::path(engine.dir.path());
    std::fs::copy(tally::engine::snapshot::path(other.dir.path()), &snapshot).unwrap();
    engine.engine = Some(Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
    let report = engine.engine.as_ref().unwrap().report().clone();
    assert_eq!(
        (report.snapshot_seq, report.folded),
        (None, report.head_seq),
        "a foreign snapshot is ignored"
    );
    assert_eq!(engine.digests().await, before);
    engine.engine.take().unwrap().shutdown();
    std::fs::remove_file(&snapshot).unwrap();
    engine.engine = Some(Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
    let report = engine.engine.as_ref().unwrap().report().clone();
    assert_eq!(
        (report.snapshot_seq, report.folded),
        (None, report.head_seq),
        "no snapshot: the log is folded"
    );
    assert_eq!(engine.digests().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_refuses_to_start_and_names_the_sequence() {
    let mut engine = TestEngine::start();
    workload(&engine, 0, 5).await;
    engine.engine.take().unwrap().shutdown();
    let segment = engine.dir.path().join("log").join(format!("{:020}.seg", 1));
    // Byte 64 + 56 + 8 is the seq field of record 1.
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[0x55], 64 + 56 + 8).unwrap();
    match Engine::start(engine.config.clone(), engine.clock.clone()) {
        Err(EngineError::Log(LogError::Corrupt { seq, .. })) => assert_eq!(seq, 1),
        Err(other) => panic!("expected corruption, got {other}"),
        Ok(_) => panic!("a corrupt log must not be served"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_any_flipped_bit_is_never_trusted() {
    let mut engine = TestEngine::start();
    workload(&engine, 0, 12).await;
    let before = engine.digests().await;
    let head = engine.handle().committed_seq();
    engine.engine.take().unwrap().shutdown();
    let path = tally::engine::snapshot::path(engine.dir.path());
    let sound = std::fs::read(&path).unwrap();
    let mut rng = support::Rng(0x5eed);
    // The header, the start of the state, and random bits through the body and checksum.
    let mut bits: Vec<u64> = (0..60 * 8).step_by(7).collect();
    bits.extend((0..40).map(|_| rng.below(sound.len() as u64 * 8)));
    for bit in bits {
        let mut damaged = sound.clone();
        damaged[(bit / 8) as usize] ^= 1 << (bit % 8);
        std::fs::write(&path, &damaged).unwrap();
        engine.engine = Some(Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
        let report = engine.engine.as_ref().unwrap().report().clone();
        assert_eq!(
            (report.snapshot_seq, report.folded),
            (None, head),
            "bit {bit} flipped: the snapshot is not used, the log is folded"
        );
        // A retried reserve is the original hold, not a second one.
        let retry = engine
            .handle()
            .submit(
                meta("r3"),
                Command::Reserve {
                    account: "p0".into(),
                    amount: 5,
                    ttl_seconds: 60,
                },
            )
            .await
            .unwrap();
        assert!(retry.replayed, "bit {bit} flipped: the retry is answered, not applied");
        assert_eq!(engine.digests().await, before, "bit {bit} flipped");
        engine.engine.take().unwrap().shutdown();
    }
    std::fs::write(&path, &sound).unwrap();
    engine.engine = Some(Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
    assert_eq!(
        engine.engine.as_ref().unwrap().report().snapshot_seq,
        Some(head),
        "a sound one is"
    );
}

/// Two engines' data directories: one whose log is shorter than the other's.
async fn shorter_and_longer() -> (TestEngine, TestEngine) {
    let mut shorter = TestEngine::start();
    workload(&shorter, 0, 5).await;
    let mut longer = TestEngine::start();
    workload(&longer, 0, 9).await;
    longer.digests().await;
    shorter.digests().await;
    shorter.engine.take().unwrap().shutdown();
    longer.engine.take().unwrap().shutdown();
    (shorter, longer)
}

fn refused_as_behind(engine: &TestEngine, folded_by: &str, expect_folded: u64) {
    let log_head = tally::log::verify(&engine.dir.path().join("log")).unwrap().head.seq;
    let error = match Engine::start(engine.config.clone(), engine.clock.clone()) {
        Err(error) => error,
        Ok(_) => panic!("a log shorter than what was folded from it must not be served"),
    };
    let message = error.to_string();
    let EngineError::LogBehind {
        what,
        folded,
        log_head: said_head,
        first_lost,
    } = error
    else {
        panic!("expected a refusal naming both heads, got {message}")
    };
    assert!(what.contains(folded_by), "{message}");
    assert_eq!(
        (folded, said_head, first_lost),
        (expect_folded, log_head, log_head + 1),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_beyond_the_log_refuses_to_start_naming_both_heads() {
    let (shorter, longer) = shorter_and_longer().await;
    let longer_head = tally::log::verify(&longer.dir.path().join("log")).unwrap().head.seq;
    std::fs::copy(
        tally::engine::snapshot::path(longer.dir.path()),
        tally::engine::snapshot::path(shorter.dir.path()),
    )
    .unwrap();
    refused_as_behind(&shorter, "write-state snapshot", longer_head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_beyond_the_log_refuses_to_start_naming_both_heads() {
    let (shorter, longer) = shorter_and_longer().await;
    let longer_head = tally::log::verify(&longer.dir.path().join("log")).unwrap().head.seq;
    let projections = shorter.dir.path().join("projections");
    std::fs::remove_dir_all(&projections).unwrap();
    copy_dir(&longer.dir.path().join("projections"), &projections);
    refused_as_behind(&shorter, "projection", longer_head);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_record_that_breaks_the_folds_invariants_refuses_the_start_naming_it() {
    use tally::domain::event::{AccountOpened, AwardSource, PointsAwarded, PromotionSource};
    use tally::domain::{Effect, Envelope, Event};
    use tally::log::{FileLog, LogOptions, LogWriter};
    let dir = tempfile::tempdir().unwrap();
    let envelope = Envelope {
        tenant: "t1".into(),
        stream: "p1".into(),
        ..Envelope::default()
    };
    let (mut log, _) = FileLog::open(&dir.path().join("log"), LogOptions::default()).unwrap();
    log.stage(
        1,
        1,
        &envelope,
        &Event::AccountOpened(AccountOpened { tier: "Member".into() }),
    );
    // A sound chain whose award says the account held 5 points before it: it held none.
    let award = PointsAwarded {
        points: 10,
        source: AwardSource::Promotion(PromotionSource {
            promotion_id: "p".into(),
            external_reward_id: "r1".into(),
        }),
        effect: Effect {
            posted_before: 5,
            posted_after: 15,
            held_before: 0,
            held_after: 0,
            lifetime_before: 5,
            lifetime_after: 15,
            tier_before: "Member".into(),
            tier_after: "Member".into(),
        },
    };
    log.stage(2, 2, &envelope, &Event::PointsAwarded(award));
    log.commit().unwrap();
    drop(log);
    let config = tally::engine::EngineConfig::new(dir.path());
    let clock = std::sync::Arc::new(tally::engine::ManualClock::new(support::T0));
    match Engine::start(config, clock) {
        Err(EngineError::Unfoldable { seq, reason }) => {
            assert_eq!(seq, 2, "{reason}");
        }
        Err(other) => panic!("expected a refusal naming record 2, got {other}"),
        Ok(_) => panic!("a log that does not fold must not be served"),
    }
}

//! The bounded identity window: an accepted command's identities (its idempotency key, an
//! award's natural identity) are honoured for ever, however long ago they left the window
//! the writer keeps in RAM.
//!
//! - For random commands with keys and natural identities reused at random (retries,
//!   conflicting reuses, the same rating slip or reward under another key), a ledger whose
//!   window lets identities go after a minute answers every command exactly as one that
//!   keeps them all: the same records, replays, conflicts (naming the same field) and
//!   refusals; both when the identities were looked up before deciding (as the engine's
//!   submitting tasks do, against the older identities as they are or as they were some
//!   steps before) and when `decide` looks them up itself. Its state equals a fold
//!   of its records. Seeds are printed on failure; `TALLY_WINDOW_SEEDS` sets how many run
//!   (default 24).
//! - Through the engine: a retry a day after the window let its identity go gets the
//!   original records, a conflicting reuse is refused naming the field, a rating slip
//!   already awarded is not awarded again, before and after a restart.

mod support;

use support::{meta_as, Harness, Rng, TestEngine};
use tally::domain::event::ExternalBody;
use tally::domain::state::WindowPolicy;
use tally::domain::{AwardRequest, Command, CommandMeta, Decision, Rejection};

const MINUTE_US: u64 = 60_000_000;

fn slip(slip_id: &str, minutes: u32) -> AwardRequest {
    AwardRequest::RatingSlip {
        slip_id: slip_id.into(),
        game: "blackjack".into(),
        average_bet_cents: 500,
        decisions_per_hour: 100,
        minutes_played: minutes,
        house_edge_bps: 400,
    }
}

/// A command and the metadata it is sent with: mostly the Ledger API's (keys `k<step>`),
/// sometimes an external event (keyed by its id in the source's scope) whose rating slip
/// may be one the API awarded, or the retry pulse that applies the events that waited.
fn random_command(rng: &mut Rng, step: u64) -> (CommandMeta, Command) {
    let account = format!("p{}", rng.below(4));
    let api = |command| (meta_as("t1", "staff-1", &format!("k{step}"), ""), command);
    match rng.below(8) {
        6 => {
            let external_id = format!("e{}", rng.below(60));
            let meta = meta_as("t1", "svc-pos", &external_id, "ingest:pos");
            let body = ExternalBody::RatingSlipCompleted {
                member_id: account,
                slip_id: format!("s{}", rng.below(150)),
                game: "blackjack".into(),
                average_bet_cents: 500,
                decisions_per_hour: 100,
                minutes_played: 30 + rng.below(3) as u32,
                house_edge_bps: 400,
            };
            let command = Command::Ingest {
                source: "pos".into(),
                external_id,
                body,
            };
            (meta, command)
        }
        7 => {
            let mut meta = meta_as("t1", "system", "", "");
            meta.idempotency = None;
            (meta, Command::RetryDue)
        }
        kind => api(api_command(rng, kind, account)),
    }
}

fn api_command(rng: &mut Rng, kind: u64, account: String) -> Command {
    match kind {
        0 => Command::OpenAccount { account },
        1 | 2 => Command::Award {
            account,
            source: slip(&format!("s{}", rng.below(150)), 30 + rng.below(3) as u32),
        },
        3 => Command::Award {
            account,
            source: AwardRequest::Promotion {
                points: 100 + rng.below(2),
                promotion_id: "spring".into(),
                external_reward_id: format!("r{}", rng.below(80)),
            },
        },
        4 => Command::Award {
            account,
            source: AwardRequest::Manual {
                staff_id: "staff-1".into(),
                points: 50,
                reason: "goodwill gesture".into(),
                external_reward_id: String::new(),
            },
        },
        _ => Command::Reserve {
            account,
            amount: 10 + rng.below(3),
            ttl_seconds: 600,
        },
    }
}

/// What a ledger answered, without what depends on the window.
fn answer(result: &Result<Decision, Rejection>) -> String {
    format!("{result:?}")
}

fn seeds() -> u64 {
    std::env::var("TALLY_WINDOW_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24)
}

#[test]
fn a_short_window_answers_every_command_as_one_that_keeps_every_identity() {
    for seed in 1..=seeds() {
        let mut rng = Rng(seed);
        let mut whole = Harness::default();
        let mut short = Harness {
            check_older_first: seed % 2 == 0,
            ..Harness::default()
        };
        short.state.idempotency.policy = WindowPolicy {
            max_age_us: MINUTE_US,
            max_entries: 1 + rng.below(20),
            chunk: 1 + rng.below(4) as usize,
        };
        let mut sent: Vec<(CommandMeta, Command)> = Vec::new();
        for step in 0..400 {
            // Mostly new keys, often a key sent before with its own command (a retry) or
            // another one (a conflicting reuse).
            let (meta, command) = match rng.below(10) {
                0..=3 if !sent.is_empty() => {
                    let (meta, command) = sent[rng.below(sent.len() as u64) as usize].clone();
                    if rng.chance(30) {
                        (meta, random_command(&mut rng, step).1)
                    } else {
                        (meta, command)
                    }
                }
                _ => random_command(&mut rng, step),
            };
            sent.push((meta.clone(), command.clone()));
            // Now and then the identities are looked up in the older ones as they were some
            // steps ago, as a task may while the writer lets more go.
            if rng.chance(20) {
                short.published = Some(short.state.idempotency.older.clone());
            } else if rng.chance(20) {
                short.published = None;
            }
            let expected = whole.run(&meta, command.clone());
            let got = short.run(&meta, command.clone());
            assert_eq!(
                answer(&got),
                answer(&expected),
                "seed {seed} step {step}: {command:?} under {:?}",
                meta.idempotency
            );
            let advance = rng.below(3 * MINUTE_US);
            whole.now_us += advance;
            short.now_us += advance;
        }
        let older = &short.state.idempotency.older;
        assert!(
            older.len() > 100,
            "seed {seed}: identities left the window ({older:?}; {} in it; {} records)",
            short.state.idempotency.window.len(),
            short.records.len()
        );
        assert!(
            short.state.idempotency.window.len() < whole.state.idempotency.window.len(),
            "seed {seed}: the window is shorter"
        );
        assert_eq!(short.records, whole.records, "seed {seed}: the same log");
        let ingested_awards = short
            .records
            .iter()
            .filter(|r| matches!(r.event, tally::domain::Event::PointsAwarded(_)))
            .filter(|r| r.envelope.idempotency_scope.starts_with("ingest:"))
            .count();
        assert!(ingested_awards > 0, "seed {seed}: external events were awarded");
        assert!(
            short.state == short.refold(),
            "seed {seed}: a fold of the log is the state"
        );
    }
}

fn engine_with_short_window() -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let config = tally::engine::EngineConfig {
        durability: tally::log::Durability::Buffered,
        segment_bytes: 1 << 20,
        identity_window: WindowPolicy {
            max_age_us: MINUTE_US,
            max_entries: u64::MAX,
            chunk: 1,
        },
        ..tally::engine::EngineConfig::new(dir.path())
    };
    TestEngine::start_with(dir, config)
}

#[tokio::test]
async fn a_retry_a_day_later_gets_its_original_answer_before_and_after_a_restart() {
    let mut engine = engine_with_short_window();
    let staff = |key: &str| meta_as("t1", "staff-1", key, "");
    let award = Command::Award {
        account: "p1".into(),
        source: slip("slip-1", 45),
    };
    let h = engine.handle();
    let opened = h
        .submit(staff("open-1"), Command::OpenAccount { account: "p1".into() })
        .await
        .unwrap();
    let awarded = h.submit(staff("award-1"), award.clone()).await.unwrap();
    assert!(!awarded.replayed);
    // A day of other commands: every identity above leaves the window.
    for hour in 0..24 {
        engine.clock.advance(60 * MINUTE_US);
        h.submit(
            staff(&format!("open-{hour}-later")),
            Command::OpenAccount {
                account: format!("q{hour}"),
            },
        )
        .await
        .unwrap();
    }
    for round in ["before a restart", "after a restart"] {
        let h = engine.handle();
        let retried = h.submit(staff("award-1"), award.clone()).await.unwrap();
        assert!(retried.replayed, "{round}");
        assert_eq!(retried.records, awarded.records, "{round}: the original records");
        let reopened = h
            .submit(staff("open-1"), Command::OpenAccount { account: "p1".into() })
            .await
            .unwrap();
        assert_eq!(reopened.records, opened.records, "{round}");
        // The same key for another request is refused, naming the first differing field.
        let conflicting = Command::Award {
            account: "p1".into(),
            source: slip("slip-1", 46),
        };
        match h.submit(staff("award-1"), conflicting).await {
            Err(tally::engine::EngineError::Rejected(Rejection::IdempotencyConflict {
                field,
                original_sequence,
            })) => {
                assert_eq!(field, "rating_slip.minutes_played", "{round}");
                assert_eq!(original_sequence, awarded.records[0].seq, "{round}");
            }
            other => panic!("{round}: a conflicting reuse is refused, got {other:?}"),
        }
        // The same rating slip under a new key is the same award: answered, not applied.
        let again = h
            .submit(staff(&format!("award-again-{}", round.len())), award.clone())
            .await
            .unwrap();
        assert!(again.replayed, "{round}: a rating slip accrues once");
        assert_eq!(again.records, awarded.records, "{round}");
        let tally::domain::Event::PointsAwarded(original) = &awarded.records[0].event else {
            panic!("an award's first record is the award");
        };
        let balance = h.account("t1", "p1").await.unwrap().unwrap();
        assert_eq!(balance.posted, original.points, "{round}: awarded once");
        engine.restart();
    }
}

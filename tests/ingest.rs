//! Protects the ingest pipeline (`docs/INGEST.md`): strict validation of external events
//! (a table of bad inputs per type, each with the error it must get, a key named twice
//! among them); nothing lost and
//! nothing applied twice under transient failures, duplicates and restarts, checked against
//! a reference model; an account's later events parked behind its dead letter and applied
//! in order after a re-drive; idempotent re-drives; audited discards; the queue's bounds;
//! retries with exponential backoff and jitter on the injected clock; content dedup and its
//! window; and the `tally.v1.Ingest` service end to end.

mod support;

use std::collections::{BTreeMap, HashMap};
use support::{request, Rng, TestEngine, TestServer};
use tally::api::external;
use tally::api::proto::ingest_client::IngestClient;
use tally::api::proto::{self, Duplicate, IngestOutcome, LetterState, RedriveOutcome};
use tally::domain::event::{ExternalBody, ReversePolicy};
use tally::domain::{Command, CommandMeta, Event, IdempotencyKey, IngestPolicy, Rejection};
use tally::engine::{EngineConfig, EngineHandle, LetterFilter, Receipt, ReceiptState, RedriveSelection};
use tally::log::Durability;

const TENANT: &str = "t1";
const SECOND: u64 = 1_000_000;

fn meta_as(actor: &str, key: &str, scope: &str) -> CommandMeta {
    CommandMeta {
        tenant: TENANT.into(),
        actor: actor.into(),
        correlation_id: format!("corr-{key}"),
        causation_id: String::new(),
        idempotency: Some(IdempotencyKey {
            key: key.into(),
            scope: scope.into(),
        }),
        grants: None,
    }
}

/// A partner's event: keyed by its external id in the scope of its source.
fn ingest_meta(source: &str, external_id: &str) -> CommandMeta {
    meta_as("svc-partner", external_id, &format!("ingest:{source}"))
}

/// An operator's command.
fn operator(key: &str) -> CommandMeta {
    meta_as("ops-ana", key, "")
}

async fn ingest(h: &EngineHandle, source: &str, id: &str, body: ExternalBody) -> Result<Receipt, Rejection> {
    let command = Command::Ingest {
        source: source.into(),
        external_id: id.into(),
        body,
    };
    match h.submit(ingest_meta(source, id), command).await {
        Ok(receipt) => Ok(receipt),
        Err(tally::engine::EngineError::Rejected(r)) => Err(r),
        Err(other) => panic!("engine error: {other}"),
    }
}

/// The outcome a receipt's first attempt had.
fn outcome(receipt: &Receipt) -> &'static str {
    match &receipt.records[1].event {
        Event::ExternalProcessed(_) => "processed",
        Event::ExternalAttemptFailed(_) => "retrying",
        Event::ExternalDeadLettered(d) if d.parked_behind != 0 => "parked",
        Event::ExternalDeadLettered(_) => "dead_lettered",
        other => panic!("not an outcome: {other:?}"),
    }
}

fn enroll(member: &str) -> ExternalBody {
    ExternalBody::MemberEnrolled {
        member_id: member.into(),
    }
}

fn award(member: &str, points: u64, promotion: &str) -> ExternalBody {
    ExternalBody::PointsAward {
        member_id: member.into(),
        points,
        promotion_id: promotion.into(),
    }
}

fn slip(member: &str, slip_id: &str, minutes: u32) -> ExternalBody {
    ExternalBody::RatingSlipCompleted {
        member_id: member.into(),
        slip_id: slip_id.into(),
        game: "blackjack".into(),
        average_bet_cents: 2500,
        decisions_per_hour: 70,
        minutes_played: minutes,
        house_edge_bps: 200,
    }
}

fn reverse(member: &str, original: &str, policy: ReversePolicy) -> ExternalBody {
    ExternalBody::PointsReverse {
        member_id: member.into(),
        original_external_id: original.into(),
        policy,
        reason: "award was issued in error".into(),
    }
}

/// Points a body credits when applied (reversals are not in the random streams).
fn points_of(body: &ExternalBody) -> u64 {
    match body {
        ExternalBody::PointsAward { points, .. } => *points,
        ExternalBody::RatingSlipCompleted {
            average_bet_cents,
            decisions_per_hour,
            minutes_played,
            house_edge_bps,
            ..
        } => {
            tally::domain::accrual(
                *average_bet_cents,
                *decisions_per_hour,
                *minutes_played,
                *house_edge_bps,
                1000,
            )
            .1
        }
        _ => 0,
    }
}

/// Spends `points` of `member` through a hold and its commit.
async fn spend(h: &EngineHandle, member: &str, points: u64) {
    let reserve = Command::Reserve {
        account: member.into(),
        amount: points,
        ttl_seconds: 60,
    };
    let hold = h
        .submit(operator(&format!("spend-{member}-{points}")), reserve)
        .await
        .unwrap()
        .records[0]
        .seq;
    let commit = Command::Commit {
        hold_id: hold,
        amount: None,
    };
    h.submit(operator(&format!("commit-{hold}")), commit).await.unwrap();
}

async fn posted(h: &EngineHandle, member: &str) -> Option<u64> {
    h.account(TENANT, member).await.unwrap().map(|a| a.posted)
}

fn engine_with(policy: IngestPolicy) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::Buffered,
        segment_bytes: 1 << 20,
        // Small, so that restarts also go through write-state snapshots with the pipeline in.
        snapshot_every: 50,
        policy: tally::domain::Policy {
            ingest: policy,
            ..Default::default()
        },
        ..EngineConfig::new(dir.path())
    };
    TestEngine::start_with(dir, config)
}

/// Drives retries until none is due, moving the clock past each one.
async fn drain_retries(te: &TestEngine) {
    let h = te.handle();
    loop {
        let page = h
            .dead_letters(
                TENANT,
                LetterFilter {
                    include_retrying: true,
                    ..Default::default()
                },
                100_000,
            )
            .await
            .unwrap();
        let retrying = page
            .letters
            .iter()
            .filter_map(|l| match l.receipt.status {
                tally::domain::state::ReceiptStatus::Retrying { retry_at_us } => Some(retry_at_us),
                _ => None,
            })
            .max();
        let Some(latest) = retrying else { return };
        te.clock.set(latest.max(te.clock_now()));
        while h.retry_due(256).await.unwrap() > 0 {}
    }
}

trait ClockNow {
    fn clock_now(&self) -> u64;
}

impl ClockNow for TestEngine {
    fn clock_now(&self) -> u64 {
        use tally::engine::Clock;
        self.clock.now_us()
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// Each bad payload with the field its error must name and a piece of its message.
#[test]
fn bad_inputs_are_refused_with_an_error_naming_the_field() {
    let slip_ok = r#""member_id":"m1","slip_id":"S1","game":"bj","average_bet_cents":2500,"decisions_per_hour":70,"minutes_played":60"#;
    let table: &[(&str, String, &str, &str)] = &[
        // type, payload, field, message contains
        (
            "points.bonus",
            r#"{"member_id":"m1"}"#.into(),
            "type",
            "unknown event type",
        ),
        ("member.enrolled", "not json".into(), "payload", "is not valid JSON"),
        ("member.enrolled", "[1,2]".into(), "payload", "must be a JSON object"),
        ("member.enrolled", "{}".into(), "payload.member_id", "is required"),
        (
            "member.enrolled",
            r#"{"member_id":7}"#.into(),
            "payload.member_id",
            "must be a string",
        ),
        (
            "member.enrolled",
            r#"{"member_id":""}"#.into(),
            "payload.member_id",
            "is required",
        ),
        (
            "member.enrolled",
            r#"{"member_id":"m 1"}"#.into(),
            "payload.member_id",
            "contains ' '",
        ),
        (
            "member.enrolled",
            format!(r#"{{"member_id":"{}"}}"#, "m".repeat(129)),
            "payload.member_id",
            "longer than 128",
        ),
        (
            "member.enrolled",
            r#"{"member_id":"m1","tier":"gold"}"#.into(),
            "payload",
            "unknown field \"tier\"",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","promotion_id":"p"}"#.into(),
            "payload.points",
            "is required",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":"100","promotion_id":"p"}"#.into(),
            "payload.points",
            "must be a number, got string",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":-5,"promotion_id":"p"}"#.into(),
            "payload.points",
            "whole number",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":1.5,"promotion_id":"p"}"#.into(),
            "payload.points",
            "whole number",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":null,"promotion_id":"p"}"#.into(),
            "payload.points",
            "got null",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":0,"promotion_id":"p"}"#.into(),
            "payload.points",
            "between 1 and",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":1000000001,"promotion_id":"p"}"#.into(),
            "payload.points",
            "between 1 and 1000000000",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":5,"promotion_id":""}"#.into(),
            "payload.promotion_id",
            "is required",
        ),
        (
            "points.award",
            r#"{"member_id":"m1","points":5,"promotion_id":"p","extra":true}"#.into(),
            "payload",
            "unknown field \"extra\"",
        ),
        (
            "rating_slip.completed",
            format!("{{{slip_ok}}}"),
            "payload.house_edge_bps",
            "is required",
        ),
        (
            "rating_slip.completed",
            format!(r#"{{{slip_ok},"house_edge_bps":0}}"#),
            "payload.house_edge_bps",
            "between 1 and 10000",
        ),
        (
            "rating_slip.completed",
            format!(r#"{{{slip_ok},"house_edge_bps":10001}}"#),
            "payload.house_edge_bps",
            "between 1 and 10000",
        ),
        (
            "rating_slip.completed",
            format!(r#"{{{slip_ok},"house_edge_bps":4294967296}}"#),
            "payload.house_edge_bps",
            "0 to 4294967295",
        ),
        (
            "rating_slip.completed",
            format!(r#"{{{slip_ok},"house_edge_bps":200}}"#)
                .replace(r#""minutes_played":60"#, r#""minutes_played":1441"#),
            "payload.minutes_played",
            "between 1 and 1440",
        ),
        (
            "rating_slip.completed",
            format!(r#"{{{slip_ok},"house_edge_bps":"2%"}}"#),
            "payload.house_edge_bps",
            "must be a number",
        ),
        (
            "points.reverse",
            r#"{"member_id":"m1","original_external_id":"e1","policy":"some","reason":"oops"}"#.into(),
            "payload.policy",
            "cap_to_available",
        ),
        (
            "points.reverse",
            r#"{"member_id":"m1","original_external_id":"e1","policy":"all_or_nothing","reason":"  "}"#.into(),
            "payload.reason",
            "is required",
        ),
        (
            "points.reverse",
            r#"{"member_id":"m1","original_external_id":"e1","reason":"oops"}"#.into(),
            "payload.policy",
            "is required",
        ),
        (
            "points.reverse",
            r#"{"member_id":"m1","original_external_id":"e1","policy":"cap_to_available","reason":"oops","points":5}"#
                .into(),
            "payload",
            "unknown field \"points\"",
        ),
        // A key named twice: readers disagree on which counts, so it is refused, named.
        (
            "points.award",
            r#"{"member_id":"b-1","points":1,"promotion_id":"dk","points":999999}"#.into(),
            "payload",
            "names the key \"points\" twice",
        ),
        (
            "member.enrolled",
            r#"{"member_id":"m1","member_id":"m1"}"#.into(),
            "payload",
            "names the key \"member_id\" twice",
        ),
        (
            "member.enrolled",
            r#"{"member_id":"m1","x":{"a":1,"a":2}}"#.into(),
            "payload",
            "names the key \"a\" twice",
        ),
    ];
    for (type_name, payload, field, contains) in table {
        match external::parse(type_name, payload) {
            Err(Rejection::InvalidArgument { field: got, message }) => {
                assert_eq!(&got, field, "{type_name} {payload}: {message}");
                assert!(
                    message.contains(contains),
                    "{type_name} {payload}: {message:?} lacks {contains:?}"
                );
            }
            other => panic!("{type_name} {payload}: expected an error naming {field}, got {other:?}"),
        }
    }
    // Valid payloads parse, whatever the key order and spacing, to the same content.
    let a = external::parse("points.award", r#"{"member_id":"m1","points":5,"promotion_id":"p"}"#).unwrap();
    let b = external::parse(
        "points.award",
        r#"{ "promotion_id" : "p", "points" : 5, "member_id" : "m1" }"#,
    )
    .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.checksum(), b.checksum());
    // Source and external id.
    for (source, id, field) in [
        ("", "e1", "source"),
        ("pos", "", "external_id"),
        ("p o s", "e1", "source"),
        ("pos", "e\n1", "external_id"),
    ] {
        match tally::domain::validate_identity(source, id) {
            Err(Rejection::InvalidArgument { field: got, .. }) => assert_eq!(got, field, "{source:?} {id:?}"),
            other => panic!("{source:?} {id:?}: {other:?}"),
        }
    }
    assert!(
        tally::domain::validate_identity(&"s".repeat(64), "e1").is_err(),
        "sources are at most 63 bytes"
    );
    assert!(
        tally::domain::validate_identity("pos", &"e".repeat(65)).is_err(),
        "external ids are at most 64 bytes"
    );
}

/// A refused event leaves nothing behind: no record, and the same id can then be used for
/// a valid event.
#[tokio::test]
async fn a_refused_event_appends_nothing() {
    let te = TestEngine::start();
    let h = te.handle();
    let head = h.committed_seq();
    let error = ingest(&h, "pos", "e1", award("m1", 0, "p")).await.unwrap_err();
    assert!(matches!(
        error,
        Rejection::InvalidArgument {
            field: "payload.points",
            ..
        }
    ));
    assert_eq!(h.committed_seq(), head);
    let receipt = ingest(&h, "pos", "e1", enroll("m1")).await.unwrap();
    assert_eq!(outcome(&receipt), "processed");
}

// ---------------------------------------------------------------------------------------
// Nothing lost, nothing twice

/// One generated external event.
#[derive(Clone)]
struct Generated {
    source: &'static str,
    id: String,
    body: ExternalBody,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_streams_lose_nothing_and_apply_nothing_twice_across_restarts() {
    for seed in [1u64, 2, 3] {
        random_stream(seed).await;
    }
}

async fn random_stream(seed: u64) {
    let mut rng = Rng(seed);
    let mut te = engine_with(IngestPolicy {
        max_attempts: 4,
        ..IngestPolicy::default()
    });
    // The stream: enrollments for most members, awards and accruals for all, shuffled so
    // that many arrive before their member (a transient failure).
    let members: Vec<String> = (0..12).map(|m| format!("m{m}")).collect();
    let mut stream = Vec::new();
    let mut enrolled = Vec::new();
    for (m, member) in members.iter().enumerate() {
        if rng.chance(75) {
            enrolled.push(member.clone());
            stream.push(Generated {
                source: "crm",
                id: format!("enroll-{member}"),
                body: enroll(member),
            });
        }
        for n in 0..(2 + rng.below(4)) {
            stream.push(Generated {
                source: "promo",
                id: format!("p-{m}-{n}"),
                body: award(member, 1 + rng.below(500), &format!("promo-{m}-{n}")),
            });
            stream.push(Generated {
                source: "casino",
                id: format!("s-{m}-{n}"),
                body: slip(member, &format!("slip-{m}-{n}"), 30 + rng.below(300) as u32),
            });
        }
    }
    for i in (1..stream.len()).rev() {
        stream.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let unique = stream.clone();
    // Deliver, with duplicates (the same id again, or the same content under a new id),
    // clock steps, retry pulses and restarts in between.
    let mut sent = 0;
    let mut content_duplicates = 0;
    let mut ids = std::collections::HashSet::new();
    while sent < stream.len() {
        let mut event = stream[sent].clone();
        if rng.chance(15) && sent > 0 {
            event = stream[rng.below(sent as u64) as usize].clone();
            if rng.chance(50) {
                event.id = format!("{}-again-{sent}", event.id);
                content_duplicates += 1;
            }
        } else {
            sent += 1;
        }
        ids.insert((event.source.to_string(), event.id.clone()));
        let receipt = ingest(&te.handle(), event.source, &event.id, event.body.clone())
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {} refused: {e}", event.id));
        if receipt.replayed {
            let Event::ExternalReceived(original) = &receipt.records[0].event else {
                panic!("seed {seed}: a replay answers with the receipt")
            };
            assert_eq!(
                original.body, event.body,
                "seed {seed}: a duplicate answers with its original"
            );
        }
        te.clock.advance(rng.below(3 * SECOND));
        if rng.chance(20) {
            te.handle().retry_due(256).await.unwrap();
        }
        if rng.chance(4) {
            te.restart();
        }
    }
    assert!(content_duplicates > 0 || seed != 1, "the stream has content duplicates");
    drain_retries(&te).await;
    te.restart();

    // Every accepted event was received once, and is processed exactly once or in the queue.
    let h = te.handle();
    let records: Vec<_> = h.reader().iter_from(1).collect::<Result<_, _>>().unwrap();
    let mut received: HashMap<(String, String), u64> = HashMap::new();
    let mut processed: HashMap<u64, u32> = HashMap::new();
    for record in &records {
        match &record.event {
            Event::ExternalReceived(r) => {
                let previous = received.insert((r.source.clone(), r.external_id.clone()), record.seq);
                assert!(previous.is_none(), "seed {seed}: {} received twice", r.external_id);
            }
            Event::ExternalProcessed(p) => *processed.entry(p.receipt_seq).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(
        received.len(),
        ids.len(),
        "seed {seed}: one receipt per distinct id sent"
    );
    let letters = h.dead_letters(TENANT, LetterFilter::default(), 100_000).await.unwrap();
    for (id, &receipt_seq) in &received {
        let state = h.receipt(TENANT, receipt_seq).await.unwrap().expect("a receipt");
        match state {
            ReceiptState::Processed { .. } => {
                assert_eq!(
                    processed.get(&receipt_seq),
                    Some(&1),
                    "seed {seed}: {id:?} processed once"
                )
            }
            ReceiptState::Open(view) => {
                assert!(
                    matches!(
                        view.receipt.status,
                        tally::domain::state::ReceiptStatus::DeadLettered { .. }
                    ),
                    "seed {seed}: {id:?} is neither processed nor a dead letter"
                );
                assert_eq!(
                    processed.get(&receipt_seq),
                    None,
                    "seed {seed}: {id:?} in the queue was not applied"
                );
            }
            ReceiptState::Discarded { .. } => panic!("seed {seed}: nothing was discarded"),
        }
    }
    // Members never enrolled have all their events in the queue and no account.
    for member in members.iter().filter(|m| !enrolled.contains(m)) {
        assert_eq!(
            posted(&h, member).await,
            None,
            "seed {seed}: {member} was never enrolled"
        );
        let expected = unique.iter().filter(|e| e.body.member_id() == member).count();
        let queued = letters
            .letters
            .iter()
            .filter(|l| l.receipt.body.member_id() == member)
            .count();
        assert_eq!(
            queued, expected,
            "seed {seed}: every event of {member} waits in the queue"
        );
    }

    // The operator's fix: open the missing accounts, re-drive everything. Now the balances
    // are the reference model's: every distinct event applied exactly once.
    for member in members.iter().filter(|m| !enrolled.contains(m)) {
        h.submit(
            operator(&format!("open-{member}")),
            Command::OpenAccount {
                account: member.clone(),
            },
        )
        .await
        .unwrap();
    }
    let plan = h
        .redrive_plan(TENANT, RedriveSelection::Matching(LetterFilter::default()), 100_000)
        .await
        .unwrap();
    let commands = plan
        .iter()
        .map(|&seq| (operator(&format!("fix/{seq}")), Command::Redrive { receipt_seq: seq }))
        .collect();
    for result in h.submit_batch(commands).await.unwrap() {
        let receipt = result.unwrap_or_else(|e| panic!("seed {seed}: re-drive refused: {e}"));
        assert!(
            matches!(receipt.records[0].event, Event::ExternalProcessed(_)),
            "seed {seed}: every letter applies once its member exists"
        );
    }
    let mut model: BTreeMap<&str, u64> = BTreeMap::new();
    for event in &unique {
        *model.entry(event.body.member_id()).or_default() += points_of(&event.body);
    }
    for (member, points) in model {
        assert_eq!(
            posted(&h, member).await,
            Some(points),
            "seed {seed}: balance of {member}"
        );
    }
    let stats = h.pipeline_stats(TENANT).await.unwrap();
    assert_eq!(stats.dead_letter_depth, 0);
    assert_eq!(stats.retrying, 0);
    assert_eq!(stats.counters.received, ids.len() as u64);
    assert_eq!(stats.counters.processed, ids.len() as u64);
    assert_eq!(stats.counters.redriven, plan.len() as u64);
    // Live and rebuilt projections agree with the pipeline's events in the log.
    let digests = te.digests().await;
    te.restart();
    assert_eq!(
        te.digests().await,
        digests,
        "seed {seed}: projections survive a restart"
    );
}

// ---------------------------------------------------------------------------------------
// Ordering

/// An account's later events stay parked behind its dead letter, are not applied while
/// they wait, and are applied in order after the re-drive: a reversal parked behind the
/// award it reverses succeeds only because the award is applied first.
#[tokio::test]
async fn later_events_park_behind_a_dead_letter_and_apply_in_order_after_redrive() {
    let te = engine_with(IngestPolicy {
        max_attempts: 2,
        ..IngestPolicy::default()
    });
    let h = te.handle();
    let first = ingest(&h, "promo", "a1", award("m1", 300, "spring")).await.unwrap();
    assert_eq!(outcome(&first), "retrying", "m1 is not enrolled yet");
    let head = first.records[0].seq;
    te.clock.advance(10 * SECOND);
    assert_eq!(h.retry_due(8).await.unwrap(), 1);
    let letter = h.receipt(TENANT, head).await.unwrap().unwrap();
    let ReceiptState::Open(view) = letter else {
        panic!("a letter")
    };
    assert_eq!(view.receipt.attempts, 2);
    assert_eq!(
        view.receipt.status,
        tally::domain::state::ReceiptStatus::DeadLettered { parked_behind: 0 }
    );

    // The enrollment is never parked: the letters wait for it.
    assert_eq!(
        outcome(&ingest(&h, "crm", "en1", enroll("m1")).await.unwrap()),
        "processed"
    );
    let second = ingest(&h, "promo", "a2", award("m1", 50, "summer")).await.unwrap();
    let third = ingest(&h, "promo", "r1", reverse("m1", "a1", ReversePolicy::AllOrNothing))
        .await
        .unwrap();
    for parked in [&second, &third] {
        assert_eq!(outcome(parked), "parked");
        let Event::ExternalDeadLettered(d) = &parked.records[1].event else {
            panic!()
        };
        assert_eq!(d.parked_behind, head);
    }
    assert_eq!(posted(&h, "m1").await, Some(0), "parked events are not applied");
    // A parked letter cannot jump the queue.
    let refused = h
        .submit(
            operator("jump"),
            Command::Redrive {
                receipt_seq: second.records[0].seq,
            },
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("parked behind dead letter"), "{refused}");

    let plan = h
        .redrive_plan(TENANT, RedriveSelection::Through(third.records[0].seq), 100)
        .await
        .unwrap();
    assert_eq!(plan, vec![head, second.records[0].seq, third.records[0].seq]);
    let commands = plan
        .iter()
        .map(|&seq| (operator(&format!("go/{seq}")), Command::Redrive { receipt_seq: seq }))
        .collect();
    let results = h.submit_batch(commands).await.unwrap();
    let mut ledger = Vec::new();
    for result in results {
        let receipt = result.unwrap();
        assert!(matches!(receipt.records[0].event, Event::ExternalProcessed(_)));
        ledger.extend(
            receipt
                .records
                .iter()
                .filter(|r| r.event.effect().is_some())
                .map(|r| r.event.kind().name()),
        );
    }
    assert_eq!(
        ledger,
        ["points.awarded", "points.awarded", "points.reversed"],
        "applied in receipt order"
    );
    assert_eq!(posted(&h, "m1").await, Some(50), "300 + 50 - 300");
    assert_eq!(h.pipeline_stats(TENANT).await.unwrap().dead_letter_depth, 0);
    // The history shows the ledger events in that order, each with its before/after.
    h.wait_for_projections().await.unwrap();
    let history = h.indexed().history(TENANT, "m1", 0, 100).unwrap().unwrap_or_default();
    let posted_after: Vec<u64> = history.iter().map(|e| e.effect.posted_after).collect();
    assert_eq!(posted_after, [0, 300, 350, 50]);
}

/// A reversal takes back at most what is left of the award, capped to what is available
/// under `cap_to_available`; `all_or_nothing` dead-letters a shortfall.
#[tokio::test]
async fn reversals_follow_their_policy() {
    let te = TestEngine::start();
    let h = te.handle();
    ingest(&h, "crm", "en1", enroll("m1")).await.unwrap();
    ingest(&h, "promo", "a1", award("m1", 400, "spring")).await.unwrap();
    // Spend 300 of it.
    spend(&h, "m1", 300).await;
    let strict = ingest(&h, "promo", "x1", reverse("m1", "a1", ReversePolicy::AllOrNothing))
        .await
        .unwrap();
    assert_eq!(outcome(&strict), "dead_lettered");
    let Event::ExternalDeadLettered(d) = &strict.records[1].event else {
        panic!()
    };
    assert!(
        d.cause.contains("insufficient points: 100 available, 400 requested"),
        "{}",
        d.cause
    );
    // A reversal from a reversal's own source of an unknown award waits for it.
    assert_eq!(
        outcome(
            &ingest(&h, "other", "x2", reverse("m2", "a1", ReversePolicy::CapToAvailable))
                .await
                .unwrap()
        ),
        "retrying"
    );
    // Capped: takes the 100 available, records the 400 asked for.
    h.submit(
        operator("discard-x1"),
        Command::Discard {
            receipt_seq: strict.records[0].seq,
            reason: "superseded by x3".into(),
        },
    )
    .await
    .unwrap();
    let capped = ingest(&h, "promo", "x3", reverse("m1", "a1", ReversePolicy::CapToAvailable))
        .await
        .unwrap();
    assert_eq!(outcome(&capped), "processed");
    let Event::PointsReversed(r) = &capped.records[2].event else {
        panic!("{:?}", capped.records[2].event)
    };
    assert_eq!((r.points, r.requested), (100, 400));
    assert_eq!(posted(&h, "m1").await, Some(0));
    // What is left (300) stays reversible; a second capped reversal finds nothing available.
    // (Another reason: the same content again would be answered as a duplicate of x3.)
    let mut second = reverse("m1", "a1", ReversePolicy::CapToAvailable);
    if let ExternalBody::PointsReverse { reason, .. } = &mut second {
        *reason = "second look at the same award".into();
    }
    let again = ingest(&h, "promo", "x4", second).await.unwrap();
    assert!(!again.replayed);
    let Event::ExternalProcessed(p) = &again.records[1].event else {
        panic!()
    };
    assert_eq!((p.points, p.ledger_first_seq), (0, 0));
    // The lifetime went down with the reversal.
    assert_eq!(h.account(TENANT, "m1").await.unwrap().unwrap().lifetime, 300);
}

// ---------------------------------------------------------------------------------------
// Operating the queue

#[tokio::test]
async fn redrive_is_idempotent_and_discard_is_audited() {
    let te = engine_with(IngestPolicy {
        max_attempts: 1,
        ..IngestPolicy::default()
    });
    let h = te.handle();
    let a = ingest(&h, "promo", "a1", award("m1", 10, "p1")).await.unwrap();
    let b = ingest(&h, "promo", "b1", award("m2", 20, "p2")).await.unwrap();
    assert_eq!((outcome(&a), outcome(&b)), ("dead_lettered", "dead_lettered"));
    let (a, b) = (a.records[0].seq, b.records[0].seq);
    h.submit(operator("open-m1"), Command::OpenAccount { account: "m1".into() })
        .await
        .unwrap();

    let first = h
        .submit(operator("k1"), Command::Redrive { receipt_seq: a })
        .await
        .unwrap();
    assert!(!first.replayed);
    assert!(matches!(first.records[0].event, Event::ExternalProcessed(_)));
    // The same request again: the original answer, nothing applied.
    let retry = h
        .submit(operator("k1"), Command::Redrive { receipt_seq: a })
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.records, first.records);
    // Another re-drive of a processed letter is a no-op that says so.
    let again = h
        .submit(operator("k2"), Command::Redrive { receipt_seq: a })
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already processed"), "{again}");
    assert_eq!(posted(&h, "m1").await, Some(10));
    // A re-drive whose cause is not fixed fails again and keeps the letter at the head.
    let failed = h
        .submit(operator("k3"), Command::Redrive { receipt_seq: b })
        .await
        .unwrap();
    let Event::ExternalDeadLettered(d) = &failed.records[0].event else {
        panic!()
    };
    assert!(d.redriven && d.attempts == 2);

    // Discard: a reason is required; the discard is an event with the operator as actor.
    let short = h
        .submit(
            operator("d0"),
            Command::Discard {
                receipt_seq: b,
                reason: "nope".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(short.to_string().contains("at least 10 characters"), "{short}");
    let discarded = h
        .submit(
            operator("d1"),
            Command::Discard {
                receipt_seq: b,
                reason: "member closed at partner".into(),
            },
        )
        .await
        .unwrap();
    let record = &discarded.records[0];
    assert_eq!(record.envelope.actor, "ops-ana");
    assert!(matches!(&record.event, Event::DeadLetterDiscarded(d) if d.reason == "member closed at partner"));
    h.wait_for_projections().await.unwrap();
    let by_actor = h.indexed().by_actor(TENANT, "ops-ana", 0, u64::MAX, 0, 100).unwrap();
    let row = by_actor
        .iter()
        .find(|row| row.seq == record.seq)
        .expect("the discard is in the audit index");
    assert_eq!(row.reason, format!("receipt {b} discarded: member closed at partner"));
    let twice = h
        .submit(
            operator("d2"),
            Command::Discard {
                receipt_seq: b,
                reason: "member closed at partner".into(),
            },
        )
        .await
        .unwrap_err();
    assert!(twice.to_string().contains("already discarded"), "{twice}");
    let stats = h.pipeline_stats(TENANT).await.unwrap();
    assert_eq!(
        (
            stats.counters.discarded,
            stats.counters.redriven,
            stats.dead_letter_depth
        ),
        (1, 2, 0)
    );
    // Another tenant sees none of it.
    let mut other = operator("x");
    other.tenant = "t2".into();
    let hidden = h.submit(other, Command::Redrive { receipt_seq: a }).await.unwrap_err();
    assert!(hidden.to_string().contains("no external event"), "{hidden}");
}

#[tokio::test]
async fn the_queue_bounds_refuse_new_events_and_drop_nothing() {
    let te = engine_with(IngestPolicy {
        max_attempts: 1,
        dead_letters_per_member_max: 2,
        dead_letters_max: 3,
        ..IngestPolicy::default()
    });
    let h = te.handle();
    assert_eq!(
        outcome(&ingest(&h, "p", "a1", award("m1", 1, "x1")).await.unwrap()),
        "dead_lettered"
    );
    assert_eq!(
        outcome(&ingest(&h, "p", "a2", award("m1", 2, "x2")).await.unwrap()),
        "parked"
    );
    // m1 is at its bound: refused, with a clear error.
    match ingest(&h, "p", "a3", award("m1", 3, "x3")).await {
        Err(Rejection::DeadLetterQueueFull { scope, bound: 2 }) => assert_eq!(scope, "member \"m1\""),
        other => panic!("{other:?}"),
    }
    // Its enrollment still gets in: it is never parked.
    assert_eq!(
        outcome(&ingest(&h, "crm", "e1", enroll("m1")).await.unwrap()),
        "processed"
    );
    // Another member fills the whole queue to its bound; then everything is refused.
    assert_eq!(
        outcome(&ingest(&h, "p", "b1", award("m2", 1, "y1")).await.unwrap()),
        "dead_lettered"
    );
    match ingest(&h, "p", "c1", enroll("m3")).await {
        Err(Rejection::DeadLetterQueueFull { scope, bound: 3 }) => assert_eq!(scope, "all members of the tenant"),
        other => panic!("{other:?}"),
    }
    // Another tenant is not held back by this one's queue.
    let mut other = ingest_meta("p", "t2-e1");
    other.tenant = "t2".into();
    let command = Command::Ingest {
        source: "p".into(),
        external_id: "t2-e1".into(),
        body: enroll("m3"),
    };
    assert!(h.submit(other, command).await.is_ok());
    // Nothing was dropped: every letter is still there.
    let page = h.dead_letters(TENANT, LetterFilter::default(), 100).await.unwrap();
    assert_eq!(page.depth, 3);
    let ids: Vec<_> = page.letters.iter().map(|l| l.receipt.external_id.as_str()).collect();
    assert_eq!(ids, ["a1", "a2", "b1"]);
    // A retry of an accepted event is still answered at the bound.
    assert!(ingest(&h, "p", "a1", award("m1", 1, "x1")).await.unwrap().replayed);
    // Re-driving frees room.
    let plan = h
        .redrive_plan(TENANT, RedriveSelection::Through(page.letters[1].receipt_seq), 10)
        .await
        .unwrap();
    for (n, seq) in plan.into_iter().enumerate() {
        h.submit(operator(&format!("r{n}")), Command::Redrive { receipt_seq: seq })
            .await
            .unwrap();
    }
    assert_eq!(
        outcome(&ingest(&h, "p", "a3", award("m1", 3, "x3")).await.unwrap()),
        "processed"
    );
    assert_eq!(posted(&h, "m1").await, Some(6));
}

// ---------------------------------------------------------------------------------------
// Retries and dedup

#[tokio::test]
async fn retries_back_off_exponentially_with_jitter_up_to_the_last_attempt() {
    let policy = IngestPolicy {
        max_attempts: 6,
        retry_base_delay_ms: 1_000,
        retry_max_delay_ms: 8_000,
        ..IngestPolicy::default()
    };
    let te = engine_with(policy.clone());
    let h = te.handle();
    let first = ingest(&h, "casino", "s1", slip("m9", "S-1", 60)).await.unwrap();
    let receipt_seq = first.records[0].seq;
    let mut delays = Vec::new();
    let mut records = first.records;
    for attempt in 1..=policy.max_attempts {
        match &records.last().unwrap().event {
            Event::ExternalAttemptFailed(f) => {
                assert_eq!(f.attempt, attempt);
                let failed_at = records.last().unwrap().ts_us;
                delays.push(f.retry_at_us - failed_at);
                // Not before its time.
                te.clock.set(f.retry_at_us - 1);
                assert_eq!(h.retry_due(4).await.unwrap(), 0, "attempt {attempt} is not due yet");
                te.clock.set(f.retry_at_us);
                let reply = h
                    .submit_batch(vec![(
                        CommandMeta {
                            tenant: "system".into(),
                            actor: "system:ingest".into(),
                            ..Default::default()
                        },
                        Command::RetryDue,
                    )])
                    .await
                    .unwrap();
                records = reply.into_iter().next().unwrap().unwrap().records;
            }
            Event::ExternalDeadLettered(d) => {
                assert_eq!(d.attempts, policy.max_attempts, "dead-lettered after the last attempt");
                assert_eq!(attempt, policy.max_attempts);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(delays.len(), policy.max_attempts as usize - 1);
    for (n, delay) in delays.iter().enumerate() {
        let full = (1_000u64 << n).min(8_000) * 1000;
        assert!(
            (full / 2..=full).contains(delay),
            "retry {n}: {delay} µs outside [{}, {full}]",
            full / 2
        );
    }
    assert!(matches!(
        h.receipt(TENANT, receipt_seq).await.unwrap(),
        Some(ReceiptState::Open(_))
    ));
    // Jitter: two events failing together retry apart, and the same on replay of the log.
    let x = ingest(&h, "casino", "s2", slip("m8", "S-2", 60)).await.unwrap();
    let y = ingest(&h, "casino", "s3", slip("m8", "S-3", 60)).await.unwrap();
    let at = |r: &Receipt| match &r.records[1].event {
        Event::ExternalAttemptFailed(f) => f.retry_at_us,
        _ => panic!(),
    };
    assert_ne!(at(&x), at(&y), "jitter spreads retries");
}

#[tokio::test]
async fn the_same_content_from_a_source_is_a_duplicate_within_the_window() {
    let te = engine_with(IngestPolicy {
        dedup_window_seconds: 3600,
        ..IngestPolicy::default()
    });
    let h = te.handle();
    ingest(&h, "crm", "e1", enroll("m1")).await.unwrap();
    let original = ingest(&h, "promo", "a1", award("m1", 10, "p")).await.unwrap();
    // Same id, same content: the original result.
    let retry = ingest(&h, "promo", "a1", award("m1", 10, "p")).await.unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.records, original.records);
    // Same id, other content: a conflict naming the payload.
    match ingest(&h, "promo", "a1", award("m1", 11, "p")).await {
        Err(Rejection::IdempotencyConflict { field: "payload", .. }) => {}
        other => panic!("{other:?}"),
    }
    // Same content under another id, within the window: recorded, applied as before
    // (nothing), naming the first.
    te.clock.advance(3599 * SECOND);
    let copy = ingest(&h, "promo", "a1-resent", award("m1", 10, "p")).await.unwrap();
    assert!(!copy.replayed);
    let Event::ExternalReceived(received) = &copy.records[0].event else {
        panic!()
    };
    assert_eq!(received.duplicate_of, original.records[0].seq);
    assert!(matches!(&copy.records[1].event, Event::ExternalProcessed(p) if p.already_applied && p.points == 0));
    assert_eq!(copy.records.len(), 2, "nothing applied");
    // Its id stays a duplicate after the window, so a file sent again applies nothing twice.
    te.clock.advance(2 * SECOND);
    assert!(
        ingest(&h, "promo", "a1-resent", award("m1", 10, "p"))
            .await
            .unwrap()
            .replayed
    );
    // From another source it is another event.
    assert!(
        !ingest(&h, "promo-2", "a1", award("m1", 10, "p"))
            .await
            .unwrap()
            .replayed
    );
    // After the window (measured from the original), the same content is a new event.
    let later = ingest(&h, "promo", "a1-next-day", award("m1", 10, "p")).await.unwrap();
    assert!(!later.replayed);
    assert_eq!(posted(&h, "m1").await, Some(30));
}

/// The slip of [`slip`] as a ledger `Award` command.
fn api_accrual(member: &str, slip_id: &str, minutes: u32) -> Command {
    let ExternalBody::RatingSlipCompleted {
        slip_id,
        game,
        average_bet_cents,
        decisions_per_hour,
        minutes_played,
        house_edge_bps,
        ..
    } = slip(member, slip_id, minutes)
    else {
        unreachable!("slip() builds a rating slip")
    };
    Command::Award {
        account: member.into(),
        source: tally::domain::AwardRequest::RatingSlip {
            slip_id,
            game,
            average_bet_cents,
            decisions_per_hour,
            minutes_played,
            house_edge_bps,
        },
    }
}

/// A rating slip accrues once, whether it came through the ledger API or from a partner.
#[tokio::test]
async fn a_slip_accrued_through_the_api_is_not_accrued_again_by_ingest() {
    let te = TestEngine::start();
    let h = te.handle();
    h.submit(operator("open"), Command::OpenAccount { account: "m1".into() })
        .await
        .unwrap();
    let api = h.submit(operator("slip"), api_accrual("m1", "S-9", 90)).await.unwrap();
    let from_partner = ingest(&h, "casino", "slip-9", slip("m1", "S-9", 90)).await.unwrap();
    let Event::ExternalProcessed(p) = &from_partner.records[1].event else {
        panic!("processed: {:?}", from_partner.records[1].event)
    };
    assert!(p.already_applied);
    assert_eq!(p.ledger_first_seq, api.records[0].seq);
    assert_eq!(posted(&h, "m1").await, Some(points_of(&slip("m1", "S-9", 90))));
    // And the other way round.
    ingest(&h, "casino", "slip-10", slip("m1", "S-10", 90)).await.unwrap();
    let before = posted(&h, "m1").await;
    let replay = h
        .submit(operator("slip-10"), api_accrual("m1", "S-10", 90))
        .await
        .unwrap();
    assert!(replay.replayed);
    assert_eq!(posted(&h, "m1").await, before);
}

// ---------------------------------------------------------------------------------------
// The service

fn ingest_request(source: &str, id: &str, type_name: &str, payload: &str) -> proto::IngestRequest {
    proto::IngestRequest {
        source: source.into(),
        external_id: id.into(),
        r#type: type_name.into(),
        payload_json: payload.into(),
        correlation_id: String::new(),
        payload: None,
    }
}

#[tokio::test]
async fn the_ingest_service_end_to_end() {
    use tonic_types::StatusExt;
    let mut server = TestServer::start().await;
    let mut client = IngestClient::new(server.channel().await);
    fn call<T>(message: T) -> tonic::Request<T> {
        request(message, TENANT, "svc-partner")
    }
    let accrual = r#"{"member_id":"m1","slip_id":"S1","game":"bj","average_bet_cents":2500,"decisions_per_hour":70,"minutes_played":120,"house_edge_bps":200}"#;
    let first = client
        .ingest(call(ingest_request("casino", "s1", "rating_slip.completed", accrual)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome, IngestOutcome::RetryScheduled as i32);
    assert!(first.cause.contains("not found"), "{}", first.cause);
    assert_eq!(first.events.len(), 2);
    assert_eq!(first.events[0].kind, "external.received");
    // A retry is the same answer, marked as a duplicate.
    let again = client
        .ingest(call(ingest_request("casino", "s1", "rating_slip.completed", accrual)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.duplicate, Duplicate::ExternalId as i32);
    assert_eq!(again.receipt_sequence, first.receipt_sequence);
    // Bad input: INVALID_ARGUMENT naming the field, in the details too.
    let status = client
        .ingest(call(ingest_request(
            "casino",
            "s2",
            "points.award",
            r#"{"member_id":"m1","points":"ten","promotion_id":"p"}"#,
        )))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let info = status.get_details_error_info().expect("error info");
    assert_eq!(info.metadata.get("field").map(String::as_str), Some("payload.points"));
    // A key named twice is refused, naming it; nothing is received or credited.
    let twice = r#"{"member_id":"m1","points":1,"promotion_id":"dk","points":999999}"#;
    for _ in 0..2 {
        let status = client
            .ingest(call(ingest_request("promo", "dk-1", "points.award", twice)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().contains("the key \"points\" twice"),
            "{}",
            status.message()
        );
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(info.metadata.get("field").map(String::as_str), Some("payload"));
    }
    let batch = proto::IngestBatchRequest {
        events: vec![ingest_request("promo", "dk-2", "points.award", twice)],
    };
    let results = client.ingest_batch(call(batch)).await.unwrap().into_inner().results;
    assert!(
        matches!(&results[0].result, Some(proto::ingest_result::Result::Error(e)) if e.code == "INVALID_ARGUMENT" && e.message.contains("\"points\" twice")),
        "{results:?}"
    );
    // A batch: each event its own result, a bad one in place.
    let batch = proto::IngestBatchRequest {
        events: vec![
            ingest_request("crm", "e1", "member.enrolled", r#"{"member_id":"m1"}"#),
            ingest_request("crm", "e2", "member.enrolled", r#"{"member":"m2"}"#),
            ingest_request(
                "promo",
                "p1",
                "points.award",
                r#"{"member_id":"m1","points":25,"promotion_id":"spring"}"#,
            ),
        ],
    };
    let results = client.ingest_batch(call(batch)).await.unwrap().into_inner().results;
    use proto::ingest_result::Result as R;
    assert!(matches!(&results[0].result, Some(R::Accepted(a)) if a.outcome == IngestOutcome::Processed as i32));
    assert!(
        matches!(&results[1].result, Some(R::Error(e)) if e.reason == "INVALID_ARGUMENT" && e.message.contains("unknown field \"member\""))
    );
    assert!(matches!(&results[2].result, Some(R::Accepted(a)) if a.points == 25));
    // The payload as a structured value, as grpcurl and generated clients send an object.
    let structured = |points: f64| {
        use prost_types::value::Kind;
        let field = |kind| prost_types::Value { kind: Some(kind) };
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("member_id".to_string(), field(Kind::StringValue("m1".into())));
        fields.insert("points".to_string(), field(Kind::NumberValue(points)));
        fields.insert("promotion_id".to_string(), field(Kind::StringValue("struct".into())));
        proto::IngestRequest {
            payload: Some(prost_types::Struct { fields }.into()),
            ..ingest_request("promo", &format!("st-{points}"), "points.award", "")
        }
    };
    let accepted = client.ingest(call(structured(75.0))).await.unwrap().into_inner();
    assert_eq!(
        (accepted.outcome, accepted.points),
        (IngestOutcome::Processed as i32, 75)
    );
    let status = client.ingest(call(structured(7.5))).await.unwrap_err();
    assert!(
        status.message().contains("payload.points") && status.message().contains("whole number"),
        "{status:?}"
    );
    // A Struct whose map names `points` twice on the wire: refused, not the last one taken.
    let mut twice = structured(1.0);
    let mut second = twice.payload.as_ref().unwrap().entries[1].clone();
    assert_eq!(second.key, "points");
    second.value = Some(prost_types::Value {
        kind: Some(prost_types::value::Kind::NumberValue(999_999.0)),
    });
    twice.payload.as_mut().unwrap().entries.push(second);
    let status = client.ingest(call(twice)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("the key \"points\" twice"), "{status:?}");
    let both = proto::IngestRequest {
        payload_json: r#"{"member_id":"m1"}"#.into(),
        ..structured(1.0)
    };
    let status = client.ingest(call(both)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The accrual is still waiting; list it, then let the retry run.
    let listed = client
        .list_dead_letters(call(proto::ListDeadLettersRequest {
            include_retrying: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.letters.len(), 1);
    assert_eq!(listed.letters[0].state, LetterState::Retrying as i32);
    assert_eq!(listed.depth, 0);
    server.engine.clock.advance(3600 * SECOND);
    assert_eq!(server.engine.handle().retry_due(8).await.unwrap(), 1);
    let status = client
        .get_external_event(call(proto::GetExternalEventRequest {
            receipt_sequence: first.receipt_sequence,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state, LetterState::Processed as i32);
    // A dead letter, re-driven through the service; the same request again replays.
    let dead = client
        .ingest(call(ingest_request(
            "promo",
            "p9",
            "points.reverse",
            r#"{"member_id":"m1","original_external_id":"p1","policy":"all_or_nothing","reason":"void"}"#,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dead.outcome, IngestOutcome::Processed as i32, "25 available: reversed");
    let stuck = client
        .ingest(call(ingest_request(
            "promo",
            "p10",
            "points.award",
            r#"{"member_id":"nobody","points":5,"promotion_id":"x"}"#,
        )))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stuck.outcome, IngestOutcome::RetryScheduled as i32);
    for _ in 0..8 {
        server.engine.clock.advance(3600 * SECOND);
        server.engine.handle().retry_due(8).await.unwrap();
    }
    let redrive = proto::RedriveRequest {
        idempotency_key: "redrive-1".into(),
        member_id: "nobody".into(),
        ..Default::default()
    };
    let results = client
        .redrive(call(redrive.clone()))
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].outcome, RedriveOutcome::FailedAgain as i32);
    let replayed = client.redrive(call(redrive)).await.unwrap().into_inner();
    assert!(replayed.replayed);
    assert!(replayed.results[0].replayed);
    let discard = proto::DiscardRequest {
        idempotency_key: "discard-1".into(),
        receipt_sequence: stuck.receipt_sequence,
        reason: "no such member at the partner".into(),
        ..Default::default()
    };
    let discarded = client.discard(call(discard)).await.unwrap().into_inner();
    assert!(discarded.sequence > stuck.receipt_sequence);
    let by_id = proto::RedriveRequest {
        idempotency_key: "redrive-2".into(),
        receipt_sequence: stuck.receipt_sequence,
        ..Default::default()
    };
    let results = client.redrive(call(by_id)).await.unwrap().into_inner().results;
    assert_eq!(results[0].outcome, RedriveOutcome::AlreadyResolved as i32);
    let stats = client
        .get_pipeline_stats(call(proto::GetPipelineStatsRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            stats.received,
            stats.processed,
            stats.discarded,
            stats.dead_letter_depth
        ),
        (6, 5, 1, 0)
    );
    // Another tenant's view is empty.
    let other = client
        .get_pipeline_stats(request(proto::GetPipelineStatsRequest {}, "t2", "svc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.received, 0);
    server.stop().await;
}

/// The review's findings, each pinned: a partner's scope cannot be taken by other commands;
/// award identities of different sources never collide; an older event is never parked
/// behind a younger dead letter.
#[tokio::test]
async fn identities_and_order_hold_at_the_edges() {
    let te = engine_with(IngestPolicy {
        max_attempts: 3,
        ..IngestPolicy::default()
    });
    let h = te.handle();
    // A ledger command may not use a partner's scope (it would block that event id).
    let mut taken = operator("x");
    taken.idempotency.as_mut().unwrap().scope = "ingest:casino".into();
    let refused = h
        .submit(taken, Command::OpenAccount { account: "m1".into() })
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("idempotency_scope"), "{refused}");
    // An ingest must be keyed by its own identity.
    let wrong = h
        .submit(
            operator("not-the-id"),
            Command::Ingest {
                source: "casino".into(),
                external_id: "e1".into(),
                body: enroll("m1"),
            },
        )
        .await
        .unwrap_err();
    assert!(wrong.to_string().contains("invalid idempotency_"), "{wrong}");

    // ("pos:1", "a") and ("pos", "1:a") are two awards, both credited.
    ingest(&h, "crm", "e1", enroll("m1")).await.unwrap();
    let first = ingest(&h, "pos:1", "a", award("m1", 10, "p")).await.unwrap();
    let second = ingest(&h, "pos", "1:a", award("m1", 10, "p")).await.unwrap();
    for receipt in [&first, &second] {
        assert!(
            matches!(&receipt.records[1].event, Event::ExternalProcessed(p) if !p.already_applied && p.points == 10)
        );
    }
    assert_eq!(posted(&h, "m1").await, Some(20));

    // A (older) waits for its original; R (younger) fails for good and heads the queue.
    // A's retries go on (a younger letter does not hold it back), and when they run out A
    // goes ahead of R, in order of receipt.
    let a = ingest(
        &h,
        "promo",
        "rev-a",
        reverse("m1", "missing", ReversePolicy::CapToAvailable),
    )
    .await
    .unwrap();
    assert_eq!(outcome(&a), "retrying");
    spend(&h, "m1", 15).await;
    let r = ingest(&h, "pos", "rev-r", reverse("m1", "1:a", ReversePolicy::AllOrNothing))
        .await
        .unwrap();
    assert_eq!(outcome(&r), "dead_lettered", "5 available, 10 to take back");
    for _ in 0..2 {
        te.clock.advance(3600 * SECOND);
        assert_eq!(h.retry_due(8).await.unwrap(), 1);
    }
    let page = h.dead_letters(TENANT, LetterFilter::default(), 10).await.unwrap();
    let order: Vec<_> = page
        .letters
        .iter()
        .map(|l| (l.receipt.external_id.as_str(), l.position))
        .collect();
    assert_eq!(order, [("rev-a", 0), ("rev-r", 1)], "letters in order of receipt");
    let ReceiptState::Open(view) = h.receipt(TENANT, a.records[0].seq).await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(view.receipt.attempts, 3, "A was attempted, not parked");
}

/// When the head of a member's sequence is done (discarded here), the letter behind it is
/// the head: no longer shown as parked, and re-drivable on its own.
#[tokio::test]
async fn the_letter_behind_a_discarded_head_heads_the_sequence() {
    let te = engine_with(IngestPolicy {
        max_attempts: 1,
        ..IngestPolicy::default()
    });
    let h = te.handle();
    let head = ingest(&h, "p", "a1", award("m1", 1, "x1")).await.unwrap().records[0].seq;
    let behind = ingest(&h, "p", "a2", award("m1", 2, "x2")).await.unwrap().records[0].seq;
    let discard = Command::Discard {
        receipt_seq: head,
        reason: "duplicate sent by the partner".into(),
    };
    h.submit(operator("d"), discard).await.unwrap();
    let ReceiptState::Open(view) = h.receipt(TENANT, behind).await.unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(view.position, 0);
    assert_eq!(
        view.receipt.status,
        tally::domain::state::ReceiptStatus::DeadLettered { parked_behind: 0 }
    );
    assert!(
        view.receipt.cause.contains("heads the sequence now"),
        "{}",
        view.receipt.cause
    );
    h.submit(operator("open"), Command::OpenAccount { account: "m1".into() })
        .await
        .unwrap();
    let redriven = h
        .submit(operator("r"), Command::Redrive { receipt_seq: behind })
        .await
        .unwrap();
    assert!(matches!(redriven.records[0].event, Event::ExternalProcessed(_)));
    assert_eq!(posted(&h, "m1").await, Some(2));
}

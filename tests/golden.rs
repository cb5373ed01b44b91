//! Protects old logs: `snapshots/v1/` holds a log written by format version 1 and the state
//! it must fold to (`expected.txt`); `snapshots/v2/` one written by version 2, with the
//! ingest pipeline's events (received, processed, retried, dead-lettered, parked, re-driven,
//! discarded, a reversal); `snapshots/v3/` one written by version 3, with account links
//! (created, a wrong token, verified, revoked, expired); `snapshots/v4/` one written by
//! version 4, with a refused comp recorded for review; `snapshots/v5/` one written by
//! version 5, with sessions (started, refreshed, ended) and API keys (created, revoked), and
//! a comp refused at the door for want of permission; `snapshots/v6/` one written by version
//! 6, with endpoints and deliveries (delivered, failed then retried by hand, acked,
//! dispatched at most once, failed for good). This test decodes, verifies and folds each on every run, forever
//! (also with each record's identity worked out ahead, as a start folds, to the same state);
//! a change that breaks one breaks every log already written. A new format version adds a
//! new directory and keeps these.
//!
//! `cargo test --test golden -- --ignored` writes a new golden directory for the current
//! version if it does not exist yet.

mod support;

use std::fmt::Write;
use std::path::{Path, PathBuf};
use support::{meta, meta_as, TestEngine, T0};
use tally::domain::{evolve, evolve_identified, record_identity, AwardRequest, Command, Record, State};
use tally::log::{FileLog, LogOptions, LogWriter};
use tally::projection::Projections;

fn golden_dir(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(format!("v{version}"))
}

/// The write-side state and the projections, as sorted text.
fn dump(
    state: &State,
    records: &[Record],
    projections: &Projections,
    reader: &dyn tally::log::ReadLog,
    head_hash: &[u8; 32],
) -> String {
    let mut out = String::new();
    let hash: String = head_hash.iter().map(|b| format!("{b:02x}")).collect();
    writeln!(out, "head {} {hash}", state.head_seq).unwrap();
    let indexed = tally::query::indexed::Indexed {
        indexes: projections,
        reader,
    };
    let mut accounts: Vec<_> = state.accounts.iter().collect();
    accounts.sort_by(|a, b| a.0.cmp(b.0));
    for (key, a) in accounts {
        writeln!(
            out,
            "account {}/{} posted={} held={} lifetime={} tier={} active_holds={} opened_seq={}",
            key.tenant(),
            key.account(),
            a.posted,
            a.held,
            a.lifetime,
            state.tier_name(a.tier),
            a.active_holds,
            a.opened_seq
        )
        .unwrap();
        // The account as its history, read through the index from the log, folds.
        let view = indexed
            .account_at(key.tenant(), key.account(), state.head_seq)
            .unwrap()
            .expect("projected")
            .account;
        writeln!(
            out,
            "  projected posted={} held={} lifetime={} tier={} active_holds={} last_seq={}",
            view.posted, view.held, view.lifetime, view.tier, view.active_holds, view.last_seq
        )
        .unwrap();
        let history = indexed.history(key.tenant(), key.account(), 0, 1000);
        for entry in history.unwrap().expect("opened accounts have a history") {
            let kind = tally::domain::EventKind::from_code(entry.kind).unwrap().name();
            writeln!(
                out,
                "  history {} {kind} points={} posted {}->{} held {}->{} tier {}->{} actor={} reason={:?}",
                entry.seq,
                entry.points,
                entry.effect.posted_before,
                entry.effect.posted_after,
                entry.effect.held_before,
                entry.effect.held_after,
                entry.effect.tier_before,
                entry.effect.tier_after,
                entry.actor,
                entry.reason
            )
            .unwrap();
        }
    }
    let mut holds: Vec<_> = state.holds.iter().collect();
    holds.sort_by_key(|h| *h.0);
    for (id, h) in holds {
        writeln!(
            out,
            "hold {id} {}/{} amount={} status={} committed={} released={} expires_at={} resolved_seq={}",
            h.tenant, h.account, h.amount, h.status, h.committed, h.released, h.expires_at_us, h.resolved_seq
        )
        .unwrap();
    }
    let pipeline = &state.ingest;
    let mut open: Vec<_> = pipeline.open.iter().collect();
    open.sort_by_key(|(seq, _)| **seq);
    for (seq, r) in open {
        writeln!(
            out,
            "receipt {seq} {}/{} {} from {}/{} status={:?} attempts={} cause={:?}",
            r.tenant,
            r.body.member_id(),
            r.body.kind().name(),
            r.source,
            r.external_id,
            r.status,
            r.attempts,
            r.cause
        )
        .unwrap();
    }
    let mut resolved: Vec<_> = pipeline.resolved.iter().collect();
    resolved.sort_by_key(|(seq, _)| **seq);
    for (seq, r) in resolved {
        writeln!(out, "resolved {seq} {}: {:?}", r.tenant, r.how).unwrap();
    }
    let mut sequences: Vec<_> = pipeline.sequences.iter().collect();
    sequences.sort();
    for (member, letters) in sequences {
        writeln!(out, "sequence {}/{}: {letters:?}", member.tenant(), member.account()).unwrap();
    }
    let mut counters: Vec<_> = pipeline.counters.iter().collect();
    counters.sort_by(|a, b| a.0.cmp(b.0));
    for (tenant, c) in counters {
        // Spelled out, not Debug: a field added to the counters must not change old dumps.
        writeln!(
            out,
            "pipeline {tenant}: IngestCounters {{ received: {}, processed: {}, retried: {}, dead_lettered: {}, redriven: {}, discarded: {} }}",
            c.received, c.processed, c.retried, c.dead_lettered, c.redriven, c.discarded
        )
        .unwrap();
        assert_eq!(
            c.depth,
            pipeline
                .sequences
                .iter()
                .filter(|(m, _)| m.tenant() == tenant.as_str())
                .map(|(_, l)| l.len() as u64)
                .sum::<u64>(),
            "a tenant's depth is its letters"
        );
    }
    let mut links: Vec<_> = state.links.links.iter().collect();
    links.sort_by_key(|(id, _)| **id);
    for (id, l) in links {
        writeln!(
            out,
            "link {id} {}/{} -> {}/{} status={:?} failures={} expires_at={} resolved_at={}",
            l.tenant,
            l.account,
            l.external_system,
            l.external_account_id,
            l.status,
            l.failures,
            l.expires_at_us,
            l.resolved_at_us
        )
        .unwrap();
    }
    let mut sessions: Vec<_> = state.credentials.sessions.iter().collect();
    sessions.sort_by(|a, b| a.0.cmp(b.0));
    for (id, s) in sessions {
        writeln!(
            out,
            "session {id} {}/{} role={} started={} expires={} ended={:?}",
            s.tenant, s.subject, s.role, s.started_at_us, s.expires_at_us, s.ended_at_us
        )
        .unwrap();
    }
    let mut keys: Vec<_> = state.credentials.api_keys.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    for (id, k) in keys {
        let fingerprint: String = k.fingerprint.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            out,
            "api_key {id} {} name={:?} role={} kid={} fingerprint={fingerprint} created={} by={} revoked={:?}",
            k.tenant, k.name, k.role, k.signing_kid, k.created_at_us, k.created_by, k.revoked_at_us
        )
        .unwrap();
    }
    for (id, e) in &state.deliveries.endpoints {
        let s = &e.stats;
        writeln!(
            out,
            "endpoint {id} {} {} status={} semantics={} delivered={} acked={} failed_attempts={} failed_permanent={} retried={}",
            e.tenant,
            e.config.url,
            e.status.name(),
            e.config.semantics.name(),
            s.delivered,
            s.acked,
            s.failed_attempts,
            s.failed_permanent,
            s.retried_by_hand
        )
        .unwrap();
    }
    for ((endpoint, seq), d) in &state.deliveries.deliveries {
        let attempts: Vec<String> = d
            .attempts
            .iter()
            .map(|a| format!("{}@{}:{}", a.attempt, a.at_us, a.status_code))
            .collect();
        writeln!(
            out,
            "delivery {endpoint}:{seq} {}/{} state={} next_at={} attempts={}",
            d.tenant,
            d.account,
            d.status.name(),
            d.next_at_us,
            attempts.join(",")
        )
        .unwrap();
    }
    // The index keeps fingerprints; the identities come from the records.
    let keys: std::collections::BTreeSet<_> = records
        .iter()
        .map(|r| &r.envelope)
        .filter(|e| !e.idempotency_key.is_empty())
        .map(|e| (&e.tenant, &e.idempotency_scope, &e.idempotency_key))
        .collect();
    assert_eq!(
        keys.len(),
        state.idempotency.by_key.len(),
        "one index entry per identity"
    );
    for (tenant, scope, key) in keys {
        let identity = tally::domain::IdempotencyKey {
            key: key.clone(),
            scope: scope.clone(),
        };
        let first = state
            .idempotency
            .first_seq_of_key(tenant, &identity)
            .expect("every identity of the log is indexed");
        writeln!(
            out,
            "key {tenant}/{scope}/{key} first={first} last={}",
            state.idempotency.applied(first).last_seq
        )
        .unwrap();
    }
    out
}

/// Opens a copy of a golden log, folds it, and dumps the result.
fn fold_golden(dir: &Path) -> String {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir.join("log")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    let verified = tally::log::verify(copy.path()).expect("the golden log verifies");
    assert!(verified.torn_tail.is_none());
    let (log, _) = FileLog::open(copy.path(), LogOptions::default()).unwrap();
    let reader = log.reader();
    let records: Vec<_> = reader
        .iter_from(1)
        .collect::<Result<_, _>>()
        .expect("every golden record decodes");
    let mut state = State::default();
    for record in &records {
        evolve(&mut state, record);
    }
    // A start folds with the identities worked out ahead, on its reading thread: the same
    // state, for every kind of record these logs hold.
    let mut identified = State::default();
    for record in &records {
        evolve_identified(&mut identified, record, record_identity(record).as_ref());
    }
    assert_eq!(identified, state, "a fold with record identities differs from evolve's");
    let store = tempfile::tempdir().unwrap();
    let projections = Projections::open(store.path()).unwrap();
    projections.apply(&records).unwrap();
    dump(&state, &records, &projections, &reader, &verified.head.hash)
}

#[test]
fn v1_golden_log_decodes_and_folds_to_its_expected_state() {
    let dir = golden_dir(1);
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("snapshots/v1/expected.txt");
    assert_eq!(fold_golden(&dir), expected);
}

#[test]
fn v6_golden_log_decodes_and_folds_to_its_expected_state() {
    let dir = golden_dir(6);
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("snapshots/v6/expected.txt");
    assert_eq!(fold_golden(&dir), expected);
}

#[test]
fn v5_golden_log_decodes_and_folds_to_its_expected_state() {
    let dir = golden_dir(5);
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("snapshots/v5/expected.txt");
    assert_eq!(fold_golden(&dir), expected);
}

#[test]
fn v4_golden_log_decodes_and_folds_to_its_expected_state() {
    let dir = golden_dir(4);
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("snapshots/v4/expected.txt");
    assert_eq!(fold_golden(&dir), expected);
}

#[test]
fn v3_golden_log_decodes_and_folds_to_its_expected_state() {
    let dir = golden_dir(3);
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("snapshots/v3/expected.txt");
    assert_eq!(fold_golden(&dir), expected);
}

#[test]
fn v2_golden_log_decodes_and_folds_to_its_expected_state() {
    let dir = golden_dir(2);
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("snapshots/v2/expected.txt");
    assert_eq!(fold_golden(&dir), expected);
}

/// Writes `snapshots/v{FORMAT_VERSION}/` from a fixed workload, unless it exists.
#[test]
#[ignore = "writes golden files; run by hand when the format version changes"]
fn write_golden_for_the_current_version() {
    let dir = golden_dir(tally::log::FORMAT_VERSION);
    if dir.exists() {
        eprintln!("{} exists; golden files are never rewritten", dir.display());
        return;
    }
    let engine = TestEngine::start_with(
        tempfile::tempdir().unwrap(),
        tally::engine::EngineConfig {
            durability: tally::log::Durability::Sync,
            segment_bytes: tally::log::MIN_SEGMENT_BYTES,
            ..tally::engine::EngineConfig::new(tempfile::tempdir().unwrap().keep())
        },
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let h = engine.handle();
        let run = |key: &str, command: Command| {
            let h = h.clone();
            let meta = meta(key);
            async move { h.submit(meta, command).await.unwrap() }
        };
        for account in ["p1", "p2", "p3"] {
            run(
                &format!("open-{account}"),
                Command::OpenAccount {
                    account: account.into(),
                },
            )
            .await;
        }
        let slip = AwardRequest::RatingSlip {
            slip_id: "S-100".into(),
            game: "blackjack".into(),
            average_bet_cents: 2500,
            decisions_per_hour: 70,
            minutes_played: 185,
            house_edge_bps: 200,
        };
        run(
            "slip-100",
            Command::Award {
                account: "p1".into(),
                source: slip.clone(),
            },
        )
        .await;
        run(
            "slip-100-retry",
            Command::Award {
                account: "p1".into(),
                source: slip,
            },
        )
        .await;
        let comp = AwardRequest::Manual {
            staff_id: "staff-1".into(),
            points: 250,
            reason: "birthday dinner comp".into(),
            external_reward_id: String::new(),
        };
        run(
            "comp-1",
            Command::Award {
                account: "p2".into(),
                source: comp,
            },
        )
        .await;
        let promo = AwardRequest::Promotion {
            points: 12_000,
            promotion_id: "double-points".into(),
            external_reward_id: "R-9".into(),
        };
        run(
            "promo-9",
            Command::Award {
                account: "p2".into(),
                source: promo,
            },
        )
        .await;
        let hold = run(
            "r1",
            Command::Reserve {
                account: "p2".into(),
                amount: 3000,
                ttl_seconds: 120,
            },
        )
        .await
        .records[0]
            .seq;
        run(
            "c1",
            Command::Commit {
                hold_id: hold,
                amount: Some(1200),
            },
        )
        .await;
        let hold = run(
            "r2",
            Command::Reserve {
                account: "p1".into(),
                amount: 10,
                ttl_seconds: 60,
            },
        )
        .await
        .records[0]
            .seq;
        run("l2", Command::Release { hold_id: hold }).await;
        run(
            "r3",
            Command::Reserve {
                account: "p2".into(),
                amount: 500,
                ttl_seconds: 30,
            },
        )
        .await;
        engine.clock.set(T0 + 31_000_000);
        assert_eq!(h.sweep().await.unwrap(), 1);
        let other = meta_as("t2", "svc", "open-p1", "");
        h.submit(other, Command::OpenAccount { account: "p1".into() })
            .await
            .unwrap();
        ingest_workload(&engine, &h).await;
        link_workload(&engine, &h).await;
        // A comp over the maximum: refused, and recorded for review without its key.
        let too_large = Command::Award {
            account: "p3".into(),
            source: AwardRequest::Manual {
                staff_id: "staff-1".into(),
                points: 50_000,
                reason: "high roller goodwill".into(),
                external_reward_id: String::new(),
            },
        };
        assert!(h.submit(meta("comp-big"), too_large).await.is_err());
        credential_workload(&engine, &h).await;
        delivery_workload(&engine, &h).await;
    });
    let data_dir = engine.config.data_dir.clone();
    drop(engine);
    std::fs::create_dir_all(dir.join("log")).unwrap();
    for entry in std::fs::read_dir(data_dir.join("log")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("log").join(path.file_name().unwrap())).unwrap();
    }
    let dump = fold_golden(&dir);
    std::fs::write(dir.join("expected.txt"), dump).unwrap();
}

/// The ingest pipeline's events, for the golden log of version 2: an award applied at once,
/// an accrual retried until its member enrolls, a dead letter with an event parked behind
/// it and both re-driven, a reversal, and a discard.
async fn ingest_workload(engine: &TestEngine, h: &tally::engine::EngineHandle) {
    use tally::domain::event::{ExternalBody, ReversePolicy};
    let ingest = |source: &str, id: &str, body: ExternalBody| {
        let h = h.clone();
        let meta = meta_as("t1", "svc-partner", id, &format!("ingest:{source}"));
        let command = Command::Ingest {
            source: source.into(),
            external_id: id.into(),
            body,
        };
        async move { h.submit(meta, command).await.unwrap() }
    };
    let award = |member: &str, points: u64, promotion: &str| ExternalBody::PointsAward {
        member_id: member.into(),
        points,
        promotion_id: promotion.into(),
    };
    ingest("promo", "x-1", award("p1", 700, "autumn")).await;
    let slip = ExternalBody::RatingSlipCompleted {
        member_id: "p4".into(),
        slip_id: "S-200".into(),
        game: "baccarat".into(),
        average_bet_cents: 10_000,
        decisions_per_hour: 80,
        minutes_played: 60,
        house_edge_bps: 120,
    };
    ingest("casino", "slip-200", slip).await;
    engine.clock.advance(5_000_000);
    ingest(
        "crm",
        "enroll-p4",
        ExternalBody::MemberEnrolled { member_id: "p4".into() },
    )
    .await;
    engine.clock.advance(5_000_000);
    assert_eq!(h.retry_due(4).await.unwrap(), 1);
    // p5 never enrolls in time: with the default policy it takes eight attempts.
    ingest("promo", "x-5", award("p5", 40, "autumn")).await;
    for _ in 0..8 {
        engine.clock.advance(400_000_000);
        h.retry_due(4).await.unwrap();
    }
    ingest("promo", "x-6", award("p5", 60, "winter")).await;
    ingest("promo", "x-7", award("p5", 80, "spring")).await;
    ingest(
        "crm",
        "enroll-p5",
        ExternalBody::MemberEnrolled { member_id: "p5".into() },
    )
    .await;
    let page = h
        .dead_letters("t1", tally::engine::LetterFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(page.letters.len(), 3, "one dead letter and two parked behind it");
    let ops = |key: &str| meta_as("t1", "ops-1", key, "");
    let first = page.letters[0].receipt_seq;
    let second = page.letters[1].receipt_seq;
    let third = page.letters[2].receipt_seq;
    let plan = tally::domain::event::RedriveRequested {
        through_receipt: second,
        kind: None,
        member_id: String::new(),
        received_from_us: 0,
        received_to_us: 0,
        max_letters: 100,
        receipts: vec![first, second],
    };
    h.submit(ops("redrive"), Command::RequestRedrive(plan)).await.unwrap();
    h.submit(ops("redrive-1"), Command::Redrive { receipt_seq: first })
        .await
        .unwrap();
    h.submit(ops("redrive-2"), Command::Redrive { receipt_seq: second })
        .await
        .unwrap();
    h.submit(
        ops("discard-1"),
        Command::Discard {
            receipt_seq: third,
            reason: "promotion cancelled by marketing".into(),
        },
    )
    .await
    .unwrap();
    let reversal = ExternalBody::PointsReverse {
        member_id: "p1".into(),
        original_external_id: "x-1".into(),
        policy: ReversePolicy::CapToAvailable,
        reason: "duplicate promotion".into(),
    };
    ingest("promo", "rev-1", reversal).await;
    // One left in the queue, for the dump.
    ingest("promo", "x-9", award("p9", 5, "autumn")).await;
}

/// Links, for the golden log of version 3: one verified after a wrong token, then revoked;
/// one left to expire.
async fn link_workload(engine: &TestEngine, h: &tally::engine::EngineHandle) {
    let ops = |key: &str| meta_as("t1", "svc-app", key, "");
    let token = |n: u8| *blake3::keyed_hash(&[7; 32], &[n; 32]).as_bytes();
    let create = |account: &str, external: &str, n: u8, ttl_seconds: u32| Command::CreateLink {
        account: account.into(),
        external_system: "casino-cms".into(),
        external_account_id: external.into(),
        token_hash: token(n),
        ttl_seconds,
    };
    let first = h
        .submit(ops("link-1"), create("p1", "card-1", 1, 0))
        .await
        .unwrap()
        .records[0]
        .seq;
    let wrong = Command::VerifyLink {
        link_id: first,
        token_hash: token(9),
    };
    h.submit(ops("verify-1-wrong"), wrong).await.unwrap();
    let right = Command::VerifyLink {
        link_id: first,
        token_hash: token(1),
    };
    h.submit(ops("verify-1"), right).await.unwrap();
    let revoke = Command::RevokeLink {
        link_id: first,
        reason: "card reissued".into(),
    };
    h.submit(ops("revoke-1"), revoke).await.unwrap();
    h.submit(ops("link-2"), create("p2", "card-2", 2, 60)).await.unwrap();
    engine.clock.advance(61_000_000);
    assert!(h.sweep().await.unwrap() >= 1, "the pending link expires");
}

/// Sessions and API keys, for the golden log of version 5: a session refreshed, one logged
/// out, one left to expire (and forgotten when a later one starts); a key made and revoked;
/// a comp refused at the door because the caller may not give comps.
async fn credential_workload(engine: &TestEngine, h: &tally::engine::EngineHandle) {
    let service = |key: &str| meta_as("t1", "sso-svc", key, "");
    let unkeyed = |actor: &str| tally::domain::CommandMeta {
        idempotency: None,
        ..meta_as("t1", actor, "-", "")
    };
    let start = |id: &str, subject: &str, role: &str, ttl_seconds: u32| Command::StartSession {
        session_id: id.into(),
        subject: subject.into(),
        role: role.into(),
        ttl_seconds,
    };
    h.submit(service("s-1"), start("s-1", "p1", "member", 0)).await.unwrap();
    let refresh = Command::RefreshSession {
        session_id: "s-1".into(),
        ttl_seconds: 7200,
    };
    h.submit(service("s-1-refresh"), refresh).await.unwrap();
    h.submit(service("s-2"), start("s-2", "staff-1", "staff", 60))
        .await
        .unwrap();
    let logout = Command::EndSession {
        session_id: "s-1".into(),
        reason: "logout".into(),
    };
    h.submit(unkeyed("p1"), logout).await.unwrap();
    engine.clock.advance(61_000_000);
    h.submit(service("s-3"), start("s-3", "audit-1", "auditor", 0))
        .await
        .unwrap();
    let admin = |key: &str| meta_as("t1", "admin-1", key, "");
    let create = Command::CreateApiKey {
        key_id: "key-1".into(),
        name: "promo engine".into(),
        role: "service".into(),
        signing_kid: "k1".into(),
        fingerprint: *blake3::hash(b"tk_secret").as_bytes(),
    };
    h.submit(admin("key-1"), create).await.unwrap();
    let revoke = Command::RevokeApiKey {
        key_id: "key-1".into(),
        reason: "rotated".into(),
    };
    h.submit(unkeyed("admin-1"), revoke).await.unwrap();
    let denied = Command::Award {
        account: "p1".into(),
        source: AwardRequest::Manual {
            staff_id: "p1".into(),
            points: 100,
            reason: "self-service comp".into(),
            external_reward_id: String::new(),
        },
    };
    let member = tally::domain::CommandMeta {
        grants: Some(tally::domain::access::Permissions::of_roles(&[
            tally::domain::access::Role::Member,
        ])),
        ..meta_as("t1", "p1", "comp-self", "")
    };
    assert!(h.submit(member, denied).await.is_err());
}

/// Endpoints and deliveries, for the golden log of version 6: an at-least-once endpoint with
/// explicit acks (one delivery acked after a failed attempt, one failed for good then
/// retried by hand), an at-most-once one (dispatched, then delivered), and one paused.
async fn delivery_workload(engine: &TestEngine, h: &tally::engine::EngineHandle) {
    use tally::domain::delivery::{AckMode, AttemptResult, EndpointConfig, EndpointStatus, RetrySelection, Semantics};
    let admin = |key: &str| meta_as("t1", "admin-1", key, "");
    let worker = || tally::domain::CommandMeta {
        idempotency: None,
        ..meta_as("t1", "system:deliveries", "-", "")
    };
    let config = |semantics, ack_mode, max_attempts| EndpointConfig {
        url: "http://hooks.example.com/tally".into(),
        kinds: vec!["account.opened".into()],
        semantics,
        max_attempts,
        backoff_initial_ms: 1000,
        backoff_max_ms: 30_000,
        ack_mode,
        ack_timeout_seconds: 60,
        ordered: true,
        request_timeout_ms: 10_000,
    };
    let register = |config, nonce: &str| Command::RegisterEndpoint {
        config,
        secret_kid: "k1".into(),
        secret_nonce: nonce.into(),
    };
    let acked = h
        .submit(
            admin("ep-1"),
            register(config(Semantics::AtLeastOnce, AckMode::Explicit, 2), "n1"),
        )
        .await
        .unwrap()
        .records[0]
        .seq;
    let once = h
        .submit(
            admin("ep-2"),
            register(config(Semantics::AtMostOnce, AckMode::Status2xx, 1), "n2"),
        )
        .await
        .unwrap()
        .records[0]
        .seq;
    let mut opened = Vec::new();
    for account in ["d1", "d2"] {
        let open = Command::OpenAccount {
            account: account.into(),
        };
        opened.push(h.submit(meta(&format!("open-{account}")), open).await.unwrap().records[0].seq);
    }
    let result = |status_code: u16| AttemptResult {
        status_code,
        latency_us: 1500,
        error: if status_code == 200 {
            String::new()
        } else {
            format!("answered HTTP {status_code}")
        },
    };
    let report = |endpoint_id, event_seq, attempt, status| Command::RecordDelivery {
        endpoint_id,
        event_seq,
        attempt,
        result: result(status),
    };
    h.submit(worker(), report(acked, opened[0], 1, 503)).await.unwrap();
    engine.clock.advance(2_000_000);
    h.submit(worker(), report(acked, opened[0], 2, 200)).await.unwrap();
    let ack = Command::AckDelivery {
        endpoint_id: acked,
        event_seq: opened[0],
        receipt: "crm-77".into(),
    };
    h.submit(worker(), ack).await.unwrap();
    h.submit(worker(), report(acked, opened[1], 1, 500)).await.unwrap();
    engine.clock.advance(2_000_000);
    h.submit(worker(), report(acked, opened[1], 2, 500)).await.unwrap();
    let retry = Command::RetryDeliveries {
        selection: RetrySelection::One {
            endpoint_id: acked,
            event_seq: opened[1],
        },
        reason: "receiver fixed".into(),
    };
    h.submit(worker(), retry).await.unwrap();
    for seq in &opened {
        let dispatch = Command::DispatchDelivery {
            endpoint_id: once,
            event_seq: *seq,
            attempt: 1,
        };
        h.submit(worker(), dispatch).await.unwrap();
    }
    h.submit(worker(), report(once, opened[0], 1, 200)).await.unwrap();
    h.submit(worker(), report(once, opened[1], 1, 404)).await.unwrap();
    let pause = Command::UpdateEndpoint {
        endpoint_id: once,
        config: None,
        status: Some(EndpointStatus::Paused),
    };
    h.submit(worker(), pause).await.unwrap();
}

//! Protects the auditor's questions over gRPC: an account's state as of a sequence number
//! or a time agrees with a reference fold of the log up to that point; everything with a
//! correlation id, everything an actor did in a time window, and what an idempotency key
//! produced equal a filtered scan of the log; digests name the chain hash at the head and at
//! any of the caller's tenant's records, and another tenant's record is not found; `tally verify
//! --expect` checks a saved digest offline (exit 3 on a mismatch, 64 on a malformed one).

mod support;

use std::collections::BTreeSet;
use support::{random_workload, request, Rng, TestServer, TENANTS};
use tally::api::proto::{audit_client::AuditClient, *};
use tally::domain::{evolve, Record, State};

type Client = AuditClient<tonic::transport::Channel>;

fn log(server: &TestServer) -> Vec<Record> {
    server
        .engine
        .handle()
        .reader()
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap()
}

fn fold(records: &[Record], up_to: u64) -> State {
    let mut state = State::default();
    for record in records.iter().take_while(|r| r.seq <= up_to) {
        evolve(&mut state, record);
    }
    state
}

async fn as_of(
    client: &mut Client,
    tenant: &str,
    account: &str,
    sequence: u64,
    time_us: u64,
) -> Result<AccountAsOf, tonic::Status> {
    let ask = GetAccountAsOfRequest {
        account_id: account.into(),
        sequence,
        time_us,
    };
    client
        .get_account_as_of(request(ask, tenant, "auditor"))
        .await
        .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_queries_agree_with_a_reference_fold() {
    let mut server = TestServer::start().await;
    let mut rng = Rng(71);
    random_workload(&server.engine, &mut rng, 400).await;
    let mut client = AuditClient::new(server.channel().await);
    let records = log(&server);
    let head = records.last().unwrap().seq;
    for _ in 0..40 {
        let seq = 1 + rng.below(head);
        let reference = fold(&records, seq);
        for tenant in TENANTS {
            for n in 0..6 {
                let account = format!("p{n}");
                let key = tally::domain::state::AccountKey::new(tenant, &account);
                let answer = as_of(&mut client, tenant, &account, seq, 0).await;
                let Some(expected) = reference.accounts.get(&key) else {
                    assert_eq!(
                        answer.unwrap_err().code(),
                        tonic::Code::NotFound,
                        "{tenant}/{account} was not open at {seq}"
                    );
                    continue;
                };
                let answer = answer.unwrap();
                let got = answer.account.unwrap();
                assert_eq!(
                    (got.posted, got.held, got.lifetime_earned, got.tier.as_str()),
                    (
                        expected.posted,
                        expected.held,
                        expected.lifetime,
                        reference.tier_name(expected.tier)
                    ),
                    "{tenant}/{account} at {seq}"
                );
                assert_eq!(got.active_holds, expected.active_holds);
                let expected_holds: BTreeSet<u64> = reference
                    .holds
                    .iter()
                    .filter(|(_, h)| {
                        h.tenant == tenant && h.account == account && h.status == tally::domain::HoldStatus::Active
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let got_holds: BTreeSet<u64> = answer.active_holds.iter().map(|h| h.hold_id).collect();
                assert_eq!(got_holds, expected_holds, "{tenant}/{account} at {seq}: active holds");
            }
        }
    }
    // As of a time: the state after the last record at or before it.
    let pick = &records[records.len() / 2];
    let last_at_time = records
        .iter()
        .filter(|r| r.ts_us <= pick.ts_us)
        .map(|r| r.seq)
        .max()
        .unwrap();
    let by_time = as_of(&mut client, &pick.envelope.tenant, &pick.envelope.stream, 0, pick.ts_us)
        .await
        .unwrap();
    assert_eq!(by_time.sequence, last_at_time);
    assert_eq!(
        as_of(&mut client, "t1", "p0", 0, 0).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        as_of(&mut client, "t1", "p0", head + 1, 0).await.unwrap_err().code(),
        tonic::Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_queries_equal_a_filtered_scan() {
    let mut server = TestServer::start().await;
    random_workload(&server.engine, &mut Rng(72), 400).await;
    let mut client = AuditClient::new(server.channel().await);
    let records = log(&server);
    // By correlation id, paged.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let ask = ListByCorrelationRequest {
            correlation_id: "order-7".into(),
            page_size: 7,
            page_token: token.clone(),
        };
        let page = client
            .list_by_correlation(request(ask, "t2", "auditor"))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.entries.iter().map(|e| (e.sequence, e.account_id.clone())));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<(u64, String)> = records
        .iter()
        .filter(|r| r.envelope.tenant == "t2" && r.envelope.correlation_id == "order-7")
        .map(|r| (r.seq, r.envelope.stream.clone()))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(seen, expected);
    // By actor in a time window.
    let (from, to) = (records[records.len() / 6].ts_us, records[records.len() * 3 / 4].ts_us);
    let ask = ListByActorRequest {
        actor: "pos-2".into(),
        from_time_us: from,
        to_time_us: to,
        page_size: 1000,
        ..Default::default()
    };
    let got: Vec<u64> = client
        .list_by_actor(request(ask, "t1", "auditor"))
        .await
        .unwrap()
        .into_inner()
        .entries
        .iter()
        .map(|e| e.sequence)
        .collect();
    let mut expected: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r.envelope.tenant == "t1" && r.envelope.actor == "pos-2" && r.ts_us >= from && r.ts_us < to)
        .map(|r| (r.ts_us, r.seq))
        .collect();
    expected.sort();
    assert_eq!(got, expected.iter().map(|e| e.1).collect::<Vec<_>>());
    // By idempotency key: an award that changed the tier produced two events.
    let keyed = records
        .iter()
        .find(|r| matches!(r.event, tally::domain::Event::TierChanged(_)))
        .expect("some award crossed a tier");
    let ask = GetByIdempotencyKeyRequest {
        idempotency_key: keyed.envelope.idempotency_key.clone(),
        idempotency_scope: String::new(),
    };
    let got = client
        .get_by_idempotency_key(request(ask, &keyed.envelope.tenant, "auditor"))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = got.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["points.awarded", "tier.changed"]);
    let missing = GetByIdempotencyKeyRequest {
        idempotency_key: "no-such-key".into(),
        idempotency_scope: String::new(),
    };
    assert_eq!(
        client
            .get_by_idempotency_key(request(missing, "t1", "a"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digests_name_the_chain_hash_at_the_head_and_any_sequence() {
    let mut server = TestServer::start().await;
    random_workload(&server.engine, &mut Rng(73), 100).await;
    let mut client = AuditClient::new(server.channel().await);
    let records = log(&server);
    let head = client
        .get_digest(request(GetDigestRequest::default(), "t1", "auditor"))
        .await
        .unwrap()
        .into_inner();
    let last = records.last().unwrap();
    assert_eq!(
        (head.sequence, head.head_sequence, head.hash.clone()),
        (last.seq, last.seq, tally::hex::hex(&last.hash))
    );
    assert_eq!(
        head.timestamp_us, 0,
        "the head's record may be another tenant's: no time"
    );
    // At one of the caller's records: its time and hash.
    let own = records
        .iter()
        .find(|r| r.seq > 10 && r.envelope.tenant == "t1")
        .unwrap();
    let at = client
        .get_digest(request(GetDigestRequest { sequence: own.seq }, "t1", "auditor"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (at.sequence, at.timestamp_us, at.hash),
        (own.seq, own.ts_us, tally::hex::hex(&own.hash))
    );
    // Another tenant's record is answered exactly as one that does not exist.
    let theirs = records.iter().find(|r| r.envelope.tenant == "t2").unwrap();
    for sequence in [theirs.seq, last.seq + 1] {
        let refused = client
            .get_digest(request(GetDigestRequest { sequence }, "t1", "auditor"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert_eq!(
            refused.message(),
            format!("SEQUENCE_NOT_FOUND: no record {sequence} in tenant \"t1\"")
        );
    }
    // The saved digest checks out offline against the log, and a wrong one does not.
    server.stop().await;
    let data = server.engine.dir.path().to_str().unwrap().to_string();
    let verify = |expect: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["verify", &data, "--expect", &expect])
            .output()
            .unwrap()
    };
    assert!(verify(format!("{}:{}", head.sequence, head.hash)).status.success());
    assert_eq!(verify(format!("42:{}", "0".repeat(64))).status.code(), Some(3));
    assert_eq!(verify(format!("{}:{}", last.seq + 5, head.hash)).status.code(), Some(3));
    // A placeholder taken literally, or a hash cut short, is a usage error, not a mismatch.
    for wrong in ["4:<hash>".to_string(), format!("4:{}", &head.hash[..63]), "4:".into()] {
        let out = verify(wrong.clone());
        assert_eq!(out.status.code(), Some(64), "{wrong}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("64 hexadecimal digits"),
            "{wrong}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

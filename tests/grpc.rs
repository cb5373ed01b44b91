//! Protects the gRPC API on 127.0.0.1:0: every RPC, every error code the API can produce
//! with its machine-readable reason, replays and conflicts over the wire, tenant
//! isolation, batches with per-command results, read-after-write queries, paging, health
//! and reflection (v1 and v1alpha); errors quote at most a short prefix of any input; a
//! request that does not decode is INVALID_ARGUMENT and one too large RESOURCE_EXHAUSTED,
//! each with its reason, never INTERNAL.

mod support;

use support::{request, TestServer};
use tally::api::proto::*;
use tonic::Code;
use tonic_types::StatusExt;

type Client = ledger_client::LedgerClient<tonic::transport::Channel>;

fn open(account: &str, key: &str) -> OpenAccountRequest {
    OpenAccountRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn promotion(account: &str, key: &str, points: u64, reward: &str) -> AwardRequest {
    AwardRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        correlation_id: "order-17".into(),
        source: Some(award_request::Source::Promotion(Promotion {
            points,
            promotion_id: "spring".into(),
            external_reward_id: reward.into(),
        })),
        ..Default::default()
    }
}

fn reserve(account: &str, key: &str, amount: u64, ttl_seconds: u32) -> ReserveRequest {
    ReserveRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        amount,
        ttl_seconds,
        ..Default::default()
    }
}

/// The status's code, reason and metadata field (if any).
fn error(status: tonic::Status) -> (Code, String, Option<String>) {
    let info = status
        .get_details_error_info()
        .expect("every error carries an ErrorInfo");
    assert_eq!(info.domain, "tally.v1");
    assert!(
        status.message().starts_with(&info.reason),
        "the message starts with the reason: {}",
        status.message()
    );
    (status.code(), info.reason, info.metadata.get("field").cloned())
}

async fn funded(client: &mut Client, account: &str, points: u64) {
    client
        .open_account(request(open(account, &format!("open-{account}")), "t1", "svc"))
        .await
        .unwrap();
    client
        .award(request(
            promotion(account, &format!("fund-{account}"), points, &format!("fund-{account}")),
            "t1",
            "svc",
        ))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn award_reserve_commit_and_read_back() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    let opened = client
        .open_account(request(open("p1", "o1"), "t1", "svc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.balance.unwrap().tier, "Member");
    let award = client
        .award(request(promotion("p1", "a1", 500, "R-1"), "t1", "svc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (award.points_awarded, award.balance.as_ref().unwrap().posted),
        (500, 500)
    );
    let reserved = client
        .reserve(request(reserve("p1", "r1", 200, 0), "t1", "svc"))
        .await
        .unwrap()
        .into_inner();
    let hold = reserved.hold.unwrap();
    assert_eq!((hold.state(), hold.amount), (HoldState::Active, 200));
    assert_eq!(
        hold.expires_at_us - hold.created_at_us,
        300_000_000,
        "TTL 0 means the default 300 s"
    );
    assert_eq!(reserved.balance.unwrap().available, 300);
    let committed = client
        .commit(request(
            CommitRequest {
                hold_id: hold.hold_id,
                idempotency_key: "c1".into(),
                amount: Some(150),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap()
        .into_inner();
    let resolved = committed.hold.unwrap();
    assert_eq!(
        (resolved.state(), resolved.committed_amount, resolved.released_amount),
        (HoldState::Committed, 150, 50)
    );
    assert_eq!(committed.balance.unwrap().posted, 350);
    // Queries see everything acknowledged before them.
    let account = client
        .get_account(request(
            GetAccountRequest {
                account_id: "p1".into(),
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(
        (
            account.posted,
            account.held,
            account.available,
            account.lifetime_earned,
            account.active_holds
        ),
        (350, 0, 350, 500, 0)
    );
    let fetched = client
        .get_hold(request(GetHoldRequest { hold_id: hold.hold_id }, "t1", "svc"))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    assert_eq!(fetched, resolved);
    let history = client
        .list_history(request(
            ListHistoryRequest {
                account_id: "p1".into(),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = history.entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["account.opened", "points.awarded", "hold.reserved", "hold.committed"]
    );
    let award_entry = &history.entries[1];
    assert_eq!(
        (
            award_entry.posted_before,
            award_entry.posted_after,
            award_entry.correlation_id.as_str(),
            award_entry.actor.as_str()
        ),
        (0, 500, "order-17", "svc")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_replay_and_conflicts_name_the_field() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    funded(&mut client, "p1", 100).await;
    let first = client
        .reserve(request(reserve("p1", "r1", 10, 60), "t1", "svc"))
        .await
        .unwrap()
        .into_inner();
    let again = client
        .reserve(request(reserve("p1", "r1", 10, 60), "t1", "svc"))
        .await
        .unwrap()
        .into_inner();
    assert!(again.outcome.as_ref().unwrap().replayed && !first.outcome.as_ref().unwrap().replayed);
    assert_eq!(
        (again.hold, again.balance),
        (first.hold, first.balance),
        "a replay answers exactly the original"
    );
    let conflict = client
        .reserve(request(reserve("p1", "r1", 11, 60), "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(
        error(conflict),
        (
            Code::AlreadyExists,
            "IDEMPOTENCY_CONFLICT".into(),
            Some("amount".into())
        )
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_has_its_code_and_reason() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    funded(&mut client, "p1", 100).await;
    let missing_key = client
        .open_account(request(open("p2", ""), "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(
        error(missing_key),
        (
            Code::InvalidArgument,
            "INVALID_ARGUMENT".into(),
            Some("idempotency_key".into())
        )
    );
    let no_source = client
        .award(request(
            AwardRequest {
                account_id: "p1".into(),
                idempotency_key: "x".into(),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(
        error(no_source),
        (Code::InvalidArgument, "INVALID_ARGUMENT".into(), Some("source".into()))
    );
    let unknown = client
        .award(request(promotion("nobody", "a2", 5, "R-2"), "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(error(unknown).1, "ACCOUNT_NOT_FOUND");
    let short = client
        .reserve(request(reserve("p1", "r1", 101, 60), "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(
        error(short),
        (Code::FailedPrecondition, "INSUFFICIENT_POINTS".into(), None)
    );
    let hold = client
        .reserve(request(reserve("p1", "r2", 10, 5), "t1", "svc"))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    let too_much = client
        .commit(request(
            CommitRequest {
                hold_id: hold.hold_id,
                idempotency_key: "c0".into(),
                amount: Some(11),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(error(too_much).1, "COMMIT_EXCEEDS_HOLD");
    server.engine.clock.advance(5_000_000);
    let late = client
        .commit(request(
            CommitRequest {
                hold_id: hold.hold_id,
                idempotency_key: "c1".into(),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(error(late), (Code::FailedPrecondition, "HOLD_EXPIRED".into(), None));
    assert_eq!(server.engine.handle().sweep().await.unwrap(), 1);
    let resolved = client
        .release(request(
            ReleaseRequest {
                hold_id: hold.hold_id,
                idempotency_key: "l1".into(),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(error(resolved).1, "HOLD_ALREADY_EXPIRED");
    let nothing = client
        .get_hold(request(GetHoldRequest { hold_id: 424242 }, "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(error(nothing), (Code::NotFound, "HOLD_NOT_FOUND".into(), None));
    let manual = |key: &str, points: u64| AwardRequest {
        account_id: "p1".into(),
        idempotency_key: key.into(),
        source: Some(award_request::Source::Manual(ManualReward {
            points,
            reason: "service recovery comp".into(),
            external_reward_id: String::new(),
            staff_id: String::new(),
        })),
        ..Default::default()
    };
    let anonymous = client.award(tonic::Request::new(manual("m0", 5))).await.unwrap_err();
    assert_eq!(error(anonymous).0, Code::Unauthenticated);
    let large = client
        .award(request(manual("m1", 10_001), "t1", "staff-9"))
        .await
        .unwrap_err();
    assert_eq!(
        error(large),
        (
            Code::InvalidArgument,
            "MANUAL_REWARD_TOO_LARGE".into(),
            Some("manual.points".into())
        )
    );
    for n in 0..10 {
        client
            .award(request(manual(&format!("m{}", n + 2), n + 1), "t1", "staff-9"))
            .await
            .unwrap();
    }
    let limited = client
        .award(request(manual("m99", 77), "t1", "staff-9"))
        .await
        .unwrap_err();
    assert_eq!(
        error(limited),
        (Code::ResourceExhausted, "MANUAL_REWARD_RATE_LIMITED".into(), None)
    );
    let bad_tenant = client
        .get_account(request(
            GetAccountRequest {
                account_id: "p1".into(),
            },
            "no spaces",
            "svc",
        ))
        .await;
    assert_eq!(bad_tenant.unwrap_err().code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_accounts_and_holds() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    funded(&mut client, "p1", 100).await;
    let hold = client
        .reserve(request(reserve("p1", "r1", 10, 60), "t1", "svc"))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap();
    let account = client
        .get_account(request(
            GetAccountRequest {
                account_id: "p1".into(),
            },
            "t2",
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(error(account).1, "ACCOUNT_NOT_FOUND");
    let get = client
        .get_hold(request(GetHoldRequest { hold_id: hold.hold_id }, "t2", "svc"))
        .await
        .unwrap_err();
    assert_eq!(error(get).1, "HOLD_NOT_FOUND");
    let commit = client
        .commit(request(
            CommitRequest {
                hold_id: hold.hold_id,
                idempotency_key: "c".into(),
                ..Default::default()
            },
            "t2",
            "svc",
        ))
        .await
        .unwrap_err();
    assert_eq!(error(commit).1, "HOLD_NOT_FOUND");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_in_order_with_one_result_per_command() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    use batch_command::Command as C;
    let commands = vec![
        C::OpenAccount(open("p1", "b-open")),
        C::Award(promotion("p1", "b-award", 50, "RB-1")),
        C::Reserve(reserve("p1", "b-r1", 40, 60)),
        C::Reserve(reserve("p1", "b-r2", 40, 60)), // only 10 left after the one before
        C::Award(AwardRequest {
            account_id: "p1".into(),
            idempotency_key: "b-x".into(),
            ..Default::default()
        }),
        C::Award(promotion("p1", "b-award", 50, "RB-1")), // a retry inside the batch
    ];
    let batch = SubmitBatchRequest {
        commands: commands
            .into_iter()
            .map(|c| BatchCommand { command: Some(c) })
            .collect(),
    };
    let results = client
        .submit_batch(request(batch, "t1", "svc"))
        .await
        .unwrap()
        .into_inner()
        .results;
    use batch_result::Result as R;
    let shapes: Vec<String> = results
        .iter()
        .map(|r| match r.result.as_ref().unwrap() {
            R::OpenAccount(_) => "open".into(),
            R::Award(a) => format!("award replayed={}", a.outcome.as_ref().unwrap().replayed),
            R::Reserve(_) => "reserve".into(),
            R::Error(e) => format!("{} {}", e.code, e.reason),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        shapes,
        [
            "open",
            "award replayed=false",
            "reserve",
            "FAILED_PRECONDITION INSUFFICIENT_POINTS",
            "INVALID_ARGUMENT INVALID_ARGUMENT",
            "award replayed=true"
        ]
    );
    let empty = client
        .submit_batch(request(SubmitBatchRequest::default(), "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(
        error(empty),
        (
            Code::InvalidArgument,
            "INVALID_ARGUMENT".into(),
            Some("commands".into())
        )
    );
    let too_many = SubmitBatchRequest {
        commands: vec![
            BatchCommand {
                command: Some(C::OpenAccount(open("p9", "k")))
            };
            4097
        ],
    };
    assert_eq!(
        client
            .submit_batch(request(too_many, "t1", "svc"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_through_every_entry() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    funded(&mut client, "p1", 1).await;
    for n in 0..23 {
        client
            .award(request(
                promotion("p1", &format!("h{n}"), 1, &format!("RH-{n}")),
                "t1",
                "svc",
            ))
            .await
            .unwrap();
    }
    let mut token = String::new();
    let mut seen = Vec::new();
    loop {
        let page = client
            .list_history(request(
                ListHistoryRequest {
                    account_id: "p1".into(),
                    page_size: 10,
                    page_token: token.clone(),
                },
                "t1",
                "svc",
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 10);
        seen.extend(page.entries.iter().map(|e| e.sequence));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        (1..=25).collect::<Vec<_>>(),
        "open, fund and 23 awards, in order, once each"
    );
    let bad = client
        .list_history(request(
            ListHistoryRequest {
                account_id: "p1".into(),
                page_token: "zz".into(),
                ..Default::default()
            },
            "t1",
            "svc",
        ))
        .await;
    assert_eq!(error(bad.unwrap_err()).2.as_deref(), Some("page_token"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_serve_standard_clients() {
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "tally.v1.Ledger"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            status.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
    use tonic_reflection::pb::{v1, v1alpha};
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let ask = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = v1_client
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = answer.message_response
    else {
        panic!("{answer:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"tally.v1.Ledger".to_string()) && names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol("tally.v1.Ledger".into()),
        ),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream::iter(vec![ask]))
        .await
        .unwrap()
        .into_inner();
    let answer = stream.message().await.unwrap().unwrap();
    assert!(
        matches!(
            answer.message_response,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_ledger_answers_unavailable_and_not_serving() {
    let mut server = TestServer::start().await;
    let mut client = server.client().await;
    funded(&mut client, "p1", 10).await;
    let engine = server.engine.engine.take().unwrap();
    let handle = engine.handle();
    tokio::task::spawn_blocking(move || engine.shutdown()).await.unwrap();
    let refused = client
        .award(request(promotion("p1", "late", 1, "R-late"), "t1", "svc"))
        .await
        .unwrap_err();
    assert_eq!(error(refused), (Code::Unavailable, "LEDGER_UNAVAILABLE".into(), None));
    // The health reporter follows the engine's status in a task of its own: ask until it
    // has caught up, a bounded number of times.
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing;
    let mut seen = Vec::new();
    for _ in 0..1000 {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        seen.push(status.status());
        if status.status() == not_serving {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(
        seen.last(),
        Some(&not_serving),
        "health never reported NOT_SERVING: {seen:?}"
    );
    drop(handle);
    server.stop().await;
}

/// A 1 MiB value, and what an error may show of it: its first 64 characters, then `…`.
fn huge() -> (String, String) {
    ("x".repeat(1 << 20), format!("\"{}\"…", "x".repeat(64)))
}

/// The status quotes at most a short prefix of the input: a short message, short metadata.
fn quotes_briefly(case: &str, status: &tonic::Status, prefix: &str) {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{case}: no ErrorInfo in {status:?}"));
    assert!(
        status.message().len() <= 1024 && status.message().contains(prefix),
        "{case}: {} bytes: {:.300}",
        status.message().len(),
        status.message()
    );
    assert!(
        !status.message().contains(&"x".repeat(65)),
        "{case}: more than the prefix"
    );
    for (key, value) in &info.metadata {
        assert!(
            value.chars().count() <= 128,
            "{case}: metadata {key} has {} bytes",
            value.len()
        );
    }
    assert!(
        status.details().len() <= 4096,
        "{case}: details of {} bytes",
        status.details().len()
    );
    if status.code() == Code::InvalidArgument {
        let field = info.metadata.get("field").expect("a field");
        let violations = status.get_details_bad_request().expect("a BadRequest").field_violations;
        assert_eq!(violations[0].field, *field, "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_at_most_a_short_prefix_of_any_input() {
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let (big, prefix) = huge();
    fn call<T>(message: T) -> tonic::Request<T> {
        request(message, "t1", "staff-1")
    }
    let mut ledger = server.client().await;
    let mut ingest = ingest_client::IngestClient::new(channel.clone());
    let mut operations = operations_client::OperationsClient::new(channel.clone());
    let mut identity = identity_client::IdentityClient::new(channel.clone());
    let mut deliveries = deliveries_client::DeliveriesClient::new(channel.clone());
    let mut audit = audit_client::AuditClient::new(channel.clone());
    let event = |r#type: &str, payload_json: String| IngestRequest {
        source: "promo".into(),
        external_id: "e1".into(),
        r#type: r#type.into(),
        payload_json,
        ..Default::default()
    };
    let unknown_field = format!(r#"{{"member_id":"m1","{}":1}}"#, "x".repeat(15_000));
    let replay = ReplayRequest {
        filter: Some(EventFilter {
            kinds: vec![big.clone()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let endpoint = RegisterEndpointRequest {
        settings: Some(EndpointSettings {
            url: "http://93.184.216.34/hooks".into(),
            event_kinds: vec![big.clone()],
            ..Default::default()
        }),
        idempotency_key: "ep-1".into(),
    };
    let comp = AwardRequest {
        account_id: "p1".into(),
        idempotency_key: "comp-1".into(),
        source: Some(award_request::Source::Manual(ManualReward {
            points: 5,
            reason: "birthday dinner".into(),
            staff_id: big.clone(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let cases: Vec<(&str, tonic::Status, &str)> = vec![
        (
            "Ingest.type",
            ingest.ingest(call(event(&big, "{}".into()))).await.unwrap_err(),
            &prefix,
        ),
        (
            "Ingest.payload_json unknown field",
            ingest
                .ingest(call(event("member.enrolled", unknown_field)))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "StartRebuild.projection",
            operations
                .start_rebuild(call(StartRebuildRequest {
                    projection: big.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "StartReplayToFile.file_name",
            operations
                .start_replay_to_file(call(StartReplayToFileRequest {
                    replay: None,
                    file_name: big.clone(),
                }))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "GetOperation.id",
            operations
                .get_operation(call(GetOperationRequest { id: big.clone() }))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "StartSession.role",
            identity
                .start_session(call(StartSessionRequest {
                    subject: "p1".into(),
                    role: big.clone(),
                    idempotency_key: "s-1".into(),
                    ..Default::default()
                }))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "EndSession.session_id",
            identity
                .end_session(call(EndSessionRequest {
                    session_id: big.clone(),
                    ..Default::default()
                }))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "RegisterEndpoint.event_kinds",
            deliveries.register_endpoint(call(endpoint)).await.unwrap_err(),
            &prefix,
        ),
        (
            "GetAccount.account_id",
            ledger
                .get_account(call(GetAccountRequest {
                    account_id: big.clone(),
                }))
                .await
                .unwrap_err(),
            &prefix,
        ),
        (
            "Replay.filter.kinds",
            match audit.replay(call(replay)).await {
                Err(status) => status,
                Ok(_) => panic!("an unknown kind is refused"),
            },
            &prefix,
        ),
        (
            "Award.manual.staff_id",
            ledger.award(call(comp.clone())).await.unwrap_err(),
            &prefix,
        ),
    ];
    for (case, status, prefix) in &cases {
        quotes_briefly(case, status, prefix);
    }
    // In a batch, each command's error is bounded the same way.
    let batch = SubmitBatchRequest {
        commands: vec![BatchCommand {
            command: Some(batch_command::Command::Award(AwardRequest {
                idempotency_key: "comp-2".into(),
                ..comp.clone()
            })),
        }],
    };
    let results = ledger.submit_batch(call(batch)).await.unwrap().into_inner().results;
    let Some(batch_result::Result::Error(error)) = &results[0].result else {
        panic!("{results:?}")
    };
    assert!(
        error.message.len() <= 1024 && error.message.contains(&prefix),
        "{:.300}",
        error.message
    );
    assert!(
        error.metadata.values().all(|v| v.chars().count() <= 128),
        "{:?}",
        error.metadata.keys()
    );
    // A comp refused for a megabyte staff id is answered, not recorded: the log holds ids.
    assert_eq!(server.engine.handle().status(), tally::engine::Status::Serving);
    server.stop().await;
}

/// An ingest payload whose one field nests `depth` objects.
fn nested_payload(depth: usize) -> tally::api::payload::PayloadStruct {
    use prost_types::value::Kind;
    let mut value = prost_types::Value {
        kind: Some(Kind::StringValue("deep".into())),
    };
    for _ in 0..depth {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert("x".to_string(), value);
        value = prost_types::Value {
            kind: Some(Kind::StructValue(prost_types::Struct { fields })),
        };
    }
    tally::api::payload::PayloadStruct {
        entries: vec![tally::api::payload::PayloadEntry {
            key: "member_id".into(),
            value: Some(value),
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_the_callers_errors_with_a_reason() {
    use prost::Message;
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let token = support::token("t1", "svc", &support::ALL_ROLES);
    let headers = vec![("authorization", format!("Bearer {token}"))];
    let deep = IngestRequest {
        source: "promo".into(),
        external_id: "deep-1".into(),
        r#type: "member.enrolled".into(),
        payload: Some(nested_payload(60)),
        ..Default::default()
    };
    let get_account = "/tally.v1.Ledger/GetAccount";
    let cases: Vec<(&str, &str, Vec<u8>, Code, &str)> = vec![
        // account_id (1, a string) holding bytes that are not UTF-8
        (
            "invalid UTF-8",
            get_account,
            vec![0x0a, 0x02, 0xff, 0xfe],
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
        ),
        // account_id sent as a varint
        (
            "wrong wire type",
            get_account,
            vec![0x08, 0x01],
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
        ),
        // a string of 5 bytes cut after one
        (
            "truncated",
            get_account,
            vec![0x0a, 0x05, b'p'],
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
        ),
        (
            "nested 60 deep",
            "/tally.v1.Ingest/Ingest",
            deep.encode_to_vec(),
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
        ),
        (
            "over 4 MiB",
            get_account,
            GetAccountRequest {
                account_id: "p".repeat(5 << 20),
            }
            .encode_to_vec(),
            Code::ResourceExhausted,
            "MESSAGE_TOO_LARGE",
        ),
    ];
    for (case, path, body, code, reason) in cases {
        let status = support::raw_call(&channel, path, false, body, &headers)
            .await
            .unwrap_err();
        let info = status
            .get_details_error_info()
            .unwrap_or_else(|| panic!("{case}: no ErrorInfo in {status:?}"));
        assert_eq!(
            (status.code(), info.reason.as_str()),
            (code, reason),
            "{case}: {status:?}"
        );
        assert!(status.message().starts_with(reason), "{case}: {}", status.message());
    }
    // The door still comes first: an undecodable call without a credential is refused as such.
    let status = support::raw_call(&channel, get_account, false, vec![0x08, 0x01], &[])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // A well-formed request right after is served as ever.
    let fine = GetAccountRequest {
        account_id: "p1".into(),
    }
    .encode_to_vec();
    let status = support::raw_call(&channel, get_account, false, fine, &headers)
        .await
        .unwrap_err();
    assert_eq!(error(status).1, "ACCOUNT_NOT_FOUND");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_the_server_does_not_know_is_refused_not_ignored() {
    use prost::Message;
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let token = support::token("t1", "svc", &support::ALL_ROLES);
    let headers = vec![("authorization", format!("Bearer {token}"))];
    let open = OpenAccountRequest {
        account_id: "p1".into(),
        idempotency_key: "open-p1".into(),
        ..Default::default()
    }
    .encode_to_vec();
    // Field 99 (varint 7) appended to a valid request: a newer client's field.
    let mut with_unknown = open.clone();
    with_unknown.extend_from_slice(&[0x98, 0x06, 0x07]);
    let status = support::raw_call(&channel, "/tally.v1.Ledger/OpenAccount", false, with_unknown, &headers)
        .await
        .unwrap_err();
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(
        (status.code(), info.reason.as_str()),
        (Code::InvalidArgument, "UNKNOWN_FIELD")
    );
    assert_eq!(info.metadata["message"], "tally.v1.OpenAccountRequest");
    assert_eq!(info.metadata["field_number"], "99");
    // Nothing was done: the account does not exist yet, and the same request without the
    // field opens it.
    let mut ledger = tally::api::proto::ledger_client::LedgerClient::new(channel.clone());
    let missing = ledger
        .get_account(support::with_token(
            GetAccountRequest {
                account_id: "p1".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    support::raw_call(&channel, "/tally.v1.Ledger/OpenAccount", false, open, &headers)
        .await
        .expect("the request without the unknown field is served");

    // Inside a nested message too: a rating slip with a field 9 of its own.
    let award = AwardRequest {
        account_id: "p1".into(),
        idempotency_key: "slip-1".into(),
        source: Some(award_request::Source::RatingSlip(RatingSlipAccrual {
            slip_id: "s-1".into(),
            average_bet_cents: 2500,
            decisions_per_hour: 70,
            minutes_played: 60,
            house_edge_bps: 200,
            game: "blackjack".into(),
        })),
        ..Default::default()
    };
    let mut slip = match award.source.clone() {
        Some(award_request::Source::RatingSlip(slip)) => slip.encode_to_vec(),
        _ => unreachable!(),
    };
    slip.extend_from_slice(&[0x48, 0x01]); // field 9, varint 1
    let mut body = AwardRequest {
        source: None,
        ..award.clone()
    }
    .encode_to_vec();
    body.push(0x52); // field 10 (rating_slip), length-delimited
    body.push(slip.len() as u8);
    body.extend_from_slice(&slip);
    let status = support::raw_call(&channel, "/tally.v1.Ledger/Award", false, body, &headers)
        .await
        .unwrap_err();
    let info = status.get_details_error_info().expect("an ErrorInfo");
    assert_eq!(info.reason, "UNKNOWN_FIELD", "{status:?}");
    assert_eq!(info.metadata["message"], "tally.v1.RatingSlipAccrual");
    assert_eq!(info.metadata["field_number"], "9");
    // Answers are read leniently by clients, and the known request is served.
    ledger
        .award(support::with_token(award, &token))
        .await
        .expect("the award without the unknown field is served");
    server.stop().await;
}

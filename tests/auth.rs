//! Protects who may call what. The authorization matrix runs every RPC of every `tally.v1`
//! service, found in the server's own descriptors, against nine credentials — none,
//! malformed, a bad signature, expired, logged out, another tenant's request, a role
//! without the permission, a member of the tenant on objects that are not its own, and the
//! right one — and only the last may succeed (a member may ask who it is, and is let into a
//! batch whose commands are each refused), each refusal with its code. An RPC added to the protos without a row here fails the test; the door's
//! permission table must cover exactly the RPCs the server has.
//!
//! Also: SSO sessions (refresh, logout, expiry by log time), signed service calls (skew,
//! replay, wrong key, revoked key), manual rewards bound to the caller (spoofed staff id,
//! missing permission, the 11th comp in a minute, 10,001 points, a short reason, the same
//! comp twice in a day and again the next day), a member confined to its own account, and
//! bearer tokens the door remembers as verified (still expiring, never mistaken for another).
//!
//! Memory: what unauthenticated signed calls (a real key id, a garbage signature) make the
//! server hold before their signatures are checked stays under a fixed bound.
//! Overload: with every slot of `limits.max_calls_in_flight` held, a call is refused at once
//! (RESOURCE_EXHAUSTED / SERVER_OVERLOADED), health still answers, and slots come back.
//!
//! Tenants: one tenant's operations are invisible to another (listed, fetched, cancelled:
//! NOT_FOUND as if they did not exist), exports go to a directory per tenant and report no
//! server path, and rebuilds and snapshots need the server's role, which no tenant's admin has.

mod support;

use std::collections::BTreeSet;
use support::{raw_call as call, request, token, with_token, TestServer};
use tally::api::proto::operations_client::OperationsClient;
use tally::api::proto::{self, award_request, identity_client::IdentityClient, ledger_client::LedgerClient};
use tally::api::proto::{audit_client::AuditClient, ingest_client::IngestClient, links_client::LinksClient};
use tally::engine::Clock;
use tonic::{Code, Status};

const SECOND: u64 = 1_000_000;

/// Request metadata: name and value.
type Headers = Vec<(&'static str, String)>;

fn bearer(token: &str) -> Headers {
    vec![("authorization", format!("Bearer {token}"))]
}

/// Every method of the `tally.v1` services: (path, server-streaming).
/// What a member gets calling `path` on the matrix's objects, none of which are its own:
/// refused, but for the calls about the caller itself.
fn member_on_others(path: &str) -> Option<Code> {
    match path {
        "/tally.v1.Identity/WhoAmI" => None,
        // The door admits a member to a batch; each command in it is refused on its own
        // (`a_member_acts_on_its_own_account_only` checks the batch's results).
        "/tally.v1.Ledger/SubmitBatch" => None,
        _ => Some(Code::PermissionDenied),
    }
}

fn methods() -> Vec<(String, bool)> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for file in set.file.iter().filter(|f| f.package() == "tally.v1") {
        for service in &file.service {
            for method in &service.method {
                out.push((
                    format!("/tally.v1.{}/{}", service.name(), method.name()),
                    method.server_streaming(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// What the matrix needs to exist before it runs.
struct Fixtures {
    commit_hold: u64,
    release_hold: u64,
    verify_link: (u64, String),
    revoke_link: u64,
    redrive_letter: u64,
    discard_letter: u64,
    operation_id: String,
    session_id: String,
    session_token: String,
    end_session_id: String,
    logged_out_token: String,
    api_key_id: String,
    endpoint_id: u64,
    doomed_endpoint_id: u64,
    ack_delivery: String,
    failed_delivery: String,
}

/// A request of the fixtures' setup, with every role.
fn setup<T>(message: T) -> tonic::Request<T> {
    request(message, "t1", "setup")
}

/// Endpoint settings the matrix uses: a public address (nothing is sent: no worker runs).
fn endpoint_settings() -> proto::EndpointSettings {
    proto::EndpointSettings {
        url: "http://93.184.216.34/hooks".into(),
        max_attempts: 1,
        ack_mode: proto::AckMode::Explicit as i32,
        ..Default::default()
    }
}

async fn fixtures(server: &TestServer) -> Fixtures {
    let channel = server.channel().await;
    let mut deliveries = tally::api::proto::deliveries_client::DeliveriesClient::new(channel.clone());
    let endpoint = |key: &'static str| {
        let mut deliveries = deliveries.clone();
        async move {
            let register = proto::RegisterEndpointRequest {
                settings: Some(endpoint_settings()),
                idempotency_key: key.into(),
            };
            let answer = deliveries
                .register_endpoint(setup(register))
                .await
                .unwrap()
                .into_inner();
            answer.endpoint.unwrap().endpoint_id
        }
    };
    let endpoint_id = endpoint("ep-main").await;
    let doomed_endpoint_id = endpoint("ep-doomed").await;
    let _ = &mut deliveries;
    let mut ledger = LedgerClient::new(channel.clone());
    let mut links = LinksClient::new(channel.clone());
    let mut ingest = IngestClient::new(channel.clone());
    let mut identity = IdentityClient::new(channel.clone());
    let mut opened = Vec::new();
    for account in ["p1", "p2"] {
        let open = proto::OpenAccountRequest {
            account_id: account.into(),
            idempotency_key: format!("open-{account}"),
            correlation_id: "corr-setup".into(),
            ..Default::default()
        };
        opened.push(
            ledger
                .open_account(setup(open))
                .await
                .unwrap()
                .into_inner()
                .outcome
                .unwrap()
                .sequence,
        );
        ledger
            .award(setup(promotion(account, 1000, &format!("fund-{account}"))))
            .await
            .unwrap();
    }
    // The letters first: making them moves the clock by hours, past any hold's deadline.
    let mut letters = Vec::new();
    for member in ["nobody-1", "nobody-2"] {
        let event = proto::IngestRequest {
            source: "promo".into(),
            external_id: format!("for-{member}"),
            r#type: "points.award".into(),
            payload_json: format!(r#"{{"member_id":"{member}","points":5,"promotion_id":"x"}}"#),
            ..Default::default()
        };
        letters.push(ingest.ingest(setup(event)).await.unwrap().into_inner().receipt_sequence);
    }
    for _ in 0..8 {
        server.engine.clock.advance(3600 * SECOND);
        server.engine.handle().retry_due(8).await.unwrap();
    }
    let hold = |key: &'static str| {
        let mut ledger = ledger.clone();
        async move {
            let reserve = proto::ReserveRequest {
                account_id: "p1".into(),
                idempotency_key: key.into(),
                amount: 10,
                ttl_seconds: 600,
                ..Default::default()
            };
            ledger
                .reserve(setup(reserve))
                .await
                .unwrap()
                .into_inner()
                .hold
                .unwrap()
                .hold_id
        }
    };
    let commit_hold = hold("hold-commit").await;
    let release_hold = hold("hold-release").await;
    let link = |n: u32| {
        let mut links = links.clone();
        async move {
            let create = proto::CreateLinkRequest {
                account_id: "p1".into(),
                external_system: "cms".into(),
                external_account_id: format!("card-{n}"),
                idempotency_key: format!("link-{n}"),
                ..Default::default()
            };
            let created = links.create_link(setup(create)).await.unwrap().into_inner();
            (created.link.unwrap().link_id, created.token)
        }
    };
    let verify_link = link(1).await;
    let revoke_link = link(2).await.0;
    let _ = &mut links;
    let export = proto::StartReplayToFileRequest {
        replay: Some(proto::ReplayRequest::default()),
        file_name: "fixture.jsonl".into(),
    };
    let mut operations = OperationsClient::new(channel.clone());
    let operation_id = operations
        .start_replay_to_file(setup(export))
        .await
        .unwrap()
        .into_inner()
        .id;
    let start = |subject: &str, key: &str| proto::StartSessionRequest {
        subject: subject.into(),
        role: "member".into(),
        idempotency_key: key.into(),
        ..Default::default()
    };
    let service = token("t1", "sso", &["service"]);
    let session = identity
        .start_session(with_token(start("p1", "session-1"), &service))
        .await
        .unwrap()
        .into_inner();
    let gone = identity
        .start_session(with_token(start("p1", "session-2"), &service))
        .await
        .unwrap()
        .into_inner();
    let to_end = identity
        .start_session(with_token(start("p2", "session-3"), &service))
        .await
        .unwrap()
        .into_inner();
    let logout = proto::EndSessionRequest::default();
    let ended = identity
        .end_session(with_token(logout, &gone.token))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.ended);
    let key = proto::CreateApiKeyRequest {
        name: "fixture".into(),
        idempotency_key: "key-1".into(),
        ..Default::default()
    };
    let api_key_id = identity
        .create_api_key(with_token(key, &token("t1", "root", &["admin"])))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap()
        .key_id;
    // One delivery failed for good (its one attempt reported by hand), to retry.
    let failed = tally::domain::Command::RecordDelivery {
        endpoint_id,
        event_seq: opened[1],
        attempt: 1,
        result: tally::domain::delivery::AttemptResult {
            status_code: 500,
            latency_us: 10,
            error: "answered HTTP 500".into(),
        },
    };
    let worker = tally::domain::CommandMeta {
        tenant: "t1".into(),
        actor: tally::deliverer::DELIVERY_ACTOR.into(),
        ..Default::default()
    };
    server.engine.handle().submit(worker, failed).await.unwrap();
    Fixtures {
        endpoint_id,
        doomed_endpoint_id,
        ack_delivery: format!("{endpoint_id}:{}", opened[0]),
        failed_delivery: format!("{endpoint_id}:{}", opened[1]),
        commit_hold,
        release_hold,
        verify_link,
        revoke_link,
        redrive_letter: letters[0],
        discard_letter: letters[1],
        operation_id,
        session_id: session.session.unwrap().session_id,
        session_token: session.token,
        end_session_id: to_end.session.unwrap().session_id,
        logged_out_token: gone.token,
        api_key_id,
    }
}

fn promotion(account: &str, points: u64, key: &str) -> proto::AwardRequest {
    proto::AwardRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        source: Some(award_request::Source::Promotion(proto::Promotion {
            points,
            promotion_id: "spring".into(),
            external_reward_id: key.into(),
        })),
        ..Default::default()
    }
}

/// One row of the matrix: a request that succeeds for `allowed`, and a role it must be
/// refused to.
struct Row {
    allowed: &'static str,
    denied: &'static str,
    body: Vec<u8>,
}

fn row(path: &str, f: &Fixtures) -> Row {
    use prost::Message;
    let method = path.rsplit('/').next().unwrap();
    let service = path.split('/').nth(1).unwrap();
    let r = |allowed, denied, body: Vec<u8>| Row { allowed, denied, body };
    match (service, method) {
        ("tally.v1.Ledger", "OpenAccount") => r(
            "service",
            "staff",
            proto::OpenAccountRequest {
                account_id: "p9".into(),
                idempotency_key: "open-p9".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ledger", "Award") => r("service", "auditor", promotion("p1", 5, "matrix-award").encode_to_vec()),
        ("tally.v1.Ledger", "Reserve") => r(
            "service",
            "staff",
            proto::ReserveRequest {
                account_id: "p1".into(),
                idempotency_key: "matrix-reserve".into(),
                amount: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ledger", "Commit") => r(
            "service",
            "auditor",
            proto::CommitRequest {
                hold_id: f.commit_hold,
                idempotency_key: "matrix-commit".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ledger", "Release") => r(
            "service",
            "admin",
            proto::ReleaseRequest {
                hold_id: f.release_hold,
                idempotency_key: "matrix-release".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ledger", "SubmitBatch") => {
            let command = proto::BatchCommand {
                command: Some(proto::batch_command::Command::Award(promotion("p2", 3, "matrix-batch"))),
            };
            let batch = proto::SubmitBatchRequest {
                commands: vec![command],
            };
            r("service", "auditor", batch.encode_to_vec())
        }
        ("tally.v1.Ledger", "GetAccount") => r(
            "staff",
            "admin",
            proto::GetAccountRequest {
                account_id: "p1".into(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ledger", "GetHold") => r(
            "auditor",
            "admin",
            proto::GetHoldRequest { hold_id: f.commit_hold }.encode_to_vec(),
        ),
        ("tally.v1.Ledger", "ListHistory") => r(
            "service",
            "admin",
            proto::ListHistoryRequest {
                account_id: "p1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Audit", "Replay") => r("auditor", "service", proto::ReplayRequest::default().encode_to_vec()),
        ("tally.v1.Audit", "Subscribe") => r("auditor", "staff", proto::SubscribeRequest::default().encode_to_vec()),
        ("tally.v1.Audit", "GetDigest") => r("auditor", "admin", proto::GetDigestRequest::default().encode_to_vec()),
        ("tally.v1.Audit", "ListByCorrelation") => r(
            "auditor",
            "member",
            proto::ListByCorrelationRequest {
                correlation_id: "corr-setup".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Audit", "ListByActor") => r(
            "auditor",
            "service",
            proto::ListByActorRequest {
                actor: "setup".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Audit", "GetByIdempotencyKey") => r(
            "auditor",
            "staff",
            proto::GetByIdempotencyKeyRequest {
                idempotency_key: "open-p1".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Audit", "GetAccountAsOf") => r(
            "auditor",
            "service",
            proto::GetAccountAsOfRequest {
                account_id: "p1".into(),
                sequence: 5,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        // Server-wide: a tenant's admin may not.
        ("tally.v1.Operations", "StartRebuild") => r(
            "server-admin",
            "admin",
            proto::StartRebuildRequest {
                projection: "history".into(),
                verify_only: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Operations", "StartReplayToFile") => r(
            "admin",
            "auditor",
            proto::StartReplayToFileRequest {
                file_name: "matrix.jsonl".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Operations", "StartProjectionSnapshot") => r(
            "server-admin",
            "admin",
            proto::StartProjectionSnapshotRequest::default().encode_to_vec(),
        ),
        ("tally.v1.Operations", "GetOperation") => r(
            "auditor",
            "service",
            proto::GetOperationRequest {
                id: f.operation_id.clone(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Operations", "ListOperations") => r(
            "admin",
            "staff",
            proto::ListOperationsRequest::default().encode_to_vec(),
        ),
        ("tally.v1.Operations", "CancelOperation") => r(
            "admin",
            "auditor",
            proto::CancelOperationRequest {
                id: f.operation_id.clone(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ingest", "Ingest") => r(
            "service",
            "admin",
            proto::IngestRequest {
                source: "promo".into(),
                external_id: "matrix-1".into(),
                r#type: "points.award".into(),
                payload_json: r#"{"member_id":"p1","points":5,"promotion_id":"x"}"#.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ingest", "IngestBatch") => {
            let event = proto::IngestRequest {
                source: "promo".into(),
                external_id: "matrix-2".into(),
                r#type: "points.award".into(),
                payload_json: r#"{"member_id":"p1","points":5,"promotion_id":"x"}"#.into(),
                ..Default::default()
            };
            let batch = proto::IngestBatchRequest { events: vec![event] };
            r("service", "auditor", batch.encode_to_vec())
        }
        ("tally.v1.Ingest", "ListDeadLetters") => r(
            "admin",
            "staff",
            proto::ListDeadLettersRequest::default().encode_to_vec(),
        ),
        ("tally.v1.Ingest", "GetExternalEvent") => r(
            "auditor",
            "member",
            proto::GetExternalEventRequest {
                receipt_sequence: f.redrive_letter,
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ingest", "Redrive") => r(
            "admin",
            "service",
            proto::RedriveRequest {
                idempotency_key: "matrix-redrive".into(),
                receipt_sequence: f.redrive_letter,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ingest", "Discard") => r(
            "admin",
            "auditor",
            proto::DiscardRequest {
                idempotency_key: "matrix-discard".into(),
                receipt_sequence: f.discard_letter,
                reason: "member never enrolled".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Ingest", "GetPipelineStats") => r(
            "service",
            "member",
            proto::GetPipelineStatsRequest::default().encode_to_vec(),
        ),
        ("tally.v1.Links", "CreateLink") => r(
            "service",
            "staff",
            proto::CreateLinkRequest {
                account_id: "p1".into(),
                external_system: "cms".into(),
                external_account_id: "card-3".into(),
                idempotency_key: "matrix-link".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Links", "VerifyLink") => r(
            "service",
            "auditor",
            proto::VerifyLinkRequest {
                link_id: f.verify_link.0,
                token: f.verify_link.1.clone(),
                idempotency_key: "matrix-verify".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Links", "RevokeLink") => r(
            "service",
            "staff",
            proto::RevokeLinkRequest {
                link_id: f.revoke_link,
                reason: "matrix".into(),
                idempotency_key: "matrix-revoke".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Links", "ListLinks") => r(
            "staff",
            "admin",
            proto::ListLinksRequest {
                account_id: "p1".into(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Identity", "StartSession") => r(
            "service",
            "admin",
            proto::StartSessionRequest {
                subject: "staff-7".into(),
                role: "staff".into(),
                idempotency_key: "matrix-session".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Identity", "ValidateSession") => r(
            "service",
            "auditor",
            proto::ValidateSessionRequest {
                token: f.session_token.clone(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Identity", "RefreshSession") => r(
            "service",
            "member",
            proto::RefreshSessionRequest {
                session_id: f.session_id.clone(),
                idempotency_key: "matrix-refresh".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Identity", "EndSession") => r(
            "service",
            "staff",
            proto::EndSessionRequest {
                session_id: f.end_session_id.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        // Every role has sessions:self: only a caller with no role lacks it.
        ("tally.v1.Identity", "WhoAmI") => r("member", "", proto::WhoAmIRequest::default().encode_to_vec()),
        ("tally.v1.Identity", "CreateApiKey") => r(
            "admin",
            "service",
            proto::CreateApiKeyRequest {
                name: "matrix".into(),
                idempotency_key: "matrix-key".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Identity", "ListApiKeys") => {
            r("admin", "auditor", proto::ListApiKeysRequest::default().encode_to_vec())
        }
        ("tally.v1.Identity", "RevokeApiKey") => r(
            "admin",
            "service",
            proto::RevokeApiKeyRequest {
                key_id: f.api_key_id.clone(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "RegisterEndpoint") => r(
            "admin",
            "service",
            proto::RegisterEndpointRequest {
                settings: Some(endpoint_settings()),
                idempotency_key: "matrix-endpoint".into(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "UpdateEndpoint") => r(
            "admin",
            "staff",
            proto::UpdateEndpointRequest {
                endpoint_id: f.endpoint_id,
                settings: Some(proto::EndpointSettings {
                    max_attempts: 2,
                    ..endpoint_settings()
                }),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "PauseEndpoint") => r(
            "admin",
            "auditor",
            proto::EndpointRequest {
                endpoint_id: f.endpoint_id,
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "ResumeEndpoint") => r(
            "admin",
            "service",
            proto::EndpointRequest {
                endpoint_id: f.endpoint_id,
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "DeleteEndpoint") => r(
            "admin",
            "auditor",
            proto::EndpointRequest {
                endpoint_id: f.doomed_endpoint_id,
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "ListEndpoints") => r(
            "auditor",
            "service",
            proto::ListEndpointsRequest::default().encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "Ack") => r(
            "service",
            "auditor",
            proto::AckRequest {
                delivery_id: f.ack_delivery.clone(),
                receipt: "matrix".into(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "GetDelivery") => r(
            "auditor",
            "service",
            proto::GetDeliveryRequest {
                delivery_id: f.ack_delivery.clone(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "ListDeliveries") => r(
            "admin",
            "staff",
            proto::ListDeliveriesRequest {
                endpoint_id: f.endpoint_id,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "RetryDelivery") => r(
            "admin",
            "auditor",
            proto::RetryDeliveryRequest {
                delivery_id: f.failed_delivery.clone(),
                reason: "matrix".into(),
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "RedriveDeliveries") => r(
            "admin",
            "service",
            // A window with nothing in it: the failed fixture is RetryDelivery's.
            proto::RedriveDeliveriesRequest {
                endpoint_id: f.endpoint_id,
                from_us: u64::MAX / 2,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        ("tally.v1.Deliveries", "GetEndpointStats") => r(
            "auditor",
            "member",
            proto::EndpointRequest {
                endpoint_id: f.endpoint_id,
            }
            .encode_to_vec(),
        ),
        _ => panic!("{path} is not in the authorization matrix: add its row (who may call it, who may not)"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix_over_every_rpc() {
    let mut server = TestServer::start().await;
    let fixtures = fixtures(&server).await;
    let channel = server.channel().await;
    let methods = methods();
    let served: BTreeSet<_> = methods.iter().map(|(p, _)| p.as_str()).collect();
    let table: BTreeSet<_> = tally::api::auth::METHODS.iter().map(|(p, _, _)| *p).collect();
    assert_eq!(
        served, table,
        "the door's permission table must name exactly the RPCs served"
    );
    assert!(methods.len() >= 40, "found {} methods", methods.len());

    let now_s = server.engine.clock.now_us() / SECOND;
    let forged = {
        let mut other = support::test_auth();
        other.keys = tally::api::auth::KeyRing::parse(
            "test-k1:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100",
        )
        .unwrap();
        tally::api::auth::operator_token(
            &other,
            "t1",
            "mallory",
            &[tally::domain::access::Role::Admin],
            now_s,
            600,
        )
    };
    let expired = {
        let settings = support::test_auth();
        let roles = tally::domain::access::Role::ALL;
        tally::api::auth::operator_token(&settings, "t1", "old", &roles, now_s - 7200, 3600)
    };
    for (path, streaming) in &methods {
        let row = row(path, &fixtures);
        let right = token("t1", "caller-1", &[row.allowed]);
        let denied_roles: Vec<&str> = [row.denied].into_iter().filter(|r| !r.is_empty()).collect();
        let missing = token("t1", "caller-2", &denied_roles);
        let mut other_tenant = bearer(&right);
        other_tenant.push(("x-tally-tenant", "t2".to_string()));
        // A member of the same tenant, acting on objects that are not its own.
        let member = token("t1", "p-other", &["member"]);
        let cases: [(&str, Headers, Option<Code>); 9] = [
            ("no credential", vec![], Some(Code::Unauthenticated)),
            ("malformed", bearer("not.a-token"), Some(Code::Unauthenticated)),
            ("bad signature", bearer(&forged), Some(Code::Unauthenticated)),
            ("expired", bearer(&expired), Some(Code::Unauthenticated)),
            (
                "logged out",
                bearer(&fixtures.logged_out_token),
                Some(Code::Unauthenticated),
            ),
            ("other tenant", other_tenant, Some(Code::PermissionDenied)),
            ("missing permission", bearer(&missing), Some(Code::PermissionDenied)),
            (
                "member on another member's objects",
                bearer(&member),
                member_on_others(path),
            ),
            ("right permission", bearer(&right), None),
        ];
        for (case, headers, expected) in cases {
            let got = call(&channel, path, *streaming, row.body.clone(), &headers).await;
            match (expected, got) {
                (None, Ok(())) => {}
                (Some(code), Err(status)) if status.code() == code => {}
                (expected, got) => panic!("{path} with {case}: expected {expected:?}, got {got:?}"),
            }
        }
    }
    server.stop().await;
}

/// A session for `subject` with `role`, started by a service of t1.
async fn session(
    identity: &mut IdentityClient<tonic::transport::Channel>,
    subject: &str,
    role: &str,
    ttl_seconds: u32,
) -> proto::SessionResponse {
    let start = proto::StartSessionRequest {
        subject: subject.into(),
        role: role.into(),
        ttl_seconds,
        idempotency_key: format!("start-{subject}-{role}-{ttl_seconds}"),
        ..Default::default()
    };
    identity
        .start_session(with_token(start, &token("t1", "sso", &["service"])))
        .await
        .unwrap()
        .into_inner()
}

fn reason(status: &Status) -> String {
    status.message().split(':').next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_refresh_log_out_and_expire_by_log_time() {
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let mut identity = IdentityClient::new(channel.clone());
    let started = session(&mut identity, "p1", "member", 60).await;
    let who = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &started.token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (who.subject.as_str(), who.tenant.as_str(), who.credential.as_str()),
        ("p1", "t1", "session")
    );
    assert!(who.permissions.contains(&"accounts:read:own".to_string()));
    // A retry of the start answers the same session and the same token.
    let again = session(&mut identity, "p1", "member", 60).await;
    assert_eq!((again.token.as_str(), again.replayed), (started.token.as_str(), true));
    // Sessions are for people: a service cannot mint an admin.
    let admin = proto::StartSessionRequest {
        subject: "eve".into(),
        role: "admin".into(),
        idempotency_key: "start-eve".into(),
        ..Default::default()
    };
    let refused = identity
        .start_session(with_token(admin, &token("t1", "sso", &["service"])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Refresh extends from now; the old token keeps working until its own end.
    server.engine.clock.advance(50 * SECOND);
    let refresh = proto::RefreshSessionRequest {
        ttl_seconds: 60,
        idempotency_key: "refresh-1".into(),
        ..Default::default()
    };
    let refreshed = identity
        .refresh_session(with_token(refresh, &started.token))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(refreshed.token, started.token);
    let session_info = refreshed.session.unwrap();
    assert_eq!(session_info.expires_at_us, server.engine.clock.now_us() + 60 * SECOND);
    // Past the first expiry (within the token's clock skew), the session is what counts.
    server.engine.clock.advance(20 * SECOND);
    let who = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &started.token))
        .await;
    assert!(who.is_ok(), "the session lives on after a refresh: {who:?}");
    // Expiry by log time: 61 s after the refresh, within the 60 s skew of the JWT's exp,
    // the session is expired and its tokens are refused.
    server.engine.clock.advance(41 * SECOND);
    let expired = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &refreshed.token))
        .await
        .unwrap_err();
    assert_eq!(
        (expired.code(), reason(&expired)),
        (Code::Unauthenticated, "SESSION_EXPIRED".into())
    );

    // Logout: the token is refused though its signature is valid; a second logout of the
    // same session by a service changes nothing.
    let staff = session(&mut identity, "staff-1", "staff", 0).await;
    let ended = identity
        .end_session(with_token(proto::EndSessionRequest::default(), &staff.token))
        .await
        .unwrap()
        .into_inner();
    assert!(ended.ended);
    let refused = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &staff.token))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::Unauthenticated, "SESSION_ENDED".into())
    );
    let again = proto::EndSessionRequest {
        session_id: ended.session_id.clone(),
        ..Default::default()
    };
    let second = identity
        .end_session(with_token(again, &token("t1", "sso", &["service"])))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.ended);
    // A member may not end another's session.
    let other = session(&mut identity, "p2", "member", 0).await;
    let theirs = proto::EndSessionRequest {
        session_id: other.session.unwrap().session_id,
        ..Default::default()
    };
    let member = session(&mut identity, "p3", "member", 0).await;
    let denied = identity
        .end_session(with_token(theirs, &member.token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Validate: a service checks a token it was shown.
    let valid = identity
        .validate_session(with_token(
            proto::ValidateSessionRequest {
                token: member.token.clone(),
            },
            &token("t1", "sso", &["service"]),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.subject, "p3");
    // The log holds the sessions, never a token.
    let log = std::fs::read(server.engine.dir.path().join("log").join(format!("{:020}.seg", 1))).unwrap();
    for token in [&started.token, &refreshed.token, &staff.token, &member.token] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !log.windows(signature.len()).any(|w| w == signature.as_bytes()),
            "a token in the log"
        );
    }
    server.stop().await;
}

/// The headers of a call to `path` signed at `unix_seconds`.
fn signed(key_id: &str, secret: &str, path: &str, unix_seconds: u64, body: &[u8]) -> Vec<(&'static str, String)> {
    tally::api::auth::sign_call(key_id, secret, path, unix_seconds, body).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_calls_refuse_skew_replay_wrong_and_revoked_keys() {
    use prost::Message;
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let mut identity = IdentityClient::new(channel.clone());
    let admin = token("t1", "root", &["admin"]);
    let create = proto::CreateApiKeyRequest {
        name: "partner".into(),
        idempotency_key: "key-partner".into(),
        ..Default::default()
    };
    let created = identity
        .create_api_key(with_token(create.clone(), &admin))
        .await
        .unwrap()
        .into_inner();
    let key_id = created.key.as_ref().unwrap().key_id.clone();
    // A retry answers the same key and secret; the list shows no secret.
    let again = identity
        .create_api_key(with_token(create, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.secret.as_str(), again.replayed), (created.secret.as_str(), true));
    let listed = identity
        .list_api_keys(with_token(proto::ListApiKeysRequest {}, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1);
    assert!(!format!("{listed:?}").contains(&created.secret));

    let path = "/tally.v1.Identity/WhoAmI";
    let body = proto::WhoAmIRequest {}.encode_to_vec();
    let now = server.engine.clock.now_us() / SECOND;
    let ok = call(
        &channel,
        path,
        false,
        body.clone(),
        &signed(&key_id, &created.secret, path, now, &body),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    let cases = [
        (
            "replayed",
            signed(&key_id, &created.secret, path, now, &body),
            "SIGNATURE_REPLAYED",
        ),
        (
            "skewed",
            signed(&key_id, &created.secret, path, now - 301, &body),
            "TIMESTAMP_SKEW",
        ),
        (
            "from the future",
            signed(&key_id, &created.secret, path, now + 301, &body),
            "TIMESTAMP_SKEW",
        ),
        (
            "wrong secret",
            signed(&key_id, "tk_guess", path, now - 1, &body),
            "SIGNATURE_INVALID",
        ),
        (
            "unknown key",
            signed("key-none", &created.secret, path, now - 2, &body),
            "KEY_UNKNOWN",
        ),
        (
            "another method",
            signed(
                &key_id,
                &created.secret,
                "/tally.v1.Identity/ListApiKeys",
                now - 3,
                &body,
            ),
            "SIGNATURE_INVALID",
        ),
    ];
    for (case, headers, expected) in cases {
        let status = call(&channel, path, false, body.clone(), &headers).await.unwrap_err();
        assert_eq!(
            (status.code(), reason(&status)),
            (Code::Unauthenticated, expected.to_string()),
            "{case}"
        );
    }
    // Another body than the one signed.
    let other_body = proto::ListApiKeysRequest {}.encode_to_vec();
    let mut tampered = proto::GetPipelineStatsRequest::default().encode_to_vec();
    tampered.extend_from_slice(&[0x0a, 0x01, 0x41]);
    let status = call(
        &channel,
        path,
        false,
        tampered,
        &signed(&key_id, &created.secret, path, now - 4, &other_body),
    )
    .await
    .unwrap_err();
    assert_eq!(reason(&status), "SIGNATURE_INVALID");
    // A service key may ingest but not manage keys.
    let denied = call(
        &channel,
        "/tally.v1.Identity/ListApiKeys",
        false,
        other_body.clone(),
        &signed(
            &key_id,
            &created.secret,
            "/tally.v1.Identity/ListApiKeys",
            now - 5,
            &other_body,
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Revoked: refused from now on.
    let revoke = proto::RevokeApiKeyRequest {
        key_id: key_id.clone(),
        reason: "rotated".into(),
    };
    let revoked = identity
        .revoke_api_key(with_token(revoke, &admin))
        .await
        .unwrap()
        .into_inner();
    assert!(revoked.revoked);
    let status = call(
        &channel,
        path,
        false,
        body.clone(),
        &signed(&key_id, &created.secret, path, now - 6, &body),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::Unauthenticated, "KEY_REVOKED".into())
    );
    // The log holds the key's fingerprint, never its secret.
    let log = std::fs::read(server.engine.dir.path().join("log").join(format!("{:020}.seg", 1))).unwrap();
    assert!(!log
        .windows(created.secret.len())
        .any(|w| w == created.secret.as_bytes()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_role_this_build_does_not_know_is_refused_not_a_panic() {
    use prost::Message;
    use tally::domain::Event;
    use tally::log::{FileLog, LogOptions, LogWriter};
    // A key made with the auditor role, then the same log as a newer build would have
    // written it, with a role this build does not know.
    let mut server = TestServer::start().await;
    let mut identity = IdentityClient::new(server.channel().await);
    let create = proto::CreateApiKeyRequest {
        name: "partner".into(),
        role: "auditor".into(),
        idempotency_key: "key-partner".into(),
    };
    let created = identity
        .create_api_key(with_token(create, &token("t1", "root", &["admin"])))
        .await
        .unwrap()
        .into_inner();
    let key_id = created.key.as_ref().unwrap().key_id.clone();
    let now = server.engine.clock.now_us() / SECOND;
    let records: Vec<_> = server
        .engine
        .handle()
        .reader()
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap();
    server.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = FileLog::open(&dir.path().join("log"), LogOptions::default()).unwrap();
    for record in records {
        let mut event = record.event.clone();
        if let Event::ApiKeyCreated(created) = &mut event {
            created.role = "regional-auditor".into();
        }
        log.stage(record.seq, record.ts_us, &record.envelope, &event);
    }
    log.commit().unwrap();
    drop(log);

    let config = tally::engine::EngineConfig::new(dir.path());
    let mut newer = TestServer::start_in_front_of(support::TestEngine::start_with(dir, config), |_, _| {}).await;
    newer.engine.clock.set(now * SECOND);
    let channel = newer.channel().await;
    let path = "/tally.v1.Identity/WhoAmI";
    let body = proto::WhoAmIRequest {}.encode_to_vec();
    let status = call(
        &channel,
        path,
        false,
        body.clone(),
        &signed(&key_id, &created.secret, path, now, &body),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::PermissionDenied, "KEY_ROLE_UNKNOWN".into()),
        "{status:?}"
    );
    assert!(status.message().contains("regional-auditor"), "{}", status.message());
    // The server is still there for everyone else.
    let whoami = IdentityClient::new(channel)
        .who_am_i(with_token(proto::WhoAmIRequest {}, &token("t1", "root", &["admin"])))
        .await;
    assert!(whoami.is_ok(), "{whoami:?}");
    newer.stop().await;
}

fn comp(account: &str, points: u64, reason: &str, staff_id: &str, key: &str) -> proto::AwardRequest {
    proto::AwardRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        source: Some(award_request::Source::Manual(proto::ManualReward {
            points,
            reason: reason.into(),
            external_reward_id: String::new(),
            staff_id: staff_id.into(),
        })),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_rewards_are_bound_to_the_caller_and_refusals_recorded() {
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let mut ledger = LedgerClient::new(channel.clone());
    let mut audit = AuditClient::new(channel.clone());
    for account in ["p1", "p2"] {
        let open = proto::OpenAccountRequest {
            account_id: account.into(),
            idempotency_key: format!("open-{account}"),
            ..Default::default()
        };
        ledger.open_account(request(open, "t1", "svc")).await.unwrap();
    }
    let staff = token("t1", "staff-1", &["staff"]);
    let comp_for = |points, reason: &str, staff_id: &str, key: &str| comp("p1", points, reason, staff_id, key);
    // Spoofed staff id, missing permission, over the maximum: refused and recorded.
    let spoofed = ledger
        .award(with_token(
            comp_for(10, "birthday dinner", "staff-2", "c-spoof"),
            &staff,
        ))
        .await
        .unwrap_err();
    assert_eq!(spoofed.code(), Code::PermissionDenied);
    let service = token("t1", "svc-1", &["service"]);
    let unpermitted = ledger
        .award(with_token(comp_for(10, "birthday dinner", "", "c-perm"), &service))
        .await
        .unwrap_err();
    assert_eq!(unpermitted.code(), Code::PermissionDenied);
    let large = ledger
        .award(with_token(comp_for(10_001, "birthday dinner", "", "c-large"), &staff))
        .await
        .unwrap_err();
    assert_eq!(large.code(), Code::InvalidArgument);
    // A malformed request is refused without a record.
    let short = ledger
        .award(with_token(comp_for(10, "too short", "", "c-short"), &staff))
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument);
    // Ten comps in a minute pass; the eleventh is refused and recorded.
    for n in 0..10 {
        let reason = format!("service recovery {n}");
        ledger
            .award(with_token(comp_for(n + 1, &reason, "", &format!("c-{n}")), &staff))
            .await
            .unwrap();
    }
    let eleventh = ledger
        .award(with_token(comp_for(5, "service recovery 11", "", "c-11"), &staff))
        .await
        .unwrap_err();
    assert_eq!(eleventh.code(), Code::ResourceExhausted);
    let refusals = |actor: &'static str| {
        let mut audit = audit.clone();
        async move {
            let listed = audit
                .list_by_actor(request(
                    proto::ListByActorRequest {
                        actor: actor.into(),
                        ..Default::default()
                    },
                    "t1",
                    "auditor-1",
                ))
                .await
                .unwrap()
                .into_inner();
            listed
                .entries
                .iter()
                .filter(|e| e.kind == "comp.refused")
                .map(|e| e.reason.clone())
                .collect::<Vec<_>>()
        }
    };
    let staff_refusals = refusals("staff-1").await;
    assert_eq!(
        staff_refusals.len(),
        3,
        "spoofed, too large, eleventh: {staff_refusals:?}"
    );
    assert_eq!(refusals("svc-1").await.len(), 1, "missing permission");
    let _ = &mut audit;
    // The same comp twice in a day is one comp; the next day it is another.
    server.engine.clock.advance(120 * SECOND);
    let day_comp = |key: &str| comp("p2", 50, "anniversary dinner", "", key);
    let first = ledger
        .award(with_token(day_comp("day-1"), &staff))
        .await
        .unwrap()
        .into_inner();
    let second = ledger
        .award(with_token(day_comp("day-1-again"), &staff))
        .await
        .unwrap()
        .into_inner();
    assert!(second.outcome.unwrap().replayed, "the same comp on the same day");
    server.engine.clock.advance(24 * 3600 * SECOND);
    let next_day = ledger
        .award(with_token(day_comp("day-2"), &staff))
        .await
        .unwrap()
        .into_inner();
    assert!(!next_day.outcome.unwrap().replayed);
    assert_eq!(next_day.balance.unwrap().posted, first.balance.unwrap().posted + 50);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_acts_on_its_own_account_only() {
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let mut ledger = LedgerClient::new(channel.clone());
    for account in ["p1", "p2"] {
        let open = proto::OpenAccountRequest {
            account_id: account.into(),
            idempotency_key: format!("open-{account}"),
            ..Default::default()
        };
        ledger.open_account(request(open, "t1", "svc")).await.unwrap();
        ledger
            .award(request(
                promotion(account, 100, &format!("fund-{account}")),
                "t1",
                "svc",
            ))
            .await
            .unwrap();
    }
    let member = token("t1", "p1", &["member"]);
    let get = |account: &str| proto::GetAccountRequest {
        account_id: account.into(),
    };
    assert!(ledger.get_account(with_token(get("p1"), &member)).await.is_ok());
    let other = ledger.get_account(with_token(get("p2"), &member)).await.unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied);
    let reserve = |account: &str, key: &str| proto::ReserveRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        amount: 10,
        ..Default::default()
    };
    let own = ledger
        .reserve(with_token(reserve("p1", "m-r1"), &member))
        .await
        .unwrap()
        .into_inner();
    let denied = ledger
        .reserve(with_token(reserve("p2", "m-r2"), &member))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // A hold on another account: its commit is refused to the member.
    let theirs = ledger
        .reserve(request(reserve("p2", "svc-r2"), "t1", "svc"))
        .await
        .unwrap()
        .into_inner()
        .hold
        .unwrap()
        .hold_id;
    let commit = |hold_id, key: &str| proto::CommitRequest {
        hold_id,
        idempotency_key: key.into(),
        ..Default::default()
    };
    let refused = ledger
        .commit(with_token(commit(theirs, "m-c2"), &member))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    let committed = ledger
        .commit(with_token(commit(own.hold.unwrap().hold_id, "m-c1"), &member))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.balance.unwrap().posted, 90);
    // In a batch, each command is judged on its own.
    let batch = proto::SubmitBatchRequest {
        commands: vec![
            proto::BatchCommand {
                command: Some(proto::batch_command::Command::Reserve(reserve("p1", "m-b1"))),
            },
            proto::BatchCommand {
                command: Some(proto::batch_command::Command::Reserve(reserve("p2", "m-b2"))),
            },
        ],
    };
    let results = ledger
        .submit_batch(with_token(batch, &member))
        .await
        .unwrap()
        .into_inner()
        .results;
    use proto::batch_result::Result as R;
    assert!(matches!(results[0].result, Some(R::Reserve(_))));
    match &results[1].result {
        Some(R::Error(error)) => assert_eq!(error.code, "PERMISSION_DENIED"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_without_logging_anyone_out_and_tokens_are_for_this_server_only() {
    use tally::api::auth::{operator_token, AuthSettings, KeyRing};
    use tally::domain::access::Role;
    let old_ring = "k-old:1111111111111111111111111111111111111111111111111111111111111111";
    let new_ring = format!("k-new:2222222222222222222222222222222222222222222222222222222222222222,{old_ring}");
    let settings = |ring: &str| AuthSettings {
        keys: KeyRing::parse(ring).unwrap(),
        ..support::test_auth()
    };
    let mut server = TestServer::start_configured(|api, _| api.auth = settings(&new_ring)).await;
    let channel = server.channel().await;
    let now_s = server.engine.clock.now_us() / SECOND;
    let mut identity = IdentityClient::new(channel);
    // A token the old key signed before the rotation still works; new tokens use the new key.
    let before = operator_token(&settings(old_ring), "t1", "sso", &[Role::Service], now_s, 600);
    let who = identity.who_am_i(with_token(proto::WhoAmIRequest {}, &before)).await;
    assert!(who.is_ok(), "{who:?}");
    let start = proto::StartSessionRequest {
        subject: "p1".into(),
        role: "member".into(),
        idempotency_key: "rotated".into(),
        ..Default::default()
    };
    let session = identity
        .start_session(with_token(start, &before))
        .await
        .unwrap()
        .into_inner();
    let header = session.token.split('.').next().unwrap();
    use base64::Engine as _;
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap();
    assert!(String::from_utf8(header).unwrap().contains("\"kid\":\"k-new\""));
    // Once the old key leaves the ring, its tokens are refused.
    let retired = operator_token(
        &settings("k-gone:3333333333333333333333333333333333333333333333333333333333333333"),
        "t1",
        "sso",
        &[Role::Service],
        now_s,
        600,
    );
    let refused = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &retired))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SIGNATURE_INVALID");
    // Another audience or issuer, and algorithm "none", are refused.
    let elsewhere = AuthSettings {
        audience: "another-ledger".into(),
        ..settings(&new_ring)
    };
    let foreign = operator_token(&elsewhere, "t1", "sso", &[Role::Service], now_s, 600);
    let refused = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &foreign))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "TOKEN_NOT_FOR_US");
    let parts: Vec<&str> = before.split('.').collect();
    let none = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k-old"}"#),
        parts[1]
    );
    let refused = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &none))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason(&refused)),
        (Code::Unauthenticated, "CREDENTIAL_MALFORMED".into())
    );
    server.stop().await;
}

/// Waits until the operation `id` has finished.
fn finished(server: &TestServer, id: &str) -> tally::engine::OperationRecord {
    use tally::engine::operations::Viewer;
    let operations = server.engine.handle().operations().clone();
    operations.wait(id, std::time::Duration::from_secs(60));
    operations.get(id, Viewer::Server).expect("the operation exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_belong_to_their_tenant_and_server_jobs_to_the_servers_operator() {
    use tally::engine::operations::Viewer;
    let mut server = TestServer::start().await;
    support::random_workload(&server.engine, &mut support::Rng(17), 80).await;
    let mut operations = OperationsClient::new(server.channel().await);
    let admin_a = token("t1", "admin-a", &["admin"]);
    let admin_b = token("t2", "admin-b", &["admin"]);
    let auditor_b = token("t2", "auditor-b", &["auditor"]);
    let operator = token("ops", "ana", &["server-admin"]);
    let export = |file_name: &str| proto::StartReplayToFileRequest {
        replay: Some(proto::ReplayRequest::default()),
        file_name: file_name.into(),
    };

    // The same file name from two tenants: two files, each with its tenant's events only.
    let a = operations
        .start_replay_to_file(with_token(export("same.jsonl"), &admin_a))
        .await
        .unwrap()
        .into_inner();
    let a = finished(&server, &a.id);
    let b = operations
        .start_replay_to_file(with_token(export("same.jsonl"), &admin_b))
        .await
        .unwrap()
        .into_inner();
    let b = finished(&server, &b.id);
    let data = server.engine.dir.path();
    for (tenant, op) in [("t1", &a), ("t2", &b)] {
        let lines = std::fs::read_to_string(data.join("exports").join(tenant).join("same.jsonl")).unwrap();
        assert!(lines.lines().count() > 0, "{tenant} has events");
        assert!(
            lines.lines().all(|l| l.contains(&format!("\"tenant\":\"{tenant}\""))),
            "{tenant}'s export holds its own events only"
        );
        let shown = format!("exports/{tenant}/same.jsonl");
        assert!(
            op.description.ends_with(&shown) && op.result.ends_with(&shown),
            "{op:?}"
        );
        assert!(
            !format!("{op:?}").contains(data.to_str().unwrap()),
            "no server path: {op:?}"
        );
    }
    assert!(!data.join("exports/same.jsonl").exists());

    // Another tenant's operation does not exist for B: not listed, not fetched, not
    // cancelled, and the refusal is the one a made-up id gets.
    let client = operations.clone();
    let listed = |token: String| {
        let mut operations = client.clone();
        async move {
            let listed = operations
                .list_operations(with_token(proto::ListOperationsRequest {}, &token))
                .await
                .unwrap()
                .into_inner()
                .operations;
            listed.into_iter().map(|o| o.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(admin_b.clone()).await, vec![b.id.clone()]);
    assert_eq!(listed(auditor_b.clone()).await, vec![b.id.clone()]);
    assert_eq!(listed(admin_a.clone()).await, vec![a.id.clone()]);
    let made_up = "0190c0de-0000-7000-8000-00000000ffff";
    for id in [a.id.as_str(), made_up] {
        let get = proto::GetOperationRequest { id: id.into() };
        let got = operations.get_operation(with_token(get, &auditor_b)).await.unwrap_err();
        let cancel = proto::CancelOperationRequest { id: id.into() };
        let cancelled = operations
            .cancel_operation(with_token(cancel, &admin_b))
            .await
            .unwrap_err();
        for status in [got, cancelled] {
            assert_eq!(
                (status.code(), reason(&status)),
                (Code::NotFound, "OPERATION_NOT_FOUND".into())
            );
            assert_eq!(
                status.message().replace(id, "ID"),
                "OPERATION_NOT_FOUND: no operation \"ID\""
            );
        }
    }
    // A running job of A's: B's cancel does not reach it, A's does.
    let registry = server.engine.handle().operations().clone();
    let running = registry.start("test", Some("t1"), "waits to be cancelled".into(), |control| loop {
        control.check()?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    });
    let cancel = |id: &str| proto::CancelOperationRequest { id: id.into() };
    let refused = operations
        .cancel_operation(with_token(cancel(&running.id), &admin_b))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let still = registry.get(&running.id, Viewer::Server).unwrap();
    assert_eq!(still.state, tally::engine::OperationState::Running);
    operations
        .cancel_operation(with_token(cancel(&running.id), &admin_a))
        .await
        .unwrap();
    assert_eq!(
        finished(&server, &running.id).state,
        tally::engine::OperationState::Cancelled
    );

    // Rebuilds and snapshots serve every tenant: a tenant's admin may not start them, the
    // server's operator may, and tenants do not see them.
    let rebuild = proto::StartRebuildRequest {
        projection: "history".into(),
        verify_only: true,
        ..Default::default()
    };
    for token in [&admin_a, &admin_b] {
        let refused = operations
            .start_rebuild(with_token(rebuild.clone(), token))
            .await
            .unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::PermissionDenied, "PERMISSION_MISSING".into())
        );
        let refused = operations
            .start_projection_snapshot(with_token(proto::StartProjectionSnapshotRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let rebuilt = operations
        .start_rebuild(with_token(rebuild, &operator))
        .await
        .unwrap()
        .into_inner();
    let snapshot = operations
        .start_projection_snapshot(with_token(proto::StartProjectionSnapshotRequest {}, &operator))
        .await
        .unwrap()
        .into_inner();
    for id in [&rebuilt.id, &snapshot.id] {
        assert_eq!(finished(&server, id).tenant, None, "the server's job");
    }
    assert_eq!(listed(admin_a.clone()).await, [running.id.clone(), a.id.clone()]);
    assert_eq!(listed(admin_b.clone()).await, vec![b.id.clone()]);
    let everything = listed(operator.clone()).await;
    assert_eq!(everything.len(), 5, "the operator sees every operation: {everything:?}");
    // The server's role is not for sessions or API keys, which a tenant makes.
    let key = proto::CreateApiKeyRequest {
        name: "escalate".into(),
        role: "server-admin".into(),
        idempotency_key: "key-escalate".into(),
    };
    let refused = IdentityClient::new(server.channel().await)
        .create_api_key(with_token(key, &admin_a))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let session = proto::StartSessionRequest {
        subject: "eve".into(),
        role: "server-admin".into(),
        idempotency_key: "session-escalate".into(),
        ..Default::default()
    };
    let refused = IdentityClient::new(server.channel().await)
        .start_session(with_token(session, &token("t1", "sso", &["service"])))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    server.stop().await;
}

/// Starts a call to `path` signed with `headers` whose body is one message of `bytes`
/// bytes, kept open after it (the server cannot check the signature until the body ends).
fn held_open_call(
    channel: &tonic::transport::Channel,
    path: &'static str,
    bytes: usize,
    headers: Headers,
) -> tokio::task::JoinHandle<Result<(), Status>> {
    use tokio_stream::StreamExt;
    let channel = channel.clone();
    tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
        let body = tokio_stream::iter(vec![vec![0x55u8; bytes]]).chain(tokio_stream::pending());
        let mut request = tonic::Request::new(body);
        for (name, value) in headers {
            request.metadata_mut().insert(name, value.parse().unwrap());
        }
        let path = http::uri::PathAndQuery::from_static(path);
        grpc.client_streaming(request, path, support::Raw).await.map(|_| ())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_signed_bodies_are_bounded_in_memory() {
    use prost::Message;
    use tally::api::auth::{MAX_UNVERIFIED_BODY_BYTES_PER_KEY, SIGNATURE_HEADER};
    let mut server = TestServer::start().await;
    let channel = server.channel().await;
    let mut identity = IdentityClient::new(channel.clone());
    let create = proto::CreateApiKeyRequest {
        name: "partner".into(),
        idempotency_key: "key-partner".into(),
        ..Default::default()
    };
    let created = identity
        .create_api_key(with_token(create, &token("t1", "root", &["admin"])))
        .await
        .unwrap()
        .into_inner();
    let key_id = created.key.unwrap().key_id;
    let now = server.engine.clock.now_us() / SECOND;
    // A valid key id and a fresh timestamp pass the checks of the headers; the signature is
    // garbage, which only the whole body can show.
    let garbage = |n: u64| {
        let mut headers = signed(
            &key_id,
            "tk_not-the-secret",
            "/tally.v1.Ingest/IngestBatch",
            now - n,
            b"",
        );
        headers.retain(|(name, _)| *name != SIGNATURE_HEADER);
        headers.push((SIGNATURE_HEADER, format!("{n:064x}")));
        headers
    };
    let body_bytes = 1 << 20;
    let calls = 40;
    let mut handles = Vec::new();
    for n in 0..calls {
        handles.push(held_open_call(
            &channel,
            "/tally.v1.Ingest/IngestBatch",
            body_bytes,
            garbage(n),
        ));
    }
    // The calls the budget cannot hold are refused at once; the rest stay open, held (until
    // the body's 10 s run out). Wait for the refusals, then a little longer for any more.
    let bound = MAX_UNVERIFIED_BODY_BYTES_PER_KEY / body_bytes;
    let finished = |handles: &[tokio::task::JoinHandle<_>]| handles.iter().filter(|h| h.is_finished()).count();
    for _ in 0..100 {
        if finished(&handles) >= calls as usize - bound {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (mut refused, mut held) = (0, 0);
    for handle in handles {
        if !handle.is_finished() {
            held += 1;
            handle.abort();
            continue;
        }
        let status = handle.await.unwrap().unwrap_err();
        assert_eq!(
            (status.code(), reason(&status)),
            (Code::ResourceExhausted, "SIGNED_BODIES_EXHAUSTED".into()),
            "{status:?}"
        );
        refused += 1;
    }
    assert!(
        refused >= calls as usize - bound,
        "{refused} refused of {calls}; at most {bound} fit"
    );
    assert!(held <= bound, "{held} bodies held; the bound is {bound}");
    assert!(held > 0, "some calls are held: the budget is for them");
    // The held calls went away: what they held is given back, and a signed call works.
    let path = "/tally.v1.Identity/WhoAmI";
    let mut answer = Err(Status::unknown("not tried"));
    for n in 0..100 {
        let body = proto::WhoAmIRequest {}.encode_to_vec();
        let headers = signed(&key_id, &created.secret, path, now - 100 - n, &body);
        answer = call(&channel, path, false, body, &headers).await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(answer.is_ok(), "{answer:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_server_refuses_at_once_and_health_still_answers() {
    use tally::api::admission::Admission;
    use tally::api::auth::SIGNATURE_HEADER;
    let limit = 3;
    let mut server = TestServer::start_configured(|api, _| {
        api.admission = Admission {
            max_calls_in_flight: Some(limit),
            max_streams_per_connection: 64,
        }
    })
    .await;
    let channel = server.channel().await;
    let admin = token("t1", "root", &["admin"]);
    let create = proto::CreateApiKeyRequest {
        name: "partner".into(),
        idempotency_key: "key-partner".into(),
        ..Default::default()
    };
    let created = IdentityClient::new(channel.clone())
        .create_api_key(with_token(create, &admin))
        .await
        .unwrap()
        .into_inner();
    let key_id = created.key.unwrap().key_id;
    let now = server.engine.clock.now_us() / SECOND;
    // Signed calls whose bodies never end: each stays in flight, holding a slot.
    let path = "/tally.v1.Identity/WhoAmI";
    let hold = |n: u64| {
        let mut headers = signed(&key_id, "tk_not-the-secret", path, now - n % 60, b"");
        headers.retain(|(name, _)| *name != SIGNATURE_HEADER);
        headers.push((SIGNATURE_HEADER, format!("{n:064x}")));
        held_open_call(&channel, path, 64, headers)
    };
    let mut held: Vec<_> = (0..limit as u64).map(hold).collect();
    let mut next_held = limit as u64;
    let who_am_i = || {
        let mut identity = IdentityClient::new(channel.clone());
        let admin = admin.clone();
        async move { identity.who_am_i(with_token(proto::WhoAmIRequest {}, &admin)).await }
    };
    // The held calls reach the server in their own time: ask until the answer says so. A
    // held call that arrived while a probe held a slot was itself refused: hold another.
    let mut refused = None;
    for _ in 0..500 {
        match who_am_i().await {
            Err(status) => {
                refused = Some(status);
                break;
            }
            Ok(_) => {
                for slot in held.iter_mut().filter(|h| h.is_finished()) {
                    *slot = hold(next_held);
                    next_held += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
        }
    }
    let status = refused.expect("with every slot held, a call is refused");
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::ResourceExhausted, "SERVER_OVERLOADED".into()),
        "{status:?}"
    );
    assert!(status.message().contains(&limit.to_string()), "{}", status.message());
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .expect("health is never refused as overload")
        .into_inner();
    assert_eq!(
        serving.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // The held callers go away: their slots come back.
    for handle in held {
        handle.abort();
    }
    let mut answered = None;
    for _ in 0..500 {
        match who_am_i().await {
            Ok(answer) => {
                answered = Some(answer);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    assert!(answered.is_some(), "slots are given back when their calls end");
    server.stop().await;
}

/// The door remembers tokens that verified (a client sends the same one with every call):
/// a remembered token is still refused once it expires, and a token that differs from a
/// remembered one in any byte is checked afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remembered_token_still_expires_and_a_changed_one_is_checked_again() {
    use tally::api::auth::operator_token;
    use tally::domain::access::Role;
    let mut server = TestServer::start().await;
    let mut identity = IdentityClient::new(server.channel().await);
    let now_s = server.engine.clock.now_us() / SECOND;
    let settings = support::test_auth();
    let short = operator_token(&settings, "t1", "ops", &[Role::Service], now_s, 120);
    for _ in 0..3 {
        let who = identity.who_am_i(with_token(proto::WhoAmIRequest {}, &short)).await;
        assert!(who.is_ok(), "{who:?}");
    }
    // The claims with one letter changed (a tenant of t2), the signature kept.
    let parts: Vec<&str> = short.split('.').collect();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(claims.replace("\"t1\"", "\"t2\"")),
        parts[2]
    );
    let refused = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &forged))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SIGNATURE_INVALID");
    // Past its expiry and the minute of skew allowed.
    server.engine.clock.advance(181 * SECOND);
    let refused = identity
        .who_am_i(with_token(proto::WhoAmIRequest {}, &short))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "TOKEN_EXPIRED");
    server.stop().await;
}

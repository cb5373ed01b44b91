//! Protects account links (`tally.v1.Links`): a one-time token proves a link and is never
//! in the log (the log's bytes are scanned for it); wrong tokens lock a link after five;
//! a link not verified in time expires by log time; one external account is actively
//! linked to one account; revoking frees it; retries replay and a second verification is
//! refused; other tenants see nothing.

mod support;

use support::{request, TestServer};
use tally::api::proto::links_client::LinksClient;
use tally::api::proto::{self, LinkState};
use tonic::Code;
use tonic_types::StatusExt;

const TENANT: &str = "club";

fn call<T>(message: T) -> tonic::Request<T> {
    request(message, TENANT, "svc-app")
}

async fn open(server: &TestServer, account: &str) {
    let mut ledger = server.client().await;
    let open = proto::OpenAccountRequest {
        account_id: account.into(),
        idempotency_key: format!("open-{account}"),
        ..Default::default()
    };
    ledger.open_account(call(open)).await.unwrap();
}

fn create(account: &str, external: &str, key: &str, ttl_seconds: u32) -> proto::CreateLinkRequest {
    proto::CreateLinkRequest {
        account_id: account.into(),
        external_system: "casino-cms".into(),
        external_account_id: external.into(),
        ttl_seconds,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

fn verify(link_id: u64, token: &str, key: &str) -> proto::VerifyLinkRequest {
    proto::VerifyLinkRequest {
        link_id,
        token: token.into(),
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// (code, reason, metadata) of a failed call.
fn failure(status: tonic::Status) -> (Code, String, std::collections::HashMap<String, String>) {
    let info = status.get_details_error_info().expect("error info");
    (status.code(), info.reason, info.metadata)
}

#[tokio::test]
async fn a_token_proves_a_link_once_and_never_reaches_the_log() {
    let mut server = TestServer::start().await;
    open(&server, "m1").await;
    let mut links = LinksClient::new(server.channel().await);
    let created = links
        .create_link(call(create("m1", "card-77", "l1", 0)))
        .await
        .unwrap()
        .into_inner();
    let link = created.link.unwrap();
    assert_eq!(link.state, LinkState::Pending as i32);
    assert_eq!(created.token.len(), 64);
    assert_eq!(
        created.deep_link,
        format!(
            "https://links.invalid/link?linkId={}&token={}",
            link.link_id, created.token
        )
    );
    assert_eq!(
        link.expires_at_us - link.created_at_us,
        86_400_000_000,
        "a day by default"
    );
    // A retry is the same link, without the token (the ledger never had it).
    let again = links
        .create_link(call(create("m1", "card-77", "l1", 0)))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed && again.token.is_empty() && again.deep_link.is_empty());
    assert_eq!(again.link.unwrap().link_id, link.link_id);

    // A malformed token is refused and not counted.
    let bad = links
        .verify_link(call(verify(link.link_id, "xyz", "v0")))
        .await
        .unwrap_err();
    assert_eq!(failure(bad).0, Code::InvalidArgument);
    let verified = links
        .verify_link(call(verify(link.link_id, &created.token, "v1")))
        .await
        .unwrap()
        .into_inner();
    let active = verified.link.unwrap();
    assert_eq!((active.state, active.failures), (LinkState::Active as i32, 0));
    // The same verification again replays; another one is refused: the token was used.
    let replay = links
        .verify_link(call(verify(link.link_id, &created.token, "v1")))
        .await
        .unwrap();
    assert!(replay.into_inner().outcome.unwrap().replayed);
    let used = links
        .verify_link(call(verify(link.link_id, &created.token, "v2")))
        .await
        .unwrap_err();
    let (code, reason, _) = failure(used);
    assert_eq!((code, reason.as_str()), (Code::FailedPrecondition, "LINK_ACTIVE"));
    // Other tenants see nothing.
    let other = links
        .verify_link(request(verify(link.link_id, &created.token, "v3"), "other", "svc"))
        .await
        .unwrap_err();
    assert_eq!(failure(other).1, "LINK_NOT_FOUND");

    // The token (as text or bytes) and its plain hash are nowhere in the log's bytes.
    let token_bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&created.token[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let plain_hash = blake3::hash(&token_bytes);
    let log_dir = server.engine.config.data_dir.join("log");
    let mut scanned = 0;
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        scanned += bytes.len();
        for needle in [created.token.as_bytes(), &token_bytes[..], plain_hash.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "a token trace in the log"
            );
        }
    }
    assert!(scanned > 0);
    server.stop().await;
}

#[tokio::test]
async fn wrong_tokens_lock_a_link_after_five() {
    let mut server = TestServer::start().await;
    open(&server, "m1").await;
    let mut links = LinksClient::new(server.channel().await);
    let created = links
        .create_link(call(create("m1", "card-1", "l1", 0)))
        .await
        .unwrap()
        .into_inner();
    let link_id = created.link.unwrap().link_id;
    let wrong = "00".repeat(32);
    for attempt in 1..=5u32 {
        let refused = links
            .verify_link(call(verify(link_id, &wrong, &format!("w{attempt}"))))
            .await
            .unwrap_err();
        let (code, reason, metadata) = failure(refused);
        assert_eq!((code, reason.as_str()), (Code::PermissionDenied, "LINK_TOKEN_MISMATCH"));
        assert_eq!(metadata["failures_left"], (5 - attempt).to_string());
    }
    // Locked: even the right token is refused now, and the lock survives a restart.
    let locked = links
        .verify_link(call(verify(link_id, &created.token, "right")))
        .await
        .unwrap_err();
    let (code, reason, _) = failure(locked);
    assert_eq!((code, reason.as_str()), (Code::FailedPrecondition, "LINK_LOCKED"));
    server.stop().await;
    server.engine.restart();
    let link = server.engine.handle().link(TENANT, link_id).await.unwrap().unwrap();
    assert_eq!(
        (link.failures, link.status),
        (5, tally::domain::event::LinkStatus::Locked)
    );
}

#[tokio::test]
async fn one_external_account_links_to_one_account_and_revoking_frees_it() {
    let mut server = TestServer::start().await;
    open(&server, "m1").await;
    open(&server, "m2").await;
    let mut links = LinksClient::new(server.channel().await);
    let first = links
        .create_link(call(create("m1", "card-9", "a", 0)))
        .await
        .unwrap()
        .into_inner();
    let second = links
        .create_link(call(create("m2", "card-9", "b", 0)))
        .await
        .unwrap()
        .into_inner();
    let (first_id, second_id) = (first.link.unwrap().link_id, second.link.unwrap().link_id);
    links
        .verify_link(call(verify(first_id, &first.token, "va")))
        .await
        .unwrap();
    // The second pending link cannot become active, and no new link can be made.
    let (code, reason, metadata) = failure(
        links
            .verify_link(call(verify(second_id, &second.token, "vb")))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (Code::AlreadyExists, "LINK_CONFLICT"));
    assert_eq!(metadata["link_id"], first_id.to_string());
    let conflict = links
        .create_link(call(create("m2", "card-9", "c", 0)))
        .await
        .unwrap_err();
    assert_eq!(failure(conflict).1, "LINK_CONFLICT");
    // Revoke the first: the second can be verified now.
    let revoke = proto::RevokeLinkRequest {
        link_id: first_id,
        reason: "card reissued".into(),
        idempotency_key: "r1".into(),
        ..Default::default()
    };
    let revoked = links.revoke_link(call(revoke)).await.unwrap().into_inner();
    assert_eq!(revoked.link.unwrap().state, LinkState::Revoked as i32);
    let active = links
        .verify_link(call(verify(second_id, &second.token, "vb2")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.link.unwrap().state, LinkState::Active as i32);
    // Each account lists its own links, newest first.
    let listed = links
        .list_links(call(proto::ListLinksRequest {
            account_id: "m1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .links;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, LinkState::Revoked as i32);
    server.stop().await;
}

#[tokio::test]
async fn a_link_not_verified_in_time_expires_by_log_time() {
    let mut server = TestServer::start().await;
    open(&server, "m1").await;
    let mut links = LinksClient::new(server.channel().await);
    let created = links
        .create_link(call(create("m1", "card-3", "l", 60)))
        .await
        .unwrap()
        .into_inner();
    let link_id = created.link.unwrap().link_id;
    let too_long = links
        .create_link(call(create("m1", "card-4", "l2", 604_801)))
        .await
        .unwrap_err();
    assert_eq!(failure(too_long).0, Code::InvalidArgument);
    server.engine.clock.advance(60_000_000);
    // Expired at its deadline, before the sweeper recorded it.
    let late = links
        .verify_link(call(verify(link_id, &created.token, "v")))
        .await
        .unwrap_err();
    assert_eq!(failure(late).1, "LINK_EXPIRED");
    assert!(server.engine.handle().sweep().await.unwrap() >= 1);
    let listed = links
        .list_links(call(proto::ListLinksRequest {
            account_id: "m1".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .links;
    assert_eq!(listed[0].state, LinkState::Expired as i32);
    let records: Vec<_> = server
        .engine
        .handle()
        .reader()
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(records
        .iter()
        .any(|r| matches!(&r.event, tally::domain::Event::LinkExpired(e) if e.link_id == link_id)));
    server.stop().await;
}

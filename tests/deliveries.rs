//! Protects deliveries, against a real HTTP receiver on 127.0.0.1:0 that can be told to
//! fail, stall or succeed: retries with backoff on the injected clock, failing for good
//! after the last attempt, retry by hand and re-drive, explicit-ack redelivery, per-account
//! order, the signature the receiver verifies, at-most-once never retried (not even across a
//! restart), a restart mid-delivery that resumes without skipping, duplicate counts that
//! match each semantics, acks that are idempotent and confined to their tenant, endpoints
//! that may not point at private addresses unless allowed, and https receivers whose
//! certificate must be trusted.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use support::{token, with_token, TestEngine, TestServer};
use tally::api::proto::{self, deliveries_client::DeliveriesClient, ledger_client::LedgerClient};
use tally::deliverer::Deliverer;
use tally::domain::delivery::{AckMode, EndpointConfig, Semantics};
use tally::domain::{Command, CommandMeta, IdempotencyKey};
use tally::engine::Clock;
use tally::outbound::{Destinations, Outbound};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

const SECOND: u64 = 1_000_000;

/// What the receiver does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Succeed,
    Fail,
    /// Never answers (the sender's timeout ends it).
    Stall,
}

#[derive(Clone, Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// An HTTP/1.1 receiver that records every request.
struct Receiver {
    url: String,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Over TLS, with this certificate and key (DER).
    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}/hooks/tally", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(Mode::Succeed));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (m, r) = (mode.clone(), received.clone());
        let task = tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (m, r) = (m.clone(), r.clone());
                match tls.clone() {
                    None => drop(tokio::spawn(serve(stream, m, r))),
                    Some(acceptor) => drop(tokio::spawn(async move {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            serve(stream, m, r).await;
                        }
                    })),
                }
            }
        });
        Self {
            url,
            mode,
            received,
            task,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    mode: Arc<Mutex<Mode>>,
    received: Arc<Mutex<Vec<Received>>>,
) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buffer.len() < header_end + length {
        let n = stream.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buffer[header_end..header_end + length]).to_string();
    received.lock().unwrap().push(Received { headers, body });
    let mode = *mode.lock().unwrap();
    let answer = match mode {
        Mode::Succeed => "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        Mode::Fail => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        Mode::Stall => {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            return;
        }
    };
    let _ = stream.write_all(answer.as_bytes()).await;
}

/// The worker's connections in these tests: loopback allowed, the built-in roots only.
fn any_address() -> Outbound {
    Outbound::new(Destinations::AnyAddress, None).unwrap()
}

fn settings(url: &str, semantics: i32, ack_mode: i32) -> proto::EndpointSettings {
    proto::EndpointSettings {
        url: url.into(),
        semantics,
        ack_mode,
        max_attempts: 3,
        backoff_initial_ms: 1_000,
        backoff_max_ms: 30_000,
        ack_timeout_seconds: 60,
        request_timeout_ms: 300,
        ..Default::default()
    }
}

/// A server whose endpoints may point at 127.0.0.1, and a worker to pulse by hand.
async fn server() -> (TestServer, Deliverer) {
    let server = TestServer::start_configured(|api, _| api.destinations = Destinations::AnyAddress).await;
    let deliverer = Deliverer::new(server.engine.handle(), support::test_auth().keys, any_address());
    (server, deliverer)
}

struct Clients {
    deliveries: DeliveriesClient<tonic::transport::Channel>,
    ledger: LedgerClient<tonic::transport::Channel>,
    admin: String,
    service: String,
}

async fn clients(server: &TestServer) -> Clients {
    let channel = server.channel().await;
    Clients {
        deliveries: DeliveriesClient::new(channel.clone()),
        ledger: LedgerClient::new(channel),
        admin: token("t1", "admin-1", &["admin"]),
        service: token("t1", "svc-1", &["service"]),
    }
}

impl Clients {
    async fn register(&mut self, settings: proto::EndpointSettings, key: &str) -> (u64, String) {
        let request = proto::RegisterEndpointRequest {
            settings: Some(settings),
            idempotency_key: key.into(),
        };
        let answer = self
            .deliveries
            .register_endpoint(with_token(request, &self.admin))
            .await
            .unwrap()
            .into_inner();
        (answer.endpoint.unwrap().endpoint_id, answer.secret)
    }

    /// Opens an account: one event, `account.opened`. Answers its sequence number.
    async fn open(&mut self, account: &str) -> u64 {
        let open = proto::OpenAccountRequest {
            account_id: account.into(),
            idempotency_key: format!("open-{account}"),
            ..Default::default()
        };
        let answer = self.ledger.open_account(with_token(open, &self.service)).await.unwrap();
        answer.into_inner().outcome.unwrap().sequence
    }

    async fn award(&mut self, account: &str, key: &str) -> u64 {
        let award = proto::AwardRequest {
            account_id: account.into(),
            idempotency_key: key.into(),
            source: Some(proto::award_request::Source::Promotion(proto::Promotion {
                points: 10,
                promotion_id: "p".into(),
                external_reward_id: key.into(),
            })),
            ..Default::default()
        };
        let answer = self.ledger.award(with_token(award, &self.service)).await.unwrap();
        answer.into_inner().outcome.unwrap().sequence
    }

    async fn delivery(&mut self, endpoint_id: u64, seq: u64) -> proto::DeliveryInfo {
        let request = proto::GetDeliveryRequest {
            delivery_id: format!("{endpoint_id}:{seq}"),
        };
        self.deliveries
            .get_delivery(with_token(request, &self.admin))
            .await
            .unwrap()
            .into_inner()
    }

    async fn ack(&mut self, endpoint_id: u64, seq: u64, token: &str) -> Result<bool, tonic::Status> {
        let request = proto::AckRequest {
            delivery_id: format!("{endpoint_id}:{seq}"),
            receipt: "got it".into(),
        };
        Ok(self
            .deliveries
            .ack(with_token(request, token))
            .await?
            .into_inner()
            .acked)
    }
}

const AT_MOST_ONCE: i32 = proto::DeliverySemantics::AtMostOnce as i32;
const AT_LEAST_ONCE: i32 = proto::DeliverySemantics::AtLeastOnce as i32;
const EXACTLY_ONCE: i32 = proto::DeliverySemantics::ExactlyOnce as i32;
const STATUS_2XX: i32 = proto::AckMode::Status2xx as i32;
const EXPLICIT: i32 = proto::AckMode::Explicit as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_on_the_log_clock_then_fail_for_good_and_are_retried_by_hand() {
    let (mut server, deliverer) = server().await;
    let mut c = clients(&server).await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = c
        .register(settings(&receiver.url, AT_LEAST_ONCE, STATUS_2XX), "ep-1")
        .await;
    receiver.set(Mode::Fail);
    let seq = c.open("p1").await;
    let clock = &server.engine.clock;

    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    let first = c.delivery(endpoint, seq).await;
    assert_eq!(first.state, "failed");
    let now = clock.now_us();
    // Equal jitter: the first retry between half and all of the initial 1 s.
    assert!(
        (now + SECOND / 2..=now + SECOND).contains(&first.next_attempt_at_us),
        "{first:?}"
    );
    assert_eq!(deliverer.pulse().await.unwrap(), 0, "not due before its time");
    clock.set(first.next_attempt_at_us);
    // The second attempt: no answer within the request timeout.
    receiver.set(Mode::Stall);
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    let second = c.delivery(endpoint, seq).await;
    assert_eq!((second.state.as_str(), second.attempts.len()), ("failed", 2));
    assert!(
        second.attempts[1].error.contains("no answer within 300 ms"),
        "{second:?}"
    );
    let now = clock.now_us();
    assert!(
        (now + SECOND..=now + 2 * SECOND).contains(&second.next_attempt_at_us),
        "doubled: {second:?}"
    );
    clock.set(second.next_attempt_at_us);
    receiver.set(Mode::Fail);
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    let last = c.delivery(endpoint, seq).await;
    assert_eq!(last.state, "failed_permanent");
    clock.advance(3600 * SECOND);
    assert_eq!(deliverer.pulse().await.unwrap(), 0, "never after the last attempt");
    let attempts: Vec<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("tally-attempt").to_string())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);

    // By hand: a new round, which succeeds.
    receiver.set(Mode::Succeed);
    let retry = proto::RetryDeliveryRequest {
        delivery_id: format!("{endpoint}:{seq}"),
        reason: "receiver fixed".into(),
    };
    let retried = c
        .deliveries
        .retry_delivery(with_token(retry.clone(), &c.admin))
        .await
        .unwrap();
    assert_eq!(retried.into_inner().delivery_ids, [format!("{endpoint}:{seq}")]);
    let again = c.deliveries.retry_delivery(with_token(retry, &c.admin)).await.unwrap();
    assert!(
        again.into_inner().delivery_ids.is_empty(),
        "a retried retry changes nothing"
    );
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    let done = c.delivery(endpoint, seq).await;
    assert_eq!(
        (done.state.as_str(), done.attempts.last().unwrap().status_code),
        ("delivered", 200)
    );

    // Re-drive: every permanently failed delivery of the endpoint in a window.
    receiver.set(Mode::Fail);
    let seqs = [c.award("p1", "a-1").await, c.award("p1", "a-2").await];
    for _ in 0..3 {
        deliverer.pulse().await.unwrap();
        clock.advance(60 * SECOND);
    }
    for seq in seqs {
        assert_eq!(c.delivery(endpoint, seq).await.state, "failed_permanent");
    }
    receiver.set(Mode::Succeed);
    let redrive = proto::RedriveDeliveriesRequest {
        endpoint_id: endpoint,
        reason: "outage over".into(),
        ..Default::default()
    };
    let redriven = c
        .deliveries
        .redrive_deliveries(with_token(redrive, &c.admin))
        .await
        .unwrap();
    assert_eq!(redriven.into_inner().delivery_ids.len(), 2);
    assert_eq!(deliverer.pulse().await.unwrap(), 2);
    let stats = proto::EndpointRequest { endpoint_id: endpoint };
    let stats = c
        .deliveries
        .get_endpoint_stats(with_token(stats, &c.admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            stats.delivered,
            stats.failed_permanent,
            stats.retried_by_hand,
            stats.pending
        ),
        (3, 3, 3, 0)
    );
    assert_eq!(stats.failed_attempts, 9);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receiver_verifies_the_signature_and_acks_redeliver_until_confirmed() {
    let (mut server, deliverer) = server().await;
    let mut c = clients(&server).await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = c
        .register(settings(&receiver.url, EXACTLY_ONCE, EXPLICIT), "ep-ack")
        .await;
    // A retry of the registration answers the same endpoint and secret.
    let again = c
        .register(settings(&receiver.url, EXACTLY_ONCE, EXPLICIT), "ep-ack")
        .await;
    assert_eq!(again, (endpoint, secret.clone()));
    // The log holds the secret's reference, never the secret.
    let log = std::fs::read(server.engine.dir.path().join("log").join(format!("{:020}.seg", 1))).unwrap();
    assert!(!log.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let seq = c.open("p1").await;
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    let got = receiver.received()[0].clone();
    // What a receiver does: recompute the signature over "t.body" and compare.
    let signature = got.header("tally-signature");
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .expect("t=…,v1=…");
    let expected = tally::api::auth::hmac(secret.as_bytes(), format!("{t}.{}", got.body).as_bytes());
    assert_eq!(v1, tally::hex::hex(&expected));
    let wrong = tally::api::auth::hmac(b"whsec_other", format!("{t}.{}", got.body).as_bytes());
    assert_ne!(v1, tally::hex::hex(&wrong));
    let body: serde_json::Value = serde_json::from_str(&got.body).unwrap();
    assert_eq!(
        (body["seq"].as_u64(), body["kind"].as_str()),
        (Some(seq), Some("account.opened"))
    );
    assert_eq!(got.header("tally-delivery-id"), format!("{endpoint}:{seq}"));
    assert_eq!(got.header("idempotency-key"), format!("{endpoint}:{seq}"));
    assert_eq!(got.header("tally-event-id"), body["event_id"].as_str().unwrap());
    assert_eq!(c.delivery(endpoint, seq).await.state, "awaiting_ack");

    // No ack within the timeout: delivered again, with the same idempotency key.
    server.engine.clock.advance(61 * SECOND);
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    let again = receiver.received()[1].clone();
    assert_eq!(again.header("tally-attempt"), "2");
    assert_eq!(again.header("idempotency-key"), got.header("idempotency-key"));
    // The ack: from the receiving service, once; again changes nothing.
    let service = c.service.clone();
    assert!(c.ack(endpoint, seq, &service).await.unwrap());
    assert!(!c.ack(endpoint, seq, &service).await.unwrap());
    assert_eq!(c.delivery(endpoint, seq).await.state, "acked");
    server.engine.clock.advance(120 * SECOND);
    assert_eq!(deliverer.pulse().await.unwrap(), 0, "an acked delivery is done");
    // Unknown deliveries and other tenants' are not found; an auditor may not ack.
    let unknown = c.ack(endpoint, 999, &service).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let stranger = token("t2", "svc-9", &["service"]);
    let other = c.ack(endpoint, seq, &stranger).await.unwrap_err();
    assert_eq!(other.code(), Code::NotFound);
    let auditor = token("t1", "aud-1", &["auditor"]);
    assert_eq!(
        c.ack(endpoint, seq, &auditor).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_endpoints_deliver_each_accounts_events_in_order() {
    let (mut server, deliverer) = server().await;
    let mut c = clients(&server).await;
    let receiver = Receiver::start().await;
    let mut ordered = settings(&receiver.url, AT_LEAST_ONCE, STATUS_2XX);
    ordered.ordered = true;
    ordered.max_attempts = 10;
    let (endpoint, _) = c.register(ordered, "ep-ordered").await;
    receiver.set(Mode::Fail);
    let p1 = [c.open("p1").await, c.award("p1", "a1").await, c.award("p1", "a2").await];
    let p2 = c.open("p2").await;
    // Only the first of each account is tried while it fails.
    for _ in 0..3 {
        deliverer.pulse().await.unwrap();
        server.engine.clock.advance(60 * SECOND);
    }
    let tried: std::collections::BTreeSet<_> = receiver
        .received()
        .iter()
        .map(|r| r.header("tally-delivery-id").to_string())
        .collect();
    assert_eq!(
        tried,
        [format!("{endpoint}:{}", p1[0]), format!("{endpoint}:{p2}")]
            .into_iter()
            .collect()
    );
    receiver.set(Mode::Succeed);
    while deliverer.pulse().await.unwrap() > 0 {
        server.engine.clock.advance(60 * SECOND);
    }
    let delivered: Vec<u64> = receiver
        .received()
        .iter()
        .filter(|r| r.body.contains("\"account\":\"p1\""))
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let mut last_success = Vec::new();
    for seq in delivered {
        if last_success.last() != Some(&seq) {
            last_success.push(seq);
        }
    }
    assert_eq!(last_success, p1, "p1's events reached the receiver in order");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_match_each_semantics() {
    let (mut server, deliverer) = server().await;
    let mut c = clients(&server).await;
    let receivers = [
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    ];
    let kinds = [
        (AT_MOST_ONCE, STATUS_2XX),
        (AT_LEAST_ONCE, EXPLICIT),
        (EXACTLY_ONCE, EXPLICIT),
    ];
    let mut endpoints = Vec::new();
    for (n, (receiver, (semantics, ack))) in receivers.iter().zip(kinds).enumerate() {
        endpoints.push(
            c.register(settings(&receiver.url, semantics, ack), &format!("ep-{n}"))
                .await
                .0,
        );
    }
    let events: Vec<u64> = vec![c.open("p1").await, c.open("p2").await, c.open("p3").await];
    // Every receiver answers 200; nobody acks. Two ack timeouts pass.
    for _ in 0..3 {
        deliverer.pulse().await.unwrap();
        server.engine.clock.advance(61 * SECOND);
    }
    let count = |r: &Receiver| r.received().len();
    let distinct = |r: &Receiver| {
        r.received()
            .iter()
            .map(|x| x.header("tally-delivery-id").to_string())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    // At most once: each event once. At least once without acks: every ack timeout again,
    // until the attempts run out. Exactly once: as many requests, one idempotency key per
    // event, so a receiver that deduplicates sees each once.
    assert_eq!((count(&receivers[0]), distinct(&receivers[0])), (3, 3));
    assert_eq!((count(&receivers[1]), distinct(&receivers[1])), (9, 3));
    let keys: std::collections::BTreeSet<_> = receivers[2]
        .received()
        .iter()
        .map(|r| r.header("idempotency-key").to_string())
        .collect();
    assert_eq!((count(&receivers[2]), keys.len()), (9, 3));
    // The last attempt's ack window passed: failed for good, with no request more.
    assert_eq!(deliverer.pulse().await.unwrap(), 0);
    assert_eq!(count(&receivers[1]), 9);
    for seq in &events {
        let delivery = c.delivery(endpoints[1], *seq).await;
        assert_eq!(
            (delivery.state.as_str(), delivery.attempts.len()),
            ("failed_permanent", 3)
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_is_never_retried_and_private_addresses_are_refused() {
    let (mut server, deliverer) = server().await;
    let mut c = clients(&server).await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = c
        .register(settings(&receiver.url, AT_MOST_ONCE, STATUS_2XX), "ep-amo")
        .await;
    receiver.set(Mode::Fail);
    let seq = c.open("p1").await;
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    server.engine.clock.advance(3600 * SECOND);
    assert_eq!(deliverer.pulse().await.unwrap(), 0);
    assert_eq!(receiver.received().len(), 1);
    let delivery = c.delivery(endpoint, seq).await;
    assert_eq!(
        (delivery.state.as_str(), delivery.attempts.len()),
        ("failed_permanent", 1)
    );
    assert_eq!(delivery.attempts[0].status_code, 500);
    // The log: dispatched first, then the outcome.
    let kinds: Vec<_> = server
        .engine
        .handle()
        .reader()
        .iter_from(1)
        .map(|r| r.unwrap().event.kind().name())
        .filter(|k| k.starts_with("delivery."))
        .collect();
    assert_eq!(kinds, ["delivery.dispatched", "delivery.failed_permanently"]);
    // Acks are for explicit-ack endpoints only.
    let service = c.service.clone();
    let refused = c.ack(endpoint, seq, &service).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    server.stop().await;

    // A server that keeps to public addresses refuses loopback, and any scheme but http.
    let mut strict = TestServer::start().await;
    let mut c = clients(&strict).await;
    for url in [receiver.url.as_str(), "http://10.1.2.3/x", "ftp://example.com/x"] {
        let request = proto::RegisterEndpointRequest {
            settings: Some(settings(url, AT_LEAST_ONCE, STATUS_2XX)),
            idempotency_key: "ep-bad".into(),
        };
        let refused = c
            .deliveries
            .register_endpoint(with_token(request, &c.admin))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{url}: {refused:?}");
    }
    for private in [
        "169.254.169.254",
        "::ffff:10.0.0.1",
        "64:ff9b::7f00:1",
        "2002:c0a8:0101::1",
        "::127.0.0.1",
        "198.18.0.1",
        "192.0.0.8",
        "fd00::1",
        "::1",
    ] {
        assert!(!tally::outbound::is_public(private.parse().unwrap()), "{private}");
    }
    assert!(tally::outbound::is_public("2606:4700::1111".parse().unwrap()));
    // An attempt's error is recorded whatever the receiver or TLS said: printable, bounded.
    let noisy = tally::deliverer::printable(&"certificate not valid for name\n".repeat(100));
    assert!(noisy.len() <= 500 && !noisy.chars().any(char::is_control), "{noisy}");
    assert!(!tally::outbound::is_public("169.254.169.254".parse().unwrap()));
    assert!(!tally::outbound::is_public("::ffff:192.168.1.1".parse().unwrap()));
    assert!(tally::outbound::is_public("93.184.216.34".parse().unwrap()));
    strict.stop().await;
}

fn meta(actor: &str, key: Option<&str>) -> CommandMeta {
    CommandMeta {
        tenant: "t1".into(),
        actor: actor.into(),
        idempotency: key.map(|k| IdempotencyKey {
            key: k.into(),
            scope: String::new(),
        }),
        ..CommandMeta::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_delivery_resumes_without_skipping() {
    let receiver = Receiver::start().await;
    let mut engine = TestEngine::start();
    let auth = support::test_auth();
    let h = engine.handle();
    let register = |semantics, key: &str| {
        let config = EndpointConfig {
            url: receiver.url.clone(),
            kinds: vec![],
            semantics,
            max_attempts: 5,
            backoff_initial_ms: 1000,
            backoff_max_ms: 30_000,
            ack_mode: AckMode::Status2xx,
            ack_timeout_seconds: 60,
            ordered: false,
            request_timeout_ms: 300,
        };
        let command = Command::RegisterEndpoint {
            config,
            secret_kid: "test-k1".into(),
            secret_nonce: key.into(),
        };
        (meta("admin-1", Some(key)), command)
    };
    let (m, c) = register(Semantics::AtLeastOnce, "ep-restart");
    let at_least_once = h.submit(m, c).await.unwrap().records[0].seq;
    let (m, c) = register(Semantics::AtMostOnce, "ep-restart-amo");
    let at_most_once = h.submit(m, c).await.unwrap().records[0].seq;
    let mut events = Vec::new();
    for n in 0..20 {
        let open = Command::OpenAccount {
            account: format!("p{n}"),
        };
        events.push(
            h.submit(meta("svc", Some(&format!("open-{n}"))), open)
                .await
                .unwrap()
                .records[0]
                .seq,
        );
    }
    // Some delivered, then the at-most-once attempt of the next event is recorded as
    // dispatched and the process stops before its outcome.
    let deliverer = Deliverer::new(h.clone(), auth.keys.clone(), any_address());
    let mut made = 0;
    while made < 40 {
        made += deliverer.pulse().await.unwrap();
    }
    assert_eq!(made, 40, "each endpoint's share per pulse, until all were sent");
    let open = Command::OpenAccount { account: "late".into() };
    let late = h.submit(meta("svc", Some("open-late")), open).await.unwrap().records[0].seq;
    let dispatch = Command::DispatchDelivery {
        endpoint_id: at_most_once,
        event_seq: late,
        attempt: 1,
    };
    h.submit(meta(tally::deliverer::DELIVERY_ACTOR, None), dispatch)
        .await
        .unwrap();
    for n in 20..30 {
        let open = Command::OpenAccount {
            account: format!("p{n}"),
        };
        events.push(
            h.submit(meta("svc", Some(&format!("open-{n}"))), open)
                .await
                .unwrap()
                .records[0]
                .seq,
        );
    }
    drop(deliverer);
    engine.restart();
    let h = engine.handle();
    let deliverer = Deliverer::new(h.clone(), auth.keys, any_address());
    assert_eq!(deliverer.settle_interrupted().await.unwrap(), 1);
    while deliverer.pulse().await.unwrap() > 0 {}
    let received: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("tally-delivery-id").to_string())
        .collect();
    for endpoint in [at_least_once, at_most_once] {
        for seq in &events {
            let id = format!("{endpoint}:{seq}");
            assert_eq!(received.iter().filter(|r| **r == id).count(), 1, "{id} delivered once");
        }
    }
    assert!(received.contains(&format!("{at_least_once}:{late}")));
    assert!(
        !received.contains(&format!("{at_most_once}:{late}")),
        "an at-most-once attempt cut short is never made again"
    );
    let settled = h
        .inspect(move |s| s.deliveries.deliveries[&(at_most_once, late)].status)
        .await
        .unwrap();
    assert_eq!(settled, tally::domain::delivery::DeliveryStatus::FailedPermanent);
    // The state the restarted engine has (snapshot plus fold) is the pure fold of the log:
    // deliveries and their index included.
    let live = h.inspect(|s| s.clone()).await.unwrap();
    let mut folded = tally::domain::State::default();
    for record in h.reader().iter_from(1) {
        tally::domain::evolve(&mut folded, &record.unwrap());
    }
    assert_eq!(live.deliveries, folded.deliveries);
    assert_eq!(live, folded);
    let open: std::collections::BTreeSet<_> = folded
        .deliveries
        .deliveries
        .iter()
        .filter(|(_, d)| !d.status.done() && d.status != tally::domain::delivery::DeliveryStatus::FailedPermanent)
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        open, folded.deliveries.open,
        "the index of open deliveries is exactly the open ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_endpoints_are_delivered_to_when_their_certificate_is_trusted() {
    use tokio_rustls::rustls;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key)
        .unwrap();
    let receiver = Receiver::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    assert!(receiver.url.starts_with("https://127.0.0.1:"));
    let (mut server, untrusting) = server().await;
    let mut c = clients(&server).await;
    let (endpoint, _) = c
        .register(settings(&receiver.url, AT_LEAST_ONCE, STATUS_2XX), "ep-tls")
        .await;
    let seq = c.open("p1").await;
    // A worker that does not trust the receiver's certificate fails the attempt.
    assert_eq!(untrusting.pulse().await.unwrap(), 1);
    let failed = c.delivery(endpoint, seq).await;
    assert_eq!(failed.state, "failed");
    assert!(failed.attempts[0].error.contains("TLS"), "{failed:?}");
    assert!(receiver.received().is_empty());
    // One that trusts it (deliveries.ca_file) delivers.
    let pem = certified.cert.pem();
    let trusting = Outbound::new(Destinations::AnyAddress, Some(pem.as_bytes())).unwrap();
    let deliverer = Deliverer::new(server.engine.handle(), support::test_auth().keys, trusting);
    server.engine.clock.advance(60 * SECOND);
    assert_eq!(deliverer.pulse().await.unwrap(), 1);
    assert_eq!(c.delivery(endpoint, seq).await.state, "delivered");
    assert_eq!(receiver.received().len(), 1);
    assert!(Outbound::new(Destinations::AnyAddress, Some(b"not a certificate")).is_err());
    server.stop().await;
}

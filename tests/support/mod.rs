//! Helpers shared by the integration tests: a pure-domain harness, engines on temporary
//! directories with a manual clock, and a gRPC server on 127.0.0.1:0.
#![allow(dead_code)]

use std::sync::Arc;
use tally::domain::{
    decide_identified, evolve, evolve_identified, Command, CommandMeta, Decision, Envelope, IdempotencyKey, Identity,
    Policy, Record, Rejection, State,
};
use tally::engine::{Engine, EngineConfig, EngineHandle, ManualClock};
use tally::log::{Durability, Head, LogError, ReadLog, Records};

/// A fixed start time: 2026-01-01T00:00:00Z.
pub const T0: u64 = 1_767_225_600_000_000;

/// A command's metadata in tenant `t1`, sent by `staff-1`, with idempotency key `key`.
pub fn meta(key: &str) -> CommandMeta {
    meta_as("t1", "staff-1", key, "")
}

pub fn meta_as(tenant: &str, actor: &str, key: &str, scope: &str) -> CommandMeta {
    CommandMeta {
        tenant: tenant.into(),
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

/// The pure core with a log kept in memory: decide, stamp, evolve.
pub struct Harness {
    pub policy: Policy,
    pub state: State,
    pub records: Vec<Record>,
    pub now_us: u64,
    /// Whether commands are looked up among the identities older than the window before
    /// they are decided, as the engine's submitting tasks do (else `decide` looks them up).
    pub check_older_first: bool,
    /// The older identities they are looked up in, if not the state's own: an older version,
    /// as the engine's tasks may hold while the writer moves on.
    pub published: Option<tally::domain::state::OlderIdentities>,
}

impl Default for Harness {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            state: State::default(),
            records: Vec::new(),
            now_us: T0,
            check_older_first: true,
            published: None,
        }
    }
}

/// Records kept in memory, in sequence from 1, read as the log would be.
pub struct InMemory<'a>(pub &'a [Record]);

impl tally::domain::state::OlderRecords for InMemory<'_> {
    fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, String> {
        let head = self.0.len() as u64;
        if from == 0 || from > head {
            return Err(format!("record {from} is not in the log"));
        }
        Ok(self.0[from as usize - 1..to.min(head) as usize].to_vec())
    }
}

impl Harness {
    /// Decides and, if accepted, appends and folds the events. Returns the decision. A
    /// recorded refusal appends its events without the key, as the sequencer does, and is
    /// returned as the rejection. Like the sequencer, it works out the command's identity
    /// first and folds the records with it; [`Harness::refold`] folds them without, so
    /// comparing the two checks that both ways give one state.
    pub fn run(&mut self, meta: &CommandMeta, command: Command) -> Result<Decision, Rejection> {
        let mut identity = Identity::of(meta, &command);
        let log = InMemory(&self.records);
        let older = self.published.as_ref().unwrap_or(&self.state.idempotency.older);
        if self.check_older_first && !older.is_empty() {
            identity.check_older(older, &log);
        }
        let decision = decide_identified(&self.policy, &self.state, meta, &command, &identity, self.now_us, &log)?;
        if let Decision::Refuse { events, rejection } = decision {
            let unkeyed = CommandMeta {
                idempotency: None,
                ..meta.clone()
            };
            self.append(&unkeyed, &events, None);
            return Err(rejection);
        }
        if let Decision::Append(emitted) = &decision {
            self.append(meta, emitted, Some(&identity));
        }
        Ok(decision)
    }

    fn append(&mut self, meta: &CommandMeta, emitted: &[tally::domain::Emitted], first_of: Option<&Identity>) {
        {
            for (at, e) in emitted.iter().enumerate() {
                let record = Record {
                    seq: self.state.head_seq + 1,
                    ts_us: self.now_us,
                    envelope: Envelope {
                        tenant: e.tenant.clone(),
                        stream: e.account.clone(),
                        actor: meta.actor.clone(),
                        correlation_id: meta.correlation_id.clone(),
                        idempotency_key: meta.idempotency.as_ref().map(|k| k.key.clone()).unwrap_or_default(),
                        idempotency_scope: meta.idempotency.as_ref().map(|k| k.scope.clone()).unwrap_or_default(),
                        ..Envelope::default()
                    },
                    event: e.event.clone(),
                    hash: [0; 32],
                };
                let identity = first_of.and_then(|identity| identity.for_record(meta, at, &record.envelope.tenant));
                evolve_identified(&mut self.state, &record, identity);
                self.records.push(record);
            }
        }
    }

    /// Runs a command that must be accepted; returns its records.
    pub fn ok(&mut self, meta: &CommandMeta, command: Command) -> Vec<Record> {
        let before = self.records.len();
        match self.run(meta, command.clone()) {
            Ok(Decision::Append(_)) => self.records[before..].to_vec(),
            other => panic!("{command:?} should append, got {other:?}"),
        }
    }

    /// Runs a command that must be refused; returns the rejection.
    pub fn refused(&mut self, meta: &CommandMeta, command: Command) -> Rejection {
        match self.run(meta, command.clone()) {
            Err(rejection) => rejection,
            other => panic!("{command:?} should be refused, got {other:?}"),
        }
    }

    /// State folded from scratch over the records so far.
    pub fn refold(&self) -> State {
        let mut state = State::default();
        state.idempotency.policy = self.state.idempotency.policy;
        for record in &self.records {
            evolve(&mut state, record);
        }
        state
    }
}

/// An engine on a temporary directory with a manual clock starting at [`T0`].
pub struct TestEngine {
    pub engine: Option<Engine>,
    pub clock: Arc<ManualClock>,
    pub dir: tempfile::TempDir,
    pub config: EngineConfig,
}

impl TestEngine {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = EngineConfig {
            durability: Durability::Buffered,
            segment_bytes: 1 << 20,
            ..EngineConfig::new(dir.path())
        };
        Self::start_with(dir, config)
    }

    pub fn start_with(dir: tempfile::TempDir, config: EngineConfig) -> Self {
        let clock = Arc::new(ManualClock::new(T0));
        let engine = Engine::start(config.clone(), clock.clone()).expect("engine starts");
        Self {
            engine: Some(engine),
            clock,
            dir,
            config,
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.engine.as_ref().expect("running").handle()
    }

    /// Every projection's digest, once the projections reached everything committed.
    pub async fn digests(&self) -> Vec<[u8; 32]> {
        let h = self.handle();
        h.wait_for_projections().await.unwrap();
        tally::projection::ProjectionName::ALL
            .iter()
            .map(|&p| h.projections().digest(p).unwrap())
            .collect()
    }

    /// Stops the engine gracefully and starts it again on the same directory.
    pub fn restart(&mut self) {
        self.engine.take().expect("running").shutdown();
        let engine = Engine::start(self.config.clone(), self.clock.clone()).expect("engine restarts");
        self.engine = Some(engine);
    }
}

impl Drop for TestEngine {
    fn drop(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown();
        }
    }
}

/// A gRPC server on 127.0.0.1:0 in front of a [`TestEngine`].
pub struct TestServer {
    pub engine: TestEngine,
    pub address: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_configured(|_, _| {}).await
    }

    /// A server whose settings `configure` changes first (rate limits, keys, destinations);
    /// the defaults are the test engine's data directory's, with [`test_auth`].
    pub async fn start_configured(configure: impl FnOnce(&mut tally::api::ApiSettings, &TestEngine)) -> Self {
        Self::start_in_front_of(TestEngine::start(), configure).await
    }

    /// A server in front of an engine the test started (on a simulated disk, say).
    pub async fn start_in_front_of(
        engine: TestEngine,
        configure: impl FnOnce(&mut tally::api::ApiSettings, &TestEngine),
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut settings =
            tally::api::ApiSettings::for_data_dir(&engine.config.data_dir).expect("the default settings");
        settings.auth = test_auth();
        configure(&mut settings, &engine);
        let slot = tally::api::EngineSlot::ready(engine.handle(), settings);
        let task = tokio::spawn(async move {
            tally::api::serve_slot(slot, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            engine,
            address,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.address))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn client(&self) -> tally::api::proto::ledger_client::LedgerClient<tonic::transport::Channel> {
        tally::api::proto::ledger_client::LedgerClient::new(self.channel().await)
    }

    /// Stops serving and waits for in-flight calls.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// The key ring of every test server: test servers in-process take it from
/// [`test_auth`], spawned ones from `TALLY_AUTH_KEYS`.
pub const TEST_KEYS: &str = "test-k1:000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The auth settings of test servers.
pub fn test_auth() -> tally::api::auth::AuthSettings {
    tally::api::auth::AuthSettings {
        keys: tally::api::auth::KeyRing::parse(TEST_KEYS).unwrap(),
        issuer: tally::api::auth::DEFAULT_ISSUER.into(),
        audience: tally::api::auth::DEFAULT_AUDIENCE.into(),
        clock_skew_seconds: tally::api::auth::DEFAULT_CLOCK_SKEW_SECONDS,
    }
}

/// An operator token for `subject` in `tenant` with `roles`, valid at any clock a test
/// sets (issued at 0, expiring in the far future).
pub fn token(tenant: &str, subject: &str, roles: &[&str]) -> String {
    let settings = test_auth();
    settings.sign(&tally::api::auth::Claims {
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        sub: subject.into(),
        tnt: tenant.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        iat: 0,
        exp: 1 << 40,
        sid: None,
    })
}

/// Every role: what the tests of the ledger's rules call with.
pub const ALL_ROLES: [&str; 6] = ["member", "staff", "service", "auditor", "admin", "server-admin"];

/// A request from `actor` in `tenant`, with every role's permissions.
pub fn request<T>(message: T, tenant: &str, actor: &str) -> tonic::Request<T> {
    with_token(message, &token(tenant, actor, &ALL_ROLES))
}

/// A request with this bearer token.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// SplitMix64: small and seedable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub const TENANTS: [&str; 2] = ["t1", "t2"];
pub const ACTORS: [&str; 3] = ["staff-1", "pos-2", "svc-3"];

/// `commands` random accepted commands over a few tenants, accounts, actors and
/// correlation ids, the clock moving 0–3 s between them and the sweeper running now and
/// then. Commands the ledger refuses are simply not in the log.
pub async fn random_workload(engine: &TestEngine, rng: &mut Rng, commands: u64) {
    let handle = engine.handle();
    let mut holds: Vec<(String, u64)> = Vec::new();
    for n in 0..commands {
        let tenant = TENANTS[rng.below(2) as usize];
        let actor = ACTORS[rng.below(3) as usize];
        let account = format!("p{}", rng.below(6));
        let mut meta = meta_as(tenant, actor, &format!("w{}-{n}", rng.0), "");
        meta.correlation_id = format!("order-{}", rng.below(20));
        let command = match rng.below(10) {
            0..=1 => Command::OpenAccount { account },
            2..=5 => Command::Award {
                account,
                source: tally::domain::AwardRequest::Promotion {
                    points: 1 + rng.below(3000),
                    promotion_id: "w".into(),
                    external_reward_id: format!("r-{}-{n}", rng.0),
                },
            },
            6..=7 => Command::Reserve {
                account,
                amount: 1 + rng.below(500),
                ttl_seconds: 1 + rng.below(30) as u32,
            },
            _ => match holds.get(rng.below(holds.len().max(1) as u64) as usize).cloned() {
                Some((tenant, hold_id)) => {
                    meta.tenant = tenant;
                    if rng.below(2) == 0 {
                        Command::Commit {
                            hold_id,
                            amount: Some(1),
                        }
                    } else {
                        Command::Release { hold_id }
                    }
                }
                None => Command::OpenAccount { account },
            },
        };
        let tenant = meta.tenant.clone();
        if let Ok(receipt) = handle.submit(meta, command).await {
            if let Some(tally::domain::Event::HoldReserved(r)) = receipt.records.first().map(|r| &r.event) {
                holds.push((tenant, r.hold_id));
            }
        }
        engine.clock.advance(rng.below(3_000_000));
        if rng.below(15) == 0 {
            handle.sweep().await.unwrap();
        }
    }
}

/// Reads a spawned `tally serve`'s stdout until it says it serves (recovery done) and
/// returns the gRPC address from its first line. The rest of stdout is left unread.
pub fn wait_until_serving(stdout: std::process::ChildStdout) -> String {
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("tally prints its address").expect("stdout is text");
    let address = first
        .split_whitespace()
        .nth(3)
        .expect("tally listening on ADDRESS")
        .to_string();
    loop {
        let line = lines.next().expect("tally serve ended before serving");
        if line.expect("stdout is text").starts_with("tally serving") {
            break;
        }
    }
    // Keep draining, so that the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    address
}

/// A codec that passes message bytes through, so one loop can call any method.
#[derive(Default, Clone)]
pub struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Calls `path` with `body` and `headers`; a server-streaming method succeeds once its
/// first message (or its clean end) arrives.
pub async fn raw_call(
    channel: &tonic::transport::Channel,
    path: &str,
    streaming: bool,
    body: Vec<u8>,
    headers: &[(&'static str, String)],
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|e| tonic::Status::unknown(e.to_string()))?;
    let mut request = tonic::Request::new(body);
    for (name, value) in headers {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    if streaming {
        let mut stream = grpc.server_streaming(request, path, Raw).await?.into_inner();
        stream.message().await?;
    } else {
        grpc.unary(request, path, Raw).await?;
    }
    Ok(())
}

/// Runs `tally` with `args` (its log quiet) and waits for it.
pub fn tally(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_LOG", "error")
        .output()
        .unwrap()
}

/// A spawned `tally serve`, killed when dropped, however the test ends, so that no server
/// outlives it.
pub struct Stop(pub std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tally serve` on a free port with the test key ring and `extra` flags, once it serves;
/// and its address.
pub fn serve(data_dir: &std::path::Path, extra: &[&str]) -> (Stop, String) {
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", ""])
        .args(extra)
        .arg("--data-dir")
        .arg(data_dir)
        .env("TALLY_AUTH_KEYS", TEST_KEYS)
        .env("TALLY_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let address = wait_until_serving(server.stdout.take().unwrap());
    (Stop(server), address)
}

/// A record for log tests: an opening every third sequence number, else an award, in seven
/// streams; `pad` more bytes in the award's reward id make records of uneven lengths.
pub fn sample_record(seq: u64, pad: usize) -> (tally::domain::Envelope, tally::domain::Event) {
    use tally::domain::event::{AccountOpened, AwardSource, PointsAwarded, PromotionSource};
    use tally::domain::{Effect, Envelope, Event};
    let envelope = Envelope {
        event_id: uuid::Uuid::from_u128(seq as u128),
        tenant: "t1".into(),
        stream: format!("p{}", seq % 7),
        actor: "tester".into(),
        idempotency_key: format!("k{seq}"),
        ..Envelope::default()
    };
    let event = if seq.is_multiple_of(3) {
        Event::AccountOpened(AccountOpened { tier: "Member".into() })
    } else {
        Event::PointsAwarded(PointsAwarded {
            points: seq,
            source: AwardSource::Promotion(PromotionSource {
                promotion_id: "p".into(),
                external_reward_id: format!("r{seq}{}", "x".repeat(pad)),
            }),
            effect: Effect {
                posted_before: 0,
                posted_after: seq,
                held_before: 0,
                held_after: 0,
                lifetime_before: 0,
                lifetime_after: seq,
                tier_before: "Member".into(),
                tier_after: "Member".into(),
            },
        })
    };
    (envelope, event)
}

/// Opens a projections store directly, as a test that damages or cuts one must. sled lets go
/// of its file lock on threads of its own after the last handle drops, so a store this
/// process just closed can still be locked for a moment: wait for it, for at most 5 s, as
/// the store's own open does.
pub fn open_sled_store(dir: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(dir) {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            opened => return opened.unwrap(),
        }
    }
}

/// A log that is a vector of records: a second reader behind `ReadLog`, checking nothing.
pub struct MemoryLog(pub Vec<Record>);

impl MemoryLog {
    fn records(&self, keep: impl Fn(&Record) -> bool + Send + 'static) -> Records {
        Box::new(self.0.clone().into_iter().filter(keep).map(Ok))
    }
}

impl ReadLog for MemoryLog {
    fn head(&self) -> Head {
        self.0.last().map_or(Head::default(), |r| Head {
            seq: r.seq,
            hash: r.hash,
            ts_us: r.ts_us,
        })
    }

    fn read_seqs(&self, seqs: &[u64]) -> Result<Vec<Record>, LogError> {
        let head = self.head().seq;
        seqs.iter()
            .map(|&seq| match seq {
                1.. if seq <= head => Ok(self.0[seq as usize - 1].clone()),
                _ => Err(LogError::NotInLog { seq, head }),
            })
            .collect()
    }

    fn iter_range(&self, from: u64, to: u64) -> Records {
        self.records(move |r| r.seq >= from && r.seq <= to)
    }

    fn iter_from_time(&self, ts_us: u64, to: u64) -> Records {
        self.records(move |r| r.ts_us >= ts_us && r.seq <= to)
    }

    fn committed_bytes(&self) -> u64 {
        0
    }
}

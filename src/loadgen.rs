//! `tally bench`: a load generator that drives a running server over gRPC, like any client
//! would, and reports throughput, latency percentiles (HDR histogram) and errors.
//!
//! Workloads: `award` (awards only) and `mixed` (award 50%, reserve 20%, commit 15%,
//! release 10%, reads 5%). Accounts are picked uniformly or by a Zipf law (a few hot
//! players). Every command has its own idempotency key, so a run can be repeated on the
//! same server. `ping` sends gRPC health checks instead (no credential, no engine): the
//! ceiling of the transport itself, with this client, on this machine.

use crate::api::proto::{self, ledger_client::LedgerClient};
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// How commands are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One command per RPC.
    Unary,
    /// `batch_size` commands per `SubmitBatch`.
    Batch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Award,
    Mixed,
    /// `grpc.health.v1.Health/Check`, unary only: what the RPC round trip costs alone.
    Ping,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    Uniform,
    /// Zipf with exponent 1: account k is picked with weight 1/k.
    Zipf,
}

/// A load run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub target: String,
    /// A bearer token for a service of the tenant the load runs in.
    pub token: String,
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub mode: Mode,
    pub batch_size: usize,
    pub workload: Workload,
    pub accounts: u64,
    pub distribution: Distribution,
    pub seed: u64,
    /// Commands a second over all clients, or as fast as the server answers. With a rate,
    /// each client sends on a schedule and a request's latency counts from when it was due
    /// (so a stalled server shows in the percentiles rather than slowing the load).
    pub rate: Option<f64>,
}

/// What a run measured.
#[derive(Debug)]
pub struct BenchReport {
    pub commands: u64,
    pub rpcs: u64,
    pub seconds: f64,
    /// RPC latency in µs.
    pub latency: Histogram<u64>,
    /// Failed commands by gRPC code (or batch error reason).
    pub errors: BTreeMap<String, u64>,
    /// The first message seen for each of them.
    pub first_messages: BTreeMap<String, String>,
}

impl BenchReport {
    pub fn commands_per_second(&self) -> f64 {
        self.commands as f64 / self.seconds
    }

    pub fn render(&self, config: &BenchConfig) -> String {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unit = if config.workload == Workload::Ping {
            "health checks"
        } else {
            "commands"
        };
        format!(
            "workload {:?}, {:?}{}, {} clients, {} accounts ({:?}){}, {:.1} s measured\n\
             throughput: {:.0} {unit}/s ({:.0} RPCs/s)\n\
             RPC latency (ms): p50 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n\
             errors: {errors}",
            config.workload,
            config.mode,
            if config.mode == Mode::Batch {
                format!(" of {}", config.batch_size)
            } else {
                String::new()
            },
            config.clients,
            config.accounts,
            config.distribution,
            match config.rate {
                Some(rate) => format!(", paced at {rate:.0} commands/s"),
                None => String::new(),
            },
            self.seconds,
            self.commands_per_second(),
            self.rpcs as f64 / self.seconds,
            us(0.5),
            us(0.99),
            us(0.999),
            self.latency.max() as f64 / 1000.0,
        )
    }
}

/// SplitMix64, per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks accounts.
struct Picker {
    accounts: u64,
    /// Cumulative Zipf weights, for a binary search.
    cdf: Option<Vec<f64>>,
}

impl Picker {
    fn new(accounts: u64, distribution: Distribution) -> Self {
        let cdf = (distribution == Distribution::Zipf).then(|| {
            let mut total = 0.0;
            let mut cdf: Vec<f64> = (1..=accounts)
                .map(|k| {
                    total += 1.0 / k as f64;
                    total
                })
                .collect();
            cdf.iter_mut().for_each(|c| *c /= total);
            cdf
        });
        Self { accounts, cdf }
    }

    fn pick(&self, rng: &mut Rng) -> u64 {
        match &self.cdf {
            None => rng.next() % self.accounts,
            Some(cdf) => (cdf.partition_point(|&c| c < rng.unit()) as u64).min(self.accounts - 1),
        }
    }
}

fn account_id(n: u64) -> String {
    format!("bench-{n}")
}

/// A request with the run's credential (checked when the run starts).
fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    crate::operator::bearer(message, token).expect("the token was checked at the start of the run")
}

/// Opens every account (idempotent) and funds it, in batches.
async fn prepare(config: &BenchConfig, client: &mut LedgerClient<Channel>, run: &str) -> Result<(), tonic::Status> {
    use proto::batch_command::Command as C;
    let ids: Vec<u64> = (0..config.accounts).collect();
    for chunk in ids.chunks(2000) {
        let mut commands = Vec::with_capacity(chunk.len() * 2);
        for &n in chunk {
            let open = proto::OpenAccountRequest {
                account_id: account_id(n),
                idempotency_key: format!("bench-open-{n}"),
                ..Default::default()
            };
            commands.push(proto::BatchCommand {
                command: Some(C::OpenAccount(open)),
            });
            commands.push(proto::BatchCommand {
                command: Some(C::Award(award(n, &format!("{run}-fund-{n}"), 1_000_000))),
            });
        }
        client
            .submit_batch(authorized(proto::SubmitBatchRequest { commands }, &config.token))
            .await?;
    }
    Ok(())
}

fn award(account: u64, key: &str, points: u64) -> proto::AwardRequest {
    proto::AwardRequest {
        account_id: account_id(account),
        idempotency_key: key.to_string(),
        source: Some(proto::award_request::Source::Promotion(proto::Promotion {
            points,
            promotion_id: "bench".into(),
            external_reward_id: key.to_string(),
        })),
        ..Default::default()
    }
}

/// One client's share of the load.
struct Client {
    ledger: LedgerClient<Channel>,
    health: HealthClient<Channel>,
    rng: Rng,
    run: String,
    id: usize,
    n: u64,
    /// Holds this client placed and has not resolved yet.
    holds: Vec<u64>,
}

impl Client {
    fn key(&mut self) -> String {
        self.n += 1;
        format!("{}-{}-{}", self.run, self.id, self.n)
    }

    /// The next command of the workload, as a batch command (unary sends unwrap it).
    fn next_command(&mut self, config: &BenchConfig, picker: &Picker) -> proto::batch_command::Command {
        use proto::batch_command::Command as C;
        let account = picker.pick(&mut self.rng);
        let roll = if config.workload == Workload::Award {
            0
        } else {
            self.rng.next() % 100
        };
        let key = self.key();
        match roll {
            50..=69 => C::Reserve(proto::ReserveRequest {
                account_id: account_id(account),
                idempotency_key: key,
                amount: 1 + self.rng.next() % 10,
                ttl_seconds: 300,
                ..Default::default()
            }),
            70..=84 if !self.holds.is_empty() => C::Commit(proto::CommitRequest {
                hold_id: self.holds.swap_remove(0),
                idempotency_key: key,
                ..Default::default()
            }),
            85..=94 if !self.holds.is_empty() => C::Release(proto::ReleaseRequest {
                hold_id: self.holds.swap_remove(0),
                idempotency_key: key,
                ..Default::default()
            }),
            _ => C::Award(award(account, &key, 1 + self.rng.next() % 100)),
        }
    }
}

/// Runs the load and reports what the measured window saw.
pub async fn run(config: BenchConfig) -> Result<BenchReport, Box<dyn std::error::Error>> {
    crate::operator::bearer((), &config.token)?;
    let endpoint = tonic::transport::Endpoint::from_shared(config.target.clone())?;
    let run = format!(
        "r{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    if config.workload != Workload::Ping {
        let mut setup = LedgerClient::new(endpoint.connect().await?);
        prepare(&config, &mut setup, &run).await?;
    }
    let picker = std::sync::Arc::new(Picker::new(config.accounts, config.distribution));
    let start = Instant::now() + config.warmup;
    let end = start + config.duration;
    let mut tasks = Vec::new();
    for id in 0..config.clients {
        let channel = endpoint.connect().await?;
        let (ledger, health) = (LedgerClient::new(channel.clone()), HealthClient::new(channel));
        let (config, picker, run) = (config.clone(), picker.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client {
                ledger,
                health,
                rng: Rng(config.seed ^ (id as u64).wrapping_mul(0x9E37_79B9)),
                run,
                id,
                n: 0,
                holds: Vec::new(),
            };
            drive(&mut client, &config, &picker, start, end).await
        }));
    }
    let mut report = BenchReport {
        commands: 0,
        rpcs: 0,
        seconds: config.duration.as_secs_f64(),
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: BTreeMap::new(),
        first_messages: BTreeMap::new(),
    };
    for task in tasks {
        let part = task.await?;
        report.commands += part.commands;
        report.rpcs += part.rpcs;
        report.latency.add(&part.latency)?;
        for (code, count) in part.errors {
            *report.errors.entry(code).or_default() += count;
        }
        for (code, message) in part.first_messages {
            report.first_messages.entry(code).or_insert(message);
        }
    }
    Ok(report)
}

/// Sends commands until `end`; counts only what completes inside `[start, end)`.
async fn drive(
    client: &mut Client,
    config: &BenchConfig,
    picker: &Picker,
    start: Instant,
    end: Instant,
) -> BenchReport {
    let mut part = BenchReport {
        commands: 0,
        rpcs: 0,
        seconds: 0.0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        errors: BTreeMap::new(),
        first_messages: BTreeMap::new(),
    };
    // Under a rate, this client's share: one RPC every `every`, the clients' schedules
    // spread evenly across the first interval.
    let per_rpc = match config.mode {
        Mode::Unary => 1.0,
        Mode::Batch => config.batch_size as f64,
    };
    let every = config
        .rate
        .map(|rate| Duration::from_secs_f64(per_rpc * config.clients as f64 / rate.max(f64::MIN_POSITIVE)));
    let mut due =
        Instant::now() + every.map_or(Duration::ZERO, |e| e.mul_f64(client.id as f64 / config.clients as f64));
    while Instant::now() < end {
        let sent = match every {
            Some(every) => {
                tokio::time::sleep_until(due.into()).await;
                let sent = due;
                due += every;
                sent
            }
            None => Instant::now(),
        };
        if sent >= end {
            break;
        }
        let outcome = match config.mode {
            Mode::Unary => unary(client, config, picker).await,
            Mode::Batch => batch(client, config, picker).await,
        };
        let done = Instant::now();
        if done < start || done >= end {
            continue;
        }
        part.rpcs += 1;
        part.latency
            .saturating_record(done.duration_since(sent).as_micros().max(1) as u64);
        let (commands, errors) = outcome;
        part.commands += commands;
        for (code, message) in errors {
            *part.errors.entry(code.clone()).or_default() += 1;
            part.first_messages.entry(code).or_insert(message);
        }
    }
    part
}

/// An error code and its message.
type Failure = (String, String);

fn failure(status: &tonic::Status) -> Failure {
    (format!("{:?}", status.code()), status.message().to_string())
}

/// One unary RPC; returns commands done and failures.
async fn unary(client: &mut Client, config: &BenchConfig, picker: &Picker) -> (u64, Vec<Failure>) {
    use proto::batch_command::Command as C;
    let token = &config.token;
    if config.workload == Workload::Ping {
        let result = client.health.check(HealthCheckRequest::default()).await;
        return (1, result.err().as_ref().map(failure).into_iter().collect());
    }
    if config.workload == Workload::Mixed && client.rng.next() % 100 >= 95 {
        let account = account_id(picker.pick(&mut client.rng));
        let result = client
            .ledger
            .get_account(authorized(proto::GetAccountRequest { account_id: account }, token))
            .await;
        return (1, result.err().as_ref().map(failure).into_iter().collect());
    }
    let command = client.next_command(config, picker);
    let result = match command {
        C::Award(r) => client.ledger.award(authorized(r, token)).await.map(|_| None),
        C::Reserve(r) => client
            .ledger
            .reserve(authorized(r, token))
            .await
            .map(|r| r.into_inner().hold.map(|h| h.hold_id)),
        C::Commit(r) => client.ledger.commit(authorized(r, token)).await.map(|_| None),
        C::Release(r) => client.ledger.release(authorized(r, token)).await.map(|_| None),
        C::OpenAccount(r) => client.ledger.open_account(authorized(r, token)).await.map(|_| None),
    };
    match result {
        Ok(hold) => {
            client.holds.extend(hold);
            (1, Vec::new())
        }
        Err(status) => (1, vec![failure(&status)]),
    }
}

/// One batch RPC of `batch_size` commands.
async fn batch(client: &mut Client, config: &BenchConfig, picker: &Picker) -> (u64, Vec<Failure>) {
    use proto::batch_result::Result as R;
    let commands: Vec<proto::BatchCommand> = (0..config.batch_size)
        .map(|_| proto::BatchCommand {
            command: Some(client.next_command(config, picker)),
        })
        .collect();
    let request = authorized(proto::SubmitBatchRequest { commands }, &config.token);
    match client.ledger.submit_batch(request).await {
        Ok(response) => {
            let mut errors = Vec::new();
            for result in response.into_inner().results {
                match result.result {
                    Some(R::Reserve(r)) => client.holds.extend(r.hold.map(|h| h.hold_id)),
                    Some(R::Error(e)) => errors.push((e.reason, e.message)),
                    _ => {}
                }
            }
            (config.batch_size as u64, errors)
        }
        Err(status) => (config.batch_size as u64, vec![failure(&status); config.batch_size]),
    }
}

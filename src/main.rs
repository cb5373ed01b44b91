//! `tally`: the ledger server and its offline tools.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tally::api::EngineSlot;
use tally::config::{Config, DurabilitySetting, LogFormat as ConfigLogFormat, OnCorruptLog, Settings};
use tally::engine::{sweeper, Engine, EngineError, SystemClock};
use tally::log::{self, LogError};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a loyalty-points ledger on an append-only, blake3-chained log"
)]
struct Cli {
    /// Log lines for people (human, the default) or one JSON object per line (json); which
    /// lines come from TALLY_LOG (e.g. info, tally=debug).
    #[arg(long, global = true, env = "TALLY_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the ledger server (gRPC) on a data directory.
    Serve(Box<ServeArgs>),
    /// Check a data directory's log offline: every record's hash and the whole chain.
    /// Exits 0 if sound, 2 on corruption (naming the bad sequence number), 3 if the log
    /// does not contain the digest given with --expect.
    Verify {
        /// The data directory (the one `serve` was given).
        data_dir: PathBuf,
        /// A digest saved earlier, SEQUENCE:HASH (as `verify` prints it): the log must still
        /// hold that record with that chain hash, i.e. nothing up to it was rewritten or lost.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Print a window of events (reads the log only; safe beside a running server).
    Replay(ReplayArgs),
    /// Fold projections again from the log, compare with the live ones, and swap them in.
    /// Needs the server stopped (use the StartRebuild RPC while it runs).
    Rebuild {
        data_dir: PathBuf,
        /// One projection (accounts, holds, history, idempotency, correlation, actor).
        #[arg(long)]
        projection: Option<String>,
        /// Compare only; exit 1 if a projection differs from the fold of the log.
        #[arg(long)]
        verify: bool,
        /// Start from the latest projection snapshot file instead of sequence 1.
        #[arg(long)]
        from_snapshot: bool,
    },
    /// Load a running server over gRPC and report throughput, latency percentiles and errors.
    Bench(BenchArgs),
    /// Send external events from a JSON-lines file to a running server (docs/INGEST.md).
    /// Safe to run again: events already accepted are answered as duplicates.
    Ingest {
        /// One event per line: {"source", "external_id", "type", "payload": {…}}.
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Inspect and operate the dead-letter queue of a running server.
    Dlq {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Operator tokens, made offline with the server's key ring.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// API keys of a running server, for services that sign their calls (admin).
    Keys {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Webhook endpoints and their deliveries on a running server (admin; docs/DELIVERIES.md).
    Deliveries {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Who changed what, when and why (reads the log only; safe beside a running server).
    Audit {
        data_dir: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[command(subcommand)]
        query: AuditQuery,
    },
}

/// The server a client command talks to, and as whom.
#[derive(clap::Args)]
struct TargetArgs {
    /// The server, as a URL.
    #[arg(long, global = true, env = "TALLY_TARGET", default_value = "http://127.0.0.1:50051")]
    target: String,
    #[command(flatten)]
    credential: CredentialArgs,
}

/// The credential of a client command: a token, or an operator token made from the key
/// ring (which only whoever can read the server's key file can do).
#[derive(clap::Args, Clone)]
struct CredentialArgs {
    /// A bearer token (`tally token issue`, or a session's); its tenant and subject are the
    /// caller's.
    #[arg(long, global = true, env = "TALLY_TOKEN")]
    token: Option<String>,
    /// Without --token: make a short operator token with the key ring in this file (or
    /// TALLY_AUTH_KEYS).
    #[arg(
        long,
        global = true,
        env = "TALLY_AUTH_KEYS_FILE",
        default_value = "tally-data/auth.keys"
    )]
    keys: PathBuf,
    /// Without --token: the tenant of the operator token.
    #[arg(long, global = true, env = "TALLY_TENANT", default_value = "default")]
    tenant: String,
    /// Without --token: the subject of the operator token, recorded as the actor.
    #[arg(long, global = true, env = "TALLY_ACTOR", default_value = "operator")]
    actor: String,
}

/// How long an operator token a client command makes for itself lives: the run of one
/// command, with room for a slow one.
const CLIENT_TOKEN_TTL_SECONDS: u64 = 3_600;

impl CredentialArgs {
    /// The token to send: the one given, or an operator token with `roles`.
    fn token(&self, roles: &[tally::domain::access::Role]) -> Result<String, String> {
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let settings = auth_settings(&self.keys)?;
        Ok(tally::api::auth::operator_token(
            &settings,
            &self.tenant,
            &self.actor,
            roles,
            unix_seconds(),
            CLIENT_TOKEN_TTL_SECONDS,
        ))
    }
}

/// The key ring for making tokens: `TALLY_AUTH_KEYS`, else the file (never made here: a
/// new ring would sign tokens the server does not know). Issuer and audience from
/// `TALLY_AUTH_ISSUER` / `TALLY_AUTH_AUDIENCE` when the server is told others.
fn auth_settings(keys: &Path) -> Result<tally::api::auth::AuthSettings, String> {
    use tally::api::auth::{AuthSettings, KeyRing, DEFAULT_AUDIENCE, DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_ISSUER};
    let ring = match std::env::var("TALLY_AUTH_KEYS") {
        Ok(text) if !text.trim().is_empty() => KeyRing::parse(&text).map_err(|e| format!("TALLY_AUTH_KEYS: {e}"))?,
        _ => {
            let text = std::fs::read_to_string(keys).map_err(|e| {
                format!(
                    "no credential: pass --token (or TALLY_TOKEN), or --keys with the server's key ring ({}: {e})",
                    keys.display()
                )
            })?;
            KeyRing::parse(&text).map_err(|e| format!("{}: {e}", keys.display()))?
        }
    };
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    Ok(AuthSettings {
        keys: ring,
        issuer: env("TALLY_AUTH_ISSUER", DEFAULT_ISSUER),
        audience: env("TALLY_AUTH_AUDIENCE", DEFAULT_AUDIENCE),
        clock_skew_seconds: DEFAULT_CLOCK_SKEW_SECONDS,
    })
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print an operator token (a JWT signed with the key ring's first key). Not a session:
    /// it cannot be logged out, so keep it short; rotating the key voids it.
    Issue {
        #[arg(long)]
        tenant: String,
        /// Who the token is for; recorded as the actor of what it does.
        #[arg(long)]
        subject: String,
        /// member, staff, service, auditor, admin (a tenant's) or server-admin (the
        /// server's: rebuilds, snapshots, every tenant's operations); repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// At most 86400.
        #[arg(long, default_value_t = 3600)]
        ttl_seconds: u64,
        /// The server's key ring file.
        #[arg(long, env = "TALLY_AUTH_KEYS_FILE", default_value = "tally-data/auth.keys")]
        keys: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// The tenant's endpoints.
    Endpoints,
    /// Register an endpoint; prints its id and signing secret (shown once).
    Register {
        #[arg(long)]
        url: String,
        /// Event kinds, comma-separated (points.awarded,hold.committed,…); none: all.
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
        /// at-most-once, at-least-once or exactly-once.
        #[arg(long, default_value = "at-least-once")]
        semantics: String,
        /// Wait for the receiver's Ack (exactly-once always does).
        #[arg(long)]
        explicit_ack: bool,
        /// Per account, one delivery at a time, in order.
        #[arg(long)]
        ordered: bool,
        #[arg(long, default_value_t = 0)]
        max_attempts: u32,
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// An endpoint's deliveries, oldest event first.
    List {
        #[arg(long)]
        endpoint: u64,
        /// pending, failed, awaiting_ack, delivered, acked, failed_permanent, delivering.
        #[arg(long)]
        state: Option<String>,
        /// Events at or after (RFC 3339 UTC or µs since the epoch).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One delivery and its attempts (id: <endpoint>:<event sequence>).
    Show { delivery_id: String },
    /// A new round of attempts for a failed delivery.
    Retry {
        delivery_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Retry every permanently failed delivery of an endpoint whose event is in a window.
    Redrive {
        #[arg(long)]
        endpoint: u64,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delivered, failed, success rate, latency, pending.
    Stats {
        #[arg(long)]
        endpoint: u64,
    },
    Pause {
        #[arg(long)]
        endpoint: u64,
    },
    Resume {
        #[arg(long)]
        endpoint: u64,
    },
    Delete {
        #[arg(long)]
        endpoint: u64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make an API key; prints its id and secret (shown once).
    Create {
        #[arg(long)]
        name: String,
        /// service, auditor or admin.
        #[arg(long, default_value = "service")]
        role: String,
        /// A retry with the same key answers the same API key.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// The tenant's API keys (ids, names, roles, fingerprints; never secrets).
    List,
    /// Refuse calls signed with this key from now on.
    Revoke {
        key_id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// Letters by filter; each part is optional.
#[derive(clap::Args)]
struct LetterFilterArgs {
    /// member.enrolled, points.award, rating_slip.completed or points.reverse.
    #[arg(long = "type")]
    type_name: Option<String>,
    #[arg(long)]
    member: Option<String>,
    /// Received at or after (RFC 3339 UTC or µs since the epoch).
    #[arg(long)]
    from: Option<String>,
    /// Received at or before.
    #[arg(long)]
    to: Option<String>,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Letters, oldest receipt first.
    List {
        #[command(flatten)]
        filter: LetterFilterArgs,
        /// Only letters whose cause contains this.
        #[arg(long, default_value = "")]
        cause: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Also events waiting for a retry.
        #[arg(long)]
        include_retrying: bool,
    },
    /// One received event: where it stands, and the letter in full.
    Show { receipt: u64 },
    /// Re-drive one letter's sequence (from its head through it) or every sequence with a
    /// letter matching the filter, in order.
    Redrive {
        /// A letter's receipt number; without it, the filter selects.
        receipt: Option<u64>,
        #[command(flatten)]
        filter: LetterFilterArgs,
        /// Letters to re-drive at most.
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// Idempotency key: the same key again replays the first re-drive. A fresh one is
        /// made (and printed) if none is given.
        #[arg(long)]
        key: Option<String>,
    },
    /// Remove a letter without applying it; the reason is recorded in the log.
    Discard {
        receipt: u64,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        key: Option<String>,
    },
    /// The pipeline's counters and the queue's depth.
    Stats,
}

#[derive(Subcommand)]
enum AuditQuery {
    /// Every event of an account.
    History { account: String },
    /// Every event with a correlation id.
    Correlation { correlation_id: String },
    /// Everything an actor did, optionally in a time window.
    Actor {
        actor: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
    },
    /// The events an idempotency key (and scope) produced.
    Key {
        key: String,
        #[arg(long, default_value = "")]
        scope: String,
    },
    /// An account's balances and active holds as of a sequence number or a time.
    AsOf {
        account: String,
        #[arg(long, conflicts_with = "time", required_unless_present = "time")]
        sequence: Option<u64>,
        /// RFC 3339 UTC or µs since the epoch.
        #[arg(long)]
        time: Option<String>,
    },
}

#[derive(Parser)]
struct ReplayArgs {
    data_dir: PathBuf,
    /// First sequence number of the window.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    from_seq: Option<u64>,
    /// End of the window (exclusive).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    to_seq: Option<u64>,
    /// Start of the window: RFC 3339 UTC (2026-11-22T05:00:00Z) or µs since the epoch.
    #[arg(long)]
    from: Option<String>,
    /// End of the window (exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Event kinds (points.awarded, hold.committed, …); repeatable.
    #[arg(long)]
    kind: Vec<String>,
    #[arg(long)]
    account: Vec<String>,
    #[arg(long)]
    correlation: Vec<String>,
    #[arg(long)]
    actor: Vec<String>,
    #[arg(long)]
    tenant: Option<String>,
    /// Stop after this many events.
    #[arg(long, default_value_t = 0)]
    max: u64,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
}

#[derive(Parser)]
struct BenchArgs {
    /// The server, as a URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// Without --token, the load runs as a service of --tenant (its accounts are
    /// bench-0, bench-1, …).
    #[command(flatten)]
    credential: CredentialArgs,
    /// Concurrent clients, each with its own connection, one request in flight each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Load before the measured window starts.
    #[arg(long, default_value_t = 2)]
    warmup_seconds: u64,
    #[arg(long, value_enum, default_value_t = ModeArg::Unary)]
    mode: ModeArg,
    /// Commands per SubmitBatch in batch mode (at most 4096).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    #[arg(long, value_enum, default_value_t = WorkloadArg::Award)]
    workload: WorkloadArg,
    #[arg(long, default_value_t = 10_000)]
    accounts: u64,
    #[arg(long, value_enum, default_value_t = DistributionArg::Uniform)]
    distribution: DistributionArg,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Unary,
    Batch,
}

#[derive(Clone, Copy, ValueEnum)]
enum WorkloadArg {
    /// Awards only.
    Award,
    /// Award 50%, reserve 20%, commit 15%, release 10%, reads 5%.
    Mixed,
    /// Health checks, unary: the round trip alone (no credential, no engine), the ceiling
    /// the other workloads are measured against.
    Ping,
}

#[derive(Clone, Copy, ValueEnum)]
enum DistributionArg {
    Uniform,
    Zipf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Aligned columns for people.
    Table,
}

/// Every setting of `serve` is a key of the configuration file (docs/CONFIG.md); a flag or
/// its environment variable overrides the file, which overrides the default.
#[derive(Parser)]
struct ServeArgs {
    /// A TOML configuration file (docs/CONFIG.md lists every key and its default).
    #[arg(long, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, environment, flags) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// server.listen: address of the gRPC API; port 0 picks a free port (printed on start).
    #[arg(long, env = "TALLY_LISTEN")]
    listen: Option<String>,
    /// server.on_corrupt_log: stay (health NOT_SERVING, calls DATA_LOSS) or exit (code 2).
    #[arg(long, env = "TALLY_ON_CORRUPT_LOG", value_enum)]
    on_corrupt_log: Option<OnCorruptArg>,
    /// server.shutdown_grace_seconds: how long a stop may drain and snapshot before a hard stop.
    #[arg(long, env = "TALLY_SHUTDOWN_GRACE_SECONDS")]
    shutdown_grace_seconds: Option<u64>,
    /// storage.data_dir: where the log and the projections live.
    #[arg(long, env = "TALLY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// storage.durability: sync acknowledges only after fdatasync; buffered skips it, and
    /// a machine crash can lose acknowledged commands (benchmarks only).
    #[arg(long, env = "TALLY_DURABILITY", value_enum)]
    durability: Option<DurabilityArg>,
    /// storage.segment_mib: size of each preallocated log segment, in MiB.
    #[arg(long, env = "TALLY_SEGMENT_MIB")]
    segment_mib: Option<u64>,
    /// ledger.tiers: tiers by lifetime points earned, ascending, the first at 0.
    #[arg(long, env = "TALLY_TIERS")]
    tiers: Option<String>,
    /// ledger.rate_table_version: version name of the accrual rate table.
    #[arg(long, env = "TALLY_RATE_TABLE_VERSION")]
    rate_table_version: Option<String>,
    /// ledger.points_per_theo_dollar_milli: points per theo dollar, in thousandths.
    #[arg(long, env = "TALLY_POINTS_PER_THEO_DOLLAR_MILLI")]
    points_per_theo_dollar_milli: Option<u64>,
    /// engine.inbox_capacity: requests waiting before callers hear RESOURCE_EXHAUSTED.
    #[arg(long, env = "TALLY_INBOX_CAPACITY")]
    inbox_capacity: Option<usize>,
    /// engine.snapshot_every_records: records between write-state snapshots.
    #[arg(long, env = "TALLY_SNAPSHOT_EVERY_RECORDS")]
    snapshot_every_records: Option<u64>,
    /// engine.projection_snapshot_every_records: records between projection snapshot files (0: off).
    #[arg(long, env = "TALLY_PROJECTION_SNAPSHOT_EVERY_RECORDS")]
    projection_snapshot_every_records: Option<u64>,
    /// engine.sweep_interval_ms: how often the sweeper expires holds past their deadline.
    #[arg(long, env = "TALLY_SWEEP_INTERVAL_MS")]
    sweep_interval_ms: Option<u64>,
    /// ingest.max_attempts: attempts before a transiently failing external event is dead-lettered.
    #[arg(long, env = "TALLY_INGEST_MAX_ATTEMPTS")]
    ingest_max_attempts: Option<u32>,
    /// ingest.retry_base_delay_ms: delay before the second attempt; doubled per retry.
    #[arg(long, env = "TALLY_INGEST_RETRY_BASE_DELAY_MS")]
    ingest_retry_base_delay_ms: Option<u64>,
    /// ingest.retry_max_delay_ms: longest delay between attempts.
    #[arg(long, env = "TALLY_INGEST_RETRY_MAX_DELAY_MS")]
    ingest_retry_max_delay_ms: Option<u64>,
    /// ingest.dedup_window_seconds: same content from the same source within it is a duplicate.
    #[arg(long, env = "TALLY_INGEST_DEDUP_WINDOW_SECONDS")]
    ingest_dedup_window_seconds: Option<u64>,
    /// ingest.dead_letters_per_member_max: letters one member may have in the dead-letter queue.
    #[arg(long, env = "TALLY_INGEST_DEAD_LETTERS_PER_MEMBER_MAX")]
    ingest_dead_letters_per_member_max: Option<u64>,
    /// ingest.dead_letters_max: letters in one tenant's dead-letter queue.
    #[arg(long, env = "TALLY_INGEST_DEAD_LETTERS_MAX")]
    ingest_dead_letters_max: Option<u64>,
    /// links.base_url: the base of the deep links CreateLink answers ({base_url}/link?linkId=…&token=…).
    #[arg(long, env = "TALLY_LINKS_BASE_URL")]
    links_base_url: Option<String>,
    /// auth.keys_file: the key ring that signs tokens and API keys ("": <data_dir>/auth.keys).
    #[arg(long, env = "TALLY_AUTH_KEYS_FILE")]
    auth_keys_file: Option<String>,
    /// auth.issuer: the iss of tokens this server makes and accepts.
    #[arg(long, env = "TALLY_AUTH_ISSUER")]
    auth_issuer: Option<String>,
    /// auth.audience: the aud of tokens this server makes and accepts.
    #[arg(long, env = "TALLY_AUTH_AUDIENCE")]
    auth_audience: Option<String>,
    /// auth.clock_skew_seconds: how far a token's times may be off the server's clock.
    #[arg(long, env = "TALLY_AUTH_CLOCK_SKEW_SECONDS")]
    auth_clock_skew_seconds: Option<u64>,
    /// deliveries.poll_interval_ms: how often the delivery worker looks for deliveries that are due.
    #[arg(long, env = "TALLY_DELIVERIES_POLL_INTERVAL_MS")]
    deliveries_poll_interval_ms: Option<u64>,
    /// deliveries.allow_private_networks: endpoints may point at private, loopback and link-local addresses.
    #[arg(long, env = "TALLY_DELIVERIES_ALLOW_PRIVATE_NETWORKS")]
    deliveries_allow_private_networks: Option<bool>,
    /// deliveries.ca_file: PEM certificates of authorities trusted for https endpoints besides the built-in roots.
    #[arg(long, env = "TALLY_DELIVERIES_CA_FILE")]
    deliveries_ca_file: Option<String>,
    /// limits.tenant_commands_per_second: mutating commands one tenant may send a second (0: no limit).
    #[arg(long, env = "TALLY_TENANT_COMMANDS_PER_SECOND")]
    tenant_commands_per_second: Option<u64>,
    /// limits.tenant_burst: commands a tenant may send at once after a quiet spell (0: one second's worth).
    #[arg(long, env = "TALLY_TENANT_BURST")]
    tenant_burst: Option<u64>,
    /// limits.max_calls_in_flight: calls in flight at once before more are refused as overload (0: no bound).
    #[arg(long, env = "TALLY_MAX_CALLS_IN_FLIGHT")]
    max_calls_in_flight: Option<u64>,
    /// limits.max_streams_per_connection: streams one HTTP/2 connection may have open at once.
    #[arg(long, env = "TALLY_MAX_STREAMS_PER_CONNECTION")]
    max_streams_per_connection: Option<u32>,
    /// metrics.listen: address of the Prometheus endpoint (GET /metrics); "" turns it off.
    #[arg(long, env = "TALLY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// log.filter: which log lines, as a tracing filter (TALLY_LOG also sets it).
    #[arg(long, env = "TALLY_LOG")]
    log_filter: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnCorruptArg {
    Stay,
    Exit,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffered,
}

/// mimalloc instead of the C library's malloc: the sequencer allocates each record's strings
/// and frees them on other threads once answered, and glibc's arenas spent a fifth of the
/// sequencer's time in `malloc`, `free` and consolidation; mimalloc's per-thread free
/// lists took the in-process durable batched award rate from 119k to 145k a second
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Serve(args) = cli.command {
        return serve(*args, cli.log_format);
    }
    let filter = std::env::var("TALLY_LOG").unwrap_or_else(|_| "info".into());
    init_logs(cli.log_format.unwrap_or(LogFormat::Human), &filter);
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled above"),
        Cmd::Verify { data_dir, expect } => verify(&data_dir, expect.as_deref()),
        Cmd::Replay(args) => offline::replay(args),
        Cmd::Bench(args) => bench(args),
        Cmd::Ingest { file, target } => client::ingest(&file, target),
        Cmd::Dlq { target, command } => client::dlq(target, command),
        Cmd::Token {
            command:
                TokenCommand::Issue {
                    tenant,
                    subject,
                    roles,
                    ttl_seconds,
                    keys,
                },
        } => issue_token(&tenant, &subject, &roles, ttl_seconds, &keys),
        Cmd::Keys { target, command } => client::keys(target, command),
        Cmd::Deliveries { target, command } => client::deliveries(target, command),
        Cmd::Rebuild {
            data_dir,
            projection,
            verify,
            from_snapshot,
        } => offline::rebuild(&data_dir, projection.as_deref(), verify, from_snapshot),
        Cmd::Audit {
            data_dir,
            tenant,
            format,
            query,
        } => offline::audit(&data_dir, tenant, format, query),
    }
}

/// Log lines on stderr: `format`, filtered by `filter` (a tracing directive). Command spans
/// (debug level) are logged when they close, with their fields: correlation id, tenant,
/// actor, outcome and sequence numbers.
fn init_logs(format: LogFormat, filter: &str) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("tally: log filter {filter:?} is not valid ({error}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
}

/// The effective configuration: defaults, then the file, then environment and flags.
fn effective_config(args: &ServeArgs, log_format: Option<LogFormat>) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let c = &mut config;
    if let Some(v) = &args.listen {
        c.server.listen = v.clone();
    }
    if let Some(v) = args.shutdown_grace_seconds {
        c.server.shutdown_grace_seconds = v;
    }
    if let Some(v) = args.on_corrupt_log {
        c.server.on_corrupt_log = match v {
            OnCorruptArg::Stay => OnCorruptLog::Stay,
            OnCorruptArg::Exit => OnCorruptLog::Exit,
        };
    }
    if let Some(v) = &args.data_dir {
        c.storage.data_dir = v.clone();
    }
    if let Some(v) = args.durability {
        c.storage.durability = match v {
            DurabilityArg::Sync => DurabilitySetting::Sync,
            DurabilityArg::Buffered => DurabilitySetting::Buffered,
        };
    }
    if let Some(v) = args.segment_mib {
        c.storage.segment_mib = v;
    }
    if let Some(v) = &args.tiers {
        c.ledger.tiers = v.clone();
    }
    if let Some(v) = &args.rate_table_version {
        c.ledger.rate_table_version = v.clone();
    }
    if let Some(v) = args.points_per_theo_dollar_milli {
        c.ledger.points_per_theo_dollar_milli = v;
    }
    if let Some(v) = args.inbox_capacity {
        c.engine.inbox_capacity = v;
    }
    if let Some(v) = args.snapshot_every_records {
        c.engine.snapshot_every_records = v;
    }
    if let Some(v) = args.projection_snapshot_every_records {
        c.engine.projection_snapshot_every_records = v;
    }
    if let Some(v) = args.sweep_interval_ms {
        c.engine.sweep_interval_ms = v;
    }
    if let Some(v) = args.ingest_max_attempts {
        c.ingest.max_attempts = v;
    }
    if let Some(v) = args.ingest_retry_base_delay_ms {
        c.ingest.retry_base_delay_ms = v;
    }
    if let Some(v) = args.ingest_retry_max_delay_ms {
        c.ingest.retry_max_delay_ms = v;
    }
    if let Some(v) = args.ingest_dedup_window_seconds {
        c.ingest.dedup_window_seconds = v;
    }
    if let Some(v) = args.ingest_dead_letters_per_member_max {
        c.ingest.dead_letters_per_member_max = v;
    }
    if let Some(v) = args.ingest_dead_letters_max {
        c.ingest.dead_letters_max = v;
    }
    if let Some(v) = &args.links_base_url {
        c.links.base_url = v.clone();
    }
    if let Some(v) = &args.auth_keys_file {
        c.auth.keys_file = v.clone();
    }
    if let Some(v) = &args.auth_issuer {
        c.auth.issuer = v.clone();
    }
    if let Some(v) = &args.auth_audience {
        c.auth.audience = v.clone();
    }
    if let Some(v) = args.auth_clock_skew_seconds {
        c.auth.clock_skew_seconds = v;
    }
    if let Some(v) = args.deliveries_poll_interval_ms {
        c.deliveries.poll_interval_ms = v;
    }
    if let Some(v) = args.deliveries_allow_private_networks {
        c.deliveries.allow_private_networks = v;
    }
    if let Some(v) = &args.deliveries_ca_file {
        c.deliveries.ca_file = v.clone();
    }
    if let Some(v) = args.tenant_commands_per_second {
        c.limits.tenant_commands_per_second = v;
    }
    if let Some(v) = args.tenant_burst {
        c.limits.tenant_burst = v;
    }
    if let Some(v) = args.max_calls_in_flight {
        c.limits.max_calls_in_flight = v;
    }
    if let Some(v) = args.max_streams_per_connection {
        c.limits.max_streams_per_connection = v;
    }
    if let Some(v) = &args.metrics_listen {
        c.metrics.listen = v.clone();
    }
    if let Some(v) = &args.log_filter {
        c.log.filter = v.clone();
    }
    if let Some(v) = log_format {
        c.log.format = match v {
            LogFormat::Human => ConfigLogFormat::Human,
            LogFormat::Json => ConfigLogFormat::Json,
        };
    }
    Ok(config)
}

fn serve(args: ServeArgs, log_format: Option<LogFormat>) -> ExitCode {
    let config = match effective_config(&args, log_format) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tally: configuration: {error}");
            return ExitCode::from(64);
        }
    };
    let settings = match config.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tally: configuration: {error}");
            return ExitCode::from(64);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logs(
        match config.log.format {
            ConfigLogFormat::Human => LogFormat::Human,
            ConfigLogFormat::Json => LogFormat::Json,
        },
        &config.log.filter,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(run_server(settings))
}

/// Opens the ports first, then recovers: health answers NOT_SERVING until the engine serves.
async fn run_server(settings: Settings) -> ExitCode {
    // One owner per data directory: a second server exits here, before it opens a port.
    let owner = match tally::engine::DataDirLock::acquire(&settings.engine.data_dir) {
        Ok(owner) => owner,
        Err(error) => {
            eprintln!("tally: {error}");
            return ExitCode::from(75);
        }
    };
    let metrics = match tally::telemetry::install() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("tally: cannot install metrics: {error}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tally: cannot listen on {}: {error}", settings.listen);
            return ExitCode::from(2);
        }
    };
    let metrics_listener = match settings.metrics_listen {
        None => None,
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("tally: cannot listen for metrics on {address}: {error}");
                return ExitCode::from(2);
            }
        },
    };
    let data_dir = settings.engine.data_dir.clone();
    let address = listener.local_addr().expect("a bound listener has an address");
    println!("tally listening on {address} (data dir {})", data_dir.display());
    if let Some(listener) = &metrics_listener {
        let address = listener.local_addr().expect("a bound listener has an address");
        println!("tally metrics on http://{address}/metrics");
    }
    let slot = EngineSlot::recovering();
    match tally::api::links::LinkSettings::for_data_dir(&data_dir, &settings.links_base_url) {
        Ok(links) => slot.set_links(links),
        Err(error) => {
            eprintln!("tally: the link key: {error}");
            return ExitCode::from(2);
        }
    }
    slot.set_destinations(settings.delivery_destinations);
    let extra_roots = match &settings.delivery_ca_file {
        None => None,
        Some(file) => match std::fs::read(file) {
            Ok(pem) => Some(pem),
            Err(error) => {
                eprintln!("tally: deliveries.ca_file {}: {error}", file.display());
                return ExitCode::from(2);
            }
        },
    };
    let outbound = match tally::deliverer::Outbound::new(settings.delivery_destinations, extra_roots.as_deref()) {
        Ok(outbound) => outbound,
        Err(error) => {
            eprintln!("tally: deliveries.ca_file: {error}");
            return ExitCode::from(2);
        }
    };
    match tally::api::auth::AuthSettings::load(
        &settings.auth_keys_file,
        &settings.auth_issuer,
        &settings.auth_audience,
        settings.auth_clock_skew_seconds,
    ) {
        Ok(auth) => slot.set_auth(auth),
        Err(error) => {
            eprintln!("tally: the auth keys: {error}");
            return ExitCode::from(2);
        }
    }
    if let Some(limit) = settings.tenant_limit {
        slot.set_limits(tally::api::limits::TenantLimiter::new(limit, Arc::new(SystemClock)));
    }
    slot.set_admission(settings.admission);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|&stop| stop).await;
        }
    };
    let grace = settings.shutdown_grace;
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
        // The stop drains calls, ends streams and writes the snapshot; past the grace it is
        // cut short. Nothing acknowledged is lost by that: every acknowledged command is on
        // disk, and a commit under way was never acknowledged (its torn tail is cut on start).
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::error!(
                grace_seconds = grace.as_secs(),
                "the stop outlasted its grace; stopping hard"
            );
            eprintln!(
                "tally: the stop outlasted its grace of {} s; stopping hard",
                grace.as_secs()
            );
            std::process::exit(1);
        });
    });
    let metrics_task = metrics_listener
        .map(|listener| tokio::spawn(tally::telemetry::serve(listener, metrics, slot.clone(), stopped())));
    let server = tokio::spawn(tally::api::serve_slot(slot.clone(), listener, stopped()));
    let config = settings.engine.clone();
    let started = tokio::task::spawn_blocking(move || Engine::start_owned(config, Arc::new(SystemClock), owner)).await;
    let engine = match started.expect("engine start does not panic") {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "cannot start the ledger");
            eprintln!("tally: cannot start: {error}");
            let corrupt = matches!(
                error,
                EngineError::Log(LogError::Corrupt { .. })
                    | EngineError::LogBehind { .. }
                    | EngineError::Unfoldable { .. }
            );
            if corrupt && settings.on_corrupt_log == OnCorruptLog::Stay {
                slot.refuse(error.to_string());
                eprintln!("tally: health answers NOT_SERVING and every call DATA_LOSS until stopped");
                stopped().await;
            }
            server.abort();
            return ExitCode::from(2);
        }
    };
    slot.fill(engine.handle());
    tracing::info!(head = engine.report().head_seq, "ledger serving");
    println!("tally serving: head sequence {}", engine.report().head_seq);
    // Every call needs a credential: say where the keys that make them are.
    match std::env::var("TALLY_AUTH_KEYS") {
        Ok(keys) if !keys.trim().is_empty() => println!("tally auth keys: from TALLY_AUTH_KEYS"),
        _ => println!(
            "tally auth keys: {} (tally token issue --keys {} --tenant T --subject S --role R)",
            settings.auth_keys_file.display(),
            settings.auth_keys_file.display()
        ),
    }
    let sweeper = sweeper::spawn(engine.handle(), settings.sweep_interval);
    let auth = slot.auth().expect("the auth settings were set before serving").clone();
    let deliverer = tally::deliverer::Deliverer::new(engine.handle(), auth, outbound);
    let (deliveries_stop, deliveries_stopped) = tokio::sync::watch::channel(false);
    let deliveries = tokio::spawn(deliverer.run(settings.delivery_poll_interval, deliveries_stopped));
    let served = server.await.expect("the server task does not panic");
    sweeper.abort();
    // An attempt under way may wait for its receiver up to its request timeout; one that is
    // cut short is made again after the restart (at-most-once ones are settled as failed).
    let _ = deliveries_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(5), deliveries).await.is_err() {
        tracing::warn!("delivery attempts still under way at shutdown; they are retried after the restart");
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    tracing::info!("no longer accepting calls; stopping the ledger");
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .expect("shutdown");
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tally: server error: {error}");
            ExitCode::from(1)
        }
    }
}

fn issue_token(tenant: &str, subject: &str, roles: &[String], ttl_seconds: u64, keys: &Path) -> ExitCode {
    use tally::api::auth::OPERATOR_TOKEN_TTL_MAX_SECONDS;
    use tally::domain::access::Role;
    let mut parsed = Vec::new();
    for name in roles {
        match Role::parse(name) {
            Some(role) => parsed.push(role),
            None => {
                let known: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
                eprintln!("tally token issue: unknown role {name:?} ({})", known.join(", "));
                return ExitCode::from(64);
            }
        }
    }
    if ttl_seconds == 0 || ttl_seconds > OPERATOR_TOKEN_TTL_MAX_SECONDS {
        eprintln!("tally token issue: --ttl-seconds must be 1 to {OPERATOR_TOKEN_TTL_MAX_SECONDS}");
        return ExitCode::from(64);
    }
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c))
    };
    if !valid(tenant) || !valid(subject) {
        eprintln!("tally token issue: --tenant and --subject are 1 to 128 ASCII letters, digits or -_.:@/");
        return ExitCode::from(64);
    }
    match auth_settings(keys) {
        Ok(settings) => {
            let token =
                tally::api::auth::operator_token(&settings, tenant, subject, &parsed, unix_seconds(), ttl_seconds);
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally token issue: {error}");
            ExitCode::from(66)
        }
    }
}

fn bench(args: BenchArgs) -> ExitCode {
    use tally::loadgen::{BenchConfig, Distribution, Mode, Workload};
    if args.clients == 0 || args.accounts == 0 || args.batch_size == 0 || args.batch_size > 4096 {
        eprintln!("tally bench: --clients and --accounts must be at least 1, --batch-size 1 to 4096");
        return ExitCode::from(64);
    }
    if matches!((args.workload, args.mode), (WorkloadArg::Ping, ModeArg::Batch)) {
        eprintln!("tally bench: --workload ping is unary only (a health check has no batch form)");
        return ExitCode::from(64);
    }
    let token = match args.credential.token(&[tally::domain::access::Role::Service]) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("tally bench: {error}");
            return ExitCode::from(66);
        }
    };
    let config = BenchConfig {
        target: args.target,
        token,
        clients: args.clients,
        duration: Duration::from_secs(args.seconds.max(1)),
        warmup: Duration::from_secs(args.warmup_seconds),
        mode: match args.mode {
            ModeArg::Unary => Mode::Unary,
            ModeArg::Batch => Mode::Batch,
        },
        batch_size: args.batch_size,
        workload: match args.workload {
            WorkloadArg::Award => Workload::Award,
            WorkloadArg::Mixed => Workload::Mixed,
            WorkloadArg::Ping => Workload::Ping,
        },
        accounts: args.accounts,
        distribution: match args.distribution {
            DistributionArg::Uniform => Distribution::Uniform,
            DistributionArg::Zipf => Distribution::Zipf,
        },
        seed: args.seed,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(tally::loadgen::run(config.clone())) {
        Ok(report) => {
            println!("{}", report.render(&config));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally bench: {error}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested");
}

fn verify(data_dir: &std::path::Path, expect: Option<&str>) -> ExitCode {
    let log_dir = data_dir.join("log");
    if !log_dir.is_dir() {
        eprintln!("tally verify: {} has no log directory", data_dir.display());
        return ExitCode::from(64);
    }
    match log::verify(&log_dir) {
        Ok(verified) => {
            println!("ok: {} records in {} segments", verified.head.seq, verified.segments);
            println!("head sequence: {}", verified.head.seq);
            println!("head hash: {}", hex(&verified.head.hash));
            if let Some((seq, bytes)) = verified.torn_tail {
                println!("torn tail: {bytes} bytes from sequence {seq} were never acknowledged and are cut off when the server opens the log");
            }
            match expect {
                Some(digest) => offline::check_digest(&log_dir, digest),
                None => ExitCode::SUCCESS,
            }
        }
        Err(error @ LogError::Corrupt { .. }) => {
            let LogError::Corrupt { seq, .. } = &error else {
                unreachable!()
            };
            println!("CORRUPT at sequence {seq}");
            eprintln!("tally verify: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("tally verify: {error}");
            ExitCode::from(1)
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    tally::query::json::hex(bytes)
}

/// The offline tools: they read a data directory, never the network.
mod offline {
    use super::{AuditQuery, Format, ReplayArgs};
    use std::io::{IsTerminal, Write};
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::Mutex;
    use tally::engine::{jobs, JobControl};
    use tally::log::LogReader;
    use tally::projection::{HistoryView, HoldView, ProjectionName, Projections};
    use tally::query::{asof, json, time, EventFilter, Replay, Window};

    fn fail(message: impl std::fmt::Display) -> ExitCode {
        eprintln!("tally: {message}");
        ExitCode::from(1)
    }

    fn usage(message: impl std::fmt::Display) -> ExitCode {
        eprintln!("tally: {message}");
        ExitCode::from(64)
    }

    fn open_log(data_dir: &Path) -> Result<LogReader, ExitCode> {
        let dir = data_dir.join("log");
        if !dir.is_dir() {
            return Err(usage(format!("{} has no log directory", data_dir.display())));
        }
        LogReader::open(&dir).map_err(|e| {
            eprintln!("tally: {e}");
            ExitCode::from(2)
        })
    }

    /// `SEQUENCE:HASH` must be a record of the log.
    pub fn check_digest(log_dir: &Path, digest: &str) -> ExitCode {
        let Some((seq, hash)) = digest
            .split_once(':')
            .and_then(|(s, h)| Some((s.parse::<u64>().ok()?, h.to_ascii_lowercase())))
        else {
            return usage("--expect takes SEQUENCE:HASH, as `tally verify` prints them");
        };
        let reader = match LogReader::open(log_dir) {
            Ok(reader) => reader,
            Err(e) => return fail(e),
        };
        match tally::log::read_one(&reader, seq) {
            Ok(Some(record)) if json::hex(&record.hash) == hash => {
                println!("digest matches: sequence {seq} has hash {hash}");
                ExitCode::SUCCESS
            }
            Ok(Some(record)) => {
                println!("DIGEST MISMATCH at sequence {seq}: the log has {}, the digest says {hash}; the log was rewritten up to there", json::hex(&record.hash));
                ExitCode::from(3)
            }
            Ok(None) => {
                println!(
                    "DIGEST MISMATCH: the log ends at {} and no longer has sequence {seq}",
                    reader.head().seq
                );
                ExitCode::from(3)
            }
            Err(e) => fail(e),
        }
    }

    fn print_record(format: Format, record: &tally::domain::Record, out: &mut impl Write) -> std::io::Result<()> {
        match format {
            Format::Jsonl => writeln!(out, "{}", json::to_json_line(record)),
            Format::Table => {
                if !record.event.kind().is_ledger() {
                    let e = &record.envelope;
                    return writeln!(
                        out,
                        "{:>8}  {}  {:<15} {}/{}  actor={}  corr={}",
                        record.seq,
                        time::format_rfc3339(record.ts_us),
                        record.event.kind().name(),
                        e.tenant,
                        e.stream,
                        e.actor,
                        e.correlation_id
                    );
                }
                let row = HistoryView::of(record).expect("every record has a history row");
                let e = &row.effect;
                writeln!(
                    out,
                    "{:>8}  {}  {:<15} {}/{}  actor={}  points={}  posted {}->{}  held {}->{}  tier {}->{}  corr={}  {}",
                    row.seq,
                    time::format_rfc3339(row.ts_us),
                    record.event.kind().name(),
                    record.envelope.tenant,
                    row.account_id,
                    row.actor,
                    row.points,
                    e.posted_before,
                    e.posted_after,
                    e.held_before,
                    e.held_after,
                    e.tier_before,
                    e.tier_after,
                    row.correlation_id,
                    row.reason
                )
            }
        }
    }

    /// Runs a replay to stdout, with a progress line on stderr when it is a terminal.
    fn run_replay(reader: &LogReader, window: Window, filter: EventFilter, max: u64, format: Format) -> ExitCode {
        let mut replay = Replay::new(reader, window, filter, max);
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let show_progress = std::io::stderr().is_terminal();
        loop {
            match replay.next_event() {
                Ok(Some(record)) => {
                    if print_record(format, &record, &mut out).is_err() {
                        return ExitCode::SUCCESS; // the reader went away (a closed pipe)
                    }
                    let progress = replay.progress();
                    if show_progress && progress.events_sent.is_multiple_of(1000) {
                        eprint!(
                            "\r{:5.1}%  {} events  at sequence {}",
                            progress.percent, progress.events_sent, progress.position
                        );
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = out.flush();
                    eprintln!();
                    eprintln!("tally: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        let _ = out.flush();
        if show_progress {
            let progress = replay.progress();
            eprintln!(
                "\r100.0%  {} events  at sequence {}",
                progress.events_sent, progress.position
            );
        }
        ExitCode::SUCCESS
    }

    pub fn replay(args: ReplayArgs) -> ExitCode {
        let reader = match open_log(&args.data_dir) {
            Ok(reader) => reader,
            Err(code) => return code,
        };
        let window = if args.from.is_some() || args.to.is_some() {
            let parse = |t: &Option<String>| t.as_deref().map(time::parse_time).transpose();
            match (parse(&args.from), parse(&args.to)) {
                (Ok(from), Ok(to)) => Window::Time {
                    from_us: from.unwrap_or(0),
                    to_us: to,
                },
                (Err(e), _) | (_, Err(e)) => return usage(e),
            }
        } else {
            Window::Sequence {
                from: args.from_seq.unwrap_or(1),
                to: args.to_seq,
            }
        };
        let kinds = match EventFilter::parse_kinds(&args.kind) {
            Ok(kinds) => kinds,
            Err(e) => return usage(e),
        };
        let filter = EventFilter {
            tenant: args.tenant,
            kinds,
            accounts: args.account,
            correlation_ids: args.correlation,
            actors: args.actor,
            idempotency: None,
        };
        run_replay(&reader, window, filter, args.max, args.format)
    }

    pub fn rebuild(data_dir: &Path, projection: Option<&str>, verify_only: bool, from_snapshot: bool) -> ExitCode {
        let names = match projection {
            None => ProjectionName::ALL.to_vec(),
            Some(name) => match ProjectionName::from_name(name) {
                Some(name) => vec![name],
                None => return usage(format!("unknown projection {name:?}")),
            },
        };
        if !data_dir.join("log").is_dir() {
            return usage(format!("{} has no log directory", data_dir.display()));
        }
        // A rebuild writes the projections: it owns the directory while it runs.
        let _owner = match tally::engine::DataDirLock::acquire(data_dir) {
            Ok(owner) => owner,
            Err(e) => return fail(format!("{e}; a running server rebuilds with the StartRebuild RPC")),
        };
        let reader = match open_log(data_dir) {
            Ok(reader) => reader,
            Err(code) => return code,
        };
        let projections = match Projections::open(&data_dir.join("projections")) {
            Ok(p) => p,
            Err(e) => return fail(e),
        };
        let snapshot_dir = data_dir.join("projection-snapshots");
        let lock = Mutex::new(());
        let mut differed = false;
        for name in names {
            let snapshots = from_snapshot.then_some(snapshot_dir.as_path());
            match jobs::rebuild(
                &projections,
                &reader,
                &lock,
                name,
                snapshots,
                verify_only,
                &JobControl::detached(),
            ) {
                Ok(outcome) => {
                    differed |= !outcome.matched();
                    println!("{}", jobs::describe(&outcome));
                }
                Err(e) => return fail(format!("rebuild of {} failed: {e:?}", name.name())),
            }
        }
        if let Err(e) = projections.flush() {
            return fail(e);
        }
        if verify_only && differed {
            return ExitCode::from(1);
        }
        ExitCode::SUCCESS
    }

    pub fn audit(data_dir: &Path, tenant: Option<String>, format: Format, query: AuditQuery) -> ExitCode {
        let reader = match open_log(data_dir) {
            Ok(reader) => reader,
            Err(code) => return code,
        };
        let all = Window::Sequence { from: 1, to: None };
        let filter = EventFilter {
            tenant,
            ..EventFilter::default()
        };
        match query {
            AuditQuery::History { account } => run_replay(
                &reader,
                all,
                EventFilter {
                    accounts: vec![account],
                    ..filter
                },
                0,
                format,
            ),
            AuditQuery::Correlation { correlation_id } => run_replay(
                &reader,
                all,
                EventFilter {
                    correlation_ids: vec![correlation_id],
                    ..filter
                },
                0,
                format,
            ),
            AuditQuery::Key { key, scope } => run_replay(
                &reader,
                all,
                EventFilter {
                    idempotency: Some((key, scope)),
                    ..filter
                },
                0,
                format,
            ),
            AuditQuery::Actor { actor, from, to } => {
                let parse = |t: Option<String>| t.as_deref().map(time::parse_time).transpose();
                let window = match (parse(from), parse(to)) {
                    (Ok(from), Ok(to)) => Window::Time {
                        from_us: from.unwrap_or(0),
                        to_us: to,
                    },
                    (Err(e), _) | (_, Err(e)) => return usage(e),
                };
                run_replay(
                    &reader,
                    window,
                    EventFilter {
                        actors: vec![actor],
                        ..filter
                    },
                    0,
                    format,
                )
            }
            AuditQuery::AsOf {
                account,
                sequence,
                time: at,
            } => {
                let seq = match (sequence, at) {
                    (Some(seq), _) => seq.min(reader.head().seq),
                    (None, Some(at)) => match time::parse_time(&at).map(|t| reader.seq_at_time(t)) {
                        Ok(Ok(seq)) => seq,
                        Ok(Err(e)) => return fail(e),
                        Err(e) => return usage(e),
                    },
                    (None, None) => return usage("give --sequence or --time"),
                };
                as_of(&reader, filter, &account, seq)
            }
        }
    }

    fn as_of(reader: &LogReader, filter: EventFilter, account: &str, seq: u64) -> ExitCode {
        let filter = EventFilter {
            accounts: vec![account.to_string()],
            ..filter
        };
        let mut replay = Replay::new(
            reader,
            Window::Sequence {
                from: 1,
                to: Some(seq + 1),
            },
            filter,
            0,
        );
        let (mut rows, mut holds) = (Vec::new(), std::collections::HashMap::new());
        let mut tenants = std::collections::BTreeSet::new();
        loop {
            match replay.next_event() {
                Ok(Some(record)) => {
                    tenants.insert(record.envelope.tenant.clone());
                    if let Some(hold) = HoldView::reserved(&record) {
                        holds.insert(hold.hold_id, hold);
                    }
                    rows.push(HistoryView::of(&record).expect("every record has a history row"));
                }
                Ok(None) => break,
                Err(e) => return fail(e),
            }
        }
        if tenants.len() > 1 {
            return usage("the account exists in several tenants; name one with --tenant");
        }
        match asof::account_as_of(seq, &rows, |id| Ok(holds.get(&id).cloned())) {
            Err(e) => fail(e),
            Ok(None) => fail(format!("account {account:?} was not open at sequence {seq}")),
            Ok(Some(state)) => {
                let a = &state.account;
                println!("account {} as of sequence {}", a.account_id, state.seq);
                println!(
                    "posted {}  held {}  available {}  lifetime {}  tier {}",
                    a.posted,
                    a.held,
                    a.available(),
                    a.lifetime,
                    a.tier
                );
                println!(
                    "opened {}  last change at sequence {}",
                    time::format_rfc3339(a.opened_at_us),
                    a.last_seq
                );
                for h in &state.active_holds {
                    println!(
                        "active hold {}: {} points, placed {}, expires {}",
                        h.hold_id,
                        h.amount,
                        time::format_rfc3339(h.created_at_us),
                        time::format_rfc3339(h.expires_at_us)
                    );
                }
                ExitCode::SUCCESS
            }
        }
    }
}

/// `tally ingest` and `tally dlq`: clients of a running server.
mod client {
    use super::{DeliveriesCommand, DlqCommand, KeysCommand, LetterFilterArgs, TargetArgs};
    use std::path::Path;
    use std::process::ExitCode;
    use tally::api::proto;
    use tally::domain::access::Role;
    use tally::operator::{self, Target};
    use tally::query::time;

    fn target(args: TargetArgs, role: Role) -> Result<Target, ExitCode> {
        match args.credential.token(&[role]) {
            Ok(token) => Ok(Target {
                url: args.target,
                token,
            }),
            Err(error) => {
                eprintln!("tally: {error}");
                Err(ExitCode::from(66))
            }
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime starts")
    }

    pub fn ingest(file: &Path, args: TargetArgs) -> ExitCode {
        let input = match std::fs::File::open(file) {
            Ok(f) => std::io::BufReader::new(f),
            Err(e) => {
                eprintln!("tally ingest: cannot open {}: {e}", file.display());
                return ExitCode::from(66);
            }
        };
        let target = match target(args, Role::Service) {
            Ok(target) => target,
            Err(code) => return code,
        };
        match runtime().block_on(operator::ingest_lines(&target, input)) {
            Ok(report) => {
                for (line, why) in &report.rejected {
                    eprintln!("line {line}: {why}");
                }
                println!("{}", report.render());
                if report.rejected.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("tally ingest: {e}");
                ExitCode::from(1)
            }
        }
    }

    fn micros(flag: &str, text: &Option<String>) -> Result<u64, String> {
        match text {
            None => Ok(0),
            Some(t) => time::parse_time(t).map_err(|e| format!("--{flag}: {e}")),
        }
    }

    fn fresh_key() -> String {
        format!("dlq-{}", uuid::Uuid::now_v7())
    }

    pub fn keys(args: TargetArgs, command: KeysCommand) -> ExitCode {
        let target = match target(args, Role::Admin) {
            Ok(target) => target,
            Err(code) => return code,
        };
        match runtime().block_on(keys_run(target, command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tally keys: {e}");
                ExitCode::from(1)
            }
        }
    }

    async fn keys_run(target: Target, command: KeysCommand) -> Result<(), String> {
        use proto::identity_client::IdentityClient;
        let channel = tonic::transport::Endpoint::from_shared(target.url.clone())
            .map_err(|e| format!("{}: not a server URL: {e}", target.url))?
            .connect()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", target.url))?;
        let mut client = IdentityClient::new(channel);
        let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        let show = |k: &proto::ApiKeyInfo| {
            format!(
                "{}  {:<8} {:<24} fingerprint {}  created {} by {}{}",
                k.key_id,
                k.role,
                k.name,
                k.fingerprint,
                time::format_rfc3339(k.created_at_us),
                k.created_by,
                if k.revoked {
                    format!("  REVOKED {}", time::format_rfc3339(k.revoked_at_us))
                } else {
                    String::new()
                }
            )
        };
        match command {
            KeysCommand::Create {
                name,
                role,
                idempotency_key,
            } => {
                let request = proto::CreateApiKeyRequest {
                    name,
                    role,
                    idempotency_key: idempotency_key.unwrap_or_else(|| format!("key-{}", uuid::Uuid::now_v7())),
                };
                let answer = client
                    .create_api_key(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                let key = answer.key.unwrap_or_default();
                println!("{}", show(&key));
                println!("key id: {}", key.key_id);
                println!("secret: {}", answer.secret);
                eprintln!("the secret is shown once; sign calls with it (docs/AUTH.md)");
            }
            KeysCommand::List => {
                let answer = client
                    .list_api_keys(target.request(proto::ListApiKeysRequest {})?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                for key in &answer.keys {
                    println!("{}", show(key));
                }
            }
            KeysCommand::Revoke { key_id, reason } => {
                let key = client
                    .revoke_api_key(target.request(proto::RevokeApiKeyRequest { key_id, reason })?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                println!("{}", show(&key));
            }
        }
        Ok(())
    }

    pub fn deliveries(args: TargetArgs, command: DeliveriesCommand) -> ExitCode {
        let target = match target(args, Role::Admin) {
            Ok(target) => target,
            Err(code) => return code,
        };
        match runtime().block_on(deliveries_run(target, command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tally deliveries: {e}");
                ExitCode::from(1)
            }
        }
    }

    fn show_delivery(d: &proto::DeliveryInfo) {
        let next = match d.next_attempt_at_us {
            0 => String::new(),
            at => format!("  next {}", time::format_rfc3339(at)),
        };
        println!(
            "{}  {:<16} {:<16} account {}  event {}{}",
            d.delivery_id,
            d.state,
            d.event_kind,
            d.account_id,
            time::format_rfc3339(d.event_timestamp_us),
            next
        );
    }

    async fn deliveries_run(target: Target, command: DeliveriesCommand) -> Result<(), String> {
        use proto::deliveries_client::DeliveriesClient;
        let channel = tonic::transport::Endpoint::from_shared(target.url.clone())
            .map_err(|e| format!("{}: not a server URL: {e}", target.url))?
            .connect()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", target.url))?;
        let mut client = DeliveriesClient::new(channel);
        let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        let endpoint_line = |e: &proto::Endpoint| {
            let s = e.settings.clone().unwrap_or_default();
            format!(
                "endpoint {}  {:<8} {}  kinds {}  {:?} ack {:?}{}",
                e.endpoint_id,
                e.status,
                s.url,
                if s.event_kinds.is_empty() {
                    "all".to_string()
                } else {
                    s.event_kinds.join(",")
                },
                proto::DeliverySemantics::try_from(s.semantics).unwrap_or_default(),
                proto::AckMode::try_from(s.ack_mode).unwrap_or_default(),
                if s.ordered { "  ordered" } else { "" }
            )
        };
        let by_id = |endpoint_id| proto::EndpointRequest { endpoint_id };
        match command {
            DeliveriesCommand::Endpoints => {
                let answer = client
                    .list_endpoints(target.request(proto::ListEndpointsRequest {})?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                for e in &answer.endpoints {
                    println!("{}", endpoint_line(e));
                }
            }
            DeliveriesCommand::Register {
                url,
                kinds,
                semantics,
                explicit_ack,
                ordered,
                max_attempts,
                idempotency_key,
            } => {
                let semantics = match semantics.as_str() {
                    "at-most-once" => proto::DeliverySemantics::AtMostOnce,
                    "at-least-once" => proto::DeliverySemantics::AtLeastOnce,
                    "exactly-once" => proto::DeliverySemantics::ExactlyOnce,
                    other => {
                        return Err(format!(
                            "--semantics {other:?}: at-most-once, at-least-once or exactly-once"
                        ))
                    }
                };
                let settings = proto::EndpointSettings {
                    url,
                    event_kinds: kinds,
                    semantics: semantics as i32,
                    ack_mode: if explicit_ack {
                        proto::AckMode::Explicit as i32
                    } else {
                        0
                    },
                    ordered,
                    max_attempts,
                    ..Default::default()
                };
                let request = proto::RegisterEndpointRequest {
                    settings: Some(settings),
                    idempotency_key: idempotency_key.unwrap_or_else(|| format!("endpoint-{}", uuid::Uuid::now_v7())),
                };
                let answer = client
                    .register_endpoint(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                println!("{}", endpoint_line(&answer.endpoint.unwrap_or_default()));
                println!("secret: {}", answer.secret);
                eprintln!(
                    "the secret is shown once: verify each delivery's Tally-Signature with it (docs/DELIVERIES.md)"
                );
            }
            DeliveriesCommand::List {
                endpoint,
                state,
                from,
                to,
                limit,
            } => {
                let request = proto::ListDeliveriesRequest {
                    endpoint_id: endpoint,
                    state: state.unwrap_or_default(),
                    from_us: micros("from", &from)?,
                    to_us: micros("to", &to)?,
                    limit,
                };
                let answer = client
                    .list_deliveries(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                for d in &answer.deliveries {
                    show_delivery(d);
                }
            }
            DeliveriesCommand::Show { delivery_id } => {
                let d = client
                    .get_delivery(target.request(proto::GetDeliveryRequest { delivery_id })?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                show_delivery(&d);
                for a in &d.attempts {
                    println!(
                        "  attempt {} at {}: {} in {} µs {}",
                        a.attempt,
                        time::format_rfc3339(a.at_us),
                        if a.status_code == 0 {
                            "no answer".to_string()
                        } else {
                            format!("HTTP {}", a.status_code)
                        },
                        a.latency_us,
                        a.error
                    );
                }
            }
            DeliveriesCommand::Retry { delivery_id, reason } => {
                let answer = client
                    .retry_delivery(target.request(proto::RetryDeliveryRequest { delivery_id, reason })?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                println!("retried: {}", answer.delivery_ids.join(" "));
            }
            DeliveriesCommand::Redrive {
                endpoint,
                from,
                to,
                reason,
            } => {
                let request = proto::RedriveDeliveriesRequest {
                    endpoint_id: endpoint,
                    from_us: micros("from", &from)?,
                    to_us: micros("to", &to)?,
                    reason,
                };
                let answer = client
                    .redrive_deliveries(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                println!(
                    "retried {}: {}",
                    answer.delivery_ids.len(),
                    answer.delivery_ids.join(" ")
                );
            }
            DeliveriesCommand::Stats { endpoint } => {
                let s = client
                    .get_endpoint_stats(target.request(by_id(endpoint))?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                println!(
                    "delivered {}  acked {}  failed attempts {}  failed for good {}  retried by hand {}  pending {}  success {:.1}%  latency avg {} µs p99 {} µs",
                    s.delivered,
                    s.acked,
                    s.failed_attempts,
                    s.failed_permanent,
                    s.retried_by_hand,
                    s.pending,
                    s.success_rate * 100.0,
                    s.latency_average_us,
                    s.latency_p99_us
                );
            }
            DeliveriesCommand::Pause { endpoint }
            | DeliveriesCommand::Resume { endpoint }
            | DeliveriesCommand::Delete { endpoint } => {
                let request = target.request(by_id(endpoint))?;
                let answer = match command {
                    DeliveriesCommand::Pause { .. } => client.pause_endpoint(request).await,
                    DeliveriesCommand::Resume { .. } => client.resume_endpoint(request).await,
                    _ => client.delete_endpoint(request).await,
                }
                .map_err(failed)?
                .into_inner();
                println!("{}", endpoint_line(&answer.endpoint.unwrap_or_default()));
            }
        }
        Ok(())
    }

    pub fn dlq(args: TargetArgs, command: DlqCommand) -> ExitCode {
        let target = match target(args, Role::Admin) {
            Ok(target) => target,
            Err(code) => return code,
        };
        match runtime().block_on(run(target, command)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tally dlq: {e}");
                ExitCode::from(1)
            }
        }
    }

    fn window(filter: &LetterFilterArgs) -> Result<(u64, u64), String> {
        Ok((micros("from", &filter.from)?, micros("to", &filter.to)?))
    }

    async fn run(target: Target, command: DlqCommand) -> Result<(), String> {
        let mut client = target.connect().await?;
        let failed = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
        match command {
            DlqCommand::List {
                filter,
                cause,
                limit,
                include_retrying,
            } => {
                let (from, to) = window(&filter)?;
                let request = proto::ListDeadLettersRequest {
                    r#type: filter.type_name.unwrap_or_default(),
                    member_id: filter.member.unwrap_or_default(),
                    received_from_us: from,
                    received_to_us: to,
                    cause_contains: cause,
                    limit,
                    include_retrying,
                };
                let page = client
                    .list_dead_letters(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                for letter in &page.letters {
                    println!("{}", operator::letter_line(letter));
                }
                println!(
                    "{} shown, {} matching, {} in the queue",
                    page.letters.len(),
                    page.matching,
                    page.depth
                );
            }
            DlqCommand::Show { receipt } => {
                let request = proto::GetExternalEventRequest {
                    receipt_sequence: receipt,
                };
                let status = client
                    .get_external_event(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                match status.letter {
                    Some(letter) => println!("{}", operator::letter_details(&letter)),
                    None => {
                        let state = proto::LetterState::try_from(status.state)
                            .map(|s| s.as_str_name().trim_start_matches("LETTER_STATE_").to_lowercase())
                            .unwrap_or_default();
                        println!("receipt {receipt}: {state} at sequence {}", status.resolved_sequence);
                    }
                }
            }
            DlqCommand::Redrive {
                receipt,
                filter,
                max,
                key,
            } => {
                let (from, to) = window(&filter)?;
                let key = key.unwrap_or_else(fresh_key);
                eprintln!("idempotency key {key}");
                let request = proto::RedriveRequest {
                    idempotency_key: key,
                    receipt_sequence: receipt.unwrap_or(0),
                    r#type: filter.type_name.unwrap_or_default(),
                    member_id: filter.member.unwrap_or_default(),
                    received_from_us: from,
                    received_to_us: to,
                    max_count: max,
                    ..Default::default()
                };
                let response = client
                    .redrive(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                for result in &response.results {
                    println!("{}", operator::redrive_line(result));
                }
                println!("{} letters", response.results.len());
            }
            DlqCommand::Discard { receipt, reason, key } => {
                let key = key.unwrap_or_else(fresh_key);
                eprintln!("idempotency key {key}");
                let request = proto::DiscardRequest {
                    idempotency_key: key,
                    receipt_sequence: receipt,
                    reason,
                    ..Default::default()
                };
                let response = client
                    .discard(target.request(request)?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                let replayed = if response.replayed { " (replayed)" } else { "" };
                println!(
                    "discarded receipt {receipt} at sequence {}{replayed}",
                    response.sequence
                );
            }
            DlqCommand::Stats => {
                let stats = client
                    .get_pipeline_stats(target.request(proto::GetPipelineStatsRequest {})?)
                    .await
                    .map_err(failed)?
                    .into_inner();
                println!(
                    "received {}  processed {}  retried {}  dead-lettered {}  re-driven {}  discarded {}  \
                     queue depth {}  retrying {}",
                    stats.received,
                    stats.processed,
                    stats.retried,
                    stats.dead_lettered,
                    stats.redriven,
                    stats.discarded,
                    stats.dead_letter_depth,
                    stats.retrying
                );
            }
        }
        Ok(())
    }
}

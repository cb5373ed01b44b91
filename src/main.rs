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

#[path = "cli/client.rs"]
mod client;
#[path = "cli/client_args.rs"]
mod client_args;
#[path = "cli/offline.rs"]
mod offline;
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/tools.rs"]
mod tools;

use client_args::*;

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
        /// One projection (history, idempotency, correlation, actor).
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
    /// Commands a second over all clients (each client sends on a schedule, and latency
    /// counts from when a request was due); without it, as fast as the server answers.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of commands a second")),
    }
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
    /// engine.projection_cache_mib: MiB of the projection store's page cache.
    #[arg(long, env = "TALLY_PROJECTION_CACHE_MIB")]
    projection_cache_mib: Option<u64>,
    /// engine.identity_window_seconds: log time the writer keeps identities whole in RAM.
    #[arg(long, env = "TALLY_IDENTITY_WINDOW_SECONDS")]
    identity_window_seconds: Option<u64>,
    /// engine.identity_window_mib: MiB the identity window may take.
    #[arg(long, env = "TALLY_IDENTITY_WINDOW_MIB")]
    identity_window_mib: Option<u64>,
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
        return serve::serve(*args, cli.log_format);
    }
    let filter = std::env::var("TALLY_LOG").unwrap_or_else(|_| "info".into());
    serve::init_logs(cli.log_format.unwrap_or(LogFormat::Human), &filter);
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled above"),
        Cmd::Verify { data_dir, expect } => tools::verify(&data_dir, expect.as_deref()),
        Cmd::Replay(args) => offline::replay(args),
        Cmd::Bench(args) => tools::bench(args),
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
        } => tools::issue_token(&tenant, &subject, &roles, ttl_seconds, &keys),
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

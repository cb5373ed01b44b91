//! The arguments of `serve`, `replay`, `audit` and `bench`: what clap parses for the server
//! and the offline tools, apart from the commands that run them.

use super::client_args::CredentialArgs;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub(crate) enum AuditQuery {
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
pub(crate) struct ReplayArgs {
    pub(crate) data_dir: PathBuf,
    /// First sequence number of the window.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub(crate) from_seq: Option<u64>,
    /// End of the window (exclusive).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub(crate) to_seq: Option<u64>,
    /// Start of the window: RFC 3339 UTC (2026-11-22T05:00:00Z) or µs since the epoch.
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// End of the window (exclusive).
    #[arg(long)]
    pub(crate) to: Option<String>,
    /// Event kinds (points.awarded, hold.committed, …); repeatable.
    #[arg(long)]
    pub(crate) kind: Vec<String>,
    #[arg(long)]
    pub(crate) account: Vec<String>,
    #[arg(long)]
    pub(crate) correlation: Vec<String>,
    #[arg(long)]
    pub(crate) actor: Vec<String>,
    #[arg(long)]
    pub(crate) tenant: Option<String>,
    /// Stop after this many events.
    #[arg(long, default_value_t = 0)]
    pub(crate) max: u64,
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub(crate) format: Format,
}

#[derive(Parser)]
pub(crate) struct BenchArgs {
    /// The server, as a URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub(crate) target: String,
    /// Without --token, the load runs as a service of --tenant (its accounts are
    /// bench-0, bench-1, …).
    #[command(flatten)]
    pub(crate) credential: CredentialArgs,
    /// Concurrent clients, each with its own connection, one request in flight each.
    #[arg(long, default_value_t = 64)]
    pub(crate) clients: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10)]
    pub(crate) seconds: u64,
    /// Load before the measured window starts.
    #[arg(long, default_value_t = 2)]
    pub(crate) warmup_seconds: u64,
    #[arg(long, value_enum, default_value_t = ModeArg::Unary)]
    pub(crate) mode: ModeArg,
    /// Commands per SubmitBatch in batch mode (at most 4096).
    #[arg(long, default_value_t = 1000)]
    pub(crate) batch_size: usize,
    #[arg(long, value_enum, default_value_t = WorkloadArg::Award)]
    pub(crate) workload: WorkloadArg,
    #[arg(long, default_value_t = 10_000)]
    pub(crate) accounts: u64,
    #[arg(long, value_enum, default_value_t = DistributionArg::Uniform)]
    pub(crate) distribution: DistributionArg,
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Commands a second over all clients (each client sends on a schedule, and latency
    /// counts from when a request was due); without it, as fast as the server answers.
    #[arg(long, value_parser = positive_rate)]
    pub(crate) rate: Option<f64>,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!("{text:?} is not a positive number of commands a second")),
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    Unary,
    Batch,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum WorkloadArg {
    /// Awards only.
    Award,
    /// Award 50%, reserve 20%, commit 15%, release 10%, reads 5%.
    Mixed,
    /// Health checks, unary: the round trip alone (no credential, no engine), the ceiling
    /// the other workloads are measured against.
    Ping,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DistributionArg {
    Uniform,
    Zipf,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Aligned columns for people.
    Table,
}

/// Every setting of `serve` is a key of the configuration file (docs/CONFIG.md); a flag or
/// its environment variable overrides the file, which overrides the default.
#[derive(Parser)]
pub(crate) struct ServeArgs {
    /// A TOML configuration file (docs/CONFIG.md lists every key and its default).
    #[arg(long, env = "TALLY_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, environment, flags) as TOML and exit.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// server.listen: address of the gRPC API; port 0 picks a free port (printed on start).
    #[arg(long, env = "TALLY_LISTEN")]
    pub(crate) listen: Option<String>,
    /// server.on_corrupt_log: stay (health NOT_SERVING, calls DATA_LOSS) or exit (code 2).
    #[arg(long, env = "TALLY_ON_CORRUPT_LOG", value_enum)]
    pub(crate) on_corrupt_log: Option<OnCorruptArg>,
    /// server.shutdown_grace_seconds: how long a stop may drain and snapshot before a hard stop.
    #[arg(long, env = "TALLY_SHUTDOWN_GRACE_SECONDS")]
    pub(crate) shutdown_grace_seconds: Option<u64>,
    /// storage.data_dir: where the log and the projections live.
    #[arg(long, env = "TALLY_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// storage.durability: sync acknowledges only after fdatasync; buffered skips it, and
    /// a machine crash can lose acknowledged commands (benchmarks only).
    #[arg(long, env = "TALLY_DURABILITY", value_enum)]
    pub(crate) durability: Option<DurabilityArg>,
    /// storage.segment_mib: size of each preallocated log segment, in MiB.
    #[arg(long, env = "TALLY_SEGMENT_MIB")]
    pub(crate) segment_mib: Option<u64>,
    /// ledger.tiers: tiers by lifetime points earned, ascending, the first at 0.
    #[arg(long, env = "TALLY_TIERS")]
    pub(crate) tiers: Option<String>,
    /// ledger.rate_table_version: version name of the accrual rate table.
    #[arg(long, env = "TALLY_RATE_TABLE_VERSION")]
    pub(crate) rate_table_version: Option<String>,
    /// ledger.points_per_theo_dollar_milli: points per theo dollar, in thousandths.
    #[arg(long, env = "TALLY_POINTS_PER_THEO_DOLLAR_MILLI")]
    pub(crate) points_per_theo_dollar_milli: Option<u64>,
    /// engine.inbox_capacity: requests waiting before callers hear RESOURCE_EXHAUSTED.
    #[arg(long, env = "TALLY_INBOX_CAPACITY")]
    pub(crate) inbox_capacity: Option<usize>,
    /// engine.snapshot_every_records: records between write-state snapshots.
    #[arg(long, env = "TALLY_SNAPSHOT_EVERY_RECORDS")]
    pub(crate) snapshot_every_records: Option<u64>,
    /// engine.projection_snapshot_every_records: records between projection snapshot files (0: off).
    #[arg(long, env = "TALLY_PROJECTION_SNAPSHOT_EVERY_RECORDS")]
    pub(crate) projection_snapshot_every_records: Option<u64>,
    /// engine.projection_cache_mib: MiB of the projection store's page cache.
    #[arg(long, env = "TALLY_PROJECTION_CACHE_MIB")]
    pub(crate) projection_cache_mib: Option<u64>,
    /// engine.projection_flush_seconds: seconds folded projection records wait at most to be written.
    #[arg(long, env = "TALLY_PROJECTION_FLUSH_SECONDS")]
    pub(crate) projection_flush_seconds: Option<u64>,
    /// engine.identity_window_seconds: log time the writer keeps identities whole in RAM.
    #[arg(long, env = "TALLY_IDENTITY_WINDOW_SECONDS")]
    pub(crate) identity_window_seconds: Option<u64>,
    /// engine.identity_window_mib: MiB the identity window may take.
    #[arg(long, env = "TALLY_IDENTITY_WINDOW_MIB")]
    pub(crate) identity_window_mib: Option<u64>,
    /// engine.sweep_interval_ms: how often the sweeper expires holds past their deadline.
    #[arg(long, env = "TALLY_SWEEP_INTERVAL_MS")]
    pub(crate) sweep_interval_ms: Option<u64>,
    /// ingest.max_attempts: attempts before a transiently failing external event is dead-lettered.
    #[arg(long, env = "TALLY_INGEST_MAX_ATTEMPTS")]
    pub(crate) ingest_max_attempts: Option<u32>,
    /// ingest.retry_base_delay_ms: delay before the second attempt; doubled per retry.
    #[arg(long, env = "TALLY_INGEST_RETRY_BASE_DELAY_MS")]
    pub(crate) ingest_retry_base_delay_ms: Option<u64>,
    /// ingest.retry_max_delay_ms: longest delay between attempts.
    #[arg(long, env = "TALLY_INGEST_RETRY_MAX_DELAY_MS")]
    pub(crate) ingest_retry_max_delay_ms: Option<u64>,
    /// ingest.dedup_window_seconds: same content from the same source within it is a duplicate.
    #[arg(long, env = "TALLY_INGEST_DEDUP_WINDOW_SECONDS")]
    pub(crate) ingest_dedup_window_seconds: Option<u64>,
    /// ingest.dead_letters_per_member_max: letters one member may have in the dead-letter queue.
    #[arg(long, env = "TALLY_INGEST_DEAD_LETTERS_PER_MEMBER_MAX")]
    pub(crate) ingest_dead_letters_per_member_max: Option<u64>,
    /// ingest.dead_letters_max: letters in one tenant's dead-letter queue.
    #[arg(long, env = "TALLY_INGEST_DEAD_LETTERS_MAX")]
    pub(crate) ingest_dead_letters_max: Option<u64>,
    /// links.base_url: the base of the deep links CreateLink answers ({base_url}/link?linkId=…&token=…).
    #[arg(long, env = "TALLY_LINKS_BASE_URL")]
    pub(crate) links_base_url: Option<String>,
    /// auth.keys_file: the key ring that signs tokens and API keys ("": <data_dir>/auth.keys).
    #[arg(long, env = "TALLY_AUTH_KEYS_FILE")]
    pub(crate) auth_keys_file: Option<String>,
    /// auth.issuer: the iss of tokens this server makes and accepts.
    #[arg(long, env = "TALLY_AUTH_ISSUER")]
    pub(crate) auth_issuer: Option<String>,
    /// auth.audience: the aud of tokens this server makes and accepts.
    #[arg(long, env = "TALLY_AUTH_AUDIENCE")]
    pub(crate) auth_audience: Option<String>,
    /// auth.clock_skew_seconds: how far a token's times may be off the server's clock.
    #[arg(long, env = "TALLY_AUTH_CLOCK_SKEW_SECONDS")]
    pub(crate) auth_clock_skew_seconds: Option<u64>,
    /// deliveries.poll_interval_ms: how often the delivery worker looks for deliveries that are due.
    #[arg(long, env = "TALLY_DELIVERIES_POLL_INTERVAL_MS")]
    pub(crate) deliveries_poll_interval_ms: Option<u64>,
    /// deliveries.allow_private_networks: endpoints may point at private, loopback and link-local addresses.
    #[arg(long, env = "TALLY_DELIVERIES_ALLOW_PRIVATE_NETWORKS")]
    pub(crate) deliveries_allow_private_networks: Option<bool>,
    /// deliveries.ca_file: PEM certificates of authorities trusted for https endpoints besides the built-in roots.
    #[arg(long, env = "TALLY_DELIVERIES_CA_FILE")]
    pub(crate) deliveries_ca_file: Option<String>,
    /// limits.tenant_commands_per_second: mutating commands one tenant may send a second (0: no limit).
    #[arg(long, env = "TALLY_TENANT_COMMANDS_PER_SECOND")]
    pub(crate) tenant_commands_per_second: Option<u64>,
    /// limits.tenant_burst: commands a tenant may send at once after a quiet spell (0: one second's worth).
    #[arg(long, env = "TALLY_TENANT_BURST")]
    pub(crate) tenant_burst: Option<u64>,
    /// limits.max_calls_in_flight: calls in flight at once before more are refused as overload (0: no bound).
    #[arg(long, env = "TALLY_MAX_CALLS_IN_FLIGHT")]
    pub(crate) max_calls_in_flight: Option<u64>,
    /// limits.max_streams_per_connection: streams one HTTP/2 connection may have open at once.
    #[arg(long, env = "TALLY_MAX_STREAMS_PER_CONNECTION")]
    pub(crate) max_streams_per_connection: Option<u32>,
    /// metrics.listen: address of the Prometheus endpoint (GET /metrics); "" turns it off.
    #[arg(long, env = "TALLY_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<String>,
    /// log.filter: which log lines, as a tracing filter (TALLY_LOG also sets it).
    #[arg(long, env = "TALLY_LOG")]
    pub(crate) log_filter: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum OnCorruptArg {
    Stay,
    Exit,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DurabilityArg {
    Sync,
    Buffered,
}

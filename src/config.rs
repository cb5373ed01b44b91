//! The server's configuration: every setting of `tally serve` in one TOML document, with
//! defaults, overridden by environment variables and then by flags (each flag names its
//! variable). `tally serve --print-config` prints the effective document; `docs/CONFIG.md`
//! documents each key.
//!
//! Invariant: a setting exists in exactly one place here; flags and variables only
//! override it, and every value is checked before anything starts.

use crate::domain::{IngestPolicy, Policy, RateTable, TierPolicy};
use crate::engine::EngineConfig;
use crate::log::Durability;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest log segment: a segment is preallocated whole, and one frame must fit in it.
pub const MAX_SEGMENT_MIB: u64 = 1024;

/// Everything `tally serve` can be told.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub storage: StorageSection,
    pub ledger: LedgerSection,
    pub engine: EngineSection,
    pub ingest: IngestSection,
    pub links: LinksSection,
    pub auth: AuthSection,
    pub deliveries: DeliveriesSection,
    pub limits: LimitsSection,
    pub metrics: MetricsSection,
    pub log: LogSection,
}

/// The gRPC listener and what it does with a refused log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address of the gRPC API; port 0 picks a free port (printed on start).
    pub listen: String,
    /// What `serve` does when the log is refused as corrupt.
    pub on_corrupt_log: OnCorruptLog,
    /// Seconds a stop (SIGTERM, Ctrl-C) may take to drain calls, end streams and write the
    /// write-state snapshot before the process stops hard.
    pub shutdown_grace_seconds: u64,
}

/// Default of `server.shutdown_grace_seconds`: an orchestrator's usual grace (Kubernetes
/// waits 30 s before SIGKILL) with room to spare; unary calls finish in milliseconds, and a
/// snapshot of millions of keys in a few seconds.
pub const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 10;

/// Longest grace a stop may take: beyond an hour a stuck stop is a fault to see, not wait on.
pub const MAX_SHUTDOWN_GRACE_SECONDS: u64 = 3600;

/// What `serve` does when its log is refused as corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnCorruptLog {
    /// Keep the port open: health answers NOT_SERVING, every other call DATA_LOSS naming
    /// the bad sequence number, until the process is stopped (then exit code 2). Lets an
    /// orchestrator's health check and an operator see why.
    Stay,
    /// Exit with code 2 at once.
    Exit,
}

/// Where and how the log is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// The data directory: the log, the projections, snapshots and exports.
    pub data_dir: PathBuf,
    pub durability: DurabilitySetting,
    /// Size of each preallocated log segment, in MiB.
    pub segment_mib: u64,
}

/// [`Durability`] as a setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DurabilitySetting {
    /// Acknowledge only after fdatasync.
    Sync,
    /// Skip fdatasync: a machine crash can lose acknowledged commands (benchmarks only).
    Buffered,
}

/// The ledger's rules that are a program's choice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSection {
    /// Tiers by lifetime points earned, ascending, the first at 0: `name:points,…`.
    pub tiers: String,
    /// Version name of the accrual rate table, recorded in every accrual.
    pub rate_table_version: String,
    /// Points per theo dollar, in thousandths (1000 = one point per dollar of theo).
    pub points_per_theo_dollar_milli: u64,
}

/// Engine internals an operator may tune.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Requests waiting for the sequencer before callers hear RESOURCE_EXHAUSTED.
    pub inbox_capacity: usize,
    /// Records between write-state snapshots (and at least 5 minutes).
    pub snapshot_every_records: u64,
    /// Records between projection snapshot files; 0 turns them off.
    pub projection_snapshot_every_records: u64,
    /// MiB of the projection store's page cache (sled's; its own default is 1 GiB).
    pub projection_cache_mib: u64,
    /// Seconds folded projection records wait at most before they are written to the store.
    pub projection_flush_seconds: u64,
    /// Log time for which the writer keeps an accepted command's identities whole in RAM;
    /// older ones are read back from the log (docs/API.md, "Idempotency").
    pub identity_window_seconds: u64,
    /// MiB the identity window may take, whichever limit is reached first.
    pub identity_window_mib: u64,
    /// How often the sweeper expires holds past their deadline, in milliseconds.
    pub sweep_interval_ms: u64,
}

/// The ingest pipeline: retries, content dedup and the dead-letter queue's bounds
/// (`docs/INGEST.md`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSection {
    /// Attempts before a transiently failing event is dead-lettered (the first included).
    pub max_attempts: u32,
    /// Delay before the second attempt, in milliseconds; doubled per retry.
    pub retry_base_delay_ms: u64,
    /// Longest delay between attempts, in milliseconds.
    pub retry_max_delay_ms: u64,
    /// The same content from the same source within this window is a duplicate.
    pub dedup_window_seconds: u64,
    /// Letters one member may have in the dead-letter queue.
    pub dead_letters_per_member_max: u64,
    /// Letters in one tenant's dead-letter queue.
    pub dead_letters_max: u64,
}

impl Default for IngestSection {
    fn default() -> Self {
        let p = IngestPolicy::default();
        Self {
            max_attempts: p.max_attempts,
            retry_base_delay_ms: p.retry_base_delay_ms,
            retry_max_delay_ms: p.retry_max_delay_ms,
            dedup_window_seconds: p.dedup_window_seconds,
            dead_letters_per_member_max: p.dead_letters_per_member_max,
            dead_letters_max: p.dead_letters_max,
        }
    }
}

/// Links to accounts in other systems.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinksSection {
    /// The base of the deep links CreateLink answers: `{base_url}/link?linkId=…&token=…`.
    pub base_url: String,
}

impl Default for LinksSection {
    fn default() -> Self {
        Self {
            base_url: crate::api::link_settings::DEFAULT_BASE_URL.into(),
        }
    }
}

/// Credentials: the key ring that signs tokens and API keys, and what tokens must say.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// The key ring file (`kid hex-secret` lines, the first signs); "" means
    /// `<data_dir>/auth.keys`, made with one random key if missing. `TALLY_AUTH_KEYS`
    /// (`kid:hex,kid:hex`) replaces the file. Never in the log.
    pub keys_file: String,
    /// The `iss` of the tokens this server makes and accepts.
    pub issuer: String,
    /// The `aud` of the tokens this server makes and accepts.
    pub audience: String,
    /// How far a token's times may be off the server's clock.
    pub clock_skew_seconds: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            keys_file: String::new(),
            issuer: crate::api::auth::DEFAULT_ISSUER.into(),
            audience: crate::api::auth::DEFAULT_AUDIENCE.into(),
            clock_skew_seconds: crate::api::auth::DEFAULT_CLOCK_SKEW_SECONDS,
        }
    }
}

/// Webhook deliveries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveriesSection {
    /// How often the delivery worker looks for deliveries that are due.
    pub poll_interval_ms: u64,
    /// Endpoints may point at private, loopback and link-local addresses. Off: a tenant
    /// cannot aim the server at internal services.
    pub allow_private_networks: bool,
    /// Certificates (PEM) of authorities trusted for https endpoints besides the Mozilla
    /// root programme's: a private CA. "": none.
    pub ca_file: String,
}

impl Default for DeliveriesSection {
    fn default() -> Self {
        Self {
            poll_interval_ms: 200,
            allow_private_networks: false,
            ca_file: String::new(),
        }
    }
}

/// The longest clock skew a token may have: beyond 10 minutes an expired token lives on
/// too long.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 600;

/// Rate limits per tenant on mutating calls, and admission.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Mutating commands one tenant may send a second; 0 turns the limits off.
    pub tenant_commands_per_second: u64,
    /// Commands a tenant may send at once after a quiet spell; 0 means one second's worth.
    pub tenant_burst: u64,
    /// Calls in flight at once before more are refused as overload; 0: no bound.
    pub max_calls_in_flight: u64,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_streams_per_connection: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            tenant_commands_per_second: 0,
            tenant_burst: 0,
            max_calls_in_flight: crate::api::admission::DEFAULT_MAX_CALLS_IN_FLIGHT as u64,
            max_streams_per_connection: crate::api::admission::DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// The Prometheus endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the HTTP endpoint serving `GET /metrics`; empty turns it off.
    pub listen: String,
}

/// Log lines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    /// Which lines to write, as a tracing filter (`info`, `tally=debug`, …).
    pub filter: String,
}

/// How log lines look.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line, with the current span's fields.
    Json,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            on_corrupt_log: OnCorruptLog::Stay,
            shutdown_grace_seconds: DEFAULT_SHUTDOWN_GRACE_SECONDS,
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./tally-data"),
            durability: DurabilitySetting::Sync,
            segment_mib: crate::log::DEFAULT_SEGMENT_BYTES >> 20,
        }
    }
}

impl Default for LedgerSection {
    fn default() -> Self {
        Self {
            tiers: crate::domain::tier::DEFAULT_TIERS.into(),
            rate_table_version: "default-1".into(),
            points_per_theo_dollar_milli: 1000,
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        Self {
            inbox_capacity: crate::engine::DEFAULT_INBOX_CAPACITY,
            snapshot_every_records: crate::engine::DEFAULT_SNAPSHOT_EVERY,
            projection_snapshot_every_records: crate::engine::DEFAULT_PROJECTION_SNAPSHOT_EVERY,
            projection_cache_mib: crate::projection::DEFAULT_CACHE_BYTES >> 20,
            projection_flush_seconds: crate::projection::FLUSH_AGE.as_secs(),
            identity_window_seconds: crate::domain::identities::DEFAULT_WINDOW_SECONDS,
            identity_window_mib: crate::domain::identities::DEFAULT_WINDOW_BYTES >> 20,
            sweep_interval_ms: crate::engine::sweeper::DEFAULT_SWEEP_INTERVAL.as_millis() as u64,
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

/// A setting that cannot be used, named by its key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// What `serve` runs with, checked and turned into the types the engine takes.
#[derive(Clone, Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub on_corrupt_log: OnCorruptLog,
    /// How long a stop may take before the process stops hard.
    pub shutdown_grace: Duration,
    pub sweep_interval: Duration,
    pub links_base_url: String,
    /// The key ring file, issuer, audience and clock skew of tokens.
    pub auth_keys_file: PathBuf,
    pub auth_issuer: String,
    pub auth_audience: String,
    pub auth_clock_skew_seconds: u64,
    pub delivery_poll_interval: Duration,
    pub delivery_destinations: crate::outbound::Destinations,
    pub delivery_ca_file: Option<PathBuf>,
    /// Per-tenant limits on mutating calls, if on.
    pub tenant_limit: Option<crate::api::limits::RateLimit>,
    pub admission: crate::api::admission::Admission,
    pub engine: EngineConfig,
}

impl Config {
    /// Reads a TOML file over the defaults: keys it leaves out keep their default, an
    /// unknown key or a wrong type is an error naming it.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses a TOML document over the defaults.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// The document `--print-config` shows.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration serializes")
    }

    /// Checks every value and builds the engine's configuration.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
        let listen = self.server.listen.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("{:?} is not an address: {e}", self.server.listen),
            )
        })?;
        let metrics_listen = match self.metrics.listen.trim() {
            "" => None,
            address => Some(
                address
                    .parse()
                    .map_err(|e| invalid("metrics.listen", format!("{address:?} is not an address: {e}")))?,
            ),
        };
        if !(1..=MAX_SHUTDOWN_GRACE_SECONDS).contains(&self.server.shutdown_grace_seconds) {
            return Err(invalid(
                "server.shutdown_grace_seconds",
                format!("must be 1 to {MAX_SHUTDOWN_GRACE_SECONDS}"),
            ));
        }
        let segment_mib = self.storage.segment_mib;
        if segment_mib == 0 || segment_mib > MAX_SEGMENT_MIB {
            return Err(invalid(
                "storage.segment_mib",
                format!("must be 1 to {MAX_SEGMENT_MIB}, got {segment_mib}"),
            ));
        }
        let tiers = TierPolicy::parse(&self.ledger.tiers).map_err(|e| invalid("ledger.tiers", e.to_string()))?;
        if self.ledger.rate_table_version.trim().is_empty() {
            return Err(invalid("ledger.rate_table_version", "must not be empty".into()));
        }
        if self.engine.inbox_capacity == 0 {
            return Err(invalid("engine.inbox_capacity", "must be at least 1".into()));
        }
        if self.engine.snapshot_every_records == 0 {
            return Err(invalid("engine.snapshot_every_records", "must be at least 1".into()));
        }
        if self.engine.sweep_interval_ms == 0 {
            return Err(invalid("engine.sweep_interval_ms", "must be at least 1".into()));
        }
        let base_url = self.links.base_url.trim();
        let scheme_ok = base_url.starts_with("https://") || base_url.starts_with("http://");
        if !scheme_ok || base_url.split_once("://").is_none_or(|(_, rest)| rest.is_empty()) {
            return Err(invalid("links.base_url", format!("{base_url:?} is not an http(s) URL")));
        }
        if self.auth.issuer.trim().is_empty() || self.auth.audience.trim().is_empty() {
            return Err(invalid(
                "auth.issuer",
                "the issuer and audience must not be empty".into(),
            ));
        }
        if self.auth.clock_skew_seconds > MAX_CLOCK_SKEW_SECONDS {
            return Err(invalid(
                "auth.clock_skew_seconds",
                format!("must be at most {MAX_CLOCK_SKEW_SECONDS}"),
            ));
        }
        if self.deliveries.poll_interval_ms == 0 {
            return Err(invalid("deliveries.poll_interval_ms", "must be at least 1".into()));
        }
        if self.limits.max_streams_per_connection == 0 {
            return Err(invalid(
                "limits.max_streams_per_connection",
                "must be at least 1".into(),
            ));
        }
        let i = &self.ingest;
        if i.max_attempts == 0 {
            return Err(invalid("ingest.max_attempts", "must be at least 1".into()));
        }
        if i.retry_base_delay_ms == 0 || i.retry_max_delay_ms < i.retry_base_delay_ms {
            return Err(invalid(
                "ingest.retry_max_delay_ms",
                format!(
                    "must be at least ingest.retry_base_delay_ms ({}), which must be at least 1",
                    i.retry_base_delay_ms
                ),
            ));
        }
        if i.dead_letters_per_member_max == 0 || i.dead_letters_max == 0 {
            return Err(invalid(
                "ingest.dead_letters_max",
                "the dead-letter bounds must be at least 1".into(),
            ));
        }
        let engine = EngineConfig {
            durability: match self.storage.durability {
                DurabilitySetting::Sync => Durability::Sync,
                DurabilitySetting::Buffered => Durability::Buffered,
            },
            segment_bytes: segment_mib << 20,
            policy: Policy {
                tiers,
                rate_table: RateTable {
                    version: self.ledger.rate_table_version.clone(),
                    points_per_theo_dollar_milli: self.ledger.points_per_theo_dollar_milli,
                },
                ingest: IngestPolicy {
                    max_attempts: i.max_attempts,
                    retry_base_delay_ms: i.retry_base_delay_ms,
                    retry_max_delay_ms: i.retry_max_delay_ms,
                    dedup_window_seconds: i.dedup_window_seconds,
                    dead_letters_per_member_max: i.dead_letters_per_member_max,
                    dead_letters_max: i.dead_letters_max,
                },
            },
            inbox_capacity: self.engine.inbox_capacity,
            snapshot_every: self.engine.snapshot_every_records,
            snapshot_interval: crate::engine::DEFAULT_SNAPSHOT_INTERVAL,
            projection_snapshot_every: self.engine.projection_snapshot_every_records,
            projection_cache_bytes: self.engine.projection_cache_mib << 20,
            projection_flush_age: std::time::Duration::from_secs(self.engine.projection_flush_seconds),
            identity_window: crate::domain::state::WindowPolicy::new(
                self.engine.identity_window_seconds,
                self.engine.identity_window_mib << 20,
            ),
            ..EngineConfig::new(&self.storage.data_dir)
        };
        Ok(Settings {
            listen,
            metrics_listen,
            on_corrupt_log: self.server.on_corrupt_log,
            shutdown_grace: Duration::from_secs(self.server.shutdown_grace_seconds),
            sweep_interval: Duration::from_millis(self.engine.sweep_interval_ms),
            links_base_url: base_url.to_string(),
            auth_keys_file: match self.auth.keys_file.trim() {
                "" => crate::api::auth::default_keys_file(&self.storage.data_dir),
                file => PathBuf::from(file),
            },
            auth_issuer: self.auth.issuer.clone(),
            auth_audience: self.auth.audience.clone(),
            auth_clock_skew_seconds: self.auth.clock_skew_seconds,
            delivery_poll_interval: Duration::from_millis(self.deliveries.poll_interval_ms),
            delivery_destinations: if self.deliveries.allow_private_networks {
                crate::outbound::Destinations::AnyAddress
            } else {
                crate::outbound::Destinations::PublicOnly
            },
            delivery_ca_file: match self.deliveries.ca_file.trim() {
                "" => None,
                file => Some(PathBuf::from(file)),
            },
            tenant_limit: match self.limits.tenant_commands_per_second {
                0 => None,
                per_second => Some(crate::api::limits::RateLimit {
                    per_second,
                    burst: match self.limits.tenant_burst {
                        0 => per_second,
                        burst => burst,
                    },
                }),
            },
            admission: crate::api::admission::Admission {
                max_calls_in_flight: match self.limits.max_calls_in_flight {
                    0 => None,
                    n => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                },
                max_streams_per_connection: self.limits.max_streams_per_connection,
            },
            engine,
        })
    }
}

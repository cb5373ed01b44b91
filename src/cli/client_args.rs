//! The arguments of the client commands (`ingest`, `dlq`, `keys`, `deliveries`) and of
//! `token issue`: the server they talk to and the credential they present.

use clap::Subcommand;
use std::path::{Path, PathBuf};

/// The server a client command talks to, and as whom.
#[derive(clap::Args)]
pub(crate) struct TargetArgs {
    /// The server, as a URL.
    #[arg(long, global = true, env = "TALLY_TARGET", default_value = "http://127.0.0.1:50051")]
    pub(crate) target: String,
    #[command(flatten)]
    pub(crate) credential: CredentialArgs,
}

/// The credential of a client command: a token, or an operator token made from the key
/// ring (which only whoever can read the server's key file can do).
#[derive(clap::Args, Clone)]
pub(crate) struct CredentialArgs {
    /// A bearer token (`tally token issue`, or a session's); its tenant and subject are the
    /// caller's.
    #[arg(long, global = true, env = "TALLY_TOKEN")]
    pub(crate) token: Option<String>,
    /// Without --token: make a short operator token with the key ring in this file (or
    /// TALLY_AUTH_KEYS).
    #[arg(
        long,
        global = true,
        env = "TALLY_AUTH_KEYS_FILE",
        default_value = "tally-data/auth.keys"
    )]
    pub(crate) keys: PathBuf,
    /// Without --token: the tenant of the operator token.
    #[arg(long, global = true, env = "TALLY_TENANT", default_value = "default")]
    pub(crate) tenant: String,
    /// Without --token: the subject of the operator token, recorded as the actor.
    #[arg(long, global = true, env = "TALLY_ACTOR", default_value = "operator")]
    pub(crate) actor: String,
}

/// How long an operator token a client command makes for itself lives: the run of one
/// command, with room for a slow one.
pub(crate) const CLIENT_TOKEN_TTL_SECONDS: u64 = 3_600;

impl CredentialArgs {
    /// The token to send: the one given, or an operator token with `roles`.
    pub(crate) fn token(&self, roles: &[tally::domain::access::Role]) -> Result<String, String> {
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
pub(crate) fn auth_settings(keys: &Path) -> Result<tally::api::auth::AuthSettings, String> {
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

pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[derive(Subcommand)]
pub(crate) enum TokenCommand {
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
pub(crate) enum DeliveriesCommand {
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
pub(crate) enum KeysCommand {
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
pub(crate) struct LetterFilterArgs {
    /// member.enrolled, points.award, rating_slip.completed or points.reverse.
    #[arg(long = "type")]
    pub(crate) type_name: Option<String>,
    #[arg(long)]
    pub(crate) member: Option<String>,
    /// Received at or after (RFC 3339 UTC or µs since the epoch).
    #[arg(long)]
    pub(crate) from: Option<String>,
    /// Received at or before.
    #[arg(long)]
    pub(crate) to: Option<String>,
}

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
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

//! Authentication and authorization at the door: every call but health and reflection
//! carries a credential, and is refused before any handler runs unless the credential is
//! valid, names the tenant and caller the request names, and grants a permission the
//! method needs ([`METHODS`], the one table; a `tally.v1` method missing from it is refused
//! for everyone). The handler gets the [`Principal`] in the request's extensions and checks
//! what depends on the request (own account, manual rewards, each command of a batch).
//!
//! Credentials (`docs/AUTH.md`):
//! - `authorization: Bearer <JWT>`, HS256 with a key id (`kid`), issuer and audience checked,
//!   clock skew bounded. Either an SSO session's token (claim `sid`: the session must be
//!   in the log, not logged out, not expired by log time) or an operator token made offline
//!   by `tally token issue` (no `sid`: valid until its `exp`).
//! - A signed service call: `x-tally-key-id`, `x-tally-timestamp` (unix seconds) and
//!   `x-tally-signature`, the hex HMAC-SHA256 with the API key's secret over
//!   `method "\n" timestamp "\n" hex(sha256(request message bytes))`. Timestamps more than
//!   [`SIGNATURE_WINDOW_SECONDS`] off are refused; a signature seen within the window is
//!   refused as a replay.
//!
//! Keys come from a file or the environment, never from the log: the server's key ring
//! signs tokens, and an API key's secret is derived from a ring key and the key id, so the
//! log holds only the secret's fingerprint.

use super::slot::EngineSlot;
use super::status::error_status;
use crate::domain::access::{Permission, Permissions, Role};
use crate::domain::limits::{MAX_ID_BYTES, MAX_TENANT_BYTES};
use crate::domain::quote;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tonic::{Code, Status};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Metadata naming an API key on a signed call.
pub const KEY_ID_HEADER: &str = "x-tally-key-id";
/// Metadata with a signed call's time, unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-tally-timestamp";
/// Metadata with a signed call's signature, lowercase hex.
pub const SIGNATURE_HEADER: &str = "x-tally-signature";
/// Optional metadata naming the tenant; if present it must be the credential's.
pub const TENANT_HEADER: &str = "x-tally-tenant";
/// Optional metadata naming the caller; if present it must be the credential's subject.
pub const ACTOR_HEADER: &str = "x-tally-actor";

/// How far a signed call's timestamp may be from the server's clock: 5 minutes, the usual
/// window of signed HTTP APIs; clocks kept by NTP are well inside it.
pub const SIGNATURE_WINDOW_SECONDS: u64 = 300;

/// Signatures remembered to refuse replays, at most: a window's worth of 3,000 signed
/// calls a second (services that need more send batches). Past it, signed calls are
/// refused (RESOURCE_EXHAUSTED) rather than let a replay through.
pub const MAX_REMEMBERED_SIGNATURES: usize = 1_000_000;

/// Signatures of one API key remembered at most: a fifth of the whole, so that one busy
/// service cannot exhaust the replay memory for the others.
pub const MAX_REMEMBERED_SIGNATURES_PER_KEY: usize = MAX_REMEMBERED_SIGNATURES / 5;

/// Longest a signed request's body may take to arrive once its headers passed the checks.
pub const SIGNED_BODY_TIMEOUT_SECONDS: u64 = 10;

/// Largest signed request body buffered to digest it: the services' message limit.
pub const MAX_SIGNED_BODY_BYTES: usize = super::malformed::MAX_REQUEST_MESSAGE_BYTES;

/// Bytes of signed calls' bodies the server holds, in all, before their signatures are
/// checked. A signed call's body must be read whole to be verified, and until then anyone
/// who knows a key id can send one: without a bound, 200 calls with a garbage signature
/// held 4 MiB each. 64 MiB is sixteen bodies of the largest size at once — far more than
/// services that send batches one after the other need — and a fixed ceiling on what
/// unauthenticated senders can make the server hold.
pub const MAX_UNVERIFIED_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Bytes of one API key's signed bodies held before their signatures are checked: a
/// quarter of the whole, so that calls naming one key (a busy service, or someone who
/// learned its id) cannot take the budget from every other key.
pub const MAX_UNVERIFIED_BODY_BYTES_PER_KEY: usize = MAX_UNVERIFIED_BODY_BYTES / 4;

/// What a signed call whose body was not (or could not be) digested is told.
const BODY_UNREAD: &str = "the signed request's body is not one uncompressed message";

/// Longest operator token `tally token issue` makes: a day, like a session.
pub const OPERATOR_TOKEN_TTL_MAX_SECONDS: u64 = 86_400;

/// A token longer than this is not one of ours.
const MAX_TOKEN_BYTES: usize = 4096;

/// Key ids in the ring: a name that can be logged.
const MAX_KID_BYTES: usize = 64;

/// Services and paths served without a credential: health checks and reflection.
pub const PUBLIC_PREFIXES: [&str; 3] = [
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// What a call costs of its tenant's rate limit (`limits.tenant_commands_per_second`),
/// charged at the door for every method from the one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// Reads: never limited.
    Free,
    /// A call that changes something: one command.
    One,
    /// A batch: one per item, charged by its handler, which counts them.
    PerItem,
}

/// What a method needs.
#[derive(Clone, Copy, Debug)]
pub enum Access {
    /// Any one of these permissions.
    AnyOf(&'static [Permission]),
    /// Any authenticated caller; the handler decides (it records the refusals that matter).
    Handler,
}

use Permission::*;

/// Every `tally.v1` method and what it needs at the door.
pub const METHODS: &[(&str, Access, Charge)] = &[
    (
        "/tally.v1.Ledger/OpenAccount",
        Access::AnyOf(&[AccountsOpen]),
        Charge::One,
    ),
    ("/tally.v1.Ledger/Award", Access::Handler, Charge::One),
    (
        "/tally.v1.Ledger/Reserve",
        Access::AnyOf(&[PointsHold, PointsHoldOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Ledger/Commit",
        Access::AnyOf(&[PointsHold, PointsHoldOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Ledger/Release",
        Access::AnyOf(&[PointsHold, PointsHoldOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Ledger/SubmitBatch",
        Access::AnyOf(&[AccountsOpen, LoyaltyAward, LoyaltyAccrue, PointsHold, PointsHoldOwn]),
        Charge::PerItem,
    ),
    (
        "/tally.v1.Ledger/GetAccount",
        Access::AnyOf(&[AccountsRead, AccountsReadOwn]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ledger/GetHold",
        Access::AnyOf(&[AccountsRead, AccountsReadOwn]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ledger/ListHistory",
        Access::AnyOf(&[AccountsRead, AccountsReadOwn]),
        Charge::Free,
    ),
    ("/tally.v1.Audit/Replay", Access::AnyOf(&[AuditRead]), Charge::Free),
    ("/tally.v1.Audit/Subscribe", Access::AnyOf(&[AuditRead]), Charge::Free),
    ("/tally.v1.Audit/GetDigest", Access::AnyOf(&[AuditRead]), Charge::Free),
    (
        "/tally.v1.Audit/ListByCorrelation",
        Access::AnyOf(&[AuditRead]),
        Charge::Free,
    ),
    ("/tally.v1.Audit/ListByActor", Access::AnyOf(&[AuditRead]), Charge::Free),
    (
        "/tally.v1.Audit/GetByIdempotencyKey",
        Access::AnyOf(&[AuditRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Audit/GetAccountAsOf",
        Access::AnyOf(&[AuditRead]),
        Charge::Free,
    ),
    // Rebuilds and snapshots act on every tenant's rows at once: the server's operator only.
    (
        "/tally.v1.Operations/StartRebuild",
        Access::AnyOf(&[ServerManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Operations/StartReplayToFile",
        Access::AnyOf(&[OperationsRun]),
        Charge::One,
    ),
    (
        "/tally.v1.Operations/StartProjectionSnapshot",
        Access::AnyOf(&[ServerManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Operations/GetOperation",
        Access::AnyOf(&[OperationsRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Operations/ListOperations",
        Access::AnyOf(&[OperationsRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Operations/CancelOperation",
        Access::AnyOf(&[OperationsRun]),
        Charge::One,
    ),
    ("/tally.v1.Ingest/Ingest", Access::AnyOf(&[IngestWrite]), Charge::One),
    (
        "/tally.v1.Ingest/IngestBatch",
        Access::AnyOf(&[IngestWrite]),
        Charge::PerItem,
    ),
    (
        "/tally.v1.Ingest/ListDeadLetters",
        Access::AnyOf(&[IngestRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ingest/GetExternalEvent",
        Access::AnyOf(&[IngestRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Ingest/Redrive",
        Access::AnyOf(&[DeadLettersManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Ingest/Discard",
        Access::AnyOf(&[DeadLettersManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Ingest/GetPipelineStats",
        Access::AnyOf(&[IngestRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Links/CreateLink",
        Access::AnyOf(&[LinksWrite, LinksWriteOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Links/VerifyLink",
        Access::AnyOf(&[LinksWrite, LinksWriteOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Links/RevokeLink",
        Access::AnyOf(&[LinksWrite, LinksWriteOwn]),
        Charge::One,
    ),
    (
        "/tally.v1.Links/ListLinks",
        Access::AnyOf(&[LinksRead, LinksReadOwn]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/StartSession",
        Access::AnyOf(&[SessionsIssue]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/ValidateSession",
        Access::AnyOf(&[SessionsIssue]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/RefreshSession",
        Access::AnyOf(&[SessionsSelf, SessionsIssue]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/EndSession",
        Access::AnyOf(&[SessionsSelf, SessionsIssue]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/WhoAmI",
        Access::AnyOf(&[SessionsSelf]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/CreateApiKey",
        Access::AnyOf(&[KeysManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Identity/ListApiKeys",
        Access::AnyOf(&[KeysManage]),
        Charge::Free,
    ),
    (
        "/tally.v1.Identity/RevokeApiKey",
        Access::AnyOf(&[KeysManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/RegisterEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/UpdateEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/PauseEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/ResumeEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/DeleteEndpoint",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/ListEndpoints",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
    ("/tally.v1.Deliveries/Ack", Access::AnyOf(&[DeliveriesAck]), Charge::One),
    (
        "/tally.v1.Deliveries/GetDelivery",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Deliveries/ListDeliveries",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
    (
        "/tally.v1.Deliveries/RetryDelivery",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/RedriveDeliveries",
        Access::AnyOf(&[DeliveriesManage]),
        Charge::One,
    ),
    (
        "/tally.v1.Deliveries/GetEndpointStats",
        Access::AnyOf(&[DeliveriesRead]),
        Charge::Free,
    ),
];

/// What a method needs and what it costs, `None` if the table does not know it.
pub fn method(path: &str) -> Option<(Access, Charge)> {
    METHODS.iter().find(|(p, _, _)| *p == path).map(|(_, a, c)| (*a, *c))
}

/// How the caller proved who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An SSO session's token.
    Session(String),
    /// An operator token from `tally token issue`.
    Operator,
    /// A call signed with this API key.
    ApiKey(String),
}

/// The authenticated caller of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub tenant: String,
    pub roles: Vec<Role>,
    pub permissions: Permissions,
    pub credential: Credential,
}

impl Principal {
    pub fn has(&self, permission: Permission) -> bool {
        self.permissions.has(permission)
    }

    /// `any` allows every account of the tenant; `own` only the caller's own.
    pub fn require_account(&self, any: Permission, own: Permission, account: &str) -> Result<(), Status> {
        if self.has(any) || (self.has(own) && account == self.subject) {
            return Ok(());
        }
        let message = if self.has(own) {
            format!(
                "{} may act on its own account only, not {}",
                self.subject,
                quote(account)
            )
        } else {
            format!("needs permission {}", any.name())
        };
        Err(denied(
            "PERMISSION_MISSING",
            message,
            [("permission", any.name().to_string())],
        ))
    }

    pub fn require(&self, permission: Permission) -> Result<(), Status> {
        if self.has(permission) {
            return Ok(());
        }
        Err(denied(
            "PERMISSION_MISSING",
            format!("needs permission {}", permission.name()),
            [("permission", permission.name().to_string())],
        ))
    }
}

/// One key of the server's ring.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    secret: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The server's keys: the first signs new tokens and API keys, all of them verify, so a
/// key is rotated by putting a new one first and keeping the old until its tokens expire.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

/// The ring's file when the configuration names none.
pub const KEYS_FILE_NAME: &str = "auth.keys";

impl KeyRing {
    /// Parses `kid hex` lines (or `kid:hex` entries separated by commas, for the
    /// environment); `#` starts a comment.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        let mut keys: Vec<SigningKey> = Vec::new();
        let entries = text
            .lines()
            .flat_map(|line| line.split('#').next().unwrap_or("").split(','));
        for entry in entries {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (kid, hex) = entry
                .split_once(|c: char| c == ':' || c.is_whitespace())
                .ok_or_else(|| format!("a key is `kid hex`, got {entry:?}"))?;
            let kid = kid.trim();
            let valid_kid = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if kid.is_empty() || kid.len() > MAX_KID_BYTES || !kid.chars().all(valid_kid) {
                return Err(format!(
                    "key id {kid:?} must be 1 to {MAX_KID_BYTES} letters, digits or -_."
                ));
            }
            let secret = crate::query::json::unhex32(hex.trim())
                .ok_or_else(|| format!("key {kid}: the secret must be 64 hex digits (32 bytes)"))?;
            if keys.iter().any(|k| k.kid == kid) {
                return Err(format!("key id {kid} appears twice"));
            }
            keys.push(SigningKey {
                kid: kid.to_string(),
                secret,
            });
        }
        if keys.is_empty() {
            return Err("no keys".to_string());
        }
        Ok(KeyRing { keys })
    }

    /// The ring from `file`; if there is no such file, a new ring of one random key is
    /// written there first (mode 0600).
    pub fn load_or_create(file: &Path) -> Result<KeyRing, String> {
        match std::fs::read_to_string(file) {
            Ok(text) => KeyRing::parse(&text).map_err(|e| format!("{}: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random_bytes().map_err(|e| format!("no randomness: {e}"))?;
                let kid = format!(
                    "k{}",
                    &crate::query::json::hex(&random_bytes().map_err(|e| e.to_string())?)[..8]
                );
                let text = format!(
                    "# Tally's token and API-key keys: `kid hex-secret`, the first signs. Keep secret.\n{kid} {}\n",
                    crate::query::json::hex(&secret)
                );
                write_private(file, &text).map_err(|e| format!("{}: {e}", file.display()))?;
                KeyRing::parse(&text)
            }
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }

    pub fn signing(&self) -> &SigningKey {
        &self.keys[0]
    }

    pub fn get(&self, kid: &str) -> Option<&SigningKey> {
        self.keys.iter().find(|k| k.kid == kid)
    }
}

fn write_private(file: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(text.as_bytes())?;
    out.sync_all()
}

/// A fresh id: 128 random bits in hex, after a prefix that says what it is.
pub(crate) fn fresh_id(prefix: &str) -> Result<String, Status> {
    let bytes = random_bytes().map_err(|e| Status::internal(format!("STORAGE_ERROR: no randomness: {e}")))?;
    Ok(format!("{prefix}{}", &crate::query::json::hex(&bytes)[..32]))
}

pub(crate) fn random_bytes() -> std::io::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// How tokens are made and checked.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub keys: KeyRing,
    /// The `iss` of tokens this server makes and accepts.
    pub issuer: String,
    /// The `aud` of tokens this server makes and accepts.
    pub audience: String,
    /// How far a token's `iat` may be ahead of, and its `exp` behind, the server's clock.
    pub clock_skew_seconds: u64,
}

/// The issuer and audience when the configuration names none.
pub const DEFAULT_ISSUER: &str = "tally";
pub const DEFAULT_AUDIENCE: &str = "tally";
/// Clock skew allowed when the configuration names none: a minute.
pub const DEFAULT_CLOCK_SKEW_SECONDS: u64 = 60;

impl AuthSettings {
    /// Keys from `TALLY_AUTH_KEYS` if set, else from `file` (made if missing).
    pub fn load(file: &Path, issuer: &str, audience: &str, clock_skew_seconds: u64) -> Result<Self, String> {
        let keys = match std::env::var("TALLY_AUTH_KEYS") {
            Ok(text) if !text.trim().is_empty() => {
                KeyRing::parse(&text).map_err(|e| format!("TALLY_AUTH_KEYS: {e}"))?
            }
            _ => KeyRing::load_or_create(file)?,
        };
        Ok(AuthSettings {
            keys,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            clock_skew_seconds,
        })
    }

    /// The defaults for a data directory: its `auth.keys`.
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, String> {
        Self::load(
            &data_dir.join(KEYS_FILE_NAME),
            DEFAULT_ISSUER,
            DEFAULT_AUDIENCE,
            DEFAULT_CLOCK_SKEW_SECONDS,
        )
    }

    /// Signs claims into a JWT with the ring's first key.
    pub fn sign(&self, claims: &Claims) -> String {
        let key = self.keys.signing();
        let header = serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": key.kid});
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(claims).expect("claims are plain data"))
        );
        let tag = hmac(&key.secret, signing_input.as_bytes());
        format!("{signing_input}.{}", B64.encode(tag))
    }

    /// Checks a JWT's form, algorithm, key, signature, issuer, audience and times; the
    /// session, if it names one, is checked by the caller against the log.
    pub fn verify(&self, token: &str, now_us: u64) -> Result<Claims, Status> {
        let malformed = |why: &str| unauthenticated("CREDENTIAL_MALFORMED", format!("the bearer token {why}"));
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("is too long"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(claims), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("is not a JWT (three base64url parts)"));
        };
        let header: serde_json::Value = B64
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| malformed("has an unreadable header"))?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("HS256") {
            return Err(malformed("is not signed with HS256"));
        }
        let kid = header
            .get("kid")
            .and_then(|k| k.as_str())
            .ok_or_else(|| malformed("names no key id (kid)"))?;
        let key = self.keys.get(kid).ok_or_else(|| {
            unauthenticated(
                "SIGNATURE_INVALID",
                format!(
                    "the token is signed with key {}, which this server does not hold",
                    quote(kid)
                ),
            )
        })?;
        let tag = B64.decode(tag).map_err(|_| malformed("has an unreadable signature"))?;
        let signing_input = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
        let mut mac = HmacSha256::new_from_slice(&key.secret).expect("HMAC takes any key length");
        mac.update(signing_input.as_bytes());
        // Constant time: `verify_slice` compares without an early exit.
        mac.verify_slice(&tag)
            .map_err(|_| unauthenticated("SIGNATURE_INVALID", "the token's signature does not verify"))?;
        let claims: Claims = B64
            .decode(claims)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| malformed("has unreadable claims"))?;
        if claims.iss != self.issuer || claims.aud != self.audience {
            return Err(unauthenticated(
                "TOKEN_NOT_FOR_US",
                format!(
                    "the token is from {} for {}; this server accepts {:?} for {:?}",
                    quote(&claims.iss),
                    quote(&claims.aud),
                    self.issuer,
                    self.audience
                ),
            ));
        }
        let now = now_us / 1_000_000;
        if claims.exp.saturating_add(self.clock_skew_seconds) <= now {
            return Err(unauthenticated(
                "TOKEN_EXPIRED",
                format!("the token expired at {} (unix seconds)", claims.exp),
            ));
        }
        if claims.iat > now.saturating_add(self.clock_skew_seconds) {
            return Err(unauthenticated(
                "TOKEN_NOT_YET_VALID",
                format!(
                    "the token is issued at {}, more than {} s ahead of this server's clock",
                    claims.iat, self.clock_skew_seconds
                ),
            ));
        }
        Ok(claims)
    }

    /// An API key's secret: derived from the ring key `kid` and the key id, so that the
    /// log need hold only its fingerprint. `None` if the ring no longer holds `kid`.
    pub fn api_key_secret(&self, kid: &str, key_id: &str) -> Option<String> {
        let key = self.keys.get(kid)?;
        let mut hasher = blake3::Hasher::new_keyed(&key.secret);
        hasher.update(b"tally api key secret v1\0");
        hasher.update(key_id.as_bytes());
        Some(format!("tk_{}", hasher.finalize().to_hex()))
    }
}

impl AuthSettings {
    /// An endpoint's signing secret: derived from the ring key `kid` and the endpoint's
    /// nonce, which is all the log keeps of it. `None` if the ring no longer holds `kid`.
    pub fn endpoint_secret(&self, kid: &str, nonce: &str) -> Option<String> {
        let key = self.keys.get(kid)?;
        let mut hasher = blake3::Hasher::new_keyed(&key.secret);
        hasher.update(b"tally endpoint secret v1\0");
        hasher.update(nonce.as_bytes());
        Some(format!("whsec_{}", hasher.finalize().to_hex()))
    }
}

/// The fingerprint of an API key's secret that the log keeps.
pub fn api_key_fingerprint(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

/// A token's claims. Times are unix seconds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    /// The tenant.
    pub tnt: String,
    pub roles: Vec<String>,
    pub iat: u64,
    pub exp: u64,
    /// The session, for SSO tokens; none for operator tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// HMAC-SHA256.
pub fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// What a signed call signs: the method's path, the timestamp and the body's digest.
pub fn signing_string(path: &str, timestamp: &str, body_sha256_hex: &str) -> String {
    format!("{path}\n{timestamp}\n{body_sha256_hex}")
}

/// The lowercase hex SHA-256 of a request message's bytes.
pub fn body_digest_hex(message: &[u8]) -> String {
    crate::query::json::hex(&Sha256::digest(message))
}

/// The headers of a signed call, for clients written in Rust (the CLI, tests).
pub fn sign_call(
    key_id: &str,
    secret: &str,
    path: &str,
    unix_seconds: u64,
    message: &[u8],
) -> [(&'static str, String); 3] {
    let timestamp = unix_seconds.to_string();
    let tag = hmac(
        secret.as_bytes(),
        signing_string(path, &timestamp, &body_digest_hex(message)).as_bytes(),
    );
    [
        (KEY_ID_HEADER, key_id.to_string()),
        (TIMESTAMP_HEADER, timestamp),
        (SIGNATURE_HEADER, crate::query::json::hex(&tag)),
    ]
}

/// Signatures seen within the window, by the time they stand for.
#[derive(Default)]
struct SeenSignatures {
    seen: HashSet<[u8; 32]>,
    /// `(time, signature)` → the key that signed: pruned oldest first.
    order: std::collections::BTreeMap<(u64, [u8; 32]), String>,
    /// Signatures remembered per key, for the per-key share.
    per_key: HashMap<String, usize>,
}

impl SeenSignatures {
    /// Remembers a signature made at `timestamp` by `key_id`; `false` if it was seen before.
    fn first_time(&mut self, key_id: &str, signature: [u8; 32], timestamp: u64, now: u64) -> Result<bool, Status> {
        while let Some((&(at, oldest), _)) = self.order.first_key_value() {
            if at.saturating_add(SIGNATURE_WINDOW_SECONDS) >= now {
                break;
            }
            let (_, key) = self.order.pop_first().expect("just seen");
            self.seen.remove(&oldest);
            if let Some(count) = self.per_key.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.per_key.remove(&key);
                }
            }
        }
        if self.seen.contains(&signature) {
            return Ok(false);
        }
        let mine = self.per_key.get(key_id).copied().unwrap_or(0);
        if self.seen.len() >= MAX_REMEMBERED_SIGNATURES || mine >= MAX_REMEMBERED_SIGNATURES_PER_KEY {
            return Err(error_status(
                Code::ResourceExhausted,
                "SIGNED_CALLS_EXHAUSTED",
                "too many signed calls within the replay window; send batches or retry shortly",
                HashMap::new(),
            ));
        }
        self.seen.insert(signature);
        // Kept until the window has passed for both its own time and its arrival.
        self.order.insert((timestamp.max(now), signature), key_id.to_string());
        *self.per_key.entry(key_id.to_string()).or_default() += 1;
        Ok(true)
    }
}

/// Bytes of signed bodies held before their signatures are checked, in all and by key.
#[derive(Default)]
struct Unverified {
    total: usize,
    per_key: HashMap<String, usize>,
}

/// One signed call's share of [`Unverified`]: grown as its body arrives, given back when
/// it is dropped — once the signature is checked, or when the call fails or goes away.
struct Reservation {
    budget: Arc<Mutex<Unverified>>,
    key_id: String,
    bytes: usize,
}

impl Reservation {
    /// Takes `bytes` more, or refuses the call if that would pass the key's share or the
    /// whole budget (RESOURCE_EXHAUSTED: retry shortly, or send fewer calls at once).
    fn grow(&mut self, bytes: usize) -> Result<(), Status> {
        let mut budget = self.budget.lock().expect("the unverified bytes lock");
        let mine = budget.per_key.get(&self.key_id).copied().unwrap_or(0);
        let (bound, scope) = if mine + bytes > MAX_UNVERIFIED_BODY_BYTES_PER_KEY {
            (MAX_UNVERIFIED_BODY_BYTES_PER_KEY, "key")
        } else if budget.total + bytes > MAX_UNVERIFIED_BODY_BYTES {
            (MAX_UNVERIFIED_BODY_BYTES, "server")
        } else {
            budget.total += bytes;
            *budget.per_key.entry(self.key_id.clone()).or_default() += bytes;
            self.bytes += bytes;
            return Ok(());
        };
        Err(error_status(
            Code::ResourceExhausted,
            "SIGNED_BODIES_EXHAUSTED",
            &format!(
                "signed calls' bodies awaiting their signature check hold {bound} bytes for this {scope} already; retry shortly or send fewer calls at once"
            ),
            HashMap::from([
                ("scope".to_string(), scope.to_string()),
                ("bound_bytes".to_string(), bound.to_string()),
            ]),
        ))
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut budget = self.budget.lock().expect("the unverified bytes lock");
        budget.total -= self.bytes;
        if let Some(mine) = budget.per_key.get_mut(&self.key_id) {
            *mine -= self.bytes;
            if *mine == 0 {
                budget.per_key.remove(&self.key_id);
            }
        }
    }
}

/// The door: authenticates a call and checks the method's access.
pub struct Authenticator {
    slot: EngineSlot,
    seen: Mutex<SeenSignatures>,
    unverified: Arc<Mutex<Unverified>>,
}

impl Authenticator {
    pub fn new(slot: EngineSlot) -> Self {
        Self {
            slot,
            seen: Mutex::new(SeenSignatures::default()),
            unverified: Arc::new(Mutex::new(Unverified::default())),
        }
    }

    /// An empty share of the unverified-bytes budget for a call signed with `key_id`.
    fn reserve(&self, key_id: &str) -> Reservation {
        Reservation {
            budget: self.unverified.clone(),
            key_id: key_id.to_string(),
            bytes: 0,
        }
    }

    /// The caller of a call to `path`, or the status that refuses it. `body_sha256_hex` is
    /// the request message's digest, present when the call is signed.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body_sha256_hex: Option<&str>,
    ) -> Result<Principal, Status> {
        let engine = self.slot.engine()?;
        let settings = self.slot.auth()?;
        let (access, charge) = method(path).ok_or_else(|| {
            denied(
                "METHOD_NOT_AUTHORIZED",
                format!("no permission is defined for {}; nobody may call it", quote(path)),
                [],
            )
        })?;
        let principal = if headers.contains_key(SIGNATURE_HEADER) || headers.contains_key(KEY_ID_HEADER) {
            self.signed(settings, engine, path, headers, body_sha256_hex)?
        } else {
            bearer(settings, engine, headers)?
        };
        check_names(&principal, headers)?;
        if let Access::AnyOf(needed) = access {
            if !needed.iter().any(|p| principal.has(*p)) {
                let names: Vec<_> = needed.iter().map(|p| p.name()).collect();
                return Err(denied(
                    "PERMISSION_MISSING",
                    format!(
                        "{path} needs one of {names:?}; {} has {:?}",
                        principal.subject,
                        principal.permissions.names()
                    ),
                    [("permission", names.join(","))],
                ));
            }
        }
        // The tenant's rate limit, for every call that changes something: here, from the
        // one table, so that no handler can forget it. Batches count their items in their
        // handlers.
        if charge == Charge::One {
            self.slot.admit(&principal.tenant, 1)?;
        }
        Ok(principal)
    }

    /// What a signed call's headers alone can show (the key exists and is not revoked, the
    /// timestamp is in the window), checked before its body is read.
    pub fn precheck_signed(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        signed_headers(self.slot.auth()?, self.slot.engine()?, headers).map(|_| ())
    }

    fn signed(
        &self,
        settings: &AuthSettings,
        engine: &crate::engine::EngineHandle,
        path: &str,
        headers: &http::HeaderMap,
        body_sha256_hex: Option<&str>,
    ) -> Result<Principal, Status> {
        let call = signed_headers(settings, engine, headers)?;
        let digest = body_sha256_hex.ok_or_else(|| unauthenticated("CREDENTIAL_MALFORMED", BODY_UNREAD))?;
        let mut mac = HmacSha256::new_from_slice(call.secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(signing_string(path, &call.timestamp_text, digest).as_bytes());
        mac.verify_slice(&call.signature)
            .map_err(|_| unauthenticated("SIGNATURE_INVALID", "the call's signature does not verify"))?;
        if !self.seen.lock().expect("the replay cache lock").first_time(
            &call.key_id,
            call.signature,
            call.timestamp,
            call.now,
        )? {
            return Err(unauthenticated(
                "SIGNATURE_REPLAYED",
                "this signature was used before; sign each call anew",
            ));
        }
        Ok(Principal {
            subject: call.key_id.clone(),
            tenant: call.tenant,
            roles: vec![call.role],
            permissions: Permissions::of_roles(&[call.role]),
            credential: Credential::ApiKey(call.key_id),
        })
    }
}

/// A signed call's headers, checked: the key's tenant, role and secret.
struct SignedCall {
    key_id: String,
    timestamp_text: String,
    timestamp: u64,
    now: u64,
    signature: [u8; 32],
    tenant: String,
    role: Role,
    secret: String,
}

fn signed_headers(
    settings: &AuthSettings,
    engine: &crate::engine::EngineHandle,
    headers: &http::HeaderMap,
) -> Result<SignedCall, Status> {
    let malformed = |why: String| unauthenticated("CREDENTIAL_MALFORMED", why);
    let text = |name: &str| -> Result<&str, Status> {
        headers
            .get(name)
            .ok_or_else(|| {
                malformed(format!(
                    "a signed call needs {KEY_ID_HEADER}, {TIMESTAMP_HEADER} and {SIGNATURE_HEADER}; {name} is missing"
                ))
            })?
            .to_str()
            .map_err(|_| malformed(format!("{name} is not ASCII")))
    };
    let key_id = text(KEY_ID_HEADER)?;
    let timestamp_text = text(TIMESTAMP_HEADER)?;
    let signature = crate::query::json::unhex32(text(SIGNATURE_HEADER)?)
        .ok_or_else(|| malformed(format!("{SIGNATURE_HEADER} must be 64 hex digits")))?;
    let timestamp: u64 = timestamp_text
        .parse()
        .map_err(|_| malformed(format!("{TIMESTAMP_HEADER} must be unix seconds")))?;
    let now = engine.now_us() / 1_000_000;
    if timestamp.abs_diff(now) > SIGNATURE_WINDOW_SECONDS {
        return Err(unauthenticated(
            "TIMESTAMP_SKEW",
            format!(
                "the call is signed at {timestamp}, {} s from this server's clock ({now}); at most {SIGNATURE_WINDOW_SECONDS} s",
                timestamp.abs_diff(now)
            ),
        ));
    }
    let (tenant, role, kid) = {
        let credentials = engine.credentials();
        let key = credentials
            .api_keys
            .get(key_id)
            .ok_or_else(|| unauthenticated("KEY_UNKNOWN", format!("no API key {}", quote(key_id))))?;
        if key.revoked_at_us.is_some() {
            return Err(unauthenticated("KEY_REVOKED", format!("API key {key_id:?} is revoked")));
        }
        (key.tenant.clone(), key.role.clone(), key.signing_kid.clone())
    };
    let secret = settings.api_key_secret(&kid, key_id).ok_or_else(|| {
        unauthenticated(
            "KEY_RETIRED",
            format!("API key {key_id:?} was made with server key {kid:?}, which this server no longer holds"),
        )
    })?;
    // A key made by a newer build may carry a role this one does not know: refused, not
    // trusted with a guess (and never a panic on every call it signs).
    let role = Role::parse(&role).ok_or_else(|| {
        denied(
            "KEY_ROLE_UNKNOWN",
            format!(
                "API key {key_id:?} has role {}, which this server does not know",
                quote(&role)
            ),
            [],
        )
    })?;
    Ok(SignedCall {
        key_id: key_id.to_string(),
        timestamp_text: timestamp_text.to_string(),
        timestamp,
        now,
        signature,
        tenant,
        role,
        secret,
    })
}

fn bearer(
    settings: &AuthSettings,
    engine: &crate::engine::EngineHandle,
    headers: &http::HeaderMap,
) -> Result<Principal, Status> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
        unauthenticated(
            "CREDENTIAL_MISSING",
            "no credential: send `authorization: Bearer <token>` or sign the call (docs/AUTH.md)",
        )
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| unauthenticated("CREDENTIAL_MALFORMED", "authorization must be `Bearer <token>`"))?;
    let now_us = engine.now_us();
    let claims = settings.verify(token.trim(), now_us)?;
    let well_formed = |text: &str, max: usize| {
        !text.is_empty() && text.len() <= max && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c))
    };
    if !well_formed(&claims.tnt, MAX_TENANT_BYTES) || !well_formed(&claims.sub, MAX_ID_BYTES) {
        return Err(unauthenticated(
            "CREDENTIAL_MALFORMED",
            "the token's tenant or subject is not an id (ASCII letters, digits and -_.:@/)",
        ));
    }
    let mut roles = Vec::with_capacity(claims.roles.len());
    for name in &claims.roles {
        roles.push(Role::parse(name).ok_or_else(|| {
            unauthenticated(
                "CREDENTIAL_MALFORMED",
                format!("the token names an unknown role {}", quote(name)),
            )
        })?);
    }
    let credential = match &claims.sid {
        Some(session_id) => {
            let credentials = engine.credentials();
            let session = credentials
                .active_session(&claims.tnt, session_id, now_us)
                .map_err(|rejection| {
                    let reason = match &rejection {
                        crate::domain::Rejection::SessionNotActive { why: "expired", .. } => "SESSION_EXPIRED",
                        crate::domain::Rejection::SessionNotActive { .. } => "SESSION_ENDED",
                        _ => "SESSION_UNKNOWN",
                    };
                    unauthenticated(reason, rejection.to_string())
                })?;
            // The log is the authority on whom a session is for.
            if session.subject != claims.sub || [session.role.as_str()] != claims.roles.as_slice() {
                return Err(unauthenticated(
                    "SIGNATURE_INVALID",
                    "the token does not match its session",
                ));
            }
            Credential::Session(session_id.clone())
        }
        None => Credential::Operator,
    };
    Ok(Principal {
        permissions: Permissions::of_roles(&roles),
        subject: claims.sub,
        tenant: claims.tnt,
        roles,
        credential,
    })
}

/// A request may name its tenant and caller in metadata; they must be the credential's.
fn check_names(principal: &Principal, headers: &http::HeaderMap) -> Result<(), Status> {
    for (header, expected, reason) in [
        (TENANT_HEADER, &principal.tenant, "TENANT_MISMATCH"),
        (ACTOR_HEADER, &principal.subject, "ACTOR_MISMATCH"),
    ] {
        if let Some(value) = headers.get(header) {
            if value.as_bytes() != expected.as_bytes() {
                return Err(denied(
                    reason,
                    format!(
                        "{header} names {} but the credential is for {expected:?}",
                        quote(&String::from_utf8_lossy(value.as_bytes()))
                    ),
                    [],
                ));
            }
        }
    }
    Ok(())
}

pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Status {
    error_status(Code::Unauthenticated, reason, &message.into(), HashMap::new())
}

pub fn denied<const N: usize>(
    reason: &'static str,
    message: impl Into<String>,
    metadata: [(&str, String); N],
) -> Status {
    let metadata: HashMap<String, String> = metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    error_status(Code::PermissionDenied, reason, &message.into(), metadata)
}

/// The tower layer that puts the door in front of every service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(slot: EngineSlot) -> Self {
        Self {
            auth: Arc::new(Authenticator::new(slot)),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is ready (tower's rule: call the one that was polled, keep a fresh one).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            if PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return inner.call(request).await;
            }
            let (mut parts, body) = request.into_parts();
            let mut reservation = None;
            let (body, digest) = if parts.headers.contains_key(SIGNATURE_HEADER) {
                // Nothing is buffered for a call whose headers already fail.
                if let Err(status) = auth.precheck_signed(&parts.headers) {
                    return Ok(status.into_http());
                }
                // The key id passed the precheck, so it is readable. What is held of the
                // body until the signature is checked counts against the budget.
                let key_id = parts
                    .headers
                    .get(KEY_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let share = reservation.insert(auth.reserve(key_id));
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(SIGNED_BODY_TIMEOUT_SECONDS),
                    digest_body(body, share),
                );
                let read = match read.await {
                    Ok(read) => read,
                    Err(_) => Err(error_status(
                        Code::DeadlineExceeded,
                        "SIGNED_BODY_TIMEOUT",
                        &format!("the signed request's body did not arrive within {SIGNED_BODY_TIMEOUT_SECONDS} s"),
                        HashMap::new(),
                    )),
                };
                match read {
                    Ok((bytes, digest)) => (tonic::body::Body::new(http_body_util::Full::new(bytes)), digest),
                    Err(status) => return Ok(status.into_http()),
                }
            } else {
                (body, None)
            };
            let admitted = auth.admit(&path, &parts.headers, digest.as_deref());
            // Checked (or refused): the body no longer counts as unverified.
            drop(reservation);
            match admitted {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Reads a signed request's whole body, at most [`MAX_SIGNED_BODY_BYTES`] of message,
/// counting every byte against `share` as it arrives, and digests its message (the bytes
/// after the gRPC frame's 5-byte prefix). `None` for a body that is not one uncompressed
/// message.
async fn digest_body(
    body: tonic::body::Body,
    share: &mut Reservation,
) -> Result<(bytes::Bytes, Option<String>), Status> {
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            error_status(
                Code::InvalidArgument,
                "MALFORMED_REQUEST",
                &format!("cannot read the signed request: {}", e.message()),
                HashMap::new(),
            )
        })?;
        let Ok(data) = frame.into_data() else { continue };
        if bytes.len() + data.len() > MAX_SIGNED_BODY_BYTES + 5 {
            return Err(error_status(
                Code::ResourceExhausted,
                "MESSAGE_TOO_LARGE",
                &format!("the request message is larger than {MAX_SIGNED_BODY_BYTES} bytes"),
                HashMap::from([("limit_bytes".to_string(), MAX_SIGNED_BODY_BYTES.to_string())]),
            ));
        }
        share.grow(data.len())?;
        bytes.extend_from_slice(&data);
    }
    let bytes = bytes.freeze();
    let digest = match bytes.first() {
        Some(0) if bytes.len() >= 5 => {
            let length = u32::from_be_bytes(bytes[1..5].try_into().expect("4 bytes")) as usize;
            (bytes.len() == 5 + length).then(|| body_digest_hex(&bytes[5..]))
        }
        _ => None,
    };
    Ok((bytes, digest))
}

/// Where the key ring lives when the configuration names no file.
pub fn default_keys_file(data_dir: &Path) -> PathBuf {
    data_dir.join(KEYS_FILE_NAME)
}

/// Makes an operator token: the CLI's `tally token issue`, and tests.
pub fn operator_token(
    settings: &AuthSettings,
    tenant: &str,
    subject: &str,
    roles: &[Role],
    now_unix_seconds: u64,
    ttl_seconds: u64,
) -> String {
    settings.sign(&Claims {
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        sub: subject.to_string(),
        tnt: tenant.to_string(),
        roles: roles.iter().map(|r| r.name().to_string()).collect(),
        iat: now_unix_seconds,
        exp: now_unix_seconds.saturating_add(ttl_seconds.min(OPERATOR_TOKEN_TTL_MAX_SECONDS)),
        sid: None,
    })
}

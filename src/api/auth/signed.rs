//! Signed service calls: what a call signs, the headers a Rust client sends, and the
//! replay memory that refuses a signature seen within the window.

use super::common::{denied, unauthenticated, KEY_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use super::tokens::AuthSettings;
use crate::api::status::error_status;
use crate::domain::access::Role;
use crate::domain::quote;
use crate::secrets::hmac;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tonic::{Code, Status};

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
pub const MAX_SIGNED_BODY_BYTES: usize = crate::api::malformed::MAX_REQUEST_MESSAGE_BYTES;

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
pub(super) const BODY_UNREAD: &str = "the signed request's body is not one uncompressed message";

/// What a signed call signs: the method's path, the timestamp and the body's digest.
pub fn signing_string(path: &str, timestamp: &str, body_sha256_hex: &str) -> String {
    format!("{path}\n{timestamp}\n{body_sha256_hex}")
}

/// The lowercase hex SHA-256 of a request message's bytes.
pub fn body_digest_hex(message: &[u8]) -> String {
    crate::hex::hex(&Sha256::digest(message))
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
        (SIGNATURE_HEADER, crate::hex::hex(&tag)),
    ]
}

/// Signatures seen within the window, by the time they stand for.
#[derive(Default)]
pub(super) struct SeenSignatures {
    pub(super) seen: HashSet<[u8; 32]>,
    /// `(time, signature)` → the key that signed: pruned oldest first.
    pub(super) order: std::collections::BTreeMap<(u64, [u8; 32]), String>,
    /// Signatures remembered per key, for the per-key share.
    pub(super) per_key: HashMap<String, usize>,
}

impl SeenSignatures {
    /// Remembers a signature made at `timestamp` by `key_id`; `false` if it was seen before.
    pub(super) fn first_time(
        &mut self,
        key_id: &str,
        signature: [u8; 32],
        timestamp: u64,
        now: u64,
    ) -> Result<bool, Status> {
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
pub(super) struct Unverified {
    pub(super) total: usize,
    pub(super) per_key: HashMap<String, usize>,
}

/// One signed call's share of [`Unverified`]: grown as its body arrives, given back when
/// it is dropped — once the signature is checked, or when the call fails or goes away.
pub(super) struct Reservation {
    pub(super) budget: Arc<Mutex<Unverified>>,
    pub(super) key_id: String,
    pub(super) bytes: usize,
}

impl Reservation {
    /// Takes `bytes` more, or refuses the call if that would pass the key's share or the
    /// whole budget (RESOURCE_EXHAUSTED: retry shortly, or send fewer calls at once).
    pub(super) fn grow(&mut self, bytes: usize) -> Result<(), Status> {
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

/// A signed call's headers, checked: the key's tenant, role and secret.
pub(super) struct SignedCall {
    pub(super) key_id: String,
    pub(super) timestamp_text: String,
    pub(super) timestamp: u64,
    pub(super) now: u64,
    pub(super) signature: [u8; 32],
    pub(super) tenant: String,
    pub(super) role: Role,
    pub(super) secret: String,
}

pub(super) fn signed_headers(
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
    let signature = crate::hex::unhex32(text(SIGNATURE_HEADER)?)
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

/// Reads a signed request's whole body, at most [`MAX_SIGNED_BODY_BYTES`] of message,
/// counting every byte against `share` as it arrives, and digests its message (the bytes
/// after the gRPC frame's 5-byte prefix). `None` for a body that is not one uncompressed
/// message.
pub(super) async fn digest_body(
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

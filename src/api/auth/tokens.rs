//! Bearer tokens: HS256 JWTs signed with the ring's first key, their claims, and the
//! operator tokens `tally token issue` makes.

use super::common::unauthenticated;
use crate::domain::access::Role;
use crate::domain::quote;
use crate::secrets::{KeyRing, KEYS_FILE_NAME};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use std::path::Path;
use tonic::Status;

/// Longest operator token `tally token issue` makes: a day, like a session.
pub const OPERATOR_TOKEN_TTL_MAX_SECONDS: u64 = 86_400;

/// A token longer than this is not one of ours.
const MAX_TOKEN_BYTES: usize = 4096;

/// Tokens remembered as verified at most: a server's clients and operators hold far fewer
/// at once, and 4,096 sets of claims are a few hundred KiB.
const MAX_VERIFIED_TOKENS: usize = 4096;

/// Tokens that verified, by the blake3 hash of their bytes, with their claims.
#[derive(Default)]
pub struct VerifiedTokens {
    tokens: std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>,
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
        let tag = key.sign(signing_input.as_bytes());
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
        // Constant time: the comparison has no early exit.
        key.verify(signing_input.as_bytes(), &tag)
            .then_some(())
            .ok_or_else(|| unauthenticated("SIGNATURE_INVALID", "the token's signature does not verify"))?;
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
        self.check_times(&claims, now_us)?;
        Ok(claims)
    }

    /// Whether a token's claims are valid at `now_us`: not expired, not issued ahead of
    /// the clock (with the skew allowed).
    fn check_times(&self, claims: &Claims, now_us: u64) -> Result<(), Status> {
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
        Ok(())
    }

    /// [`Self::verify`], remembering tokens that verified: a client sends the same token
    /// with every call, and decoding its header and claims (base64, JSON) and checking its
    /// HMAC was about 5% of the server's CPU per unary call (BENCHMARKS.md). What a
    /// token verified to depends on the token's bytes and on these settings alone (the ring,
    /// issuer and audience are fixed for a server's life), so a remembered token is only
    /// checked for its times again; a session it names is checked by the caller every time.
    pub fn verify_remembered(&self, remembered: &VerifiedTokens, token: &str, now_us: u64) -> Result<Claims, Status> {
        if token.len() > MAX_TOKEN_BYTES {
            return self.verify(token, now_us);
        }
        let id = *blake3::hash(token.as_bytes()).as_bytes();
        let known = remembered
            .tokens
            .lock()
            .expect("no panic holds the tokens")
            .get(&id)
            .cloned();
        if let Some(claims) = known {
            self.check_times(&claims, now_us)?;
            return Ok(claims);
        }
        let claims = self.verify(token, now_us)?;
        let mut tokens = remembered.tokens.lock().expect("no panic holds the tokens");
        if tokens.len() >= MAX_VERIFIED_TOKENS {
            // Forgotten all at once: each is verified again on its next call, once.
            tokens.clear();
        }
        tokens.insert(id, claims.clone());
        Ok(claims)
    }

    /// An API key's secret: derived from the ring key `kid` and the key id, so that the
    /// log need hold only its fingerprint. `None` if the ring no longer holds `kid`.
    pub fn api_key_secret(&self, kid: &str, key_id: &str) -> Option<String> {
        self.keys.api_key_secret(kid, key_id)
    }
}

impl AuthSettings {
    /// An endpoint's signing secret: derived from the ring key `kid` and the endpoint's
    /// nonce, which is all the log keeps of it. `None` if the ring no longer holds `kid`.
    pub fn endpoint_secret(&self, kid: &str, nonce: &str) -> Option<String> {
        self.keys.endpoint_secret(kid, nonce)
    }
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

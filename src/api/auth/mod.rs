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

use super::status::error_status;
use crate::domain::access::{Permission, Permissions, Role};
use crate::domain::quote;
use std::collections::HashMap;
use tonic::{Code, Status};

use crate::secrets::random_bytes;
pub use crate::secrets::{api_key_fingerprint, default_keys_file, hmac, KeyRing, SigningKey, KEYS_FILE_NAME};

mod door;
mod methods;
mod signed;
mod tokens;

pub use door::*;
pub use methods::*;
pub use signed::*;
pub use tokens::*;

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

/// A fresh id: 128 random bits in hex, after a prefix that says what it is.
pub(crate) fn fresh_id(prefix: &str) -> Result<String, Status> {
    let bytes = random_bytes().map_err(|e| Status::internal(format!("STORAGE_ERROR: no randomness: {e}")))?;
    Ok(format!("{prefix}{}", &crate::query::json::hex(&bytes)[..32]))
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

//! What the door's parts share: the metadata names of a credential, the authenticated
//! caller ([`Principal`]) and how it proved who it is, the refusals, and fresh ids.

use crate::api::status::error_status;
use crate::domain::access::{Permission, Permissions, Role};
use crate::domain::quote;
use crate::secrets::random_bytes;
use std::collections::HashMap;
use tonic::{Code, Status};

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
    Ok(format!("{prefix}{}", &crate::hex::hex(&bytes)[..32]))
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

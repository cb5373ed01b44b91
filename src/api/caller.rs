//! Who is calling. Until credentials exist, the caller names its tenant and actor in
//! request metadata; every command records the actor, and every command and query is
//! confined to the tenant.

use crate::domain::{limits::MAX_ID_BYTES, limits::MAX_TENANT_BYTES, ANONYMOUS_ACTOR};
use tonic::{metadata::MetadataMap, Status};

/// Metadata key naming the caller's tenant.
pub const TENANT_HEADER: &str = "x-tally-tenant";
/// Metadata key naming the caller (a staff id, a service name).
pub const ACTOR_HEADER: &str = "x-tally-actor";
/// The tenant of callers that name none.
pub const DEFAULT_TENANT: &str = "default";

/// The caller of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub actor: String,
}

impl Caller {
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Caller, Status> {
        Ok(Caller {
            tenant: header(metadata, TENANT_HEADER, DEFAULT_TENANT, MAX_TENANT_BYTES)?,
            actor: header(metadata, ACTOR_HEADER, ANONYMOUS_ACTOR, MAX_ID_BYTES)?,
        })
    }
}

fn header(metadata: &MetadataMap, name: &str, default: &str, max: usize) -> Result<String, Status> {
    let Some(value) = metadata.get(name) else {
        return Ok(default.to_string());
    };
    let text = value
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("INVALID_ARGUMENT: metadata {name} is not ASCII")))?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:@/".contains(c);
    if text.is_empty() || text.len() > max || !text.chars().all(allowed) {
        return Err(Status::invalid_argument(format!(
            "INVALID_ARGUMENT: metadata {name} must be 1 to {max} ASCII letters, digits or -_.:@/"
        )));
    }
    Ok(text.to_string())
}

//! Who is calling: the [`Principal`] the door (`auth.rs`) authenticated, as the handlers
//! use it. The tenant of every command and query is the credential's; the actor recorded
//! in every event is its subject.

use super::auth::Principal;
use tonic::{Request, Status};

/// The caller of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub actor: String,
    pub principal: Principal,
}

impl Caller {
    /// The caller the door let in. A handler reached without one is a wiring bug, refused
    /// rather than served anonymously.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| super::auth::unauthenticated("CREDENTIAL_MISSING", "the call was not authenticated"))?;
        Ok(Caller {
            tenant: principal.tenant.clone(),
            actor: principal.subject.clone(),
            principal,
        })
    }
}

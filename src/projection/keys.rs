//! Index keys: the tenant, then the id, joined by NUL. Identifiers are ASCII without NUL, so
//! no two (tenant, id) pairs share a key.

/// An account (a record's stream) of a tenant: the history index's key.
pub fn account(tenant: &str, account: &str) -> Vec<u8> {
    [tenant.as_bytes(), account.as_bytes()].join(&0u8)
}

/// An idempotency identity: tenant, scope, key.
pub fn idempotency(tenant: &str, scope: &str, key: &str) -> Vec<u8> {
    [tenant.as_bytes(), scope.as_bytes(), key.as_bytes()].join(&0u8)
}

pub fn correlation(tenant: &str, correlation_id: &str) -> Vec<u8> {
    [tenant.as_bytes(), correlation_id.as_bytes()].join(&0u8)
}

pub fn actor(tenant: &str, actor: &str) -> Vec<u8> {
    [tenant.as_bytes(), actor.as_bytes()].join(&0u8)
}

//! Row keys. Identifiers are ASCII without NUL, so NUL separates the parts and keys sort by
//! tenant, then the id, then big-endian numbers (time, sequence).

pub fn account(tenant: &str, account: &str) -> Vec<u8> {
    [tenant.as_bytes(), account.as_bytes()].join(&0u8)
}

pub fn history(tenant: &str, account: &str, seq: u64) -> Vec<u8> {
    let mut key = self::account(tenant, account);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn idempotency(tenant: &str, scope: &str, key: &str) -> Vec<u8> {
    [tenant.as_bytes(), scope.as_bytes(), key.as_bytes()].join(&0u8)
}

pub fn correlation(tenant: &str, correlation_id: &str, seq: u64) -> Vec<u8> {
    let mut key = [tenant.as_bytes(), correlation_id.as_bytes()].join(&0u8);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn actor(tenant: &str, actor: &str, ts_us: u64, seq: u64) -> Vec<u8> {
    let mut key = [tenant.as_bytes(), actor.as_bytes()].join(&0u8);
    key.push(0);
    key.extend_from_slice(&ts_us.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The tenant (first part) and the sequence number (last 8 bytes) of an index key.
pub fn tenant_and_seq(key: &[u8]) -> (&str, u64) {
    let end = key
        .iter()
        .position(|&b| b == 0)
        .expect("index keys start with a tenant");
    let tenant = std::str::from_utf8(&key[..end]).expect("tenants are ASCII");
    let seq = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"));
    (tenant, seq)
}

//! Per-tenant rate limits on mutating calls: a token bucket per tenant, refilled at
//! `per_second` commands a second up to `burst`. A call that finds too few tokens is
//! refused with RESOURCE_EXHAUSTED / TENANT_RATE_LIMITED and told when to retry (a
//! `google.rpc.RetryInfo` detail and `retry_after_ms` in its ErrorInfo). This guards the
//! sequencer's inbox against one tenant crowding out the others; it is wall-clock policy at
//! the door, not a rule of the ledger, so nothing of it is in the log.

use crate::engine::Clock;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// Tokens are counted in millionths, so that refill needs no floating point.
const MICRO: u64 = 1_000_000;

/// Tenants tracked at most: a bucket is a few dozen bytes, and tenants are programs, not
/// members. Past it, full (idle) buckets are dropped first.
pub const MAX_TRACKED_TENANTS: usize = 100_000;

/// The limits; `per_second` 0 turns them off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u64,
    pub burst: u64,
}

pub struct TenantLimiter {
    limit: RateLimit,
    clock: Arc<dyn Clock>,
    /// Tenant → (tokens in millionths, time of the last refill in µs).
    buckets: Mutex<HashMap<String, (u64, u64)>>,
}

impl TenantLimiter {
    pub fn new(limit: RateLimit, clock: Arc<dyn Clock>) -> Self {
        Self {
            limit,
            clock,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `commands` tokens from the tenant's bucket (at most a whole burst, so that any
    /// batch can pass once the bucket is full), or says how long to wait.
    pub fn admit(&self, tenant: &str, commands: u64) -> Result<(), Status> {
        let RateLimit { per_second, burst } = self.limit;
        if per_second == 0 {
            return Ok(());
        }
        let capacity = burst.max(1).saturating_mul(MICRO);
        let cost = commands.clamp(1, burst.max(1)).saturating_mul(MICRO);
        let now = self.clock.now_us();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() >= MAX_TRACKED_TENANTS && !buckets.contains_key(tenant) {
            // Buckets that have refilled by now are the same as no bucket: drop them. If
            // every tenant is still busy, start over rather than grow: the bound is on
            // memory, and a reset only forgives one second's worth.
            buckets.retain(|_, (tokens, last)| {
                tokens.saturating_add(now.saturating_sub(*last).saturating_mul(per_second)) < capacity
            });
            if buckets.len() >= MAX_TRACKED_TENANTS {
                buckets.clear();
            }
        }
        let (tokens, last) = buckets.entry(tenant.to_string()).or_insert((capacity, now));
        let refill = now.saturating_sub(*last).saturating_mul(per_second);
        *tokens = tokens.saturating_add(refill).min(capacity);
        *last = now;
        if *tokens >= cost {
            *tokens -= cost;
            return Ok(());
        }
        let wait_us = (cost - *tokens).div_ceil(per_second);
        Err(limited(tenant, per_second, wait_us))
    }
}

fn limited(tenant: &str, per_second: u64, wait_us: u64) -> Status {
    let retry_after_ms = wait_us.div_ceil(1000);
    let metadata = HashMap::from([
        ("retry_after_ms".to_string(), retry_after_ms.to_string()),
        ("limit_per_second".to_string(), per_second.to_string()),
    ]);
    let mut details = ErrorDetails::with_error_info("TENANT_RATE_LIMITED", super::status::ERROR_DOMAIN, metadata);
    details.set_retry_info(Some(std::time::Duration::from_micros(wait_us)));
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "TENANT_RATE_LIMITED: tenant {tenant:?} is over its {per_second} commands a second; retry in {retry_after_ms} ms"
        ),
        details,
    )
}

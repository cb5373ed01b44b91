//! The ground every command family stands on: the policy `decide` reads, the context a
//! family decides in, what it decides, and the checks they share (identities used before,
//! ids and texts, an account that must exist, a tier that changes). The families
//! (`account.rs`, `award.rs`, `hold.rs`, …) import this and nothing of each other's;
//! `decide.rs` only dispatches to them.

use super::command::{Command, CommandMeta};
use super::event::{Effect, Event, TierChanged};
use super::rejection::Rejection;
use super::state::{Account, Fingerprint, Identity, NaturalKey, OlderRecords, Prior, State};
use super::tier::TierPolicy;

/// The server's rate table for gameplay accrual.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateTable {
    /// Recorded in every accrual so that a later audit knows which rates applied.
    pub version: String,
    /// Points per dollar of theo, in thousandths (1000 = one point per theo dollar).
    pub points_per_theo_dollar_milli: u64,
}

impl Default for RateTable {
    fn default() -> Self {
        Self {
            version: "default-1".to_string(),
            points_per_theo_dollar_milli: 1000,
        }
    }
}

/// Configuration `decide` reads. Events record what it decided, so replay never needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub tiers: TierPolicy,
    pub rate_table: RateTable,
    pub ingest: IngestPolicy,
}

/// How the ingest pipeline retries, deduplicates and bounds its dead-letter queue. Each
/// decision it makes is recorded in an event (a retry's time, a dead letter), so replay
/// never needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestPolicy {
    /// Attempts before a transiently failing event is dead-lettered (the first included).
    pub max_attempts: u32,
    /// Delay before the second attempt; each retry doubles it, up to `retry_max_delay_ms`.
    pub retry_base_delay_ms: u64,
    pub retry_max_delay_ms: u64,
    /// The same content from the same source within this window is a duplicate.
    pub dedup_window_seconds: u64,
    /// Letters one member may have in the queue (its dead letter and the events parked
    /// behind it); at the bound, new events for the member are refused.
    pub dead_letters_per_member_max: u64,
    /// Letters in a tenant's queue; at the bound, all the tenant's new external events are
    /// refused (other tenants' are not).
    pub dead_letters_max: u64,
}

impl Default for IngestPolicy {
    fn default() -> Self {
        Self {
            // 1 + 2 + 4 + … capped at 5 min: eight attempts span about 10 minutes, long
            // enough for an enrollment that lags its first accrual.
            max_attempts: 8,
            retry_base_delay_ms: 1_000,
            retry_max_delay_ms: 300_000,
            // A partner's redelivery of the same payload under a new id comes within a day.
            dedup_window_seconds: 86_400,
            // A member whose events keep failing is a problem to look at, not to queue for.
            dead_letters_per_member_max: 1_000,
            // About 100 MB of parked payloads at most: the queue lives in memory.
            dead_letters_max: 100_000,
        }
    }
}

/// An event to append, with the account stream it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emitted {
    pub tenant: String,
    pub account: String,
    pub event: Event,
}

/// What the ledger does with an accepted command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Append these events, in order.
    Append(Vec<Emitted>),
    /// The command was applied before: answer with its events, `first_seq..=last_seq`.
    Replay { first_seq: u64, last_seq: u64 },
    /// Nothing to do (an expiry pulse with no hold due).
    Nothing,
    /// Refuse the command, and record the refusal with these events (a comp a review must
    /// see). The events carry no idempotency key: the caller's key stays free.
    Refuse { events: Vec<Emitted>, rejection: Rejection },
}

/// What a command handler sees.
pub(super) struct Ctx<'a> {
    pub policy: &'a Policy,
    pub state: &'a State,
    pub meta: &'a CommandMeta,
    pub now_us: u64,
    /// The identities of the command being decided, worked out beforehand; `None` where a
    /// handler decides on behalf of another request (the ingest pipeline's awards).
    pub identity: Option<&'a Identity>,
    /// The log, for identities older than the window.
    pub older: &'a dyn OlderRecords,
}

/// The answer for an identity that was used before: the original result if the request is
/// the same, a conflict naming the first differing field if not.
pub(super) fn replay_or_conflict(prior: Prior, command: &Command) -> Result<Decision, Rejection> {
    match prior.print.first_difference(&command.print()) {
        None => Ok(Decision::Replay {
            first_seq: prior.first_seq,
            last_seq: prior.last_seq,
        }),
        Some(field) => Err(Rejection::IdempotencyConflict {
            field,
            original_sequence: prior.first_seq,
        }),
    }
}

/// [`super::state::Idempotency::find`]; a log that cannot be read refuses the command as
/// unavailable (its outcome is not known: the caller retries).
pub(super) fn find(
    state: &State,
    fingerprint: &Fingerprint,
    natural: bool,
    identity: Option<&Identity>,
    older: &dyn OlderRecords,
) -> Result<Option<Prior>, Rejection> {
    state
        .idempotency
        .find(fingerprint, natural, identity, older)
        .map_err(|reason| Rejection::IdentityUnreadable { reason })
}

/// Replay or conflict for an operation whose natural identity was seen before.
/// `known` is the identity's fingerprint if it was worked out beforehand; `command` makes
/// the request to compare, only when the identity was seen.
pub(super) fn check_natural(
    ctx: &Ctx<'_>,
    natural: &NaturalKey<'_>,
    known: Option<Fingerprint>,
    command: impl FnOnce() -> Command,
) -> Result<Option<Decision>, Rejection> {
    debug_assert!(known.is_none_or(|known| known == natural.fingerprint()));
    let fingerprint = known.unwrap_or_else(|| natural.fingerprint());
    match find(ctx.state, &fingerprint, true, ctx.identity, ctx.older)? {
        Some(prior) => replay_or_conflict(prior, &command()).map(Some),
        None => Ok(None),
    }
}

/// Capped exponential backoff with equal jitter: after `failed` failures, half of
/// `min(base · 2^(failed-1), max)` plus a draw from the other half. The draw is a hash of
/// `label`, `subject` and `failed`, not a random number, so replaying the log gives the
/// same times.
pub(super) fn jittered_backoff_us(base_ms: u64, max_ms: u64, failed: u32, label: &[u8], subject: &[u8]) -> u64 {
    let doubled = base_ms.saturating_mul(1u64.checked_shl(failed.saturating_sub(1)).unwrap_or(u64::MAX));
    let delay_us = doubled.min(max_ms).saturating_mul(1000);
    let mut hasher = blake3::Hasher::new();
    hasher.update(label);
    hasher.update(subject);
    hasher.update(&failed.to_le_bytes());
    let draw = u64::from_le_bytes(hasher.finalize().as_bytes()[..8].try_into().expect("8 bytes"));
    let half = delay_us / 2;
    half + draw % (delay_us - half + 1)
}

/// Identifiers: 1 to `max` bytes of ASCII letters, digits and `-_.:@/`.
pub(super) fn validate_id(field: &'static str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(Rejection::invalid(field, format!("is longer than {max} bytes")));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'/');
    if value.bytes().all(allowed) {
        return Ok(());
    }
    let bad = value
        .chars()
        .find(|&c| !c.is_ascii() || !allowed(c as u8))
        .expect("a refused byte belongs to a refused character");
    Err(Rejection::invalid(
        field,
        format!("contains {bad:?}; allowed are ASCII letters, digits and -_.:@/"),
    ))
}

/// Free text that may be empty: at most `max` bytes, no control characters.
pub(super) fn validate_text(field: &'static str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(Rejection::invalid(field, format!("is longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(Rejection::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// The account, or `AccountNotFound` in the caller's tenant.
pub(super) fn account<'a>(ctx: &'a Ctx<'_>, account: &str) -> Result<&'a Account, Rejection> {
    ctx.state
        .accounts
        .get(&super::state::AccountKey::new(&ctx.meta.tenant, account))
        .ok_or_else(|| Rejection::AccountNotFound {
            account: account.to_string(),
        })
}

/// The tier change that follows an event leaving the account at `after`, if its lifetime
/// points now fall in another tier (up after an award, down after a reversal).
pub(super) fn tier_change(policy: &Policy, after: &Balances) -> Option<Event> {
    let tier = policy.tiers.tier_for(after.lifetime);
    if tier == after.tier {
        return None;
    }
    let moved = Balances {
        tier: tier.to_string(),
        ..after.clone()
    };
    Some(Event::TierChanged(TierChanged {
        from: after.tier.clone(),
        to: tier.to_string(),
        effect: after.effect_to(&moved),
    }))
}

/// Balances of an account as an event will record them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Balances {
    pub posted: u64,
    pub held: u64,
    pub lifetime: u64,
    pub tier: String,
}

impl Balances {
    pub fn of(state: &State, account: &Account) -> Self {
        Self {
            posted: account.posted,
            held: account.held,
            lifetime: account.lifetime,
            tier: state.tier_name(account.tier).to_string(),
        }
    }

    /// The effect of moving from `self` to `after`.
    pub fn effect_to(&self, after: &Balances) -> Effect {
        assert!(after.held <= after.posted, "held must never exceed posted");
        Effect {
            posted_before: self.posted,
            posted_after: after.posted,
            held_before: self.held,
            held_after: after.held,
            lifetime_before: self.lifetime,
            lifetime_after: after.lifetime,
            tier_before: self.tier.clone(),
            tier_after: after.tier.clone(),
        }
    }
}

/// A number within its bounds, or a rejection naming the field and the bounds.
pub(super) fn in_range(field: &'static str, value: u64, min: u64, max: u64) -> Result<(), Rejection> {
    if value < min || value > max {
        return Err(Rejection::invalid(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(())
}

//! `decide`: the pure function from (state, command, time) to events or a rejection.
//! The command families live in `account.rs`, `award.rs` and `hold.rs`.

use super::command::{Command, CommandMeta};
use super::event::{Effect, Event};
use super::limits::{MAX_ID_BYTES, MAX_TENANT_BYTES, MAX_TRACE_ID_BYTES};
use super::rejection::Rejection;
use super::state::{Account, NaturalKey, State};
use super::tier::TierPolicy;
use super::{account, award, hold};

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
}

/// What a command handler sees.
pub(super) struct Ctx<'a> {
    pub policy: &'a Policy,
    pub state: &'a State,
    pub meta: &'a CommandMeta,
    pub now_us: u64,
}

/// Decides `command` against `state` at `now_us` (the timestamp its events will carry).
///
/// The idempotency check comes first, before any validation: a retry of an accepted
/// command is answered with the original result even if the rules have changed since.
pub fn decide(
    policy: &Policy,
    state: &State,
    meta: &CommandMeta,
    command: &Command,
    now_us: u64,
) -> Result<Decision, Rejection> {
    if let Some(key) = &meta.idempotency {
        if let Some(first_seq) = state.idempotency.first_seq_of_key(&meta.tenant, key) {
            return replay_or_conflict(state, first_seq, command);
        }
    }
    validate_meta(meta, command)?;
    let ctx = Ctx {
        policy,
        state,
        meta,
        now_us,
    };
    match command {
        Command::OpenAccount { account } => account::open(&ctx, account),
        Command::Award { account, source } => award::award(&ctx, account, source),
        Command::Reserve {
            account,
            amount,
            ttl_seconds,
        } => hold::reserve(&ctx, account, *amount, *ttl_seconds),
        Command::Commit { hold_id, amount } => hold::commit(&ctx, *hold_id, *amount),
        Command::Release { hold_id } => hold::release(&ctx, *hold_id),
        Command::ExpireDue { limit } => hold::expire_due(&ctx, *limit),
    }
}

/// The answer for an identity that was used before: the original result if the request is
/// the same, a conflict naming the first differing field if not.
pub(super) fn replay_or_conflict(state: &State, first_seq: u64, command: &Command) -> Result<Decision, Rejection> {
    let applied = state.idempotency.applied(first_seq);
    match applied.request.first_difference(&command.print()) {
        None => Ok(Decision::Replay {
            first_seq,
            last_seq: applied.last_seq,
        }),
        Some(field) => Err(Rejection::IdempotencyConflict {
            field,
            original_sequence: first_seq,
        }),
    }
}

/// Replay or conflict for an operation whose natural identity was seen before.
pub(super) fn check_natural(
    ctx: &Ctx<'_>,
    natural: &NaturalKey,
    command: &Command,
) -> Result<Option<Decision>, Rejection> {
    match ctx.state.idempotency.first_seq_of_natural(natural) {
        Some(first_seq) => replay_or_conflict(ctx.state, first_seq, command).map(Some),
        None => Ok(None),
    }
}

fn validate_meta(meta: &CommandMeta, command: &Command) -> Result<(), Rejection> {
    validate_id("tenant", &meta.tenant, MAX_TENANT_BYTES)?;
    validate_id("actor", &meta.actor, MAX_ID_BYTES)?;
    match &meta.idempotency {
        Some(key) => {
            validate_id("idempotency_key", &key.key, MAX_ID_BYTES)?;
            if !key.scope.is_empty() {
                validate_id("idempotency_scope", &key.scope, MAX_ID_BYTES)?;
            }
        }
        None if matches!(command, Command::ExpireDue { .. }) => {}
        None => return Err(Rejection::invalid("idempotency_key", "is required")),
    }
    validate_text("correlation_id", &meta.correlation_id, MAX_TRACE_ID_BYTES)?;
    validate_text("causation_id", &meta.causation_id, MAX_TRACE_ID_BYTES)?;
    Ok(())
}

/// Identifiers: 1 to `max` bytes of ASCII letters, digits and `-_.:@/`.
pub(super) fn validate_id(field: &'static str, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(Rejection::invalid(field, "is required"));
    }
    if value.len() > max {
        return Err(Rejection::invalid(field, format!("is longer than {max} bytes")));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:@/".contains(c);
    if let Some(bad) = value.chars().find(|&c| !allowed(c)) {
        return Err(Rejection::invalid(
            field,
            format!("contains {bad:?}; allowed are ASCII letters, digits and -_.:@/"),
        ));
    }
    Ok(())
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

//! Holds: reserve, commit (full or partial), release, and expiry by the sweeper's pulse.
//! Expiry is decided from record timestamps only: at or after `expires_at` a hold can no
//! longer be committed or released, whether or not the pulse has expired it yet.

use super::event::{Event, HoldCommitted, HoldExpired, HoldReleased, HoldReserved};
use super::limits::*;
use super::rejection::Rejection;
use super::rules::{account, validate_id, Balances, Ctx, Decision, Emitted};
use super::state::{AccountKey, Hold, HoldStatus};
use std::collections::HashMap;

pub(super) fn reserve(ctx: &Ctx<'_>, account_id: &str, amount: u64, ttl_seconds: u32) -> Result<Decision, Rejection> {
    validate_id("account_id", account_id, MAX_ID_BYTES)?;
    if amount == 0 {
        return Err(Rejection::invalid("amount", "must be at least 1"));
    }
    if !(HOLD_TTL_MIN_SECONDS..=HOLD_TTL_MAX_SECONDS).contains(&ttl_seconds) {
        return Err(Rejection::invalid(
            "ttl_seconds",
            format!("must be between {HOLD_TTL_MIN_SECONDS} and {HOLD_TTL_MAX_SECONDS}, got {ttl_seconds}"),
        ));
    }
    let current = account(ctx, account_id)?;
    if current.active_holds >= MAX_ACTIVE_HOLDS_PER_ACCOUNT {
        return Err(Rejection::TooManyHolds {
            account: account_id.to_string(),
            limit: MAX_ACTIVE_HOLDS_PER_ACCOUNT,
        });
    }
    if amount > current.available() {
        return Err(Rejection::InsufficientPoints {
            available: current.available(),
            requested: amount,
        });
    }
    let before = Balances::of(ctx.state, current);
    let after = Balances {
        held: before.held + amount,
        ..before.clone()
    };
    Ok(Decision::Append(vec![Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: account_id.to_string(),
        event: Event::HoldReserved(HoldReserved {
            // The hold's id is the sequence number its reservation will get.
            hold_id: ctx.state.head_seq + 1,
            amount,
            ttl_seconds,
            expires_at_us: ctx.now_us + u64::from(ttl_seconds) * 1_000_000,
            effect: before.effect_to(&after),
        }),
    }]))
}

pub(super) fn commit(ctx: &Ctx<'_>, hold_id: u64, amount: Option<u64>) -> Result<Decision, Rejection> {
    let hold = active_hold(ctx, hold_id)?;
    let committed = match amount {
        None => hold.amount,
        Some(0) => {
            return Err(Rejection::invalid(
                "amount",
                "must be at least 1 (release the hold instead)",
            ))
        }
        Some(requested) if requested > hold.amount => {
            return Err(Rejection::CommitExceedsHold {
                hold_id,
                held: hold.amount,
                requested,
            })
        }
        Some(requested) => requested,
    };
    let before = Balances::of(ctx.state, account(ctx, &hold.account)?);
    let after = Balances {
        posted: before.posted - committed,
        held: before.held - hold.amount,
        ..before.clone()
    };
    Ok(Decision::Append(vec![emit(
        hold,
        Event::HoldCommitted(HoldCommitted {
            hold_id,
            reserved_at_us: hold.created_at_us,
            expires_at_us: hold.expires_at_us,
            requested: amount,
            committed,
            released: hold.amount - committed,
            effect: before.effect_to(&after),
        }),
    )]))
}

pub(super) fn release(ctx: &Ctx<'_>, hold_id: u64) -> Result<Decision, Rejection> {
    let hold = active_hold(ctx, hold_id)?;
    let before = Balances::of(ctx.state, account(ctx, &hold.account)?);
    let after = Balances {
        held: before.held - hold.amount,
        ..before.clone()
    };
    Ok(Decision::Append(vec![emit(
        hold,
        Event::HoldReleased(HoldReleased {
            hold_id,
            reserved_at_us: hold.created_at_us,
            expires_at_us: hold.expires_at_us,
            amount: hold.amount,
            effect: before.effect_to(&after),
        }),
    )]))
}

/// Expires, in expiry order, up to `limit` active holds whose `expires_at` ≤ now.
pub(super) fn expire_due(ctx: &Ctx<'_>, limit: u32) -> Result<Decision, Rejection> {
    if limit == 0 || limit > EXPIRE_PULSE_MAX_HOLDS {
        return Err(Rejection::invalid(
            "limit",
            format!("must be between 1 and {EXPIRE_PULSE_MAX_HOLDS}"),
        ));
    }
    // Balances as changed by the expiries before, for accounts with several holds due.
    let mut running: HashMap<AccountKey, Balances> = HashMap::new();
    let mut events = Vec::new();
    let due = ctx.state.expiry.range(..=(ctx.now_us, u64::MAX)).take(limit as usize);
    for &(expires_at_us, hold_id) in due {
        let hold = &ctx.state.holds[&hold_id];
        assert_eq!(
            hold.status,
            HoldStatus::Active,
            "the expiry index holds only active holds"
        );
        let key = AccountKey::new(&hold.tenant, &hold.account);
        let before = running
            .remove(&key)
            .unwrap_or_else(|| Balances::of(ctx.state, &ctx.state.accounts[&key]));
        let after = Balances {
            held: before.held - hold.amount,
            ..before.clone()
        };
        events.push(emit(
            hold,
            Event::HoldExpired(HoldExpired {
                hold_id,
                reserved_at_us: hold.created_at_us,
                amount: hold.amount,
                expires_at_us,
                effect: before.effect_to(&after),
            }),
        ));
        running.insert(key, after);
    }
    // Pending links past their deadline expire with the same pulse.
    events.extend(super::link::expire_due(ctx.state, ctx.now_us, EXPIRE_PULSE_MAX_LINKS));
    if events.is_empty() {
        return Ok(Decision::Nothing);
    }
    Ok(Decision::Append(events))
}

/// The hold if it belongs to the caller's tenant, is active and has not expired.
fn active_hold<'a>(ctx: &'a Ctx<'_>, hold_id: u64) -> Result<&'a Hold, Rejection> {
    let hold = ctx
        .state
        .holds
        .get(&hold_id)
        .filter(|h| h.tenant == ctx.meta.tenant)
        .ok_or(Rejection::HoldNotFound { hold_id })?;
    if hold.status != HoldStatus::Active {
        return Err(Rejection::HoldAlreadyResolved {
            hold_id,
            status: hold.status,
        });
    }
    if ctx.now_us >= hold.expires_at_us {
        return Err(Rejection::HoldExpired {
            hold_id,
            expires_at_us: hold.expires_at_us,
        });
    }
    Ok(hold)
}

fn emit(hold: &Hold, event: Event) -> Emitted {
    Emitted {
        tenant: hold.tenant.clone(),
        account: hold.account.clone(),
        event,
    }
}

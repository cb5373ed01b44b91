//! Links between an account and an account in another system (a casino's player card, a
//! partner's customer id), proved by a one-time token: the caller gets the token once (in a
//! deep link), and whoever holds it verifies the link. The ledger sees only the token's
//! keyed hash; comparisons are of those hashes, in constant time. A pending link expires
//! at its deadline (log time) and locks after `MAX_LINK_VERIFY_FAILURES` wrong tokens; one
//! external account is actively linked to one account at most.

use super::event::{Event, LinkCreated, LinkExpired, LinkRevoked, LinkStatus, LinkVerified, LinkVerifyFailed};
use super::limits::*;
use super::rejection::Rejection;
use super::rules::{account, validate_id, validate_text, Ctx, Decision, Emitted};
use super::state::{external_account_fingerprint, Link, State};

pub(super) fn create(
    ctx: &Ctx<'_>,
    account_id: &str,
    external_system: &str,
    external_account_id: &str,
    token_hash: &[u8; 32],
    ttl_seconds: u32,
) -> Result<Decision, Rejection> {
    validate_id("account_id", account_id, MAX_ID_BYTES)?;
    validate_id("external_system", external_system, MAX_ID_BYTES)?;
    validate_id("external_account_id", external_account_id, MAX_ID_BYTES)?;
    let requested_ttl = ttl_seconds;
    let ttl_seconds = match ttl_seconds {
        0 => LINK_TTL_DEFAULT_SECONDS,
        n if n > LINK_TTL_MAX_SECONDS => {
            return Err(Rejection::invalid(
                "ttl_seconds",
                format!("must be at most {LINK_TTL_MAX_SECONDS}"),
            ))
        }
        n => n,
    };
    account(ctx, account_id)?;
    check_not_linked(ctx.state, &ctx.meta.tenant, external_system, external_account_id)?;
    Ok(Decision::Append(vec![Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: account_id.to_string(),
        event: Event::LinkCreated(LinkCreated {
            link_id: ctx.state.head_seq + 1,
            external_system: external_system.to_string(),
            external_account_id: external_account_id.to_string(),
            token_hash: *token_hash,
            ttl_seconds: requested_ttl,
            expires_at_us: ctx.now_us + u64::from(ttl_seconds) * 1_000_000,
        }),
    }]))
}

/// A right token activates a pending link; a wrong one counts towards the lock. A wrong
/// token is an event (the count must survive a restart), answered as a refusal by the API.
pub(super) fn verify(ctx: &Ctx<'_>, link_id: u64, token_hash: &[u8; 32]) -> Result<Decision, Rejection> {
    let link = pending(ctx, link_id)?;
    // Constant time: blake3's `Hash` compares without an early exit.
    if blake3::Hash::from_bytes(link.token_hash) != blake3::Hash::from_bytes(*token_hash) {
        let failures = link.failures + 1;
        return Ok(Decision::Append(vec![emit(
            link,
            Event::LinkVerifyFailed(LinkVerifyFailed {
                link_id,
                token_hash: *token_hash,
                failures,
                locked: failures >= MAX_LINK_VERIFY_FAILURES,
            }),
        )]));
    }
    check_not_linked(
        ctx.state,
        &link.tenant,
        &link.external_system,
        &link.external_account_id,
    )?;
    Ok(Decision::Append(vec![emit(
        link,
        Event::LinkVerified(LinkVerified {
            link_id,
            token_hash: *token_hash,
        }),
    )]))
}

pub(super) fn revoke(ctx: &Ctx<'_>, link_id: u64, reason: &str) -> Result<Decision, Rejection> {
    validate_text("reason", reason, REASON_MAX_CHARS)?;
    let link = of_tenant(ctx, link_id)?;
    if !matches!(link.status, LinkStatus::Pending | LinkStatus::Active) {
        return Err(Rejection::LinkNotPending {
            link_id,
            status: link.status.name(),
        });
    }
    Ok(Decision::Append(vec![emit(
        link,
        Event::LinkRevoked(LinkRevoked {
            link_id,
            reason: reason.to_string(),
        }),
    )]))
}

/// Pending links whose deadline passed, in deadline order, at most `limit` (a part of the
/// expiry pulse).
pub(super) fn expire_due(state: &State, now_us: u64, limit: u32) -> Vec<Emitted> {
    state
        .links
        .expiry
        .range(..=(now_us, u64::MAX))
        .take(limit as usize)
        .map(|&(expires_at_us, link_id)| {
            let link = &state.links.links[&link_id];
            assert_eq!(link.status, LinkStatus::Pending, "the expiry index holds pending links");
            emit(link, Event::LinkExpired(LinkExpired { link_id, expires_at_us }))
        })
        .collect()
}

fn of_tenant<'a>(ctx: &'a Ctx<'_>, link_id: u64) -> Result<&'a Link, Rejection> {
    ctx.state
        .links
        .links
        .get(&link_id)
        .filter(|l| l.tenant == ctx.meta.tenant)
        .ok_or(Rejection::LinkNotFound { link_id })
}

/// The link if it waits for its proof and its deadline has not passed (expired even if the
/// sweeper has not recorded it yet).
fn pending<'a>(ctx: &'a Ctx<'_>, link_id: u64) -> Result<&'a Link, Rejection> {
    let link = of_tenant(ctx, link_id)?;
    if link.status != LinkStatus::Pending {
        return Err(Rejection::LinkNotPending {
            link_id,
            status: link.status.name(),
        });
    }
    if ctx.now_us >= link.expires_at_us {
        return Err(Rejection::LinkNotPending {
            link_id,
            status: LinkStatus::Expired.name(),
        });
    }
    Ok(link)
}

fn check_not_linked(state: &State, tenant: &str, system: &str, external_account_id: &str) -> Result<(), Rejection> {
    match state
        .links
        .active
        .get(&external_account_fingerprint(tenant, system, external_account_id))
    {
        Some(&link_id) => Err(Rejection::LinkConflict {
            external_system: system.to_string(),
            external_account_id: external_account_id.to_string(),
            link_id,
        }),
        None => Ok(()),
    }
}

fn emit(link: &Link, event: Event) -> Emitted {
    Emitted {
        tenant: link.tenant.clone(),
        account: link.account.clone(),
        event,
    }
}

//! Opening accounts.

use super::event::{AccountOpened, Event};
use super::limits::MAX_ID_BYTES;
use super::rejection::Rejection;
use super::rules::{validate_id, Ctx, Decision, Emitted};
use super::state::AccountKey;

/// Opens `account` in the caller's tenant. An account that exists is answered with its
/// original opening, marked as a replay: opening is idempotent per tenant.
pub(super) fn open(ctx: &Ctx<'_>, account: &str) -> Result<Decision, Rejection> {
    validate_id("account_id", account, MAX_ID_BYTES)?;
    let key = AccountKey::new(&ctx.meta.tenant, account);
    if let Some(existing) = ctx.state.accounts.get(&key) {
        return Ok(Decision::Replay {
            first_seq: existing.opened_seq,
            last_seq: existing.opened_seq,
        });
    }
    Ok(Decision::Append(vec![Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: account.to_string(),
        event: Event::AccountOpened(AccountOpened {
            tier: ctx.policy.tiers.base().to_string(),
        }),
    }]))
}

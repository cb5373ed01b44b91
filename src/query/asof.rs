//! An account's state as of a sequence number, from its history rows up to that point:
//! balances from the last row's "after", active holds from reservations not yet resolved.

use crate::domain::{EventKind, HoldStatus};
use crate::projection::{AccountView, HistoryView, HoldView};
use std::collections::BTreeSet;

/// An account and its active holds at one point of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountAsOf {
    pub seq: u64,
    pub account: AccountView,
    pub active_holds: Vec<HoldView>,
}

/// Folds an account's history rows (ascending, all with seq ≤ `seq`). `hold` looks up the
/// immutable facts of a hold (amount, creation, deadline). `None` if the account was not
/// open yet.
pub fn account_as_of(seq: u64, rows: &[HistoryView], hold: impl Fn(u64) -> Option<HoldView>) -> Option<AccountAsOf> {
    // The ingest pipeline's rows change no balance.
    let rows: Vec<&HistoryView> = rows
        .iter()
        .filter(|r| EventKind::from_code(r.kind).is_some_and(EventKind::is_ledger))
        .collect();
    let first = *rows.first()?;
    assert_eq!(
        first.kind,
        EventKind::AccountOpened.code(),
        "an account's history starts with its opening"
    );
    let last = *rows.last().expect("non-empty");
    assert!(last.seq <= seq, "rows stop at the point asked for");
    let mut active = BTreeSet::new();
    for row in &rows {
        match EventKind::from_code(row.kind) {
            Some(EventKind::HoldReserved) => {
                active.insert(row.hold_id);
            }
            Some(EventKind::HoldCommitted | EventKind::HoldReleased | EventKind::HoldExpired) => {
                assert!(active.remove(&row.hold_id), "a hold resolves after its reservation");
            }
            _ => {}
        }
    }
    let active_holds: Vec<HoldView> = active
        .into_iter()
        .map(|id| {
            let facts = hold(id).expect("reserved holds are known");
            HoldView {
                status: HoldStatus::Active,
                committed: 0,
                released: 0,
                resolved_at_us: 0,
                resolved_seq: 0,
                ..facts
            }
        })
        .collect();
    let e = &last.effect;
    assert_eq!(
        e.held_after,
        active_holds.iter().map(|h| h.amount).sum::<u64>(),
        "held = Σ active holds"
    );
    Some(AccountAsOf {
        seq,
        account: AccountView {
            account_id: first.account_id.clone(),
            posted: e.posted_after,
            held: e.held_after,
            lifetime: e.lifetime_after,
            tier: e.tier_after.clone(),
            active_holds: active_holds.len() as u32,
            opened_at_us: first.ts_us,
            last_seq: last.seq,
        },
        active_holds,
    })
}

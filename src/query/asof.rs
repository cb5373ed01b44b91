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

/// Rows that do not fold into an account: a damaged or half-built projection (or a store
/// that cannot be read). Never a panic: the rows come from a disk.
#[derive(Debug, thiserror::Error)]
pub enum AsOfError {
    #[error(
        "the history projection of account {account} does not fold at sequence {seq}: {reason}; \
         rebuild the projections (tally rebuild)"
    )]
    Inconsistent { account: String, seq: u64, reason: String },
    #[error("cannot read hold {hold_id}: {reason}")]
    Hold { hold_id: u64, reason: String },
}

/// Folds an account's history rows (ascending, all with seq ≤ `seq`). `hold` looks up the
/// immutable facts of a hold (amount, creation, deadline). `Ok(None)` if the account was
/// not open yet.
pub fn account_as_of(
    seq: u64,
    rows: &[HistoryView],
    hold: impl Fn(u64) -> Result<Option<HoldView>, String>,
) -> Result<Option<AccountAsOf>, AsOfError> {
    // The ingest pipeline's rows change no balance.
    let rows: Vec<&HistoryView> = rows
        .iter()
        .filter(|r| EventKind::from_code(r.kind).is_some_and(EventKind::is_ledger))
        .collect();
    let (Some(&first), Some(&last)) = (rows.first(), rows.last()) else {
        return Ok(None);
    };
    let inconsistent = |at: u64, reason: &str| AsOfError::Inconsistent {
        account: crate::domain::quote(&first.account_id),
        seq: at,
        reason: reason.to_string(),
    };
    if first.kind != EventKind::AccountOpened.code() {
        return Err(inconsistent(first.seq, "its history does not start with the opening"));
    }
    if last.seq > seq {
        return Err(inconsistent(last.seq, "a row lies past the point asked for"));
    }
    let mut active = BTreeSet::new();
    for row in &rows {
        match EventKind::from_code(row.kind) {
            Some(EventKind::HoldReserved) => {
                active.insert(row.hold_id);
            }
            Some(EventKind::HoldCommitted | EventKind::HoldReleased | EventKind::HoldExpired)
                if !active.remove(&row.hold_id) =>
            {
                return Err(inconsistent(
                    row.seq,
                    &format!("hold {} resolves without an active reservation", row.hold_id),
                ));
            }
            _ => {}
        }
    }
    let mut active_holds = Vec::with_capacity(active.len());
    for hold_id in active {
        let facts = hold(hold_id)
            .map_err(|reason| AsOfError::Hold { hold_id, reason })?
            .ok_or_else(|| inconsistent(last.seq, &format!("reserved hold {hold_id} is unknown")))?;
        active_holds.push(HoldView {
            status: HoldStatus::Active,
            committed: 0,
            released: 0,
            resolved_at_us: 0,
            resolved_seq: 0,
            ..facts
        });
    }
    let e = &last.effect;
    let held: u64 = active_holds.iter().map(|h| h.amount).sum();
    if e.held_after != held {
        return Err(inconsistent(
            last.seq,
            &format!("held {} is not the sum of its active holds, {held}", e.held_after),
        ));
    }
    Ok(Some(AccountAsOf {
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
    }))
}

#[cfg(test)]
mod tests {
    //! Rows read from a damaged projection are refused with the sequence they break at,
    //! never a panic of the query.
    use super::*;
    use crate::domain::Effect;

    fn row(seq: u64, kind: EventKind, hold_id: u64, held_after: u64) -> HistoryView {
        HistoryView {
            account_id: "p1".into(),
            seq,
            ts_us: seq,
            event_id: [0; 16],
            kind: kind.code(),
            actor: String::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
            idempotency_key: String::new(),
            idempotency_scope: String::new(),
            reason: String::new(),
            effect: Effect {
                posted_before: 0,
                posted_after: 100,
                held_before: 0,
                held_after,
                lifetime_before: 0,
                lifetime_after: 100,
                tier_before: "Member".into(),
                tier_after: "Member".into(),
            },
            hold_id,
            points: 0,
        }
    }

    fn hold(amount: u64) -> impl Fn(u64) -> Result<Option<HoldView>, String> {
        move |hold_id| {
            Ok(Some(HoldView {
                hold_id,
                tenant: "t1".into(),
                account_id: "p1".into(),
                amount,
                status: HoldStatus::Committed,
                created_at_us: 0,
                expires_at_us: 0,
                committed: 0,
                released: 0,
                resolved_at_us: 0,
                resolved_seq: 0,
            }))
        }
    }

    fn inconsistent_at(result: Result<Option<AccountAsOf>, AsOfError>) -> u64 {
        match result {
            Err(AsOfError::Inconsistent { seq, .. }) => seq,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sound_rows_fold() {
        let rows = [
            row(1, EventKind::AccountOpened, 0, 0),
            row(2, EventKind::HoldReserved, 2, 30),
        ];
        let as_of = account_as_of(5, &rows, hold(30)).unwrap().unwrap();
        assert_eq!((as_of.account.held, as_of.active_holds.len()), (30, 1));
        assert_eq!(account_as_of(5, &[], hold(30)).unwrap(), None);
    }

    #[test]
    fn damaged_rows_are_refused_with_their_sequence() {
        let no_opening = [row(3, EventKind::HoldReserved, 3, 30)];
        assert_eq!(inconsistent_at(account_as_of(5, &no_opening, hold(30))), 3);
        let past = [
            row(1, EventKind::AccountOpened, 0, 0),
            row(9, EventKind::PointsAwarded, 0, 0),
        ];
        assert_eq!(inconsistent_at(account_as_of(5, &past, hold(30))), 9);
        let orphan = [
            row(1, EventKind::AccountOpened, 0, 0),
            row(4, EventKind::HoldReleased, 7, 0),
        ];
        assert_eq!(inconsistent_at(account_as_of(5, &orphan, hold(30))), 4);
        let wrong_sum = [
            row(1, EventKind::AccountOpened, 0, 0),
            row(2, EventKind::HoldReserved, 2, 31),
        ];
        assert_eq!(inconsistent_at(account_as_of(5, &wrong_sum, hold(30))), 2);
        let unknown = [
            row(1, EventKind::AccountOpened, 0, 0),
            row(2, EventKind::HoldReserved, 2, 30),
        ];
        assert_eq!(inconsistent_at(account_as_of(5, &unknown, |_| Ok(None))), 2);
        let unreadable = account_as_of(5, &unknown, |_| Err("I/O error".into()));
        assert!(
            matches!(unreadable, Err(AsOfError::Hold { hold_id: 2, .. })),
            "{unreadable:?}"
        );
    }
}

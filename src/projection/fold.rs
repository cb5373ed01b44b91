//! How each projection folds records into its tree: each fold returns the rows to write.
//! The caller writes them with the new checkpoint (see [`super::apply_to`] for how).

use super::views::{AccountView, HistoryView, HoldView, IdempotencyView};
use super::{decode, encode, keys, ProjectionName, StoreError};
use crate::domain::{Event, HoldStatus, Record};
use std::collections::HashMap;

/// Rows to write: key and value.
pub(super) type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// Folds `records` (all after the tree's checkpoint) into `rows`.
pub(super) fn fold(
    name: ProjectionName,
    tree: &sled::Tree,
    records: &[Record],
    rows: &mut Rows,
) -> Result<(), StoreError> {
    match name {
        ProjectionName::Accounts => accounts(tree, records, rows),
        ProjectionName::Holds => holds(tree, records, rows),
        ProjectionName::History => {
            history(records, rows);
            Ok(())
        }
        ProjectionName::Idempotency => idempotency(tree, records, rows),
        ProjectionName::Correlation => {
            for record in records.iter().filter(|r| !r.envelope.correlation_id.is_empty()) {
                let e = &record.envelope;
                let key = keys::correlation(&e.tenant, &e.correlation_id, record.seq);
                rows.push((key, e.stream.as_bytes().to_vec()));
            }
            Ok(())
        }
        ProjectionName::Actor => {
            for record in records {
                let e = &record.envelope;
                let key = keys::actor(&e.tenant, &e.actor, record.ts_us, record.seq);
                rows.push((key, e.stream.as_bytes().to_vec()));
            }
            Ok(())
        }
    }
}

fn accounts(tree: &sled::Tree, records: &[Record], rows: &mut Rows) -> Result<(), StoreError> {
    let mut touched: HashMap<Vec<u8>, AccountView> = HashMap::new();
    for record in records {
        let key = keys::account(&record.envelope.tenant, &record.envelope.stream);
        if let Event::AccountOpened(opened) = &record.event {
            let view = AccountView {
                account_id: record.envelope.stream.clone(),
                posted: 0,
                held: 0,
                lifetime: 0,
                tier: opened.tier.clone(),
                active_holds: 0,
                opened_at_us: record.ts_us,
                last_seq: record.seq,
            };
            touched.insert(key, view);
            continue;
        }
        // The ingest pipeline's events change no balance (and may name a member not enrolled yet).
        let Some(effect) = record.event.effect() else {
            continue;
        };
        let view = match touched.remove(&key) {
            Some(view) => view,
            None => decode::<AccountView>("accounts", tree.get(&key)?)?.expect("events follow their account's opening"),
        };
        let active_holds = match &record.event {
            Event::HoldReserved(_) => view.active_holds + 1,
            Event::HoldCommitted(_) | Event::HoldReleased(_) | Event::HoldExpired(_) => view.active_holds - 1,
            _ => view.active_holds,
        };
        let updated = AccountView {
            posted: effect.posted_after,
            held: effect.held_after,
            lifetime: effect.lifetime_after,
            tier: effect.tier_after.clone(),
            active_holds,
            last_seq: record.seq,
            ..view
        };
        touched.insert(key, updated);
    }
    for (key, view) in touched {
        rows.push((key, encode(&view)));
    }
    Ok(())
}

fn holds(tree: &sled::Tree, records: &[Record], rows: &mut Rows) -> Result<(), StoreError> {
    let mut touched: HashMap<u64, HoldView> = HashMap::new();
    for record in records {
        let (hold_id, status, committed, released) = match &record.event {
            Event::HoldReserved(r) => {
                let view = HoldView::reserved(record).expect("a reservation");
                touched.insert(r.hold_id, view);
                continue;
            }
            Event::HoldCommitted(c) => (c.hold_id, HoldStatus::Committed, c.committed, c.released),
            Event::HoldReleased(r) => (r.hold_id, HoldStatus::Released, 0, r.amount),
            Event::HoldExpired(x) => (x.hold_id, HoldStatus::Expired, 0, x.amount),
            _ => continue,
        };
        let view = match touched.remove(&hold_id) {
            Some(view) => view,
            None => {
                decode::<HoldView>("holds", tree.get(hold_id.to_be_bytes())?)?.expect("resolved holds were reserved")
            }
        };
        let resolved = HoldView {
            status,
            committed,
            released,
            resolved_at_us: record.ts_us,
            resolved_seq: record.seq,
            ..view
        };
        touched.insert(hold_id, resolved);
    }
    for (hold_id, view) in touched {
        rows.push((hold_id.to_be_bytes().to_vec(), encode(&view)));
    }
    Ok(())
}

fn history(records: &[Record], rows: &mut Rows) {
    for record in records {
        let view = HistoryView::of(record).expect("every event has a history row");
        let key = keys::history(&record.envelope.tenant, &record.envelope.stream, record.seq);
        rows.push((key, encode(&view)));
    }
}

fn idempotency(tree: &sled::Tree, records: &[Record], rows: &mut Rows) -> Result<(), StoreError> {
    let mut touched: HashMap<Vec<u8>, IdempotencyView> = HashMap::new();
    for record in records {
        let e = &record.envelope;
        if e.idempotency_key.is_empty() {
            continue;
        }
        let key = keys::idempotency(&e.tenant, &e.idempotency_scope, &e.idempotency_key);
        let existing = match touched.remove(&key) {
            Some(view) => Some(view),
            None => decode::<IdempotencyView>("idempotency", tree.get(&key)?)?,
        };
        let view = match existing {
            Some(view) => IdempotencyView {
                last_seq: record.seq,
                ..view
            },
            None => IdempotencyView {
                account_id: e.stream.clone(),
                first_seq: record.seq,
                last_seq: record.seq,
            },
        };
        touched.insert(key, view);
    }
    for (key, view) in touched {
        rows.push((key, encode(&view)));
    }
    Ok(())
}

//! `evolve`: folds one record into the state. Pure and total for every record that `decide`
//! can produce; anything else is a broken invariant and panics (in release builds too),
//! because a state that does not add up must never answer another command.

use super::award::natural_key;
use super::command::{AwardRequest, Command};
use super::event::{AwardSource, Effect, Event, Record};
use super::limits::MANUAL_REWARDS_PER_STAFF_PER_MINUTE;
use super::state::{key_fingerprint, Account, AccountKey, Applied, Hold, HoldStatus, NaturalKey, State};

/// Applies `record` to `state`. Records must come in sequence order, gapless.
pub fn evolve(state: &mut State, record: &Record) {
    assert_eq!(record.seq, state.head_seq + 1, "records fold in gapless sequence");
    assert!(record.ts_us >= state.head_ts_us, "timestamps never decrease");
    let key = AccountKey::new(&record.envelope.tenant, &record.envelope.stream);
    match &record.event {
        Event::AccountOpened(opened) => {
            let tier = state.tier_index(&opened.tier);
            let previous = state.accounts.insert(
                key,
                Account {
                    posted: 0,
                    held: 0,
                    lifetime: 0,
                    tier,
                    active_holds: 0,
                    opened_seq: record.seq,
                    opened_at_us: record.ts_us,
                    last_seq: record.seq,
                },
            );
            assert!(previous.is_none(), "an account opens once (seq {})", record.seq);
        }
        Event::PointsAwarded(award) => {
            let e = &award.effect;
            assert_eq!(e.posted_before.checked_add(award.points), Some(e.posted_after));
            assert_eq!(e.lifetime_before.checked_add(award.points), Some(e.lifetime_after));
            assert_eq!((e.held_before, &e.tier_before), (e.held_after, &e.tier_after));
            apply_effect(state, &key, record);
            if let AwardSource::Manual(manual) = &award.source {
                let times = state
                    .comps
                    .entry((key.tenant().to_string(), manual.staff_id.clone()))
                    .or_default();
                times.push_back(record.ts_us);
                while times.len() > MANUAL_REWARDS_PER_STAFF_PER_MINUTE {
                    times.pop_front();
                }
            }
        }
        Event::HoldReserved(reserved) => {
            let e = &reserved.effect;
            assert_eq!(
                reserved.hold_id, record.seq,
                "a hold's id is its reservation's sequence"
            );
            assert_eq!(e.held_before.checked_add(reserved.amount), Some(e.held_after));
            assert_eq!(e.posted_before, e.posted_after);
            apply_effect(state, &key, record);
            let account = state.accounts.get_mut(&key).expect("checked by apply_effect");
            account.active_holds += 1;
            state.holds.insert(
                reserved.hold_id,
                Hold {
                    tenant: key.tenant().to_string(),
                    account: key.account().to_string(),
                    amount: reserved.amount,
                    status: HoldStatus::Active,
                    created_at_us: record.ts_us,
                    expires_at_us: reserved.expires_at_us,
                    committed: 0,
                    released: 0,
                    resolved_at_us: 0,
                    resolved_seq: 0,
                },
            );
            state.expiry.insert((reserved.expires_at_us, reserved.hold_id));
        }
        Event::HoldCommitted(c) => {
            assert_eq!(
                c.effect.posted_before.checked_sub(c.committed),
                Some(c.effect.posted_after)
            );
            let deadline = (c.reserved_at_us, c.expires_at_us);
            resolve(
                state,
                &key,
                record,
                c.hold_id,
                deadline,
                HoldStatus::Committed,
                c.committed,
                c.released,
            );
        }
        Event::HoldReleased(r) => {
            assert_eq!(r.effect.posted_before, r.effect.posted_after);
            let deadline = (r.reserved_at_us, r.expires_at_us);
            resolve(
                state,
                &key,
                record,
                r.hold_id,
                deadline,
                HoldStatus::Released,
                0,
                r.amount,
            );
        }
        Event::HoldExpired(x) => {
            assert_eq!(x.effect.posted_before, x.effect.posted_after);
            assert!(x.expires_at_us <= record.ts_us, "a hold expires only after expires_at");
            let deadline = (x.reserved_at_us, x.expires_at_us);
            resolve(
                state,
                &key,
                record,
                x.hold_id,
                deadline,
                HoldStatus::Expired,
                0,
                x.amount,
            );
        }
        Event::TierChanged(change) => {
            let e = &change.effect;
            assert_eq!((&e.tier_before, &e.tier_after), (&change.from, &change.to));
            assert_eq!(
                (e.posted_before, e.held_before, e.lifetime_before),
                (e.posted_after, e.held_after, e.lifetime_after)
            );
            apply_effect(state, &key, record);
        }
    }
    remember_identity(state, record);
    state.head_seq = record.seq;
    state.head_ts_us = record.ts_us;
}

/// Checks that the event's "before" is the account as it stands (the pair of the
/// assertion `decide` made when it computed it), then moves the account to "after".
fn apply_effect(state: &mut State, key: &AccountKey, record: &Record) {
    let effect: &Effect = record.event.effect().expect("ledger events carry an effect");
    let tier_after = state.tier_index(&effect.tier_after);
    let account = state
        .accounts
        .get_mut(key)
        .unwrap_or_else(|| panic!("seq {}: event for unknown account {key:?}", record.seq));
    let tier_before = state.tier_names[account.tier as usize].as_str();
    let current = (account.posted, account.held, account.lifetime, tier_before);
    let before = (
        effect.posted_before,
        effect.held_before,
        effect.lifetime_before,
        effect.tier_before.as_str(),
    );
    assert_eq!(
        current, before,
        "seq {}: recorded balances before differ from the state",
        record.seq
    );
    assert!(
        effect.held_after <= effect.posted_after,
        "seq {}: held exceeds posted",
        record.seq
    );
    account.posted = effect.posted_after;
    account.held = effect.held_after;
    account.lifetime = effect.lifetime_after;
    account.tier = tier_after;
    account.last_seq = record.seq;
}

#[allow(clippy::too_many_arguments)]
fn resolve(
    state: &mut State,
    key: &AccountKey,
    record: &Record,
    hold_id: u64,
    (reserved_at_us, expires_at_us): (u64, u64),
    status: HoldStatus,
    committed: u64,
    released: u64,
) {
    let effect = record.event.effect().expect("hold events carry an effect");
    let hold = state.holds.get_mut(&hold_id).expect("resolved holds exist");
    assert_eq!(
        hold.status,
        HoldStatus::Active,
        "seq {}: hold {hold_id} resolves once",
        record.seq
    );
    assert_eq!(
        (hold.tenant.as_str(), hold.account.as_str()),
        (key.tenant(), key.account())
    );
    assert_eq!(
        (hold.created_at_us, hold.expires_at_us),
        (reserved_at_us, expires_at_us)
    );
    assert_eq!(committed.checked_add(released), Some(hold.amount));
    assert_eq!(effect.held_before.checked_sub(hold.amount), Some(effect.held_after));
    hold.status = status;
    hold.committed = committed;
    hold.released = released;
    hold.resolved_at_us = record.ts_us;
    hold.resolved_seq = record.seq;
    let expiry = (hold.expires_at_us, hold_id);
    assert!(state.expiry.remove(&expiry), "an active hold is in the expiry index");
    apply_effect(state, key, record);
    let account = state.accounts.get_mut(key).expect("checked by apply_effect");
    account.active_holds -= 1;
}

/// Records the command's identities (its idempotency key, its natural key) at its first
/// event, and extends the command's range at the ones after.
fn remember_identity(state: &mut State, record: &Record) {
    let envelope = &record.envelope;
    if envelope.idempotency_key.is_empty() {
        return;
    }
    let index = &mut state.idempotency;
    let identity = key_fingerprint(&envelope.tenant, &envelope.idempotency_scope, &envelope.idempotency_key);
    if let Some(&first_seq) = index.by_key.get(&identity) {
        let applied = index.applied.get_mut(&first_seq).expect("indexed command exists");
        assert_eq!(applied.last_seq + 1, record.seq, "a command's events are contiguous");
        applied.last_seq = record.seq;
        return;
    }
    let request = request_of(record)
        .unwrap_or_else(|| panic!("seq {}: a command's first event must carry its request", record.seq));
    if let Some(natural) = natural_of(record, &request) {
        index.by_natural.insert(natural.fingerprint(), record.seq);
    }
    index.by_key.insert(identity, record.seq);
    index.applied.insert(
        record.seq,
        Applied {
            request: request.print(),
            last_seq: record.seq,
        },
    );
}

/// The request that a command's first event answers, rebuilt from the event.
pub fn request_of(record: &Record) -> Option<Command> {
    let account = record.envelope.stream.clone();
    Some(match &record.event {
        Event::AccountOpened(_) => Command::OpenAccount { account },
        Event::PointsAwarded(award) => Command::Award {
            account,
            source: match &award.source {
                AwardSource::RatingSlip(s) => AwardRequest::RatingSlip {
                    slip_id: s.slip_id.clone(),
                    game: s.game.clone(),
                    average_bet_cents: s.average_bet_cents,
                    decisions_per_hour: s.decisions_per_hour,
                    minutes_played: s.minutes_played,
                    house_edge_bps: s.house_edge_bps,
                },
                AwardSource::Manual(m) => AwardRequest::Manual {
                    staff_id: m.staff_id.clone(),
                    points: award.points,
                    reason: m.reason.clone(),
                    external_reward_id: m.external_reward_id.clone(),
                },
                AwardSource::Promotion(p) => AwardRequest::Promotion {
                    points: award.points,
                    promotion_id: p.promotion_id.clone(),
                    external_reward_id: p.external_reward_id.clone(),
                },
            },
        },
        Event::HoldReserved(r) => Command::Reserve {
            account,
            amount: r.amount,
            ttl_seconds: r.ttl_seconds,
        },
        Event::HoldCommitted(c) => Command::Commit {
            hold_id: c.hold_id,
            amount: c.requested,
        },
        Event::HoldReleased(r) => Command::Release { hold_id: r.hold_id },
        Event::HoldExpired(_) | Event::TierChanged(_) => return None,
    })
}

fn natural_of(record: &Record, request: &Command) -> Option<NaturalKey> {
    match request {
        Command::Award { account, source } => Some(natural_key(&record.envelope.tenant, account, source, record.ts_us)),
        _ => None,
    }
}

//! `evolve`: folds one record into the state. Pure and total for every record that `decide`
//! can produce; anything else is a broken invariant and panics (in release builds too),
//! because a state that does not add up must never answer another command.

use super::command::RequestPrint;
use super::requests::{natural_of, request_of};

use super::event::{AwardSource, Effect, Event, Record};
use super::event::{ExternalBody, LinkStatus};
use super::limits::MANUAL_REWARDS_PER_STAFF_PER_MINUTE;
use super::state::{
    content_fingerprint, external_account_fingerprint, external_fingerprint, key_fingerprint, Account, AccountKey,
    Applied, Fingerprint, Hold, HoldStatus, Identity, Link, Receipt, ReceiptStatus, Resolution, Resolved, Reversible,
    State, WindowEntry,
};

/// Applies `record` to `state`. Records must come in sequence order, gapless.
pub fn evolve(state: &mut State, record: &Record) {
    evolve_identified(state, record, None);
}

/// The identity [`evolve`] works out from `record` itself (its key's fingerprint, and for a
/// record that carries a request, the request's print and natural identity), worked out
/// ahead: a start folding millions of records has another thread do these hashes, as the
/// writer has the submitting tasks do them. `evolve_identified(state, record,
/// record_identity(record).as_ref())` leaves the state `evolve(state, record)` leaves (debug
/// builds check it record by record). `None` for a record that carries no request.
pub fn record_identity(record: &Record) -> Option<Identity> {
    let request = request_of(record)?;
    let envelope = &record.envelope;
    let key = (!envelope.idempotency_key.is_empty())
        .then(|| key_fingerprint(&envelope.tenant, &envelope.idempotency_scope, &envelope.idempotency_key));
    let natural = natural_of(record, &request).map(|natural| natural.fingerprint());
    Some(Identity {
        key,
        natural,
        print: request.print(),
        checked_older: None,
        resolved: Vec::new(),
    })
}

/// [`evolve`], given the [`Identity`] of the command whose first event `record` is, when it
/// is (the writer's: it worked the identity out before deciding). The state it leaves is
/// the one `evolve` leaves; debug builds check that the identity is the record's. Where
/// the record answers another request than the command's (an award that an external event
/// carried), the identity is not used.
pub fn evolve_identified(state: &mut State, record: &Record, first_of: Option<&Identity>) {
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
        Event::PointsReversed(reversal) => {
            let e = &reversal.effect;
            assert_eq!(e.posted_before.checked_sub(reversal.points), Some(e.posted_after));
            assert_eq!(e.lifetime_before.checked_sub(reversal.points), Some(e.lifetime_after));
            assert_eq!((e.held_before, &e.tier_before), (e.held_after, &e.tier_after));
            assert!(
                reversal.points <= reversal.requested,
                "a reversal takes at most what is left"
            );
            apply_effect(state, &key, record);
            let identity = external_fingerprint(key.tenant(), &reversal.source, &reversal.original_external_id);
            let original = state
                .ingest
                .reversible
                .get_mut(&identity)
                .unwrap_or_else(|| panic!("seq {}: a reversal reverses an applied award", record.seq));
            assert_eq!(original.points - original.reversed, reversal.requested);
            original.reversed += reversal.points;
        }
        Event::ExternalReceived(_)
        | Event::ExternalProcessed(_)
        | Event::ExternalAttemptFailed(_)
        | Event::ExternalDeadLettered(_)
        | Event::DeadLetterDiscarded(_) => ingest(state, &key, record),
        // A plan only: each letter's re-drive is its own command.
        Event::RedriveRequested(_) => {}
        Event::LinkCreated(_)
        | Event::LinkVerified(_)
        | Event::LinkVerifyFailed(_)
        | Event::LinkRevoked(_)
        | Event::LinkExpired(_) => link(state, &key, record),
        // A record for the comp review; the ledger is unchanged.
        Event::CompRefused(_) => {
            assert!(record.envelope.idempotency_key.is_empty(), "a refusal binds no key");
        }
        Event::SessionStarted(_)
        | Event::SessionRefreshed(_)
        | Event::SessionEnded(_)
        | Event::ApiKeyCreated(_)
        | Event::ApiKeyRevoked(_) => state.credentials.apply(record),
        // Folded below, with the deliveries every record may start.
        Event::EndpointRegistered(_)
        | Event::EndpointUpdated(_)
        | Event::DeliveryDispatched(_)
        | Event::DeliveryDelivered(_)
        | Event::DeliveryFailed(_)
        | Event::DeliveryFailedPermanently(_)
        | Event::DeliveryAcked(_)
        | Event::DeliveryRetried(_) => {}
    }
    state.deliveries.apply(record);
    remember_identity(state, record, first_of);
    state.idempotency.evict(record.ts_us);
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
/// event, and extends the command's range at the ones after. An award that is not the first
/// event of its command (one applied by the ingest pipeline) still takes its natural
/// identity, so that the same rating slip never accrues twice, whichever way it came.
fn remember_identity(state: &mut State, record: &Record, first_of: Option<&Identity>) {
    let envelope = &record.envelope;
    if !envelope.idempotency_key.is_empty() {
        let index = &mut state.idempotency;
        let of_record = || key_fingerprint(&envelope.tenant, &envelope.idempotency_scope, &envelope.idempotency_key);
        let identity = match first_of.and_then(|known| known.key) {
            Some(known) => {
                debug_assert_eq!(known, of_record(), "seq {}: the key is the record's", record.seq);
                known
            }
            None => of_record(),
        };
        let Some(&first_seq) = index.by_key.get(&identity) else {
            let (request, natural) = request_identity(record, first_of);
            if let Some(natural) = natural {
                index.by_natural.insert(natural, record.seq);
            }
            index.by_key.insert(identity, record.seq);
            index.applied.insert(
                record.seq,
                Applied {
                    request,
                    last_seq: record.seq,
                },
            );
            index.window.push_back(WindowEntry {
                first_seq: record.seq,
                ts_us: record.ts_us,
                key: Some(identity),
                natural,
            });
            return;
        };
        let applied = index.applied.get_mut(&first_seq).expect("indexed command exists");
        assert_eq!(applied.last_seq + 1, record.seq, "a command's events are contiguous");
        applied.last_seq = record.seq;
    }
    if let Event::PointsAwarded(_) = &record.event {
        let (request, natural) = request_identity(record, first_of);
        let natural = natural.expect("an award has a natural identity");
        let index = &mut state.idempotency;
        let previous = index.by_natural.insert(natural, record.seq);
        assert!(
            previous.is_none(),
            "seq {}: an award's natural identity is new",
            record.seq
        );
        index.applied.insert(
            record.seq,
            Applied {
                request,
                last_seq: record.seq,
            },
        );
        index.window.push_back(WindowEntry {
            first_seq: record.seq,
            ts_us: record.ts_us,
            key: None,
            natural: Some(natural),
        });
    }
}

/// The print of the request that `record` answers, and the fingerprint of its natural
/// identity (an award's): `first_of`'s when it is that request's identity, unless the
/// natural identity depends on the record's day (a comp's); else worked out from the
/// record.
fn request_identity(record: &Record, first_of: Option<&Identity>) -> (RequestPrint, Option<Fingerprint>) {
    let of_record = || {
        let request = request_of(record)
            .unwrap_or_else(|| panic!("seq {}: a command's first event must carry its request", record.seq));
        let natural = natural_of(record, &request).map(|natural| natural.fingerprint());
        (request.print(), natural)
    };
    // A keyed command's first event answers the command; an award answers the command
    // only if the command was that award.
    let award = matches!(record.event, Event::PointsAwarded(_));
    match first_of {
        Some(known) if !award || (known.print.shape.is_award() && known.natural.is_some()) => {
            debug_assert_eq!(
                (known.print, known.natural),
                of_record(),
                "seq {}: the identity is the record's",
                record.seq
            );
            (known.print, known.natural)
        }
        _ => of_record(),
    }
}

/// Folds the links' events (see `link.rs` for what decides them).
fn link(state: &mut State, key: &AccountKey, record: &Record) {
    let links = &mut state.links;
    let resolve = |link: &mut Link, status: LinkStatus| {
        assert_eq!(
            link.status,
            LinkStatus::Pending,
            "seq {}: a link resolves once",
            record.seq
        );
        link.status = status;
        link.resolved_at_us = record.ts_us;
    };
    match &record.event {
        Event::LinkCreated(created) => {
            assert_eq!(created.link_id, record.seq, "a link's id is its creation's sequence");
            links.links.insert(
                created.link_id,
                Link {
                    tenant: key.tenant().to_string(),
                    account: key.account().to_string(),
                    external_system: created.external_system.clone(),
                    external_account_id: created.external_account_id.clone(),
                    token_hash: created.token_hash,
                    created_at_us: record.ts_us,
                    expires_at_us: created.expires_at_us,
                    status: LinkStatus::Pending,
                    failures: 0,
                    resolved_at_us: 0,
                },
            );
            links.expiry.insert((created.expires_at_us, created.link_id));
        }
        Event::LinkVerified(verified) => {
            let link = links.links.get_mut(&verified.link_id).expect("a verified link exists");
            resolve(link, LinkStatus::Active);
            assert!(links.expiry.remove(&(link.expires_at_us, verified.link_id)));
            let identity = external_account_fingerprint(&link.tenant, &link.external_system, &link.external_account_id);
            let previous = links.active.insert(identity, verified.link_id);
            assert!(previous.is_none(), "one active link per external account");
        }
        Event::LinkVerifyFailed(failed) => {
            let link = links.links.get_mut(&failed.link_id).expect("a failed link exists");
            assert_eq!(failed.failures, link.failures + 1, "failures count up by one");
            link.failures = failed.failures;
            if failed.locked {
                resolve(link, LinkStatus::Locked);
                assert!(links.expiry.remove(&(link.expires_at_us, failed.link_id)));
            }
        }
        Event::LinkRevoked(revoked) => {
            let link = links.links.get_mut(&revoked.link_id).expect("a revoked link exists");
            match link.status {
                LinkStatus::Pending => {
                    assert!(links.expiry.remove(&(link.expires_at_us, revoked.link_id)));
                }
                LinkStatus::Active => {
                    let identity =
                        external_account_fingerprint(&link.tenant, &link.external_system, &link.external_account_id);
                    assert_eq!(links.active.remove(&identity), Some(revoked.link_id));
                    link.status = LinkStatus::Pending;
                }
                other => panic!("seq {}: a {other:?} link is not revoked", record.seq),
            }
            resolve(link, LinkStatus::Revoked);
        }
        Event::LinkExpired(expired) => {
            let link = links.links.get_mut(&expired.link_id).expect("an expired link exists");
            assert!(
                expired.expires_at_us <= record.ts_us,
                "a link expires after its deadline"
            );
            resolve(link, LinkStatus::Expired);
            assert!(links.expiry.remove(&(expired.expires_at_us, expired.link_id)));
        }
        _ => unreachable!("only the links' events come here"),
    }
}

/// Folds the ingest pipeline's events (see `ingest.rs` for what decides them).
fn ingest(state: &mut State, key: &AccountKey, record: &Record) {
    let tenant = key.tenant();
    let pipeline = &mut state.ingest;
    let counters = pipeline.counters.entry(tenant.to_string()).or_default();
    match &record.event {
        Event::ExternalReceived(received) => {
            assert_eq!(
                received.body.member_id(),
                key.account(),
                "a receipt's stream is its member"
            );
            assert_eq!(
                received.checksum,
                received.body.checksum(),
                "the checksum is the body's"
            );
            // A duplicate leaves the window where its original started it.
            if received.duplicate_of == 0 {
                let content = content_fingerprint(tenant, &received.source, &received.checksum);
                pipeline.contents.insert(content, (record.seq, record.ts_us));
            }
            pipeline.open.insert(
                record.seq,
                Receipt {
                    tenant: tenant.to_string(),
                    source: received.source.clone(),
                    external_id: received.external_id.clone(),
                    body: received.body.clone(),
                    received_at_us: record.ts_us,
                    status: ReceiptStatus::Received,
                    attempts: 0,
                    cause: String::new(),
                    first_failure_us: 0,
                    last_failure_us: 0,
                },
            );
            counters.received += 1;
        }
        Event::ExternalProcessed(processed) => {
            let receipt = pipeline
                .open
                .remove(&processed.receipt_seq)
                .unwrap_or_else(|| panic!("seq {}: processes an open receipt", record.seq));
            assert_eq!(processed.attempt, receipt.attempts + 1, "attempts count up by one");
            leave_queue(pipeline, key, processed.receipt_seq, receipt.status, true);
            if processed.points > 0 && !matches!(receipt.body, ExternalBody::PointsReverse { .. }) {
                pipeline.reversible.insert(
                    external_fingerprint(tenant, &receipt.source, &receipt.external_id),
                    Reversible {
                        account: key.clone(),
                        points: processed.points,
                        reversed: 0,
                    },
                );
            }
            pipeline.resolved.insert(
                processed.receipt_seq,
                Resolved {
                    tenant: tenant.into(),
                    how: Resolution::Processed { seq: record.seq },
                },
            );
            let counters = pipeline.counters.get_mut(tenant).expect("counted above");
            counters.processed += 1;
            counters.redriven += processed.redriven as u64;
        }
        Event::ExternalAttemptFailed(failed) => {
            let receipt = pipeline
                .open
                .get_mut(&failed.receipt_seq)
                .expect("a failed attempt's receipt is open");
            assert_eq!(failed.attempt, receipt.attempts + 1, "attempts count up by one");
            if let ReceiptStatus::Retrying { retry_at_us } = receipt.status {
                assert!(pipeline.retry_due.remove(&(retry_at_us, failed.receipt_seq)));
            }
            assert!(
                failed.retry_at_us >= record.ts_us,
                "a retry is scheduled after its failure"
            );
            receipt.status = ReceiptStatus::Retrying {
                retry_at_us: failed.retry_at_us,
            };
            receipt.attempts = failed.attempt;
            note_failure(receipt, &failed.cause, record.ts_us);
            pipeline.retry_due.insert((failed.retry_at_us, failed.receipt_seq));
            counters.retried += 1;
        }
        Event::ExternalDeadLettered(dead) => {
            let receipt = pipeline
                .open
                .get_mut(&dead.receipt_seq)
                .expect("a dead letter's receipt is open");
            let letters = pipeline.sequences.entry(key.clone()).or_default();
            match receipt.status {
                ReceiptStatus::DeadLettered { .. } => {
                    // A re-drive failed again: the letter stays at the head.
                    assert!(dead.redriven, "only a re-drive attempts a dead letter");
                    assert_eq!(letters.front(), Some(&dead.receipt_seq), "re-drives start at the head");
                }
                ReceiptStatus::Retrying { retry_at_us } => {
                    assert!(pipeline.retry_due.remove(&(retry_at_us, dead.receipt_seq)));
                    // In order of receipt: an older event whose retries ran out after a
                    // younger one's goes ahead of it.
                    let at = letters.partition_point(|&seq| seq < dead.receipt_seq);
                    letters.insert(at, dead.receipt_seq);
                    counters.dead_lettered += 1;
                    counters.depth += 1;
                }
                ReceiptStatus::Received => {
                    assert!(letters.back().is_none_or(|&last| last < dead.receipt_seq));
                    letters.push_back(dead.receipt_seq);
                    counters.dead_lettered += 1;
                    counters.depth += 1;
                }
            }
            if dead.parked_behind != 0 {
                assert_eq!(
                    letters.front(),
                    Some(&dead.parked_behind),
                    "letters park behind the head"
                );
            } else {
                assert_eq!(dead.attempts, receipt.attempts + 1, "attempts count up by one");
            }
            counters.redriven += dead.redriven as u64;
            receipt.attempts = dead.attempts;
            receipt.status = ReceiptStatus::DeadLettered {
                parked_behind: dead.parked_behind,
            };
            note_failure(receipt, &dead.cause, record.ts_us);
        }
        Event::DeadLetterDiscarded(discarded) => {
            let receipt = pipeline
                .open
                .remove(&discarded.receipt_seq)
                .unwrap_or_else(|| panic!("seq {}: discards an open receipt", record.seq));
            assert!(
                matches!(receipt.status, ReceiptStatus::DeadLettered { .. }),
                "only letters are discarded"
            );
            leave_queue(pipeline, key, discarded.receipt_seq, receipt.status, false);
            pipeline.resolved.insert(
                discarded.receipt_seq,
                Resolved {
                    tenant: tenant.into(),
                    how: Resolution::Discarded { seq: record.seq },
                },
            );
            pipeline.counters.get_mut(tenant).expect("counted above").discarded += 1;
        }
        _ => unreachable!("only the pipeline's events come here"),
    }
}

/// Takes a receipt that is done out of the retry schedule or its member's sequence. A
/// processed letter must be the head; a discarded one may be anywhere in it.
fn leave_queue(
    pipeline: &mut super::state::IngestState,
    key: &AccountKey,
    receipt_seq: u64,
    status: ReceiptStatus,
    processed: bool,
) {
    match status {
        ReceiptStatus::Received => {}
        ReceiptStatus::Retrying { retry_at_us } => {
            assert!(
                pipeline.retry_due.remove(&(retry_at_us, receipt_seq)),
                "a retrying receipt is scheduled"
            );
        }
        ReceiptStatus::DeadLettered { .. } => {
            let letters = pipeline
                .sequences
                .get_mut(key)
                .expect("a letter is in its member's sequence");
            let at = letters
                .iter()
                .position(|&seq| seq == receipt_seq)
                .expect("a letter is in its member's sequence");
            assert!(!processed || at == 0, "letters are applied from the head");
            letters.remove(at);
            let next_head = letters.front().copied().filter(|_| at == 0);
            if letters.is_empty() {
                pipeline.sequences.remove(key);
            }
            let counters = pipeline
                .counters
                .get_mut(key.tenant())
                .expect("a letter's tenant is counted");
            counters.depth -= 1;
            // The letter that waited behind this one heads the sequence now: no longer
            // parked, and re-drivable.
            if let Some(head) = next_head.and_then(|seq| pipeline.open.get_mut(&seq)) {
                if let ReceiptStatus::DeadLettered { parked_behind } = head.status {
                    if parked_behind != 0 {
                        head.status = ReceiptStatus::DeadLettered { parked_behind: 0 };
                        head.cause = format!("{}; that letter is done, this one heads the sequence now", head.cause);
                    }
                }
            }
        }
    }
}

fn note_failure(receipt: &mut Receipt, cause: &str, ts_us: u64) {
    receipt.cause = cause.to_string();
    if receipt.first_failure_us == 0 {
        receipt.first_failure_us = ts_us;
    }
    receipt.last_failure_us = ts_us;
}

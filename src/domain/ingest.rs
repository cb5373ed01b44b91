//! The ingest pipeline: external events from partner systems (`docs/INGEST.md`).
//!
//! An accepted event is appended as received (`external.received`), then processed in the
//! same command: the outcome follows it in the log — `external.processed` and the ledger
//! events it caused, `external.attempt_failed` with the time of the next attempt, or
//! `external.dead_lettered`. Retries (`RetryDue`) and operator re-drives (`Redrive`) are
//! commands too, one receipt each, so every attempt is decided against the state the one
//! before it left. A member with a dead letter has its later events parked behind it
//! (Axon's sequenced dead letters); enrollments are never parked, because the letters
//! usually wait for one.

use super::command::AwardRequest;
use super::event::{
    DeadLetterDiscarded, Event, ExternalAttemptFailed, ExternalBody, ExternalDeadLettered, ExternalKind,
    ExternalProcessed, ExternalReceived, PointsReversed, RedriveRequested, ReversePolicy,
};
use super::limits::*;
use super::rejection::Rejection;
use super::rules::{account, tier_change, validate_id, validate_text, Balances, Ctx, Decision, Emitted};
use super::state::{content_fingerprint, external_fingerprint, AccountKey, Receipt, ReceiptStatus, Resolution};
use super::{account as accounts, award, CommandMeta};

/// Checks an external event's content against its type's schema: every id, range and text
/// rule, each error naming the field as `payload.<name>`.
pub fn validate_body(body: &ExternalBody) -> Result<(), Rejection> {
    validate_id("payload.member_id", body.member_id(), MAX_ID_BYTES)?;
    match body {
        ExternalBody::MemberEnrolled { .. } => Ok(()),
        ExternalBody::PointsAward {
            points, promotion_id, ..
        } => {
            super::rules::in_range("payload.points", *points, 1, MAX_AWARD_POINTS)?;
            validate_id("payload.promotion_id", promotion_id, MAX_ID_BYTES)
        }
        ExternalBody::RatingSlipCompleted {
            slip_id,
            game,
            average_bet_cents,
            decisions_per_hour,
            minutes_played,
            house_edge_bps,
            ..
        } => {
            validate_id("payload.slip_id", slip_id, MAX_ID_BYTES)?;
            validate_text("payload.game", game, MAX_ID_BYTES)?;
            award::slip_ranges(
                [
                    "payload.average_bet_cents",
                    "payload.decisions_per_hour",
                    "payload.minutes_played",
                    "payload.house_edge_bps",
                ],
                *average_bet_cents,
                *decisions_per_hour,
                *minutes_played,
                *house_edge_bps,
            )
        }
        ExternalBody::PointsReverse {
            original_external_id,
            reason,
            ..
        } => {
            validate_id(
                "payload.original_external_id",
                original_external_id,
                MAX_EXTERNAL_ID_BYTES,
            )?;
            validate_text("payload.reason", reason, REASON_MAX_CHARS)?;
            if reason.trim().is_empty() {
                return Err(Rejection::invalid("payload.reason", "is required"));
            }
            Ok(())
        }
    }
}

/// The idempotency scope of an external event is this prefix and its source; its key is
/// its external id. A retry of the same event is a retry of the same command.
pub const INGEST_SCOPE_PREFIX: &str = "ingest:";

/// Checks an external event's identity: its source and its id at the source.
pub fn validate_identity(source: &str, external_id: &str) -> Result<(), Rejection> {
    validate_id("source", source, MAX_SOURCE_BYTES)?;
    validate_id("external_id", external_id, MAX_EXTERNAL_ID_BYTES)
}

/// Accepts an external event: duplicates are answered with the original, a full queue
/// refuses, anything else is appended as received and given its first attempt (or parked).
pub(super) fn ingest(
    ctx: &Ctx<'_>,
    source: &str,
    external_id: &str,
    body: &ExternalBody,
) -> Result<Decision, Rejection> {
    validate_identity(source, external_id)?;
    validate_body(body)?;
    let identity = ctx.meta.idempotency.as_ref();
    let expected_scope = format!("{INGEST_SCOPE_PREFIX}{source}");
    if identity.is_none_or(|k| k.key != external_id || k.scope != expected_scope) {
        return Err(Rejection::invalid(
            "idempotency_key",
            "an external event's identity is its external id in the scope ingest:<source>",
        ));
    }
    let tenant = &ctx.meta.tenant;
    let ingest = &ctx.state.ingest;
    let checksum = body.checksum();
    let window_us = ctx.policy.ingest.dedup_window_seconds.saturating_mul(1_000_000);
    let duplicate_of = match ingest.contents.get(&content_fingerprint(tenant, source, &checksum)) {
        Some(&(first_seq, received_at_us)) if ctx.now_us.saturating_sub(received_at_us) < window_us => first_seq,
        _ => 0,
    };
    if duplicate_of != 0 {
        return Ok(content_duplicate(
            ctx,
            source,
            external_id,
            body,
            checksum,
            duplicate_of,
        ));
    }
    let member = AccountKey::new(tenant, body.member_id());
    let queued = ingest.sequences.get(&member).map_or(0, |letters| letters.len() as u64);
    let parks = queued > 0 && body.kind() != ExternalKind::MemberEnrolled;
    let policy = &ctx.policy.ingest;
    // Per tenant: one program's troubles must not stop another's events.
    if ingest.counters.get(tenant.as_str()).map_or(0, |c| c.depth) >= policy.dead_letters_max {
        return Err(Rejection::DeadLetterQueueFull {
            scope: "all members of the tenant".into(),
            bound: policy.dead_letters_max,
        });
    }
    if parks && queued >= policy.dead_letters_per_member_max {
        return Err(Rejection::DeadLetterQueueFull {
            scope: format!("member {:?}", body.member_id()),
            bound: policy.dead_letters_per_member_max,
        });
    }
    let receipt = Receipt {
        tenant: tenant.clone(),
        source: source.to_string(),
        external_id: external_id.to_string(),
        body: body.clone(),
        received_at_us: ctx.now_us,
        status: ReceiptStatus::Received,
        attempts: 0,
        cause: String::new(),
        first_failure_us: 0,
        last_failure_us: 0,
    };
    let receipt_seq = ctx.state.head_seq + 1;
    let mut events = vec![emit(
        &receipt,
        Event::ExternalReceived(ExternalReceived {
            source: source.to_string(),
            external_id: external_id.to_string(),
            body: body.clone(),
            checksum,
            duplicate_of: 0,
        }),
    )];
    match parks {
        true => events.push(park(ctx, &receipt, receipt_seq, &member)),
        false => attempt(ctx, &receipt, receipt_seq, Attempting::First, &mut events),
    }
    Ok(Decision::Append(events))
}

/// The same content again under another id within the window: recorded as received (so
/// that this id is answered as a duplicate for ever after, even past the window) and
/// processed at once as applied before, with nothing applied.
fn content_duplicate(
    ctx: &Ctx<'_>,
    source: &str,
    external_id: &str,
    body: &ExternalBody,
    checksum: [u8; 32],
    duplicate_of: u64,
) -> Decision {
    let receipt_seq = ctx.state.head_seq + 1;
    let received = Event::ExternalReceived(ExternalReceived {
        source: source.to_string(),
        external_id: external_id.to_string(),
        body: body.clone(),
        checksum,
        duplicate_of,
    });
    let processed = Event::ExternalProcessed(ExternalProcessed {
        receipt_seq,
        attempt: 1,
        ledger_first_seq: 0,
        ledger_last_seq: 0,
        points: 0,
        already_applied: true,
        redriven: false,
    });
    let emit = |event| Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: body.member_id().to_string(),
        event,
    };
    Decision::Append(vec![emit(received), emit(processed)])
}

/// One more attempt at the earliest retry that is due, or nothing.
pub(super) fn retry_due(ctx: &Ctx<'_>) -> Result<Decision, Rejection> {
    let ingest = &ctx.state.ingest;
    let Some(&(retry_at_us, receipt_seq)) = ingest.retry_due.first() else {
        return Ok(Decision::Nothing);
    };
    if retry_at_us > ctx.now_us {
        return Ok(Decision::Nothing);
    }
    let receipt = ingest.open.get(&receipt_seq).expect("a due retry is an open receipt");
    let member = AccountKey::new(&receipt.tenant, receipt.body.member_id());
    let mut events = Vec::new();
    // A dead letter received before this event appeared since its first attempt: do not
    // overtake it. Younger letters do not hold an older event back.
    let older_letter = ingest
        .sequences
        .get(&member)
        .and_then(|letters| letters.front())
        .is_some_and(|&head| head < receipt_seq);
    if older_letter && receipt.body.kind() != ExternalKind::MemberEnrolled {
        events.push(park(ctx, receipt, receipt_seq, &member));
    } else {
        attempt(ctx, receipt, receipt_seq, Attempting::Retry, &mut events);
    }
    Ok(Decision::Append(events))
}

/// An operator's plan of a re-drive: recorded, nothing applied yet.
/// An empty plan is recorded too: a retry of the request then answers "nothing", as the
/// first time.
pub(super) fn request_redrive(ctx: &Ctx<'_>, request: &RedriveRequested) -> Result<Decision, Rejection> {
    let max = request.max_letters as usize;
    if max == 0 || max > MAX_REDRIVE_LETTERS {
        return Err(Rejection::invalid(
            "max_count",
            format!("must be 1 to {MAX_REDRIVE_LETTERS}"),
        ));
    }
    if request.receipts.len() > max {
        return Err(Rejection::invalid(
            "receipts",
            format!("names more than max_count ({max}) letters"),
        ));
    }
    if !request.member_id.is_empty() {
        validate_id("member_id", &request.member_id, MAX_ID_BYTES)?;
    }
    Ok(Decision::Append(vec![Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: String::new(),
        event: Event::RedriveRequested(request.clone()),
    }]))
}

/// An operator's re-drive of the dead letter at the head of its member's sequence.
pub(super) fn redrive(ctx: &Ctx<'_>, receipt_seq: u64) -> Result<Decision, Rejection> {
    let receipt = letter(ctx, receipt_seq)?;
    let member = AccountKey::new(&receipt.tenant, receipt.body.member_id());
    let head = ctx.state.ingest.sequences[&member][0];
    if head != receipt_seq {
        return Err(Rejection::NotRedrivable {
            receipt_seq,
            reason: format!("it is parked behind dead letter {head}; re-drive that one first"),
        });
    }
    let mut events = Vec::new();
    attempt(ctx, receipt, receipt_seq, Attempting::Redrive, &mut events);
    Ok(Decision::Append(events))
}

/// An operator removes a dead letter without applying it; the reason is audited.
pub(super) fn discard(ctx: &Ctx<'_>, receipt_seq: u64, reason: &str) -> Result<Decision, Rejection> {
    validate_text("reason", reason, REASON_MAX_CHARS)?;
    if reason.trim().chars().count() < DISCARD_REASON_MIN_CHARS {
        return Err(Rejection::invalid(
            "reason",
            format!("must be at least {DISCARD_REASON_MIN_CHARS} characters"),
        ));
    }
    let receipt = letter(ctx, receipt_seq)?;
    Ok(Decision::Append(vec![emit(
        receipt,
        Event::DeadLetterDiscarded(DeadLetterDiscarded {
            receipt_seq,
            reason: reason.to_string(),
        }),
    )]))
}

/// The dead letter `receipt_seq` in the caller's tenant.
fn letter<'a>(ctx: &'a Ctx<'_>, receipt_seq: u64) -> Result<&'a Receipt, Rejection> {
    let ingest = &ctx.state.ingest;
    let not_found = Rejection::ReceiptNotFound { receipt_seq };
    let Some(receipt) = ingest.open.get(&receipt_seq) else {
        return match ingest.resolved.get(&receipt_seq) {
            Some(resolved) if *resolved.tenant == *ctx.meta.tenant => Err(match resolved.how {
                Resolution::Processed { seq } => Rejection::AlreadyResolved {
                    receipt_seq,
                    how: "processed",
                    seq,
                },
                Resolution::Discarded { seq } => Rejection::AlreadyResolved {
                    receipt_seq,
                    how: "discarded",
                    seq,
                },
            }),
            _ => Err(not_found),
        };
    };
    if receipt.tenant != ctx.meta.tenant {
        return Err(not_found);
    }
    match receipt.status {
        ReceiptStatus::DeadLettered { .. } => Ok(receipt),
        ReceiptStatus::Retrying { retry_at_us } => Err(Rejection::NotRedrivable {
            receipt_seq,
            reason: format!("it is not a dead letter: its next attempt is due at {retry_at_us} µs"),
        }),
        ReceiptStatus::Received => unreachable!("a received event's outcome is in the same command"),
    }
}

/// Why an attempt is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attempting {
    First,
    Retry,
    Redrive,
}

/// What one attempt at applying an external event came to.
enum Attempt {
    /// Append these ledger events (possibly none).
    Applied { events: Vec<Emitted>, points: u64 },
    /// Applied before under its natural identity (a rating slip accrued through the API).
    AlreadyApplied { first_seq: u64, last_seq: u64 },
    /// May succeed later: the member or the award to reverse has not arrived yet.
    Transient(Rejection),
    /// A rule of the ledger refuses it: retrying changes nothing.
    Permanent(Rejection),
}

/// Attempts `receipt` and appends the outcome to `events`: `external.processed` followed by
/// the ledger events, a scheduled retry, or a dead letter.
fn attempt(ctx: &Ctx<'_>, receipt: &Receipt, receipt_seq: u64, why: Attempting, events: &mut Vec<Emitted>) {
    let meta = CommandMeta {
        tenant: receipt.tenant.clone(),
        ..ctx.meta.clone()
    };
    // The member's awards are decided for the external event, not for the command that
    // carries it: their identities are their own.
    let as_member = Ctx {
        meta: &meta,
        identity: None,
        ..*ctx
    };
    let number = receipt.attempts + 1;
    let redriven = why == Attempting::Redrive;
    let processed = |first: u64, last: u64, points: u64, already_applied: bool| {
        Event::ExternalProcessed(ExternalProcessed {
            receipt_seq,
            attempt: number,
            ledger_first_seq: first,
            ledger_last_seq: last,
            points,
            already_applied,
            redriven,
        })
    };
    match apply(&as_member, receipt) {
        Attempt::Applied { events: ledger, points } => {
            // The processed record comes first, then the ledger events it names.
            let first = ctx.state.head_seq + events.len() as u64 + 2;
            let range = match ledger.len() as u64 {
                0 => (0, 0),
                n => (first, first + n - 1),
            };
            events.push(emit(receipt, processed(range.0, range.1, points, false)));
            events.extend(ledger);
        }
        Attempt::AlreadyApplied { first_seq, last_seq } => {
            events.push(emit(receipt, processed(first_seq, last_seq, 0, true)));
        }
        Attempt::Transient(cause) if !redriven && number < ctx.policy.ingest.max_attempts => {
            let retry_at_us = ctx.now_us.saturating_add(backoff_us(ctx, receipt_seq, number));
            events.push(emit(
                receipt,
                Event::ExternalAttemptFailed(ExternalAttemptFailed {
                    receipt_seq,
                    attempt: number,
                    cause: cause.to_string(),
                    retry_at_us,
                }),
            ));
        }
        Attempt::Transient(cause) | Attempt::Permanent(cause) => {
            events.push(emit(
                receipt,
                Event::ExternalDeadLettered(ExternalDeadLettered {
                    receipt_seq,
                    attempts: number,
                    cause: cause.to_string(),
                    parked_behind: 0,
                    redriven,
                }),
            ));
        }
    }
}

/// Parks `receipt` behind the head of its member's sequence.
fn park(ctx: &Ctx<'_>, receipt: &Receipt, receipt_seq: u64, member: &AccountKey) -> Emitted {
    let head = ctx.state.ingest.sequences[member][0];
    emit(
        receipt,
        Event::ExternalDeadLettered(ExternalDeadLettered {
            receipt_seq,
            attempts: receipt.attempts,
            cause: format!("parked behind dead letter {head} of the same member"),
            parked_behind: head,
            redriven: false,
        }),
    )
}

/// The delay before attempt `failed + 1`: the base doubled per failed attempt, capped, then
/// drawn from its upper half ("equal jitter") so that events that failed together do not
/// retry together. The draw hashes the receipt and attempt: pure, and the same on replay.
fn backoff_us(ctx: &Ctx<'_>, receipt_seq: u64, failed: u32) -> u64 {
    let policy = &ctx.policy.ingest;
    super::rules::jittered_backoff_us(
        policy.retry_base_delay_ms,
        policy.retry_max_delay_ms,
        failed,
        b"retry-jitter",
        &receipt_seq.to_le_bytes(),
    )
}

/// Maps the external event to the ledger operation it stands for and decides it.
fn apply(ctx: &Ctx<'_>, receipt: &Receipt) -> Attempt {
    let member = receipt.body.member_id();
    let decided = match &receipt.body {
        ExternalBody::MemberEnrolled { .. } => accounts::open(ctx, member),
        ExternalBody::PointsAward {
            points, promotion_id, ..
        } => award::award(
            ctx,
            member,
            &AwardRequest::Promotion {
                points: *points,
                promotion_id: promotion_id.clone(),
                external_reward_id: reward_id(&receipt.source, &receipt.external_id),
            },
        ),
        ExternalBody::RatingSlipCompleted {
            slip_id,
            game,
            average_bet_cents,
            decisions_per_hour,
            minutes_played,
            house_edge_bps,
            ..
        } => award::award(
            ctx,
            member,
            &AwardRequest::RatingSlip {
                slip_id: slip_id.clone(),
                game: game.clone(),
                average_bet_cents: *average_bet_cents,
                decisions_per_hour: *decisions_per_hour,
                minutes_played: *minutes_played,
                house_edge_bps: *house_edge_bps,
            },
        ),
        ExternalBody::PointsReverse {
            original_external_id,
            policy,
            reason,
            ..
        } => return reverse(ctx, receipt, original_external_id, *policy, reason),
    };
    match decided {
        Ok(Decision::Append(events)) => {
            let points = events
                .iter()
                .map(|e| match &e.event {
                    Event::PointsAwarded(a) => a.points,
                    _ => 0,
                })
                .sum();
            Attempt::Applied { events, points }
        }
        Ok(Decision::Replay { first_seq, last_seq }) => Attempt::AlreadyApplied { first_seq, last_seq },
        Ok(Decision::Nothing) => Attempt::Applied {
            events: Vec::new(),
            points: 0,
        },
        // Ingest maps to no manual reward, the only command that records a refusal.
        Ok(Decision::Refuse { rejection, .. }) => classify(rejection),
        Err(rejection) => classify(rejection),
    }
}

/// The external reward id of an ingested award: the source's length, the source and the
/// external id (`5:pos-1:a`), so that no two (source, id) pairs make the same id even
/// though both may hold `:`. At most 2 + 1 + 60 + 1 + 64 = 128 bytes.
pub(super) fn reward_id(source: &str, external_id: &str) -> String {
    format!("{}:{source}:{external_id}", source.len())
}

/// Transient failures are those a later event can cure.
fn classify(rejection: Rejection) -> Attempt {
    match rejection {
        Rejection::AccountNotFound { .. } | Rejection::OriginalNotFound { .. } => Attempt::Transient(rejection),
        other => Attempt::Permanent(other),
    }
}

/// Takes back what is left of an applied external award, under the reversal's policy.
fn reverse(
    ctx: &Ctx<'_>,
    receipt: &Receipt,
    original_external_id: &str,
    policy: ReversePolicy,
    reason: &str,
) -> Attempt {
    let member_id = receipt.body.member_id();
    let current = match account(ctx, member_id) {
        Ok(current) => current,
        Err(rejection) => return classify(rejection),
    };
    let identity = external_fingerprint(&receipt.tenant, &receipt.source, original_external_id);
    let Some(original) = ctx.state.ingest.reversible.get(&identity) else {
        return Attempt::Transient(Rejection::OriginalNotFound {
            source_name: receipt.source.clone(),
            external_id: original_external_id.to_string(),
        });
    };
    if original.account != AccountKey::new(&receipt.tenant, member_id) {
        return Attempt::Permanent(Rejection::invalid(
            "payload.member_id",
            format!(
                "award {original_external_id:?} was made to member {:?}",
                original.account.account()
            ),
        ));
    }
    let remaining = original.points - original.reversed;
    let available = current.available();
    let points = match policy {
        ReversePolicy::CapToAvailable => remaining.min(available),
        ReversePolicy::AllOrNothing if remaining > available => {
            return Attempt::Permanent(Rejection::InsufficientPoints {
                available,
                requested: remaining,
            })
        }
        ReversePolicy::AllOrNothing => remaining,
    };
    if points == 0 {
        return Attempt::Applied {
            events: Vec::new(),
            points: 0,
        };
    }
    let before = Balances::of(ctx.state, current);
    let after = Balances {
        posted: before.posted - points,
        lifetime: before.lifetime.checked_sub(points).expect("lifetime covers posted"),
        ..before.clone()
    };
    let mut events = vec![emit(
        receipt,
        Event::PointsReversed(PointsReversed {
            points,
            requested: remaining,
            source: receipt.source.clone(),
            original_external_id: original_external_id.to_string(),
            policy,
            reason: reason.to_string(),
            effect: before.effect_to(&after),
        }),
    )];
    if let Some(change) = tier_change(ctx.policy, &after) {
        events.push(emit(receipt, change));
    }
    Attempt::Applied { events, points }
}

fn emit(receipt: &Receipt, event: Event) -> Emitted {
    Emitted {
        tenant: receipt.tenant.clone(),
        account: receipt.body.member_id().to_string(),
        event,
    }
}

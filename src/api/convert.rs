//! Wire messages to commands, and receipts and views back to wire messages. Responses are
//! built from the command's own events, so a replay answers exactly what the original did.

use super::caller::Caller;
use super::proto;
use super::status::invalid;
use crate::domain::event::{AwardSource, Effect};
use crate::domain::limits::HOLD_TTL_DEFAULT_SECONDS;
use crate::domain::{AwardRequest, Command, CommandMeta, Event, EventKind, HoldStatus, IdempotencyKey, Record};
use crate::engine::Receipt;
use crate::projection::{AccountView, HistoryView, HoldView};
use tonic::Status;
use uuid::Uuid;

/// The fields every mutating request carries.
pub struct Common<'a> {
    pub idempotency_key: &'a str,
    pub idempotency_scope: &'a str,
    pub correlation_id: &'a str,
    pub causation_id: &'a str,
}

pub fn meta(caller: &Caller, common: Common<'_>) -> CommandMeta {
    CommandMeta {
        tenant: caller.tenant.clone(),
        actor: caller.actor.clone(),
        correlation_id: common.correlation_id.to_string(),
        causation_id: common.causation_id.to_string(),
        idempotency: Some(IdempotencyKey {
            key: common.idempotency_key.to_string(),
            scope: common.idempotency_scope.to_string(),
        }),
        grants: Some(caller.principal.permissions),
    }
}

/// A command's metadata from its caller, with an idempotency key if the request gave one
/// (the services whose commands may come without: identity, deliveries).
pub fn caller_meta(caller: &Caller, key: &str, correlation_id: &str) -> CommandMeta {
    CommandMeta {
        tenant: caller.tenant.clone(),
        actor: caller.actor.clone(),
        correlation_id: correlation_id.to_string(),
        causation_id: String::new(),
        idempotency: (!key.is_empty()).then(|| IdempotencyKey {
            key: key.to_string(),
            scope: String::new(),
        }),
        grants: Some(caller.principal.permissions),
    }
}

macro_rules! common {
    ($request:expr) => {
        Common {
            idempotency_key: &$request.idempotency_key,
            idempotency_scope: &$request.idempotency_scope,
            correlation_id: &$request.correlation_id,
            causation_id: &$request.causation_id,
        }
    };
}

pub fn open_account(caller: &Caller, request: &proto::OpenAccountRequest) -> (CommandMeta, Command) {
    let command = Command::OpenAccount {
        account: request.account_id.clone(),
    };
    (meta(caller, common!(request)), command)
}

pub fn award(caller: &Caller, request: &proto::AwardRequest) -> Result<(CommandMeta, Command), Status> {
    use proto::award_request::Source;
    let source = match &request.source {
        Some(Source::RatingSlip(slip)) => AwardRequest::RatingSlip {
            slip_id: slip.slip_id.clone(),
            game: slip.game.clone(),
            average_bet_cents: slip.average_bet_cents,
            decisions_per_hour: slip.decisions_per_hour,
            minutes_played: slip.minutes_played,
            house_edge_bps: slip.house_edge_bps,
        },
        Some(Source::Manual(manual)) => AwardRequest::Manual {
            // A named staff member other than the caller is refused (and recorded) by the
            // ledger's comp rules.
            staff_id: match manual.staff_id.as_str() {
                "" => caller.actor.clone(),
                named => named.to_string(),
            },
            points: manual.points,
            reason: manual.reason.clone(),
            external_reward_id: manual.external_reward_id.clone(),
        },
        Some(Source::Promotion(promotion)) => AwardRequest::Promotion {
            points: promotion.points,
            promotion_id: promotion.promotion_id.clone(),
            external_reward_id: promotion.external_reward_id.clone(),
        },
        None => return Err(invalid("source", "one of rating_slip, manual or promotion is required")),
    };
    let command = Command::Award {
        account: request.account_id.clone(),
        source,
    };
    Ok((meta(caller, common!(request)), command))
}

pub fn reserve(caller: &Caller, request: &proto::ReserveRequest) -> (CommandMeta, Command) {
    let ttl_seconds = match request.ttl_seconds {
        0 => HOLD_TTL_DEFAULT_SECONDS,
        ttl => ttl,
    };
    let command = Command::Reserve {
        account: request.account_id.clone(),
        amount: request.amount,
        ttl_seconds,
    };
    (meta(caller, common!(request)), command)
}

pub fn commit(caller: &Caller, request: &proto::CommitRequest) -> (CommandMeta, Command) {
    let command = Command::Commit {
        hold_id: request.hold_id,
        amount: request.amount,
    };
    (meta(caller, common!(request)), command)
}

pub fn release(caller: &Caller, request: &proto::ReleaseRequest) -> (CommandMeta, Command) {
    let command = Command::Release {
        hold_id: request.hold_id,
    };
    (meta(caller, common!(request)), command)
}

/// One command of a batch.
pub fn batch_command(caller: &Caller, command: &proto::BatchCommand) -> Result<(CommandMeta, Command), Status> {
    use proto::batch_command::Command as C;
    match &command.command {
        Some(C::OpenAccount(r)) => Ok(open_account(caller, r)),
        Some(C::Award(r)) => award(caller, r),
        Some(C::Reserve(r)) => Ok(reserve(caller, r)),
        Some(C::Commit(r)) => Ok(commit(caller, r)),
        Some(C::Release(r)) => Ok(release(caller, r)),
        None => Err(invalid(
            "command",
            "one of open_account, award, reserve, commit or release is required",
        )),
    }
}

pub fn outcome(receipt: &Receipt) -> proto::CommandOutcome {
    let first = receipt.records.first().expect("an accepted command has events");
    let last = receipt.records.last().expect("an accepted command has events");
    proto::CommandOutcome {
        sequence: first.seq,
        last_sequence: last.seq,
        timestamp_us: first.ts_us,
        replayed: receipt.replayed,
        event_id: first.envelope.event_id.to_string(),
    }
}

fn balance(effect: &Effect) -> proto::Balance {
    proto::Balance {
        posted: effect.posted_after,
        held: effect.held_after,
        available: effect.posted_after - effect.held_after,
        lifetime_earned: effect.lifetime_after,
        tier: effect.tier_after.clone(),
    }
}

/// The balances after the command's last event.
fn final_balance(receipt: &Receipt) -> proto::Balance {
    match &receipt.records.last().expect("an accepted command has events").event {
        Event::AccountOpened(opened) => proto::Balance {
            tier: opened.tier.clone(),
            ..proto::Balance::default()
        },
        other => balance(other.effect().expect("ledger events carry an effect")),
    }
}

pub fn open_account_response(receipt: &Receipt) -> proto::OpenAccountResponse {
    proto::OpenAccountResponse {
        outcome: Some(outcome(receipt)),
        balance: Some(final_balance(receipt)),
    }
}

pub fn award_response(receipt: &Receipt) -> proto::AwardResponse {
    let mut response = proto::AwardResponse {
        outcome: Some(outcome(receipt)),
        balance: Some(final_balance(receipt)),
        ..Default::default()
    };
    for record in &receipt.records {
        match &record.event {
            Event::PointsAwarded(award) => {
                response.points_awarded = award.points;
                if let AwardSource::RatingSlip(slip) = &award.source {
                    response.accrual = Some(proto::Accrual {
                        theo_cents: slip.theo_cents,
                        rate_table_version: slip.rate_table_version.clone(),
                        points_per_theo_dollar_milli: slip.points_per_theo_dollar_milli,
                    });
                }
            }
            Event::TierChanged(change) => {
                response.tier_change = Some(proto::TierChange {
                    from: change.from.clone(),
                    to: change.to.clone(),
                })
            }
            _ => {}
        }
    }
    response
}

/// The hold as the command's event leaves it.
fn hold_of(record: &Record) -> proto::Hold {
    let mut hold = proto::Hold {
        account_id: record.envelope.stream.clone(),
        ..Default::default()
    };
    let (status, amount, reserved_at, expires_at, committed, released) = match &record.event {
        Event::HoldReserved(r) => {
            hold.hold_id = r.hold_id;
            (HoldStatus::Active, r.amount, record.ts_us, r.expires_at_us, 0, 0)
        }
        Event::HoldCommitted(c) => {
            hold.hold_id = c.hold_id;
            (
                HoldStatus::Committed,
                c.committed + c.released,
                c.reserved_at_us,
                c.expires_at_us,
                c.committed,
                c.released,
            )
        }
        Event::HoldReleased(r) => {
            hold.hold_id = r.hold_id;
            (
                HoldStatus::Released,
                r.amount,
                r.reserved_at_us,
                r.expires_at_us,
                0,
                r.amount,
            )
        }
        other => unreachable!("{:?} is not a hold command's event", other.kind()),
    };
    hold.state = hold_state(status) as i32;
    hold.amount = amount;
    hold.created_at_us = reserved_at;
    hold.expires_at_us = expires_at;
    hold.committed_amount = committed;
    hold.released_amount = released;
    if status != HoldStatus::Active {
        hold.resolved_at_us = record.ts_us;
        hold.resolved_sequence = record.seq;
    }
    hold
}

fn hold_response(
    receipt: &Receipt,
) -> (
    Option<proto::CommandOutcome>,
    Option<proto::Hold>,
    Option<proto::Balance>,
) {
    let record = receipt.records.first().expect("a hold command has one event");
    (
        Some(outcome(receipt)),
        Some(hold_of(record)),
        Some(final_balance(receipt)),
    )
}

pub fn reserve_response(receipt: &Receipt) -> proto::ReserveResponse {
    let (outcome, hold, balance) = hold_response(receipt);
    proto::ReserveResponse { outcome, hold, balance }
}

pub fn commit_response(receipt: &Receipt) -> proto::CommitResponse {
    let (outcome, hold, balance) = hold_response(receipt);
    proto::CommitResponse { outcome, hold, balance }
}

pub fn release_response(receipt: &Receipt) -> proto::ReleaseResponse {
    let (outcome, hold, balance) = hold_response(receipt);
    proto::ReleaseResponse { outcome, hold, balance }
}

/// The batch result of an accepted command, shaped by the command that produced it.
pub fn batch_result(command: &Command, receipt: &Receipt) -> proto::batch_result::Result {
    use proto::batch_result::Result as R;
    match command {
        Command::OpenAccount { .. } => R::OpenAccount(open_account_response(receipt)),
        Command::Award { .. } => R::Award(award_response(receipt)),
        Command::Reserve { .. } => R::Reserve(reserve_response(receipt)),
        Command::Commit { .. } => R::Commit(commit_response(receipt)),
        Command::Release { .. } => R::Release(release_response(receipt)),
        Command::ExpireDue { .. }
        | Command::Ingest { .. }
        | Command::RetryDue
        | Command::Redrive { .. }
        | Command::RequestRedrive { .. }
        | Command::CreateLink { .. }
        | Command::VerifyLink { .. }
        | Command::RevokeLink { .. }
        | Command::Discard { .. }
        | Command::StartSession { .. }
        | Command::RefreshSession { .. }
        | Command::EndSession { .. }
        | Command::CreateApiKey { .. }
        | Command::RevokeApiKey { .. }
        | Command::RegisterEndpoint { .. }
        | Command::UpdateEndpoint { .. }
        | Command::DispatchDelivery { .. }
        | Command::RecordDelivery { .. }
        | Command::AckDelivery { .. }
        | Command::RetryDeliveries { .. } => unreachable!("a ledger batch holds ledger commands only"),
    }
}

pub fn hold_state(status: HoldStatus) -> proto::HoldState {
    match status {
        HoldStatus::Active => proto::HoldState::Active,
        HoldStatus::Committed => proto::HoldState::Committed,
        HoldStatus::Released => proto::HoldState::Released,
        HoldStatus::Expired => proto::HoldState::Expired,
    }
}

pub fn account(view: &AccountView) -> proto::Account {
    proto::Account {
        account_id: view.account_id.clone(),
        posted: view.posted,
        held: view.held,
        available: view.available(),
        lifetime_earned: view.lifetime,
        tier: view.tier.clone(),
        active_holds: view.active_holds,
        opened_at_us: view.opened_at_us,
        last_sequence: view.last_seq,
    }
}

pub fn hold(view: &HoldView) -> proto::Hold {
    proto::Hold {
        hold_id: view.hold_id,
        account_id: view.account_id.clone(),
        amount: view.amount,
        state: hold_state(view.status) as i32,
        created_at_us: view.created_at_us,
        expires_at_us: view.expires_at_us,
        committed_amount: view.committed,
        released_amount: view.released,
        resolved_at_us: view.resolved_at_us,
        resolved_sequence: view.resolved_seq,
    }
}

pub fn history_entry(view: &HistoryView) -> proto::HistoryEntry {
    let e = &view.effect;
    proto::HistoryEntry {
        sequence: view.seq,
        timestamp_us: view.ts_us,
        event_id: Uuid::from_bytes(view.event_id).to_string(),
        kind: EventKind::from_code(view.kind)
            .map_or("unknown", |k| k.name())
            .to_string(),
        actor: view.actor.clone(),
        correlation_id: view.correlation_id.clone(),
        causation_id: view.causation_id.clone(),
        idempotency_key: view.idempotency_key.clone(),
        idempotency_scope: view.idempotency_scope.clone(),
        reason: view.reason.clone(),
        posted_before: e.posted_before,
        posted_after: e.posted_after,
        held_before: e.held_before,
        held_after: e.held_after,
        lifetime_before: e.lifetime_before,
        lifetime_after: e.lifetime_after,
        tier_before: e.tier_before.clone(),
        tier_after: e.tier_after.clone(),
        hold_id: view.hold_id,
        points: view.points,
        account_id: view.account_id.clone(),
    }
}

/// A replay request's window, filter (confined to the caller's tenant) and limit.
pub fn replay_spec(
    caller: &Caller,
    request: &proto::ReplayRequest,
) -> Result<(crate::query::Window, crate::query::EventFilter, u64), Status> {
    use crate::query::Window;
    let by_time = request.from_time_us != 0 || request.to_time_us != 0;
    let by_seq = request.from_sequence != 0 || request.to_sequence != 0;
    let window = match (by_seq, by_time) {
        (true, true) => return Err(invalid("window", "give sequence numbers or timestamps, not both")),
        (_, true) => Window::Time {
            from_us: request.from_time_us,
            to_us: (request.to_time_us != 0).then_some(request.to_time_us),
        },
        _ => Window::Sequence {
            from: request.from_sequence.max(1),
            to: (request.to_sequence != 0).then_some(request.to_sequence),
        },
    };
    let (from, to) = match window {
        Window::Sequence { from, to } => (from, to),
        Window::Time { from_us, to_us } => (from_us, to_us),
    };
    if to.is_some_and(|to| to < from) {
        return Err(invalid("window", "the window ends before it starts"));
    }
    Ok((window, filter(caller, request.filter.as_ref())?, request.max_events))
}

/// A wire filter, confined to the caller's tenant.
pub fn filter(caller: &Caller, filter: Option<&proto::EventFilter>) -> Result<crate::query::EventFilter, Status> {
    let empty = proto::EventFilter::default();
    let f = filter.unwrap_or(&empty);
    Ok(crate::query::EventFilter {
        tenant: Some(caller.tenant.clone()),
        kinds: crate::query::EventFilter::parse_kinds(&f.kinds).map_err(|e| invalid("filter.kinds", e))?,
        accounts: f.account_ids.clone(),
        correlation_ids: f.correlation_ids.clone(),
        actors: f.actors.clone(),
        idempotency: None,
    })
}

pub fn operation(op: &crate::engine::OperationRecord) -> proto::Operation {
    use crate::engine::OperationState as S;
    let state = match op.state {
        S::Pending => proto::OperationState::Pending,
        S::Running => proto::OperationState::Running,
        S::Completed => proto::OperationState::Completed,
        S::Failed => proto::OperationState::Failed,
        S::Cancelled => proto::OperationState::Cancelled,
    };
    proto::Operation {
        id: op.id.clone(),
        kind: op.kind.clone(),
        state: state as i32,
        progress_done: op.done,
        progress_total: op.total,
        started_at_us: op.started_at_us,
        ended_at_us: op.ended_at_us,
        result: op.result.clone(),
        error: op.error.clone(),
        description: op.description.clone(),
    }
}

//! The `tally.v1.Ingest` service: external events in, the dead-letter queue out. Handlers
//! translate and delegate: the pipeline's rules are the domain's (`domain/ingest.rs`).

use super::caller::Caller;
use super::external;
use super::proto::{self, ingest_server::Ingest};
use super::records;
use super::slot::EngineSlot;
use super::status::{classify_rejection, invalid, to_status};
use super::trace;
use crate::domain::event::{Event, ExternalKind};
use crate::domain::state::ReceiptStatus;
use crate::domain::{Command, CommandMeta, IdempotencyKey, Rejection, INGEST_SCOPE_PREFIX};
use crate::engine::{EngineHandle, LetterFilter, LetterView, Receipt, ReceiptState, RedriveSelection};
use tonic::{Request, Response, Status};

/// Events in one `IngestBatch`, as many as commands in a ledger batch.
pub const MAX_BATCH_EVENTS: usize = super::ledger::MAX_BATCH_COMMANDS;
/// Letters per listing when the request asks for none.
pub const DEFAULT_LETTERS: u32 = 100;
/// Letters per listing at most.
pub const MAX_LETTERS: u32 = 1000;
/// Letters one re-drive applies when the request names no maximum.
pub const DEFAULT_REDRIVE_COUNT: u32 = 100;
/// Letters one re-drive applies at most (`domain::limits::MAX_REDRIVE_LETTERS`).
pub const MAX_REDRIVE_COUNT: u32 = crate::domain::limits::MAX_REDRIVE_LETTERS as u32;

pub struct IngestService {
    slot: EngineSlot,
}

impl IngestService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    fn engine(&self) -> Result<&EngineHandle, Status> {
        self.slot.engine()
    }

    /// Submits one command inside its span, and records how it ended.
    async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, Status> {
        trace::submit(self.engine()?, meta, command).await
    }
}

/// The command for one external event: its identity is `(external_id, ingest:<source>)`.
pub fn ingest_command(caller: &Caller, request: &proto::IngestRequest) -> Result<(CommandMeta, Command), Status> {
    let rejected = |r: Rejection| classify_rejection(&r).into_status();
    crate::domain::validate_identity(&request.source, &request.external_id).map_err(rejected)?;
    let body = match (&request.payload, request.payload_json.is_empty()) {
        (Some(payload), true) => external::parse_struct(&request.r#type, payload),
        (None, _) => external::parse(&request.r#type, &request.payload_json),
        (Some(_), false) => Err(Rejection::invalid("payload", "set payload or payload_json, not both")),
    }
    .map_err(rejected)?;
    let meta = CommandMeta {
        tenant: caller.tenant.clone(),
        actor: caller.actor.clone(),
        correlation_id: request.correlation_id.clone(),
        causation_id: String::new(),
        idempotency: Some(IdempotencyKey {
            key: request.external_id.clone(),
            scope: format!("{INGEST_SCOPE_PREFIX}{}", request.source),
        }),
        grants: Some(caller.principal.permissions),
    };
    let command = Command::Ingest {
        source: request.source.clone(),
        external_id: request.external_id.clone(),
        body,
    };
    Ok((meta, command))
}

/// The answer to an ingest, from the records of the command that received the event.
pub fn ingest_response(receipt: &Receipt) -> proto::IngestResponse {
    use proto::{Duplicate, IngestOutcome};
    let first = receipt.records.first().expect("an ingest appends its receipt");
    let Event::ExternalReceived(received) = &first.event else {
        unreachable!("an ingest's first record is its receipt")
    };
    let mut response = proto::IngestResponse {
        receipt_sequence: first.seq,
        external_id: received.external_id.clone(),
        checksum: crate::hex::hex(&received.checksum),
        duplicate: match (receipt.replayed, received.duplicate_of) {
            (true, _) => Duplicate::ExternalId,
            (false, 0) => Duplicate::None,
            (false, _) => Duplicate::Content,
        } as i32,
        duplicate_of: received.duplicate_of,
        events: receipt.records.iter().map(records::ledger_event).collect(),
        ..Default::default()
    };
    let outcome = receipt.records.get(1).map(|r| &r.event);
    response.outcome = match outcome {
        Some(Event::ExternalProcessed(p)) => {
            response.attempt = p.attempt;
            response.points = p.points;
            IngestOutcome::Processed
        }
        Some(Event::ExternalAttemptFailed(f)) => {
            response.attempt = f.attempt;
            response.cause = f.cause.clone();
            response.retry_at_us = f.retry_at_us;
            IngestOutcome::RetryScheduled
        }
        Some(Event::ExternalDeadLettered(d)) => {
            response.attempt = d.attempts;
            response.cause = d.cause.clone();
            response.parked_behind = d.parked_behind;
            match d.parked_behind {
                0 => IngestOutcome::DeadLettered,
                _ => IngestOutcome::Parked,
            }
        }
        _ => unreachable!("a receipt's outcome follows it"),
    } as i32;
    response
}

fn letter(view: &LetterView) -> proto::DeadLetter {
    use proto::LetterState;
    let r = &view.receipt;
    let (state, parked_behind, retry_at_us) = match r.status {
        ReceiptStatus::Retrying { retry_at_us } => (LetterState::Retrying, 0, retry_at_us),
        ReceiptStatus::DeadLettered { parked_behind: 0 } => (LetterState::DeadLettered, 0, 0),
        ReceiptStatus::DeadLettered { parked_behind } => (LetterState::Parked, parked_behind, 0),
        ReceiptStatus::Received => unreachable!("a received event's outcome is committed with it"),
    };
    proto::DeadLetter {
        receipt_sequence: view.receipt_seq,
        source: r.source.clone(),
        external_id: r.external_id.clone(),
        r#type: r.body.kind().name().to_string(),
        member_id: r.body.member_id().to_string(),
        payload_json: external::to_json(&r.body).to_string(),
        state: state as i32,
        parked_behind,
        position: view.position,
        attempts: r.attempts,
        cause: r.cause.clone(),
        received_at_us: r.received_at_us,
        first_failure_us: r.first_failure_us,
        last_failure_us: r.last_failure_us,
        retry_at_us,
    }
}

/// A letter filter from request fields.
fn filter(
    type_name: &str,
    member_id: &str,
    received_from_us: u64,
    received_to_us: u64,
) -> Result<LetterFilter, Status> {
    let kind = match type_name {
        "" => None,
        name => Some(ExternalKind::from_name(name).ok_or_else(|| {
            let known: Vec<_> = ExternalKind::ALL.iter().map(|k| k.name()).collect();
            invalid(
                "type",
                format!(
                    "unknown event type {}; known: {}",
                    crate::domain::quote(name),
                    known.join(", ")
                ),
            )
        })?),
    };
    if received_to_us != 0 && received_to_us < received_from_us {
        return Err(invalid("received_to_us", "must not be before received_from_us"));
    }
    Ok(LetterFilter {
        kind,
        member: (!member_id.is_empty()).then(|| member_id.to_string()),
        received_from_us,
        received_to_us,
        ..LetterFilter::default()
    })
}

/// Longest key of a re-drive: each letter's command is keyed `<key>/<receipt>`, and a
/// receipt number has up to 20 digits.
const MAX_REDRIVE_KEY_BYTES: usize = crate::domain::limits::MAX_ID_BYTES - 21;

fn operator_meta(caller: &Caller, key: &str, scope: &str, correlation_id: &str) -> Result<CommandMeta, Status> {
    if key.is_empty() {
        return Err(invalid("idempotency_key", "is required"));
    }
    Ok(CommandMeta {
        tenant: caller.tenant.clone(),
        actor: caller.actor.clone(),
        correlation_id: correlation_id.to_string(),
        causation_id: String::new(),
        idempotency: Some(IdempotencyKey {
            key: key.to_string(),
            scope: scope.to_string(),
        }),
        grants: Some(caller.principal.permissions),
    })
}

/// A re-drive's result for one letter.
fn redrive_result(receipt_seq: u64, result: Result<Receipt, Rejection>) -> proto::RedriveResult {
    use proto::RedriveOutcome as O;
    let mut out = proto::RedriveResult {
        receipt_sequence: receipt_seq,
        ..Default::default()
    };
    let outcome = match result {
        Ok(receipt) => {
            let first = receipt.records.first().expect("a re-drive appends its outcome");
            out.sequence = first.seq;
            out.replayed = receipt.replayed;
            match &first.event {
                Event::ExternalProcessed(p) => {
                    out.message = format!("applied ({} points)", p.points);
                    O::Processed
                }
                Event::ExternalDeadLettered(d) => {
                    out.message = d.cause.clone();
                    O::FailedAgain
                }
                _ => unreachable!("a re-drive's first record is its outcome"),
            }
        }
        Err(Rejection::AlreadyResolved { seq, .. }) => {
            out.sequence = seq;
            out.message = format!("receipt {receipt_seq} was already done with at sequence {seq}; nothing was applied");
            O::AlreadyResolved
        }
        Err(other) => {
            out.message = other.to_string();
            O::Skipped
        }
    };
    out.outcome = outcome as i32;
    out
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn ingest(&self, request: Request<proto::IngestRequest>) -> Result<Response<proto::IngestResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (meta, command) = ingest_command(&caller, request.get_ref())?;
        let receipt = self.submit(meta, command).await?;
        Ok(Response::new(ingest_response(&receipt)))
    }

    async fn ingest_batch(
        &self,
        request: Request<proto::IngestBatchRequest>,
    ) -> Result<Response<proto::IngestBatchResponse>, Status> {
        use proto::ingest_result::Result as R;
        let caller = Caller::of(&request)?;
        self.slot.admit(&caller.tenant, request.get_ref().events.len())?;
        let events = &request.get_ref().events;
        if events.is_empty() || events.len() > MAX_BATCH_EVENTS {
            return Err(invalid(
                "events",
                format!("a batch holds 1 to {MAX_BATCH_EVENTS} events, got {}", events.len()),
            ));
        }
        let mut results: Vec<Option<R>> = Vec::with_capacity(events.len());
        let (mut accepted, mut positions) = (Vec::new(), Vec::new());
        for (position, event) in events.iter().enumerate() {
            match ingest_command(&caller, event) {
                Ok(pair) => {
                    positions.push(position);
                    accepted.push(pair);
                    results.push(None);
                }
                Err(status) => results.push(Some(R::Error(super::ledger::status_error(&status)))),
            }
        }
        let spans: Vec<_> = accepted.iter().map(|(m, c)| trace::command_span(m, c)).collect();
        let outcomes = match accepted.is_empty() {
            true => Vec::new(),
            false => self.engine()?.submit_batch(accepted).await.map_err(to_status)?,
        };
        for ((position, outcome), span) in positions.into_iter().zip(outcomes).zip(spans) {
            trace::record(&span, outcome.as_ref());
            results[position] = Some(match outcome {
                Ok(receipt) => R::Accepted(ingest_response(&receipt)),
                Err(rejection) => R::Error(classify_rejection(&rejection).into_batch_error()),
            });
        }
        let results = results
            .into_iter()
            .map(|result| proto::IngestResult {
                result: Some(result.expect("every event has a result")),
            })
            .collect();
        Ok(Response::new(proto::IngestBatchResponse { results }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let limit = match r.limit {
            0 => DEFAULT_LETTERS,
            n if n > MAX_LETTERS => return Err(invalid("limit", format!("must be at most {MAX_LETTERS}"))),
            n => n,
        };
        let filter = LetterFilter {
            cause_contains: r.cause_contains.clone(),
            include_retrying: r.include_retrying,
            ..filter(&r.r#type, &r.member_id, r.received_from_us, r.received_to_us)?
        };
        let page = self
            .engine()?
            .dead_letters(&caller.tenant, filter, limit as usize)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListDeadLettersResponse {
            letters: page.letters.iter().map(letter).collect(),
            matching: page.matching,
            depth: page.depth,
        }))
    }

    async fn get_external_event(
        &self,
        request: Request<proto::GetExternalEventRequest>,
    ) -> Result<Response<proto::ExternalEventStatus>, Status> {
        use proto::LetterState;
        let caller = Caller::of(&request)?;
        let receipt_seq = request.get_ref().receipt_sequence;
        let state = self
            .engine()?
            .receipt(&caller.tenant, receipt_seq)
            .await
            .map_err(to_status)?
            .ok_or_else(|| classify_rejection(&Rejection::ReceiptNotFound { receipt_seq }).into_status())?;
        Ok(Response::new(match state {
            ReceiptState::Open(view) => {
                let letter = letter(&view);
                proto::ExternalEventStatus {
                    state: letter.state,
                    letter: Some(letter),
                    resolved_sequence: 0,
                }
            }
            ReceiptState::Processed { seq } => proto::ExternalEventStatus {
                state: LetterState::Processed as i32,
                letter: None,
                resolved_sequence: seq,
            },
            ReceiptState::Discarded { seq } => proto::ExternalEventStatus {
                state: LetterState::Discarded as i32,
                letter: None,
                resolved_sequence: seq,
            },
        }))
    }

    async fn redrive(
        &self,
        request: Request<proto::RedriveRequest>,
    ) -> Result<Response<proto::RedriveResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let meta = operator_meta(&caller, &r.idempotency_key, &r.idempotency_scope, &r.correlation_id)?;
        if r.idempotency_key.len() > MAX_REDRIVE_KEY_BYTES {
            return Err(invalid(
                "idempotency_key",
                format!("a re-drive's key is at most {MAX_REDRIVE_KEY_BYTES} bytes (each letter's is <key>/<receipt>)"),
            ));
        }
        let max = match r.max_count {
            0 => DEFAULT_REDRIVE_COUNT,
            n if n > MAX_REDRIVE_COUNT => {
                return Err(invalid("max_count", format!("must be at most {MAX_REDRIVE_COUNT}")))
            }
            n => n,
        };
        let filter = filter(&r.r#type, &r.member_id, r.received_from_us, r.received_to_us)?;
        let selection = match r.receipt_sequence {
            0 => RedriveSelection::Matching(filter.clone()),
            seq => RedriveSelection::Through(seq),
        };
        let engine = self.engine()?;
        let plan = engine
            .redrive_plan(&caller.tenant, selection, max as usize)
            .await
            .map_err(to_status)?;
        // The request and its plan go into the log first; a retry of the request (same key)
        // gets the original plan back and re-drives the same letters.
        let requested = crate::domain::event::RedriveRequested {
            through_receipt: r.receipt_sequence,
            kind: filter.kind,
            member_id: r.member_id.clone(),
            received_from_us: r.received_from_us,
            received_to_us: r.received_to_us,
            max_letters: max,
            receipts: plan,
        };
        let recorded = self.submit(meta.clone(), Command::RequestRedrive(requested)).await?;
        let Some(Event::RedriveRequested(requested)) = recorded.records.first().map(|r| &r.event) else {
            unreachable!("a re-drive request records its plan")
        };
        let plan = requested.receipts.clone();
        // Each letter is its own command, keyed by the request's key and the letter.
        let commands: Vec<_> = plan
            .iter()
            .map(|&seq| {
                let mut meta = meta.clone();
                if let Some(key) = meta.idempotency.as_mut() {
                    key.key = format!("{}/{seq}", key.key);
                }
                (meta, Command::Redrive { receipt_seq: seq })
            })
            .collect();
        let outcomes = match commands.is_empty() {
            true => Vec::new(),
            false => engine.submit_batch(commands).await.map_err(to_status)?,
        };
        if let ([seq], [Err(Rejection::ReceiptNotFound { .. })]) = (plan.as_slice(), outcomes.as_slice()) {
            return Err(classify_rejection(&Rejection::ReceiptNotFound { receipt_seq: *seq }).into_status());
        }
        let results = plan
            .into_iter()
            .zip(outcomes)
            .map(|(seq, outcome)| redrive_result(seq, outcome))
            .collect();
        Ok(Response::new(proto::RedriveResponse {
            request_sequence: recorded.records[0].seq,
            replayed: recorded.replayed,
            results,
        }))
    }

    async fn discard(
        &self,
        request: Request<proto::DiscardRequest>,
    ) -> Result<Response<proto::DiscardResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let meta = operator_meta(&caller, &r.idempotency_key, &r.idempotency_scope, &r.correlation_id)?;
        let command = Command::Discard {
            receipt_seq: r.receipt_sequence,
            reason: r.reason.clone(),
        };
        let receipt = self.submit(meta, command).await?;
        Ok(Response::new(proto::DiscardResponse {
            sequence: receipt.records.first().map_or(0, |r| r.seq),
            replayed: receipt.replayed,
        }))
    }

    async fn get_pipeline_stats(
        &self,
        request: Request<proto::GetPipelineStatsRequest>,
    ) -> Result<Response<proto::PipelineStats>, Status> {
        let caller = Caller::of(&request)?;
        let stats = self.engine()?.pipeline_stats(&caller.tenant).await.map_err(to_status)?;
        let c = &stats.counters;
        Ok(Response::new(proto::PipelineStats {
            received: c.received,
            processed: c.processed,
            retried: c.retried,
            dead_lettered: c.dead_lettered,
            redriven: c.redriven,
            discarded: c.discarded,
            dead_letter_depth: stats.dead_letter_depth,
            retrying: stats.retrying,
        }))
    }
}

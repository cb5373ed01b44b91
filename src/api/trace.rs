//! One tracing span per command, at debug level: kind, tenant, actor, correlation id,
//! idempotency key, and once decided, the outcome and the sequence numbers it got (or the
//! rejection's reason). With `TALLY_LOG=tally=debug` each span is logged when it closes,
//! in JSON with `--log-format json`.

use crate::domain::{Command, CommandMeta, Rejection};
use crate::engine::{EngineError, Receipt};
use tracing::field::Empty;
use tracing::Span;

/// Submits one command inside its span, records how it ended, and maps a failure to its
/// status: what every service does with a single command.
pub async fn submit(
    engine: &crate::engine::EngineHandle,
    meta: CommandMeta,
    command: Command,
) -> Result<Receipt, tonic::Status> {
    use tracing::Instrument;
    let span = command_span(&meta, &command);
    let result = engine.submit(meta, command).instrument(span.clone()).await;
    match &result {
        Ok(receipt) => record(&span, Ok(receipt)),
        Err(error) => record_error(&span, error),
    }
    result.map_err(super::status::to_status)
}

/// The span of one command, before it is decided.
pub fn command_span(meta: &CommandMeta, command: &Command) -> Span {
    tracing::debug_span!(
        "command",
        kind = command.name(),
        tenant = %meta.tenant,
        actor = %meta.actor,
        correlation_id = %meta.correlation_id,
        idempotency_key = meta.idempotency.as_ref().map(|k| k.key.as_str()).unwrap_or(""),
        outcome = Empty,
        seq = Empty,
        last_seq = Empty,
        reason = Empty,
    )
}

/// Records how a command ended.
pub fn record(span: &Span, result: Result<&Receipt, &Rejection>) {
    if span.is_disabled() {
        return;
    }
    match result {
        Ok(receipt) => {
            let outcome = match (receipt.replayed, receipt.records.is_empty()) {
                (true, _) => "replayed",
                (false, true) => "unchanged",
                (false, false) => "appended",
            };
            span.record("outcome", outcome);
            if let (Some(first), Some(last)) = (receipt.records.first(), receipt.records.last()) {
                span.record("seq", first.seq);
                span.record("last_seq", last.seq);
            }
        }
        Err(rejection) => {
            span.record("outcome", "rejected");
            span.record("reason", rejection.name());
        }
    }
}

/// Records an engine error (busy, unavailable) that kept a command from being decided.
pub fn record_error(span: &Span, error: &EngineError) {
    match error {
        EngineError::Rejected(rejection) => record(span, Err(rejection)),
        other => {
            span.record("outcome", "not_decided");
            span.record("reason", tracing::field::display(other));
        }
    }
}

//! Records as JSON lines, for `tally replay --format jsonl` and replays to file: one object
//! per line, stable field names, jq-friendly.

use super::time::format_rfc3339;
use crate::domain::{Event, Record};
use serde::Serialize;

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    ts_us: u64,
    time: String,
    event_id: String,
    kind: &'static str,
    tenant: &'a str,
    account: &'a str,
    actor: &'a str,
    correlation_id: &'a str,
    causation_id: &'a str,
    idempotency_key: &'a str,
    idempotency_scope: &'a str,
    hash: String,
    data: serde_json::Value,
}

/// One record as one line of JSON (without the newline).
pub fn to_json_line(record: &Record) -> String {
    let e = &record.envelope;
    let data = match &record.event {
        Event::AccountOpened(body) => serde_json::to_value(body),
        Event::PointsAwarded(body) => serde_json::to_value(body),
        Event::HoldReserved(body) => serde_json::to_value(body),
        Event::HoldCommitted(body) => serde_json::to_value(body),
        Event::HoldReleased(body) => serde_json::to_value(body),
        Event::HoldExpired(body) => serde_json::to_value(body),
        Event::TierChanged(body) => serde_json::to_value(body),
        Event::PointsReversed(body) => serde_json::to_value(body),
        Event::ExternalReceived(body) => serde_json::to_value(body),
        Event::ExternalProcessed(body) => serde_json::to_value(body),
        Event::ExternalAttemptFailed(body) => serde_json::to_value(body),
        Event::ExternalDeadLettered(body) => serde_json::to_value(body),
        Event::DeadLetterDiscarded(body) => serde_json::to_value(body),
        Event::RedriveRequested(body) => serde_json::to_value(body),
        Event::LinkCreated(body) => serde_json::to_value(body),
        Event::LinkVerified(body) => serde_json::to_value(body),
        Event::LinkVerifyFailed(body) => serde_json::to_value(body),
        Event::LinkRevoked(body) => serde_json::to_value(body),
        Event::LinkExpired(body) => serde_json::to_value(body),
        Event::CompRefused(body) => serde_json::to_value(body),
        Event::SessionStarted(body) => serde_json::to_value(body),
        Event::SessionRefreshed(body) => serde_json::to_value(body),
        Event::SessionEnded(body) => serde_json::to_value(body),
        Event::ApiKeyCreated(body) => serde_json::to_value(body),
        Event::ApiKeyRevoked(body) => serde_json::to_value(body),
        Event::EndpointRegistered(body) => serde_json::to_value(body),
        Event::EndpointUpdated(body) => serde_json::to_value(body),
        Event::DeliveryDispatched(body) => serde_json::to_value(body),
        Event::DeliveryDelivered(body) => serde_json::to_value(body),
        Event::DeliveryFailed(body) | Event::DeliveryFailedPermanently(body) => serde_json::to_value(body),
        Event::DeliveryAcked(body) => serde_json::to_value(body),
        Event::DeliveryRetried(body) => serde_json::to_value(body),
    }
    .expect("event bodies are plain data");
    let line = Line {
        seq: record.seq,
        ts_us: record.ts_us,
        time: format_rfc3339(record.ts_us),
        event_id: e.event_id.to_string(),
        kind: record.event.kind().name(),
        tenant: &e.tenant,
        account: &e.stream,
        actor: &e.actor,
        correlation_id: &e.correlation_id,
        causation_id: &e.causation_id,
        idempotency_key: &e.idempotency_key,
        idempotency_scope: &e.idempotency_scope,
        hash: hex(&record.hash),
        data,
    };
    serde_json::to_string(&line).expect("plain data serializes")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits (either case), `None` for anything else.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(bytes)
}

//! Records as JSON lines, for `tally replay --format jsonl` and replays to file: one object
//! per line, stable field names, jq-friendly.

use super::time::format_rfc3339;
use crate::domain::event::for_each_payload;
use crate::domain::Record;
use crate::hex::hex;
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
    let data =
        for_each_payload!(&record.event, body => serde_json::to_value(body)).expect("event bodies are plain data");
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

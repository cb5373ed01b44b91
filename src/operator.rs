//! `tally ingest` and `tally dlq`: gRPC clients of a running server, like any partner or
//! operator tool. `ingest` sends a JSON-lines file in batches and can be run again after a
//! failure: events are identified by source and external id, so a second run applies
//! nothing twice.

use crate::api::proto::ingest_client::IngestClient;
use crate::api::proto::{self, ingest_result::Result as IngestResultKind, IngestOutcome};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Code, Request};

/// Events per `IngestBatch` the file loader sends.
pub const INGEST_BATCH_EVENTS: usize = 512;
/// Times a batch is sent again after a transport failure or a full inbox, waiting twice as
/// long each time from 100 ms: about 50 s in all, longer than a restart of the server.
pub const INGEST_BATCH_ATTEMPTS: u32 = 10;

/// The server the tool talks to, and its credential (a bearer token: the tenant and the
/// actor are the token's).
#[derive(Clone, Debug)]
pub struct Target {
    pub url: String,
    pub token: String,
}

impl Target {
    pub async fn connect(&self) -> Result<IngestClient<Channel>, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url.clone())
            .map_err(|e| format!("{}: not a server URL: {e}", self.url))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.url))?;
        Ok(IngestClient::new(channel))
    }

    /// A request carrying the tool's credential.
    pub fn request<T>(&self, message: T) -> Result<Request<T>, String> {
        bearer(message, &self.token)
    }
}

/// A request with `authorization: Bearer <token>`.
pub fn bearer<T>(message: T, token: &str) -> Result<Request<T>, String> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| "the token is not valid request metadata".to_string())?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// One line of an ingest file: an external event with its envelope. Unknown keys are
/// refused like unknown payload fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    source: String,
    external_id: String,
    #[serde(rename = "type")]
    type_name: String,
    payload: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    correlation_id: String,
}

/// What loading a file came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub lines: u64,
    /// By outcome name (processed, retry_scheduled, dead_lettered, parked).
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Lines answered as duplicates of events accepted before.
    pub duplicates: u64,
    /// Refused lines: line number and why.
    pub rejected: Vec<(u64, String)>,
}

impl IngestReport {
    pub fn render(&self) -> String {
        let mut out = format!("{} lines", self.lines);
        for (outcome, count) in &self.outcomes {
            out.push_str(&format!(", {count} {outcome}"));
        }
        out.push_str(&format!(
            ", {} duplicates, {} rejected",
            self.duplicates,
            self.rejected.len()
        ));
        out
    }
}

/// Reads `input` as JSON lines and ingests every event, in batches, in file order.
pub async fn ingest_lines(target: &Target, input: impl BufRead) -> Result<IngestReport, String> {
    let mut client = target.connect().await?;
    let mut report = IngestReport::default();
    let mut batch: Vec<(u64, proto::IngestRequest)> = Vec::new();
    for (index, line) in input.lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.map_err(|e| format!("line {number}: cannot read: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        report.lines += 1;
        // Read strictly first: a key named twice (in the payload too) is refused here, since
        // the payload re-serialized from the line would keep only one of them.
        let parsed = crate::api::external::parse_json(&line)
            .and_then(|value| serde_json::from_value::<Line>(value).map_err(|e| format!("does not fit: {e}")));
        match parsed {
            Ok(event) => batch.push((
                number,
                proto::IngestRequest {
                    source: event.source,
                    external_id: event.external_id,
                    r#type: event.type_name,
                    payload_json: serde_json::Value::Object(event.payload).to_string(),
                    correlation_id: event.correlation_id,
                    payload: None,
                },
            )),
            Err(e) => report
                .rejected
                .push((number, format!("INVALID_ARGUMENT: the line {e}"))),
        }
        if batch.len() == INGEST_BATCH_EVENTS {
            send(target, &mut client, std::mem::take(&mut batch), &mut report).await?;
        }
    }
    if !batch.is_empty() {
        send(target, &mut client, batch, &mut report).await?;
    }
    Ok(report)
}

async fn send(
    target: &Target,
    client: &mut IngestClient<Channel>,
    batch: Vec<(u64, proto::IngestRequest)>,
    report: &mut IngestReport,
) -> Result<(), String> {
    let (numbers, events): (Vec<u64>, Vec<proto::IngestRequest>) = batch.into_iter().unzip();
    let message = proto::IngestBatchRequest { events };
    let mut wait = Duration::from_millis(100);
    let mut attempt = 1;
    let response = loop {
        match client.ingest_batch(target.request(message.clone())?).await {
            Ok(response) => break response.into_inner(),
            Err(status)
                if attempt < INGEST_BATCH_ATTEMPTS
                    && matches!(
                        status.code(),
                        Code::Unavailable | Code::ResourceExhausted | Code::Unknown
                    ) =>
            {
                // Safe to send again: each event is identified by its source and id.
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(status) => return Err(format!("the server refused a batch: {}", status.message())),
        }
    };
    for (number, result) in numbers.into_iter().zip(response.results) {
        match result.result {
            Some(IngestResultKind::Accepted(accepted)) => {
                if accepted.duplicate != proto::Duplicate::None as i32 {
                    report.duplicates += 1;
                }
                let outcome = IngestOutcome::try_from(accepted.outcome).unwrap_or(IngestOutcome::Unspecified);
                *report.outcomes.entry(outcome_name(outcome)).or_default() += 1;
            }
            Some(IngestResultKind::Error(error)) => {
                let field = error
                    .metadata
                    .get("field")
                    .map(|f| format!(" [{f}]"))
                    .unwrap_or_default();
                report.rejected.push((
                    number,
                    format!("{} {}{field}: {}", error.code, error.reason, error.message),
                ));
            }
            None => report.rejected.push((number, "the server sent no result".into())),
        }
    }
    Ok(())
}

pub fn outcome_name(outcome: IngestOutcome) -> &'static str {
    match outcome {
        IngestOutcome::Processed => "processed",
        IngestOutcome::RetryScheduled => "retry_scheduled",
        IngestOutcome::DeadLettered => "dead_lettered",
        IngestOutcome::Parked => "parked",
        IngestOutcome::Unspecified => "unspecified",
    }
}

/// A letter as one line of a table.
pub fn letter_line(letter: &proto::DeadLetter) -> String {
    let state = proto::LetterState::try_from(letter.state)
        .map(|s| s.as_str_name().trim_start_matches("LETTER_STATE_").to_lowercase())
        .unwrap_or_default();
    format!(
        "{:>8}  {:<13} {:<22} {:<16} {:<24} attempts={} pos={} received={}  {}",
        letter.receipt_sequence,
        state,
        letter.r#type,
        letter.member_id,
        format!("{}/{}", letter.source, letter.external_id),
        letter.attempts,
        letter.position,
        crate::query::time::format_rfc3339(letter.received_at_us),
        letter.cause
    )
}

/// A letter in full, one field per line.
pub fn letter_details(letter: &proto::DeadLetter) -> String {
    let time = |us: u64| match us {
        0 => "-".to_string(),
        us => crate::query::time::format_rfc3339(us),
    };
    let state = proto::LetterState::try_from(letter.state)
        .map(|s| s.as_str_name().trim_start_matches("LETTER_STATE_").to_lowercase())
        .unwrap_or_default();
    [
        format!("receipt        {}", letter.receipt_sequence),
        format!("state          {state}"),
        format!("type           {}", letter.r#type),
        format!("member         {}", letter.member_id),
        format!("source         {}", letter.source),
        format!("external id    {}", letter.external_id),
        format!("payload        {}", letter.payload_json),
        format!("position       {}", letter.position),
        format!("parked behind  {}", letter.parked_behind),
        format!("attempts       {}", letter.attempts),
        format!("cause          {}", letter.cause),
        format!("received       {}", time(letter.received_at_us)),
        format!("first failure  {}", time(letter.first_failure_us)),
        format!("last failure   {}", time(letter.last_failure_us)),
        format!("next attempt   {}", time(letter.retry_at_us)),
    ]
    .join("\n")
}

/// A re-drive's result as one line.
pub fn redrive_line(result: &proto::RedriveResult) -> String {
    let outcome = proto::RedriveOutcome::try_from(result.outcome)
        .map(|o| o.as_str_name().trim_start_matches("REDRIVE_OUTCOME_").to_lowercase())
        .unwrap_or_default();
    let replayed = if result.replayed { " (replayed)" } else { "" };
    format!(
        "{:>8}  {outcome:<16} seq={}{replayed}  {}",
        result.receipt_sequence, result.sequence, result.message
    )
}

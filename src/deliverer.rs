//! The delivery worker: a client of the engine, like the sweeper. Each pulse asks the
//! sequencer which deliveries are due, POSTs each event to its endpoint, and records every
//! outcome as a command, so that what was delivered, what failed and when it is tried
//! again is in the log. It keeps nothing of its own but the attempts under way: after a
//! restart the fold of the log says what is still to send.
//!
//! Each request (HTTP/1.1, over TLS for https): `POST` of the event as one JSON object (the line `tally replay` prints)
//! with `Content-Type: application/json`, `Tally-Event-Id`, `Tally-Event-Kind`,
//! `Tally-Delivery-Id` (`<endpoint>:<event sequence>`), `Tally-Attempt`,
//! `Tally-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, t + "." + body)>`, and for
//! exactly-once endpoints `Idempotency-Key` (the delivery id, the same on every attempt).

use crate::domain::delivery::{AttemptResult, DeliveryStatus, EndpointConfig, Semantics};
use crate::domain::{Command, CommandMeta};
use crate::engine::{EngineError, EngineHandle};
use crate::outbound::{post, Outbound};
use crate::secrets::{hmac, KeyRing};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Requests under way at once, across endpoints: enough to keep many slow receivers busy
/// without one process opening thousands of connections.
pub const MAX_IN_FLIGHT: usize = 64;

/// Pulses between two looks for at-most-once attempts whose outcome was never recorded.
const SETTLE_EVERY_PULSES: u64 = 100;

/// The actor of the worker's commands.
pub const DELIVERY_ACTOR: &str = "system:deliveries";

/// One delivery to make.
struct Job {
    endpoint_id: u64,
    event_seq: u64,
    attempt: u32,
    /// Answered on its last attempt but never acknowledged: to be recorded as failed for
    /// good, not sent again.
    ack_expired: bool,
    tenant: String,
    config: EndpointConfig,
    secret_kid: String,
    secret_nonce: String,
}

pub struct Deliverer {
    engine: EngineHandle,
    /// The ring the endpoints' signing secrets derive from.
    keys: KeyRing,
    outbound: Outbound,
    in_flight: Arc<Mutex<HashSet<(u64, u64)>>>,
}

impl Deliverer {
    pub fn new(engine: EngineHandle, keys: KeyRing, outbound: Outbound) -> Self {
        Self {
            engine,
            keys,
            outbound,
            in_flight: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Pulses every `interval` until `stop` is set. At start, at-most-once attempts that a
    /// stop interrupted are recorded as failed for good: they are never made twice.
    pub async fn run(self, interval: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        if let Err(error) = self.settle_interrupted().await {
            tracing::warn!(%error, "cannot settle interrupted deliveries yet");
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pulses: u64 = 0;
        loop {
            pulses += 1;
            // An at-most-once outcome that could not be recorded (a full inbox) leaves its
            // delivery dispatched: settle those now and then, not only at start.
            if pulses.is_multiple_of(SETTLE_EVERY_PULSES) {
                let _ = self.settle_interrupted().await;
            }
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            match self.start_pulse().await {
                Ok(_) => {}
                Err(EngineError::Busy) => {}
                Err(error) => tracing::debug!(%error, "delivery pulse"),
            }
        }
    }

    /// At-most-once attempts recorded as dispatched whose outcome never was (the process
    /// stopped during them): failed for good, never retried.
    pub async fn settle_interrupted(&self) -> Result<usize, EngineError> {
        let interrupted: Vec<(u64, u64, u32, String)> = self
            .engine
            .inspect(|state| {
                // Dispatched deliveries are open: the index, not every delivery kept.
                let deliveries = &state.deliveries;
                deliveries
                    .open
                    .iter()
                    .map(|key| (key, &deliveries.deliveries[key]))
                    .filter(|(_, d)| d.status == DeliveryStatus::Delivering)
                    .map(|(&(e, s), d)| (e, s, d.attempts.last().map_or(1, |a| a.attempt), d.tenant.clone()))
                    .collect()
            })
            .await?;
        let commands: Vec<_> = interrupted
            .into_iter()
            .filter(|(e, s, _, _)| !self.in_flight.lock().expect("in-flight lock").contains(&(*e, *s)))
            .map(|(endpoint_id, event_seq, attempt, tenant)| {
                let result = AttemptResult {
                    status_code: 0,
                    latency_us: 0,
                    error: "outcome unknown: the server stopped during the attempt".into(),
                };
                (
                    meta(&tenant),
                    Command::RecordDelivery {
                        endpoint_id,
                        event_seq,
                        attempt,
                        result,
                    },
                )
            })
            .collect();
        let count = commands.len();
        if count > 0 {
            self.engine.submit_batch(commands).await?;
        }
        Ok(count)
    }

    /// Sends what is due now and records the outcomes; answers how many attempts it made.
    /// Waits for its own attempts, so that a test can pulse and then look.
    pub async fn pulse(&self) -> Result<usize, EngineError> {
        let (made, started) = self.start_pulse().await?;
        for attempt in started {
            if let Err(error) = attempt.await {
                tracing::error!(%error, "a delivery attempt panicked");
            }
        }
        Ok(made)
    }

    /// Starts an attempt at each delivery that is due and not under way, and returns at
    /// once: each attempt records its own outcome when it ends, so a slow receiver holds up
    /// only its own deliveries, not the next pulse. Answers how many requests it started
    /// (ack windows that passed are only recorded) and the tasks.
    pub async fn start_pulse(&self) -> Result<(usize, Vec<tokio::task::JoinHandle<()>>), EngineError> {
        let busy = self.in_flight.lock().expect("in-flight lock").len();
        let room = MAX_IN_FLIGHT.saturating_sub(busy);
        if room == 0 {
            return Ok((0, Vec::new()));
        }
        let due = self.engine.deliveries_due(room + busy).await?;
        let jobs = self.jobs(due).await?;
        let mut started = Vec::new();
        let mut requests = 0;
        for job in jobs {
            let key = (job.endpoint_id, job.event_seq);
            if !self.in_flight.lock().expect("in-flight lock").insert(key) {
                continue;
            }
            if job.config.semantics == Semantics::AtMostOnce && !job.ack_expired {
                match self.dispatch(&job).await {
                    Ok(true) => {}
                    // Not due any more, or the inbox is full: leave it for a later pulse.
                    Ok(false) | Err(_) => {
                        self.in_flight.lock().expect("in-flight lock").remove(&key);
                        continue;
                    }
                }
            }
            requests += usize::from(!job.ack_expired);
            started.push(self.attempt(job));
        }
        Ok((requests, started))
    }

    /// What the state says of each due delivery.
    async fn jobs(&self, due: Vec<(u64, u64)>) -> Result<Vec<Job>, EngineError> {
        self.engine
            .inspect(move |state| {
                due.into_iter()
                    .filter_map(|(endpoint_id, event_seq)| {
                        let endpoint = state.deliveries.endpoints.get(&endpoint_id)?;
                        let delivery = state.deliveries.deliveries.get(&(endpoint_id, event_seq))?;
                        let last = delivery.attempts.last().map_or(0, |a| a.attempt);
                        let exhausted = delivery.status == DeliveryStatus::AwaitingAck
                            && delivery.round_attempts >= endpoint.config.max_attempts;
                        Some(Job {
                            endpoint_id,
                            event_seq,
                            // The last attempt's ack window passed: reported, not repeated.
                            attempt: if exhausted { last } else { last + 1 },
                            ack_expired: exhausted,
                            tenant: endpoint.tenant.clone(),
                            config: endpoint.config.clone(),
                            secret_kid: endpoint.secret_kid.clone(),
                            secret_nonce: endpoint.secret_nonce.clone(),
                        })
                    })
                    .collect()
            })
            .await
    }

    /// Records an at-most-once attempt before it is made; `false` if it may not be made.
    async fn dispatch(&self, job: &Job) -> Result<bool, EngineError> {
        let command = Command::DispatchDelivery {
            endpoint_id: job.endpoint_id,
            event_seq: job.event_seq,
            attempt: job.attempt,
        };
        match self.engine.submit(meta(&job.tenant), command).await {
            Ok(_) => Ok(true),
            Err(EngineError::Rejected(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Makes one attempt on a task of its own and records its outcome; an attempt whose
    /// last ack window passed is only recorded.
    fn attempt(&self, job: Job) -> tokio::task::JoinHandle<()> {
        let engine = self.engine.clone();
        let secret = self.keys.endpoint_secret(&job.secret_kid, &job.secret_nonce);
        let outbound = self.outbound.clone();
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            let result = match (job.ack_expired, secret) {
                (true, _) => AttemptResult {
                    status_code: 0,
                    latency_us: 0,
                    error: "not acknowledged".into(),
                },
                (false, None) => AttemptResult {
                    status_code: 0,
                    latency_us: 0,
                    error: format!(
                        "the server no longer holds key {:?}, which the endpoint's secret comes from",
                        job.secret_kid
                    ),
                },
                (false, Some(secret)) => send(&engine, &job, &secret, &outbound).await,
            };
            record(&engine, &job, result).await;
            in_flight
                .lock()
                .expect("in-flight lock")
                .remove(&(job.endpoint_id, job.event_seq));
        })
    }
}

/// Times a worker's report is offered again to a full inbox, 50 ms apart, before it is
/// given up (the delivery is then attempted again, or settled if it was at most once).
const RECORD_ATTEMPTS: u32 = 20;

/// Records an attempt's outcome, waiting out a full inbox for a while.
async fn record(engine: &EngineHandle, job: &Job, result: AttemptResult) {
    let command = Command::RecordDelivery {
        endpoint_id: job.endpoint_id,
        event_seq: job.event_seq,
        attempt: job.attempt,
        result: AttemptResult {
            error: printable(&result.error),
            ..result
        },
    };
    for _ in 0..RECORD_ATTEMPTS {
        match engine.submit(meta(&job.tenant), command.clone()).await {
            Err(EngineError::Busy) => tokio::time::sleep(Duration::from_millis(50)).await,
            // Acked meanwhile, or the endpoint deleted: nothing to record.
            Err(EngineError::Rejected(rejection)) => {
                tracing::debug!(%rejection, "a delivery's outcome was not recorded");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "a delivery's outcome was not recorded");
                return;
            }
            Ok(_) => return,
        }
    }
}

/// An error text the ledger takes: no control characters, at most its reason length (a TLS
/// error can list a hundred certificate names).
pub fn printable(error: &str) -> String {
    let clean: String = error.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if clean.len() <= crate::domain::limits::REASON_MAX_CHARS {
        return clean;
    }
    let mut end = crate::domain::limits::REASON_MAX_CHARS - 3;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &clean[..end])
}

fn meta(tenant: &str) -> CommandMeta {
    CommandMeta {
        tenant: tenant.to_string(),
        actor: DELIVERY_ACTOR.into(),
        ..CommandMeta::default()
    }
}

/// One POST of the event, timed; never an error, always an outcome to record.
async fn send(engine: &EngineHandle, job: &Job, secret: &str, outbound: &Outbound) -> AttemptResult {
    let failed = |error: String, latency_us: u64| AttemptResult {
        status_code: 0,
        latency_us,
        error,
    };
    // One point read, checked against the chain (not a read-ahead of the frame around it).
    let record = match crate::log::read_one(engine.reader(), job.event_seq) {
        Ok(Some(record)) => record,
        Err(error) => return failed(format!("cannot read event {}: {error}", job.event_seq), 0),
        Ok(None) => return failed(format!("event {} is not in the log", job.event_seq), 0),
    };
    let body = crate::query::json::to_json_line(&record);
    let timestamp = (engine.now_us() / 1_000_000).to_string();
    let signature = crate::hex::hex(&hmac(secret.as_bytes(), format!("{timestamp}.{body}").as_bytes()));
    let delivery_id = format!("{}:{}", job.endpoint_id, job.event_seq);
    let mut headers = vec![
        ("content-type", "application/json".to_string()),
        ("tally-event-id", record.envelope.event_id.to_string()),
        ("tally-event-kind", record.event.kind().name().to_string()),
        ("tally-delivery-id", delivery_id.clone()),
        ("tally-attempt", job.attempt.to_string()),
        ("tally-signature", format!("t={timestamp},v1={signature}")),
    ];
    if job.config.semantics == Semantics::ExactlyOnce {
        headers.push(("idempotency-key", delivery_id));
    }
    let started = Instant::now();
    let timeout = Duration::from_millis(job.config.request_timeout_ms.into());
    let outcome = tokio::time::timeout(timeout, post(&job.config.url, headers, body, outbound)).await;
    let latency_us = started.elapsed().as_micros() as u64;
    match outcome {
        Err(_) => failed(
            format!("no answer within {} ms", job.config.request_timeout_ms),
            latency_us,
        ),
        Ok(Err(error)) => failed(error, latency_us),
        Ok(Ok(status)) => AttemptResult {
            status_code: status,
            latency_us,
            error: if (200..300).contains(&status) {
                String::new()
            } else {
                format!("answered HTTP {status}")
            },
        },
    }
}

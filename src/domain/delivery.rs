//! Deliveries: telling other systems what happened, and knowing they got it.
//!
//! An endpoint (a URL of a tenant, with its filter, semantics, retry policy and ack mode)
//! is registered by an event; from then on every deliverable record of its tenant that
//! its filter matches is a delivery, folded from the log like everything else — the log is
//! each endpoint's durable cursor, so a restart resumes exactly where the fold says,
//! skipping nothing. The delivery worker (a client, like the sweeper) sends what is due and
//! records each outcome as a command: delivered (with status and latency), failed with
//! the time of the next attempt, failed for good after the last one; receivers that must
//! confirm call `Ack`, which is an event too, and operators retry by hand. So the history
//! of every delivery is in the log, auditable and rebuildable.

use super::decide::{jittered_backoff_us, validate_text, Ctx, Decision, Emitted};
use super::event::{
    DeliveryAcked, DeliveryDelivered, DeliveryDispatched, DeliveryFailed, DeliveryRetried, EndpointRegistered,
    EndpointUpdated, Event, EventKind, Record,
};
use super::limits::*;
use super::rejection::Rejection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// How often a receiver may get one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Semantics {
    /// One attempt, recorded before it is made; never retried, even after a crash.
    AtMostOnce,
    /// Retried until delivered (acknowledged, in explicit-ack mode) or failed for good.
    AtLeastOnce,
    /// At least once, with a stable idempotency key the receiver deduplicates on, and an
    /// explicit ack: effectively once if the receiver keeps its promise.
    ExactlyOnce,
}

impl Semantics {
    pub fn name(self) -> &'static str {
        match self {
            Semantics::AtMostOnce => "at_most_once",
            Semantics::AtLeastOnce => "at_least_once",
            Semantics::ExactlyOnce => "exactly_once",
        }
    }
}

/// What counts as delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckMode {
    /// Any 2xx answer.
    Status2xx,
    /// A 2xx answer, then the receiver's `Ack` within the ack timeout; without it the event
    /// is delivered again.
    Explicit,
}

/// An endpoint's settings, replaced whole by an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConfig {
    pub url: String,
    /// Event kind names; empty: every deliverable kind.
    pub kinds: Vec<String>,
    pub semantics: Semantics,
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub ack_mode: AckMode,
    pub ack_timeout_seconds: u32,
    /// Per account, a delivery waits until the ones before it are finished.
    pub ordered: bool,
    pub request_timeout_ms: u32,
}

/// Whether an endpoint is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointStatus {
    Active,
    /// Deliveries accumulate, nothing is sent.
    Paused,
    /// No new deliveries; open ones are dropped.
    Deleted,
}

impl EndpointStatus {
    pub fn name(self) -> &'static str {
        match self {
            EndpointStatus::Active => "active",
            EndpointStatus::Paused => "paused",
            EndpointStatus::Deleted => "deleted",
        }
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryStatus {
    /// Not attempted yet (or retried by hand).
    Pending,
    /// At-most-once: the one attempt is under way (recorded before it was made).
    Delivering,
    /// An attempt failed; the next one is due at `next_at_us`.
    Failed,
    /// Answered 2xx, waiting for the receiver's ack until `next_at_us`.
    AwaitingAck,
    Delivered,
    Acked,
    FailedPermanent,
}

impl DeliveryStatus {
    pub fn name(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivering => "delivering",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::AwaitingAck => "awaiting_ack",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Acked => "acked",
            DeliveryStatus::FailedPermanent => "failed_permanent",
        }
    }

    /// Delivered or acknowledged: nothing more will happen to it.
    pub fn done(self) -> bool {
        matches!(self, DeliveryStatus::Delivered | DeliveryStatus::Acked)
    }
}

/// One attempt, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub at_us: u64,
    /// 0: no HTTP answer (connection refused, timeout).
    pub status_code: u16,
    pub latency_us: u64,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub tenant: String,
    pub account: String,
    pub event_kind: u16,
    pub event_ts_us: u64,
    pub status: DeliveryStatus,
    /// Attempts in the current round (a retry by hand starts a new round).
    pub round_attempts: u32,
    /// When it is due next (pending, failed, awaiting an ack).
    pub next_at_us: u64,
    /// When it became delivered, acknowledged or failed for good.
    pub finished_at_us: u64,
    pub attempts: Vec<Attempt>,
}

/// Counters of an endpoint, folded from its deliveries' events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStats {
    pub delivered: u64,
    pub acked: u64,
    pub failed_attempts: u64,
    pub failed_permanent: u64,
    pub retried_by_hand: u64,
    /// Latencies of the latest successful attempts, µs, at most
    /// `DELIVERY_LATENCY_SAMPLES`.
    pub latencies_us: VecDeque<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub tenant: String,
    pub config: EndpointConfig,
    pub status: EndpointStatus,
    /// The server key and nonce the signing secret is derived from; never the secret.
    pub secret_kid: String,
    pub secret_nonce: String,
    pub registered_at_us: u64,
    pub stats: EndpointStats,
}

/// Endpoints and their deliveries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Endpoint id (the sequence number of its registration) → endpoint.
    pub endpoints: BTreeMap<u64, Endpoint>,
    /// Tenant → its endpoints that take new deliveries.
    pub by_tenant: HashMap<String, Vec<u64>>,
    /// `(endpoint, event sequence number)` → delivery. Delivered and acknowledged ones are
    /// kept, the latest `DELIVERIES_KEPT_PER_ENDPOINT` of each endpoint; the log has all.
    pub deliveries: BTreeMap<(u64, u64), Delivery>,
    /// Per endpoint, its finished deliveries oldest first, to forget the oldest.
    pub finished: super::state::FastMap<u64, VecDeque<u64>>,
    /// The deliveries that may still be sent (pending, failing, awaiting an ack, under
    /// way), so that looking for due ones never walks the finished ones.
    pub open: std::collections::BTreeSet<(u64, u64)>,
}

/// Kinds that can be delivered: the ledger's and the pipeline's business events. Sessions,
/// keys and the deliveries' own events never are (no secrets out, no loops).
pub fn deliverable(kind: EventKind) -> bool {
    use super::event::KindFamily;
    match kind.family() {
        KindFamily::Ledger | KindFamily::Pipeline | KindFamily::Link | KindFamily::Refusal => true,
        KindFamily::Credential | KindFamily::Delivery => false,
    }
}

impl DeliveryState {
    /// Folds one record: its own events, and a new delivery for each endpoint it is for.
    pub fn apply(&mut self, record: &Record) {
        let key = |endpoint_id: u64, event_seq: u64| (endpoint_id, event_seq);
        match &record.event {
            Event::EndpointRegistered(r) => {
                let endpoint = Endpoint {
                    tenant: record.envelope.tenant.clone(),
                    config: r.config.clone(),
                    status: EndpointStatus::Active,
                    secret_kid: r.secret_kid.clone(),
                    secret_nonce: r.secret_nonce.clone(),
                    registered_at_us: record.ts_us,
                    stats: EndpointStats::default(),
                };
                assert_eq!(
                    r.endpoint_id, record.seq,
                    "an endpoint's id is its registration's sequence"
                );
                self.by_tenant
                    .entry(endpoint.tenant.clone())
                    .or_default()
                    .push(r.endpoint_id);
                self.endpoints.insert(r.endpoint_id, endpoint);
            }
            Event::EndpointUpdated(u) => {
                let endpoint = self
                    .endpoints
                    .get_mut(&u.endpoint_id)
                    .expect("an update names a known endpoint");
                endpoint.config = u.config.clone();
                endpoint.status = u.status;
                if u.status == EndpointStatus::Deleted {
                    if let Some(ids) = self.by_tenant.get_mut(&endpoint.tenant) {
                        ids.retain(|id| *id != u.endpoint_id);
                    }
                    let open: Vec<_> = self
                        .deliveries
                        .range(key(u.endpoint_id, 0)..=key(u.endpoint_id, u64::MAX))
                        .map(|(k, _)| *k)
                        .collect();
                    for k in open {
                        self.deliveries.remove(&k);
                        self.open.remove(&k);
                    }
                    self.finished.remove(&u.endpoint_id);
                }
            }
            Event::DeliveryDispatched(d) => {
                let delivery = self.delivery(d.endpoint_id, d.event_seq, record);
                delivery.status = DeliveryStatus::Delivering;
                delivery.round_attempts += 1;
                delivery.attempts.push(Attempt {
                    attempt: d.attempt,
                    at_us: record.ts_us,
                    status_code: 0,
                    latency_us: 0,
                    error: "dispatched".into(),
                });
            }
            Event::DeliveryDelivered(d) => {
                let at_most_once = {
                    let delivery = self.delivery(d.endpoint_id, d.event_seq, record);
                    let dispatched = delivery.status == DeliveryStatus::Delivering;
                    record_attempt(
                        delivery,
                        d.attempt,
                        record.ts_us,
                        d.status_code,
                        d.latency_us,
                        "",
                        dispatched,
                    );
                    if d.awaiting_ack {
                        delivery.status = DeliveryStatus::AwaitingAck;
                        delivery.next_at_us = d.ack_due_at_us;
                    } else {
                        delivery.status = DeliveryStatus::Delivered;
                        delivery.finished_at_us = record.ts_us;
                    }
                    !d.awaiting_ack
                };
                let stats = &mut self.endpoints.get_mut(&d.endpoint_id).expect("known endpoint").stats;
                stats.delivered += 1;
                stats.latencies_us.push_back(d.latency_us);
                if stats.latencies_us.len() > DELIVERY_LATENCY_SAMPLES {
                    stats.latencies_us.pop_front();
                }
                if at_most_once {
                    self.finish(d.endpoint_id, d.event_seq);
                }
            }
            Event::DeliveryFailed(f) | Event::DeliveryFailedPermanently(f) => {
                let permanent = matches!(record.event, Event::DeliveryFailedPermanently(_));
                let delivery = self.delivery(f.endpoint_id, f.event_seq, record);
                // The last attempt was answered but never acknowledged: no new attempt.
                let ack_expired = delivery.status == DeliveryStatus::AwaitingAck
                    && delivery.attempts.last().map(|a| a.attempt) == Some(f.attempt);
                let dispatched = delivery.status == DeliveryStatus::Delivering;
                if !ack_expired {
                    record_attempt(
                        delivery,
                        f.attempt,
                        record.ts_us,
                        f.status_code,
                        f.latency_us,
                        &f.error,
                        dispatched,
                    );
                }
                if permanent {
                    delivery.status = DeliveryStatus::FailedPermanent;
                    delivery.finished_at_us = record.ts_us;
                    self.open.remove(&(f.endpoint_id, f.event_seq));
                } else {
                    delivery.status = DeliveryStatus::Failed;
                    delivery.next_at_us = f.retry_at_us;
                }
                let stats = &mut self.endpoints.get_mut(&f.endpoint_id).expect("known endpoint").stats;
                stats.failed_attempts += u64::from(!ack_expired);
                stats.failed_permanent += u64::from(permanent);
            }
            Event::DeliveryAcked(a) => {
                let delivery = self.delivery(a.endpoint_id, a.event_seq, record);
                delivery.status = DeliveryStatus::Acked;
                delivery.finished_at_us = record.ts_us;
                self.endpoints
                    .get_mut(&a.endpoint_id)
                    .expect("known endpoint")
                    .stats
                    .acked += 1;
                self.finish(a.endpoint_id, a.event_seq);
            }
            Event::DeliveryRetried(r) => {
                let delivery = self.delivery(r.endpoint_id, r.event_seq, record);
                delivery.status = DeliveryStatus::Pending;
                delivery.round_attempts = 0;
                delivery.next_at_us = record.ts_us;
                delivery.finished_at_us = 0;
                self.open.insert((r.endpoint_id, r.event_seq));
                self.endpoints
                    .get_mut(&r.endpoint_id)
                    .expect("known endpoint")
                    .stats
                    .retried_by_hand += 1;
            }
            _ => {}
        }
        if deliverable(record.event.kind()) {
            self.fan_out(record);
        }
    }

    /// A new pending delivery for every endpoint of the record's tenant that wants it.
    fn fan_out(&mut self, record: &Record) {
        // Most programs have no endpoint: no lookup on the hot path then.
        if self.by_tenant.is_empty() {
            return;
        }
        let Some(ids) = self.by_tenant.get(&record.envelope.tenant) else {
            return;
        };
        let name = record.event.kind().name();
        for id in ids {
            let endpoint = &self.endpoints[id];
            if !endpoint.config.kinds.is_empty() && !endpoint.config.kinds.iter().any(|k| k == name) {
                continue;
            }
            self.open.insert((*id, record.seq));
            self.deliveries.insert(
                (*id, record.seq),
                Delivery {
                    tenant: record.envelope.tenant.clone(),
                    account: record.envelope.stream.clone(),
                    event_kind: record.event.kind().code(),
                    event_ts_us: record.ts_us,
                    status: DeliveryStatus::Pending,
                    round_attempts: 0,
                    next_at_us: record.ts_us,
                    finished_at_us: 0,
                    attempts: Vec::new(),
                },
            );
        }
    }

    fn delivery(&mut self, endpoint_id: u64, event_seq: u64, record: &Record) -> &mut Delivery {
        self.deliveries
            .get_mut(&(endpoint_id, event_seq))
            .unwrap_or_else(|| panic!("seq {}: event for an unknown delivery", record.seq))
    }

    /// A delivery is done: kept among the endpoint's latest, the oldest forgotten.
    fn finish(&mut self, endpoint_id: u64, event_seq: u64) {
        self.open.remove(&(endpoint_id, event_seq));
        let finished = self.finished.entry(endpoint_id).or_default();
        finished.push_back(event_seq);
        if finished.len() > DELIVERIES_KEPT_PER_ENDPOINT {
            let oldest = finished.pop_front().expect("not empty");
            self.deliveries.remove(&(endpoint_id, oldest));
        }
    }

    /// The deliveries due at `now_us` of endpoints that send, oldest event first and at
    /// most `limit / 4` (at least 1) of each endpoint, so that one endpoint's backlog does
    /// not crowd out the others; for an ordered endpoint only the first unfinished delivery
    /// of each account.
    pub fn due(&self, now_us: u64, limit: usize) -> Vec<(u64, u64)> {
        let per_endpoint = (limit / 4).max(1);
        let mut due = Vec::new();
        let mut blocked: std::collections::HashSet<(u64, &str)> = std::collections::HashSet::new();
        let mut taken: HashMap<u64, usize> = HashMap::new();
        for &(endpoint_id, event_seq) in &self.open {
            if due.len() >= limit {
                break;
            }
            if taken.get(&endpoint_id).is_some_and(|n| *n >= per_endpoint) {
                continue;
            }
            let d = &self.deliveries[&(endpoint_id, event_seq)];
            let endpoint = &self.endpoints[&endpoint_id];
            if endpoint.status != EndpointStatus::Active {
                continue;
            }
            let open = matches!(
                d.status,
                DeliveryStatus::Pending
                    | DeliveryStatus::Failed
                    | DeliveryStatus::AwaitingAck
                    | DeliveryStatus::Delivering
            );
            if !open {
                continue;
            }
            if endpoint.config.ordered && !blocked.insert((endpoint_id, d.account.as_str())) {
                continue;
            }
            if d.status != DeliveryStatus::Delivering && d.next_at_us <= now_us {
                due.push((endpoint_id, event_seq));
                *taken.entry(endpoint_id).or_default() += 1;
            }
        }
        due
    }
}

fn record_attempt(
    delivery: &mut Delivery,
    attempt: u32,
    at_us: u64,
    status_code: u16,
    latency_us: u64,
    error: &str,
    dispatched: bool,
) {
    let entry = Attempt {
        attempt,
        at_us,
        status_code,
        latency_us,
        error: error.to_string(),
    };
    // An at-most-once attempt was counted when it was dispatched: its outcome completes it.
    match delivery.attempts.last_mut() {
        Some(last) if dispatched && last.attempt == attempt => *last = entry,
        _ => {
            delivery.round_attempts += 1;
            delivery.attempts.push(entry);
        }
    }
    if delivery.attempts.len() > DELIVERY_ATTEMPTS_KEPT {
        delivery.attempts.remove(0);
    }
}

/// Checks an endpoint's settings (the URL's form; whether its host may be reached is the
/// API's policy).
pub fn validate_config(config: &EndpointConfig) -> Result<(), Rejection> {
    validate_text("url", &config.url, MAX_URL_BYTES)?;
    let rest = config
        .url
        .strip_prefix("http://")
        .or_else(|| config.url.strip_prefix("https://"))
        .ok_or_else(|| Rejection::invalid("url", "must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || host.chars().any(char::is_whitespace) {
        return Err(Rejection::invalid("url", "must name a host (and no user info)"));
    }
    for kind in &config.kinds {
        let known = EventKind::from_name(kind)
            .ok_or_else(|| Rejection::invalid("event_kinds", format!("unknown kind {}", super::quote(kind))))?;
        if !deliverable(known) {
            return Err(Rejection::invalid("event_kinds", format!("{kind} is not delivered")));
        }
    }
    super::award::in_range(
        "max_attempts",
        config.max_attempts.into(),
        1,
        DELIVERY_MAX_ATTEMPTS_MAX.into(),
    )?;
    super::award::in_range(
        "backoff_initial_ms",
        config.backoff_initial_ms,
        1,
        DELIVERY_BACKOFF_MAX_MS_MAX,
    )?;
    super::award::in_range(
        "backoff_max_ms",
        config.backoff_max_ms,
        config.backoff_initial_ms,
        DELIVERY_BACKOFF_MAX_MS_MAX,
    )?;
    super::award::in_range(
        "ack_timeout_seconds",
        config.ack_timeout_seconds.into(),
        1,
        DELIVERY_ACK_TIMEOUT_MAX_SECONDS.into(),
    )?;
    super::award::in_range(
        "request_timeout_ms",
        config.request_timeout_ms.into(),
        1,
        DELIVERY_REQUEST_TIMEOUT_MAX_MS.into(),
    )?;
    if config.semantics == Semantics::ExactlyOnce && config.ack_mode != AckMode::Explicit {
        return Err(Rejection::invalid("ack_mode", "exactly-once needs explicit acks"));
    }
    if config.semantics == Semantics::AtMostOnce && config.ack_mode == AckMode::Explicit {
        return Err(Rejection::invalid(
            "ack_mode",
            "at-most-once cannot redeliver, so it cannot wait for acks",
        ));
    }
    Ok(())
}

fn emit(ctx: &Ctx<'_>, stream: &str, event: Event) -> Emitted {
    Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: stream.to_string(),
        event,
    }
}

/// The endpoint, in the caller's tenant and not deleted.
fn endpoint<'a>(ctx: &'a Ctx<'_>, endpoint_id: u64) -> Result<&'a Endpoint, Rejection> {
    ctx.state
        .deliveries
        .endpoints
        .get(&endpoint_id)
        .filter(|e| e.tenant == ctx.meta.tenant && e.status != EndpointStatus::Deleted)
        .ok_or(Rejection::EndpointNotFound { endpoint_id })
}

fn delivery<'a>(ctx: &'a Ctx<'_>, endpoint_id: u64, event_seq: u64) -> Result<&'a Delivery, Rejection> {
    endpoint(ctx, endpoint_id)?;
    ctx.state
        .deliveries
        .deliveries
        .get(&(endpoint_id, event_seq))
        .ok_or(Rejection::DeliveryNotFound { endpoint_id, event_seq })
}

pub(super) fn register(
    ctx: &Ctx<'_>,
    config: &EndpointConfig,
    secret_kid: &str,
    secret_nonce: &str,
) -> Result<Decision, Rejection> {
    validate_config(config)?;
    let endpoints = ctx.state.deliveries.by_tenant.get(&ctx.meta.tenant).map_or(0, Vec::len);
    if endpoints >= MAX_ENDPOINTS_PER_TENANT {
        return Err(Rejection::invalid(
            "settings",
            format!("a program has at most {MAX_ENDPOINTS_PER_TENANT} endpoints; delete one first"),
        ));
    }
    let endpoint_id = ctx.state.head_seq + 1;
    Ok(Decision::Append(vec![emit(
        ctx,
        "",
        Event::EndpointRegistered(EndpointRegistered {
            endpoint_id,
            config: config.clone(),
            secret_kid: secret_kid.to_string(),
            secret_nonce: secret_nonce.to_string(),
        }),
    )]))
}

/// A new configuration or status; the same again changes nothing.
pub(super) fn update(
    ctx: &Ctx<'_>,
    endpoint_id: u64,
    config: Option<&EndpointConfig>,
    status: Option<EndpointStatus>,
) -> Result<Decision, Rejection> {
    let current = endpoint(ctx, endpoint_id)?;
    let config = config.unwrap_or(&current.config);
    let status = status.unwrap_or(current.status);
    validate_config(config)?;
    if *config == current.config && status == current.status {
        return Ok(Decision::Nothing);
    }
    Ok(Decision::Append(vec![emit(
        ctx,
        "",
        Event::EndpointUpdated(EndpointUpdated {
            endpoint_id,
            config: config.clone(),
            status,
        }),
    )]))
}

/// What the worker saw of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// 0: no HTTP answer.
    pub status_code: u16,
    pub latency_us: u64,
    /// Empty on a 2xx answer.
    pub error: String,
}

/// At-most-once: the one attempt is recorded before it is made, so that a crash during it
/// can never lead to a second.
pub(super) fn dispatch(ctx: &Ctx<'_>, endpoint_id: u64, event_seq: u64, attempt: u32) -> Result<Decision, Rejection> {
    let d = delivery(ctx, endpoint_id, event_seq)?;
    check_attempt(d, endpoint_id, event_seq, attempt)?;
    Ok(Decision::Append(vec![emit(
        ctx,
        &d.account,
        Event::DeliveryDispatched(DeliveryDispatched {
            endpoint_id,
            event_seq,
            attempt,
        }),
    )]))
}

/// The attempt is the one the delivery is waiting for: a stale or duplicate report of an
/// attempt (two workers, a retry of the report) is refused, not counted twice.
fn check_attempt(d: &Delivery, endpoint_id: u64, event_seq: u64, attempt: u32) -> Result<(), Rejection> {
    let expected = d.attempts.last().map_or(1, |a| a.attempt + 1);
    let waiting = matches!(
        d.status,
        DeliveryStatus::Pending | DeliveryStatus::Failed | DeliveryStatus::AwaitingAck
    );
    if !waiting || attempt != expected {
        return Err(Rejection::DeliveryNotDue {
            endpoint_id,
            event_seq,
            status: d.status.name(),
        });
    }
    Ok(())
}

/// Records an attempt's outcome and decides what follows: delivered (or awaiting the ack),
/// another attempt after a backoff, or failed for good after the last one.
pub(super) fn record(
    ctx: &Ctx<'_>,
    endpoint_id: u64,
    event_seq: u64,
    attempt: u32,
    result: &AttemptResult,
) -> Result<Decision, Rejection> {
    validate_text("error", &result.error, REASON_MAX_CHARS)?;
    let endpoint = endpoint(ctx, endpoint_id)?;
    let d = delivery(ctx, endpoint_id, event_seq)?;
    let config = &endpoint.config;
    let last_attempt = d.attempts.last().map(|a| a.attempt);
    if d.status == DeliveryStatus::AwaitingAck && last_attempt == Some(attempt) {
        // The ack window of the last attempt passed: failed for good, no new attempt.
        if ctx.now_us < d.next_at_us || d.round_attempts < config.max_attempts {
            return Err(Rejection::DeliveryNotDue {
                endpoint_id,
                event_seq,
                status: d.status.name(),
            });
        }
        let failed = DeliveryFailed {
            endpoint_id,
            event_seq,
            attempt,
            status_code: 0,
            latency_us: 0,
            error: format!(
                "not acknowledged within {} s of the last attempt",
                config.ack_timeout_seconds
            ),
            retry_at_us: 0,
        };
        return Ok(Decision::Append(vec![emit(
            ctx,
            &d.account,
            Event::DeliveryFailedPermanently(failed),
        )]));
    }
    if d.status == DeliveryStatus::Delivering {
        // The outcome of an at-most-once attempt: it was counted when dispatched.
        let dispatched = d.attempts.last().map(|a| a.attempt);
        if dispatched != Some(attempt) {
            return Err(Rejection::DeliveryNotDue {
                endpoint_id,
                event_seq,
                status: d.status.name(),
            });
        }
    } else {
        check_attempt(d, endpoint_id, event_seq, attempt)?;
    }
    let round = if d.status == DeliveryStatus::Delivering {
        d.round_attempts
    } else {
        d.round_attempts + 1
    };
    let success = (200..300).contains(&result.status_code);
    let event = if success {
        let awaiting_ack = config.ack_mode == AckMode::Explicit;
        Event::DeliveryDelivered(DeliveryDelivered {
            endpoint_id,
            event_seq,
            attempt,
            status_code: result.status_code,
            latency_us: result.latency_us,
            awaiting_ack,
            ack_due_at_us: if awaiting_ack {
                ctx.now_us + u64::from(config.ack_timeout_seconds) * 1_000_000
            } else {
                0
            },
        })
    } else {
        let last = config.semantics == Semantics::AtMostOnce || round >= config.max_attempts;
        let failed = DeliveryFailed {
            endpoint_id,
            event_seq,
            attempt,
            status_code: result.status_code,
            latency_us: result.latency_us,
            error: result.error.clone(),
            retry_at_us: if last {
                0
            } else {
                let subject = [endpoint_id.to_le_bytes(), event_seq.to_le_bytes()].concat();
                ctx.now_us
                    + jittered_backoff_us(
                        config.backoff_initial_ms,
                        config.backoff_max_ms,
                        round,
                        b"delivery-jitter",
                        &subject,
                    )
            },
        };
        if last {
            Event::DeliveryFailedPermanently(failed)
        } else {
            Event::DeliveryFailed(failed)
        }
    };
    Ok(Decision::Append(vec![emit(ctx, &d.account, event)]))
}

/// The receiver confirms a delivery. A second ack changes nothing; an ack may arrive before
/// the worker recorded the 2xx answer (the receiver acked while answering).
pub(super) fn ack(ctx: &Ctx<'_>, endpoint_id: u64, event_seq: u64, receipt: &str) -> Result<Decision, Rejection> {
    validate_text("receipt", receipt, REASON_MAX_CHARS)?;
    if endpoint(ctx, endpoint_id)?.config.ack_mode != AckMode::Explicit {
        return Err(Rejection::invalid(
            "delivery_id",
            "its endpoint does not take acks (a 2xx answer delivers)",
        ));
    }
    let d = delivery(ctx, endpoint_id, event_seq)?;
    match d.status {
        DeliveryStatus::Acked => Ok(Decision::Nothing),
        DeliveryStatus::Delivered | DeliveryStatus::FailedPermanent => Err(Rejection::DeliveryNotDue {
            endpoint_id,
            event_seq,
            status: d.status.name(),
        }),
        _ => Ok(Decision::Append(vec![emit(
            ctx,
            &d.account,
            Event::DeliveryAcked(DeliveryAcked {
                endpoint_id,
                event_seq,
                receipt: receipt.to_string(),
            }),
        )])),
    }
}

/// Retries deliveries by hand: one named, or every permanently failed one of an endpoint
/// whose event is in `[from_us, to_us]`, at most `DELIVERY_REDRIVE_MAX` at once.
pub(super) fn retry(ctx: &Ctx<'_>, selection: &RetrySelection, reason: &str) -> Result<Decision, Rejection> {
    validate_text("reason", reason, REASON_MAX_CHARS)?;
    let events: Vec<Emitted> = match selection {
        RetrySelection::One { endpoint_id, event_seq } => {
            let d = delivery(ctx, *endpoint_id, *event_seq)?;
            // Already waiting for its next attempt (a retried retry): nothing to do.
            if d.status == DeliveryStatus::Pending {
                return Ok(Decision::Nothing);
            }
            if !matches!(d.status, DeliveryStatus::FailedPermanent | DeliveryStatus::Failed) {
                return Err(Rejection::DeliveryNotDue {
                    endpoint_id: *endpoint_id,
                    event_seq: *event_seq,
                    status: d.status.name(),
                });
            }
            vec![retried(ctx, *endpoint_id, *event_seq, &d.account, reason)]
        }
        RetrySelection::FailedBetween {
            endpoint_id,
            from_us,
            to_us,
        } => {
            endpoint(ctx, *endpoint_id)?;
            ctx.state
                .deliveries
                .deliveries
                .range((*endpoint_id, 0)..=(*endpoint_id, u64::MAX))
                .filter(|(_, d)| d.status == DeliveryStatus::FailedPermanent)
                .filter(|(_, d)| d.event_ts_us >= *from_us && (*to_us == 0 || d.event_ts_us <= *to_us))
                .take(DELIVERY_REDRIVE_MAX)
                .map(|(&(e, s), d)| retried(ctx, e, s, &d.account, reason))
                .collect()
        }
    };
    if events.is_empty() {
        return Ok(Decision::Nothing);
    }
    Ok(Decision::Append(events))
}

fn retried(ctx: &Ctx<'_>, endpoint_id: u64, event_seq: u64, account: &str, reason: &str) -> Emitted {
    emit(
        ctx,
        account,
        Event::DeliveryRetried(DeliveryRetried {
            endpoint_id,
            event_seq,
            reason: reason.to_string(),
        }),
    )
}

/// Which deliveries a retry by hand is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetrySelection {
    One {
        endpoint_id: u64,
        event_seq: u64,
    },
    /// `to_us` 0: no end.
    FailedBetween {
        endpoint_id: u64,
        from_us: u64,
        to_us: u64,
    },
}

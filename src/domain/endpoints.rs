//! The deliveries' persisted types and their fold: endpoints (their settings, status and
//! counters), each delivery's status and attempts, and `DeliveryState`, folded from the
//! log's delivery events, with the reads the worker and the API make of it. The rules that
//! decide delivery commands are in `delivery.rs`; events and commands carry these types,
//! so they sit below both.

use super::event::{EndpointConfig, EndpointStatus, Event, EventKind, Record};
use super::limits::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

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

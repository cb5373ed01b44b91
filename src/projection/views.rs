//! Views of the log's records that queries answer with: an account's balances, a hold, a
//! history entry. They are built from records as they are read, never stored.

use crate::domain::{Effect, Event, HoldStatus, Record};
use serde::{Deserialize, Serialize};

/// An account's balances and tier, as of `last_seq`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountView {
    pub account_id: String,
    pub posted: u64,
    pub held: u64,
    pub lifetime: u64,
    pub tier: String,
    pub active_holds: u32,
    pub opened_at_us: u64,
    pub last_seq: u64,
}

impl AccountView {
    pub fn available(&self) -> u64 {
        self.posted - self.held
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub hold_id: u64,
    pub tenant: String,
    pub account_id: String,
    pub amount: u64,
    pub status: HoldStatus,
    pub created_at_us: u64,
    pub expires_at_us: u64,
    pub committed: u64,
    pub released: u64,
    pub resolved_at_us: u64,
    pub resolved_seq: u64,
}

impl HoldView {
    /// The hold as its reservation record places it; `None` for other records.
    pub fn reserved(record: &Record) -> Option<HoldView> {
        let Event::HoldReserved(r) = &record.event else {
            return None;
        };
        Some(HoldView {
            hold_id: r.hold_id,
            tenant: record.envelope.tenant.clone(),
            account_id: record.envelope.stream.clone(),
            amount: r.amount,
            status: HoldStatus::Active,
            created_at_us: record.ts_us,
            expires_at_us: r.expires_at_us,
            committed: 0,
            released: 0,
            resolved_at_us: 0,
            resolved_seq: 0,
        })
    }
}

/// One ledger entry of an account's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryView {
    pub account_id: String,
    pub seq: u64,
    pub ts_us: u64,
    pub event_id: [u8; 16],
    pub kind: u16,
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: String,
    pub idempotency_key: String,
    pub idempotency_scope: String,
    /// The staff reason of a comp, or a short description of the source.
    pub reason: String,
    pub effect: Effect,
    pub hold_id: u64,
    pub points: u64,
}

impl HistoryView {
    /// The history row for a record. The ingest pipeline's records change no balance: their
    /// effect is all zeros and [`EventKind::is_ledger`](crate::domain::EventKind::is_ledger)
    /// tells them apart; they have rows so that audit queries (by actor, correlation id,
    /// idempotency key) show them.
    pub fn of(record: &Record) -> Option<HistoryView> {
        let effect = match &record.event {
            Event::AccountOpened(opened) => Effect {
                posted_before: 0,
                posted_after: 0,
                held_before: 0,
                held_after: 0,
                lifetime_before: 0,
                lifetime_after: 0,
                tier_before: String::new(),
                tier_after: opened.tier.clone(),
            },
            other => match other.effect() {
                Some(effect) => effect.clone(),
                None => Effect {
                    posted_before: 0,
                    posted_after: 0,
                    held_before: 0,
                    held_after: 0,
                    lifetime_before: 0,
                    lifetime_after: 0,
                    tier_before: String::new(),
                    tier_after: String::new(),
                },
            },
        };
        let (reason, points) = match &record.event {
            Event::AccountOpened(_) => ("account opened".to_string(), 0),
            Event::PointsAwarded(award) => (describe_source(&award.source), award.points),
            Event::HoldReserved(e) => (String::new(), e.amount),
            Event::HoldCommitted(e) => (String::new(), e.committed),
            Event::HoldReleased(e) => (String::new(), e.amount),
            Event::HoldExpired(e) => (String::new(), e.amount),
            Event::TierChanged(e) => (format!("{} -> {}", e.from, e.to), 0),
            Event::PointsReversed(e) => (
                format!(
                    "reversal of {} award {} under {}: {}",
                    e.source,
                    e.original_external_id,
                    e.policy.name(),
                    e.reason
                ),
                e.points,
            ),
            Event::ExternalReceived(r) => (
                format!("received {} {}/{}", r.body.kind().name(), r.source, r.external_id),
                0,
            ),
            Event::ExternalProcessed(p) => (
                format!(
                    "processed receipt {} (attempt {}{}{})",
                    p.receipt_seq,
                    p.attempt,
                    if p.already_applied { ", applied before" } else { "" },
                    if p.redriven { ", re-driven" } else { "" }
                ),
                p.points,
            ),
            Event::ExternalAttemptFailed(f) => (
                format!("receipt {} attempt {} failed: {}", f.receipt_seq, f.attempt, f.cause),
                0,
            ),
            Event::ExternalDeadLettered(d) => (format!("receipt {} dead-lettered: {}", d.receipt_seq, d.cause), 0),
            Event::DeadLetterDiscarded(d) => (format!("receipt {} discarded: {}", d.receipt_seq, d.reason), 0),
            Event::RedriveRequested(r) => (format!("re-drive of receipts {:?}", r.receipts), 0),
            Event::LinkCreated(l) => (
                format!(
                    "link {} to {}/{} created",
                    l.link_id, l.external_system, l.external_account_id
                ),
                0,
            ),
            Event::LinkVerified(l) => (format!("link {} verified", l.link_id), 0),
            Event::LinkVerifyFailed(l) => (
                format!(
                    "link {}: wrong token ({} failures{})",
                    l.link_id,
                    l.failures,
                    if l.locked { ", locked" } else { "" }
                ),
                0,
            ),
            Event::LinkRevoked(l) => (format!("link {} revoked: {}", l.link_id, l.reason), 0),
            Event::LinkExpired(l) => (format!("link {} expired unverified", l.link_id), 0),
            Event::CompRefused(c) => (format!("comp refused ({}): {}", c.refusal, c.reason), c.points),
            Event::SessionStarted(s) => (format!("session {} started as {}", s.session_id, s.role), 0),
            Event::SessionRefreshed(s) => (format!("session {} refreshed", s.session_id), 0),
            Event::SessionEnded(s) => (format!("session {} ended: {}", s.session_id, s.reason), 0),
            Event::ApiKeyCreated(k) => (format!("API key {} ({}) created as {}", k.key_id, k.name, k.role), 0),
            Event::ApiKeyRevoked(k) => (format!("API key {} revoked: {}", k.key_id, k.reason), 0),
            Event::EndpointRegistered(r) => (format!("endpoint {} registered: {}", r.endpoint_id, r.config.url), 0),
            Event::EndpointUpdated(u) => (
                format!("endpoint {} {}: {}", u.endpoint_id, u.status.name(), u.config.url),
                0,
            ),
            Event::DeliveryDispatched(d) => (
                format!(
                    "delivery {}:{} attempt {} dispatched",
                    d.endpoint_id, d.event_seq, d.attempt
                ),
                0,
            ),
            Event::DeliveryDelivered(d) => (
                format!(
                    "delivery {}:{} delivered ({}, attempt {})",
                    d.endpoint_id, d.event_seq, d.status_code, d.attempt
                ),
                0,
            ),
            Event::DeliveryFailed(f) | Event::DeliveryFailedPermanently(f) => (
                format!(
                    "delivery {}:{} attempt {} failed: {}",
                    f.endpoint_id, f.event_seq, f.attempt, f.error
                ),
                0,
            ),
            Event::DeliveryAcked(a) => (
                format!("delivery {}:{} acked: {}", a.endpoint_id, a.event_seq, a.receipt),
                0,
            ),
            Event::DeliveryRetried(r) => (
                format!("delivery {}:{} retried: {}", r.endpoint_id, r.event_seq, r.reason),
                0,
            ),
        };
        let envelope = &record.envelope;
        Some(HistoryView {
            account_id: envelope.stream.clone(),
            seq: record.seq,
            ts_us: record.ts_us,
            event_id: *envelope.event_id.as_bytes(),
            kind: record.event.kind().code(),
            actor: envelope.actor.clone(),
            correlation_id: envelope.correlation_id.clone(),
            causation_id: envelope.causation_id.clone(),
            idempotency_key: envelope.idempotency_key.clone(),
            idempotency_scope: envelope.idempotency_scope.clone(),
            reason,
            effect,
            hold_id: record.event.hold_id().unwrap_or(0),
            points,
        })
    }
}

fn describe_source(source: &crate::domain::event::AwardSource) -> String {
    use crate::domain::event::AwardSource::*;
    match source {
        RatingSlip(s) => format!(
            "rating slip {} (theo {} cents, rates {})",
            s.slip_id, s.theo_cents, s.rate_table_version
        ),
        Manual(m) => m.reason.clone(),
        Promotion(p) => format!("promotion {} (reward {})", p.promotion_id, p.external_reward_id),
    }
}

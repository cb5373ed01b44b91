//! Records as the wire shows them: every event kind's payload typed in `LedgerEvent`, for
//! audit streams, replays and ingest responses.

use super::proto;
use crate::domain::event::{AwardSource, Effect};
use crate::domain::{Event, Record};

fn effect_message(effect: &Effect) -> proto::EventEffect {
    proto::EventEffect {
        posted_before: effect.posted_before,
        posted_after: effect.posted_after,
        held_before: effect.held_before,
        held_after: effect.held_after,
        lifetime_before: effect.lifetime_before,
        lifetime_after: effect.lifetime_after,
        tier_before: effect.tier_before.clone(),
        tier_after: effect.tier_after.clone(),
    }
}

/// A record as the wire shows it, payload typed.
pub fn ledger_event(record: &Record) -> proto::LedgerEvent {
    use proto::ledger_event::Payload;
    use proto::points_awarded_event::Source;
    let e = &record.envelope;
    let payload = match &record.event {
        Event::AccountOpened(o) => Payload::AccountOpened(proto::AccountOpenedEvent { tier: o.tier.clone() }),
        Event::PointsAwarded(a) => Payload::PointsAwarded(proto::PointsAwardedEvent {
            points: a.points,
            source: Some(match &a.source {
                AwardSource::RatingSlip(s) => Source::RatingSlip(proto::RatingSlipSource {
                    slip_id: s.slip_id.clone(),
                    game: s.game.clone(),
                    average_bet_cents: s.average_bet_cents,
                    decisions_per_hour: s.decisions_per_hour,
                    minutes_played: s.minutes_played,
                    house_edge_bps: s.house_edge_bps,
                    theo_cents: s.theo_cents,
                    rate_table_version: s.rate_table_version.clone(),
                    points_per_theo_dollar_milli: s.points_per_theo_dollar_milli,
                }),
                AwardSource::Manual(m) => Source::Manual(proto::ManualSource {
                    staff_id: m.staff_id.clone(),
                    reason: m.reason.clone(),
                    external_reward_id: m.external_reward_id.clone(),
                }),
                AwardSource::Promotion(p) => Source::Promotion(proto::PromotionSource {
                    promotion_id: p.promotion_id.clone(),
                    external_reward_id: p.external_reward_id.clone(),
                }),
            }),
        }),
        Event::HoldReserved(r) => Payload::HoldReserved(proto::HoldReservedEvent {
            hold_id: r.hold_id,
            amount: r.amount,
            ttl_seconds: r.ttl_seconds,
            expires_at_us: r.expires_at_us,
        }),
        Event::HoldCommitted(c) => Payload::HoldCommitted(proto::HoldCommittedEvent {
            hold_id: c.hold_id,
            reserved_at_us: c.reserved_at_us,
            expires_at_us: c.expires_at_us,
            requested: c.requested,
            committed: c.committed,
            released: c.released,
        }),
        Event::HoldReleased(r) => Payload::HoldReleased(proto::HoldReleasedEvent {
            hold_id: r.hold_id,
            reserved_at_us: r.reserved_at_us,
            expires_at_us: r.expires_at_us,
            amount: r.amount,
        }),
        Event::HoldExpired(x) => Payload::HoldExpired(proto::HoldExpiredEvent {
            hold_id: x.hold_id,
            reserved_at_us: x.reserved_at_us,
            expires_at_us: x.expires_at_us,
            amount: x.amount,
        }),
        Event::TierChanged(t) => Payload::TierChanged(proto::TierChangedEvent {
            from: t.from.clone(),
            to: t.to.clone(),
        }),
        Event::PointsReversed(r) => Payload::PointsReversed(proto::PointsReversedEvent {
            points: r.points,
            requested: r.requested,
            source: r.source.clone(),
            original_external_id: r.original_external_id.clone(),
            policy: r.policy.name().to_string(),
            reason: r.reason.clone(),
        }),
        Event::ExternalReceived(r) => Payload::ExternalReceived(proto::ExternalReceivedEvent {
            source: r.source.clone(),
            external_id: r.external_id.clone(),
            r#type: r.body.kind().name().to_string(),
            payload_json: super::external::to_json(&r.body).to_string(),
            checksum: crate::hex::hex(&r.checksum),
        }),
        Event::ExternalProcessed(p) => Payload::ExternalProcessed(proto::ExternalProcessedEvent {
            receipt_sequence: p.receipt_seq,
            attempt: p.attempt,
            ledger_first_sequence: p.ledger_first_seq,
            ledger_last_sequence: p.ledger_last_seq,
            points: p.points,
            already_applied: p.already_applied,
            redriven: p.redriven,
        }),
        Event::ExternalAttemptFailed(f) => Payload::ExternalAttemptFailed(proto::ExternalAttemptFailedEvent {
            receipt_sequence: f.receipt_seq,
            attempt: f.attempt,
            cause: f.cause.clone(),
            retry_at_us: f.retry_at_us,
        }),
        Event::ExternalDeadLettered(d) => Payload::ExternalDeadLettered(proto::ExternalDeadLetteredEvent {
            receipt_sequence: d.receipt_seq,
            attempts: d.attempts,
            cause: d.cause.clone(),
            parked_behind: d.parked_behind,
            redriven: d.redriven,
        }),
        Event::DeadLetterDiscarded(d) => Payload::DeadLetterDiscarded(proto::DeadLetterDiscardedEvent {
            receipt_sequence: d.receipt_seq,
            reason: d.reason.clone(),
        }),
        Event::RedriveRequested(r) => Payload::RedriveRequested(proto::RedriveRequestedEvent {
            receipt_sequence: r.through_receipt,
            r#type: r.kind.map(|k| k.name().to_string()).unwrap_or_default(),
            member_id: r.member_id.clone(),
            received_from_us: r.received_from_us,
            received_to_us: r.received_to_us,
            max_count: r.max_letters,
            receipt_sequences: r.receipts.clone(),
        }),
        Event::LinkCreated(l) => Payload::Link(proto::LinkEvent {
            link_id: l.link_id,
            external_system: l.external_system.clone(),
            external_account_id: l.external_account_id.clone(),
            expires_at_us: l.expires_at_us,
            ..Default::default()
        }),
        Event::LinkVerified(l) => Payload::Link(proto::LinkEvent {
            link_id: l.link_id,
            ..Default::default()
        }),
        Event::LinkVerifyFailed(l) => Payload::Link(proto::LinkEvent {
            link_id: l.link_id,
            failures: l.failures,
            locked: l.locked,
            ..Default::default()
        }),
        Event::LinkRevoked(l) => Payload::Link(proto::LinkEvent {
            link_id: l.link_id,
            reason: l.reason.clone(),
            ..Default::default()
        }),
        Event::LinkExpired(l) => Payload::Link(proto::LinkEvent {
            link_id: l.link_id,
            expires_at_us: l.expires_at_us,
            ..Default::default()
        }),
        Event::CompRefused(c) => Payload::CompRefused(proto::CompRefusedEvent {
            staff_id: c.staff_id.clone(),
            points: c.points,
            reason: c.reason.clone(),
            external_reward_id: c.external_reward_id.clone(),
            refusal: c.refusal.clone(),
            message: c.message.clone(),
        }),
        Event::SessionStarted(s) => Payload::Credential(proto::CredentialEvent {
            session_id: s.session_id.clone(),
            subject: s.subject.clone(),
            role: s.role.clone(),
            expires_at_us: s.expires_at_us,
            ..Default::default()
        }),
        Event::SessionRefreshed(s) => Payload::Credential(proto::CredentialEvent {
            session_id: s.session_id.clone(),
            expires_at_us: s.expires_at_us,
            ..Default::default()
        }),
        Event::SessionEnded(s) => Payload::Credential(proto::CredentialEvent {
            session_id: s.session_id.clone(),
            reason: s.reason.clone(),
            ..Default::default()
        }),
        Event::ApiKeyCreated(k) => Payload::Credential(proto::CredentialEvent {
            key_id: k.key_id.clone(),
            name: k.name.clone(),
            role: k.role.clone(),
            fingerprint: crate::hex::hex(&k.fingerprint),
            ..Default::default()
        }),
        Event::ApiKeyRevoked(k) => Payload::Credential(proto::CredentialEvent {
            key_id: k.key_id.clone(),
            reason: k.reason.clone(),
            ..Default::default()
        }),
        Event::EndpointRegistered(r) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: r.endpoint_id,
            detail: r.config.url.clone(),
            ..Default::default()
        }),
        Event::EndpointUpdated(u) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: u.endpoint_id,
            detail: format!("{} {}", u.status.name(), u.config.url),
            ..Default::default()
        }),
        Event::DeliveryDispatched(d) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: d.endpoint_id,
            event_sequence: d.event_seq,
            attempt: d.attempt,
            ..Default::default()
        }),
        Event::DeliveryDelivered(d) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: d.endpoint_id,
            event_sequence: d.event_seq,
            attempt: d.attempt,
            status_code: d.status_code.into(),
            latency_us: d.latency_us,
            next_at_us: d.ack_due_at_us,
            ..Default::default()
        }),
        Event::DeliveryFailed(f) | Event::DeliveryFailedPermanently(f) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: f.endpoint_id,
            event_sequence: f.event_seq,
            attempt: f.attempt,
            status_code: f.status_code.into(),
            latency_us: f.latency_us,
            error: f.error.clone(),
            next_at_us: f.retry_at_us,
            ..Default::default()
        }),
        Event::DeliveryAcked(a) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: a.endpoint_id,
            event_sequence: a.event_seq,
            detail: a.receipt.clone(),
            ..Default::default()
        }),
        Event::DeliveryRetried(r) => Payload::Delivery(proto::DeliveryEvent {
            endpoint_id: r.endpoint_id,
            event_sequence: r.event_seq,
            detail: r.reason.clone(),
            ..Default::default()
        }),
    };
    proto::LedgerEvent {
        sequence: record.seq,
        timestamp_us: record.ts_us,
        event_id: e.event_id.to_string(),
        kind: record.event.kind().name().to_string(),
        tenant: e.tenant.clone(),
        account_id: e.stream.clone(),
        actor: e.actor.clone(),
        correlation_id: e.correlation_id.clone(),
        causation_id: e.causation_id.clone(),
        idempotency_key: e.idempotency_key.clone(),
        idempotency_scope: e.idempotency_scope.clone(),
        hash: crate::hex::hex(&record.hash),
        effect: record.event.effect().map(effect_message),
        payload: Some(payload),
    }
}

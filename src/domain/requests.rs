//! The request a record answers: a command's first event, read back as the command that
//! produced it, and that command's natural identity. What the idempotency index files an
//! identity under when it is rebuilt from the log (`evolve` and the identity window).

use super::command::{AwardRequest, Command};
use super::event::{AwardSource, Event, Record};
use super::fingerprint::{natural_key, NaturalKey};

/// The request that a command's first event answers, rebuilt from the event.
pub fn request_of(record: &Record) -> Option<Command> {
    let account = record.envelope.stream.clone();
    Some(match &record.event {
        Event::AccountOpened(_) => Command::OpenAccount { account },
        Event::PointsAwarded(award) => Command::Award {
            account,
            source: match &award.source {
                AwardSource::RatingSlip(s) => AwardRequest::RatingSlip {
                    slip_id: s.slip_id.clone(),
                    game: s.game.clone(),
                    average_bet_cents: s.average_bet_cents,
                    decisions_per_hour: s.decisions_per_hour,
                    minutes_played: s.minutes_played,
                    house_edge_bps: s.house_edge_bps,
                },
                AwardSource::Manual(m) => AwardRequest::Manual {
                    staff_id: m.staff_id.clone(),
                    points: award.points,
                    reason: m.reason.clone(),
                    external_reward_id: m.external_reward_id.clone(),
                },
                AwardSource::Promotion(p) => AwardRequest::Promotion {
                    points: award.points,
                    promotion_id: p.promotion_id.clone(),
                    external_reward_id: p.external_reward_id.clone(),
                },
            },
        },
        Event::HoldReserved(r) => Command::Reserve {
            account,
            amount: r.amount,
            ttl_seconds: r.ttl_seconds,
        },
        Event::HoldCommitted(c) => Command::Commit {
            hold_id: c.hold_id,
            amount: c.requested,
        },
        Event::HoldReleased(r) => Command::Release { hold_id: r.hold_id },
        Event::ExternalReceived(received) => Command::Ingest {
            source: received.source.clone(),
            external_id: received.external_id.clone(),
            body: received.body.clone(),
        },
        // The first event of an operator's re-drive is the letter's outcome.
        Event::ExternalProcessed(p) if p.redriven => Command::Redrive {
            receipt_seq: p.receipt_seq,
        },
        Event::ExternalDeadLettered(d) if d.redriven => Command::Redrive {
            receipt_seq: d.receipt_seq,
        },
        Event::DeadLetterDiscarded(d) => Command::Discard {
            receipt_seq: d.receipt_seq,
            reason: d.reason.clone(),
        },
        Event::RedriveRequested(r) => Command::RequestRedrive(r.clone()),
        Event::LinkCreated(l) => Command::CreateLink {
            account,
            external_system: l.external_system.clone(),
            external_account_id: l.external_account_id.clone(),
            token_hash: l.token_hash,
            ttl_seconds: l.ttl_seconds,
        },
        Event::LinkVerified(l) => Command::VerifyLink {
            link_id: l.link_id,
            token_hash: l.token_hash,
        },
        Event::LinkVerifyFailed(l) => Command::VerifyLink {
            link_id: l.link_id,
            token_hash: l.token_hash,
        },
        Event::LinkRevoked(l) => Command::RevokeLink {
            link_id: l.link_id,
            reason: l.reason.clone(),
        },
        Event::SessionStarted(started) => Command::StartSession {
            session_id: started.session_id.clone(),
            subject: started.subject.clone(),
            role: started.role.clone(),
            ttl_seconds: started.ttl_seconds,
        },
        Event::SessionRefreshed(r) => Command::RefreshSession {
            session_id: r.session_id.clone(),
            ttl_seconds: r.ttl_seconds,
        },
        Event::SessionEnded(e) => Command::EndSession {
            session_id: e.session_id.clone(),
            reason: e.reason.clone(),
        },
        Event::ApiKeyCreated(k) => Command::CreateApiKey {
            key_id: k.key_id.clone(),
            name: k.name.clone(),
            role: k.role.clone(),
            signing_kid: k.signing_kid.clone(),
            fingerprint: k.fingerprint,
        },
        Event::ApiKeyRevoked(r) => Command::RevokeApiKey {
            key_id: r.key_id.clone(),
            reason: r.reason.clone(),
        },
        Event::EndpointRegistered(r) => Command::RegisterEndpoint {
            config: r.config.clone(),
            secret_kid: r.secret_kid.clone(),
            secret_nonce: r.secret_nonce.clone(),
        },
        Event::EndpointUpdated(u) => Command::UpdateEndpoint {
            endpoint_id: u.endpoint_id,
            config: Some(u.config.clone()),
            status: Some(u.status),
        },
        Event::DeliveryAcked(a) => Command::AckDelivery {
            endpoint_id: a.endpoint_id,
            event_seq: a.event_seq,
            receipt: a.receipt.clone(),
        },
        Event::DeliveryDispatched(_)
        | Event::DeliveryDelivered(_)
        | Event::DeliveryFailed(_)
        | Event::DeliveryFailedPermanently(_)
        | Event::DeliveryRetried(_) => return None,
        Event::HoldExpired(_)
        | Event::TierChanged(_)
        | Event::PointsReversed(_)
        | Event::ExternalProcessed(_)
        | Event::ExternalAttemptFailed(_)
        | Event::ExternalDeadLettered(_)
        | Event::LinkExpired(_)
        | Event::CompRefused(_) => return None,
    })
}

pub(super) fn natural_of<'a>(record: &'a Record, request: &'a Command) -> Option<NaturalKey<'a>> {
    match request {
        Command::Award { account, source } => Some(natural_key(&record.envelope.tenant, account, source, record.ts_us)),
        _ => None,
    }
}

//! Events and records: the persisted facts of the ledger. These are the only persisted
//! types of the domain; `log::codec` writes them byte by byte as `docs/FORMAT.md` says.
//! Changing one changes the log format: bump the format version and add a golden file under
//! `snapshots/`.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// One entry of the log: an event with its place in the sequence and its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Gapless, from 1.
    pub seq: u64,
    /// µs since the Unix epoch, stamped by the sequencer, never decreasing.
    pub ts_us: u64,
    pub envelope: Envelope,
    pub event: Event,
    /// `blake3(previous hash ‖ encoded header, envelope and payload)`.
    pub hash: [u8; 32],
}

/// Who, where and why of an event.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Envelope {
    /// UUID v7.
    pub event_id: Uuid,
    pub tenant: String,
    /// The stream the event belongs to: the account id.
    pub stream: String,
    pub correlation_id: String,
    pub causation_id: String,
    /// The authenticated subject that caused the event (`system:sweeper` for expiries).
    pub actor: String,
    pub idempotency_key: String,
    pub idempotency_scope: String,
}

/// An account's balances and tier around one event, recorded in every ledger event so that
/// history reads need no fold and replay can check itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    pub posted_before: u64,
    pub posted_after: u64,
    pub held_before: u64,
    pub held_after: u64,
    pub lifetime_before: u64,
    pub lifetime_after: u64,
    pub tier_before: String,
    pub tier_after: String,
}

/// What happened. The account is the record's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    AccountOpened(AccountOpened),
    PointsAwarded(PointsAwarded),
    HoldReserved(HoldReserved),
    HoldCommitted(HoldCommitted),
    HoldReleased(HoldReleased),
    HoldExpired(HoldExpired),
    TierChanged(TierChanged),
    PointsReversed(PointsReversed),
    ExternalReceived(ExternalReceived),
    ExternalProcessed(ExternalProcessed),
    ExternalAttemptFailed(ExternalAttemptFailed),
    ExternalDeadLettered(ExternalDeadLettered),
    DeadLetterDiscarded(DeadLetterDiscarded),
    RedriveRequested(RedriveRequested),
    LinkCreated(LinkCreated),
    LinkVerified(LinkVerified),
    LinkVerifyFailed(LinkVerifyFailed),
    LinkRevoked(LinkRevoked),
    LinkExpired(LinkExpired),
    CompRefused(CompRefused),
    SessionStarted(SessionStarted),
    SessionRefreshed(SessionRefreshed),
    SessionEnded(SessionEnded),
    ApiKeyCreated(ApiKeyCreated),
    ApiKeyRevoked(ApiKeyRevoked),
    EndpointRegistered(EndpointRegistered),
    EndpointUpdated(EndpointUpdated),
    DeliveryDispatched(DeliveryDispatched),
    DeliveryDelivered(DeliveryDelivered),
    DeliveryFailed(DeliveryFailed),
    DeliveryFailedPermanently(DeliveryFailed),
    DeliveryAcked(DeliveryAcked),
    DeliveryRetried(DeliveryRetried),
}

/// The families event kinds fall in (see [`EventKind::family`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindFamily {
    /// Balances and holds: an account's history.
    Ledger,
    /// The ingest pipeline's bookkeeping.
    Pipeline,
    Link,
    /// A refusal recorded for the audit (a comp refused).
    Refusal,
    /// Sessions and API keys.
    Credential,
    /// Endpoints and deliveries.
    Delivery,
}

/// The stable numeric code of an event kind, written in each record header so that readers
/// can filter without decoding payloads. Codes are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum EventKind {
    AccountOpened = 1,
    PointsAwarded = 2,
    HoldReserved = 3,
    HoldCommitted = 4,
    HoldReleased = 5,
    HoldExpired = 6,
    TierChanged = 7,
    PointsReversed = 8,
    ExternalReceived = 9,
    ExternalProcessed = 10,
    ExternalAttemptFailed = 11,
    ExternalDeadLettered = 12,
    DeadLetterDiscarded = 13,
    RedriveRequested = 14,
    LinkCreated = 15,
    LinkVerified = 16,
    LinkVerifyFailed = 17,
    LinkRevoked = 18,
    LinkExpired = 19,
    CompRefused = 20,
    SessionStarted = 21,
    SessionRefreshed = 22,
    SessionEnded = 23,
    ApiKeyCreated = 24,
    ApiKeyRevoked = 25,
    EndpointRegistered = 26,
    EndpointUpdated = 27,
    DeliveryDispatched = 28,
    DeliveryDelivered = 29,
    DeliveryFailed = 30,
    DeliveryFailedPermanently = 31,
    DeliveryAcked = 32,
    DeliveryRetried = 33,
}

impl EventKind {
    pub const ALL: [EventKind; 33] = [
        EventKind::AccountOpened,
        EventKind::PointsAwarded,
        EventKind::HoldReserved,
        EventKind::HoldCommitted,
        EventKind::HoldReleased,
        EventKind::HoldExpired,
        EventKind::TierChanged,
        EventKind::PointsReversed,
        EventKind::ExternalReceived,
        EventKind::ExternalProcessed,
        EventKind::ExternalAttemptFailed,
        EventKind::ExternalDeadLettered,
        EventKind::DeadLetterDiscarded,
        EventKind::RedriveRequested,
        EventKind::LinkCreated,
        EventKind::LinkVerified,
        EventKind::LinkVerifyFailed,
        EventKind::LinkRevoked,
        EventKind::LinkExpired,
        EventKind::CompRefused,
        EventKind::SessionStarted,
        EventKind::SessionRefreshed,
        EventKind::SessionEnded,
        EventKind::ApiKeyCreated,
        EventKind::ApiKeyRevoked,
        EventKind::EndpointRegistered,
        EventKind::EndpointUpdated,
        EventKind::DeliveryDispatched,
        EventKind::DeliveryDelivered,
        EventKind::DeliveryFailed,
        EventKind::DeliveryFailedPermanently,
        EventKind::DeliveryAcked,
        EventKind::DeliveryRetried,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }

    /// Dotted name used in APIs and documents.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::AccountOpened => "account.opened",
            EventKind::PointsAwarded => "points.awarded",
            EventKind::HoldReserved => "hold.reserved",
            EventKind::HoldCommitted => "hold.committed",
            EventKind::HoldReleased => "hold.released",
            EventKind::HoldExpired => "hold.expired",
            EventKind::TierChanged => "tier.changed",
            EventKind::PointsReversed => "points.reversed",
            EventKind::ExternalReceived => "external.received",
            EventKind::ExternalProcessed => "external.processed",
            EventKind::ExternalAttemptFailed => "external.attempt_failed",
            EventKind::ExternalDeadLettered => "external.dead_lettered",
            EventKind::DeadLetterDiscarded => "dead_letter.discarded",
            EventKind::RedriveRequested => "redrive.requested",
            EventKind::LinkCreated => "link.created",
            EventKind::LinkVerified => "link.verified",
            EventKind::LinkVerifyFailed => "link.verify_failed",
            EventKind::LinkRevoked => "link.revoked",
            EventKind::LinkExpired => "link.expired",
            EventKind::CompRefused => "comp.refused",
            EventKind::SessionStarted => "session.started",
            EventKind::SessionRefreshed => "session.refreshed",
            EventKind::SessionEnded => "session.ended",
            EventKind::ApiKeyCreated => "api_key.created",
            EventKind::ApiKeyRevoked => "api_key.revoked",
            EventKind::EndpointRegistered => "endpoint.registered",
            EventKind::EndpointUpdated => "endpoint.updated",
            EventKind::DeliveryDispatched => "delivery.dispatched",
            EventKind::DeliveryDelivered => "delivery.delivered",
            EventKind::DeliveryFailed => "delivery.failed",
            EventKind::DeliveryFailedPermanently => "delivery.failed_permanently",
            EventKind::DeliveryAcked => "delivery.acked",
            EventKind::DeliveryRetried => "delivery.retried",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What a kind is, decided once per kind. The match names every kind and has no
    /// wildcard: a new kind does not compile until it is placed here, so it cannot drop out
    /// of history, as-of reads or deliveries by falling outside a range of codes.
    pub fn family(self) -> KindFamily {
        use EventKind::*;
        match self {
            AccountOpened | PointsAwarded | HoldReserved | HoldCommitted | HoldReleased | HoldExpired | TierChanged
            | PointsReversed => KindFamily::Ledger,
            ExternalReceived
            | ExternalProcessed
            | ExternalAttemptFailed
            | ExternalDeadLettered
            | DeadLetterDiscarded
            | RedriveRequested => KindFamily::Pipeline,
            LinkCreated | LinkVerified | LinkVerifyFailed | LinkRevoked | LinkExpired => KindFamily::Link,
            CompRefused => KindFamily::Refusal,
            SessionStarted | SessionRefreshed | SessionEnded | ApiKeyCreated | ApiKeyRevoked => KindFamily::Credential,
            EndpointRegistered
            | EndpointUpdated
            | DeliveryDispatched
            | DeliveryDelivered
            | DeliveryFailed
            | DeliveryFailedPermanently
            | DeliveryAcked
            | DeliveryRetried => KindFamily::Delivery,
        }
    }

    /// A ledger entry of an account (its balance history); the others are the ingest
    /// pipeline's bookkeeping and the rest, which change no balance.
    pub fn is_ledger(self) -> bool {
        self.family() == KindFamily::Ledger
    }

    /// A change to sessions or API keys.
    pub fn is_credential(self) -> bool {
        self.family() == KindFamily::Credential
    }
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::AccountOpened(_) => EventKind::AccountOpened,
            Event::PointsAwarded(_) => EventKind::PointsAwarded,
            Event::HoldReserved(_) => EventKind::HoldReserved,
            Event::HoldCommitted(_) => EventKind::HoldCommitted,
            Event::HoldReleased(_) => EventKind::HoldReleased,
            Event::HoldExpired(_) => EventKind::HoldExpired,
            Event::TierChanged(_) => EventKind::TierChanged,
            Event::PointsReversed(_) => EventKind::PointsReversed,
            Event::ExternalReceived(_) => EventKind::ExternalReceived,
            Event::ExternalProcessed(_) => EventKind::ExternalProcessed,
            Event::ExternalAttemptFailed(_) => EventKind::ExternalAttemptFailed,
            Event::ExternalDeadLettered(_) => EventKind::ExternalDeadLettered,
            Event::DeadLetterDiscarded(_) => EventKind::DeadLetterDiscarded,
            Event::RedriveRequested(_) => EventKind::RedriveRequested,
            Event::LinkCreated(_) => EventKind::LinkCreated,
            Event::LinkVerified(_) => EventKind::LinkVerified,
            Event::LinkVerifyFailed(_) => EventKind::LinkVerifyFailed,
            Event::LinkRevoked(_) => EventKind::LinkRevoked,
            Event::LinkExpired(_) => EventKind::LinkExpired,
            Event::CompRefused(_) => EventKind::CompRefused,
            Event::SessionStarted(_) => EventKind::SessionStarted,
            Event::SessionRefreshed(_) => EventKind::SessionRefreshed,
            Event::SessionEnded(_) => EventKind::SessionEnded,
            Event::ApiKeyCreated(_) => EventKind::ApiKeyCreated,
            Event::ApiKeyRevoked(_) => EventKind::ApiKeyRevoked,
            Event::EndpointRegistered(_) => EventKind::EndpointRegistered,
            Event::EndpointUpdated(_) => EventKind::EndpointUpdated,
            Event::DeliveryDispatched(_) => EventKind::DeliveryDispatched,
            Event::DeliveryDelivered(_) => EventKind::DeliveryDelivered,
            Event::DeliveryFailed(_) => EventKind::DeliveryFailed,
            Event::DeliveryFailedPermanently(_) => EventKind::DeliveryFailedPermanently,
            Event::DeliveryAcked(_) => EventKind::DeliveryAcked,
            Event::DeliveryRetried(_) => EventKind::DeliveryRetried,
        }
    }

    /// The balances around the event: every ledger event but an opening has one; the
    /// ingest pipeline's events (received, processed, failed, dead-lettered, discarded)
    /// change no balance and have none.
    pub fn effect(&self) -> Option<&Effect> {
        match self {
            Event::AccountOpened(_)
            | Event::ExternalReceived(_)
            | Event::ExternalProcessed(_)
            | Event::ExternalAttemptFailed(_)
            | Event::ExternalDeadLettered(_)
            | Event::DeadLetterDiscarded(_)
            | Event::RedriveRequested(_)
            | Event::LinkCreated(_)
            | Event::LinkVerified(_)
            | Event::LinkVerifyFailed(_)
            | Event::LinkRevoked(_)
            | Event::LinkExpired(_)
            | Event::CompRefused(_)
            | Event::SessionStarted(_)
            | Event::SessionRefreshed(_)
            | Event::SessionEnded(_)
            | Event::ApiKeyCreated(_)
            | Event::ApiKeyRevoked(_)
            | Event::EndpointRegistered(_)
            | Event::EndpointUpdated(_)
            | Event::DeliveryDispatched(_)
            | Event::DeliveryDelivered(_)
            | Event::DeliveryFailed(_)
            | Event::DeliveryFailedPermanently(_)
            | Event::DeliveryAcked(_)
            | Event::DeliveryRetried(_) => None,
            Event::PointsAwarded(e) => Some(&e.effect),
            Event::HoldReserved(e) => Some(&e.effect),
            Event::HoldCommitted(e) => Some(&e.effect),
            Event::HoldReleased(e) => Some(&e.effect),
            Event::HoldExpired(e) => Some(&e.effect),
            Event::TierChanged(e) => Some(&e.effect),
            Event::PointsReversed(e) => Some(&e.effect),
        }
    }

    /// The hold an event concerns.
    pub fn hold_id(&self) -> Option<u64> {
        match self {
            Event::HoldReserved(e) => Some(e.hold_id),
            Event::HoldCommitted(e) => Some(e.hold_id),
            Event::HoldReleased(e) => Some(e.hold_id),
            Event::HoldExpired(e) => Some(e.hold_id),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountOpened {
    /// The tier the account starts in.
    pub tier: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsAwarded {
    pub points: u64,
    pub source: AwardSource,
    pub effect: Effect,
}

/// Where awarded points came from, with every input that decided the amount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AwardSource {
    RatingSlip(RatingSlipSource),
    Manual(ManualSource),
    Promotion(PromotionSource),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatingSlipSource {
    pub slip_id: String,
    pub game: String,
    pub average_bet_cents: u64,
    pub decisions_per_hour: u32,
    pub minutes_played: u32,
    pub house_edge_bps: u32,
    /// Theoretical win: bet × decisions/hour × hours × house edge, in cents, rounded down.
    pub theo_cents: u64,
    pub rate_table_version: String,
    /// Points per theo dollar, in thousandths.
    pub points_per_theo_dollar_milli: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualSource {
    pub staff_id: String,
    pub reason: String,
    /// Empty when the comp had none.
    pub external_reward_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionSource {
    pub promotion_id: String,
    pub external_reward_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReserved {
    /// Equal to the record's sequence number.
    pub hold_id: u64,
    pub amount: u64,
    pub ttl_seconds: u32,
    pub expires_at_us: u64,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCommitted {
    pub hold_id: u64,
    /// When the hold was placed and when it would have expired: a commit record proves on
    /// its own that it came before the deadline.
    pub reserved_at_us: u64,
    pub expires_at_us: u64,
    /// The amount the request asked for; `None` meant the whole hold.
    pub requested: Option<u64>,
    pub committed: u64,
    /// The part of the hold that went back to the account.
    pub released: u64,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReleased {
    pub hold_id: u64,
    pub reserved_at_us: u64,
    pub expires_at_us: u64,
    pub amount: u64,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldExpired {
    pub hold_id: u64,
    pub reserved_at_us: u64,
    pub amount: u64,
    pub expires_at_us: u64,
    pub effect: Effect,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierChanged {
    pub from: String,
    pub to: String,
    pub effect: Effect,
}

/// Points taken back from an account by a `points.reverse` external event: at most what the
/// original award left to reverse, and, under [`ReversePolicy::CapToAvailable`], at most what
/// the account has available. Lifetime points go down with posted points: the award is
/// undone, so tiers follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsReversed {
    pub points: u64,
    /// What was left to reverse of the original award before this reversal.
    pub requested: u64,
    pub source: String,
    pub original_external_id: String,
    pub policy: ReversePolicy,
    pub reason: String,
    pub effect: Effect,
}

/// What a reversal does when the account cannot give back everything the original award
/// left to reverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReversePolicy {
    /// Take back what is available now, record the shortfall, and finish.
    CapToAvailable,
    /// Take back everything or nothing: a shortfall is a permanent failure (dead letter).
    AllOrNothing,
}

impl ReversePolicy {
    pub fn name(self) -> &'static str {
        match self {
            ReversePolicy::CapToAvailable => "cap_to_available",
            ReversePolicy::AllOrNothing => "all_or_nothing",
        }
    }
}

/// The type of an external event, as partners name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ExternalKind {
    MemberEnrolled,
    PointsAward,
    RatingSlipCompleted,
    PointsReverse,
}

impl ExternalKind {
    pub const ALL: [ExternalKind; 4] = [
        ExternalKind::MemberEnrolled,
        ExternalKind::PointsAward,
        ExternalKind::RatingSlipCompleted,
        ExternalKind::PointsReverse,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExternalKind::MemberEnrolled => "member.enrolled",
            ExternalKind::PointsAward => "points.award",
            ExternalKind::RatingSlipCompleted => "rating_slip.completed",
            ExternalKind::PointsReverse => "points.reverse",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// An external event's content, validated against its type's schema (`docs/INGEST.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExternalBody {
    MemberEnrolled {
        member_id: String,
    },
    PointsAward {
        member_id: String,
        points: u64,
        promotion_id: String,
    },
    RatingSlipCompleted {
        member_id: String,
        slip_id: String,
        game: String,
        average_bet_cents: u64,
        decisions_per_hour: u32,
        minutes_played: u32,
        house_edge_bps: u32,
    },
    PointsReverse {
        member_id: String,
        original_external_id: String,
        policy: ReversePolicy,
        reason: String,
    },
}

impl ExternalBody {
    pub fn kind(&self) -> ExternalKind {
        match self {
            ExternalBody::MemberEnrolled { .. } => ExternalKind::MemberEnrolled,
            ExternalBody::PointsAward { .. } => ExternalKind::PointsAward,
            ExternalBody::RatingSlipCompleted { .. } => ExternalKind::RatingSlipCompleted,
            ExternalBody::PointsReverse { .. } => ExternalKind::PointsReverse,
        }
    }

    /// The member (account) the event is about: its sequence in the dead-letter queue.
    pub fn member_id(&self) -> &str {
        match self {
            ExternalBody::MemberEnrolled { member_id }
            | ExternalBody::PointsAward { member_id, .. }
            | ExternalBody::RatingSlipCompleted { member_id, .. }
            | ExternalBody::PointsReverse { member_id, .. } => member_id,
        }
    }

    /// The content checksum: blake3 over the type name and the MessagePack encoding of
    /// the validated content, so two deliveries of the same content match whatever the
    /// spacing or key order of the JSON they came in.
    pub fn checksum(&self) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.kind().name().as_bytes());
        hasher.update(&[0]);
        hasher.update(&rmp_serde::to_vec(self).expect("an external body encodes"));
        *hasher.finalize().as_bytes()
    }
}

/// An external event as accepted, appended before any processing. The record's stream is
/// the member id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalReceived {
    pub source: String,
    pub external_id: String,
    pub body: ExternalBody,
    pub checksum: [u8; 32],
    /// The receipt whose content this repeats within the dedup window (0: none). Such an
    /// event is recorded, so that its own id is a duplicate for ever after, and processed
    /// at once as applied before. Absent (0) in records written before it existed.
    #[serde(default)]
    pub duplicate_of: u64,
}

/// A received event was applied. `ledger_first_seq..=ledger_last_seq` are the ledger
/// events it caused (both 0 when it caused none: an enrollment of an open account, a
/// reversal with nothing left to take).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalProcessed {
    pub receipt_seq: u64,
    pub attempt: u32,
    pub ledger_first_seq: u64,
    pub ledger_last_seq: u64,
    /// Points credited (an award) or taken back (a reversal).
    pub points: u64,
    /// The operation had been applied before, under its natural identity (a rating slip
    /// accrued through the ledger API): nothing was applied twice.
    pub already_applied: bool,
    /// Applied by an operator's re-drive of a dead letter.
    pub redriven: bool,
}

/// A transient failure (the member is not enrolled yet; the award to reverse has not
/// arrived): retried at `retry_at_us`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalAttemptFailed {
    pub receipt_seq: u64,
    pub attempt: u32,
    pub cause: String,
    pub retry_at_us: u64,
}

/// A received event went to the dead-letter queue: a permanent failure, the last attempt
/// failed, a re-drive failed again, or (`parked_behind` ≠ 0) its member already has a dead
/// letter it must not overtake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalDeadLettered {
    pub receipt_seq: u64,
    pub attempts: u32,
    pub cause: String,
    pub parked_behind: u64,
    pub redriven: bool,
}

/// An operator removed a letter from the dead-letter queue without applying it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterDiscarded {
    pub receipt_seq: u64,
    pub reason: String,
}

/// An operator asked for a re-drive: the request (one letter's sequence, or a filter) and
/// the letters it came to, in order; each one's outcome follows as its own command.
/// Recorded first so that a retry of the request re-drives the same letters, not whatever
/// matches its filter by then. Its stream is empty: it concerns members of the tenant, not
/// one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedriveRequested {
    /// The letter whose sequence is re-driven through it; 0 for a filter.
    pub through_receipt: u64,
    pub kind: Option<ExternalKind>,
    /// Empty: any member.
    pub member_id: String,
    pub received_from_us: u64,
    /// 0: open.
    pub received_to_us: u64,
    pub max_letters: u32,
    /// The plan: receipt numbers in the order they are re-driven.
    pub receipts: Vec<u64>,
}

/// A link between an account and an account in another system, waiting for its proof: the
/// holder of the one-time token (sent in a deep link) verifies it. The token itself is never
/// recorded: `token_hash` is its blake3 keyed hash under the server's link key. The link's
/// id is this record's sequence number.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCreated {
    pub link_id: u64,
    pub external_system: String,
    pub external_account_id: String,
    pub token_hash: [u8; 32],
    /// As requested (0: the default).
    pub ttl_seconds: u32,
    pub expires_at_us: u64,
}

/// The token was shown: the link is active. `token_hash` is the keyed hash of the token
/// shown (here the right one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkVerified {
    pub link_id: u64,
    pub token_hash: [u8; 32],
}

/// A wrong token (its keyed hash); after `MAX_LINK_VERIFY_FAILURES` the link is locked for
/// good.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkVerifyFailed {
    pub link_id: u64,
    pub token_hash: [u8; 32],
    pub failures: u32,
    pub locked: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRevoked {
    pub link_id: u64,
    pub reason: String,
}

/// A link nobody verified before its deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkExpired {
    pub link_id: u64,
    pub expires_at_us: u64,
}

/// A manual reward (comp) the ledger refused for a reason a comp review must see: over the
/// per-operation maximum, over the staff member's rate, or not the caller's to give. The
/// record's actor is the staff member who tried; the caller still hears the refusal, and
/// its idempotency key stays free (the record carries none). Malformed requests are
/// refused without a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompRefused {
    pub staff_id: String,
    pub points: u64,
    pub reason: String,
    pub external_reward_id: String,
    /// The rejection's stable name (`manual_reward_rate_limited`, …).
    pub refusal: String,
    pub message: String,
}

/// A session a trusted tenant service started for a user it authenticated (SSO). Never the
/// token: a session's token is a signature over these fields, which the server can make
/// again; the record's actor is the service that asserted the user, its stream the subject.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStarted {
    pub session_id: String,
    pub subject: String,
    /// A role name (`member`, `staff`, `auditor`).
    pub role: String,
    /// As requested (0: the default).
    pub ttl_seconds: u32,
    pub expires_at_us: u64,
}

/// A session's life extended from the record's time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRefreshed {
    pub session_id: String,
    pub ttl_seconds: u32,
    pub expires_at_us: u64,
}

/// A logout: the session's tokens are refused from this record on, however valid their
/// signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub session_id: String,
    pub reason: String,
}

/// An API key an admin made for a service. Only a fingerprint (blake3 of the secret): the
/// secret is derived from the server's key `signing_kid` and the key id, and shown once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub key_id: String,
    pub name: String,
    /// A role name.
    pub role: String,
    pub signing_kid: String,
    pub fingerprint: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub key_id: String,
    pub reason: String,
}

/// An endpoint of a tenant that deliveries go to; its id is this record's sequence
/// number. The signing secret is derived from the server's key `secret_kid` and
/// `secret_nonce`: a reference, never the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRegistered {
    pub endpoint_id: u64,
    pub config: super::endpoints::EndpointConfig,
    pub secret_kid: String,
    pub secret_nonce: String,
}

/// New settings or status (active, paused, deleted) of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointUpdated {
    pub endpoint_id: u64,
    pub config: super::endpoints::EndpointConfig,
    pub status: super::endpoints::EndpointStatus,
}

/// At-most-once: the one attempt is about to be made (recorded first, so a crash during it
/// never leads to a second). The record is in the stream of the delivered event's account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDispatched {
    pub endpoint_id: u64,
    /// The delivered event's sequence number.
    pub event_seq: u64,
    pub attempt: u32,
}

/// A 2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDelivered {
    pub endpoint_id: u64,
    pub event_seq: u64,
    pub attempt: u32,
    pub status_code: u16,
    pub latency_us: u64,
    /// Explicit-ack mode: delivered again unless acked by `ack_due_at_us`.
    pub awaiting_ack: bool,
    pub ack_due_at_us: u64,
}

/// An attempt that failed: retried at `retry_at_us` (`delivery.failed`), or the last one
/// (`delivery.failed_permanently`, `retry_at_us` 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryFailed {
    pub endpoint_id: u64,
    pub event_seq: u64,
    pub attempt: u32,
    /// 0: no HTTP answer.
    pub status_code: u16,
    pub latency_us: u64,
    pub error: String,
    pub retry_at_us: u64,
}

/// The receiver confirmed a delivery (`Ack`), with what it chose to say.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAcked {
    pub endpoint_id: u64,
    pub event_seq: u64,
    pub receipt: String,
}

/// An operator retried a failed delivery by hand: a new round of attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRetried {
    pub endpoint_id: u64,
    pub event_seq: u64,
    pub reason: String,
}

/// Where a link stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkStatus {
    Pending,
    Active,
    Locked,
    Revoked,
    Expired,
}

impl LinkStatus {
    pub fn name(self) -> &'static str {
        match self {
            LinkStatus::Pending => "pending",
            LinkStatus::Active => "active",
            LinkStatus::Locked => "locked",
            LinkStatus::Revoked => "revoked",
            LinkStatus::Expired => "expired",
        }
    }
}

/// Where a hold stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HoldStatus {
    Active,
    Committed,
    Released,
    Expired,
}

impl fmt::Display for HoldStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HoldStatus::Active => "active",
            HoldStatus::Committed => "committed",
            HoldStatus::Released => "released",
            HoldStatus::Expired => "expired",
        })
    }
}

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
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::AccountOpened,
        EventKind::PointsAwarded,
        EventKind::HoldReserved,
        EventKind::HoldCommitted,
        EventKind::HoldReleased,
        EventKind::HoldExpired,
        EventKind::TierChanged,
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
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
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
        }
    }

    /// The balances around the event; every event but an opening has one.
    pub fn effect(&self) -> Option<&Effect> {
        match self {
            Event::AccountOpened(_) => None,
            Event::PointsAwarded(e) => Some(&e.effect),
            Event::HoldReserved(e) => Some(&e.effect),
            Event::HoldCommitted(e) => Some(&e.effect),
            Event::HoldReleased(e) => Some(&e.effect),
            Event::HoldExpired(e) => Some(&e.effect),
            Event::TierChanged(e) => Some(&e.effect),
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

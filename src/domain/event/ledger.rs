//! The ledger's payloads: what changes an account's balances, holds and tier.

use serde::{Deserialize, Serialize};
use std::fmt;

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

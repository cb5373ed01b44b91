//! The ingest pipeline's payloads: external events as received, and each attempt's outcome.

use super::ReversePolicy;
use serde::{Deserialize, Serialize};

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

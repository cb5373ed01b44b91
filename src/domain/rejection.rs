//! Rejections: a command the ledger refuses. A rejection is a value, never a panic, and
//! changes nothing.

use super::event::HoldStatus;

/// Why a command was refused. Each variant maps to one gRPC status code and one
/// machine-readable reason (see `api::status`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A request field is missing, malformed or out of range.
    #[error("invalid {field}: {message}")]
    InvalidArgument { field: &'static str, message: String },
    /// The same idempotency identity was used for a different request.
    #[error("idempotency key already used for a different request (first differing field: {field}; original sequence {original_sequence})")]
    IdempotencyConflict {
        field: &'static str,
        original_sequence: u64,
    },
    /// The account does not exist in the caller's tenant.
    #[error("account {} not found", quote(.account))]
    AccountNotFound { account: String },
    /// The hold does not exist in the caller's tenant.
    #[error("hold {hold_id} not found")]
    HoldNotFound { hold_id: u64 },
    /// Not enough available points for a hold.
    #[error("insufficient points: {available} available, {requested} requested")]
    InsufficientPoints { available: u64, requested: u64 },
    /// A commit or release arrived at or after the hold's `expires_at`.
    #[error("hold {hold_id} expired at {expires_at_us}")]
    HoldExpired { hold_id: u64, expires_at_us: u64 },
    /// The hold was already committed, released or expired.
    #[error("hold {hold_id} is already {status}")]
    HoldAlreadyResolved { hold_id: u64, status: HoldStatus },
    /// A commit asked for more than the hold.
    #[error("commit of {requested} exceeds hold {hold_id} of {held}")]
    CommitExceedsHold { hold_id: u64, held: u64, requested: u64 },
    /// The account has the maximum number of active holds.
    #[error("account {} has {limit} active holds, the maximum", quote(.account))]
    TooManyHolds { account: String, limit: u32 },
    /// A balance would leave the range of `u64`.
    #[error("balance overflow on account {}", quote(.account))]
    BalanceOverflow { account: String },
    /// A staff member exceeded the comp rate.
    #[error("staff member {} has issued {limit} manual rewards in the last minute", quote(.staff_id))]
    ManualRewardRateLimited { staff_id: String, limit: usize },
    /// The comp is over the per-operation maximum.
    #[error("manual reward of {points} points exceeds the maximum of {limit}")]
    ManualRewardTooLarge { points: u64, limit: u64 },
    /// The caller is not identified, and the command needs to know who it is.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this (for example, name another staff member on a comp).
    #[error("{0}")]
    PermissionDenied(String),
    /// A `points.reverse` names an award that has not been applied (yet): transient, the
    /// award may still arrive.
    #[error("no applied award {} from source {} to reverse", quote(.external_id), quote(.source_name))]
    OriginalNotFound { source_name: String, external_id: String },
    /// The dead-letter queue is at its bound for the member (or overall): new external
    /// events that would join it are refused, never dropped.
    #[error("dead-letter queue full for {scope}: {bound} letters; re-drive or discard letters first")]
    DeadLetterQueueFull { scope: String, bound: u64 },
    /// No receipt with that number in the caller's tenant.
    #[error("no external event with receipt {receipt_seq}")]
    ReceiptNotFound { receipt_seq: u64 },
    /// The letter was already processed or discarded: a re-drive or discard of it changes
    /// nothing.
    #[error("receipt {receipt_seq} is already {how} (sequence {seq}); nothing to do")]
    AlreadyResolved {
        receipt_seq: u64,
        how: &'static str,
        seq: u64,
    },
    /// The receipt is not a letter that can be re-driven or discarded now (it is waiting
    /// for a retry, or is parked behind another letter).
    #[error("receipt {receipt_seq} cannot be re-driven now: {reason}")]
    NotRedrivable { receipt_seq: u64, reason: String },
    /// No link with that id in the caller's tenant.
    #[error("link {link_id} not found")]
    LinkNotFound { link_id: u64 },
    /// The link was verified, revoked, locked or expired before.
    #[error("link {link_id} is {status}")]
    LinkNotPending { link_id: u64, status: &'static str },
    /// The external account is actively linked to another account already.
    #[error("{} account {} is already linked (link {link_id})", quote(.external_system), quote(.external_account_id))]
    LinkConflict {
        external_system: String,
        external_account_id: String,
        link_id: u64,
    },
    /// No session with that id in the caller's tenant (never started, or expired and gone).
    #[error("session {} not found", quote(.session_id))]
    SessionNotFound { session_id: String },
    /// The session was logged out or has expired.
    #[error("session {} is {why}", quote(.session_id))]
    SessionNotActive { session_id: String, why: &'static str },
    /// No API key with that id in the caller's tenant.
    #[error("API key {} not found", quote(.key_id))]
    ApiKeyNotFound { key_id: String },
    /// No endpoint with that id in the caller's tenant (or it was deleted).
    #[error("endpoint {endpoint_id} not found")]
    EndpointNotFound { endpoint_id: u64 },
    /// No delivery of that event to that endpoint (or it is no longer kept in memory).
    #[error("no delivery of event {event_seq} to endpoint {endpoint_id}")]
    DeliveryNotFound { endpoint_id: u64, event_seq: u64 },
    /// The delivery is not in a state for this (an attempt reported twice, an ack after it
    /// failed for good, a retry of a pending one).
    #[error("delivery of event {event_seq} to endpoint {endpoint_id} is {status}")]
    DeliveryNotDue {
        endpoint_id: u64,
        event_seq: u64,
        status: &'static str,
    },
    /// An identity older than the window could not be read back from the log: whether the
    /// command was applied before is not known, so it is not decided (retry it).
    #[error("cannot read an earlier use of this identity from the log: {reason}")]
    IdentityUnreadable { reason: String },
}

impl Rejection {
    /// Short, stable name for metrics labels and logs.
    pub fn name(&self) -> &'static str {
        use Rejection::*;
        match self {
            InvalidArgument { .. } => "invalid_argument",
            IdempotencyConflict { .. } => "idempotency_conflict",
            AccountNotFound { .. } => "account_not_found",
            HoldNotFound { .. } => "hold_not_found",
            InsufficientPoints { .. } => "insufficient_points",
            HoldExpired { .. } => "hold_expired",
            HoldAlreadyResolved { .. } => "hold_already_resolved",
            CommitExceedsHold { .. } => "commit_exceeds_hold",
            TooManyHolds { .. } => "too_many_holds",
            BalanceOverflow { .. } => "balance_overflow",
            ManualRewardRateLimited { .. } => "manual_reward_rate_limited",
            ManualRewardTooLarge { .. } => "manual_reward_too_large",
            Unauthenticated(_) => "unauthenticated",
            PermissionDenied(_) => "permission_denied",
            OriginalNotFound { .. } => "original_not_found",
            DeadLetterQueueFull { .. } => "dead_letter_queue_full",
            ReceiptNotFound { .. } => "receipt_not_found",
            AlreadyResolved { .. } => "already_resolved",
            NotRedrivable { .. } => "not_redrivable",
            LinkNotFound { .. } => "link_not_found",
            LinkNotPending { .. } => "link_not_pending",
            LinkConflict { .. } => "link_conflict",
            SessionNotFound { .. } => "session_not_found",
            SessionNotActive { .. } => "session_not_active",
            ApiKeyNotFound { .. } => "api_key_not_found",
            EndpointNotFound { .. } => "endpoint_not_found",
            DeliveryNotFound { .. } => "delivery_not_found",
            DeliveryNotDue { .. } => "delivery_not_due",
            IdentityUnreadable { .. } => "identity_unreadable",
        }
    }

    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Rejection::InvalidArgument {
            field,
            message: message.into(),
        }
    }
}

/// A caller's input as an error may show it: quoted like `{:?}`, at most
/// [`QUOTED_INPUT_MAX_CHARS`](super::limits::QUOTED_INPUT_MAX_CHARS) characters, then `…`
/// and its length if it was longer.
pub fn quote(input: &str) -> String {
    use super::limits::QUOTED_INPUT_MAX_CHARS;
    match input.char_indices().nth(QUOTED_INPUT_MAX_CHARS) {
        None => format!("{input:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &input[..end], input.len()),
    }
}

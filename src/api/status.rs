//! The one place where errors become gRPC status codes, with a machine-readable reason in
//! a `google.rpc.ErrorInfo` detail (domain `tally.v1`) and at the start of the message.

use super::proto;
use crate::domain::limits::QUOTED_INPUT_MAX_CHARS;
use crate::domain::{HoldStatus, Rejection};
use crate::engine::EngineError;
use crate::log::LogError;
use std::collections::HashMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The error domain in every ErrorInfo.
pub const ERROR_DOMAIN: &str = "tally.v1";

/// Code, reason and metadata of an error.
pub struct Classified {
    pub code: Code,
    pub reason: &'static str,
    pub message: String,
    pub metadata: HashMap<String, String>,
}

/// Classifies an engine error.
pub fn classify(error: &EngineError) -> Classified {
    match error {
        EngineError::Rejected(rejection) => classify_rejection(rejection),
        EngineError::Busy => plain(Code::ResourceExhausted, "INBOX_FULL", error),
        EngineError::Unavailable(_) => plain(Code::Unavailable, "LEDGER_UNAVAILABLE", error),
        EngineError::Log(LogError::Corrupt { seq, .. }) => {
            with(Code::DataLoss, "LOG_CORRUPT", error, [("sequence", seq.to_string())])
        }
        EngineError::LogBehind { first_lost, .. } => with(
            Code::DataLoss,
            "LOG_BEHIND",
            error,
            [("sequence", first_lost.to_string())],
        ),
        EngineError::Unfoldable { seq, .. } => {
            with(Code::DataLoss, "LOG_UNFOLDABLE", error, [("sequence", seq.to_string())])
        }
        EngineError::Owner(_) => plain(Code::Unavailable, "DATA_DIR_IN_USE", error),
        EngineError::Log(_) | EngineError::Store(_) => plain(Code::Internal, "STORAGE_ERROR", error),
    }
}

/// Classifies a rejection.
pub fn classify_rejection(rejection: &Rejection) -> Classified {
    use Rejection::*;
    let r = rejection;
    match rejection {
        InvalidArgument { field, .. } => with(
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
            r,
            [("field", field.to_string())],
        ),
        IdempotencyConflict {
            field,
            original_sequence,
        } => with(
            Code::AlreadyExists,
            "IDEMPOTENCY_CONFLICT",
            r,
            [
                ("field", field.to_string()),
                ("original_sequence", original_sequence.to_string()),
            ],
        ),
        AccountNotFound { account } => with(
            Code::NotFound,
            "ACCOUNT_NOT_FOUND",
            r,
            [("account_id", account.clone())],
        ),
        HoldNotFound { hold_id } => with(Code::NotFound, "HOLD_NOT_FOUND", r, [("hold_id", hold_id.to_string())]),
        InsufficientPoints { available, requested } => with(
            Code::FailedPrecondition,
            "INSUFFICIENT_POINTS",
            r,
            [
                ("available", available.to_string()),
                ("requested", requested.to_string()),
            ],
        ),
        HoldExpired { hold_id, expires_at_us } => with(
            Code::FailedPrecondition,
            "HOLD_EXPIRED",
            r,
            [
                ("hold_id", hold_id.to_string()),
                ("expires_at_us", expires_at_us.to_string()),
            ],
        ),
        HoldAlreadyResolved { hold_id, status } => {
            let reason = match status {
                HoldStatus::Committed => "HOLD_ALREADY_COMMITTED",
                HoldStatus::Released => "HOLD_ALREADY_RELEASED",
                HoldStatus::Expired => "HOLD_ALREADY_EXPIRED",
                HoldStatus::Active => unreachable!("an active hold is not resolved"),
            };
            with(Code::FailedPrecondition, reason, r, [("hold_id", hold_id.to_string())])
        }
        CommitExceedsHold {
            hold_id,
            held,
            requested,
        } => with(
            Code::FailedPrecondition,
            "COMMIT_EXCEEDS_HOLD",
            r,
            [
                ("hold_id", hold_id.to_string()),
                ("held", held.to_string()),
                ("requested", requested.to_string()),
            ],
        ),
        TooManyHolds { limit, .. } => with(
            Code::FailedPrecondition,
            "TOO_MANY_HOLDS",
            r,
            [("limit", limit.to_string())],
        ),
        BalanceOverflow { .. } => plain(Code::FailedPrecondition, "BALANCE_OVERFLOW", r),
        ManualRewardRateLimited { limit, .. } => with(
            Code::ResourceExhausted,
            "MANUAL_REWARD_RATE_LIMITED",
            r,
            [("limit_per_minute", limit.to_string())],
        ),
        ManualRewardTooLarge { limit, .. } => with(
            Code::InvalidArgument,
            "MANUAL_REWARD_TOO_LARGE",
            r,
            [("field", "manual.points".to_string()), ("limit", limit.to_string())],
        ),
        Unauthenticated(_) => plain(Code::Unauthenticated, "UNAUTHENTICATED", r),
        PermissionDenied(_) => plain(Code::PermissionDenied, "PERMISSION_DENIED", r),
        OriginalNotFound {
            source_name,
            external_id,
        } => with(
            Code::NotFound,
            "ORIGINAL_NOT_FOUND",
            r,
            [("source", source_name.clone()), ("external_id", external_id.clone())],
        ),
        DeadLetterQueueFull { scope, bound } => with(
            Code::ResourceExhausted,
            "DEAD_LETTER_QUEUE_FULL",
            r,
            [("scope", scope.clone()), ("bound", bound.to_string())],
        ),
        ReceiptNotFound { receipt_seq } => with(
            Code::NotFound,
            "RECEIPT_NOT_FOUND",
            r,
            [("receipt_sequence", receipt_seq.to_string())],
        ),
        AlreadyResolved { receipt_seq, how, seq } => with(
            Code::FailedPrecondition,
            "ALREADY_RESOLVED",
            r,
            [
                ("receipt_sequence", receipt_seq.to_string()),
                ("resolution", how.to_string()),
                ("sequence", seq.to_string()),
            ],
        ),
        NotRedrivable { receipt_seq, .. } => with(
            Code::FailedPrecondition,
            "NOT_REDRIVABLE",
            r,
            [("receipt_sequence", receipt_seq.to_string())],
        ),
        LinkNotFound { link_id } => with(Code::NotFound, "LINK_NOT_FOUND", r, [("link_id", link_id.to_string())]),
        LinkNotPending { link_id, status } => {
            let reason = match *status {
                "active" => "LINK_ACTIVE",
                "locked" => "LINK_LOCKED",
                "revoked" => "LINK_REVOKED",
                "expired" => "LINK_EXPIRED",
                _ => "LINK_NOT_PENDING",
            };
            with(Code::FailedPrecondition, reason, r, [("link_id", link_id.to_string())])
        }
        LinkConflict { link_id, .. } => with(
            Code::AlreadyExists,
            "LINK_CONFLICT",
            r,
            [("link_id", link_id.to_string())],
        ),
        SessionNotFound { session_id } => with(
            Code::NotFound,
            "SESSION_NOT_FOUND",
            r,
            [("session_id", session_id.clone())],
        ),
        SessionNotActive { session_id, why } => with(
            Code::FailedPrecondition,
            if *why == "expired" {
                "SESSION_EXPIRED"
            } else {
                "SESSION_ENDED"
            },
            r,
            [("session_id", session_id.clone())],
        ),
        ApiKeyNotFound { key_id } => with(Code::NotFound, "API_KEY_NOT_FOUND", r, [("key_id", key_id.clone())]),
        EndpointNotFound { endpoint_id } => with(
            Code::NotFound,
            "ENDPOINT_NOT_FOUND",
            r,
            [("endpoint_id", endpoint_id.to_string())],
        ),
        DeliveryNotFound { endpoint_id, event_seq } => with(
            Code::NotFound,
            "DELIVERY_NOT_FOUND",
            r,
            [("delivery_id", format!("{endpoint_id}:{event_seq}"))],
        ),
        DeliveryNotDue {
            endpoint_id,
            event_seq,
            status,
        } => with(
            Code::FailedPrecondition,
            "DELIVERY_NOT_DUE",
            r,
            [
                ("delivery_id", format!("{endpoint_id}:{event_seq}")),
                ("state", status.to_string()),
            ],
        ),
        IdentityUnreadable { .. } => plain(Code::Unavailable, "IDENTITY_UNREADABLE", r),
    }
}

fn plain(code: Code, reason: &'static str, error: &dyn std::fmt::Display) -> Classified {
    with(code, reason, error, [])
}

fn with<const N: usize>(
    code: Code,
    reason: &'static str,
    error: &dyn std::fmt::Display,
    metadata: [(&str, String); N],
) -> Classified {
    Classified {
        code,
        reason,
        message: error.to_string(),
        metadata: metadata.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// Longest error message sent, in characters. Messages quote a caller's input through
/// [`crate::domain::quote`] (64 characters at most); this bound is the backstop for any
/// that does not, so no input of any length comes back whole in a message — which goes out
/// twice, in `grpc-message` and in the status details, both headers clients limit (grpcio
/// refuses metadata over 8 KiB as RESOURCE_EXHAUSTED, hiding the real error).
pub const MAX_ERROR_MESSAGE_CHARS: usize = 1024;

/// Longest ErrorInfo metadata value sent whole, in characters: the longest id the ledger
/// accepts (`MAX_ID_BYTES`), so an id a client sent comes back as it was; a longer value
/// is not an id, and only its first [`QUOTED_INPUT_MAX_CHARS`] characters and `…` are sent.
pub const MAX_ERROR_METADATA_CHARS: usize = crate::domain::limits::MAX_ID_BYTES;

/// `text` cut to `max` characters, with `…` if it was longer.
fn bounded(text: String, max: usize, keep: usize) -> String {
    match text.char_indices().nth(max) {
        None => text,
        Some(_) => {
            let end = text.char_indices().nth(keep).map_or(text.len(), |(end, _)| end);
            format!("{}…", &text[..end])
        }
    }
}

/// Every error status with an ErrorInfo is made here: `REASON: message`, the reason and
/// metadata in the detail, message and metadata bounded (no input of any length echoed).
/// An INVALID_ARGUMENT that names its `field` also carries a `google.rpc.BadRequest` with
/// that field's violation, the detail generic clients look for.
pub fn error_status(code: Code, reason: &'static str, message: &str, metadata: HashMap<String, String>) -> Status {
    let (message, metadata) = bound(format!("{reason}: {message}"), metadata);
    let field = metadata.get("field").filter(|_| code == Code::InvalidArgument).cloned();
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if let Some(field) = field {
        details.add_bad_request_violation(field, message.clone());
    }
    Status::with_error_details(code, message, details)
}

fn bound(message: String, metadata: HashMap<String, String>) -> (String, HashMap<String, String>) {
    let metadata = metadata
        .into_iter()
        .map(|(key, value)| (key, bounded(value, MAX_ERROR_METADATA_CHARS, QUOTED_INPUT_MAX_CHARS)))
        .collect();
    (
        bounded(message, MAX_ERROR_MESSAGE_CHARS, MAX_ERROR_MESSAGE_CHARS),
        metadata,
    )
}

impl Classified {
    /// As a gRPC status: `REASON: message`, with an ErrorInfo detail.
    pub fn into_status(self) -> Status {
        error_status(self.code, self.reason, &self.message, self.metadata)
    }

    /// As the error result of one command in a batch, bounded as a status is.
    pub fn into_batch_error(self) -> proto::Error {
        let (message, metadata) = bound(self.message, self.metadata);
        proto::Error {
            code: code_name(self.code).to_string(),
            reason: self.reason.to_string(),
            message,
            metadata,
        }
    }
}

/// Maps an engine error to a gRPC status.
pub fn to_status(error: EngineError) -> Status {
    classify(&error).into_status()
}

/// A wrong link token: PERMISSION_DENIED / LINK_TOKEN_MISMATCH, with the tries left. The
/// attempt is recorded (it counts towards the lock), so it is not a rejection.
pub fn link_token_mismatch(link_id: u64, failures_left: u32) -> Status {
    let message = match failures_left {
        0 => format!("wrong token for link {link_id}; the link is now locked"),
        n => format!("wrong token for link {link_id}; {n} tries left before it locks"),
    };
    with(
        Code::PermissionDenied,
        "LINK_TOKEN_MISMATCH",
        &message,
        [
            ("link_id", link_id.to_string()),
            ("failures_left", failures_left.to_string()),
        ],
    )
    .into_status()
}

/// An INVALID_ARGUMENT status for a request field, shaped like a rejection's.
pub fn invalid(field: &'static str, message: impl Into<String>) -> Status {
    classify_rejection(&Rejection::InvalidArgument {
        field,
        message: message.into(),
    })
    .into_status()
}

/// The canonical upper-case name of a code, as gRPC documents it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// NOT_FOUND with a reason, for things that are not ledger entities (operations, records).
pub fn not_found(reason: &'static str, message: impl Into<String>) -> Status {
    Classified {
        code: Code::NotFound,
        reason,
        message: message.into(),
        metadata: HashMap::new(),
    }
    .into_status()
}

/// INTERNAL / STORAGE_ERROR for an I/O failure outside the engine (files the API makes).
/// A query through the indexes that failed: as the store's or the log's error, or, for an
/// index that names records not filed under its key, `STORAGE_ERROR`.
pub fn indexed(error: crate::query::indexed::IndexedError) -> Status {
    use crate::query::indexed::IndexedError;
    match error {
        IndexedError::Store(e) => to_status(EngineError::Store(e)),
        IndexedError::Log(e) => to_status(EngineError::Log(e)),
        mismatch @ IndexedError::Mismatch { .. } => storage(mismatch.to_string()),
    }
}

pub fn storage(message: impl Into<String>) -> Status {
    Classified {
        code: Code::Internal,
        reason: "STORAGE_ERROR",
        message: message.into(),
        metadata: HashMap::new(),
    }
    .into_status()
}

/// UNAVAILABLE while the server opens its log and restores state: retry shortly.
/// The server is stopping: new calls are refused and open streams end with this.
pub fn shutting_down() -> Status {
    Classified {
        code: Code::Unavailable,
        reason: "SHUTTING_DOWN",
        message: "the server is stopping; retry against another instance or after it restarts".into(),
        metadata: HashMap::new(),
    }
    .into_status()
}

pub fn recovering() -> Status {
    Classified {
        code: Code::Unavailable,
        reason: "RECOVERING",
        message: "the ledger is recovering (verifying its log and restoring state); retry shortly".into(),
        metadata: HashMap::new(),
    }
    .into_status()
}

/// DATA_LOSS when the log was refused at start: retrying cannot help, an operator must.
pub fn log_refused(reason: &str) -> Status {
    Classified {
        code: Code::DataLoss,
        reason: "LOG_REFUSED",
        message: format!("the ledger refused its log and serves nothing: {reason}"),
        metadata: HashMap::new(),
    }
    .into_status()
}

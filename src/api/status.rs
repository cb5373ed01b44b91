//! The one place where errors become gRPC status codes, with a machine-readable reason in
//! a `google.rpc.ErrorInfo` detail (domain `tally.v1`) and at the start of the message.

use super::proto;
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

impl Classified {
    /// As a gRPC status: `REASON: message`, with an ErrorInfo detail.
    pub fn into_status(self) -> Status {
        let details = ErrorDetails::with_error_info(self.reason, ERROR_DOMAIN, self.metadata);
        Status::with_error_details(self.code, format!("{}: {}", self.reason, self.message), details)
    }

    /// As the error result of one command in a batch.
    pub fn into_batch_error(self) -> proto::Error {
        proto::Error {
            code: code_name(self.code).to_string(),
            reason: self.reason.to_string(),
            message: self.message,
            metadata: self.metadata,
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

//! Protects the one mapping from errors to gRPC status codes and reasons (docs/API.md's
//! table), including the errors the other tests cannot provoke on demand: a full inbox, a
//! log that stops verifying, a refused permission.

use tally::api::status::{classify, code_name};
use tally::domain::{HoldStatus, Rejection};
use tally::engine::EngineError;
use tally::log::LogError;

#[test]
fn every_error_has_its_documented_code_and_reason() {
    let table: Vec<(EngineError, &str, &str)> = vec![
        (
            Rejection::InvalidArgument {
                field: "amount",
                message: "x".into(),
            }
            .into(),
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
        ),
        (
            Rejection::ManualRewardTooLarge { points: 1, limit: 1 }.into(),
            "INVALID_ARGUMENT",
            "MANUAL_REWARD_TOO_LARGE",
        ),
        (
            Rejection::IdempotencyConflict {
                field: "amount",
                original_sequence: 3,
            }
            .into(),
            "ALREADY_EXISTS",
            "IDEMPOTENCY_CONFLICT",
        ),
        (
            Rejection::AccountNotFound { account: "p".into() }.into(),
            "NOT_FOUND",
            "ACCOUNT_NOT_FOUND",
        ),
        (
            Rejection::HoldNotFound { hold_id: 1 }.into(),
            "NOT_FOUND",
            "HOLD_NOT_FOUND",
        ),
        (
            Rejection::InsufficientPoints {
                available: 1,
                requested: 2,
            }
            .into(),
            "FAILED_PRECONDITION",
            "INSUFFICIENT_POINTS",
        ),
        (
            Rejection::HoldExpired {
                hold_id: 1,
                expires_at_us: 2,
            }
            .into(),
            "FAILED_PRECONDITION",
            "HOLD_EXPIRED",
        ),
        (
            Rejection::HoldAlreadyResolved {
                hold_id: 1,
                status: HoldStatus::Committed,
            }
            .into(),
            "FAILED_PRECONDITION",
            "HOLD_ALREADY_COMMITTED",
        ),
        (
            Rejection::HoldAlreadyResolved {
                hold_id: 1,
                status: HoldStatus::Released,
            }
            .into(),
            "FAILED_PRECONDITION",
            "HOLD_ALREADY_RELEASED",
        ),
        (
            Rejection::HoldAlreadyResolved {
                hold_id: 1,
                status: HoldStatus::Expired,
            }
            .into(),
            "FAILED_PRECONDITION",
            "HOLD_ALREADY_EXPIRED",
        ),
        (
            Rejection::CommitExceedsHold {
                hold_id: 1,
                held: 1,
                requested: 2,
            }
            .into(),
            "FAILED_PRECONDITION",
            "COMMIT_EXCEEDS_HOLD",
        ),
        (
            Rejection::TooManyHolds {
                account: "p".into(),
                limit: 1,
            }
            .into(),
            "FAILED_PRECONDITION",
            "TOO_MANY_HOLDS",
        ),
        (
            Rejection::BalanceOverflow { account: "p".into() }.into(),
            "FAILED_PRECONDITION",
            "BALANCE_OVERFLOW",
        ),
        (
            Rejection::ManualRewardRateLimited {
                staff_id: "s".into(),
                limit: 10,
            }
            .into(),
            "RESOURCE_EXHAUSTED",
            "MANUAL_REWARD_RATE_LIMITED",
        ),
        (
            Rejection::Unauthenticated("x".into()).into(),
            "UNAUTHENTICATED",
            "UNAUTHENTICATED",
        ),
        (
            Rejection::PermissionDenied("x".into()).into(),
            "PERMISSION_DENIED",
            "PERMISSION_DENIED",
        ),
        (EngineError::Busy, "RESOURCE_EXHAUSTED", "INBOX_FULL"),
        (
            EngineError::Unavailable("stopping".into()),
            "UNAVAILABLE",
            "LEDGER_UNAVAILABLE",
        ),
        (
            LogError::Corrupt {
                seq: 9,
                path: "x".into(),
                offset: 0,
                reason: "r".into(),
            }
            .into(),
            "DATA_LOSS",
            "LOG_CORRUPT",
        ),
        (LogError::Poisoned.into(), "INTERNAL", "STORAGE_ERROR"),
    ];
    let api_doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/API.md")).unwrap();
    for (error, code, reason) in table {
        let classified = classify(&error);
        assert_eq!(
            (code_name(classified.code), classified.reason),
            (code, reason),
            "{error}"
        );
        let documented = reason
            .strip_prefix("HOLD_ALREADY_")
            .map_or(reason.to_string(), |_| "HOLD_ALREADY_COMMITTED".into());
        assert!(
            api_doc.contains(&format!("`{documented}`")),
            "docs/API.md documents {reason}"
        );
        let status = classified.into_status();
        assert!(status.message().starts_with(reason), "{}", status.message());
    }
}

#[test]
fn a_conflict_names_the_field_and_the_original_sequence() {
    let classified = classify(
        &Rejection::IdempotencyConflict {
            field: "amount",
            original_sequence: 42,
        }
        .into(),
    );
    assert_eq!(classified.metadata.get("field").map(String::as_str), Some("amount"));
    assert_eq!(
        classified.metadata.get("original_sequence").map(String::as_str),
        Some("42")
    );
    let batch = classified.into_batch_error();
    assert_eq!(
        (batch.code.as_str(), batch.reason.as_str()),
        ("ALREADY_EXISTS", "IDEMPOTENCY_CONFLICT")
    );
}

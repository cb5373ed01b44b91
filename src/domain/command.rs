//! Commands: what callers ask the ledger to do. A command is validated and decided against
//! the state; it becomes events only if it is accepted. Serializable only for the write-state
//! snapshot, a cache that is rebuilt from the log when it does not decode.

use serde::{Deserialize, Serialize};

/// Who sent a command and how to recognize a retry of it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CommandMeta {
    /// Tenant (loyalty program) the command acts in.
    pub tenant: String,
    /// Authenticated subject that sent the command; recorded as the events' actor.
    pub actor: String,
    pub correlation_id: String,
    pub causation_id: String,
    /// Absent only for commands the engine submits itself (the expiry pulse).
    pub idempotency: Option<IdempotencyKey>,
}

/// The caller-chosen identity of an operation: `(tenant, key, scope)` with the tenant from
/// [`CommandMeta`]. The same key in another scope is a different operation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct IdempotencyKey {
    pub key: String,
    pub scope: String,
}

/// A request to change the ledger, normalized (defaults filled in) so that two requests that
/// mean the same thing compare equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Opens an account; opening an existing one replays the original opening.
    OpenAccount { account: String },
    /// Credits points to an account.
    Award { account: String, source: AwardRequest },
    /// Places a hold of `amount` points for `ttl_seconds`.
    Reserve {
        account: String,
        amount: u64,
        ttl_seconds: u32,
    },
    /// Finalizes a hold: all of it (`amount: None`) or part, releasing the rest.
    Commit { hold_id: u64, amount: Option<u64> },
    /// Cancels a hold.
    Release { hold_id: u64 },
    /// The sweeper's pulse: expires up to `limit` holds whose `expires_at` has passed.
    ExpireDue { limit: u32 },
}

/// Where awarded points come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AwardRequest {
    /// Gameplay accrual from a closed rating slip; points follow from theo.
    RatingSlip {
        slip_id: String,
        game: String,
        average_bet_cents: u64,
        decisions_per_hour: u32,
        minutes_played: u32,
        house_edge_bps: u32,
    },
    /// A staff comp; `staff_id` is the authenticated caller, never a request field.
    Manual {
        staff_id: String,
        points: u64,
        reason: String,
        /// Empty when the comp has no external reward id.
        external_reward_id: String,
    },
    /// Points from a promotion engine.
    Promotion {
        points: u64,
        promotion_id: String,
        external_reward_id: String,
    },
}

impl Command {
    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::OpenAccount { .. } => "open_account",
            Command::Award { .. } => "award",
            Command::Reserve { .. } => "reserve",
            Command::Commit { .. } => "commit",
            Command::Release { .. } => "release",
            Command::ExpireDue { .. } => "expire_due",
        }
    }

    /// The first field in which `other` differs from `self`, as a request field path
    /// (`amount`, `rating_slip.minutes_played`), or `None` if the two are the same request.
    pub fn first_difference(&self, other: &Command) -> Option<&'static str> {
        use Command::*;
        match (self, other) {
            (OpenAccount { account: a }, OpenAccount { account: b }) => diff(&[(a != b, "account_id")]),
            (Award { account: a, source: s }, Award { account: b, source: t }) => {
                diff(&[(a != b, "account_id")]).or_else(|| s.first_difference(t))
            }
            (
                Reserve {
                    account: a,
                    amount: x,
                    ttl_seconds: t,
                },
                Reserve {
                    account: b,
                    amount: y,
                    ttl_seconds: u,
                },
            ) => diff(&[(a != b, "account_id"), (x != y, "amount"), (t != u, "ttl_seconds")]),
            (Commit { hold_id: a, amount: x }, Commit { hold_id: b, amount: y }) => {
                diff(&[(a != b, "hold_id"), (x != y, "amount")])
            }
            (Release { hold_id: a }, Release { hold_id: b }) => diff(&[(a != b, "hold_id")]),
            (ExpireDue { limit: a }, ExpireDue { limit: b }) => diff(&[(a != b, "limit")]),
            _ => Some("command"),
        }
    }
}

impl AwardRequest {
    fn first_difference(&self, other: &AwardRequest) -> Option<&'static str> {
        use AwardRequest::*;
        match (self, other) {
            (
                RatingSlip {
                    slip_id: a1,
                    game: a2,
                    average_bet_cents: a3,
                    decisions_per_hour: a4,
                    minutes_played: a5,
                    house_edge_bps: a6,
                },
                RatingSlip {
                    slip_id: b1,
                    game: b2,
                    average_bet_cents: b3,
                    decisions_per_hour: b4,
                    minutes_played: b5,
                    house_edge_bps: b6,
                },
            ) => diff(&[
                (a1 != b1, "rating_slip.slip_id"),
                (a2 != b2, "rating_slip.game"),
                (a3 != b3, "rating_slip.average_bet_cents"),
                (a4 != b4, "rating_slip.decisions_per_hour"),
                (a5 != b5, "rating_slip.minutes_played"),
                (a6 != b6, "rating_slip.house_edge_bps"),
            ]),
            (
                Manual {
                    staff_id: a1,
                    points: a2,
                    reason: a3,
                    external_reward_id: a4,
                },
                Manual {
                    staff_id: b1,
                    points: b2,
                    reason: b3,
                    external_reward_id: b4,
                },
            ) => diff(&[
                (a1 != b1, "manual.staff_id"),
                (a2 != b2, "manual.points"),
                (a3 != b3, "manual.reason"),
                (a4 != b4, "manual.external_reward_id"),
            ]),
            (
                Promotion {
                    points: a1,
                    promotion_id: a2,
                    external_reward_id: a3,
                },
                Promotion {
                    points: b1,
                    promotion_id: b2,
                    external_reward_id: b3,
                },
            ) => diff(&[
                (a1 != b1, "promotion.points"),
                (a2 != b2, "promotion.promotion_id"),
                (a3 != b3, "promotion.external_reward_id"),
            ]),
            _ => Some("source"),
        }
    }
}

fn diff(fields: &[(bool, &'static str)]) -> Option<&'static str> {
    fields.iter().find(|(differs, _)| *differs).map(|(_, name)| *name)
}

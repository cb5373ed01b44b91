//! Commands: what callers ask the ledger to do. A command is validated and decided against
//! the state; it becomes events only if it is accepted. Serializable only for the write-state
//! snapshot, a cache that is rebuilt from the log when it does not decode.

use super::event::{ExternalBody, RedriveRequested};
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
    /// Absent only for commands the engine submits itself (the expiry and retry pulses).
    pub idempotency: Option<IdempotencyKey>,
    /// What the authenticated caller may do, as its credential says. `None` for the
    /// system's own callers (the sweeper, ingest retries, the delivery worker, offline
    /// tools). The API checks permissions before it submits; the rules that must record a
    /// refusal (a comp by a caller without `loyalty:award`) check them here. Not recorded:
    /// the record's actor is the caller.
    pub grants: Option<super::access::Permissions>,
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
    OpenAccount {
        account: String,
    },
    /// Credits points to an account.
    Award {
        account: String,
        source: AwardRequest,
    },
    /// Places a hold of `amount` points for `ttl_seconds`.
    Reserve {
        account: String,
        amount: u64,
        ttl_seconds: u32,
    },
    /// Finalizes a hold: all of it (`amount: None`) or part, releasing the rest.
    Commit {
        hold_id: u64,
        amount: Option<u64>,
    },
    /// Cancels a hold.
    Release {
        hold_id: u64,
    },
    /// The sweeper's pulse: expires up to `limit` holds whose `expires_at` has passed.
    ExpireDue {
        limit: u32,
    },
    /// An external event from a partner system (`docs/INGEST.md`): appended as received,
    /// then processed. Its idempotency identity is `(tenant, external_id, ingest:<source>)`.
    Ingest {
        source: String,
        external_id: String,
        body: ExternalBody,
    },
    /// The ingest worker's pulse: one more attempt at the earliest retry that is due. One
    /// receipt per command, so that each is decided against the state the one before left.
    RetryDue,
    /// An operator asks to re-drive these letters in this order (the plan, recorded so that
    /// a retry of the request re-drives the same ones); each is then a [`Command::Redrive`].
    RequestRedrive(RedriveRequested),
    /// An operator re-drives one dead letter; it must be the head of its member's sequence.
    Redrive {
        receipt_seq: u64,
    },
    /// Links `account` to an account in another system, pending proof: `token_hash` is the
    /// keyed hash of the one-time token the caller was given (the token never reaches the
    /// ledger). `ttl_seconds` 0 means the default.
    CreateLink {
        account: String,
        external_system: String,
        external_account_id: String,
        token_hash: [u8; 32],
        ttl_seconds: u32,
    },
    /// The proof: the keyed hash of the token shown.
    VerifyLink {
        link_id: u64,
        token_hash: [u8; 32],
    },
    RevokeLink {
        link_id: u64,
        reason: String,
    },
    /// An operator removes a dead letter without applying it, saying why.
    Discard {
        receipt_seq: u64,
        reason: String,
    },
    /// A trusted service asserts a user: a session for `subject` with `role`. The API draws
    /// `session_id`. `ttl_seconds` 0 means the default.
    StartSession {
        session_id: String,
        subject: String,
        role: String,
        ttl_seconds: u32,
    },
    RefreshSession {
        session_id: String,
        ttl_seconds: u32,
    },
    /// A logout.
    EndSession {
        session_id: String,
        reason: String,
    },
    /// An admin makes an API key; the API draws `key_id` and derives the secret from its
    /// key `signing_kid`; the ledger sees only the secret's `fingerprint`.
    CreateApiKey {
        key_id: String,
        name: String,
        role: String,
        signing_kid: String,
        fingerprint: [u8; 32],
    },
    RevokeApiKey {
        key_id: String,
        reason: String,
    },
    /// An admin registers an endpoint; the API draws the nonce its secret is derived from.
    RegisterEndpoint {
        config: super::event::EndpointConfig,
        secret_kid: String,
        secret_nonce: String,
    },
    /// New settings and status of an endpoint; `None`: as they are (decided against the
    /// state, so that a settings change never undoes a pause that came before it).
    UpdateEndpoint {
        endpoint_id: u64,
        config: Option<super::event::EndpointConfig>,
        status: Option<super::event::EndpointStatus>,
    },
    /// The delivery worker is about to make an at-most-once attempt.
    DispatchDelivery {
        endpoint_id: u64,
        event_seq: u64,
        attempt: u32,
    },
    /// The delivery worker reports an attempt.
    RecordDelivery {
        endpoint_id: u64,
        event_seq: u64,
        attempt: u32,
        result: AttemptResult,
    },
    /// The receiver confirms a delivery.
    AckDelivery {
        endpoint_id: u64,
        event_seq: u64,
        receipt: String,
    },
    /// An operator retries failed deliveries by hand.
    RetryDeliveries {
        selection: RetrySelection,
        reason: String,
    },
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
    /// The sweeper's pulses (hold expiry, ingest retries): submitted on a timer by the
    /// server itself, not by a caller.
    pub fn is_pulse(&self) -> bool {
        matches!(self, Command::ExpireDue { .. } | Command::RetryDue)
    }

    /// Short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Command::OpenAccount { .. } => "open_account",
            Command::Award { .. } => "award",
            Command::Reserve { .. } => "reserve",
            Command::Commit { .. } => "commit",
            Command::Release { .. } => "release",
            Command::ExpireDue { .. } => "expire_due",
            Command::Ingest { .. } => "ingest",
            Command::RetryDue => "retry_due",
            Command::RequestRedrive(_) => "request_redrive",
            Command::CreateLink { .. } => "create_link",
            Command::VerifyLink { .. } => "verify_link",
            Command::RevokeLink { .. } => "revoke_link",
            Command::Redrive { .. } => "redrive",
            Command::Discard { .. } => "discard",
            Command::StartSession { .. } => "start_session",
            Command::RefreshSession { .. } => "refresh_session",
            Command::EndSession { .. } => "end_session",
            Command::CreateApiKey { .. } => "create_api_key",
            Command::RevokeApiKey { .. } => "revoke_api_key",
            Command::RegisterEndpoint { .. } => "register_endpoint",
            Command::UpdateEndpoint { .. } => "update_endpoint",
            Command::DispatchDelivery { .. } => "dispatch_delivery",
            Command::RecordDelivery { .. } => "record_delivery",
            Command::AckDelivery { .. } => "ack_delivery",
            Command::RetryDeliveries { .. } => "retry_deliveries",
        }
    }

    /// The first field in which `other` differs from `self`, as a request field path
    /// (`amount`, `rating_slip.minutes_played`), or `None` if the two are the same request.
    pub fn first_difference(&self, other: &Command) -> Option<&'static str> {
        self.print().first_difference(&other.print())
    }

    /// The request's print: what the idempotency index keeps of it.
    pub fn print(&self) -> RequestPrint {
        use AwardRequest::*;
        let text = |s: &str| text_digest(s);
        let (shape, fields): (Shape, &[u64]) = match self {
            Command::OpenAccount { account } => (Shape::OpenAccount, &[text(account)]),
            Command::Award { account, source } => match source {
                RatingSlip {
                    slip_id,
                    game,
                    average_bet_cents,
                    decisions_per_hour,
                    minutes_played,
                    house_edge_bps,
                } => (
                    Shape::AwardRatingSlip,
                    &[
                        text(account),
                        text(slip_id),
                        text(game),
                        *average_bet_cents,
                        *decisions_per_hour as u64,
                        *minutes_played as u64,
                        *house_edge_bps as u64,
                    ],
                ),
                Manual {
                    staff_id,
                    points,
                    reason,
                    external_reward_id,
                } => (
                    Shape::AwardManual,
                    &[
                        text(account),
                        text(staff_id),
                        *points,
                        text(reason),
                        text(external_reward_id),
                    ],
                ),
                Promotion {
                    points,
                    promotion_id,
                    external_reward_id,
                } => (
                    Shape::AwardPromotion,
                    &[text(account), *points, text(promotion_id), text(external_reward_id)],
                ),
            },
            Command::Reserve {
                account,
                amount,
                ttl_seconds,
            } => (Shape::Reserve, &[text(account), *amount, *ttl_seconds as u64]),
            Command::Commit { hold_id, amount } => (
                Shape::Commit,
                // `None` (the whole hold) must differ from every `Some(n)`.
                &[*hold_id, amount.map_or(u64::MAX, |n| n), amount.is_some() as u64],
            ),
            Command::Release { hold_id } => (Shape::Release, &[*hold_id]),
            Command::ExpireDue { limit } => (Shape::ExpireDue, &[*limit as u64]),
            Command::Ingest {
                source,
                external_id,
                body,
            } => {
                let checksum = body.checksum();
                (
                    Shape::Ingest,
                    &[
                        text(source),
                        text(external_id),
                        body.kind() as u64,
                        u64::from_le_bytes(checksum[..8].try_into().expect("8 bytes")),
                    ],
                )
            }
            Command::RetryDue => (Shape::RetryDue, &[]),
            // The request, not its plan: a retry plans again (the queue moved on) and must
            // still be recognized as the same request.
            Command::RequestRedrive(r) => (
                Shape::RequestRedrive,
                &[
                    r.through_receipt,
                    r.kind.map_or(0, |k| k as u64 + 1),
                    text(&r.member_id),
                    r.received_from_us,
                    r.received_to_us,
                    r.max_letters as u64,
                ],
            ),
            Command::Redrive { receipt_seq } => (Shape::Redrive, &[*receipt_seq]),
            // The token is the server's, drawn anew for each request: a retry is the same
            // request whatever token it was given.
            Command::CreateLink {
                account,
                external_system,
                external_account_id,
                ttl_seconds,
                ..
            } => (
                Shape::CreateLink,
                &[
                    text(account),
                    text(external_system),
                    text(external_account_id),
                    *ttl_seconds as u64,
                ],
            ),
            Command::VerifyLink { link_id, token_hash } => (
                Shape::VerifyLink,
                &[
                    *link_id,
                    u64::from_le_bytes(token_hash[..8].try_into().expect("8 bytes")),
                ],
            ),
            Command::RevokeLink { link_id, reason } => (Shape::RevokeLink, &[*link_id, text(reason)]),
            Command::Discard { receipt_seq, reason } => (Shape::Discard, &[*receipt_seq, text(reason)]),
            // The session id and the key id are the server's, drawn anew for each request:
            // a retry is the same request whatever it was given.
            Command::StartSession {
                subject,
                role,
                ttl_seconds,
                ..
            } => (Shape::StartSession, &[text(subject), text(role), *ttl_seconds as u64]),
            Command::RefreshSession {
                session_id,
                ttl_seconds,
            } => (Shape::RefreshSession, &[text(session_id), *ttl_seconds as u64]),
            Command::EndSession { session_id, reason } => (Shape::EndSession, &[text(session_id), text(reason)]),
            Command::CreateApiKey { name, role, .. } => (Shape::CreateApiKey, &[text(name), text(role)]),
            Command::RevokeApiKey { key_id, reason } => (Shape::RevokeApiKey, &[text(key_id), text(reason)]),
            // The nonce is the server's, drawn anew for each request.
            Command::RegisterEndpoint { config, .. } => {
                (Shape::RegisterEndpoint, &[text(&config.url), encoded_digest(config)])
            }
            Command::UpdateEndpoint {
                endpoint_id, status, ..
            } => (
                Shape::UpdateEndpoint,
                &[*endpoint_id, status.map_or(0, |s| s as u64 + 1)],
            ),
            Command::DispatchDelivery {
                endpoint_id,
                event_seq,
                attempt,
            } => (Shape::DeliveryAttempt, &[*endpoint_id, *event_seq, u64::from(*attempt)]),
            Command::RecordDelivery {
                endpoint_id,
                event_seq,
                attempt,
                ..
            } => (Shape::DeliveryAttempt, &[*endpoint_id, *event_seq, u64::from(*attempt)]),
            Command::AckDelivery {
                endpoint_id,
                event_seq,
                receipt,
            } => (Shape::AckDelivery, &[*endpoint_id, *event_seq, text(receipt)]),
            Command::RetryDeliveries { selection, reason } => {
                (Shape::RetryDeliveries, &[encoded_digest(selection), text(reason)])
            }
        };
        let mut print = RequestPrint {
            shape,
            fields: [0; MAX_PRINT_FIELDS],
        };
        print.fields[..fields.len()].copy_from_slice(fields);
        print
    }
}

/// Fields in the largest request (an accrual: the account and six rating-slip fields).
pub const MAX_PRINT_FIELDS: usize = 7;

/// What the durable idempotency index keeps of an accepted request, instead of the request:
/// its shape and one 64-bit value per field — numbers as they are, text as the first 8
/// bytes of its blake3 hash. Enough to tell a retry (every field equal) from a conflict and
/// to name the first differing field, in 64 bytes whatever the request's size. Two different
/// texts are taken for equal with probability 2^-64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPrint {
    pub shape: Shape,
    pub fields: [u64; MAX_PRINT_FIELDS],
}

/// The kind of a request, and of an award its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shape {
    OpenAccount,
    AwardRatingSlip,
    AwardManual,
    AwardPromotion,
    Reserve,
    Commit,
    Release,
    ExpireDue,
    Ingest,
    RetryDue,
    Redrive,
    Discard,
    RequestRedrive,
    CreateLink,
    VerifyLink,
    RevokeLink,
    StartSession,
    RefreshSession,
    EndSession,
    CreateApiKey,
    RevokeApiKey,
    RegisterEndpoint,
    UpdateEndpoint,
    DeliveryAttempt,
    AckDelivery,
    RetryDeliveries,
}

impl Shape {
    /// The request field path of each printed field.
    fn field_names(self) -> &'static [&'static str] {
        match self {
            Shape::OpenAccount => &["account_id"],
            Shape::AwardRatingSlip => &[
                "account_id",
                "rating_slip.slip_id",
                "rating_slip.game",
                "rating_slip.average_bet_cents",
                "rating_slip.decisions_per_hour",
                "rating_slip.minutes_played",
                "rating_slip.house_edge_bps",
            ],
            Shape::AwardManual => &[
                "account_id",
                "manual.staff_id",
                "manual.points",
                "manual.reason",
                "manual.external_reward_id",
            ],
            Shape::AwardPromotion => &[
                "account_id",
                "promotion.points",
                "promotion.promotion_id",
                "promotion.external_reward_id",
            ],
            Shape::Reserve => &["account_id", "amount", "ttl_seconds"],
            Shape::Commit => &["hold_id", "amount", "amount"],
            Shape::Release => &["hold_id"],
            Shape::ExpireDue => &["limit"],
            Shape::Ingest => &["source", "external_id", "type", "payload"],
            Shape::RetryDue => &[],
            Shape::Redrive => &["receipt_seq"],
            Shape::CreateLink => &["account_id", "external_system", "external_account_id", "ttl_seconds"],
            Shape::VerifyLink => &["link_id", "token"],
            Shape::RevokeLink => &["link_id", "reason"],
            Shape::RequestRedrive => &[
                "receipt_sequence",
                "type",
                "member_id",
                "received_from_us",
                "received_to_us",
                "max_count",
            ],
            Shape::Discard => &["receipt_seq", "reason"],
            Shape::StartSession => &["subject", "role", "ttl_seconds"],
            Shape::RefreshSession => &["session_id", "ttl_seconds"],
            Shape::EndSession => &["session_id", "reason"],
            Shape::CreateApiKey => &["name", "role"],
            Shape::RevokeApiKey => &["key_id", "reason"],
            Shape::RegisterEndpoint => &["url", "endpoint"],
            Shape::UpdateEndpoint => &["endpoint_id", "status"],
            Shape::DeliveryAttempt => &["endpoint_id", "event_sequence", "attempt"],
            Shape::AckDelivery => &["endpoint_id", "event_sequence", "receipt"],
            Shape::RetryDeliveries => &["selection", "reason"],
        }
    }

    /// Whether the request was an award, of any source.
    pub fn is_award(self) -> bool {
        matches!(
            self,
            Shape::AwardRatingSlip | Shape::AwardManual | Shape::AwardPromotion
        )
    }
}

impl RequestPrint {
    /// The first field in which `other` differs, or `None` if the two are the same request.
    pub fn first_difference(&self, other: &RequestPrint) -> Option<&'static str> {
        if self.shape != other.shape {
            // Two awards from different sources: the account first, then "source".
            if self.shape.is_award() && other.shape.is_award() {
                return Some(if self.fields[0] != other.fields[0] {
                    "account_id"
                } else {
                    "source"
                });
            }
            return Some("command");
        }
        let names = self.shape.field_names();
        (0..names.len())
            .find(|&i| self.fields[i] != other.fields[i])
            .map(|i| names[i])
    }
}

/// The first 8 bytes of the blake3 hash of a value's MessagePack encoding: the encoding its
/// events persist in the log, so it stays what it is across builds (a `Debug` text would not:
/// a retry after an upgrade would be taken for a conflict).
fn encoded_digest(value: &impl Serialize) -> u64 {
    let bytes = rmp_serde::to_vec(value).expect("a persisted type encodes");
    let hash = blake3::hash(&bytes);
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The first 8 bytes of a text's blake3 hash.
fn text_digest(text: &str) -> u64 {
    let hash = blake3::hash(text.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// What the worker saw of one attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// 0: no HTTP answer.
    pub status_code: u16,
    pub latency_us: u64,
    /// Empty on a 2xx answer.
    pub error: String,
}

/// Which deliveries a retry by hand is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RetrySelection {
    One {
        endpoint_id: u64,
        event_seq: u64,
    },
    /// `to_us` 0: no end.
    FailedBetween {
        endpoint_id: u64,
        from_us: u64,
        to_us: u64,
    },
}

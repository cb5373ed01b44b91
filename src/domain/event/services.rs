//! The payloads of links, refusals, credentials and deliveries: facts that change no balance.

use serde::{Deserialize, Serialize};

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
    pub config: EndpointConfig,
    pub secret_kid: String,
    pub secret_nonce: String,
}

/// New settings or status (active, paused, deleted) of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointUpdated {
    pub endpoint_id: u64,
    pub config: EndpointConfig,
    pub status: EndpointStatus,
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

/// How often a receiver may get one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Semantics {
    /// One attempt, recorded before it is made; never retried, even after a crash.
    AtMostOnce,
    /// Retried until delivered (acknowledged, in explicit-ack mode) or failed for good.
    AtLeastOnce,
    /// At least once, with a stable idempotency key the receiver deduplicates on, and an
    /// explicit ack: effectively once if the receiver keeps its promise.
    ExactlyOnce,
}

impl Semantics {
    pub fn name(self) -> &'static str {
        match self {
            Semantics::AtMostOnce => "at_most_once",
            Semantics::AtLeastOnce => "at_least_once",
            Semantics::ExactlyOnce => "exactly_once",
        }
    }
}

/// What counts as delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckMode {
    /// Any 2xx answer.
    Status2xx,
    /// A 2xx answer, then the receiver's `Ack` within the ack timeout; without it the event
    /// is delivered again.
    Explicit,
}

/// An endpoint's settings, replaced whole by an update.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointConfig {
    pub url: String,
    /// Event kind names; empty: every deliverable kind.
    pub kinds: Vec<String>,
    pub semantics: Semantics,
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub ack_mode: AckMode,
    pub ack_timeout_seconds: u32,
    /// Per account, a delivery waits until the ones before it are finished.
    pub ordered: bool,
    pub request_timeout_ms: u32,
}

/// Whether an endpoint is sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndpointStatus {
    Active,
    /// Deliveries accumulate, nothing is sent.
    Paused,
    /// No new deliveries; open ones are dropped.
    Deleted,
}

impl EndpointStatus {
    pub fn name(self) -> &'static str {
        match self {
            EndpointStatus::Active => "active",
            EndpointStatus::Paused => "paused",
            EndpointStatus::Deleted => "deleted",
        }
    }
}

//! Tally: a loyalty-points ledger, event-sourced on an append-only, blake3-chained log.
//!
//! - [`domain`]: the rules, pure. Commands, events, `decide` and `evolve`, limits. No I/O.
//! - [`log`]: the source of truth. Segment files of batch frames, each record chained by
//!   blake3; recovery of a torn tail; verification; a sparse time and sequence index, and
//!   a dense in-memory locator for reads of chosen records by sequence number.
//! - [`projection`]: indexes that point into the log (history, idempotency, correlation,
//!   actor): posting lists of sequence numbers in sled, folded from the log, rebuilt from it.
//! - [`query`]: reading the past: replays, subscriptions, index queries, as-of reads.
//! - [`engine`]: the single-writer sequencer with group commit, its bounded inbox, the
//!   projector thread and the sweeper (hold expiry and the ingest pipeline's retries).
//! - [`api`]: the gRPC services (tonic), the door that authenticates and authorizes every
//!   call (tokens, signed calls, the permission table) and the one mapping from errors to
//!   gRPC status codes.
//! - [`deliverer`]: the delivery worker: POSTs due events to endpoints (signed), records
//!   each outcome as a command.
//! - [`outbound`]: outbound HTTP (allowed destinations, trusted authorities, one POST),
//!   used by the worker and by the API's check of an endpoint at registration.
//! - [`secrets`]: the key ring, the secrets derived from it, HMAC and randomness, used by
//!   the API's door and the worker alike.
//! - [`config`]: every setting of the server, as one TOML document with defaults,
//!   overridden by environment variables and flags.
//! - [`hex`]: bytes as hex and back, a leaf every layer may use.
//! - [`telemetry`]: the Prometheus endpoint and the gauges sampled at each scrape.
//! - [`operator`]: `tally ingest` and `tally dlq`, gRPC clients of a running server.
//! - [`loadgen`]: `tally bench`, the load generator.

pub mod api;
pub mod config;
pub mod deliverer;
pub mod domain;
pub mod engine;
pub mod hex;
pub mod loadgen;
pub mod log;
pub mod operator;
pub mod outbound;
pub mod projection;
pub mod query;
pub mod secrets;
pub mod telemetry;

/// What `fuzz/` and `tests/fuzz_regressions.rs` need and the API does not give: not an API.
#[doc(hidden)]
pub mod fuzzing {
    /// The trait that decodes the wire messages of [`crate::api::proto`].
    pub use prost::Message;
}

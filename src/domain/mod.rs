//! The ledger's rules, pure: commands, events, state, `decide` and `evolve`, limits.
//!
//! Invariant: nothing here does I/O, reads a clock or draws a random number. Time comes in
//! as the timestamp the sequencer will stamp on the events, so replaying the log folds to
//! the same state every time.

pub mod access;
mod account;
mod award;
pub mod command;
mod credentials;
mod decide;
pub mod delivery;
mod endpoints;
pub mod event;
mod evolve;
mod fingerprint;
mod hold;
pub mod identities;
mod ingest;
pub mod limits;
mod link;
pub mod rejection;
mod requests;
mod rules;
pub mod session;
pub mod sharded;
pub mod state;
pub mod tier;

pub use award::{accrual, ANONYMOUS_ACTOR};
pub use command::{AwardRequest, Command, CommandMeta, IdempotencyKey};
pub use decide::{decide, decide_identified};
pub use event::{Effect, Envelope, Event, EventKind, HoldStatus, Record};
pub use evolve::{evolve, evolve_identified, record_identity};
pub use ingest::{validate_body, validate_identity, INGEST_SCOPE_PREFIX};
pub use rejection::{quote, Rejection};
pub use requests::request_of;
pub use rules::{Decision, Emitted, IngestPolicy, Policy, RateTable};
pub use state::{Identity, State};
pub use tier::TierPolicy;

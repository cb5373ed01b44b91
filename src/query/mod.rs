//! Reading the ledger's past: window replays, subscriptions (catch-up then live), an
//! account as of any point, records as JSON lines, timestamps as people write them.
//!
//! Invariant: queries only read (the log, the projections); nothing here changes either.

pub mod asof;
pub mod filter;
pub mod indexed;
pub mod json;
pub mod replay;
pub mod subscribe;
pub mod time;

pub use filter::{EventFilter, Window};
pub use replay::{Progress, Replay};

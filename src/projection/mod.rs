//! Projections: indexes that point into the log, folded from it. Each maps keys (an
//! account, an idempotency key, a correlation id, an actor; always under a tenant) to the
//! sequence numbers of the records filed under them, as posting lists in a sled tree
//! (`postings.rs`); a query reads its records from the log by sequence number. Balances and
//! holds are not copied here: the sequencer answers them, and the past is in the history.
//!
//! The projector folds records into memory (cheap, and visible to queries at once) and
//! writes what it gathered in one flush: at most one row per bucket of each index, in few
//! large sled batches, the checkpoint (the last sequence number the rows cover) in the last
//! one. Each row is written atomically with the postings it holds; a flush cut short
//! leaves some buckets ahead of the checkpoint, and the records folded again after a
//! restart skip, bucket by bucket, what a bucket already holds. sled holds nothing that
//! cannot be rebuilt from the log.
//!
//! Each projection lives in a *generation* of its tree (`history.3`); a rebuild folds into
//! the next generation and swaps it in, so readers never see a half-built projection.
//!
//! Invariant: projections never decide anything; they only follow the log.

mod compare;
pub mod keys;
pub mod postings;
mod read;
mod rebuild;
mod store;
pub mod views;

pub use compare::{Comparison, RowDifference};
pub use read::ReadIndexes;
pub use rebuild::{latest_projection_snapshot, Rebuild, RebuildOutcome, SnapshotInfo};
pub use store::{ProjectionName, Projections, StoreError, StoreOptions, DEFAULT_CACHE_BYTES, FLUSH_AGE, FLUSH_RECORDS};
pub use views::{AccountView, HistoryView, HoldView};

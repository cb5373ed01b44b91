//! The reading side of the projections, as a trait: what queries (and through them the API)
//! read the indexes through. The sled store, [`Projections`], is one implementation; an
//! index in another store, or a scan of records in a test, is another.

use super::keys;
use super::postings;
use super::store::{ProjectionName, Projections, StoreError};

/// Reads the indexes that point into the log: for a key, the sequence numbers of the records
/// filed under it. What a query then reads from the log is its own business.
pub trait ReadIndexes: Send + Sync {
    /// The sequence numbers filed under `key` in `index` in `after_seq + 1 ..= up_to_seq`,
    /// ascending; with `flagged_only`, only those filed with the flag (in history: the
    /// records that move a balance).
    fn filed(
        &self,
        index: ProjectionName,
        key: &[u8],
        after_seq: u64,
        up_to_seq: u64,
        flagged_only: bool,
    ) -> Result<Vec<u64>, StoreError>;

    /// The last sequence number `index` has folded: it answers for every record up to it.
    fn checkpoint(&self, index: ProjectionName) -> Result<u64, StoreError>;

    /// The sequence numbers filed under a key of an index, flagged or not.
    fn seqs(&self, index: ProjectionName, key: &[u8], after_seq: u64, up_to_seq: u64) -> Result<Vec<u64>, StoreError> {
        self.filed(index, key, after_seq, up_to_seq, false)
    }

    /// The sequence numbers of an account's records after `after_seq` and up to
    /// `up_to_seq`; only those that move a balance (the ingest pipeline's left out) when
    /// `ledger_only`.
    fn account_seqs(
        &self,
        tenant: &str,
        account: &str,
        after_seq: u64,
        up_to_seq: u64,
        ledger_only: bool,
    ) -> Result<Vec<u64>, StoreError> {
        let key = keys::account(tenant, account);
        self.filed(ProjectionName::History, &key, after_seq, up_to_seq, ledger_only)
    }
}

impl ReadIndexes for Projections {
    fn filed(
        &self,
        index: ProjectionName,
        key: &[u8],
        after_seq: u64,
        up_to_seq: u64,
        flagged_only: bool,
    ) -> Result<Vec<u64>, StoreError> {
        Ok(self
            .postings(index, key, after_seq, up_to_seq)?
            .into_iter()
            .filter(|&p| !flagged_only || postings::flag_of(p))
            .map(postings::seq_of)
            .collect())
    }

    fn checkpoint(&self, index: ProjectionName) -> Result<u64, StoreError> {
        Projections::checkpoint(self, index)
    }
}

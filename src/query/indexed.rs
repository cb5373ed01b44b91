//! Queries through the indexes: an index gives sequence numbers, the log gives the records
//! (`ReadLog::read_seqs`, a point read each, checked against the chain), and the views
//! are made from the records as they are read.

use crate::domain::Record;
use crate::log::{LogError, ReadLog};
use crate::projection::{keys, HistoryView, ProjectionName, ReadIndexes, StoreError};

/// What can go wrong reading through an index.
#[derive(Debug, thiserror::Error)]
pub enum IndexedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Log(#[from] LogError),
    /// The index named a record that is not filed under its key: the index does not match
    /// this log.
    #[error("projection {projection} names record {seq}, which is not filed under its key; rebuild the projection (tally rebuild)")]
    Mismatch { projection: &'static str, seq: u64 },
}

/// The records at `seqs` (ascending), each checked to be filed under `key` in `index`.
pub fn records(
    reader: &dyn ReadLog,
    index: ProjectionName,
    key: &[u8],
    seqs: &[u64],
) -> Result<Vec<Record>, IndexedError> {
    let records = reader.read_seqs(seqs)?;
    for record in &records {
        if index.entry(record).is_none_or(|(k, _)| k != key) {
            return Err(IndexedError::Mismatch {
                projection: index.name(),
                seq: record.seq,
            });
        }
    }
    Ok(records)
}

/// The two sources an indexed query reads: the index, then the log.
#[derive(Clone, Copy)]
pub struct Indexed<'a> {
    pub indexes: &'a dyn ReadIndexes,
    pub reader: &'a dyn ReadLog,
}

fn views(records: Vec<Record>) -> Vec<HistoryView> {
    records
        .iter()
        .map(|r| HistoryView::of(r).expect("every record has a history view"))
        .collect()
}

impl<'a> Indexed<'a> {
    /// An account's history: up to `limit` entries that move a balance (the ingest pipeline's
    /// left out), after `after_seq`. `None` if the account never had one (it was never opened).
    pub fn history(
        self,
        tenant: &str,
        account: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Option<Vec<HistoryView>>, IndexedError> {
        let all = self.indexes.account_seqs(tenant, account, 0, u64::MAX, true)?;
        if all.is_empty() {
            return Ok(None);
        }
        let start = all.partition_point(|&s| s <= after_seq);
        let page = &all[start..all.len().min(start.saturating_add(limit))];
        let key = keys::account(tenant, account);
        Ok(Some(views(records(self.reader, ProjectionName::History, &key, page)?)))
    }
}

impl<'a> Indexed<'a> {
    /// Every record of an account (the ingest pipeline's included) with `after_seq < seq <=
    /// up_to_seq`, up to `limit`.
    pub fn account_records(
        self,
        tenant: &str,
        account: &str,
        after_seq: u64,
        up_to_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, IndexedError> {
        let mut seqs = self
            .indexes
            .account_seqs(tenant, account, after_seq, up_to_seq, false)?;
        seqs.truncate(limit);
        records(
            self.reader,
            ProjectionName::History,
            &keys::account(tenant, account),
            &seqs,
        )
    }
}

impl<'a> Indexed<'a> {
    /// Up to `limit` records filed under a key of an index, after `after_seq` and up to
    /// `up_to_seq`, as history entries.
    pub fn by_key(
        self,
        index: ProjectionName,
        key: &[u8],
        after_seq: u64,
        up_to_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, IndexedError> {
        let mut seqs = self.indexes.seqs(index, key, after_seq, up_to_seq)?;
        seqs.truncate(limit);
        Ok(views(records(self.reader, index, key, &seqs)?))
    }
}

impl<'a> Indexed<'a> {
    /// Up to `limit` records with a correlation id, after `after_seq`.
    pub fn by_correlation(
        self,
        tenant: &str,
        correlation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, IndexedError> {
        let key = keys::correlation(tenant, correlation_id);
        self.by_key(ProjectionName::Correlation, &key, after_seq, u64::MAX, limit)
    }
}

impl<'a> Indexed<'a> {
    /// Up to `limit` records of an actor with `from_us <= ts < to_us`, after sequence number
    /// `after_seq`. Timestamps never decrease along the log, so the window is a range of
    /// sequence numbers, found with the log's time index.
    pub fn by_actor(
        self,
        tenant: &str,
        actor: &str,
        from_us: u64,
        to_us: u64,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, IndexedError> {
        if from_us >= to_us {
            return Ok(Vec::new());
        }
        let before_window = match from_us {
            0 => 0,
            from => self.reader.seq_at_time(from - 1)?,
        };
        let last_in_window = self.reader.seq_at_time(to_us - 1)?;
        let key = keys::actor(tenant, actor);
        let rows = self.by_key(
            ProjectionName::Actor,
            &key,
            after_seq.max(before_window),
            last_in_window,
            limit,
        )?;
        debug_assert!(rows.iter().all(|r| r.ts_us >= from_us && r.ts_us < to_us));
        Ok(rows)
    }
}

impl<'a> Indexed<'a> {
    /// The records an idempotency identity produced.
    pub fn by_idempotency_key(self, tenant: &str, scope: &str, key: &str) -> Result<Vec<HistoryView>, IndexedError> {
        let key = keys::idempotency(tenant, scope, key);
        self.by_key(ProjectionName::Idempotency, &key, 0, u64::MAX, usize::MAX)
    }
}

impl<'a> Indexed<'a> {
    /// An account and its active holds as of sequence number `seq`, folded from its history
    /// read through the index. `None` if it was not open then.
    pub fn account_at(
        self,
        tenant: &str,
        account: &str,
        seq: u64,
    ) -> Result<Option<super::asof::AccountAsOf>, AccountAtError> {
        let records = self.account_records(tenant, account, 0, seq, usize::MAX)?;
        // The facts of each hold are in its reservation, among the account's records.
        let holds: std::collections::HashMap<u64, crate::projection::HoldView> = records
            .iter()
            .filter_map(crate::projection::HoldView::reserved)
            .map(|hold| (hold.hold_id, hold))
            .collect();
        let rows: Vec<HistoryView> = records.iter().filter_map(HistoryView::of).collect();
        Ok(super::asof::account_as_of(seq, &rows, |id| {
            Ok(holds.get(&id).cloned())
        })?)
    }
}

/// Why [`Indexed::account_at`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AccountAtError {
    #[error(transparent)]
    Indexed(#[from] IndexedError),
    #[error(transparent)]
    AsOf(#[from] super::asof::AsOfError),
}

//! Projections: folds of the log into sled trees, one tree per projection with its
//! checkpoint (the last applied sequence number). A projection whose fold is not idempotent
//! writes its checkpoint in the same atomic batch as its rows; an idempotent one writes the
//! checkpoint after its rows, so a crash can only make it fold some records twice, to the
//! same rows. sled holds nothing that cannot be rebuilt from the log.
//!
//! Each projection lives in a *generation* of its tree (`accounts.3`); a rebuild folds into
//! the next generation and swaps it in, so readers never see a half-built projection.
//!
//! Invariant: projections never decide anything; they only follow the log.

mod fold;
pub mod keys;
mod rebuild;
pub mod views;

use crate::domain::Record;
pub use rebuild::{latest_projection_snapshot, Rebuild, RebuildOutcome, SnapshotInfo};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
pub use views::{AccountView, HistoryView, HoldView, IdempotencyView};

/// The key of a projection's checkpoint inside its own tree. Row keys start with an ASCII
/// tenant id or are 8-byte hold ids, so no row can collide with it.
pub(crate) const CHECKPOINT_KEY: [u8; 9] = [0xFF; 9];

/// The projections this build maintains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectionName {
    /// Balances, tier and active-hold count per account.
    Accounts,
    /// Every hold and its resolution.
    Holds,
    /// Every event per account, with balances before and after.
    History,
    /// The events each idempotency identity produced.
    Idempotency,
    /// Events by correlation id.
    Correlation,
    /// Events by actor and time.
    Actor,
}

impl ProjectionName {
    pub const ALL: [ProjectionName; 6] = [
        ProjectionName::Accounts,
        ProjectionName::Holds,
        ProjectionName::History,
        ProjectionName::Idempotency,
        ProjectionName::Correlation,
        ProjectionName::Actor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProjectionName::Accounts => "accounts",
            ProjectionName::Holds => "holds",
            ProjectionName::History => "history",
            ProjectionName::Idempotency => "idempotency",
            ProjectionName::Correlation => "correlation",
            ProjectionName::Actor => "actor",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether folding the same records twice leaves the same rows: true when every row is
    /// keyed by its record or set to absolute values. Such projections may write rows and
    /// checkpoint separately; the others (an account's count of active holds moves by ±1)
    /// write both in one atomic batch.
    pub fn idempotent_fold(self) -> bool {
        !matches!(self, ProjectionName::Accounts)
    }
}

/// Errors of the projection store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store: {0}")]
    Sled(#[from] sled::Error),
    #[error("projection {tree}: row does not decode: {reason}")]
    Decode { tree: &'static str, reason: String },
    #[error("projection snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
}

/// The projection store: a sled database with one tree per projection.
pub struct Projections {
    db: sled::Db,
    /// Which generation of each projection's tree is live.
    generations: sled::Tree,
    trees: RwLock<HashMap<ProjectionName, sled::Tree>>,
}

impl Projections {
    /// Opens the store in `dir`; the caller owns the data directory (`engine::DataDirLock`).
    /// A store sled finds damaged is moved aside (it is only a cache of the log) and a fresh
    /// one is folded from the log. An I/O error — a lock held by another process among them —
    /// is returned as it is: a store that is merely busy or unreachable is never moved.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = match open_sled(dir) {
            Ok(db) => db,
            Err(sled::Error::Io(e)) => return Err(sled::Error::Io(e).into()),
            Err(error) => {
                let aside = PathBuf::from(format!("{}.unreadable-{}", dir.display(), std::process::id()));
                tracing::warn!(%error, moved_to = %aside.display(), "projection store unreadable; rebuilding from the log");
                std::fs::rename(dir, &aside).map_err(|e| StoreError::Sled(e.into()))?;
                sled::Config::new().path(dir).open()?
            }
        };
        let generations = db.open_tree("generations")?;
        let mut trees = HashMap::new();
        for name in ProjectionName::ALL {
            let generation = generation_of(&generations, name)?;
            trees.insert(name, db.open_tree(tree_name(name, generation))?);
        }
        Ok(Self {
            db,
            generations,
            trees: RwLock::new(trees),
        })
    }

    /// The live tree of a projection (a cheap handle).
    pub(crate) fn tree(&self, name: ProjectionName) -> sled::Tree {
        self.trees.read().expect("projection map lock")[&name].clone()
    }

    /// The last sequence number applied to a projection.
    pub fn checkpoint(&self, name: ProjectionName) -> Result<u64, StoreError> {
        checkpoint_of(&self.tree(name))
    }

    /// The lowest checkpoint: every projection has applied at least this far.
    pub fn applied(&self) -> Result<u64, StoreError> {
        let mut lowest = u64::MAX;
        for name in ProjectionName::ALL {
            lowest = lowest.min(self.checkpoint(name)?);
        }
        Ok(lowest)
    }

    /// Empties a projection, checkpoint included, so that it folds again from the start.
    pub fn clear(&self, name: ProjectionName) -> Result<(), StoreError> {
        self.tree(name).clear()?;
        Ok(())
    }

    /// Folds consecutive records into every projection whose checkpoint is behind them;
    /// one atomic batch per projection.
    pub fn apply(&self, records: &[Record]) -> Result<(), StoreError> {
        for name in ProjectionName::ALL {
            apply_to(name, &self.tree(name), records)?;
        }
        Ok(())
    }

    /// An account of a tenant.
    pub fn account(&self, tenant: &str, account: &str) -> Result<Option<AccountView>, StoreError> {
        decode(
            "accounts",
            self.tree(ProjectionName::Accounts)
                .get(keys::account(tenant, account))?,
        )
    }

    /// A hold, whatever its tenant (the caller checks the tenant).
    pub fn hold(&self, hold_id: u64) -> Result<Option<HoldView>, StoreError> {
        decode("holds", self.tree(ProjectionName::Holds).get(hold_id.to_be_bytes())?)
    }

    /// Up to `limit` history entries of an account with `after_seq < seq <= up_to_seq`.
    pub fn history_range(
        &self,
        tenant: &str,
        account: &str,
        after_seq: u64,
        up_to_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, StoreError> {
        if after_seq >= up_to_seq {
            return Ok(Vec::new());
        }
        let start = keys::history(tenant, account, after_seq + 1);
        let end = keys::history(tenant, account, up_to_seq);
        let mut rows = Vec::new();
        for row in self.tree(ProjectionName::History).range(start..=end).take(limit) {
            let (_, value) = row?;
            rows.push(decode("history", Some(value))?.expect("present"));
        }
        Ok(rows)
    }

    /// Up to `limit` ledger entries of an account (the ingest pipeline's records left out)
    /// with a sequence number above `after_seq`.
    pub fn history(
        &self,
        tenant: &str,
        account: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, StoreError> {
        let start = keys::history(tenant, account, after_seq.saturating_add(1));
        let end = keys::history(tenant, account, u64::MAX);
        let mut rows = Vec::new();
        for row in self.tree(ProjectionName::History).range(start..=end) {
            if rows.len() == limit {
                break;
            }
            let (_, value) = row?;
            let view: HistoryView = decode("history", Some(value))?.expect("present");
            if crate::domain::EventKind::from_code(view.kind).is_some_and(crate::domain::EventKind::is_ledger) {
                rows.push(view);
            }
        }
        Ok(rows)
    }

    fn history_row(&self, tenant: &str, account: &str, seq: u64) -> Result<HistoryView, StoreError> {
        let row = self
            .tree(ProjectionName::History)
            .get(keys::history(tenant, account, seq))?;
        Ok(decode("history", row)?.expect("indexed events have a history row"))
    }

    /// The events an idempotency identity produced.
    pub fn idempotency(&self, tenant: &str, scope: &str, key: &str) -> Result<Option<IdempotencyView>, StoreError> {
        decode(
            "idempotency",
            self.tree(ProjectionName::Idempotency)
                .get(keys::idempotency(tenant, scope, key))?,
        )
    }

    /// Up to `limit` events with a correlation id, after sequence number `after_seq`.
    pub fn by_correlation(
        &self,
        tenant: &str,
        correlation_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, StoreError> {
        let start = keys::correlation(tenant, correlation_id, after_seq.saturating_add(1));
        let end = keys::correlation(tenant, correlation_id, u64::MAX);
        self.rows_by_index(ProjectionName::Correlation, start..=end, limit)
    }

    /// Up to `limit` events of an actor with `from_us <= ts < to_us`, after `(ts, seq)`.
    pub fn by_actor(
        &self,
        tenant: &str,
        actor: &str,
        from_us: u64,
        to_us: u64,
        after: Option<(u64, u64)>,
        limit: usize,
    ) -> Result<Vec<HistoryView>, StoreError> {
        if from_us >= to_us {
            return Ok(Vec::new());
        }
        let start = match after {
            Some((ts, seq)) => keys::actor(tenant, actor, ts, seq.saturating_add(1)),
            None => keys::actor(tenant, actor, from_us, 0),
        };
        let end = keys::actor(tenant, actor, to_us - 1, u64::MAX);
        self.rows_by_index(ProjectionName::Actor, start..=end, limit)
    }

    /// History rows for index entries whose key ends with the sequence number and whose
    /// value is the account id.
    fn rows_by_index(
        &self,
        index: ProjectionName,
        range: std::ops::RangeInclusive<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<HistoryView>, StoreError> {
        let mut rows = Vec::new();
        for entry in self.tree(index).range(range).take(limit) {
            let (key, account) = entry?;
            let (tenant, seq) = keys::tenant_and_seq(&key);
            let account = std::str::from_utf8(&account).expect("account ids are ASCII");
            rows.push(self.history_row(tenant, account, seq)?);
        }
        Ok(rows)
    }

    /// blake3 over a projection's rows in key order, checkpoint excluded: two stores that
    /// folded the same records have the same digest.
    pub fn digest(&self, name: ProjectionName) -> Result<[u8; 32], StoreError> {
        digest_of(&self.tree(name))
    }

    /// Compares a projection here (`left`) with the same projection in `other` (`right`):
    /// both heads, both digests and, when they differ, the first row that does. A digest
    /// alone says that two folds disagree; this says where to look.
    pub fn compare(&self, other: &Projections, name: ProjectionName) -> Result<Comparison, StoreError> {
        compare_trees(name, &self.tree(name), &other.tree(name))
    }

    /// A tree for other durable, non-ledger records (the operations history).
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(format!("aux.{name}"))?)
    }

    /// Writes everything to disk (on shutdown; in between, sled flushes on its own).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

/// How long opening waits for sled's own lock on the store. The caller owns the data
/// directory, so no other process holds it: only the last handles of an engine this process
/// just stopped (a read finishing on a blocking thread, a server task ending) can, briefly.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_sled(dir: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            // sled 0.34 says so only in the message of an `Other` I/O error.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            opened => return opened,
        }
    }
}

/// Folds the records after `tree`'s checkpoint into it, atomically with the new checkpoint.
pub(crate) fn apply_to(name: ProjectionName, tree: &sled::Tree, records: &[Record]) -> Result<(), StoreError> {
    let checkpoint = checkpoint_of(tree)?;
    let start = records.partition_point(|r| r.seq <= checkpoint);
    let todo = &records[start..];
    let Some(last) = todo.last() else { return Ok(()) };
    assert_eq!(
        todo[0].seq,
        checkpoint + 1,
        "projection {} folds gapless records",
        name.name()
    );
    let mut rows = Vec::with_capacity(todo.len());
    fold::fold(name, tree, todo, &mut rows)?;
    if name.idempotent_fold() {
        // Rows first, checkpoint last: a crash in between leaves rows that the next fold
        // writes again, identically. Plain inserts are about four times faster than a
        // sled batch (BENCHMARKS.md).
        for (key, value) in rows {
            tree.insert(key, value)?;
        }
        tree.insert(CHECKPOINT_KEY, &last.seq.to_be_bytes())?;
    } else {
        let mut batch = sled::Batch::default();
        for (key, value) in rows {
            batch.insert(key, value);
        }
        batch.insert(&CHECKPOINT_KEY, &last.seq.to_be_bytes());
        tree.apply_batch(batch)?;
    }
    Ok(())
}

/// Two folds of one projection side by side; see [`Projections::compare`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comparison {
    pub projection: ProjectionName,
    /// The checkpoint (last applied sequence number) of each side: the head its rows speak of.
    pub left_seq: u64,
    pub right_seq: u64,
    pub left_digest: [u8; 32],
    pub right_digest: [u8; 32],
    /// The first row, in key order, that one side lacks or holds with other bytes.
    pub first_difference: Option<RowDifference>,
}

impl Comparison {
    /// Whether both sides hold the same rows.
    pub fn equal(&self) -> bool {
        self.left_digest == self.right_digest
    }
}

impl std::fmt::Display for Comparison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "projection {}: left at sequence {} digest {}, right at sequence {} digest {}",
            self.projection.name(),
            self.left_seq,
            crate::query::json::hex(&self.left_digest),
            self.right_seq,
            crate::query::json::hex(&self.right_digest),
        )?;
        match &self.first_difference {
            Some(difference) => write!(f, "; {difference}"),
            None => Ok(()),
        }
    }
}

/// The first row where two folds of a projection part ways.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowDifference {
    pub key: Vec<u8>,
    /// The row's value on each side; `None` where that side has no such row.
    pub left: Option<Vec<u8>>,
    pub right: Option<Vec<u8>>,
}

/// Bytes of a differing value shown in a message; rows are small, but a message stays short.
const DIFFERENCE_SHOWN_BYTES: usize = 64;

impl std::fmt::Display for RowDifference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |value: &Option<Vec<u8>>| match value {
            None => "absent".to_string(),
            Some(bytes) => {
                let shown = &bytes[..bytes.len().min(DIFFERENCE_SHOWN_BYTES)];
                let more = if bytes.len() > shown.len() { "…" } else { "" };
                format!("{} bytes {}{more}", bytes.len(), crate::query::json::hex(shown))
            }
        };
        write!(
            f,
            "first differing row \"{}\": left {}, right {}",
            self.key.escape_ascii(),
            show(&self.left),
            show(&self.right)
        )
    }
}

pub(crate) fn compare_trees(
    projection: ProjectionName,
    left: &sled::Tree,
    right: &sled::Tree,
) -> Result<Comparison, StoreError> {
    let left_digest = digest_of(left)?;
    let right_digest = digest_of(right)?;
    let first_difference = if left_digest == right_digest {
        None
    } else {
        first_difference(left, right)?
    };
    Ok(Comparison {
        projection,
        left_seq: checkpoint_of(left)?,
        right_seq: checkpoint_of(right)?,
        left_digest,
        right_digest,
        first_difference,
    })
}

/// Walks both trees in key order, checkpoints excluded, to the first row that differs.
fn first_difference(left: &sled::Tree, right: &sled::Tree) -> Result<Option<RowDifference>, StoreError> {
    let rows = |tree: &sled::Tree| {
        tree.iter()
            .filter(|row| !matches!(row, Ok((key, _)) if key.as_ref() == CHECKPOINT_KEY))
    };
    let (mut left_rows, mut right_rows) = (rows(left), rows(right));
    loop {
        let difference = match (left_rows.next().transpose()?, right_rows.next().transpose()?) {
            (None, None) => return Ok(None),
            (Some((key, value)), None) => RowDifference {
                key: key.to_vec(),
                left: Some(value.to_vec()),
                right: None,
            },
            (None, Some((key, value))) => RowDifference {
                key: key.to_vec(),
                left: None,
                right: Some(value.to_vec()),
            },
            (Some((lk, lv)), Some((rk, rv))) if lk == rk && lv == rv => continue,
            (Some((lk, lv)), Some((rk, rv))) => match lk.cmp(&rk) {
                std::cmp::Ordering::Equal => RowDifference {
                    key: lk.to_vec(),
                    left: Some(lv.to_vec()),
                    right: Some(rv.to_vec()),
                },
                std::cmp::Ordering::Less => RowDifference {
                    key: lk.to_vec(),
                    left: Some(lv.to_vec()),
                    right: None,
                },
                std::cmp::Ordering::Greater => RowDifference {
                    key: rk.to_vec(),
                    left: None,
                    right: Some(rv.to_vec()),
                },
            },
        };
        return Ok(Some(difference));
    }
}

pub(crate) fn checkpoint_of(tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(tree
        .get(CHECKPOINT_KEY)?
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
}

pub(crate) fn digest_of(tree: &sled::Tree) -> Result<[u8; 32], StoreError> {
    let mut hasher = blake3::Hasher::new();
    for row in tree.iter() {
        let (key, value) = row?;
        if key.as_ref() == CHECKPOINT_KEY {
            continue;
        }
        for part in [key.as_ref(), value.as_ref()] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
    }
    Ok(*hasher.finalize().as_bytes())
}

fn tree_name(name: ProjectionName, generation: u64) -> String {
    format!("{}.{generation}", name.name())
}

fn generation_of(generations: &sled::Tree, name: ProjectionName) -> Result<u64, StoreError> {
    Ok(generations
        .get(name.name())?
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encoding into a Vec cannot fail")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    bytes: Option<sled::IVec>,
) -> Result<Option<T>, StoreError> {
    bytes
        .map(|b| rmp_serde::from_slice(&b))
        .transpose()
        .map_err(|e| StoreError::Decode {
            tree,
            reason: e.to_string(),
        })
}

//! Projections: folds of the log into sled trees, one tree per projection with its
//! checkpoint (the last applied sequence number) written in the same atomic batch as its
//! state. sled holds nothing that cannot be rebuilt from the log.
//!
//! Invariant: projections never decide anything; they only follow the log.

pub mod views;

use crate::domain::{Event, HoldStatus, Record, State};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
pub use views::{AccountView, HistoryView, HoldView, IdempotencyView};

/// The key of a projection's checkpoint inside its own tree. Account and history keys start
/// with an ASCII tenant id and hold keys are 8 bytes, so no row can collide with it.
const CHECKPOINT_KEY: [u8; 9] = [0xFF; 9];
const SNAPSHOT_KEY: &[u8] = b"write-state";

/// The projections this build maintains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProjectionName {
    /// Balances, tier and active-hold count per account.
    Accounts,
    /// Every hold and its resolution.
    Holds,
    /// Every event per account, with balances before and after.
    History,
    /// The events each idempotency identity produced.
    Idempotency,
}

impl ProjectionName {
    pub const ALL: [ProjectionName; 4] = [
        ProjectionName::Accounts,
        ProjectionName::Holds,
        ProjectionName::History,
        ProjectionName::Idempotency,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProjectionName::Accounts => "accounts",
            ProjectionName::Holds => "holds",
            ProjectionName::History => "history",
            ProjectionName::Idempotency => "idempotency",
        }
    }
}

/// Errors of the projection store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store: {0}")]
    Sled(#[from] sled::Error),
    #[error("projection {tree}: row does not decode: {reason}")]
    Decode { tree: &'static str, reason: String },
}

/// The projection store: a sled database with one tree per projection.
pub struct Projections {
    db: sled::Db,
    trees: HashMap<ProjectionName, sled::Tree>,
    snapshots: sled::Tree,
}

impl Projections {
    /// Opens the store in `dir`. A store sled cannot open is moved aside (it is only a
    /// cache of the log) and a fresh one is folded from the log.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = match sled::Config::new().path(dir).open() {
            Ok(db) => db,
            Err(error) => {
                let aside = PathBuf::from(format!("{}.unreadable-{}", dir.display(), std::process::id()));
                tracing::warn!(%error, moved_to = %aside.display(), "projection store unreadable; rebuilding from the log");
                std::fs::rename(dir, &aside).map_err(|e| StoreError::Sled(e.into()))?;
                sled::Config::new().path(dir).open()?
            }
        };
        let mut trees = HashMap::new();
        for name in ProjectionName::ALL {
            trees.insert(name, db.open_tree(name.name())?);
        }
        let snapshots = db.open_tree("snapshots")?;
        Ok(Self { db, trees, snapshots })
    }

    fn tree(&self, name: ProjectionName) -> &sled::Tree {
        &self.trees[&name]
    }

    /// The last sequence number applied to a projection.
    pub fn checkpoint(&self, name: ProjectionName) -> Result<u64, StoreError> {
        Ok(self
            .tree(name)
            .get(CHECKPOINT_KEY)?
            .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
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
            let checkpoint = self.checkpoint(name)?;
            let start = records.partition_point(|r| r.seq <= checkpoint);
            let todo = &records[start..];
            let Some(last) = todo.last() else { continue };
            assert_eq!(
                todo[0].seq,
                checkpoint + 1,
                "projection {} folds gapless records",
                name.name()
            );
            let mut batch = sled::Batch::default();
            match name {
                ProjectionName::Accounts => self.fold_accounts(todo, &mut batch)?,
                ProjectionName::Holds => self.fold_holds(todo, &mut batch)?,
                ProjectionName::History => fold_history(todo, &mut batch),
                ProjectionName::Idempotency => self.fold_idempotency(todo, &mut batch)?,
            }
            batch.insert(&CHECKPOINT_KEY, &last.seq.to_be_bytes());
            self.tree(name).apply_batch(batch)?;
        }
        Ok(())
    }

    fn fold_accounts(&self, records: &[Record], batch: &mut sled::Batch) -> Result<(), StoreError> {
        let tree = self.tree(ProjectionName::Accounts);
        let mut touched: HashMap<Vec<u8>, AccountView> = HashMap::new();
        for record in records {
            let key = account_key(&record.envelope.tenant, &record.envelope.stream);
            if let Event::AccountOpened(opened) = &record.event {
                touched.insert(
                    key,
                    AccountView {
                        account_id: record.envelope.stream.clone(),
                        posted: 0,
                        held: 0,
                        lifetime: 0,
                        tier: opened.tier.clone(),
                        active_holds: 0,
                        opened_at_us: record.ts_us,
                        last_seq: record.seq,
                    },
                );
                continue;
            }
            let view = match touched.remove(&key) {
                Some(view) => view,
                None => {
                    decode::<AccountView>("accounts", tree.get(&key)?)?.expect("events follow their account's opening")
                }
            };
            let effect = record.event.effect().expect("every event but an opening has an effect");
            let active_holds = match &record.event {
                Event::HoldReserved(_) => view.active_holds + 1,
                Event::HoldCommitted(_) | Event::HoldReleased(_) | Event::HoldExpired(_) => view.active_holds - 1,
                _ => view.active_holds,
            };
            let updated = AccountView {
                posted: effect.posted_after,
                held: effect.held_after,
                lifetime: effect.lifetime_after,
                tier: effect.tier_after.clone(),
                active_holds,
                last_seq: record.seq,
                ..view
            };
            touched.insert(key, updated);
        }
        for (key, view) in touched {
            batch.insert(key, encode(&view));
        }
        Ok(())
    }

    fn fold_holds(&self, records: &[Record], batch: &mut sled::Batch) -> Result<(), StoreError> {
        let tree = self.tree(ProjectionName::Holds);
        let mut touched: HashMap<u64, HoldView> = HashMap::new();
        for record in records {
            let (hold_id, status, committed, released) = match &record.event {
                Event::HoldReserved(r) => {
                    touched.insert(
                        r.hold_id,
                        HoldView {
                            hold_id: r.hold_id,
                            tenant: record.envelope.tenant.clone(),
                            account_id: record.envelope.stream.clone(),
                            amount: r.amount,
                            status: HoldStatus::Active,
                            created_at_us: record.ts_us,
                            expires_at_us: r.expires_at_us,
                            committed: 0,
                            released: 0,
                            resolved_at_us: 0,
                            resolved_seq: 0,
                        },
                    );
                    continue;
                }
                Event::HoldCommitted(c) => (c.hold_id, HoldStatus::Committed, c.committed, c.released),
                Event::HoldReleased(r) => (r.hold_id, HoldStatus::Released, 0, r.amount),
                Event::HoldExpired(x) => (x.hold_id, HoldStatus::Expired, 0, x.amount),
                _ => continue,
            };
            let view = match touched.remove(&hold_id) {
                Some(view) => view,
                None => decode::<HoldView>("holds", tree.get(hold_id.to_be_bytes())?)?
                    .expect("resolved holds were reserved"),
            };
            touched.insert(
                hold_id,
                HoldView {
                    status,
                    committed,
                    released,
                    resolved_at_us: record.ts_us,
                    resolved_seq: record.seq,
                    ..view
                },
            );
        }
        for (hold_id, view) in touched {
            batch.insert(&hold_id.to_be_bytes(), encode(&view));
        }
        Ok(())
    }

    fn fold_idempotency(&self, records: &[Record], batch: &mut sled::Batch) -> Result<(), StoreError> {
        let tree = self.tree(ProjectionName::Idempotency);
        let mut touched: HashMap<Vec<u8>, IdempotencyView> = HashMap::new();
        for record in records {
            let envelope = &record.envelope;
            if envelope.idempotency_key.is_empty() {
                continue;
            }
            let key = idempotency_key(&envelope.tenant, &envelope.idempotency_scope, &envelope.idempotency_key);
            let existing = match touched.remove(&key) {
                Some(view) => Some(view),
                None => decode::<IdempotencyView>("idempotency", tree.get(&key)?)?,
            };
            let view = match existing {
                Some(view) => IdempotencyView {
                    last_seq: record.seq,
                    ..view
                },
                None => IdempotencyView {
                    first_seq: record.seq,
                    last_seq: record.seq,
                },
            };
            touched.insert(key, view);
        }
        for (key, view) in touched {
            batch.insert(key, encode(&view));
        }
        Ok(())
    }

    /// An account of a tenant.
    pub fn account(&self, tenant: &str, account: &str) -> Result<Option<AccountView>, StoreError> {
        decode(
            "accounts",
            self.tree(ProjectionName::Accounts).get(account_key(tenant, account))?,
        )
    }

    /// A hold, whatever its tenant (the caller checks the tenant).
    pub fn hold(&self, hold_id: u64) -> Result<Option<HoldView>, StoreError> {
        decode("holds", self.tree(ProjectionName::Holds).get(hold_id.to_be_bytes())?)
    }

    /// Up to `limit` history entries of an account with a sequence number above `after_seq`.
    pub fn history(
        &self,
        tenant: &str,
        account: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<HistoryView>, StoreError> {
        let prefix = account_key(tenant, account);
        let mut start = prefix.clone();
        start.push(0);
        start.extend_from_slice(&after_seq.saturating_add(1).to_be_bytes());
        let mut end = prefix;
        end.push(1);
        let mut rows = Vec::new();
        for row in self.tree(ProjectionName::History).range(start..end).take(limit) {
            let (_, value) = row?;
            rows.push(decode("history", Some(value))?.expect("present"));
        }
        Ok(rows)
    }

    /// The events an idempotency identity produced.
    pub fn idempotency(&self, tenant: &str, scope: &str, key: &str) -> Result<Option<IdempotencyView>, StoreError> {
        decode(
            "idempotency",
            self.tree(ProjectionName::Idempotency)
                .get(idempotency_key(tenant, scope, key))?,
        )
    }

    /// blake3 over a projection's rows in key order, checkpoint excluded: two stores that
    /// folded the same records have the same digest.
    pub fn digest(&self, name: ProjectionName) -> Result<[u8; 32], StoreError> {
        let mut hasher = blake3::Hasher::new();
        for row in self.tree(name).iter() {
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

    /// Stores the write-side state as of `state.head_seq`, with the chain hash there, so a
    /// restart folds only the log after it.
    pub fn save_snapshot(&self, state: &State, hash: &[u8; 32]) -> Result<(), StoreError> {
        let mut bytes = Vec::with_capacity(1 << 16);
        bytes.extend_from_slice(hash);
        rmp_serde::encode::write(&mut bytes, state).expect("encoding into a Vec cannot fail");
        self.snapshots.insert(SNAPSHOT_KEY, bytes)?;
        Ok(())
    }

    /// The latest write-state snapshot and the chain hash at its head, if one decodes.
    pub fn load_snapshot(&self) -> Result<Option<(State, [u8; 32])>, StoreError> {
        let Some(bytes) = self.snapshots.get(SNAPSHOT_KEY)? else {
            return Ok(None);
        };
        let Some((hash, body)) = bytes.split_first_chunk::<32>() else {
            return Ok(None);
        };
        match rmp_serde::from_slice::<State>(body) {
            Ok(state) => Ok(Some((state, *hash))),
            Err(error) => {
                tracing::warn!(%error, "write-state snapshot does not decode; folding the log instead");
                Ok(None)
            }
        }
    }

    /// Forgets the snapshot (it does not belong to this log).
    pub fn drop_snapshot(&self) -> Result<(), StoreError> {
        self.snapshots.remove(SNAPSHOT_KEY)?;
        Ok(())
    }

    /// Writes everything to disk (on shutdown; in between, sled flushes on its own).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}

fn fold_history(records: &[Record], batch: &mut sled::Batch) {
    for record in records {
        let view = HistoryView::of(record).expect("every event has a history row");
        let mut key = account_key(&record.envelope.tenant, &record.envelope.stream);
        key.push(0);
        key.extend_from_slice(&record.seq.to_be_bytes());
        batch.insert(key, encode(&view));
    }
}

fn account_key(tenant: &str, account: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(tenant.len() + account.len() + 1);
    key.extend_from_slice(tenant.as_bytes());
    key.push(0);
    key.extend_from_slice(account.as_bytes());
    key
}

fn idempotency_key(tenant: &str, scope: &str, key: &str) -> Vec<u8> {
    [tenant.as_bytes(), scope.as_bytes(), key.as_bytes()].join(&0u8)
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("encoding into a Vec cannot fail")
}

fn decode<T: serde::de::DeserializeOwned>(
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

//! The projection store: the sled database, one index (tree) per projection with its
//! unwritten postings and bucket runs, the folds into memory and the flushes to disk, the
//! checkpoints and generations, and the errors and options of the store.

use super::keys;
use super::postings::{self, Pending, Posting, BUCKETS};
use crate::domain::Record;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

/// The key of a projection's checkpoint inside its own tree. Run keys are 10 bytes, so no
/// row can collide with it.
pub(crate) const CHECKPOINT_KEY: [u8; 9] = [0xFF; 9];

/// The format of the projection store; a store of another format is emptied and folded
/// again from the log (docs/FORMAT.md, "Projections").
const STORE_FORMAT: u64 = 2;
/// Where the store's format is kept, in the `generations` tree.
const FORMAT_KEY: &str = "\0format";

/// Rows per sled batch of a flush: a batch holds sled's write lock while it applies (about
/// 5 µs a row), so readers wait at most about a millisecond for one.
const ROWS_PER_SLED_BATCH: usize = 256;

/// Records a flush gathers at most: a flush writes at most one row per bucket of each index
/// however many records it covers, so larger is cheaper per record; this bounds the memory
/// the unwritten postings take (~100 bytes each) and the records folded again after a crash.
pub const FLUSH_RECORDS: u64 = 65_536;

/// How long folded records wait at most to be written, by default. Queries see folded
/// records at once, and a crash only folds the unwritten ones again (at most
/// [`FLUSH_RECORDS`]), so the age only bounds that work; a longer one writes fewer rows per
/// record under a steady load (each flush writes up to a row per bucket, however few records
/// it covers): 9.5 µs of projector CPU an award at 1 s, 5.5 µs at 10 s (BENCHMARKS.md).
pub const FLUSH_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// Default bytes of sled's page cache (`projections.cache_mib`). The indexes are small and
/// read a row a query; sled's own default is 1 GiB.
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// The projections this build maintains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectionName {
    /// Every record per account (stream); the ones that move a balance marked.
    History,
    /// The records each idempotency identity produced.
    Idempotency,
    /// Records by correlation id.
    Correlation,
    /// Records by actor (a time window is a range of sequence numbers).
    Actor,
}

impl ProjectionName {
    pub const ALL: [ProjectionName; 4] = [
        ProjectionName::History,
        ProjectionName::Idempotency,
        ProjectionName::Correlation,
        ProjectionName::Actor,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProjectionName::History => "history",
            ProjectionName::Idempotency => "idempotency",
            ProjectionName::Correlation => "correlation",
            ProjectionName::Actor => "actor",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The key a record is filed under in this index, with its flag; `None` if it is not.
    pub fn entry(self, record: &Record) -> Option<(Vec<u8>, bool)> {
        let e = &record.envelope;
        match self {
            ProjectionName::History => Some((keys::account(&e.tenant, &e.stream), record.event.kind().is_ledger())),
            ProjectionName::Idempotency => (!e.idempotency_key.is_empty()).then(|| {
                (
                    keys::idempotency(&e.tenant, &e.idempotency_scope, &e.idempotency_key),
                    false,
                )
            }),
            ProjectionName::Correlation => {
                (!e.correlation_id.is_empty()).then(|| (keys::correlation(&e.tenant, &e.correlation_id), false))
            }
            ProjectionName::Actor => Some((keys::actor(&e.tenant, &e.actor), false)),
        }
    }
}

/// Errors of the projection store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("projection store: {0}")]
    Sled(#[from] sled::Error),
    #[error("projection {tree}: row does not decode: {reason}; rebuild the projection (tally rebuild)")]
    Decode { tree: &'static str, reason: String },
    #[error("projection snapshot {path}: {reason}")]
    Snapshot { path: PathBuf, reason: String },
}

/// How the projection store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Bytes of sled's page cache.
    pub cache_bytes: u64,
    /// How long folded records wait at most to be written ([`FLUSH_AGE`]).
    pub flush_age: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache_bytes: DEFAULT_CACHE_BYTES,
            flush_age: FLUSH_AGE,
        }
    }
}

/// What an index holds in memory.
#[derive(Default)]
pub(super) struct Mem {
    /// The checkpoint in the tree: every bucket holds everything up to it (a bucket may
    /// hold more, after a flush cut short).
    durable: u64,
    /// The last sequence number folded (in memory or written).
    applied: u64,
    /// Postings folded after `durable`, not yet being written.
    active: Pending,
    /// Postings being written by a flush: queries read them until the flush ends.
    frozen: Option<Arc<Pending>>,
    /// When the oldest posting in `active` was folded.
    oldest: Option<std::time::Instant>,
}

/// One index: its tree, its unwritten postings, and the runs of each bucket.
pub(crate) struct Index {
    name: ProjectionName,
    pub(super) tree: sled::Tree,
    pub(super) mem: RwLock<Mem>,
    /// Each bucket's runs, oldest first: (last sequence number, bytes). Changed by flushes,
    /// one at a time.
    runs: Mutex<Vec<Vec<(u64, usize)>>>,
}

impl Index {
    pub(super) fn open(name: ProjectionName, tree: sled::Tree) -> Result<Self, StoreError> {
        let checkpoint = checkpoint_of(&tree)?;
        let index = Self {
            name,
            tree,
            mem: RwLock::new(Mem {
                durable: checkpoint,
                applied: checkpoint,
                ..Mem::default()
            }),
            runs: Mutex::new(Vec::new()),
        };
        index.load_runs()?;
        Ok(index)
    }

    /// Reads the runs of every bucket from the tree.
    fn load_runs(&self) -> Result<(), StoreError> {
        let mut runs = vec![Vec::new(); BUCKETS as usize];
        for row in self.tree.iter() {
            let (key, value) = row?;
            if let Some((bucket, last)) = postings::parse_run_key(&key) {
                runs[bucket as usize].push((last, value.len()));
            }
        }
        *self.runs.lock().expect("runs lock") = runs;
        Ok(())
    }

    pub(super) fn decode_error(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Decode {
            tree: self.name.name(),
            reason: reason.into(),
        }
    }

    pub(super) fn applied(&self) -> u64 {
        self.mem.read().expect("index lock").applied
    }

    /// Records folded and not yet written.
    pub(super) fn pending_records(&self) -> u64 {
        self.pending().0
    }

    fn pending(&self) -> (u64, Option<std::time::Instant>) {
        let mem = self.mem.read().expect("index lock");
        (mem.applied - mem.durable, mem.oldest)
    }

    /// Folds consecutive records after the last one folded into memory.
    pub(super) fn fold(&self, records: &[Record]) {
        let applied = self.applied();
        let start = records.partition_point(|r| r.seq <= applied);
        let todo = &records[start..];
        let Some(last) = todo.last() else { return };
        assert_eq!(
            todo[0].seq,
            applied + 1,
            "projection {} folds gapless records",
            self.name.name()
        );
        let entries: Vec<(Vec<u8>, Posting)> = todo
            .iter()
            .filter_map(|r| {
                self.name
                    .entry(r)
                    .map(|(key, flag)| (key, postings::posting(r.seq, flag)))
            })
            .collect();
        let mut mem = self.mem.write().expect("index lock");
        for (key, posting) in entries {
            mem.active.push(key, posting);
        }
        mem.oldest.get_or_insert_with(std::time::Instant::now);
        mem.applied = last.seq;
    }

    /// Writes what was folded in memory: per bucket one run (merged with the bucket's
    /// newest runs while the new one is at least half their size), the checkpoint last.
    pub(super) fn flush(&self) -> Result<(), StoreError> {
        let mut runs = self.runs.lock().expect("runs lock");
        let (frozen, to) = {
            let mut mem = self.mem.write().expect("index lock");
            if mem.applied == mem.durable {
                return Ok(());
            }
            let active = std::mem::take(&mut mem.active);
            let frozen = match mem.frozen.take() {
                // A flush that failed: its postings come first.
                Some(failed) => {
                    let mut combined = Pending::default();
                    for source in [&*failed, &active] {
                        for (key, list) in &source.entries {
                            for &p in list {
                                combined.push(key.clone(), p);
                            }
                        }
                    }
                    combined
                }
                None => active,
            };
            let frozen = Arc::new(frozen);
            mem.frozen = Some(frozen.clone());
            mem.oldest = None;
            (frozen, mem.applied)
        };
        match self.write_runs(&mut runs, &frozen, to) {
            Ok(()) => {
                let mut mem = self.mem.write().expect("index lock");
                mem.durable = to;
                mem.frozen = None;
                Ok(())
            }
            Err(error) => {
                // What the tree holds now decides; the postings stay frozen for the next try.
                drop(runs);
                self.load_runs()?;
                Err(error)
            }
        }
    }

    fn write_runs(&self, runs: &mut [Vec<(u64, usize)>], frozen: &Pending, to: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut rows = 0;
        for (bucket, groups) in frozen.by_bucket() {
            let bucket_runs = &mut runs[bucket as usize];
            // After a flush cut short, a bucket may already hold some of these records.
            let high = bucket_runs.last().map_or(0, |r| r.0);
            let mut groups: Vec<(Vec<u8>, Vec<Posting>)> = groups
                .into_iter()
                .map(|(key, list)| {
                    let list: Vec<Posting> = list.iter().copied().filter(|&p| postings::seq_of(p) > high).collect();
                    (key.to_vec(), list)
                })
                .filter(|(_, list)| !list.is_empty())
                .collect();
            if groups.is_empty() {
                continue;
            }
            let mut encoded = postings::encode_run(groups.iter().map(|(k, l)| (k.as_slice(), l.as_slice())));
            while let Some(&(older_last, older_len)) = bucket_runs.last() {
                if encoded.len() * 2 < older_len || older_len > postings::MAX_MERGED_RUN_BYTES {
                    break;
                }
                let older_key = postings::run_key(bucket, older_last);
                let older = self
                    .tree
                    .get(older_key)?
                    .ok_or_else(|| self.decode_error(format!("run {older_last} of bucket {bucket} is missing")))?;
                let older = postings::decode_run(&older)
                    .map_err(|e| self.decode_error(format!("run {older_last} of bucket {bucket}: {e}")))?;
                groups = postings::merge(older, groups);
                encoded = postings::encode_run(groups.iter().map(|(k, l)| (k.as_slice(), l.as_slice())));
                batch.remove(&older_key);
                bucket_runs.pop();
            }
            batch.insert(&postings::run_key(bucket, to), encoded.as_slice());
            bucket_runs.push((to, encoded.len()));
            rows += 1;
            if rows % ROWS_PER_SLED_BATCH == 0 {
                self.tree.apply_batch(std::mem::take(&mut batch))?;
            }
        }
        batch.insert(&CHECKPOINT_KEY, &to.to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The postings of `key` with sequence numbers in `after + 1 ..= up_to`, ascending.
    fn postings(&self, key: &[u8], after: u64, up_to: u64) -> Result<Vec<Posting>, StoreError> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        // Memory first: a flush that ends meanwhile has written these, and the rows read
        // below are cut at the checkpoint seen here, so nothing is missed or doubled.
        let (mut found, durable) = {
            let mem = self.mem.read().expect("index lock");
            let mut found: Vec<Posting> = mem
                .frozen
                .iter()
                .flat_map(|f| f.get(key, after, up_to))
                .chain(mem.active.get(key, after, up_to))
                .collect();
            found.sort_unstable();
            (found, mem.durable)
        };
        let bucket = postings::bucket_of(key);
        let limit = up_to.min(durable);
        let mut from_runs = Vec::new();
        if after < limit {
            // A run's key is the last sequence number it covers: runs before `after` hold
            // nothing wanted, and the first run reaching `limit` is the last to read.
            let range = postings::run_key(bucket, after + 1)..=postings::run_key(bucket, u64::MAX);
            for row in self.tree.range(range) {
                let (row_key, run) = row?;
                let (_, last) = postings::parse_run_key(&row_key).expect("a run key");
                let list = postings::find_in_run(&run, key)
                    .map_err(|e| self.decode_error(format!("run {last} of bucket {bucket}: {e}")))?;
                from_runs.extend(
                    list.into_iter()
                        .flatten()
                        .filter(|&p| postings::seq_of(p) > after && postings::seq_of(p) <= limit),
                );
                if last >= limit {
                    break;
                }
            }
        }
        // Runs being merged can be seen twice; sequence numbers are unique.
        from_runs.append(&mut found);
        from_runs.sort_unstable();
        from_runs.dedup();
        Ok(from_runs)
    }

    /// Every key of one bucket with its postings, as folded so far (memory included).
    pub(super) fn bucket(&self, mem: &Mem, bucket: u16) -> Result<BTreeMap<Vec<u8>, Vec<Posting>>, StoreError> {
        let mut keys: BTreeMap<Vec<u8>, Vec<Posting>> = BTreeMap::new();
        for row in self.tree.scan_prefix(bucket.to_be_bytes()) {
            let (row_key, run) = row?;
            let Some((_, last)) = postings::parse_run_key(&row_key) else {
                continue;
            };
            let groups = postings::decode_run(&run)
                .map_err(|e| self.decode_error(format!("run {last} of bucket {bucket}: {e}")))?;
            for (key, list) in groups {
                keys.entry(key)
                    .or_default()
                    .extend(list.into_iter().filter(|&p| postings::seq_of(p) <= mem.durable));
            }
        }
        for pending in mem.frozen.iter().map(|f| &**f).chain([&mem.active]) {
            for (key, list) in &pending.entries {
                if postings::bucket_of(key) == bucket {
                    keys.entry(key.clone()).or_default().extend(list);
                }
            }
        }
        keys.retain(|_, list| {
            list.sort_unstable();
            list.dedup();
            !list.is_empty()
        });
        Ok(keys)
    }

    /// The index as folded so far, bucket by bucket, keys ascending: what the digest and the
    /// comparison read, whatever runs the postings happen to sit in.
    fn for_each_bucket(&self, mut each: impl FnMut(BTreeMap<Vec<u8>, Vec<Posting>>)) -> Result<(), StoreError> {
        let mem = self.mem.read().expect("index lock");
        for bucket in 0..BUCKETS {
            each(self.bucket(&mem, bucket)?);
        }
        Ok(())
    }

    pub(super) fn digest(&self) -> Result<[u8; 32], StoreError> {
        let mut hasher = blake3::Hasher::new();
        self.for_each_bucket(|keys| {
            for (key, list) in keys {
                hasher.update(&(key.len() as u64).to_le_bytes());
                hasher.update(&key);
                hasher.update(&(list.len() as u64).to_le_bytes());
                for p in list {
                    hasher.update(&p.to_le_bytes());
                }
            }
        })?;
        Ok(*hasher.finalize().as_bytes())
    }

    /// Empties the index, checkpoint included.
    fn clear(&self) -> Result<(), StoreError> {
        let mut runs = self.runs.lock().expect("runs lock");
        let mut mem = self.mem.write().expect("index lock");
        self.tree.clear()?;
        *mem = Mem::default();
        *runs = vec![Vec::new(); BUCKETS as usize];
        Ok(())
    }
}

/// The projection store: a sled database with one tree per index.
pub struct Projections {
    pub(super) db: sled::Db,
    /// Which generation of each projection's tree is live.
    pub(super) generations: sled::Tree,
    pub(super) indexes: RwLock<HashMap<ProjectionName, Arc<Index>>>,
    flush_age: std::time::Duration,
}

impl Projections {
    /// Opens the store in `dir` with the default options; see [`Projections::open_with`].
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens the store in `dir`; the caller owns the data directory (`engine::DataDirLock`).
    /// A store sled finds damaged is moved aside (it is only a cache of the log) and a fresh
    /// one is folded from the log. An I/O error — a lock held by another process among them —
    /// is returned as it is: a store that is merely busy or unreachable is never moved. A
    /// store of an older format is emptied, to be folded again.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        let db = match open_sled(dir, options) {
            Ok(db) => db,
            Err(sled::Error::Io(e)) => return Err(sled::Error::Io(e).into()),
            Err(error) => {
                let aside = PathBuf::from(format!("{}.unreadable-{}", dir.display(), std::process::id()));
                tracing::warn!(%error, moved_to = %aside.display(), "projection store unreadable; rebuilding from the log");
                std::fs::rename(dir, &aside).map_err(|e| StoreError::Sled(e.into()))?;
                open_sled(dir, options)?
            }
        };
        let generations = db.open_tree("generations")?;
        let format = generations
            .get(FORMAT_KEY)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])));
        if format != Some(STORE_FORMAT) {
            let old: Vec<_> = db
                .tree_names()
                .into_iter()
                .filter(|name| {
                    let name = String::from_utf8_lossy(name);
                    !name.starts_with("aux.") && name != "generations" && name != "__sled__default"
                })
                .collect();
            if format.is_some() || !old.is_empty() {
                tracing::info!(
                    format = format.unwrap_or(1),
                    "projection store of an older format; folding the indexes again from the log"
                );
            }
            for name in old {
                db.drop_tree(name)?;
            }
            generations.clear()?;
            generations.insert(FORMAT_KEY, &STORE_FORMAT.to_be_bytes())?;
            generations.flush()?;
        }
        let mut indexes = HashMap::new();
        for name in ProjectionName::ALL {
            let generation = generation_of(&generations, name)?;
            let tree = db.open_tree(tree_name(name, generation))?;
            indexes.insert(name, Arc::new(Index::open(name, tree)?));
        }
        Ok(Self {
            db,
            generations,
            indexes: RwLock::new(indexes),
            flush_age: options.flush_age,
        })
    }

    pub(super) fn index(&self, name: ProjectionName) -> Arc<Index> {
        self.indexes.read().expect("projection map lock")[&name].clone()
    }

    /// The last sequence number folded into a projection (queries see it at once).
    pub fn checkpoint(&self, name: ProjectionName) -> Result<u64, StoreError> {
        Ok(self.index(name).applied())
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
        self.index(name).clear()
    }

    /// Folds consecutive records into every projection whose checkpoint is behind them, in
    /// memory; [`Projections::write_due`] and [`Projections::flush`] write them.
    pub fn apply(&self, records: &[Record]) -> Result<(), StoreError> {
        for name in ProjectionName::ALL {
            self.index(name).fold(records);
        }
        Ok(())
    }

    /// Writes what was folded in memory if it is [`FLUSH_RECORDS`] records or older than
    /// the store's flush age ([`StoreOptions::flush_age`]); returns whether it wrote.
    pub fn write_due(&self) -> Result<bool, StoreError> {
        let due = ProjectionName::ALL.iter().any(|&name| {
            let (records, oldest) = self.index(name).pending();
            records >= FLUSH_RECORDS || (records > 0 && oldest.is_some_and(|t| t.elapsed() >= self.flush_age))
        });
        if due {
            self.write_pending()?;
        }
        Ok(due)
    }

    /// Writes what was folded in memory.
    pub fn write_pending(&self) -> Result<(), StoreError> {
        for name in ProjectionName::ALL {
            self.index(name).flush()?;
        }
        Ok(())
    }

    /// The postings of `key` in an index with sequence numbers in `after + 1 ..= up_to`.
    pub fn postings(
        &self,
        name: ProjectionName,
        key: &[u8],
        after: u64,
        up_to: u64,
    ) -> Result<Vec<Posting>, StoreError> {
        self.index(name).postings(key, after, up_to)
    }

    /// blake3 over a projection's keys and postings in key order: two stores that folded
    /// the same records have the same digest, however their flushes fell.
    pub fn digest(&self, name: ProjectionName) -> Result<[u8; 32], StoreError> {
        self.index(name).digest()
    }

    /// A tree for other durable, non-ledger records (the operations history).
    pub fn aux_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(format!("aux.{name}"))?)
    }

    /// Writes what was folded in memory, then everything to disk (on shutdown; in between,
    /// sled flushes on its own).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.write_pending()?;
        self.db.flush()?;
        Ok(())
    }
}

/// How long opening waits for sled's own lock on the store. The caller owns the data
/// directory, so no other process holds it: only the last handles of an engine this process
/// just stopped (a read finishing on a blocking thread, a server task ending) can, briefly.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn open_sled(dir: &Path, options: &StoreOptions) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).cache_capacity(options.cache_bytes).open() {
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

pub(crate) fn checkpoint_of(tree: &sled::Tree) -> Result<u64, StoreError> {
    Ok(tree
        .get(CHECKPOINT_KEY)?
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
}

/// blake3 over a tree's rows in key order, checkpoint excluded: what a projection snapshot
/// file records to check its rows.
pub(crate) fn rows_checksum(tree: &sled::Tree) -> Result<[u8; 32], StoreError> {
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

pub(super) fn tree_name(name: ProjectionName, generation: u64) -> String {
    format!("{}.{generation}", name.name())
}

pub(super) fn generation_of(generations: &sled::Tree, name: ProjectionName) -> Result<u64, StoreError> {
    Ok(generations
        .get(name.name())?
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
}

//! Rebuilding a projection into a fresh generation of its tree, and projection snapshot
//! files that a rebuild (or a store that was lost) can start from.
//!
//! A snapshot file (`<name>-<seq>.snap`) holds one projection's rows (its runs) as of a
//! checkpoint:
//!
//! ```text
//! "TALLYPSN" | u32 version (2) | u16 name length | name | u64 seq | [32] chain hash of the
//! log at seq | [32] checksum of the rows | u64 row count | rows: u32 key length, key,
//! u32 value length, value (key order)
//! ```
//!
//! Loading checks the chain hash against the log (the snapshot belongs to this log) and the
//! checksum against the rows (the file is intact). Files of version 1 (rows of the
//! projections before they pointed into the log) are not read.

use super::compare::{compare_indexes, RowDifference};
use super::store::{
    checkpoint_of, generation_of, rows_checksum, tree_name, Index, ProjectionName, Projections, StoreError,
    CHECKPOINT_KEY,
};
use crate::domain::Record;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TALLYPSN";
const VERSION: u32 = 2;
/// Snapshot files kept per projection; older ones are deleted.
const KEEP_SNAPSHOTS: usize = 2;

/// A projection being folded into its next generation.
pub struct Rebuild {
    name: ProjectionName,
    generation: u64,
    index: Index,
    from_snapshot: Option<u64>,
}

/// What a finished rebuild found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RebuildOutcome {
    pub projection: ProjectionName,
    /// The sequence number both were compared at.
    pub seq: u64,
    pub live_digest: [u8; 32],
    pub rebuilt_digest: [u8; 32],
    pub swapped: bool,
    pub from_snapshot: Option<u64>,
    /// Where the two part ways, when the digests differ (left: live, right: rebuilt).
    pub first_difference: Option<RowDifference>,
}

impl RebuildOutcome {
    pub fn matched(&self) -> bool {
        self.live_digest == self.rebuilt_digest
    }
}

/// A projection snapshot file, as its header describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub projection: ProjectionName,
    pub seq: u64,
    pub log_hash: [u8; 32],
    /// blake3 over the rows, to check the file.
    pub checksum: [u8; 32],
    pub rows: u64,
    pub path: PathBuf,
}

/// A rebuild writes its runs once this many records are folded (at most about 40 MB of
/// postings in memory, for an index that files every record under a key of its own).
pub const REBUILD_FLUSH_RECORDS: u64 = 1 << 18;

impl Rebuild {
    pub fn projection(&self) -> ProjectionName {
        self.name
    }

    pub fn checkpoint(&self) -> Result<u64, StoreError> {
        Ok(self.index.applied())
    }

    /// Folds records after the rebuild's checkpoint, and writes what was folded once
    /// [`REBUILD_FLUSH_RECORDS`] gathered: fewer, larger runs, each posting merged fewer
    /// times. What is folded and not yet written is compared and adopted like the rest
    /// (the live projection's memory is too), and written when the rebuild is adopted.
    pub fn apply(&self, records: &[Record]) -> Result<(), StoreError> {
        self.index.fold(records);
        if self.index.pending_records() >= REBUILD_FLUSH_RECORDS {
            self.index.flush()?;
        }
        Ok(())
    }
}

fn snapshot_error(path: &Path, reason: impl Into<String>) -> StoreError {
    StoreError::Snapshot {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Projections {
    /// Starts a rebuild of `name` into an empty next generation.
    pub fn begin_rebuild(&self, name: ProjectionName) -> Result<Rebuild, StoreError> {
        let generation = generation_of(&self.generations, name)? + 1;
        let tree_name = tree_name(name, generation);
        self.db.drop_tree(&tree_name)?;
        Ok(Rebuild {
            name,
            generation,
            index: Index::open(name, self.db.open_tree(tree_name)?)?,
            from_snapshot: None,
        })
    }

    /// Starts a rebuild from a snapshot file: its rows, checked against its digest, at its
    /// checkpoint. `log_hash` is the chain hash of the log at the snapshot's sequence number.
    pub fn begin_rebuild_from_snapshot(&self, info: &SnapshotInfo, log_hash: [u8; 32]) -> Result<Rebuild, StoreError> {
        if log_hash != info.log_hash {
            return Err(snapshot_error(
                &info.path,
                format!("taken from another log (hash at sequence {} differs)", info.seq),
            ));
        }
        let rebuild = self.begin_rebuild(info.projection)?;
        let mut reader = BufReader::new(File::open(&info.path).map_err(|e| snapshot_error(&info.path, e.to_string()))?);
        let header = read_header(&mut reader, &info.path)?;
        let mut hasher = blake3::Hasher::new();
        let mut batch = sled::Batch::default();
        for _ in 0..header.rows {
            let key = read_chunk(&mut reader, &info.path)?;
            let value = read_chunk(&mut reader, &info.path)?;
            for part in [&key, &value] {
                hasher.update(&(part.len() as u64).to_le_bytes());
                hasher.update(part);
            }
            batch.insert(key, value);
        }
        if *hasher.finalize().as_bytes() != header.checksum {
            return Err(snapshot_error(&info.path, "rows do not match the recorded checksum"));
        }
        batch.insert(&CHECKPOINT_KEY, &header.seq.to_be_bytes());
        let tree = rebuild.index.tree.clone();
        tree.apply_batch(batch)?;
        Ok(Rebuild {
            index: Index::open(rebuild.name, tree)?,
            from_snapshot: Some(header.seq),
            ..rebuild
        })
    }

    /// Drops an unfinished rebuild.
    pub fn abandon_rebuild(&self, rebuild: Rebuild) -> Result<(), StoreError> {
        self.db.drop_tree(rebuild.index.tree.name())?;
        Ok(())
    }

    /// Makes a rebuild live without comparing it (the live projection is empty or lost).
    pub fn adopt_rebuild(&self, rebuild: Rebuild) -> Result<(), StoreError> {
        let name = rebuild.name;
        rebuild.index.flush()?;
        rebuild.index.tree.flush()?;
        self.generations
            .insert(name.name(), &rebuild.generation.to_be_bytes())?;
        self.generations.flush()?;
        let old = self
            .indexes
            .write()
            .expect("projection map lock")
            .insert(name, std::sync::Arc::new(rebuild.index));
        if let Some(old) = old {
            self.db.drop_tree(old.tree.name())?;
        }
        Ok(())
    }

    /// Compares a rebuild with the live projection (both at the same checkpoint) and swaps
    /// it in when `swap` is set; otherwise drops it.
    pub fn finish_rebuild(&self, rebuild: Rebuild, swap: bool) -> Result<RebuildOutcome, StoreError> {
        let name = rebuild.name;
        let live = self.index(name);
        let seq = rebuild.checkpoint()?;
        assert_eq!(live.applied(), seq, "a rebuild is compared at the live checkpoint");
        let comparison = compare_indexes(name, &live, &rebuild.index)?;
        let outcome = RebuildOutcome {
            projection: name,
            seq,
            live_digest: comparison.left_digest,
            rebuilt_digest: comparison.right_digest,
            swapped: swap,
            from_snapshot: rebuild.from_snapshot,
            first_difference: comparison.first_difference,
        };
        if swap {
            self.adopt_rebuild(rebuild)?;
        } else {
            self.abandon_rebuild(rebuild)?;
        }
        Ok(outcome)
    }

    /// Writes a snapshot file of a projection as of its checkpoint into `dir`. The caller
    /// keeps the projection still while it runs. `log_hash` is the chain hash at the
    /// checkpoint.
    pub fn write_projection_snapshot(
        &self,
        name: ProjectionName,
        dir: &Path,
        log_hash: [u8; 32],
    ) -> Result<SnapshotInfo, StoreError> {
        fs::create_dir_all(dir).map_err(|e| snapshot_error(dir, e.to_string()))?;
        let index = self.index(name);
        index.flush()?;
        let tree = index.tree.clone();
        let seq = checkpoint_of(&tree)?;
        let path = dir.join(format!("{}-{seq:020}.snap", name.name()));
        let temporary = path.with_extension("snap.tmp");
        let io = |e: std::io::Error| snapshot_error(&temporary, e.to_string());
        let rows = tree.len() as u64 - u64::from(tree.contains_key(CHECKPOINT_KEY)?);
        let checksum = rows_checksum(&tree)?;
        let mut out = BufWriter::new(File::create(&temporary).map_err(io)?);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        out.write_all(&(name.name().len() as u16).to_le_bytes()).map_err(io)?;
        out.write_all(name.name().as_bytes()).map_err(io)?;
        out.write_all(&seq.to_le_bytes()).map_err(io)?;
        out.write_all(&log_hash).map_err(io)?;
        out.write_all(&checksum).map_err(io)?;
        out.write_all(&rows.to_le_bytes()).map_err(io)?;
        let mut written = 0u64;
        for row in tree.iter() {
            let (key, value) = row?;
            if key.as_ref() == CHECKPOINT_KEY {
                continue;
            }
            for part in [key.as_ref(), value.as_ref()] {
                out.write_all(&(part.len() as u32).to_le_bytes()).map_err(io)?;
                out.write_all(part).map_err(io)?;
            }
            written += 1;
        }
        assert_eq!(
            written, rows,
            "the projection stayed still while its snapshot was written"
        );
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        fs::rename(&temporary, &path).map_err(io)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        prune_snapshots(dir, name);
        Ok(SnapshotInfo {
            projection: name,
            seq,
            log_hash,
            checksum,
            rows,
            path,
        })
    }
}

/// The newest readable snapshot file of a projection in `dir`.
pub fn latest_projection_snapshot(dir: &Path, name: ProjectionName) -> Option<SnapshotInfo> {
    let mut candidates = snapshot_files(dir, name);
    candidates.sort();
    candidates.into_iter().rev().find_map(|(_, path)| {
        let mut reader = BufReader::new(File::open(&path).ok()?);
        let mut info = read_header(&mut reader, &path).ok()?;
        info.path = path;
        (info.projection == name).then_some(info)
    })
}

fn snapshot_files(dir: &Path, name: ProjectionName) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{}-", name.name());
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|path| {
            let file = path.file_name()?.to_str()?;
            let seq = file.strip_prefix(&prefix)?.strip_suffix(".snap")?.parse().ok()?;
            Some((seq, path))
        })
        .collect()
}

fn prune_snapshots(dir: &Path, name: ProjectionName) {
    let mut files = snapshot_files(dir, name);
    files.sort();
    let excess = files.len().saturating_sub(KEEP_SNAPSHOTS);
    for (_, path) in files.into_iter().take(excess) {
        let _ = fs::remove_file(path);
    }
}

fn read_header(reader: &mut impl Read, path: &Path) -> Result<SnapshotInfo, StoreError> {
    let err = |reason: &str| snapshot_error(path, reason);
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic).map_err(|_| err("cut short"))?;
    if &magic != MAGIC {
        return Err(err("not a projection snapshot"));
    }
    let version = u32::from_le_bytes(read_array(reader, path)?);
    if version != VERSION {
        return Err(err("unknown snapshot version"));
    }
    let name_len = u16::from_le_bytes(read_array(reader, path)?) as usize;
    let mut name = vec![0u8; name_len];
    reader.read_exact(&mut name).map_err(|_| err("cut short"))?;
    let projection = std::str::from_utf8(&name)
        .ok()
        .and_then(ProjectionName::from_name)
        .ok_or_else(|| err("unknown projection"))?;
    Ok(SnapshotInfo {
        projection,
        seq: u64::from_le_bytes(read_array(reader, path)?),
        log_hash: read_array(reader, path)?,
        checksum: read_array(reader, path)?,
        rows: u64::from_le_bytes(read_array(reader, path)?),
        path: path.to_path_buf(),
    })
}

fn read_array<const N: usize>(reader: &mut impl Read, path: &Path) -> Result<[u8; N], StoreError> {
    let mut bytes = [0u8; N];
    reader
        .read_exact(&mut bytes)
        .map_err(|_| snapshot_error(path, "cut short"))?;
    Ok(bytes)
}

fn read_chunk(reader: &mut impl Read, path: &Path) -> Result<Vec<u8>, StoreError> {
    let len = u32::from_le_bytes(read_array(reader, path)?) as usize;
    let mut bytes = vec![0u8; len];
    reader
        .read_exact(&mut bytes)
        .map_err(|_| snapshot_error(path, "cut short"))?;
    Ok(bytes)
}

//! The write-state snapshot: the whole write-side state as of a sequence number, in its own
//! file beside the log (`<data-dir>/state.snapshot`), so a restart folds only the log after
//! it. A cache: when it is missing, does not decode, or does not match the log's chain hash
//! at its sequence number, the state is folded from the log instead.
//!
//! ```text
//! "TALLYWSS" | u32 version (8) | u64 seq | [32] chain hash at seq | MessagePack of the state
//! ```
//!
//! Version 2 kept the idempotency index as fingerprints and request prints; version 3 added
//! the ingest pipeline's state, version 4 the links, version 5 each tenant's queue depth,
//! version 6 drops the all-tenant letter count (the sum of those depths), version 7 adds
//! sessions and API keys, version 8 endpoints and deliveries. A file of another version is set aside and the log folded
//! (it is only a cache).
//!
//! Written to a temporary file, synced, then renamed over the old one: a crash leaves the
//! old snapshot or the new one, never half of one.

use crate::domain::State;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TALLYWSS";
const VERSION: u32 = 8;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.snapshot")
}

/// Writes the snapshot of `state`, whose head record has chain hash `hash`.
pub fn save(data_dir: &Path, state: &State, hash: &[u8; 32]) -> std::io::Result<()> {
    let target = path(data_dir);
    let temporary = target.with_extension("snapshot.tmp");
    let mut out = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&state.head_seq.to_le_bytes())?;
    out.write_all(hash)?;
    rmp_serde::encode::write(&mut out, state).map_err(std::io::Error::other)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&temporary, &target)?;
    File::open(data_dir)?.sync_all()
}

/// The snapshot and the chain hash at its head, if there is one that decodes.
pub fn load(data_dir: &Path) -> Option<(State, [u8; 32])> {
    let file = File::open(path(data_dir)).ok()?;
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; 8 + 4 + 8 + 32];
    input.read_exact(&mut header).ok()?;
    if &header[..8] != MAGIC || header[8..12] != VERSION.to_le_bytes() {
        tracing::warn!("write-state snapshot has an unknown format; folding the log instead");
        return None;
    }
    let seq = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let hash: [u8; 32] = header[20..52].try_into().expect("32 bytes");
    match rmp_serde::from_read::<_, State>(input) {
        Ok(state) if state.head_seq == seq => Some((state, hash)),
        Ok(_) => {
            tracing::warn!("write-state snapshot disagrees with its own header; folding the log instead");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "write-state snapshot does not decode; folding the log instead");
            None
        }
    }
}

/// Deletes the snapshot (it does not belong to this log).
pub fn remove(data_dir: &Path) {
    let _ = fs::remove_file(path(data_dir));
}

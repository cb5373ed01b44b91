//! The write-state snapshot: the whole write-side state as of a sequence number, in its own
//! file beside the log (`<data-dir>/state.snapshot`), so a restart folds only the log after
//! it. A cache: when it is missing, damaged, or does not match the log's chain hash at its
//! sequence number, the state is folded from the log instead; when it stands beyond the
//! log's head, the log lost acknowledged records and the engine refuses to start.
//!
//! ```text
//! "TALLYWSS" | u32 version (12) | u64 seq | [32] chain hash at seq | MessagePack of the state
//! | [32] blake3 of every byte before it
//! ```
//!
//! Every byte read back is checked: the state is decoded while the checksum is computed, and
//! used only if the checksum matches (one flipped bit in an idempotency fingerprint would
//! otherwise apply a retried command twice).
//!
//! Version 2 kept the idempotency index as fingerprints and request prints; version 3 added
//! the ingest pipeline's state, version 4 the links, version 5 each tenant's queue depth,
//! version 6 drops the all-tenant letter count (the sum of those depths), version 7 adds
//! sessions and API keys, version 8 endpoints and deliveries, version 9 the checksum, version 10 request prints of
//! endpoints and delivery retries from their encoding instead of their debug text, version
//! 11 the identity window and the identities older than it (16 bytes each), version 12
//! those older identities as their runs, a chunk at a time (no copy of them to write or
//! read a snapshot). A file
//! of another version is ignored and the log folded (it is only a cache).
//!
//! Written to a temporary file, synced, then renamed over the old one: a crash leaves the
//! old snapshot or the new one, never half of one.

use crate::domain::State;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"TALLYWSS";
const VERSION: u32 = 12;
/// Magic, version, sequence number, chain hash.
const HEADER_LEN: u64 = 8 + 4 + 8 + 32;
const CHECKSUM_LEN: u64 = 32;

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("state.snapshot")
}

/// A snapshot as read back: intact, with its head's chain hash.
pub struct Loaded {
    pub state: State,
    pub hash: [u8; 32],
}

/// Why a snapshot file was not used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("write-state snapshot {path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("write-state snapshot {path}: format version {version}, this build writes {VERSION}")]
    OtherVersion { path: PathBuf, version: u32 },
}

/// Feeds every byte that passes through into a blake3 hasher.
struct Hashing<T> {
    inner: T,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        Ok(read)
    }
}

/// Writes the snapshot of `state`, whose head record has chain hash `hash`.
pub fn save(data_dir: &Path, state: &State, hash: &[u8; 32]) -> std::io::Result<()> {
    let target = path(data_dir);
    let temporary = target.with_extension("snapshot.tmp");
    let mut out = Hashing {
        inner: BufWriter::with_capacity(1 << 20, File::create(&temporary)?),
        hasher: blake3::Hasher::new(),
    };
    out.write_all(MAGIC)?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&state.head_seq.to_le_bytes())?;
    out.write_all(hash)?;
    rmp_serde::encode::write(&mut out, state).map_err(std::io::Error::other)?;
    let checksum = out.hasher.finalize();
    let mut out = out.inner;
    out.write_all(checksum.as_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    fs::rename(&temporary, &target)?;
    File::open(data_dir)?.sync_all()
}

/// The snapshot, if there is one (`Ok(None)`: there is none). Its bytes are checked against
/// its checksum before the state is returned; the caller still checks its chain hash
/// against the log.
pub fn load(data_dir: &Path) -> Result<Option<Loaded>, SnapshotError> {
    let path = path(data_dir);
    let damaged = |reason: String| SnapshotError::Damaged {
        path: path.clone(),
        reason,
    };
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(e.to_string())),
    };
    let len = file.metadata().map_err(|e| damaged(e.to_string()))?.len();
    if len < HEADER_LEN + CHECKSUM_LEN {
        return Err(damaged(format!("{len} bytes, too short for a snapshot")));
    }
    let mut input = BufReader::with_capacity(1 << 20, file);
    let mut checked = Hashing {
        inner: (&mut input).take(len - CHECKSUM_LEN),
        hasher: blake3::Hasher::new(),
    };
    let mut header = [0u8; HEADER_LEN as usize];
    checked.read_exact(&mut header).map_err(|e| damaged(e.to_string()))?;
    if &header[..8] != MAGIC {
        return Err(damaged("not a write-state snapshot (bad magic)".into()));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(SnapshotError::OtherVersion { path, version });
    }
    let seq = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    let hash: [u8; 32] = header[20..52].try_into().expect("32 bytes");
    let decoded = rmp_serde::decode::from_read::<_, State>(&mut checked);
    // Hash what the decoder left (nothing, in a sound file) so the checksum covers it all.
    let trailing = std::io::copy(&mut checked, &mut std::io::sink()).map_err(|e| damaged(e.to_string()))?;
    let computed = checked.hasher.finalize();
    let mut stored = [0u8; CHECKSUM_LEN as usize];
    input.read_exact(&mut stored).map_err(|e| damaged(e.to_string()))?;
    if computed.as_bytes() != &stored {
        return Err(damaged("checksum does not match its content".into()));
    }
    let state = decoded.map_err(|e| damaged(format!("does not decode: {e}")))?;
    if trailing != 0 {
        return Err(damaged(format!("{trailing} bytes after the state")));
    }
    if state.head_seq != seq {
        return Err(damaged(format!(
            "its header says sequence {seq}, its state {}",
            state.head_seq
        )));
    }
    Ok(Some(Loaded { state, hash }))
}

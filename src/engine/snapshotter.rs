//! The snapshotter: a thread that writes the periodic write-state snapshots, so that a
//! restart after a crash folds at most a few minutes of the log. It keeps no state between
//! snapshots: each time, it restores the state as a start would (the last snapshot, then
//! the log after it, folded at millions of records a second), writes it, and lets it go.
//! So the write side holds one copy of its state in RAM, the sequencer's, plus this one
//! while a snapshot is being made; the sequencer never pauses to serialize anything but at a
//! graceful stop, when it writes the last snapshot itself (at the head, so the next start
//! folds nothing). Nothing waits for the snapshotter.

use super::followers::FollowerHealth;
use super::signal::Signal;
use crate::domain::state::WindowPolicy;
use crate::log::ReadLog;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the snapshotter sleeps between looks at the log head, if no commit wakes it.
const IDLE_POLL: Duration = Duration::from_secs(1);

pub(super) struct Snapshotter {
    pub reader: Arc<dyn ReadLog>,
    pub signal: Arc<Signal>,
    /// Where the write-state snapshot file goes (the data directory).
    pub snapshot_dir: PathBuf,
    pub snapshot_every: u64,
    /// Least time between two snapshots.
    pub interval: Duration,
    pub window: WindowPolicy,
    /// The sequence number of the newest snapshot on disk; held while one is written.
    pub saved: Arc<Mutex<u64>>,
}

impl super::followers::Follower for Snapshotter {
    const NAME: &'static str = "snapshotter";
    const BACKGROUND: bool = true;

    fn run(&mut self, health: &FollowerHealth) {
        let mut last_at = std::time::Instant::now();
        loop {
            let seen = self.signal.generation();
            if self.signal.stopping() {
                // The sequencer wrote the snapshot at the head as it stopped.
                return;
            }
            let head = self.reader.head().seq;
            let saved = *self.saved.lock().expect("no panic holds the snapshot lock");
            if head >= saved + self.snapshot_every && last_at.elapsed() >= self.interval {
                match self.snapshot(head) {
                    Ok(()) => health.fine(Self::NAME),
                    Err(error) => {
                        tracing::error!(%error, "write-state snapshot failed; trying again later");
                        health.trouble(Self::NAME, format!("cannot write a snapshot: {error}"));
                    }
                }
                last_at = std::time::Instant::now();
            }
            self.signal.wait_since(seen, IDLE_POLL);
        }
    }

    /// Nothing is kept between snapshots: there is nothing to restore.
    fn reset(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl Snapshotter {
    /// Restores the state at `head` as a start would, and writes it.
    fn snapshot(&self, head: u64) -> Result<(), String> {
        let started = std::time::Instant::now();
        let (state, _) =
            super::recovery::restore(&self.snapshot_dir, &self.reader, head, self.window).map_err(|e| e.to_string())?;
        let hash = match self.reader.hash_at(state.head_seq) {
            Ok(Some(hash)) => hash,
            other => return Err(format!("cannot read the record a snapshot would end at: {other:?}")),
        };
        save_newer(&self.snapshot_dir, &self.saved, &state, &hash).map_err(|e| e.to_string())?;
        tracing::info!(
            seq = state.head_seq,
            took_ms = started.elapsed().as_millis() as u64,
            "write-state snapshot saved"
        );
        Ok(())
    }
}

/// Writes `state` as the write-state snapshot unless one as new is on disk already (the
/// sequencer's at a stop and the snapshotter's may cross).
pub(super) fn save_newer(
    dir: &Path,
    saved: &Mutex<u64>,
    state: &crate::domain::State,
    hash: &[u8; 32],
) -> std::io::Result<()> {
    let mut saved = saved.lock().expect("no panic holds the snapshot lock");
    if state.head_seq == 0 || state.head_seq <= *saved {
        return Ok(());
    }
    super::snapshot::save(dir, state, hash)?;
    *saved = state.head_seq;
    Ok(())
}

//! The state mirror: a thread that follows the committed log into its own copy of the
//! write-side state and writes the write-state snapshots from it, so the sequencer never
//! pauses to serialize anything. Nothing waits for it: it may lag under load.

use super::followers::FollowerHealth;
use super::Signal;
use crate::domain::{evolve, State};
use crate::log::LogReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Records read from the log per step.
const READ_CHUNK: u64 = 4096;
/// How long the mirror sleeps when caught up, if no commit wakes it first.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// How long the mirror lets commits gather after one wakes it. Nothing reads its state but
/// the snapshot it writes every few minutes, so it need not follow each group commit: woken
/// for each, it spent 13 µs of CPU a command at 64 clients and 125 µs with one client;
/// lingering, 4.5 and 11.5 (BENCHMARKS.md).
const LINGER: Duration = Duration::from_millis(100);
/// Least time between two periodic snapshots. A snapshot serializes the whole state on this
/// thread, which stops folding meanwhile (seconds for millions of idempotency keys), so
/// balance queries wait; taking one every N records at a high command rate would also
/// spend a core on it. A restart folds at most this much time of commands instead, at
/// millions of records per second.
const MIN_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(300);

pub(super) struct Mirror {
    pub state: State,
    pub reader: LogReader,
    pub signal: Arc<Signal>,
    /// Where the write-state snapshot file goes (the data directory).
    pub snapshot_dir: PathBuf,
    pub snapshot_every: u64,
    /// The last record folded, for the lag on /metrics.
    pub folded: Arc<std::sync::atomic::AtomicU64>,
    /// The identity window the state keeps.
    pub window: crate::domain::state::WindowPolicy,
}

impl super::followers::Follower for Mirror {
    const NAME: &'static str = "state mirror";

    fn run(&mut self, health: &FollowerHealth) {
        let mut last_snapshot = self.head();
        let mut last_snapshot_at = std::time::Instant::now();
        loop {
            let seen = self.signal.generation();
            let head = self.reader.head().seq;
            let at = self.head();
            if head > at {
                match self.fold(at + 1, head.min(at + READ_CHUNK)) {
                    Ok(()) => health.fine(Self::NAME),
                    Err(error) => {
                        // A stop does not wait for a disk that cannot be read: what the
                        // mirror holds is whole records, and the next start folds the rest.
                        if self.signal.stopping() {
                            self.snapshot();
                            return;
                        }
                        tracing::error!(%error, "state mirror cannot read the log; retrying");
                        health.trouble(Self::NAME, format!("cannot read the log: {error}"));
                        self.signal.wait_stop(IDLE_POLL);
                    }
                }
                if self.head() >= last_snapshot + self.snapshot_every
                    && last_snapshot_at.elapsed() >= MIN_SNAPSHOT_INTERVAL
                {
                    self.snapshot();
                    (last_snapshot, last_snapshot_at) = (self.head(), std::time::Instant::now());
                }
                continue;
            }
            health.fine(Self::NAME);
            if self.signal.stopping() {
                self.snapshot();
                return;
            }
            self.signal.wait_since(seen, IDLE_POLL);
            self.signal.wait_stop(LINGER);
        }
    }

    /// A fold cut short by a panic may have left the state half changed: it is restored
    /// again, from the write-state snapshot and the log, as a start would.
    fn reset(&mut self) -> Result<(), String> {
        let head = self.reader.head().seq;
        let (state, _) =
            super::restore(&self.snapshot_dir, &self.reader, head, self.window).map_err(|e| e.to_string())?;
        self.state = state;
        self.folded
            .store(self.state.head_seq, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}

impl Mirror {
    fn head(&self) -> u64 {
        self.state.head_seq
    }

    fn fold(&mut self, from: u64, to: u64) -> Result<(), crate::log::LogError> {
        for record in self.reader.iter_range_trusted(from, to) {
            evolve(&mut self.state, &record?);
        }
        self.folded
            .store(self.state.head_seq, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    fn snapshot(&self) {
        let state = &self.state;
        if state.head_seq == 0 {
            return;
        }
        let hash = match self.reader.hash_at(state.head_seq) {
            Ok(Some(hash)) => hash,
            other => {
                tracing::error!(?other, "cannot read the record a snapshot would end at");
                return;
            }
        };
        let started = std::time::Instant::now();
        match super::snapshot::save(&self.snapshot_dir, state, &hash) {
            Ok(()) => tracing::info!(
                seq = state.head_seq,
                took_ms = started.elapsed().as_millis() as u64,
                "write-state snapshot saved"
            ),
            Err(error) => tracing::error!(%error, "write-state snapshot failed"),
        }
    }
}

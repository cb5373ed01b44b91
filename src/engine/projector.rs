//! The projector: a thread that follows the committed log into the sled projections, and
//! keeps a mirror of the write-side state from which it writes snapshots, so that the
//! sequencer never pauses to serialize anything.

use super::Signal;
use crate::domain::{evolve, State};
use crate::log::LogReader;
use crate::projection::Projections;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Records folded per sled batch: large enough to amortize sled's per-batch cost, small
/// enough that queries waiting for a fresh record do not wait on a huge batch.
const RECORDS_PER_BATCH: usize = 4096;

/// How long the projector waits for a signal before looking at the head by itself.
const IDLE_POLL: Duration = Duration::from_millis(200);

pub(super) struct Projector {
    pub projections: Arc<Projections>,
    pub reader: LogReader,
    pub signal: Arc<Signal>,
    pub applied: watch::Sender<u64>,
    pub mirror: State,
    pub snapshot_every: u64,
    /// Held while applying, so that a rebuild can compare and swap at a still checkpoint.
    pub apply_lock: Arc<Mutex<()>>,
    pub projection_snapshot_every: u64,
    pub projection_snapshot_dir: PathBuf,
}

impl Projector {
    pub fn run(mut self) {
        let mut last_snapshot = self.mirror.head_seq;
        let mut last_projection_snapshot = self.mirror.head_seq;
        loop {
            let stopping = self.signal.wait(IDLE_POLL);
            if let Err(error) = self.catch_up() {
                tracing::error!(%error, "projection update failed; retrying");
                std::thread::sleep(IDLE_POLL);
                continue;
            }
            if stopping || self.mirror.head_seq >= last_snapshot + self.snapshot_every {
                self.snapshot();
                last_snapshot = self.mirror.head_seq;
            }
            let every = self.projection_snapshot_every;
            if every > 0 && self.mirror.head_seq >= last_projection_snapshot + every {
                let dir = &self.projection_snapshot_dir;
                match super::jobs::snapshot_projections(&self.projections, &self.reader, &self.apply_lock, dir) {
                    Ok(summary) => tracing::info!(%summary, "periodic projection snapshot"),
                    Err(error) => tracing::error!(?error, "periodic projection snapshot failed"),
                }
                last_projection_snapshot = self.mirror.head_seq;
            }
            if stopping {
                if let Err(error) = self.projections.flush() {
                    tracing::error!(%error, "projection flush failed");
                }
                return;
            }
        }
    }

    /// Folds everything committed since the last call.
    fn catch_up(&mut self) -> Result<(), Box<dyn std::error::Error>> {
        let head = self.reader.head().seq;
        let mut from = self.projections.applied()?.min(self.mirror.head_seq) + 1;
        while from <= head {
            let to = head.min(from + RECORDS_PER_BATCH as u64 - 1);
            let records = self.reader.iter_range(from, to).collect::<Result<Vec<_>, _>>()?;
            {
                let _applying = self.apply_lock.lock().expect("apply lock");
                self.projections.apply(&records)?;
            }
            let mirrored = self.mirror.head_seq;
            for record in records.iter().filter(|r| r.seq > mirrored) {
                evolve(&mut self.mirror, record);
            }
            self.applied.send_replace(to);
            from = to + 1;
        }
        Ok(())
    }

    fn snapshot(&self) {
        if self.mirror.head_seq == 0 {
            return;
        }
        let hash = match crate::log::read_one(&self.reader, self.mirror.head_seq) {
            Ok(Some(record)) => record.hash,
            other => {
                tracing::error!(?other, "cannot read the record a snapshot would end at");
                return;
            }
        };
        match self.projections.save_snapshot(&self.mirror, &hash) {
            Ok(()) => tracing::debug!(seq = self.mirror.head_seq, "write-state snapshot saved"),
            Err(error) => tracing::error!(%error, "write-state snapshot failed"),
        }
    }
}

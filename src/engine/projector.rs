//! The projector: a thread that follows the committed log into the sled projections,
//! applying each batch under the apply lock (so a rebuild can compare and swap at a still
//! checkpoint), and writes projection snapshot files now and then. On stop it finishes the
//! batch in hand and leaves the rest to the next start, which resumes from the checkpoints.

use super::followers::FollowerHealth;
use super::signal::{Hurry, Signal};
use crate::log::ReadLog;
use crate::projection::Projections;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Records folded per sled batch: large enough to amortize sled's per-batch cost, small
/// enough that queries waiting for a fresh record do not wait on a huge batch.
const RECORDS_PER_BATCH: u64 = 4096;

/// How long the projector sleeps when caught up, if no commit wakes it first.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// How long the projector lets commits gather after one wakes it, unless a query waits for
/// it. Each sled batch has a cost whatever its size (a checkpoint read and write per
/// projection, the accounts' rows read back): with one client, woken for every group
/// commit of one command, the projector spent 220 µs of CPU a command, and the sled threads
/// 155 µs more, on the cores the answers needed; lingering, 65 and 21 (BENCHMARKS.md).
/// Under heavy load the batches are large anyway. 10 ms is below anything a person
/// notices, and a query that needs the projections cuts it short.
const LINGER: Duration = Duration::from_millis(10);

pub(super) struct Projector {
    pub projections: Arc<Projections>,
    pub reader: Arc<dyn ReadLog>,
    pub signal: Arc<Signal>,
    /// Queries waiting for the projections; they cut the linger short.
    pub hurry: Arc<Hurry>,
    pub applied: watch::Sender<u64>,
    /// Held while applying, so that a rebuild can compare and swap at a still checkpoint.
    pub apply_lock: Arc<Mutex<()>>,
    pub projection_snapshot_every: u64,
    pub projection_snapshot_dir: PathBuf,
}

impl super::followers::Follower for Projector {
    const NAME: &'static str = "projector";
    /// Not background: what it has not folded, a history or audit query cannot see yet, so
    /// it keeps the scheduler's normal share. Niced, it fell 1.2M records (13 s of writes)
    /// behind a minute of batch load that it follows within 1.6 s at normal priority, with
    /// the same write rate (BENCHMARKS.md, `benches/projector_lag.sh`).
    const BACKGROUND: bool = false;

    fn run(&mut self, health: &FollowerHealth) {
        let mut last_projection_snapshot = self.projections.applied().unwrap_or(0);
        loop {
            // A stop does not wait for a backlog: projections resume from their checkpoints.
            if self.signal.stopping() {
                if let Err(error) = self.projections.flush() {
                    tracing::error!(%error, "projection flush failed");
                }
                return;
            }
            let seen = self.signal.generation();
            let head = self.reader.head().seq;
            let applied = match self.projections.applied() {
                Ok(applied) => applied,
                Err(error) => {
                    tracing::error!(%error, "cannot read projection checkpoints; retrying");
                    health.trouble(Self::NAME, format!("cannot read the projection checkpoints: {error}"));
                    self.signal.wait_stop(IDLE_POLL);
                    continue;
                }
            };
            // A rebuild brings the live projections forward itself, under the apply lock:
            // what they reached is published here too, or queries would wait for a head
            // they already hold until the next commit.
            if *self.applied.borrow() != applied {
                self.applied.send_replace(applied);
            }
            if head > applied {
                let to = head.min(applied + RECORDS_PER_BATCH);
                if let Err(error) = self.apply(applied + 1, to) {
                    tracing::error!(%error, "projection update failed; retrying");
                    health.trouble(
                        Self::NAME,
                        format!("cannot fold records {}..={to}: {error}", applied + 1),
                    );
                    self.signal.wait_stop(IDLE_POLL);
                    continue;
                }
                health.fine(Self::NAME);
                let every = self.projection_snapshot_every;
                if every > 0 && to >= last_projection_snapshot + every {
                    let dir = &self.projection_snapshot_dir;
                    match super::jobs::snapshot_projections(&self.projections, &self.reader, &self.apply_lock, dir) {
                        Ok(summary) => tracing::info!(%summary, "periodic projection snapshot"),
                        Err(error) => tracing::error!(?error, "periodic projection snapshot failed"),
                    }
                    last_projection_snapshot = to;
                }
                continue;
            }
            // Caught up: what was folded in memory is written once it is old enough.
            if let Err(error) = self.write_due() {
                tracing::error!(%error, "projection write failed; retrying");
                health.trouble(Self::NAME, format!("cannot write the projections: {error}"));
                self.signal.wait_stop(IDLE_POLL);
                continue;
            }
            health.fine(Self::NAME);
            self.signal.wait_since(seen, IDLE_POLL);
            self.hurry.linger(LINGER);
        }
    }

    /// The projections resume from their checkpoints: a checkpoint moves with (or, for
    /// the idempotent folds, after) the rows it covers, so a fold cut short by a panic is
    /// folded again and nothing is undone by hand.
    fn reset(&mut self) -> Result<(), String> {
        Ok(())
    }
}

impl Projector {
    fn apply(&self, from: u64, to: u64) -> Result<(), Box<dyn std::error::Error>> {
        let records = self
            .reader
            .iter_range_trusted(from, to)
            .collect::<Result<Vec<_>, _>>()?;
        {
            let _applying = self.apply_lock.lock().expect("apply lock");
            self.projections.apply(&records)?;
        }
        // Queries see what was folded at once; writing it out comes after.
        self.applied.send_replace(self.projections.applied()?);
        self.write_due()
    }

    /// Writes the folded postings when enough gathered or they waited long enough.
    fn write_due(&self) -> Result<(), Box<dyn std::error::Error>> {
        let _applying = self.apply_lock.lock().expect("apply lock");
        self.projections.write_due()?;
        Ok(())
    }
}

//! The state mirror: a thread that follows the committed log into an in-memory copy of the
//! write-side state. Balance and hold queries read it (so they see every acknowledged
//! command within microseconds, however far the sled projections lag under load), and it
//! writes the write-state snapshots, so the sequencer never pauses to serialize anything.

use super::Signal;
use crate::domain::{evolve, State};
use crate::log::LogReader;
use crate::projection::Projections;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// Records read from the log per step.
const READ_CHUNK: u64 = 4096;
/// Records folded per hold of the write lock: readers wait at most this long.
const FOLD_CHUNK: usize = 256;
/// How long the mirror sleeps when caught up, if no commit wakes it first.
const IDLE_POLL: Duration = Duration::from_millis(200);

pub(super) struct Mirror {
    pub state: Arc<RwLock<State>>,
    pub reader: LogReader,
    pub signal: Arc<Signal>,
    pub applied: watch::Sender<u64>,
    pub projections: Arc<Projections>,
    pub snapshot_every: u64,
}

impl Mirror {
    pub fn run(self) {
        let mut last_snapshot = self.head();
        loop {
            let seen = self.signal.generation();
            let head = self.reader.head().seq;
            let at = self.head();
            if head > at {
                if let Err(error) = self.fold(at + 1, head.min(at + READ_CHUNK)) {
                    tracing::error!(%error, "state mirror cannot read the log; retrying");
                    std::thread::sleep(IDLE_POLL);
                }
                if self.head() >= last_snapshot + self.snapshot_every {
                    self.snapshot();
                    last_snapshot = self.head();
                }
                continue;
            }
            if self.signal.stopping() {
                self.snapshot();
                return;
            }
            self.signal.wait_since(seen, IDLE_POLL);
        }
    }

    fn head(&self) -> u64 {
        self.state.read().expect("state mirror lock").head_seq
    }

    fn fold(&self, from: u64, to: u64) -> Result<(), crate::log::LogError> {
        let records = self
            .reader
            .iter_range_trusted(from, to)
            .collect::<Result<Vec<_>, _>>()?;
        for chunk in records.chunks(FOLD_CHUNK) {
            let mut state = self.state.write().expect("state mirror lock");
            for record in chunk {
                evolve(&mut state, record);
            }
        }
        self.applied.send_replace(to);
        Ok(())
    }

    fn snapshot(&self) {
        let state = self.state.read().expect("state mirror lock");
        if state.head_seq == 0 {
            return;
        }
        let hash = match crate::log::read_one(&self.reader, state.head_seq) {
            Ok(Some(record)) => record.hash,
            other => {
                tracing::error!(?other, "cannot read the record a snapshot would end at");
                return;
            }
        };
        match self.projections.save_snapshot(&state, &hash) {
            Ok(()) => tracing::debug!(seq = state.head_seq, "write-state snapshot saved"),
            Err(error) => tracing::error!(%error, "write-state snapshot failed"),
        }
    }
}

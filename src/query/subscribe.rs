//! Subscriptions: catch-up, then live. A subscription always reads from the log by sequence
//! number — from disk while behind, and as records commit once caught up — so the hand-over
//! from history to live can neither skip nor repeat a record, and a slow consumer only
//! slows its own reading: nothing is buffered for it beyond one bounded channel.

use super::filter::EventFilter;
use crate::domain::Record;
use crate::log::{LogError, ReadLog};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Records read per step from the log.
const READ_CHUNK: u64 = 1024;

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Event(Box<Record>),
    /// Everything up to and including this sequence number has been delivered or filtered
    /// out; resume from here + 1.
    Checkpoint(u64),
}

/// Runs a subscription until the receiver goes away or the engine stops. `committed`
/// follows the log's committed head.
pub async fn run(
    reader: Arc<dyn ReadLog>,
    mut committed: watch::Receiver<u64>,
    from_seq: u64,
    filter: EventFilter,
    checkpoint_every: u64,
    out: mpsc::Sender<Result<Delivery, LogError>>,
) {
    let mut next = from_seq.max(1);
    let mut since_checkpoint = 0u64;
    let mut last_checkpoint = next - 1;
    loop {
        let head = *committed.borrow_and_update();
        if next <= head {
            let (from, to) = (next, head.min(next + READ_CHUNK - 1));
            let chunk_reader = reader.clone();
            let read =
                tokio::task::spawn_blocking(move || chunk_reader.iter_range(from, to).collect::<Result<Vec<_>, _>>())
                    .await;
            let records = match read {
                Ok(Ok(records)) => records,
                Ok(Err(error)) => {
                    let _ = out.send(Err(error)).await;
                    return;
                }
                Err(_) => return,
            };
            for record in records {
                let seq = record.seq;
                if filter.matches(&record) && out.send(Ok(Delivery::Event(Box::new(record)))).await.is_err() {
                    return;
                }
                next = seq + 1;
                since_checkpoint += 1;
                if since_checkpoint >= checkpoint_every {
                    if out.send(Ok(Delivery::Checkpoint(seq))).await.is_err() {
                        return;
                    }
                    (since_checkpoint, last_checkpoint) = (0, seq);
                }
            }
            continue;
        }
        // Caught up: tell the consumer where it stands, then wait for the next commit.
        if last_checkpoint < next - 1 {
            if out.send(Ok(Delivery::Checkpoint(next - 1))).await.is_err() {
                return;
            }
            (since_checkpoint, last_checkpoint) = (0, next - 1);
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            _ = out.closed() => return,
        }
    }
}

//! The sequencer: the one thread that owns the write-side state and the log tail.
//!
//! It takes jobs from the bounded inbox in batches, decides each command against the state
//! as the commands before it left it, stages the events (stamped with sequence number,
//! timestamp and chain hash), commits the whole batch with one write and one fdatasync, and
//! only then answers every caller. If a commit fails, the in-memory state is ahead of the
//! disk: the sequencer stops, and every later command is refused until a restart re-reads
//! the log.

use super::clock::Clock;
use super::messages::{Answer, Job, Msg, Outcome, Query, Read};
use super::metrics::{Outcome as Counted, SequencerMetrics};
use super::signal::Signal;
use super::types::Status;
use crate::domain::{
    decide_identified, evolve_identified, Command, CommandMeta, Decision, Envelope, Identity, Policy, Record, State,
};
use crate::log::LogWriter;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// A group commit that takes this long (deciding, writing and syncing) is logged as a
/// warning: every caller in it waited that long, and a disk or a neighbour that stalls the
/// writer is what an operator looks for first.
const SLOW_GROUP_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Commands decided per group commit: enough to amortize an fdatasync (~1 ms here) over
/// thousands of commands, small enough that the first caller of a batch is not kept
/// waiting on a huge write.
pub const MAX_GROUP_COMMIT_COMMANDS: usize = 8192;

pub(super) struct Sequencer {
    pub state: State,
    /// Where a graceful stop writes the write-state snapshot, and the newest one's sequence
    /// number (shared with the snapshotter).
    pub snapshot_dir: std::path::PathBuf,
    pub snapshot_saved: Arc<std::sync::Mutex<u64>>,
    /// Reads the records of identities older than the window.
    pub reader: std::sync::Arc<dyn crate::log::ReadLog>,
    /// Where the identities that left the window are published to the submitting tasks.
    pub older: Arc<std::sync::RwLock<Arc<crate::domain::state::OlderIdentities>>>,
    pub log: Box<dyn LogWriter>,
    pub policy: Policy,
    pub clock: Arc<dyn Clock>,
    pub inbox: mpsc::Receiver<Msg>,
    /// Sequence number of the last committed record, for queries and the projector.
    pub committed: watch::Sender<u64>,
    pub projector: Arc<Signal>,
    pub status: watch::Sender<Status>,
    pub metrics: SequencerMetrics,
    /// The API's copy of sessions and API keys, changed after each commit that changed them.
    pub credentials: Arc<std::sync::RwLock<crate::domain::session::Credentials>>,
    /// This batch's records that change credentials, until the batch is committed.
    pub credential_records: Vec<Record>,
    pub event_ids: EventIds,
}

impl Sequencer {
    /// Runs until told to stop, the inbox closes, or a commit fails.
    pub fn run(mut self) {
        let mut batch: Vec<Job> = Vec::new();
        let mut reads: Vec<Read> = Vec::new();
        let mut stopping = false;
        while !stopping {
            let mut commands = 0;
            let mut next = self.inbox.blocking_recv();
            loop {
                match next {
                    Some(Msg::Job(job)) => {
                        commands += job.commands.len();
                        batch.push(job);
                    }
                    Some(Msg::Read(read)) => reads.push(read),
                    Some(Msg::Stop) | None => {
                        stopping = true;
                        break;
                    }
                }
                if commands >= MAX_GROUP_COMMIT_COMMANDS {
                    break;
                }
                match self.inbox.try_recv() {
                    Ok(msg) => next = Some(msg),
                    Err(_) => break,
                }
            }
            let started = Instant::now();
            let first_seq = self.state.head_seq;
            let outcomes: Vec<Vec<Outcome>> = batch.iter().map(|job| self.decide_job(job)).collect();
            let committing = Instant::now();
            if let Err(error) = self.log.commit() {
                tracing::error!(%error, "group commit failed; the sequencer stops and refuses all commands until restart");
                self.status.send_replace(Status::Failed(error.to_string()));
                return;
            }
            let commit_seconds = committing.elapsed().as_secs_f64();
            let head = self.log.head();
            assert_eq!(head.seq, self.state.head_seq, "the log and the state agree on the head");
            let appended = head.seq > *self.committed.borrow();
            if appended {
                // Only a batch that appended something moves the head and wakes the followers.
                self.committed.send_replace(head.seq);
            }
            // Published after the commit: a submitting task reads the records it finds there.
            let older = &self.state.idempotency.older;
            if older.cutoff() != self.older.read().expect("only this thread writes it").cutoff() {
                *self.older.write().expect("only this thread writes it") = Arc::new(older.clone());
            }
            if !self.credential_records.is_empty() {
                let mut view = self.credentials.write().expect("no panic holds the credentials");
                for record in self.credential_records.drain(..) {
                    view.apply(&record);
                }
            }
            // Counted before anyone hears back: a caller that scrapes the metrics after its
            // answer sees its own command in them.
            let records = self.state.head_seq - first_seq;
            let ingest = &self.state.ingest;
            // Tenants are programs, a handful: summing their depths is cheap.
            let depth = ingest.counters.values().map(|c| c.depth).sum();
            self.metrics.pipeline_depth(depth, ingest.retry_due.len());
            let batch_seconds = started.elapsed().as_secs_f64();
            self.metrics.flush(commands, records, commit_seconds, batch_seconds);
            if batch_seconds >= SLOW_GROUP_COMMIT.as_secs_f64() {
                tracing::warn!(
                    commands,
                    records,
                    decide_ms = (committing - started).as_millis() as u64,
                    commit_ms = (commit_seconds * 1e3) as u64,
                    "slow group commit: every caller in it waited"
                );
            }
            for (job, outcome) in batch.drain(..).zip(outcomes) {
                // A caller that gave up (dropped its receiver) still had its command applied.
                let _ = job.reply.send(outcome);
            }
            for read in reads.drain(..) {
                let _ = read.reply.send(answer(&self.state, read.query));
            }
            if appended {
                self.projector.notify();
            }
        }
        // The state is whole and final: written at the head, the next start folds nothing.
        let started = Instant::now();
        let head = self.log.head();
        match super::snapshotter::save_newer(&self.snapshot_dir, &self.snapshot_saved, &self.state, &head.hash) {
            Ok(()) => tracing::info!(
                seq = head.seq,
                took_ms = started.elapsed().as_millis() as u64,
                "write-state snapshot saved at the stop"
            ),
            Err(error) => tracing::error!(%error, "write-state snapshot at the stop failed"),
        }
        self.status.send_replace(Status::Stopped);
        tracing::info!(head = self.state.head_seq, "sequencer stopped");
    }

    fn decide_job(&mut self, job: &Job) -> Vec<Outcome> {
        let now_us = self.clock.now_us().max(self.state.head_ts_us);
        job.commands
            .iter()
            .zip(&job.identities)
            .map(|((meta, command), identity)| {
                let outcome = self.decide_one(meta, command, identity, now_us);
                match &outcome {
                    Outcome::Appended(records) => {
                        self.metrics.count(command, Counted::Appended);
                        self.metrics.records(records);
                    }
                    Outcome::Replayed { .. } => self.metrics.count(command, Counted::Replayed),
                    // A pulse that found nothing due is the sweeper idling, not a command
                    // anyone sent (`tally_sweeper_pulses_total` counts the pulses).
                    Outcome::Nothing if command.is_pulse() => {}
                    Outcome::Nothing => self.metrics.count(command, Counted::Unchanged),
                    Outcome::Rejected(rejection) => self.metrics.rejected(command, rejection),
                }
                outcome
            })
            .collect()
    }

    /// Decides one command and, if it appends, stages and folds its events.
    fn decide_one(&mut self, meta: &CommandMeta, command: &Command, identity: &Identity, now_us: u64) -> Outcome {
        let emitted = match decide_identified(&self.policy, &self.state, meta, command, identity, now_us, &self.reader)
        {
            Ok(Decision::Append(emitted)) => emitted,
            Ok(Decision::Replay { first_seq, last_seq }) => return Outcome::Replayed { first_seq, last_seq },
            Ok(Decision::Nothing) => return Outcome::Nothing,
            Ok(Decision::Refuse { events, rejection }) => {
                // Recorded without the caller's key, which stays free for a later try.
                let unkeyed = CommandMeta {
                    idempotency: None,
                    ..meta.clone()
                };
                self.stage(&unkeyed, events, None, now_us);
                return Outcome::Rejected(rejection);
            }
            Err(rejection) => return Outcome::Rejected(rejection),
        };
        Outcome::Appended(self.stage(meta, emitted, Some(identity), now_us))
    }

    /// Stamps, stages and folds a command's events; `first_of` is the identity of the
    /// command they answer, if they do (a recorded refusal does not).
    fn stage(
        &mut self,
        meta: &CommandMeta,
        emitted: Vec<crate::domain::Emitted>,
        first_of: Option<&Identity>,
        now_us: u64,
    ) -> Vec<Record> {
        let mut records = Vec::with_capacity(emitted.len());
        for (at, e) in emitted.into_iter().enumerate() {
            let envelope = Envelope {
                event_id: self.event_ids.next(now_us),
                tenant: e.tenant,
                stream: e.account,
                correlation_id: meta.correlation_id.clone(),
                causation_id: meta.causation_id.clone(),
                actor: meta.actor.clone(),
                idempotency_key: meta.idempotency.as_ref().map(|k| k.key.clone()).unwrap_or_default(),
                idempotency_scope: meta.idempotency.as_ref().map(|k| k.scope.clone()).unwrap_or_default(),
            };
            let seq = self.state.head_seq + 1;
            let hash = self.log.stage(seq, now_us, &envelope, &e.event);
            let record = Record {
                seq,
                ts_us: now_us,
                envelope,
                event: e.event,
                hash,
            };
            let identity = first_of.and_then(|identity| identity.for_record(meta, at, &record.envelope.tenant));
            evolve_identified(&mut self.state, &record, identity);
            if record.event.kind().is_credential() {
                self.credential_records.push(record.clone());
            }
            records.push(record);
        }
        records
    }
}

/// Draws event ids: UUID v7, the record's millisecond then 74 random bits. The random bits
/// come from the operating system's random source, as `Uuid::now_v7` would take them, but
/// a pool of them at a time: a `getrandom` call per event was a tenth of the sequencer's
/// time (BENCHMARKS.md). Unpredictable, so an id tells nothing of other tenants' events.
pub(super) struct EventIds {
    pool: Box<[u8; EVENT_ID_POOL_BYTES]>,
    /// Bytes of the pool already given out.
    used: usize,
}

/// Random bytes an event id takes (74 bits of them survive the version and variant).
const EVENT_ID_RANDOM_BYTES: usize = 10;

/// 400 ids' worth of random bytes per `getrandom` call: a syscall per 400 events costs
/// nothing measurable, and 4 KB stays in cache.
const EVENT_ID_POOL_BYTES: usize = 400 * EVENT_ID_RANDOM_BYTES;

impl EventIds {
    pub fn new() -> Self {
        Self {
            pool: Box::new([0; EVENT_ID_POOL_BYTES]),
            used: EVENT_ID_POOL_BYTES,
        }
    }

    /// The next id, carrying `ts_us`'s millisecond.
    pub fn next(&mut self, ts_us: u64) -> Uuid {
        if self.used + EVENT_ID_RANDOM_BYTES > EVENT_ID_POOL_BYTES {
            getrandom::fill(&mut self.pool[..]).expect("the operating system's random source answers");
            self.used = 0;
        }
        let random: &[u8; EVENT_ID_RANDOM_BYTES] = self.pool[self.used..self.used + EVENT_ID_RANDOM_BYTES]
            .try_into()
            .expect("ten bytes");
        self.used += EVENT_ID_RANDOM_BYTES;
        uuid::Builder::from_unix_timestamp_millis(ts_us / 1000, random).into_uuid()
    }
}

/// Answers a read from the committed state.
fn answer(state: &State, query: Query) -> Answer {
    match query {
        Query::Account { tenant, account } => {
            let key = crate::domain::state::AccountKey::new(&tenant, &account);
            Answer::Account(state.accounts.get(&key).map(|a| crate::projection::AccountView {
                account_id: account,
                posted: a.posted,
                held: a.held,
                lifetime: a.lifetime,
                tier: state.tier_name(a.tier).to_string(),
                active_holds: a.active_holds,
                opened_at_us: a.opened_at_us,
                last_seq: a.last_seq,
            }))
        }
        Query::Hold(hold_id) => Answer::Hold(state.holds.get(&hold_id).map(|h| crate::projection::HoldView {
            hold_id,
            tenant: h.tenant.clone(),
            account_id: h.account.clone(),
            amount: h.amount,
            status: h.status,
            created_at_us: h.created_at_us,
            expires_at_us: h.expires_at_us,
            committed: h.committed,
            released: h.released,
            resolved_at_us: h.resolved_at_us,
            resolved_seq: h.resolved_seq,
        })),
        Query::DeadLetters { tenant, filter, limit } => {
            Answer::DeadLetters(super::pipeline::dead_letters(state, &tenant, &filter, limit))
        }
        Query::Receipt { tenant, receipt_seq } => {
            Answer::Receipt(super::pipeline::receipt(state, &tenant, receipt_seq))
        }
        Query::PipelineStats { tenant } => Answer::PipelineStats(super::pipeline::stats(state, &tenant)),
        Query::RedrivePlan { tenant, selection, max } => {
            Answer::RedrivePlan(super::pipeline::redrive_plan(state, &tenant, &selection, max))
        }
        Query::Link { tenant, link_id } => {
            Answer::Link(state.links.links.get(&link_id).filter(|l| l.tenant == tenant).cloned())
        }
        Query::LinksOf { tenant, account } => {
            let mut links: Vec<_> = state
                .links
                .links
                .iter()
                .filter(|(_, l)| l.tenant == tenant && l.account == account)
                .map(|(&id, l)| (id, l.clone()))
                .collect();
            links.sort_unstable_by_key(|(id, _)| std::cmp::Reverse(*id));
            Answer::Links(links)
        }
        Query::Inspect(read) => {
            read(state);
            Answer::Inspected
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventIds;

    #[test]
    fn event_ids_are_version_7_distinct_across_pool_refills_and_carry_the_record_millisecond() {
        let mut ids = EventIds::new();
        let ts_us = 1_767_225_600_123_456;
        let drawn: std::collections::HashSet<_> = (0..10_000).map(|_| ids.next(ts_us)).collect();
        assert_eq!(drawn.len(), 10_000);
        for id in &drawn {
            assert_eq!(id.get_version_num(), 7);
            let (seconds, nanos) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
            assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, ts_us / 1000);
        }
        let mut other = EventIds::new();
        assert!(!drawn.contains(&other.next(ts_us)), "another drawer draws other ids");
    }
}

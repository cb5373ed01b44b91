//! The engine's handle: what the API, the sweeper and the delivery worker hold to submit
//! commands, read the write-side state through the sequencer, and wait for or read the
//! projections.

use super::clock::Clock;
use super::followers::{self, FollowerHealth};
use super::messages::{Answer, Job, Msg, Outcome, Query, Read};
use super::operations::{JobError, OperationRecord, Operations};
use super::pipeline::{LetterFilter, LetterPage, PipelineStats, ReceiptState, RedriveSelection};
use super::recovery::read_ranges;
use super::signal::Hurry;
use super::types::{EngineConfig, EngineError, Receipt, Status, QUERY_CONSISTENCY_WAIT};
use super::{jobs, metrics, projector};
use crate::domain::limits::EXPIRE_PULSE_MAX_HOLDS;
use crate::domain::state::{OlderIdentities, OlderRecords};
use crate::domain::{Command, CommandMeta, Identity, Record, Rejection, State};
use crate::log::ReadLog;
use crate::projection::{ProjectionName, Projections};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, watch};

/// A cheap, cloneable handle to a running engine: submit commands, read projections.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) inbox: mpsc::Sender<Msg>,
    pub(super) reader: Arc<dyn ReadLog>,
    /// The identities that left the writer's window, as it last published them.
    pub(super) older: Arc<std::sync::RwLock<Arc<OlderIdentities>>>,
    pub(super) projections: Arc<Projections>,
    pub(super) committed: watch::Receiver<u64>,
    pub(super) applied: watch::Receiver<u64>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) apply_lock: Arc<Mutex<()>>,
    pub(super) operations: Operations,
    pub(super) config: Arc<EngineConfig>,
    pub(super) credentials: Arc<std::sync::RwLock<crate::domain::session::Credentials>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) hurry: Arc<Hurry>,
    /// The sequence number of the newest write-state snapshot on disk.
    pub(super) snapshot_saved: Arc<std::sync::Mutex<u64>>,
    pub(super) followers: Arc<FollowerHealth>,
}

impl EngineHandle {
    /// Sessions and API keys as of the last commit: the sequencer changes this copy after
    /// each group commit that changed them and before it answers, so a logout is in force
    /// for every call that starts after the logout's answer.
    pub fn credentials(&self) -> std::sync::RwLockReadGuard<'_, crate::domain::session::Credentials> {
        self.credentials
            .read()
            .expect("the sequencer never panics holding the credentials")
    }

    /// Reads the committed state with `read`, on the sequencer's thread right after a group
    /// commit (so it sees every acknowledged command): for reads that are small and quick.
    pub async fn inspect<T: Send + 'static>(
        &self,
        read: impl FnOnce(&State) -> T + Send + 'static,
    ) -> Result<T, EngineError> {
        let (reply, answer) = oneshot::channel();
        let query = Query::Inspect(Box::new(move |state: &State| {
            let _ = reply.send(read(state));
        }));
        self.read(query).await?;
        answer.await.map_err(|_| self.unavailable())
    }

    /// The deliveries due now, at most `limit`, oldest event first (see
    /// [`crate::domain::delivery::DeliveryState::due`]).
    pub async fn deliveries_due(&self, limit: usize) -> Result<Vec<(u64, u64)>, EngineError> {
        let now_us = self.now_us();
        self.inspect(move |state| state.deliveries.due(now_us, limit)).await
    }

    /// The time the sequencer would stamp now (log time), in µs since the epoch.
    pub fn now_us(&self) -> u64 {
        self.clock.now_us()
    }

    /// Submits one command and waits until it is committed (or refused).
    pub async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, EngineError> {
        let mut results = self.submit_batch(vec![(meta, command)]).await?;
        assert_eq!(results.len(), 1, "one result per command");
        results.pop().expect("one result").map_err(EngineError::Rejected)
    }

    /// Submits commands that are decided in order, each against the state the ones before
    /// it left; answers once all are committed, one result per command.
    pub async fn submit_batch(
        &self,
        commands: Vec<(CommandMeta, Command)>,
    ) -> Result<Vec<Result<Receipt, Rejection>>, EngineError> {
        let (reply, answer) = oneshot::channel();
        let older = self
            .older
            .read()
            .expect("the sequencer never panics publishing")
            .clone();
        let identities = commands
            .iter()
            .map(|(meta, command)| {
                let mut identity = Identity::of(meta, command);
                if !older.is_empty() {
                    identity.check_older(&older, &self.reader);
                }
                identity
            })
            .collect();
        self.send(Msg::Job(Job {
            commands,
            identities,
            reply,
        }))?;
        let outcomes = answer.await.map_err(|_| self.unavailable())?;
        let ranges: Vec<(u64, u64)> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                Outcome::Replayed { first_seq, last_seq } => Some((*first_seq, *last_seq)),
                _ => None,
            })
            .collect();
        let mut replayed = self.read_ranges(ranges).await?.into_iter();
        let mut results = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            results.push(match outcome {
                Outcome::Appended(records) => Ok(Receipt {
                    replayed: false,
                    records,
                }),
                Outcome::Nothing => Ok(Receipt {
                    replayed: false,
                    records: Vec::new(),
                }),
                Outcome::Replayed { .. } => Ok(Receipt {
                    replayed: true,
                    records: replayed.next().expect("one read per replay"),
                }),
                Outcome::Rejected(rejection) => Err(rejection),
            });
        }
        Ok(results)
    }

    /// Reads the records of each committed range `first..=last`, in one blocking task: a
    /// batch of retries costs one pass over the log where their ranges are close, not one
    /// read (and frame decode) each. Read back trusted, as the followers do: the chain was
    /// checked when the log was opened, and these records were acknowledged since.
    async fn read_ranges(&self, ranges: Vec<(u64, u64)>) -> Result<Vec<Vec<Record>>, EngineError> {
        if ranges.is_empty() {
            return Ok(Vec::new());
        }
        let reader = self.reader.clone();
        let read = tokio::task::spawn_blocking(move || read_ranges(&reader, &ranges))
            .await
            .map_err(|e| EngineError::Unavailable(format!("reader task failed: {e}")))?;
        Ok(read?)
    }

    /// Up to `pulses` retry pulses; returns how many attempts were made (fewer than `pulses`
    /// means no retry is due now). One pulse goes first: when it finds nothing due, as on
    /// an idle server, that is all; otherwise the rest go in one job.
    pub async fn retry_due(&self, pulses: usize) -> Result<usize, EngineError> {
        let meta = CommandMeta {
            tenant: "system".into(),
            actor: "system:ingest".into(),
            ..CommandMeta::default()
        };
        let attempts = |results: Vec<Result<Receipt, Rejection>>| {
            results
                .iter()
                .filter(|r| matches!(r, Ok(receipt) if !receipt.records.is_empty()))
                .count()
        };
        ::metrics::counter!(super::metrics::SWEEPER_PULSES_TOTAL, "pulse" => "retry_due").increment(1);
        let first = attempts(self.submit_batch(vec![(meta.clone(), Command::RetryDue)]).await?);
        if first == 0 || pulses <= 1 {
            return Ok(first);
        }
        let rest = (1..pulses).map(|_| (meta.clone(), Command::RetryDue)).collect();
        ::metrics::counter!(super::metrics::SWEEPER_PULSES_TOTAL, "pulse" => "retry_due").increment(pulses as u64 - 1);
        Ok(first + attempts(self.submit_batch(rest).await?))
    }

    /// The tenant's dead letters (and, if asked, retrying events) matching `filter`.
    pub async fn dead_letters(
        &self,
        tenant: &str,
        filter: LetterFilter,
        limit: usize,
    ) -> Result<LetterPage, EngineError> {
        let query = Query::DeadLetters {
            tenant: tenant.to_string(),
            filter,
            limit,
        };
        match self.read(query).await? {
            Answer::DeadLetters(page) => Ok(page),
            _ => unreachable!("a dead-letter query is answered with letters"),
        }
    }

    /// Where one received external event stands.
    pub async fn receipt(&self, tenant: &str, receipt_seq: u64) -> Result<Option<ReceiptState>, EngineError> {
        let query = Query::Receipt {
            tenant: tenant.to_string(),
            receipt_seq,
        };
        match self.read(query).await? {
            Answer::Receipt(state) => Ok(state),
            _ => unreachable!("a receipt query is answered with a receipt"),
        }
    }

    /// The pipeline's counters and queue for a tenant.
    pub async fn pipeline_stats(&self, tenant: &str) -> Result<PipelineStats, EngineError> {
        match self.read(Query::PipelineStats { tenant: tenant.into() }).await? {
            Answer::PipelineStats(stats) => Ok(stats),
            _ => unreachable!("a stats query is answered with stats"),
        }
    }

    /// The letters a re-drive would apply, in order (see `engine::pipeline::redrive_plan`).
    pub async fn redrive_plan(
        &self,
        tenant: &str,
        selection: RedriveSelection,
        max: usize,
    ) -> Result<Vec<u64>, EngineError> {
        let query = Query::RedrivePlan {
            tenant: tenant.into(),
            selection,
            max,
        };
        match self.read(query).await? {
            Answer::RedrivePlan(plan) => Ok(plan),
            _ => unreachable!("a plan query is answered with a plan"),
        }
    }

    /// A link as the ledger has it now, if it is the tenant's.
    pub async fn link(&self, tenant: &str, link_id: u64) -> Result<Option<crate::domain::state::Link>, EngineError> {
        let query = Query::Link {
            tenant: tenant.into(),
            link_id,
        };
        match self.read(query).await? {
            Answer::Link(link) => Ok(link),
            _ => unreachable!("a link query is answered with a link"),
        }
    }

    /// An account's links, newest first.
    pub async fn links_of(
        &self,
        tenant: &str,
        account: &str,
    ) -> Result<Vec<(u64, crate::domain::state::Link)>, EngineError> {
        let query = Query::LinksOf {
            tenant: tenant.into(),
            account: account.into(),
        };
        match self.read(query).await? {
            Answer::Links(links) => Ok(links),
            _ => unreachable!("a links query is answered with links"),
        }
    }

    /// One expiry pulse (holds and links); returns how many it expired.
    pub async fn sweep(&self) -> Result<usize, EngineError> {
        let meta = CommandMeta {
            tenant: "system".into(),
            actor: "system:sweeper".into(),
            ..CommandMeta::default()
        };
        let receipt = self
            .submit(
                meta,
                Command::ExpireDue {
                    limit: EXPIRE_PULSE_MAX_HOLDS,
                },
            )
            .await?;
        Ok(receipt.records.len())
    }

    /// Waits until every sled projection has applied everything committed when this was
    /// called, so that a query sees every command acknowledged before it arrived.
    pub async fn wait_for_projections(&self) -> Result<(), EngineError> {
        self.wait_until(self.applied.clone()).await
    }

    /// An account as the sequencer has it: every command acknowledged before the call is in
    /// it. Goes through the inbox (full → [`EngineError::Busy`]).
    pub async fn account(
        &self,
        tenant: &str,
        account: &str,
    ) -> Result<Option<crate::projection::AccountView>, EngineError> {
        let query = Query::Account {
            tenant: tenant.to_string(),
            account: account.to_string(),
        };
        match self.read(query).await? {
            Answer::Account(view) => Ok(view),
            _ => unreachable!("an account query is answered with an account"),
        }
    }

    /// A hold as the sequencer has it.
    pub async fn hold(&self, hold_id: u64) -> Result<Option<crate::projection::HoldView>, EngineError> {
        match self.read(Query::Hold(hold_id)).await? {
            Answer::Hold(view) => Ok(view),
            _ => unreachable!("a hold query is answered with a hold"),
        }
    }

    async fn read(&self, query: Query) -> Result<Answer, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.send(Msg::Read(Read { query, reply }))?;
        answer.await.map_err(|_| self.unavailable())
    }

    /// Puts a message in the inbox without waiting: a full inbox is [`EngineError::Busy`].
    fn send(&self, message: Msg) -> Result<(), EngineError> {
        self.inbox.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ::metrics::counter!(metrics::INBOX_FULL_TOTAL).increment(1);
                EngineError::Busy
            }
            mpsc::error::TrySendError::Closed(_) => self.unavailable(),
        })
    }

    async fn wait_until(&self, mut applied: watch::Receiver<u64>) -> Result<(), EngineError> {
        let target = *self.committed.borrow();
        if *applied.borrow() >= target {
            return Ok(());
        }
        if let Some(trouble) = self.followers.of(<projector::Projector as followers::Follower>::NAME) {
            // Waiting would only time out: say why now.
            return Err(EngineError::Unavailable(format!(
                "projections are behind the log (at {}, head {target}): the projector {trouble}",
                *applied.borrow()
            )));
        }
        let _waiting = self.hurry.wait();
        let caught_up = tokio::time::timeout(QUERY_CONSISTENCY_WAIT, applied.wait_for(|&seq| seq >= target)).await;
        match caught_up {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(self.unavailable()),
            Err(_) => Err(EngineError::Unavailable(format!(
                "projections did not reach sequence {target} within {QUERY_CONSISTENCY_WAIT:?}"
            ))),
        }
    }

    fn unavailable(&self) -> EngineError {
        match &*self.status.borrow() {
            Status::Failed(reason) => EngineError::Unavailable(format!("the ledger failed and must restart: {reason}")),
            _ => EngineError::Unavailable("the ledger is shutting down".into()),
        }
    }

    /// Jobs and reads waiting in the inbox for the sequencer.
    pub fn inbox_depth(&self) -> usize {
        self.inbox.max_capacity() - self.inbox.capacity()
    }

    /// Bytes of committed records in the log (frames included, segment headers and the
    /// preallocated room not).
    pub fn log_bytes(&self) -> u64 {
        self.reader.committed_bytes()
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Whether health should say SERVING: the engine serves and its followers fold the log.
    pub fn serving(&self) -> bool {
        *self.status.borrow() == Status::Serving && self.followers.summary().is_none()
    }

    /// What keeps the projector or the snapshotter from reading the log, if anything:
    /// health reports NOT_SERVING while there is something.
    pub fn followers(&self) -> &FollowerHealth {
        &self.followers
    }

    /// A watch of the engine's status, for health reporting.
    pub fn status_watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Sequence number of the last committed record.
    pub fn committed_seq(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Sequence number of the newest write-state snapshot on disk: a restart after a crash
    /// folds the log after it.
    pub fn snapshot_seq(&self) -> u64 {
        *self.snapshot_saved.lock().expect("no panic holds the snapshot lock")
    }

    pub fn reader(&self) -> &Arc<dyn ReadLog> {
        &self.reader
    }

    /// A watch of the last committed sequence number, for subscriptions.
    pub fn committed_watch(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }

    pub fn operations(&self) -> &Operations {
        &self.operations
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Starts rebuilding one projection (or all, one after the other) as an operation.
    pub fn start_rebuild(
        &self,
        only: Option<ProjectionName>,
        verify_only: bool,
        from_snapshot: bool,
    ) -> OperationRecord {
        let names: Vec<ProjectionName> = only.map_or(ProjectionName::ALL.to_vec(), |n| vec![n]);
        let description = format!(
            "rebuild {}{}{}",
            names.iter().map(|n| n.name()).collect::<Vec<_>>().join(", "),
            if verify_only { ", verify only" } else { "" },
            if from_snapshot {
                ", from the latest snapshot"
            } else {
                ""
            }
        );
        let (projections, reader, lock) = (self.projections.clone(), self.reader.clone(), self.apply_lock.clone());
        let snapshot_dir = from_snapshot.then(|| self.config.projection_snapshot_dir());
        self.operations.start("rebuild", None, description, move |control| {
            let mut lines = Vec::new();
            let mut mismatched = Vec::new();
            for name in names {
                let outcome = jobs::rebuild(
                    &projections,
                    &reader,
                    &lock,
                    name,
                    snapshot_dir.as_deref(),
                    verify_only,
                    control,
                )?;
                if !outcome.matched() {
                    mismatched.push(name.name());
                }
                lines.push(jobs::describe(&outcome));
            }
            if verify_only && !mismatched.is_empty() {
                return Err(JobError::Failed(format!(
                    "projections differ from a fold of the log: {}; {}",
                    mismatched.join(", "),
                    lines.join("; ")
                )));
            }
            Ok(lines.join("; "))
        })
    }

    /// Starts writing a snapshot file of every projection.
    pub fn start_projection_snapshot(&self) -> OperationRecord {
        let (projections, reader, lock) = (self.projections.clone(), self.reader.clone(), self.apply_lock.clone());
        let dir = self.config.projection_snapshot_dir();
        self.operations.start(
            "projection_snapshot",
            None,
            format!("snapshot every projection into {}", dir.display()),
            move |_| jobs::snapshot_projections(&projections, &reader, &lock, &dir),
        )
    }

    /// Starts writing a window of events to `<data-dir>/exports/<tenant>/<file_name>` as
    /// JSON lines, an operation of `tenant` (whose events `filter` must confine it to).
    /// What it reports names the file relative to the data directory, never its absolute path.
    pub fn start_replay_to_file(
        &self,
        tenant: &str,
        window: crate::query::Window,
        filter: crate::query::EventFilter,
        max_events: u64,
        file_name: &str,
    ) -> Result<OperationRecord, jobs::ExportError> {
        let target = jobs::export_target(&self.config.exports_dir(), tenant, file_name)?;
        if let Err(error) = std::fs::create_dir_all(&target.dir) {
            tracing::error!(%error, dir = %target.dir.display(), "cannot create the exports directory");
            return Err(jobs::ExportError::Storage(format!(
                "cannot create the directory of {}: {}",
                target.shown,
                error.kind()
            )));
        }
        let reader = self.reader.clone();
        let description = format!("replay {window:?} to {}", target.shown);
        Ok(self
            .operations
            .start("replay_to_file", Some(tenant), description, move |control| {
                let written = jobs::replay_to_file(&reader, window, filter, max_events, &target.path, control)?;
                Ok(format!("{written} events written to {}", target.shown))
            }))
    }

    /// The indexes and the log together, for queries through the indexes.
    pub fn indexed(&self) -> crate::query::indexed::Indexed<'_> {
        crate::query::indexed::Indexed {
            indexes: self.indexes(),
            reader: self.reader().as_ref(),
        }
    }

    /// The indexes, as queries and the API read them.
    pub fn indexes(&self) -> &dyn crate::projection::ReadIndexes {
        self.projections.as_ref()
    }

    /// The projection store itself, for the engine's jobs and for tests that compare it.
    pub fn projections(&self) -> &Projections {
        &self.projections
    }
}

/// The log answers for identities older than the writer's window.
impl OlderRecords for Arc<dyn ReadLog> {
    fn read(&self, from: u64, to: u64) -> Result<Vec<Record>, String> {
        let to = to.min(self.head().seq);
        if from > to {
            return Ok(Vec::new());
        }
        let seqs: Vec<u64> = (from..=to).collect();
        self.read_seqs(&seqs).map_err(|e| e.to_string())
    }
}

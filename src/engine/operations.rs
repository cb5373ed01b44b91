//! Long-running operations (rebuilds, replays to file, projection snapshots): each has an
//! id, a state, progress, start and end times, and can be listed, fetched and cancelled —
//! the shape of google.longrunning Operations. Finished ones are kept as history in the
//! projection store, so they survive a restart (an operation that was running when the
//! process died is marked failed on the next start).
//!
//! Each operation belongs to the tenant that started it (a replay of its events to a file)
//! or to the server (rebuilds and snapshots of the projections, which hold every tenant's
//! rows). A tenant sees, and may cancel, only its own; the server's operator sees all.

use super::Clock;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Operations kept as history; older ones are forgotten.
pub const MAX_OPERATIONS_KEPT: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperationState {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl OperationState {
    pub fn finished(self) -> bool {
        matches!(
            self,
            OperationState::Completed | OperationState::Failed | OperationState::Cancelled
        )
    }
}

/// One operation, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// UUID v7: ids sort by start time.
    pub id: String,
    pub kind: String,
    pub description: String,
    pub state: OperationState,
    pub done: u64,
    pub total: u64,
    pub started_at_us: u64,
    pub ended_at_us: u64,
    pub result: String,
    pub error: String,
    /// The tenant that started it; `None` for the server's own jobs. Records written before
    /// operations had owners decode as `None` (the field is last, and MessagePack arrays may
    /// end early): they were rebuilds and snapshots, or exports whose tenant was not kept,
    /// so no tenant sees them and the server's operator sees them all.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Who is looking at operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer<'a> {
    /// The server's operator: every operation.
    Server,
    /// A tenant: the operations it started, nothing else — not even whether another exists.
    Tenant(&'a str),
}

impl Viewer<'_> {
    pub fn sees(self, op: &OperationRecord) -> bool {
        match self {
            Viewer::Server => true,
            Viewer::Tenant(tenant) => op.tenant.as_deref() == Some(tenant),
        }
    }
}

/// Why a job stopped without completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    Cancelled,
    Failed(String),
}

impl<E: std::fmt::Display> From<E> for JobError {
    fn from(error: E) -> Self {
        JobError::Failed(error.to_string())
    }
}

struct Registry {
    operations: BTreeMap<String, OperationRecord>,
    cancels: BTreeMap<String, Arc<AtomicBool>>,
}

/// Signalled whenever an operation finishes.
#[derive(Default)]
struct Finished {
    condvar: std::sync::Condvar,
}

/// What a running job sees: its progress to report and its cancellation to honour.
#[derive(Clone)]
pub struct JobControl {
    id: String,
    registry: Arc<Mutex<Registry>>,
    cancel: Arc<AtomicBool>,
}

impl JobControl {
    /// A control for work run outside the registry (the CLI); never cancelled.
    pub fn detached() -> Self {
        JobControl {
            id: String::new(),
            registry: Arc::new(Mutex::new(Registry {
                operations: BTreeMap::new(),
                cancels: BTreeMap::new(),
            })),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn set_progress(&self, done: u64, total: u64) {
        if let Some(op) = self
            .registry
            .lock()
            .expect("operations lock")
            .operations
            .get_mut(&self.id)
        {
            (op.done, op.total) = (done, total);
        }
    }

    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// `Err(Cancelled)` once cancellation was asked for: jobs call it between chunks.
    pub fn check(&self) -> Result<(), JobError> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(JobError::Cancelled);
        }
        Ok(())
    }
}

/// The registry of operations.
#[derive(Clone)]
pub struct Operations {
    registry: Arc<Mutex<Registry>>,
    finished: Arc<Finished>,
    store: sled::Tree,
    clock: Arc<dyn Clock>,
}

impl Operations {
    /// Loads the history; operations a crash interrupted are marked failed.
    pub fn load(store: sled::Tree, clock: Arc<dyn Clock>) -> Self {
        let mut operations = BTreeMap::new();
        for row in store.iter().flatten() {
            if let Ok(mut op) = rmp_serde::from_slice::<OperationRecord>(&row.1) {
                if !op.state.finished() {
                    op.state = OperationState::Failed;
                    op.error = "interrupted: the server stopped while it ran".into();
                    op.ended_at_us = clock.now_us();
                    let _ = store.insert(op.id.as_bytes(), rmp_serde::to_vec(&op).expect("plain data"));
                }
                operations.insert(op.id.clone(), op);
            }
        }
        Self {
            registry: Arc::new(Mutex::new(Registry {
                operations,
                cancels: BTreeMap::new(),
            })),
            finished: Arc::new(Finished::default()),
            store,
            clock,
        }
    }

    /// Starts `job` on a thread of its own and returns its operation, already running.
    /// `tenant` owns it; `None` makes it the server's.
    pub fn start<F>(&self, kind: &str, tenant: Option<&str>, description: String, job: F) -> OperationRecord
    where
        F: FnOnce(&JobControl) -> Result<String, JobError> + Send + 'static,
    {
        let id = uuid::Uuid::now_v7().to_string();
        let record = OperationRecord {
            id: id.clone(),
            kind: kind.to_string(),
            description,
            state: OperationState::Running,
            done: 0,
            total: 0,
            started_at_us: self.clock.now_us(),
            ended_at_us: 0,
            result: String::new(),
            error: String::new(),
            tenant: tenant.map(str::to_string),
        };
        let cancel = Arc::new(AtomicBool::new(false));
        {
            let mut registry = self.registry.lock().expect("operations lock");
            registry.operations.insert(id.clone(), record.clone());
            registry.cancels.insert(id.clone(), cancel.clone());
        }
        self.persist(&record);
        let control = JobControl {
            id: id.clone(),
            registry: self.registry.clone(),
            cancel,
        };
        let this = self.clone();
        std::thread::Builder::new()
            .name(format!("tally-op-{kind}"))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&control)))
                    .unwrap_or_else(|_| Err(JobError::Failed("the job panicked".into())));
                this.finish(&id, outcome);
            })
            .expect("a job thread starts");
        record
    }

    fn finish(&self, id: &str, outcome: Result<String, JobError>) {
        let record = {
            let mut registry = self.registry.lock().expect("operations lock");
            registry.cancels.remove(id);
            let op = registry
                .operations
                .get_mut(id)
                .expect("started operations are registered");
            op.ended_at_us = self.clock.now_us();
            match outcome {
                Ok(result) => (op.state, op.result) = (OperationState::Completed, result),
                Err(JobError::Cancelled) => op.state = OperationState::Cancelled,
                Err(JobError::Failed(error)) => (op.state, op.error) = (OperationState::Failed, error),
            }
            let record = op.clone();
            while registry.operations.len() > MAX_OPERATIONS_KEPT {
                let oldest = registry.operations.keys().next().cloned().expect("non-empty");
                registry.operations.remove(&oldest);
                let _ = self.store.remove(oldest.as_bytes());
            }
            record
        };
        self.persist(&record);
        self.finished.condvar.notify_all();
    }

    /// Waits until the operation has finished, at most `timeout`; returns it as it then is.
    pub fn wait(&self, id: &str, timeout: std::time::Duration) -> Option<OperationRecord> {
        let registry = self.registry.lock().expect("operations lock");
        let (registry, _) = self
            .finished
            .condvar
            .wait_timeout_while(registry, timeout, |r| {
                r.operations.get(id).is_some_and(|op| !op.state.finished())
            })
            .expect("operations lock");
        registry.operations.get(id).cloned()
    }

    fn persist(&self, record: &OperationRecord) {
        if let Err(error) = self
            .store
            .insert(record.id.as_bytes(), rmp_serde::to_vec(record).expect("plain data"))
        {
            tracing::error!(%error, id = %record.id, "cannot record operation");
        }
    }

    /// The operation, if `viewer` may see it.
    pub fn get(&self, id: &str, viewer: Viewer<'_>) -> Option<OperationRecord> {
        self.registry
            .lock()
            .expect("operations lock")
            .operations
            .get(id)
            .filter(|op| viewer.sees(op))
            .cloned()
    }

    /// The operations `viewer` may see, newest first.
    pub fn list(&self, viewer: Viewer<'_>) -> Vec<OperationRecord> {
        self.registry
            .lock()
            .expect("operations lock")
            .operations
            .values()
            .rev()
            .filter(|op| viewer.sees(op))
            .cloned()
            .collect()
    }

    /// Asks a running operation `viewer` may see to stop; it ends as cancelled at its next
    /// check. `None`, and nothing asked, for one it may not see.
    pub fn cancel(&self, id: &str, viewer: Viewer<'_>) -> Option<OperationRecord> {
        let registry = self.registry.lock().expect("operations lock");
        let op = registry.operations.get(id).filter(|op| viewer.sees(op))?;
        if let Some(flag) = registry.cancels.get(id) {
            flag.store(true, Ordering::SeqCst);
        }
        Some(op.clone())
    }
}

//! How the engine's threads wake each other: the followers' signal (commits to fold, or a
//! stop), the queries that hurry the projector, and the followers' lower priority.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Wakes the projector; also carries the request to stop.
#[derive(Default)]
pub(crate) struct Signal {
    pub(super) state: Mutex<(u64, bool)>,
    pub(super) condvar: Condvar,
}

impl Signal {
    pub(super) fn notify(&self) {
        self.state.lock().expect("signal lock").0 += 1;
        self.condvar.notify_all();
    }

    pub(super) fn stop(&self) {
        self.state.lock().expect("signal lock").1 = true;
        self.condvar.notify_all();
    }

    /// The number of notifications so far: read it before checking for work, then
    /// [`Signal::wait_since`] it, and no notification in between is missed.
    pub(super) fn generation(&self) -> u64 {
        self.state.lock().expect("signal lock").0
    }

    pub(super) fn stopping(&self) -> bool {
        self.state.lock().expect("signal lock").1
    }

    /// Waits until a notification after `seen`, a stop request, or the timeout.
    pub(super) fn wait_since(&self, seen: u64, timeout: Duration) {
        let guard = self.state.lock().expect("signal lock");
        let _ = self
            .condvar
            .wait_timeout_while(guard, timeout, |(generation, stop)| *generation == seen && !*stop)
            .expect("signal lock");
    }

    /// Waits until a stop request or the timeout, whatever notifications come meanwhile.
    pub(super) fn wait_stop(&self, timeout: Duration) {
        let guard = self.state.lock().expect("signal lock");
        let _ = self
            .condvar
            .wait_timeout_while(guard, timeout, |(_, stop)| !*stop)
            .expect("signal lock");
    }
}

/// The scheduling niceness of background followers (the snapshotter, which only writes
/// snapshots): under CPU pressure the sequencer, the API and the projector go first, and
/// the snapshotter catches up when the load eases. The projector is not lowered: queries
/// see only what it has folded.
const FOLLOWER_NICENESS: libc::c_int = 10;

/// Lowers the calling thread's priority to [`FOLLOWER_NICENESS`] (Linux schedules threads
/// individually).
pub(super) fn lower_priority(follower: &str) {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes
    // this thread's scheduling niceness.
    let result = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, FOLLOWER_NICENESS)
    };
    if result != 0 {
        tracing::debug!(follower, error = %std::io::Error::last_os_error(), "could not lower a follower's priority");
    }
}

/// Queries waiting for the sled projections to reach the head. The projector lets commits
/// gather for a moment after one wakes it (fewer, larger sled batches); while a query waits,
/// it does not.
#[derive(Default)]
pub(crate) struct Hurry {
    pub(super) waiting: std::sync::atomic::AtomicUsize,
    pub(super) signal: Signal,
}

impl Hurry {
    /// Counts a waiting query until the guard drops, and wakes the projector.
    pub(super) fn wait(&self) -> impl Drop + '_ {
        struct Waiting<'a>(&'a Hurry);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        self.waiting.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.signal.notify();
        Waiting(self)
    }

    /// Waits up to `linger` unless a query is waiting or comes to wait meanwhile, or a stop.
    pub(super) fn linger(&self, linger: Duration) {
        let asked = self.signal.generation();
        if self.waiting.load(std::sync::atomic::Ordering::Acquire) == 0 {
            self.signal.wait_since(asked, linger);
        }
    }
}

//! The followers' supervision: the projector and the snapshotter each run on a thread of
//! their own, reading the committed log. One that cannot read the log, or that panics, must
//! not be silent (queries waiting on it would time out while health says SERVING): its
//! trouble is recorded here, health turns NOT_SERVING, queries that need it are answered
//! UNAVAILABLE at once with the reason, and a panicked follower is started again from
//! what is durable (the projections' checkpoints; the write-state snapshot and the log)
//! after a growing pause. The trouble clears when the follower folds again.

use super::signal::{lower_priority, Signal};
use super::types::panic_text;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Counter of follower restarts after a panic, by follower.
pub const FOLLOWER_RESTARTS_TOTAL: &str = "tally_follower_restarts_total";
/// 1 while a follower folds the log, 0 while it is in trouble, by follower.
pub const FOLLOWER_HEALTHY: &str = "tally_follower_healthy";

/// The first pause before a panicked follower is started again; it doubles with each
/// panic in a row, up to [`MAX_RESTART_PAUSE`].
pub const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(100);
pub const MAX_RESTART_PAUSE: Duration = Duration::from_secs(30);

/// What is wrong with the followers, if anything, by follower name.
pub struct FollowerHealth {
    troubles: Mutex<BTreeMap<&'static str, String>>,
    summary: watch::Sender<Option<String>>,
}

impl Default for FollowerHealth {
    fn default() -> Self {
        Self {
            troubles: Mutex::new(BTreeMap::new()),
            summary: watch::channel(None).0,
        }
    }
}

impl FollowerHealth {
    /// Records that `follower` is in trouble, and why.
    pub fn trouble(&self, follower: &'static str, reason: impl Into<String>) {
        let reason = reason.into();
        let mut troubles = self.lock();
        if troubles.get(follower) == Some(&reason) {
            return;
        }
        troubles.insert(follower, reason);
        ::metrics::gauge!(FOLLOWER_HEALTHY, "follower" => follower).set(0.0);
        self.publish(&troubles);
    }

    /// Records that `follower` folds the log again.
    pub fn fine(&self, follower: &'static str) {
        let mut troubles = self.lock();
        if troubles.remove(follower).is_some() {
            tracing::info!(follower, "follower folds the log again");
            ::metrics::gauge!(FOLLOWER_HEALTHY, "follower" => follower).set(1.0);
            self.publish(&troubles);
        }
    }

    /// The trouble of one follower, if it has one.
    pub fn of(&self, follower: &str) -> Option<String> {
        self.lock().get(follower).cloned()
    }

    /// Every follower's trouble in one line, `None` when all are well.
    pub fn summary(&self) -> Option<String> {
        self.summary.borrow().clone()
    }

    /// A watch of [`FollowerHealth::summary`], for health reporting.
    pub fn watch(&self) -> watch::Receiver<Option<String>> {
        self.summary.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, String>> {
        // Only whole inserts and removes happen under the lock: a panic cannot tear it.
        self.troubles.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, troubles: &BTreeMap<&'static str, String>) {
        let summary = (!troubles.is_empty()).then(|| {
            troubles
                .iter()
                .map(|(follower, reason)| format!("{follower}: {reason}"))
                .collect::<Vec<_>>()
                .join("; ")
        });
        self.summary.send_replace(summary);
    }
}

/// A thread that folds the committed log.
pub(super) trait Follower: Send + 'static {
    const NAME: &'static str;
    /// Runs at a lower scheduling priority ([`lower_priority`]): work that may wait while
    /// the writer and the API are busy.
    const BACKGROUND: bool;

    /// Folds until the engine stops. Reports its own read errors to `health` (and clears
    /// them when a fold succeeds).
    fn run(&mut self, health: &FollowerHealth);

    /// Makes the follower whole again after a panic, from what is durable.
    fn reset(&mut self) -> Result<(), String>;
}

/// Runs `follower` until it returns (the engine stops); a panic is reported and the
/// follower reset and run again after a pause, for as long as the engine runs.
pub(super) fn supervise<F: Follower>(mut follower: F, health: Arc<FollowerHealth>, signal: Arc<Signal>) {
    if F::BACKGROUND {
        lower_priority(F::NAME);
    }
    ::metrics::gauge!(FOLLOWER_HEALTHY, "follower" => F::NAME).set(1.0);
    let mut pause = FIRST_RESTART_PAUSE;
    loop {
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| follower.run(&health)));
        let Err(panic) = run else {
            return;
        };
        let reason = panic_text(panic.as_ref());
        tracing::error!(follower = F::NAME, %reason, ?pause, "follower panicked; starting it again after a pause");
        health.trouble(F::NAME, format!("stopped by a panic ({reason}); starting again"));
        ::metrics::counter!(FOLLOWER_RESTARTS_TOTAL, "follower" => F::NAME).increment(1);
        loop {
            signal.wait_stop(pause);
            if signal.stopping() {
                return;
            }
            pause = (pause * 2).min(MAX_RESTART_PAUSE);
            let reset = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| follower.reset()));
            match reset {
                Ok(Ok(())) => break,
                Ok(Err(error)) => health.trouble(F::NAME, format!("cannot start again: {error}")),
                Err(panic) => health.trouble(F::NAME, format!("cannot start again: {}", panic_text(panic.as_ref()))),
            }
        }
    }
}

/// Describes the followers' metrics for /metrics.
pub fn describe() {
    metrics::describe_counter!(
        FOLLOWER_RESTARTS_TOTAL,
        "Times a follower (projector, snapshotter) was started again after a panic"
    );
    metrics::describe_gauge!(
        FOLLOWER_HEALTHY,
        "1 while a follower folds the committed log, 0 while it cannot"
    );
}

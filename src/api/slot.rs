//! The engine behind the API, which may not be there yet. The port opens before recovery
//! (log verification, state restore) so that health checks can see it: while the slot is
//! empty, health answers NOT_SERVING and every other call UNAVAILABLE (reason RECOVERING);
//! if the log is refused as corrupt, health stays NOT_SERVING and every call answers
//! DATA_LOSS (reason LOG_REFUSED) with the reason, naming the bad sequence number.

use super::status;
use crate::engine::EngineHandle;
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;
use tonic::Status;

/// Where the server stands before the engine serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Opening the log and restoring state.
    Recovering,
    /// The engine is in the slot.
    Ready,
    /// The log was refused; the reason says why.
    Refused(String),
    /// A stop was asked for: health is NOT_SERVING, new calls are refused, open streams end.
    Stopping,
}

/// A cheap, cloneable slot for the engine, filled once.
#[derive(Clone)]
pub struct EngineSlot {
    inner: Arc<Inner>,
}

struct Inner {
    engine: OnceLock<EngineHandle>,
    phase: watch::Sender<Phase>,
    links: OnceLock<super::links::LinkSettings>,
    limiter: OnceLock<super::limits::TenantLimiter>,
    auth: OnceLock<super::auth::AuthSettings>,
    destinations: OnceLock<crate::deliverer::Destinations>,
    admission: OnceLock<super::admission::Admission>,
}

impl EngineSlot {
    /// An empty slot: the server is recovering.
    pub fn recovering() -> Self {
        Self {
            inner: Arc::new(Inner {
                engine: OnceLock::new(),
                phase: watch::Sender::new(Phase::Recovering),
                links: OnceLock::new(),
                limiter: OnceLock::new(),
                auth: OnceLock::new(),
                destinations: OnceLock::new(),
                admission: OnceLock::new(),
            }),
        }
    }

    /// A slot with a running engine in it.
    pub fn ready(engine: EngineHandle) -> Self {
        let slot = Self::recovering();
        slot.fill(engine);
        slot
    }

    /// Puts the engine in: calls go through from now on.
    pub fn fill(&self, engine: EngineHandle) {
        assert!(self.inner.engine.set(engine).is_ok(), "the engine slot is filled once");
        self.inner.phase.send_replace(Phase::Ready);
    }

    /// The links' settings (base URL, token key); set once, before serving. Without them the
    /// links service takes the defaults on first use (`LinkSettings::for_data_dir`).
    pub fn set_links(&self, settings: super::links::LinkSettings) {
        assert!(self.inner.links.set(settings).is_ok(), "link settings are set once");
    }

    /// The links' settings, the defaults for the engine's data directory if none were set.
    pub fn links(&self) -> Result<&super::links::LinkSettings, Status> {
        if let Some(settings) = self.inner.links.get() {
            return Ok(settings);
        }
        let engine = self.engine()?;
        let settings =
            super::links::LinkSettings::for_data_dir(&engine.config().data_dir, super::links::DEFAULT_BASE_URL)
                .map_err(|e| Status::internal(format!("STORAGE_ERROR: cannot read or create the link key: {e}")))?;
        let _ = self.inner.links.set(settings);
        Ok(self.inner.links.get().expect("just set"))
    }

    /// The keys and rules of tokens; set once, before serving. Without them the door takes
    /// the defaults on first use (`AuthSettings::for_data_dir`).
    pub fn set_auth(&self, settings: super::auth::AuthSettings) {
        assert!(self.inner.auth.set(settings).is_ok(), "auth settings are set once");
    }

    /// Where endpoints may point; set once, before serving (none: public addresses only).
    pub fn set_destinations(&self, destinations: crate::deliverer::Destinations) {
        assert!(
            self.inner.destinations.set(destinations).is_ok(),
            "destinations are set once"
        );
    }

    pub fn destinations(&self) -> crate::deliverer::Destinations {
        *self
            .inner
            .destinations
            .get()
            .unwrap_or(&crate::deliverer::Destinations::PublicOnly)
    }

    /// Whether auth settings were set.
    pub fn has_auth(&self) -> bool {
        self.inner.auth.get().is_some()
    }

    /// The auth settings, the defaults for the engine's data directory if none were set.
    pub fn auth(&self) -> Result<&super::auth::AuthSettings, Status> {
        if let Some(settings) = self.inner.auth.get() {
            return Ok(settings);
        }
        let engine = self.engine()?;
        let settings = super::auth::AuthSettings::for_data_dir(&engine.config().data_dir)
            .map_err(|e| Status::internal(format!("STORAGE_ERROR: cannot read or create the auth keys: {e}")))?;
        let _ = self.inner.auth.set(settings);
        Ok(self.inner.auth.get().expect("just set"))
    }

    /// How many calls the server admits at once; set once, before serving (none: the
    /// defaults).
    pub fn set_admission(&self, admission: super::admission::Admission) {
        assert!(self.inner.admission.set(admission).is_ok(), "admission is set once");
    }

    pub fn admission(&self) -> super::admission::Admission {
        self.inner.admission.get().copied().unwrap_or_default()
    }

    /// Per-tenant rate limits on mutating calls; set once, before serving (none: no limits).
    pub fn set_limits(&self, limiter: super::limits::TenantLimiter) {
        assert!(self.inner.limiter.set(limiter).is_ok(), "rate limits are set once");
    }

    /// Lets `commands` mutating commands of `tenant` through, or refuses them with
    /// RESOURCE_EXHAUSTED and when to retry.
    pub fn admit(&self, tenant: &str, commands: usize) -> Result<(), Status> {
        match self.inner.limiter.get() {
            Some(limiter) => limiter.admit(tenant, commands as u64),
            None => Ok(()),
        }
    }

    /// Recovery failed: calls are answered with `reason` from now on.
    pub fn refuse(&self, reason: String) {
        assert!(self.inner.engine.get().is_none(), "a served engine is not refused");
        self.inner.phase.send_replace(Phase::Refused(reason));
    }

    /// A stop was asked for: from now on health answers NOT_SERVING, every new call
    /// UNAVAILABLE (reason SHUTTING_DOWN), and open streams end with that status. Calls
    /// already past the door are answered.
    pub fn begin_stop(&self) {
        self.inner.phase.send_replace(Phase::Stopping);
    }

    /// Resolves once a stop was asked for.
    pub async fn stopping(&self) {
        let mut phase = self.phase_watch();
        let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
    }

    pub fn phase(&self) -> Phase {
        self.inner.phase.borrow().clone()
    }

    pub fn phase_watch(&self) -> watch::Receiver<Phase> {
        self.inner.phase.subscribe()
    }

    /// The engine if it serves, else the status that says why not.
    pub fn engine(&self) -> Result<&EngineHandle, Status> {
        let phase = self.inner.phase.borrow();
        if *phase == Phase::Stopping {
            return Err(status::shutting_down());
        }
        if let Some(engine) = self.inner.engine.get() {
            return Ok(engine);
        }
        Err(match &*phase {
            Phase::Refused(reason) => status::log_refused(reason),
            _ => status::recovering(),
        })
    }

    /// The engine, if it is in the slot.
    pub fn get(&self) -> Option<&EngineHandle> {
        self.inner.engine.get()
    }
}

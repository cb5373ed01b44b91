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

/// What the API's services need besides the engine: built once, before serving, from the
/// server's settings (`tally serve`) or the defaults for a data directory, and handed to
/// the slot. Nothing in it is looked up or made on first use.
pub struct ApiSettings {
    /// The keys and rules of tokens and signed calls.
    pub auth: super::auth::AuthSettings,
    /// Where deep links point and the key that hashes their tokens.
    pub links: super::link_settings::LinkSettings,
    /// Where delivery endpoints may point.
    pub destinations: crate::outbound::Destinations,
    /// How many calls the server admits at once.
    pub admission: super::admission::Admission,
    /// Per-tenant rate limits on mutating calls; none: no limits.
    pub limiter: Option<super::limits::TenantLimiter>,
}

impl ApiSettings {
    /// The defaults for a data directory: its key ring and link key (made there, mode 0600,
    /// if missing), the default issuer, audience and links base URL, public destinations
    /// only, the default admission and no rate limits.
    pub fn for_data_dir(data_dir: &std::path::Path) -> Result<Self, String> {
        Ok(Self {
            auth: super::auth::AuthSettings::for_data_dir(data_dir)?,
            links: super::link_settings::LinkSettings::for_data_dir(data_dir, super::link_settings::DEFAULT_BASE_URL)
                .map_err(|e| format!("the link key: {e}"))?,
            destinations: crate::outbound::Destinations::PublicOnly,
            admission: super::admission::Admission::default(),
            limiter: None,
        })
    }
}

/// A cheap, cloneable slot for the engine, filled once, with the settings the services
/// were built with.
#[derive(Clone)]
pub struct EngineSlot {
    inner: Arc<Inner>,
}

struct Inner {
    engine: OnceLock<EngineHandle>,
    phase: watch::Sender<Phase>,
    settings: ApiSettings,
}

impl EngineSlot {
    /// An empty slot: the server is recovering.
    pub fn recovering(settings: ApiSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine: OnceLock::new(),
                phase: watch::Sender::new(Phase::Recovering),
                settings,
            }),
        }
    }

    /// A slot with a running engine in it.
    pub fn ready(engine: EngineHandle, settings: ApiSettings) -> Self {
        let slot = Self::recovering(settings);
        slot.fill(engine);
        slot
    }

    /// Puts the engine in: calls go through from now on.
    pub fn fill(&self, engine: EngineHandle) {
        assert!(self.inner.engine.set(engine).is_ok(), "the engine slot is filled once");
        self.inner.phase.send_replace(Phase::Ready);
    }

    /// The links' settings.
    pub fn links(&self) -> &super::link_settings::LinkSettings {
        &self.inner.settings.links
    }

    /// Where endpoints may point.
    pub fn destinations(&self) -> crate::outbound::Destinations {
        self.inner.settings.destinations
    }

    /// The keys and rules of tokens.
    pub fn auth(&self) -> &super::auth::AuthSettings {
        &self.inner.settings.auth
    }

    /// How many calls the server admits at once.
    pub fn admission(&self) -> super::admission::Admission {
        self.inner.settings.admission
    }

    /// Lets `commands` mutating commands of `tenant` through, or refuses them with
    /// RESOURCE_EXHAUSTED and when to retry.
    pub fn admit(&self, tenant: &str, commands: usize) -> Result<(), Status> {
        match &self.inner.settings.limiter {
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

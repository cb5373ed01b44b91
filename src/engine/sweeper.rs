//! The expiry sweeper: a client of the engine like any other. It submits the expiry pulse
//! (`ExpireDue`) through the inbox on a timer, so that every expiry is an event in the log,
//! decided from the record's timestamp.

use super::EngineHandle;
use crate::domain::limits::EXPIRE_PULSE_MAX_HOLDS;
use std::time::Duration;

/// How often the sweeper pulses: expiry is enforced at commit time anyway, so the pulse
/// only has to return held points to `available` promptly.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Pulses every `interval` until the engine stops; a pulse that expired a full batch is
/// followed by another at once.
pub fn spawn(engine: EngineHandle, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            loop {
                ::metrics::counter!(super::metrics::SWEEPER_PULSES_TOTAL).increment(1);
                let swept = engine.sweep().await;
                if let Ok(expired) = swept {
                    ::metrics::counter!(super::metrics::SWEEPER_EXPIRED_TOTAL).increment(expired as u64);
                }
                match swept {
                    Ok(expired) if expired == EXPIRE_PULSE_MAX_HOLDS as usize => continue,
                    Ok(0) => break,
                    Ok(expired) => {
                        tracing::debug!(expired, "expired holds");
                        break;
                    }
                    Err(super::EngineError::Busy) => break,
                    Err(error) => {
                        tracing::info!(%error, "sweeper stops");
                        return;
                    }
                }
            }
        }
    })
}

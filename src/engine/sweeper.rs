//! The sweeper: a client of the engine like any other. On a timer it submits the expiry
//! pulse (`ExpireDue`) and the ingest pipeline's retry pulses (`RetryDue`) through the
//! inbox, so that every expiry and every retry is an event in the log, decided from the
//! record's timestamp.

use super::EngineHandle;
use crate::domain::limits::EXPIRE_PULSE_MAX_HOLDS;
use std::time::Duration;

/// How often the sweeper pulses: expiry is enforced at commit time anyway, so the pulse
/// only has to return held points to `available` promptly.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Retry pulses per job: each retries one external event, decided in order in one group
/// commit; a job whose pulses all found work is followed by another at once.
pub const RETRY_PULSES_PER_JOB: usize = 256;

/// Pulses every `interval` until the engine stops; a pulse that expired a full batch of
/// holds (links expire with it) is followed by another at once.
pub fn spawn(engine: EngineHandle, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            loop {
                match engine.retry_due(RETRY_PULSES_PER_JOB).await {
                    Ok(RETRY_PULSES_PER_JOB) => continue,
                    Ok(_) | Err(super::EngineError::Busy) => break,
                    Err(error) => {
                        tracing::info!(%error, "sweeper stops");
                        return;
                    }
                }
            }
            loop {
                ::metrics::counter!(super::metrics::SWEEPER_PULSES_TOTAL, "pulse" => "expire_due").increment(1);
                let swept = engine.sweep().await;
                if let Ok(expired) = swept {
                    ::metrics::counter!(super::metrics::SWEEPER_EXPIRED_TOTAL).increment(expired as u64);
                }
                match swept {
                    Ok(expired) if expired >= EXPIRE_PULSE_MAX_HOLDS as usize => continue,
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

//! Deliveries: telling other systems what happened, and knowing they got it.
//!
//! An endpoint (a URL of a tenant, with its filter, semantics, retry policy and ack mode)
//! is registered by an event; from then on every deliverable record of its tenant that
//! its filter matches is a delivery, folded from the log like everything else — the log is
//! each endpoint's durable cursor, so a restart resumes exactly where the fold says,
//! skipping nothing. The delivery worker (a client, like the sweeper) sends what is due and
//! records each outcome as a command: delivered (with status and latency), failed with
//! the time of the next attempt, failed for good after the last one; receivers that must
//! confirm call `Ack`, which is an event too, and operators retry by hand. So the history
//! of every delivery is in the log, auditable and rebuildable.

pub use super::command::{AttemptResult, RetrySelection};
pub use super::endpoints::{deliverable, Attempt, Delivery, DeliveryState, DeliveryStatus, Endpoint, EndpointStats};
pub use super::event::{AckMode, EndpointConfig, EndpointStatus, Semantics};
use super::event::{
    DeliveryAcked, DeliveryDelivered, DeliveryDispatched, DeliveryFailed, DeliveryRetried, EndpointRegistered,
    EndpointUpdated, Event, EventKind,
};
use super::limits::*;
use super::rejection::Rejection;
use super::rules::{jittered_backoff_us, validate_text, Ctx, Decision, Emitted};

/// Checks an endpoint's settings (the URL's form; whether its host may be reached is the
/// API's policy).
pub fn validate_config(config: &EndpointConfig) -> Result<(), Rejection> {
    validate_text("url", &config.url, MAX_URL_BYTES)?;
    let rest = config
        .url
        .strip_prefix("http://")
        .or_else(|| config.url.strip_prefix("https://"))
        .ok_or_else(|| Rejection::invalid("url", "must start with http:// or https://"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || host.chars().any(char::is_whitespace) {
        return Err(Rejection::invalid("url", "must name a host (and no user info)"));
    }
    for kind in &config.kinds {
        let known = EventKind::from_name(kind)
            .ok_or_else(|| Rejection::invalid("event_kinds", format!("unknown kind {}", super::quote(kind))))?;
        if !deliverable(known) {
            return Err(Rejection::invalid("event_kinds", format!("{kind} is not delivered")));
        }
    }
    super::rules::in_range(
        "max_attempts",
        config.max_attempts.into(),
        1,
        DELIVERY_MAX_ATTEMPTS_MAX.into(),
    )?;
    super::rules::in_range(
        "backoff_initial_ms",
        config.backoff_initial_ms,
        1,
        DELIVERY_BACKOFF_MAX_MS_MAX,
    )?;
    super::rules::in_range(
        "backoff_max_ms",
        config.backoff_max_ms,
        config.backoff_initial_ms,
        DELIVERY_BACKOFF_MAX_MS_MAX,
    )?;
    super::rules::in_range(
        "ack_timeout_seconds",
        config.ack_timeout_seconds.into(),
        1,
        DELIVERY_ACK_TIMEOUT_MAX_SECONDS.into(),
    )?;
    super::rules::in_range(
        "request_timeout_ms",
        config.request_timeout_ms.into(),
        1,
        DELIVERY_REQUEST_TIMEOUT_MAX_MS.into(),
    )?;
    if config.semantics == Semantics::ExactlyOnce && config.ack_mode != AckMode::Explicit {
        return Err(Rejection::invalid("ack_mode", "exactly-once needs explicit acks"));
    }
    if config.semantics == Semantics::AtMostOnce && config.ack_mode == AckMode::Explicit {
        return Err(Rejection::invalid(
            "ack_mode",
            "at-most-once cannot redeliver, so it cannot wait for acks",
        ));
    }
    Ok(())
}

fn emit(ctx: &Ctx<'_>, stream: &str, event: Event) -> Emitted {
    Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: stream.to_string(),
        event,
    }
}

/// The endpoint, in the caller's tenant and not deleted.
fn endpoint<'a>(ctx: &'a Ctx<'_>, endpoint_id: u64) -> Result<&'a Endpoint, Rejection> {
    ctx.state
        .deliveries
        .endpoints
        .get(&endpoint_id)
        .filter(|e| e.tenant == ctx.meta.tenant && e.status != EndpointStatus::Deleted)
        .ok_or(Rejection::EndpointNotFound { endpoint_id })
}

fn delivery<'a>(ctx: &'a Ctx<'_>, endpoint_id: u64, event_seq: u64) -> Result<&'a Delivery, Rejection> {
    endpoint(ctx, endpoint_id)?;
    ctx.state
        .deliveries
        .deliveries
        .get(&(endpoint_id, event_seq))
        .ok_or(Rejection::DeliveryNotFound { endpoint_id, event_seq })
}

pub(super) fn register(
    ctx: &Ctx<'_>,
    config: &EndpointConfig,
    secret_kid: &str,
    secret_nonce: &str,
) -> Result<Decision, Rejection> {
    validate_config(config)?;
    let endpoints = ctx.state.deliveries.by_tenant.get(&ctx.meta.tenant).map_or(0, Vec::len);
    if endpoints >= MAX_ENDPOINTS_PER_TENANT {
        return Err(Rejection::invalid(
            "settings",
            format!("a program has at most {MAX_ENDPOINTS_PER_TENANT} endpoints; delete one first"),
        ));
    }
    let endpoint_id = ctx.state.head_seq + 1;
    Ok(Decision::Append(vec![emit(
        ctx,
        "",
        Event::EndpointRegistered(EndpointRegistered {
            endpoint_id,
            config: config.clone(),
            secret_kid: secret_kid.to_string(),
            secret_nonce: secret_nonce.to_string(),
        }),
    )]))
}

/// A new configuration or status; the same again changes nothing.
pub(super) fn update(
    ctx: &Ctx<'_>,
    endpoint_id: u64,
    config: Option<&EndpointConfig>,
    status: Option<EndpointStatus>,
) -> Result<Decision, Rejection> {
    let current = endpoint(ctx, endpoint_id)?;
    let config = config.unwrap_or(&current.config);
    let status = status.unwrap_or(current.status);
    validate_config(config)?;
    if *config == current.config && status == current.status {
        return Ok(Decision::Nothing);
    }
    Ok(Decision::Append(vec![emit(
        ctx,
        "",
        Event::EndpointUpdated(EndpointUpdated {
            endpoint_id,
            config: config.clone(),
            status,
        }),
    )]))
}

/// At-most-once: the one attempt is recorded before it is made, so that a crash during it
/// can never lead to a second.
pub(super) fn dispatch(ctx: &Ctx<'_>, endpoint_id: u64, event_seq: u64, attempt: u32) -> Result<Decision, Rejection> {
    let d = delivery(ctx, endpoint_id, event_seq)?;
    check_attempt(d, endpoint_id, event_seq, attempt)?;
    Ok(Decision::Append(vec![emit(
        ctx,
        &d.account,
        Event::DeliveryDispatched(DeliveryDispatched {
            endpoint_id,
            event_seq,
            attempt,
        }),
    )]))
}

/// The attempt is the one the delivery is waiting for: a stale or duplicate report of an
/// attempt (two workers, a retry of the report) is refused, not counted twice.
fn check_attempt(d: &Delivery, endpoint_id: u64, event_seq: u64, attempt: u32) -> Result<(), Rejection> {
    let expected = d.attempts.last().map_or(1, |a| a.attempt + 1);
    let waiting = matches!(
        d.status,
        DeliveryStatus::Pending | DeliveryStatus::Failed | DeliveryStatus::AwaitingAck
    );
    if !waiting || attempt != expected {
        return Err(Rejection::DeliveryNotDue {
            endpoint_id,
            event_seq,
            status: d.status.name(),
        });
    }
    Ok(())
}

/// Records an attempt's outcome and decides what follows: delivered (or awaiting the ack),
/// another attempt after a backoff, or failed for good after the last one.
pub(super) fn record(
    ctx: &Ctx<'_>,
    endpoint_id: u64,
    event_seq: u64,
    attempt: u32,
    result: &AttemptResult,
) -> Result<Decision, Rejection> {
    validate_text("error", &result.error, REASON_MAX_CHARS)?;
    let endpoint = endpoint(ctx, endpoint_id)?;
    let d = delivery(ctx, endpoint_id, event_seq)?;
    let config = &endpoint.config;
    let last_attempt = d.attempts.last().map(|a| a.attempt);
    if d.status == DeliveryStatus::AwaitingAck && last_attempt == Some(attempt) {
        // The ack window of the last attempt passed: failed for good, no new attempt.
        if ctx.now_us < d.next_at_us || d.round_attempts < config.max_attempts {
            return Err(Rejection::DeliveryNotDue {
                endpoint_id,
                event_seq,
                status: d.status.name(),
            });
        }
        let failed = DeliveryFailed {
            endpoint_id,
            event_seq,
            attempt,
            status_code: 0,
            latency_us: 0,
            error: format!(
                "not acknowledged within {} s of the last attempt",
                config.ack_timeout_seconds
            ),
            retry_at_us: 0,
        };
        return Ok(Decision::Append(vec![emit(
            ctx,
            &d.account,
            Event::DeliveryFailedPermanently(failed),
        )]));
    }
    if d.status == DeliveryStatus::Delivering {
        // The outcome of an at-most-once attempt: it was counted when dispatched.
        let dispatched = d.attempts.last().map(|a| a.attempt);
        if dispatched != Some(attempt) {
            return Err(Rejection::DeliveryNotDue {
                endpoint_id,
                event_seq,
                status: d.status.name(),
            });
        }
    } else {
        check_attempt(d, endpoint_id, event_seq, attempt)?;
    }
    let round = if d.status == DeliveryStatus::Delivering {
        d.round_attempts
    } else {
        d.round_attempts + 1
    };
    let success = (200..300).contains(&result.status_code);
    let event = if success {
        let awaiting_ack = config.ack_mode == AckMode::Explicit;
        Event::DeliveryDelivered(DeliveryDelivered {
            endpoint_id,
            event_seq,
            attempt,
            status_code: result.status_code,
            latency_us: result.latency_us,
            awaiting_ack,
            ack_due_at_us: if awaiting_ack {
                ctx.now_us + u64::from(config.ack_timeout_seconds) * 1_000_000
            } else {
                0
            },
        })
    } else {
        let last = config.semantics == Semantics::AtMostOnce || round >= config.max_attempts;
        let failed = DeliveryFailed {
            endpoint_id,
            event_seq,
            attempt,
            status_code: result.status_code,
            latency_us: result.latency_us,
            error: result.error.clone(),
            retry_at_us: if last {
                0
            } else {
                let subject = [endpoint_id.to_le_bytes(), event_seq.to_le_bytes()].concat();
                ctx.now_us
                    + jittered_backoff_us(
                        config.backoff_initial_ms,
                        config.backoff_max_ms,
                        round,
                        b"delivery-jitter",
                        &subject,
                    )
            },
        };
        if last {
            Event::DeliveryFailedPermanently(failed)
        } else {
            Event::DeliveryFailed(failed)
        }
    };
    Ok(Decision::Append(vec![emit(ctx, &d.account, event)]))
}

/// The receiver confirms a delivery. A second ack changes nothing; an ack may arrive before
/// the worker recorded the 2xx answer (the receiver acked while answering).
pub(super) fn ack(ctx: &Ctx<'_>, endpoint_id: u64, event_seq: u64, receipt: &str) -> Result<Decision, Rejection> {
    validate_text("receipt", receipt, REASON_MAX_CHARS)?;
    if endpoint(ctx, endpoint_id)?.config.ack_mode != AckMode::Explicit {
        return Err(Rejection::invalid(
            "delivery_id",
            "its endpoint does not take acks (a 2xx answer delivers)",
        ));
    }
    let d = delivery(ctx, endpoint_id, event_seq)?;
    match d.status {
        DeliveryStatus::Acked => Ok(Decision::Nothing),
        DeliveryStatus::Delivered | DeliveryStatus::FailedPermanent => Err(Rejection::DeliveryNotDue {
            endpoint_id,
            event_seq,
            status: d.status.name(),
        }),
        _ => Ok(Decision::Append(vec![emit(
            ctx,
            &d.account,
            Event::DeliveryAcked(DeliveryAcked {
                endpoint_id,
                event_seq,
                receipt: receipt.to_string(),
            }),
        )])),
    }
}

/// Retries deliveries by hand: one named, or every permanently failed one of an endpoint
/// whose event is in `[from_us, to_us]`, at most `DELIVERY_REDRIVE_MAX` at once.
pub(super) fn retry(ctx: &Ctx<'_>, selection: &RetrySelection, reason: &str) -> Result<Decision, Rejection> {
    validate_text("reason", reason, REASON_MAX_CHARS)?;
    let events: Vec<Emitted> = match selection {
        RetrySelection::One { endpoint_id, event_seq } => {
            let d = delivery(ctx, *endpoint_id, *event_seq)?;
            // Already waiting for its next attempt (a retried retry): nothing to do.
            if d.status == DeliveryStatus::Pending {
                return Ok(Decision::Nothing);
            }
            if !matches!(d.status, DeliveryStatus::FailedPermanent | DeliveryStatus::Failed) {
                return Err(Rejection::DeliveryNotDue {
                    endpoint_id: *endpoint_id,
                    event_seq: *event_seq,
                    status: d.status.name(),
                });
            }
            vec![retried(ctx, *endpoint_id, *event_seq, &d.account, reason)]
        }
        RetrySelection::FailedBetween {
            endpoint_id,
            from_us,
            to_us,
        } => {
            endpoint(ctx, *endpoint_id)?;
            ctx.state
                .deliveries
                .deliveries
                .range((*endpoint_id, 0)..=(*endpoint_id, u64::MAX))
                .filter(|(_, d)| d.status == DeliveryStatus::FailedPermanent)
                .filter(|(_, d)| d.event_ts_us >= *from_us && (*to_us == 0 || d.event_ts_us <= *to_us))
                .take(DELIVERY_REDRIVE_MAX)
                .map(|(&(e, s), d)| retried(ctx, e, s, &d.account, reason))
                .collect()
        }
    };
    if events.is_empty() {
        return Ok(Decision::Nothing);
    }
    Ok(Decision::Append(events))
}

fn retried(ctx: &Ctx<'_>, endpoint_id: u64, event_seq: u64, account: &str, reason: &str) -> Emitted {
    emit(
        ctx,
        account,
        Event::DeliveryRetried(DeliveryRetried {
            endpoint_id,
            event_seq,
            reason: reason.to_string(),
        }),
    )
}

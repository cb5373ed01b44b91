//! Sessions and API keys: who may call, as the log says.
//!
//! A trusted tenant service asserts a user it authenticated and Tally starts a session
//! (`session.started`: id, subject, role, expiry; never the token, which is a signature
//! the API makes over these fields). A session is refreshed or ended (logout) by events,
//! and expires by log time. Admins create and revoke API keys for services; the log holds a
//! fingerprint of each key's secret, never the secret. [`Credentials`] is the fold of these
//! events: the engine keeps a live copy of it that the API's door reads on every call.

use super::access::{Role, SESSION_ROLES};
pub use super::credentials::{ApiKey, Credentials, Session};
use super::event::{ApiKeyCreated, ApiKeyRevoked, Event, SessionEnded, SessionRefreshed, SessionStarted};
use super::limits::*;
use super::rejection::Rejection;
use super::rules::{validate_id, validate_text, Ctx, Decision, Emitted};

fn ttl(requested: u32) -> Result<u32, Rejection> {
    match requested {
        0 => Ok(SESSION_TTL_DEFAULT_SECONDS),
        n if n > SESSION_TTL_MAX_SECONDS => Err(Rejection::invalid(
            "ttl_seconds",
            format!("must be at most {SESSION_TTL_MAX_SECONDS}"),
        )),
        n => Ok(n),
    }
}

fn emit(ctx: &Ctx<'_>, stream: &str, event: Event) -> Decision {
    Decision::Append(vec![Emitted {
        tenant: ctx.meta.tenant.clone(),
        account: stream.to_string(),
        event,
    }])
}

pub(super) fn start(
    ctx: &Ctx<'_>,
    session_id: &str,
    subject: &str,
    role: &str,
    ttl_seconds: u32,
) -> Result<Decision, Rejection> {
    validate_id("session_id", session_id, MAX_ID_BYTES)?;
    validate_id("subject", subject, MAX_ID_BYTES)?;
    let parsed =
        Role::parse(role).ok_or_else(|| Rejection::invalid("role", format!("unknown role {}", super::quote(role))))?;
    if !SESSION_ROLES.contains(&parsed) {
        let allowed: Vec<_> = SESSION_ROLES.iter().map(|r| r.name()).collect();
        return Err(Rejection::invalid(
            "role",
            format!("a session is for one of {allowed:?}; services and admins use API keys or operator tokens"),
        ));
    }
    let lasts = ttl(ttl_seconds)?;
    if ctx.state.credentials.sessions.contains_key(session_id) {
        return Err(Rejection::invalid("session_id", "is in use"));
    }
    Ok(emit(
        ctx,
        subject,
        Event::SessionStarted(SessionStarted {
            session_id: session_id.to_string(),
            subject: subject.to_string(),
            role: role.to_string(),
            ttl_seconds,
            expires_at_us: ctx.now_us + u64::from(lasts) * 1_000_000,
        }),
    ))
}

pub(super) fn refresh(ctx: &Ctx<'_>, session_id: &str, ttl_seconds: u32) -> Result<Decision, Rejection> {
    let lasts = ttl(ttl_seconds)?;
    let session = ctx
        .state
        .credentials
        .active_session(&ctx.meta.tenant, session_id, ctx.now_us)?;
    Ok(emit(
        ctx,
        &session.subject,
        Event::SessionRefreshed(SessionRefreshed {
            session_id: session_id.to_string(),
            ttl_seconds,
            expires_at_us: ctx.now_us + u64::from(lasts) * 1_000_000,
        }),
    ))
}

/// A logout. Ending a session that already ended changes nothing; an expired one is gone.
pub(super) fn end(ctx: &Ctx<'_>, session_id: &str, reason: &str) -> Result<Decision, Rejection> {
    validate_text("reason", reason, REASON_MAX_CHARS)?;
    match ctx
        .state
        .credentials
        .active_session(&ctx.meta.tenant, session_id, ctx.now_us)
    {
        Ok(session) => Ok(emit(
            ctx,
            &session.subject,
            Event::SessionEnded(SessionEnded {
                session_id: session_id.to_string(),
                reason: reason.to_string(),
            }),
        )),
        Err(Rejection::SessionNotActive { why: "logged out", .. }) => Ok(Decision::Nothing),
        Err(other) => Err(other),
    }
}

pub(super) fn create_key(
    ctx: &Ctx<'_>,
    key_id: &str,
    name: &str,
    role: &str,
    signing_kid: &str,
    fingerprint: &[u8; 32],
) -> Result<Decision, Rejection> {
    validate_id("key_id", key_id, MAX_ID_BYTES)?;
    if name.trim().is_empty() {
        return Err(Rejection::invalid("name", "is required"));
    }
    validate_text("name", name, API_KEY_NAME_MAX_CHARS)?;
    Role::parse(role).ok_or_else(|| Rejection::invalid("role", format!("unknown role {}", super::quote(role))))?;
    validate_id("signing_kid", signing_kid, MAX_ID_BYTES)?;
    if ctx.state.credentials.api_keys.contains_key(key_id) {
        return Err(Rejection::invalid("key_id", "is in use"));
    }
    Ok(emit(
        ctx,
        key_id,
        Event::ApiKeyCreated(ApiKeyCreated {
            key_id: key_id.to_string(),
            name: name.to_string(),
            role: role.to_string(),
            signing_kid: signing_kid.to_string(),
            fingerprint: *fingerprint,
        }),
    ))
}

/// Revoking a revoked key changes nothing.
pub(super) fn revoke_key(ctx: &Ctx<'_>, key_id: &str, reason: &str) -> Result<Decision, Rejection> {
    validate_text("reason", reason, REASON_MAX_CHARS)?;
    let key = ctx
        .state
        .credentials
        .api_keys
        .get(key_id)
        .filter(|k| k.tenant == ctx.meta.tenant)
        .ok_or_else(|| Rejection::ApiKeyNotFound {
            key_id: key_id.to_string(),
        })?;
    if key.revoked_at_us.is_some() {
        return Ok(Decision::Nothing);
    }
    Ok(emit(
        ctx,
        key_id,
        Event::ApiKeyRevoked(ApiKeyRevoked {
            key_id: key_id.to_string(),
            reason: reason.to_string(),
        }),
    ))
}

//! Sessions and API keys: who may call, as the log says.
//!
//! A trusted tenant service asserts a user it authenticated and Tally starts a session
//! (`session.started`: id, subject, role, expiry; never the token, which is a signature
//! the API makes over these fields). A session is refreshed or ended (logout) by events,
//! and expires by log time. Admins create and revoke API keys for services; the log holds a
//! fingerprint of each key's secret, never the secret. [`Credentials`] is the fold of these
//! events: the engine keeps a live copy of it that the API's door reads on every call.

use super::access::{Role, SESSION_ROLES};
use super::decide::{validate_id, validate_text, Ctx, Decision, Emitted};
use super::event::{ApiKeyCreated, ApiKeyRevoked, Event, Record, SessionEnded, SessionRefreshed, SessionStarted};
use super::limits::*;
use super::rejection::Rejection;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// Sessions that can still be used or refreshed, and every API key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Session id → session, until it expires (ended ones too, until then, so that a
    /// logged-out token is refused as logged out).
    pub sessions: HashMap<String, Session>,
    /// `(expires_at_us, session id)`: expired sessions leave the map by log time.
    pub expiry: BTreeSet<(u64, String)>,
    /// Key id → key, revoked ones included (an id is never reused).
    pub api_keys: HashMap<String, ApiKey>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub tenant: String,
    pub subject: String,
    pub role: String,
    pub started_at_us: u64,
    pub expires_at_us: u64,
    /// When it was logged out, if it was.
    pub ended_at_us: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub tenant: String,
    pub name: String,
    pub role: String,
    pub signing_kid: String,
    pub fingerprint: [u8; 32],
    pub created_at_us: u64,
    pub created_by: String,
    pub revoked_at_us: Option<u64>,
}

impl Credentials {
    /// Folds one record; records of other kinds change nothing. Sessions whose expiry is
    /// at or before the record's time are forgotten: their tokens are refused either way.
    pub fn apply(&mut self, record: &Record) {
        let tenant = &record.envelope.tenant;
        match &record.event {
            Event::SessionStarted(s) => {
                self.forget_expired(record.ts_us);
                let session = Session {
                    tenant: tenant.clone(),
                    subject: s.subject.clone(),
                    role: s.role.clone(),
                    started_at_us: record.ts_us,
                    expires_at_us: s.expires_at_us,
                    ended_at_us: None,
                };
                assert!(
                    self.sessions.insert(s.session_id.clone(), session).is_none(),
                    "seq {}: a session id is used once",
                    record.seq
                );
                self.expiry.insert((s.expires_at_us, s.session_id.clone()));
            }
            Event::SessionRefreshed(r) => {
                let session = self.session_mut(&r.session_id, record);
                assert!(session.ended_at_us.is_none(), "an ended session is not refreshed");
                let before = std::mem::replace(&mut session.expires_at_us, r.expires_at_us);
                self.expiry.remove(&(before, r.session_id.clone()));
                self.expiry.insert((r.expires_at_us, r.session_id.clone()));
            }
            Event::SessionEnded(e) => {
                let session = self.session_mut(&e.session_id, record);
                assert!(session.ended_at_us.is_none(), "a session ends once");
                session.ended_at_us = Some(record.ts_us);
            }
            Event::ApiKeyCreated(k) => {
                let key = ApiKey {
                    tenant: tenant.clone(),
                    name: k.name.clone(),
                    role: k.role.clone(),
                    signing_kid: k.signing_kid.clone(),
                    fingerprint: k.fingerprint,
                    created_at_us: record.ts_us,
                    created_by: record.envelope.actor.clone(),
                    revoked_at_us: None,
                };
                assert!(
                    self.api_keys.insert(k.key_id.clone(), key).is_none(),
                    "seq {}: an API key id is used once",
                    record.seq
                );
            }
            Event::ApiKeyRevoked(r) => {
                let key = self
                    .api_keys
                    .get_mut(&r.key_id)
                    .unwrap_or_else(|| panic!("seq {}: revocation of an unknown API key", record.seq));
                assert!(key.revoked_at_us.is_none(), "a key is revoked once");
                key.revoked_at_us = Some(record.ts_us);
            }
            _ => {}
        }
    }

    fn session_mut(&mut self, session_id: &str, record: &Record) -> &mut Session {
        self.sessions
            .get_mut(session_id)
            .unwrap_or_else(|| panic!("seq {}: event for an unknown session", record.seq))
    }

    fn forget_expired(&mut self, now_us: u64) {
        while let Some((expires_at_us, _)) = self.expiry.first() {
            if *expires_at_us > now_us {
                break;
            }
            let (_, id) = self.expiry.pop_first().expect("just seen");
            self.sessions.remove(&id);
        }
    }

    /// The session, if it is in the tenant and usable at `now_us` (log time).
    pub fn active_session(&self, tenant: &str, session_id: &str, now_us: u64) -> Result<&Session, Rejection> {
        let session = self
            .sessions
            .get(session_id)
            .filter(|s| s.tenant == tenant)
            .ok_or_else(|| Rejection::SessionNotFound {
                session_id: session_id.to_string(),
            })?;
        if session.ended_at_us.is_some() {
            return Err(Rejection::SessionNotActive {
                session_id: session_id.to_string(),
                why: "logged out",
            });
        }
        if session.expires_at_us <= now_us {
            return Err(Rejection::SessionNotActive {
                session_id: session_id.to_string(),
                why: "expired",
            });
        }
        Ok(session)
    }
}

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

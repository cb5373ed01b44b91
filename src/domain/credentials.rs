//! The fold of the credential events: sessions that can still be used or refreshed, and
//! every API key (its fingerprint, never its secret). The engine keeps a live copy that the
//! API's door reads on every call; the rules that decide session and key commands are in
//! `session.rs`.

use super::event::{Event, Record};
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

//! The `tally.v1.Identity` service: SSO sessions and API keys. Session and key ids are
//! drawn here; tokens are signed here from the records (so a retry answers the same token)
//! and never reach the ledger; an API key's secret is derived from the server's key ring
//! and the key id, and the ledger sees only its fingerprint.

use super::auth::{self, AuthSettings, Claims, Credential, Principal};
use super::caller::Caller;
use super::proto::{self, identity_server::Identity};
use super::slot::EngineSlot;
use super::status::{classify_rejection, invalid};
use super::trace;
use crate::domain::access::{Permission, Role};
use crate::domain::event::Record;
use crate::domain::session::{ApiKey, Session};
use crate::domain::{Command, CommandMeta, Event, Rejection};
use crate::engine::Receipt;
use tonic::{Request, Response, Status};

/// Roles an API key may carry: keys are for systems. People sign in through sessions.
pub const API_KEY_ROLES: [Role; 3] = [Role::Service, Role::Auditor, Role::Admin];

pub struct IdentityService {
    slot: EngineSlot,
}

impl IdentityService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, Status> {
        trace::submit(self.slot.engine()?, meta, command).await
    }

    fn session(&self, tenant: &str, session_id: &str) -> Option<Session> {
        let engine = self.slot.engine().ok()?;
        let credentials = engine.credentials();
        credentials
            .sessions
            .get(session_id)
            .filter(|s| s.tenant == tenant)
            .cloned()
    }
}

use super::auth::fresh_id;
use super::convert::caller_meta as meta;

/// A session's token, made from what the log says of it: the same record, the same token.
fn session_token(settings: &AuthSettings, record: &Record, session_id: &str, session: &Session) -> String {
    settings.sign(&Claims {
        iss: settings.issuer.clone(),
        aud: settings.audience.clone(),
        sub: session.subject.clone(),
        tnt: session.tenant.clone(),
        roles: vec![session.role.clone()],
        iat: record.ts_us / 1_000_000,
        exp: session.expires_at_us.div_ceil(1_000_000),
        sid: Some(session_id.to_string()),
    })
}

fn session_info(session_id: &str, session: &Session) -> proto::SessionInfo {
    proto::SessionInfo {
        session_id: session_id.to_string(),
        subject: session.subject.clone(),
        tenant: session.tenant.clone(),
        role: session.role.clone(),
        started_at_us: session.started_at_us,
        expires_at_us: session.expires_at_us,
    }
}

fn key_info(key_id: &str, key: &ApiKey) -> proto::ApiKeyInfo {
    proto::ApiKeyInfo {
        key_id: key_id.to_string(),
        name: key.name.clone(),
        role: key.role.clone(),
        fingerprint: crate::hex::hex(&key.fingerprint[..8]),
        created_at_us: key.created_at_us,
        created_by: key.created_by.clone(),
        revoked_at_us: key.revoked_at_us.unwrap_or(0),
        revoked: key.revoked_at_us.is_some(),
    }
}

/// The session a refresh or logout is about: the caller's own when none is named; another
/// one only for a caller that may issue sessions.
fn target_session(principal: &Principal, named: &str) -> Result<String, Status> {
    let own = match &principal.credential {
        Credential::Session(id) => Some(id.as_str()),
        _ => None,
    };
    match (named, own) {
        ("", Some(own)) => Ok(own.to_string()),
        ("", None) => Err(invalid(
            "session_id",
            "is required: the caller's credential is not a session",
        )),
        (named, Some(own)) if named == own => Ok(named.to_string()),
        (named, _) => {
            principal.require(Permission::SessionsIssue)?;
            Ok(named.to_string())
        }
    }
}

/// The session a command's first record is about, as the log has it now.
fn session_of(receipt: &Receipt) -> &str {
    match &receipt.records[0].event {
        Event::SessionStarted(s) => &s.session_id,
        Event::SessionRefreshed(s) => &s.session_id,
        other => unreachable!("a session command answers with a session event, not {:?}", other.kind()),
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn start_session(
        &self,
        request: Request<proto::StartSessionRequest>,
    ) -> Result<Response<proto::SessionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let command = Command::StartSession {
            session_id: fresh_id("s-")?,
            subject: r.subject.clone(),
            role: r.role.clone(),
            ttl_seconds: r.ttl_seconds,
        };
        let receipt = self
            .submit(meta(&caller, &r.idempotency_key, &r.correlation_id), command)
            .await?;
        self.session_response(&caller.tenant, &receipt)
    }

    async fn validate_session(
        &self,
        request: Request<proto::ValidateSessionRequest>,
    ) -> Result<Response<proto::SessionInfo>, Status> {
        let caller = Caller::of(&request)?;
        let engine = self.slot.engine()?;
        let settings = self.slot.auth();
        let now_us = engine.now_us();
        let token_invalid = |status: Status| invalid("token", status.message().to_string());
        let claims = settings
            .verify(&request.get_ref().token, now_us)
            .map_err(token_invalid)?;
        let session_id = claims
            .sid
            .ok_or_else(|| invalid("token", "is an operator token, not a session's"))?;
        let credentials = engine.credentials();
        let session = credentials
            .active_session(&caller.tenant, &session_id, now_us)
            .map_err(|rejection| classify_rejection(&rejection).into_status())?;
        Ok(Response::new(session_info(&session_id, session)))
    }

    async fn refresh_session(
        &self,
        request: Request<proto::RefreshSessionRequest>,
    ) -> Result<Response<proto::SessionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let session_id = target_session(&caller.principal, &r.session_id)?;
        let command = Command::RefreshSession {
            session_id,
            ttl_seconds: r.ttl_seconds,
        };
        let receipt = self.submit(meta(&caller, &r.idempotency_key, ""), command).await?;
        self.session_response(&caller.tenant, &receipt)
    }

    async fn end_session(
        &self,
        request: Request<proto::EndSessionRequest>,
    ) -> Result<Response<proto::EndSessionResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let session_id = target_session(&caller.principal, &r.session_id)?;
        let command = Command::EndSession {
            session_id: session_id.clone(),
            reason: if r.reason.is_empty() {
                "logout".to_string()
            } else {
                r.reason.clone()
            },
        };
        let receipt = self.submit(meta(&caller, "", ""), command).await?;
        Ok(Response::new(proto::EndSessionResponse {
            session_id,
            ended: !receipt.records.is_empty(),
            sequence: receipt.records.first().map_or(0, |r| r.seq),
        }))
    }

    async fn who_am_i(
        &self,
        request: Request<proto::WhoAmIRequest>,
    ) -> Result<Response<proto::WhoAmIResponse>, Status> {
        let caller = Caller::of(&request)?;
        let p = &caller.principal;
        let (credential, credential_id) = match &p.credential {
            Credential::Session(id) => ("session", id.clone()),
            Credential::Operator => ("operator_token", String::new()),
            Credential::ApiKey(id) => ("api_key", id.clone()),
        };
        Ok(Response::new(proto::WhoAmIResponse {
            subject: p.subject.clone(),
            tenant: p.tenant.clone(),
            roles: p.roles.iter().map(|r| r.name().to_string()).collect(),
            permissions: p.permissions.names().into_iter().map(String::from).collect(),
            credential: credential.to_string(),
            credential_id,
        }))
    }

    async fn create_api_key(
        &self,
        request: Request<proto::CreateApiKeyRequest>,
    ) -> Result<Response<proto::CreateApiKeyResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let role = if r.role.is_empty() { "service" } else { r.role.as_str() };
        if !Role::parse(role).is_some_and(|role| API_KEY_ROLES.contains(&role)) {
            let allowed: Vec<_> = API_KEY_ROLES.iter().map(|r| r.name()).collect();
            return Err(invalid("role", format!("an API key is for one of {allowed:?}")));
        }
        let settings = self.slot.auth();
        let key_id = fresh_id("key-")?;
        let kid = settings.keys.signing().kid.clone();
        let secret = settings
            .api_key_secret(&kid, &key_id)
            .expect("the signing key is in the ring");
        let command = Command::CreateApiKey {
            key_id,
            name: r.name.clone(),
            role: role.to_string(),
            signing_kid: kid,
            fingerprint: auth::api_key_fingerprint(&secret),
        };
        let receipt = self.submit(meta(&caller, &r.idempotency_key, ""), command).await?;
        // A retry answers the key the first request made, whose id and ring key the
        // record holds; the secret is derived again.
        let Event::ApiKeyCreated(created) = &receipt.records[0].event else {
            unreachable!("a created key is its record");
        };
        let secret = settings
            .api_key_secret(&created.signing_kid, &created.key_id)
            .ok_or_else(|| {
                Status::failed_precondition(
                    "KEY_RETIRED: the server no longer holds the key this API key was made with",
                )
            })?;
        let key = self
            .slot
            .engine()?
            .credentials()
            .api_keys
            .get(&created.key_id)
            .map(|k| key_info(&created.key_id, k))
            .expect("a committed key is in the credentials");
        Ok(Response::new(proto::CreateApiKeyResponse {
            key: Some(key),
            secret,
            sequence: receipt.records[0].seq,
            replayed: receipt.replayed,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<proto::ListApiKeysRequest>,
    ) -> Result<Response<proto::ListApiKeysResponse>, Status> {
        let caller = Caller::of(&request)?;
        let engine = self.slot.engine()?;
        let credentials = engine.credentials();
        let mut keys: Vec<_> = credentials
            .api_keys
            .iter()
            .filter(|(_, k)| k.tenant == caller.tenant)
            .map(|(id, k)| key_info(id, k))
            .collect();
        keys.sort_unstable_by(|a, b| (a.created_at_us, &a.key_id).cmp(&(b.created_at_us, &b.key_id)));
        Ok(Response::new(proto::ListApiKeysResponse { keys }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<proto::RevokeApiKeyRequest>,
    ) -> Result<Response<proto::ApiKeyInfo>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let command = Command::RevokeApiKey {
            key_id: r.key_id.clone(),
            reason: r.reason.clone(),
        };
        self.submit(meta(&caller, "", ""), command).await?;
        let engine = self.slot.engine()?;
        let credentials = engine.credentials();
        let key = credentials.api_keys.get(&r.key_id).ok_or_else(|| {
            classify_rejection(&Rejection::ApiKeyNotFound {
                key_id: r.key_id.clone(),
            })
            .into_status()
        })?;
        Ok(Response::new(key_info(&r.key_id, key)))
    }
}

impl IdentityService {
    /// The answer to a start or refresh: the session as the log has it now, and its token.
    fn session_response(&self, tenant: &str, receipt: &Receipt) -> Result<Response<proto::SessionResponse>, Status> {
        let settings = self.slot.auth();
        let record = &receipt.records[0];
        let session_id = session_of(receipt);
        let mut session = self.session(tenant, session_id).ok_or_else(|| {
            classify_rejection(&Rejection::SessionNotFound {
                session_id: session_id.to_string(),
            })
            .into_status()
        })?;
        // A retry is answered as the record was: its own expiry, not a later refresh's.
        match &record.event {
            Event::SessionStarted(s) => session.expires_at_us = s.expires_at_us,
            Event::SessionRefreshed(s) => session.expires_at_us = s.expires_at_us,
            _ => {}
        }
        Ok(Response::new(proto::SessionResponse {
            token: session_token(settings, record, session_id, &session),
            session: Some(session_info(session_id, &session)),
            sequence: record.seq,
            replayed: receipt.replayed,
        }))
    }
}

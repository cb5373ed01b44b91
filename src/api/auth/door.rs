//! The door itself: the authenticator that turns a call's credential into a
//! [`Principal`](super::Principal), and the tower layer that runs it before any handler.

use super::common::{
    denied, unauthenticated, Credential, Principal, ACTOR_HEADER, KEY_ID_HEADER, SIGNATURE_HEADER, TENANT_HEADER,
};
use super::methods::{method, Access, Charge, PUBLIC_PREFIXES};
use super::signed::{
    digest_body, signed_headers, signing_string, Reservation, SeenSignatures, Unverified, BODY_UNREAD,
    SIGNED_BODY_TIMEOUT_SECONDS,
};
use super::tokens::{AuthSettings, VerifiedTokens};
use crate::api::slot::EngineSlot;
use crate::api::status::error_status;
use crate::domain::access::{Permissions, Role};
use crate::domain::limits::{MAX_ID_BYTES, MAX_TENANT_BYTES};
use crate::domain::quote;
use crate::secrets::verify_hmac;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tonic::{Code, Status};

/// The door: authenticates a call and checks the method's access.
pub struct Authenticator {
    slot: EngineSlot,
    seen: Mutex<SeenSignatures>,
    unverified: Arc<Mutex<Unverified>>,
    /// Bearer tokens that verified, so that a client's next call skips decoding its token.
    verified: VerifiedTokens,
}

impl Authenticator {
    pub fn new(slot: EngineSlot) -> Self {
        Self {
            slot,
            seen: Mutex::new(SeenSignatures::default()),
            unverified: Arc::new(Mutex::new(Unverified::default())),
            verified: VerifiedTokens::default(),
        }
    }

    /// An empty share of the unverified-bytes budget for a call signed with `key_id`.
    fn reserve(&self, key_id: &str) -> Reservation {
        Reservation {
            budget: self.unverified.clone(),
            key_id: key_id.to_string(),
            bytes: 0,
        }
    }

    /// The caller of a call to `path`, or the status that refuses it. `body_sha256_hex` is
    /// the request message's digest, present when the call is signed.
    pub fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        body_sha256_hex: Option<&str>,
    ) -> Result<Principal, Status> {
        let engine = self.slot.engine()?;
        let settings = self.slot.auth();
        let (access, charge) = method(path).ok_or_else(|| {
            denied(
                "METHOD_NOT_AUTHORIZED",
                format!("no permission is defined for {}; nobody may call it", quote(path)),
                [],
            )
        })?;
        let principal = if headers.contains_key(SIGNATURE_HEADER) || headers.contains_key(KEY_ID_HEADER) {
            self.signed(settings, engine, path, headers, body_sha256_hex)?
        } else {
            bearer(settings, &self.verified, engine, headers)?
        };
        check_names(&principal, headers)?;
        if let Access::AnyOf(needed) = access {
            if !needed.iter().any(|p| principal.has(*p)) {
                let names: Vec<_> = needed.iter().map(|p| p.name()).collect();
                return Err(denied(
                    "PERMISSION_MISSING",
                    format!(
                        "{path} needs one of {names:?}; {} has {:?}",
                        principal.subject,
                        principal.permissions.names()
                    ),
                    [("permission", names.join(","))],
                ));
            }
        }
        // The tenant's rate limit, for every call that changes something: here, from the
        // one table, so that no handler can forget it. Batches count their items in their
        // handlers.
        if charge == Charge::One {
            self.slot.admit(&principal.tenant, 1)?;
        }
        Ok(principal)
    }

    /// What a signed call's headers alone can show (the key exists and is not revoked, the
    /// timestamp is in the window), checked before its body is read.
    pub fn precheck_signed(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        signed_headers(self.slot.auth(), self.slot.engine()?, headers).map(|_| ())
    }

    fn signed(
        &self,
        settings: &AuthSettings,
        engine: &crate::engine::EngineHandle,
        path: &str,
        headers: &http::HeaderMap,
        body_sha256_hex: Option<&str>,
    ) -> Result<Principal, Status> {
        let call = signed_headers(settings, engine, headers)?;
        let digest = body_sha256_hex.ok_or_else(|| unauthenticated("CREDENTIAL_MALFORMED", BODY_UNREAD))?;
        let signed = signing_string(path, &call.timestamp_text, digest);
        verify_hmac(call.secret.as_bytes(), signed.as_bytes(), &call.signature)
            .then_some(())
            .ok_or_else(|| unauthenticated("SIGNATURE_INVALID", "the call's signature does not verify"))?;
        if !self.seen.lock().expect("the replay cache lock").first_time(
            &call.key_id,
            call.signature,
            call.timestamp,
            call.now,
        )? {
            return Err(unauthenticated(
                "SIGNATURE_REPLAYED",
                "this signature was used before; sign each call anew",
            ));
        }
        Ok(Principal {
            subject: call.key_id.clone(),
            tenant: call.tenant,
            roles: vec![call.role],
            permissions: Permissions::of_roles(&[call.role]),
            credential: Credential::ApiKey(call.key_id),
        })
    }
}

fn bearer(
    settings: &AuthSettings,
    verified: &VerifiedTokens,
    engine: &crate::engine::EngineHandle,
    headers: &http::HeaderMap,
) -> Result<Principal, Status> {
    let value = headers.get(http::header::AUTHORIZATION).ok_or_else(|| {
        unauthenticated(
            "CREDENTIAL_MISSING",
            "no credential: send `authorization: Bearer <token>` or sign the call (docs/AUTH.md)",
        )
    })?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .ok_or_else(|| unauthenticated("CREDENTIAL_MALFORMED", "authorization must be `Bearer <token>`"))?;
    let now_us = engine.now_us();
    let claims = settings.verify_remembered(verified, token.trim(), now_us)?;
    let well_formed = |text: &str, max: usize| {
        !text.is_empty() && text.len() <= max && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c))
    };
    if !well_formed(&claims.tnt, MAX_TENANT_BYTES) || !well_formed(&claims.sub, MAX_ID_BYTES) {
        return Err(unauthenticated(
            "CREDENTIAL_MALFORMED",
            "the token's tenant or subject is not an id (ASCII letters, digits and -_.:@/)",
        ));
    }
    let mut roles = Vec::with_capacity(claims.roles.len());
    for name in &claims.roles {
        roles.push(Role::parse(name).ok_or_else(|| {
            unauthenticated(
                "CREDENTIAL_MALFORMED",
                format!("the token names an unknown role {}", quote(name)),
            )
        })?);
    }
    let credential = match &claims.sid {
        Some(session_id) => {
            let credentials = engine.credentials();
            let session = credentials
                .active_session(&claims.tnt, session_id, now_us)
                .map_err(|rejection| {
                    let reason = match &rejection {
                        crate::domain::Rejection::SessionNotActive { why: "expired", .. } => "SESSION_EXPIRED",
                        crate::domain::Rejection::SessionNotActive { .. } => "SESSION_ENDED",
                        _ => "SESSION_UNKNOWN",
                    };
                    unauthenticated(reason, rejection.to_string())
                })?;
            // The log is the authority on whom a session is for.
            if session.subject != claims.sub || [session.role.as_str()] != claims.roles.as_slice() {
                return Err(unauthenticated(
                    "SIGNATURE_INVALID",
                    "the token does not match its session",
                ));
            }
            Credential::Session(session_id.clone())
        }
        None => Credential::Operator,
    };
    Ok(Principal {
        permissions: Permissions::of_roles(&roles),
        subject: claims.sub,
        tenant: claims.tnt,
        roles,
        credential,
    })
}

/// A request may name its tenant and caller in metadata; they must be the credential's.
fn check_names(principal: &Principal, headers: &http::HeaderMap) -> Result<(), Status> {
    for (header, expected, reason) in [
        (TENANT_HEADER, &principal.tenant, "TENANT_MISMATCH"),
        (ACTOR_HEADER, &principal.subject, "ACTOR_MISMATCH"),
    ] {
        if let Some(value) = headers.get(header) {
            if value.as_bytes() != expected.as_bytes() {
                return Err(denied(
                    reason,
                    format!(
                        "{header} names {} but the credential is for {expected:?}",
                        quote(&String::from_utf8_lossy(value.as_bytes()))
                    ),
                    [],
                ));
            }
        }
    }
    Ok(())
}

/// The tower layer that puts the door in front of every service.
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    pub fn new(slot: EngineSlot) -> Self {
        Self {
            auth: Arc::new(Authenticator::new(slot)),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        // The clone is ready (tower's rule: call the one that was polled, keep a fresh one).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            if PUBLIC_PREFIXES.iter().any(|p| path.starts_with(p)) {
                return inner.call(request).await;
            }
            let (mut parts, body) = request.into_parts();
            let mut reservation = None;
            let (body, digest) = if parts.headers.contains_key(SIGNATURE_HEADER) {
                // Nothing is buffered for a call whose headers already fail.
                if let Err(status) = auth.precheck_signed(&parts.headers) {
                    return Ok(status.into_http());
                }
                // The key id passed the precheck, so it is readable. What is held of the
                // body until the signature is checked counts against the budget.
                let key_id = parts
                    .headers
                    .get(KEY_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let share = reservation.insert(auth.reserve(key_id));
                let read = tokio::time::timeout(
                    std::time::Duration::from_secs(SIGNED_BODY_TIMEOUT_SECONDS),
                    digest_body(body, share),
                );
                let read = match read.await {
                    Ok(read) => read,
                    Err(_) => Err(error_status(
                        Code::DeadlineExceeded,
                        "SIGNED_BODY_TIMEOUT",
                        &format!("the signed request's body did not arrive within {SIGNED_BODY_TIMEOUT_SECONDS} s"),
                        HashMap::new(),
                    )),
                };
                match read {
                    Ok((bytes, digest)) => (tonic::body::Body::new(http_body_util::Full::new(bytes)), digest),
                    Err(status) => return Ok(status.into_http()),
                }
            } else {
                (body, None)
            };
            let admitted = auth.admit(&path, &parts.headers, digest.as_deref());
            // Checked (or refused): the body no longer counts as unverified.
            drop(reservation);
            match admitted {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

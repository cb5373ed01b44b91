//! `decide`: the pure function from (state, command, time) to events or a rejection. It
//! checks the request's identity and envelope, then dispatches to the command family
//! (`account.rs`, `award.rs`, `hold.rs`, `link.rs`, `session.rs`, `delivery.rs`,
//! `ingest.rs`); what the families share is in `rules.rs`.

use super::command::{Command, CommandMeta};
use super::limits::{MAX_ID_BYTES, MAX_TENANT_BYTES, MAX_TRACE_ID_BYTES};
use super::rejection::Rejection;
use super::rules::{find, replay_or_conflict, validate_id, validate_text, Ctx, Decision, Policy};
use super::state::{Identity, NoOlderRecords, OlderRecords, State};
use super::{account, award, delivery, hold, ingest, link, session};

/// Decides `command` against `state` at `now_us` (the timestamp its events will carry).
///
/// The idempotency check comes first, before any validation: a retry of an accepted
/// command is answered with the original result even if the rules have changed since.
///
/// A state whose identity window has let identities go must be decided with
/// [`decide_identified`] and the log those identities are read from.
pub fn decide(
    policy: &Policy,
    state: &State,
    meta: &CommandMeta,
    command: &Command,
    now_us: u64,
) -> Result<Decision, Rejection> {
    decide_identified(
        policy,
        state,
        meta,
        command,
        &Identity::of(meta, command),
        now_us,
        &NoOlderRecords,
    )
}

/// [`decide`], given the command's [`Identity`] (which must be `Identity::of(meta,
/// command)`, perhaps looked up among the older identities already): the engine works it
/// out on the caller's task, so that the one writer does not hash the command's texts.
/// `older` reads the records of identities that left the window.
pub fn decide_identified(
    policy: &Policy,
    state: &State,
    meta: &CommandMeta,
    command: &Command,
    identity: &Identity,
    now_us: u64,
    older: &dyn OlderRecords,
) -> Result<Decision, Rejection> {
    debug_assert!(
        identity.same_command(&Identity::of(meta, command)),
        "an identity is its command's"
    );
    if let Some(key) = identity.key {
        if let Some(prior) = find(state, &key, false, Some(identity), older)? {
            return replay_or_conflict(prior, command);
        }
    }
    validate_meta(meta, command)?;
    let ctx = Ctx {
        policy,
        state,
        meta,
        now_us,
        identity: Some(identity),
        older,
    };
    match command {
        Command::OpenAccount { account } => account::open(&ctx, account),
        Command::Award { account, source } => {
            award::award(&ctx, account, source).or_else(|rejection| award::refusal(&ctx, account, source, rejection))
        }
        Command::Reserve {
            account,
            amount,
            ttl_seconds,
        } => hold::reserve(&ctx, account, *amount, *ttl_seconds),
        Command::Commit { hold_id, amount } => hold::commit(&ctx, *hold_id, *amount),
        Command::Release { hold_id } => hold::release(&ctx, *hold_id),
        Command::ExpireDue { limit } => hold::expire_due(&ctx, *limit),
        Command::CreateLink {
            account,
            external_system,
            external_account_id,
            token_hash,
            ttl_seconds,
        } => link::create(
            &ctx,
            account,
            external_system,
            external_account_id,
            token_hash,
            *ttl_seconds,
        ),
        Command::VerifyLink { link_id, token_hash } => link::verify(&ctx, *link_id, token_hash),
        Command::RevokeLink { link_id, reason } => link::revoke(&ctx, *link_id, reason),
        Command::Ingest {
            source,
            external_id,
            body,
        } => ingest::ingest(&ctx, source, external_id, body),
        Command::RetryDue => ingest::retry_due(&ctx),
        Command::RequestRedrive(request) => ingest::request_redrive(&ctx, request),
        Command::Redrive { receipt_seq } => ingest::redrive(&ctx, *receipt_seq),
        Command::Discard { receipt_seq, reason } => ingest::discard(&ctx, *receipt_seq, reason),
        Command::StartSession {
            session_id,
            subject,
            role,
            ttl_seconds,
        } => session::start(&ctx, session_id, subject, role, *ttl_seconds),
        Command::RefreshSession {
            session_id,
            ttl_seconds,
        } => session::refresh(&ctx, session_id, *ttl_seconds),
        Command::EndSession { session_id, reason } => session::end(&ctx, session_id, reason),
        Command::CreateApiKey {
            key_id,
            name,
            role,
            signing_kid,
            fingerprint,
        } => session::create_key(&ctx, key_id, name, role, signing_kid, fingerprint),
        Command::RevokeApiKey { key_id, reason } => session::revoke_key(&ctx, key_id, reason),
        Command::RegisterEndpoint {
            config,
            secret_kid,
            secret_nonce,
        } => delivery::register(&ctx, config, secret_kid, secret_nonce),
        Command::UpdateEndpoint {
            endpoint_id,
            config,
            status,
        } => delivery::update(&ctx, *endpoint_id, config.as_ref(), *status),
        Command::DispatchDelivery {
            endpoint_id,
            event_seq,
            attempt,
        } => delivery::dispatch(&ctx, *endpoint_id, *event_seq, *attempt),
        Command::RecordDelivery {
            endpoint_id,
            event_seq,
            attempt,
            result,
        } => delivery::record(&ctx, *endpoint_id, *event_seq, *attempt, result),
        Command::AckDelivery {
            endpoint_id,
            event_seq,
            receipt,
        } => delivery::ack(&ctx, *endpoint_id, *event_seq, receipt),
        Command::RetryDeliveries { selection, reason } => delivery::retry(&ctx, selection, reason),
    }
}

fn validate_meta(meta: &CommandMeta, command: &Command) -> Result<(), Rejection> {
    validate_id("tenant", &meta.tenant, MAX_TENANT_BYTES)?;
    validate_id("actor", &meta.actor, MAX_ID_BYTES)?;
    match &meta.idempotency {
        // The pulses, the worker's reports and the operators' retries are idempotent by
        // their own checks, and their records carry no request to answer a retry with.
        Some(_)
            if matches!(
                command,
                Command::ExpireDue { .. }
                    | Command::RetryDue
                    | Command::DispatchDelivery { .. }
                    | Command::RecordDelivery { .. }
                    | Command::RetryDeliveries { .. }
            ) =>
        {
            return Err(Rejection::invalid("idempotency_key", "this command takes none"));
        }
        Some(key) => {
            validate_id("idempotency_key", &key.key, MAX_ID_BYTES)?;
            if !key.scope.is_empty() {
                validate_id("idempotency_scope", &key.scope, MAX_ID_BYTES)?;
            }
            // External events own their scopes: no other command may take (and so block)
            // a partner's event id.
            let ingest_scope = key.scope.starts_with(super::ingest::INGEST_SCOPE_PREFIX);
            if ingest_scope != matches!(command, Command::Ingest { .. }) {
                return Err(Rejection::invalid(
                    "idempotency_scope",
                    format!(
                        "the scope prefix {:?} belongs to external events: an ingest uses it, no other command may",
                        super::ingest::INGEST_SCOPE_PREFIX
                    ),
                ));
            }
        }
        // Pulses, and commands that are idempotent by nature (a second logout or revocation
        // changes nothing; a recorded refusal binds no key).
        None if matches!(
            command,
            Command::ExpireDue { .. }
                | Command::RetryDue
                | Command::EndSession { .. }
                | Command::RevokeApiKey { .. }
                | Command::UpdateEndpoint { .. }
                | Command::DispatchDelivery { .. }
                | Command::RecordDelivery { .. }
                | Command::AckDelivery { .. }
                | Command::RetryDeliveries { .. }
        ) => {}
        None => return Err(Rejection::invalid("idempotency_key", "is required")),
    }
    validate_text("correlation_id", &meta.correlation_id, MAX_TRACE_ID_BYTES)?;
    validate_text("causation_id", &meta.causation_id, MAX_TRACE_ID_BYTES)?;
    Ok(())
}

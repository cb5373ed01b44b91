//! The `tally.v1.Links` service: links to accounts in other systems, proved by one-time
//! tokens. The token is drawn here (256 bits from the operating system), answered once,
//! and only its keyed hash goes to the ledger: `blake3::keyed_hash(link key, token)`. The
//! link key comes from `TALLY_LINK_KEY` (64 hex characters) or the file `link.key` in the
//! data directory, made at start when missing (32 random bytes, mode 0600) — never from the log.

use super::caller::Caller;
use super::convert::{self, Common};
pub use super::link_settings::{LinkSettings, DEFAULT_BASE_URL, LINK_KEY_VARIABLE};
use super::proto::{self, links_server::Links};
use super::slot::EngineSlot;
use super::status::{classify_rejection, invalid, link_token_mismatch, to_status};
use super::trace;
use crate::domain::access::Permission::{LinksRead, LinksReadOwn, LinksWrite, LinksWriteOwn};
use crate::domain::event::{Event, LinkStatus};
use crate::domain::limits::MAX_LINK_VERIFY_FAILURES;
use crate::domain::state::Link;
use crate::domain::{Command, CommandMeta, Rejection};
use crate::engine::{EngineHandle, Receipt};
use tonic::{Request, Response, Status};

fn state(status: LinkStatus) -> proto::LinkState {
    match status {
        LinkStatus::Pending => proto::LinkState::Pending,
        LinkStatus::Active => proto::LinkState::Active,
        LinkStatus::Locked => proto::LinkState::Locked,
        LinkStatus::Revoked => proto::LinkState::Revoked,
        LinkStatus::Expired => proto::LinkState::Expired,
    }
}

pub fn link_message(link_id: u64, link: &Link) -> proto::Link {
    proto::Link {
        link_id,
        account_id: link.account.clone(),
        external_system: link.external_system.clone(),
        external_account_id: link.external_account_id.clone(),
        state: state(link.status) as i32,
        created_at_us: link.created_at_us,
        expires_at_us: link.expires_at_us,
        failures: link.failures,
        resolved_at_us: link.resolved_at_us,
    }
}

/// A command's metadata from a links request's common fields.
fn meta(caller: &Caller, key: &str, scope: &str, correlation_id: &str) -> CommandMeta {
    convert::meta(
        caller,
        Common {
            idempotency_key: key,
            idempotency_scope: scope,
            correlation_id,
            causation_id: "",
        },
    )
}

pub struct LinksService {
    slot: EngineSlot,
}

impl LinksService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    fn engine(&self) -> Result<&EngineHandle, Status> {
        self.slot.engine()
    }

    async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, Status> {
        trace::submit(self.engine()?, meta, command).await
    }

    /// A caller without `links:write` may verify or revoke the links of its own account only.
    async fn may_change(&self, caller: &Caller, link_id: u64) -> Result<(), Status> {
        if caller.principal.has(LinksWrite) {
            return Ok(());
        }
        let link = self.link(&caller.tenant, link_id).await?;
        caller
            .principal
            .require_account(LinksWrite, LinksWriteOwn, &link.account_id)
    }

    /// The link as the ledger has it now, in the caller's tenant.
    async fn link(&self, tenant: &str, link_id: u64) -> Result<proto::Link, Status> {
        let found = self.engine()?.link(tenant, link_id).await.map_err(to_status)?;
        let link = found.ok_or_else(|| classify_rejection(&Rejection::LinkNotFound { link_id }).into_status())?;
        Ok(link_message(link_id, &link))
    }
}

#[tonic::async_trait]
impl Links for LinksService {
    async fn create_link(
        &self,
        request: Request<proto::CreateLinkRequest>,
    ) -> Result<Response<proto::CreateLinkResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        caller
            .principal
            .require_account(LinksWrite, LinksWriteOwn, &r.account_id)?;
        let settings = self.slot.links();
        let token = crate::secrets::random_bytes()
            .map_err(|e| Status::internal(format!("STORAGE_ERROR: no randomness: {e}")))?;
        let meta = meta(&caller, &r.idempotency_key, &r.idempotency_scope, &r.correlation_id);
        let command = Command::CreateLink {
            account: r.account_id.clone(),
            external_system: r.external_system.clone(),
            external_account_id: r.external_account_id.clone(),
            token_hash: settings.hash(&token),
            ttl_seconds: r.ttl_seconds,
        };
        let receipt = self.submit(meta, command).await?;
        let link_id = receipt.records[0].seq;
        // A replay answers without the token: the ledger only ever had its hash.
        let token = match receipt.replayed {
            true => String::new(),
            false => crate::hex::hex(&token),
        };
        let deep_link = match token.is_empty() {
            true => String::new(),
            false => format!("{}/link?linkId={link_id}&token={token}", settings.base_url),
        };
        Ok(Response::new(proto::CreateLinkResponse {
            link: Some(self.link(&caller.tenant, link_id).await?),
            token,
            deep_link,
            replayed: receipt.replayed,
        }))
    }

    async fn verify_link(
        &self,
        request: Request<proto::VerifyLinkRequest>,
    ) -> Result<Response<proto::LinkResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        // A malformed token is refused and not counted: it cannot be anyone's token.
        let token = crate::hex::unhex32(&r.token).ok_or_else(|| invalid("token", "must be 64 hex characters"))?;
        self.may_change(&caller, r.link_id).await?;
        let meta = meta(&caller, &r.idempotency_key, &r.idempotency_scope, &r.correlation_id);
        let command = Command::VerifyLink {
            link_id: r.link_id,
            token_hash: self.slot.links().hash(&token),
        };
        let receipt = self.submit(meta, command).await?;
        if let Event::LinkVerifyFailed(failed) = &receipt.records[0].event {
            return Err(link_token_mismatch(
                failed.link_id,
                MAX_LINK_VERIFY_FAILURES.saturating_sub(failed.failures),
            ));
        }
        Ok(Response::new(proto::LinkResponse {
            link: Some(self.link(&caller.tenant, r.link_id).await?),
            outcome: Some(convert::outcome(&receipt)),
        }))
    }

    async fn revoke_link(
        &self,
        request: Request<proto::RevokeLinkRequest>,
    ) -> Result<Response<proto::LinkResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        self.may_change(&caller, r.link_id).await?;
        let meta = meta(&caller, &r.idempotency_key, &r.idempotency_scope, &r.correlation_id);
        let command = Command::RevokeLink {
            link_id: r.link_id,
            reason: r.reason.clone(),
        };
        let receipt = self.submit(meta, command).await?;
        Ok(Response::new(proto::LinkResponse {
            link: Some(self.link(&caller.tenant, r.link_id).await?),
            outcome: Some(convert::outcome(&receipt)),
        }))
    }

    async fn list_links(
        &self,
        request: Request<proto::ListLinksRequest>,
    ) -> Result<Response<proto::ListLinksResponse>, Status> {
        let caller = Caller::of(&request)?;
        caller
            .principal
            .require_account(LinksRead, LinksReadOwn, &request.get_ref().account_id)?;
        let links = self
            .engine()?
            .links_of(&caller.tenant, &request.get_ref().account_id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListLinksResponse {
            links: links.iter().map(|(id, link)| link_message(*id, link)).collect(),
        }))
    }
}

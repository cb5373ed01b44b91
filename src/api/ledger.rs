//! The `tally.v1.Ledger` service.

use super::caller::Caller;
use super::convert;
use super::proto::{self, ledger_server::Ledger};
use super::slot::EngineSlot;
use super::status::{classify_rejection, invalid, to_status};
use super::trace;
use crate::domain::{Command, CommandMeta};
use crate::engine::Receipt;
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Commands in one `SubmitBatch`: about TigerBeetle's 8189 per request, rounded to a power
/// of two, and well inside gRPC's default 4 MiB message limit for our command sizes.
pub const MAX_BATCH_COMMANDS: usize = 4096;

/// History entries per page when the request asks for none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// History entries per page at most.
pub const MAX_PAGE_SIZE: u32 = 1000;

pub struct LedgerService {
    slot: EngineSlot,
}

impl LedgerService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    fn engine(&self) -> Result<&crate::engine::EngineHandle, Status> {
        self.slot.engine()
    }

    /// Submits one command inside its span, and records how it ended.
    async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, Status> {
        trace::submit(self.engine()?, meta, command).await
    }

    /// Whether the caller may submit `command`; refused here if not. A manual reward goes
    /// to the ledger whatever the caller's grants: the comp rules check `loyalty:award`
    /// themselves, so that a refusal is recorded for the comp review.
    async fn authorize(&self, caller: &Caller, command: &Command) -> Result<(), Status> {
        use crate::domain::access::Permission::*;
        use crate::domain::AwardRequest;
        let p = &caller.principal;
        match command {
            Command::OpenAccount { .. } => p.require(AccountsOpen)?,
            Command::Award {
                source: AwardRequest::Manual { .. },
                ..
            } => {}
            Command::Award { .. } => p.require(LoyaltyAccrue)?,
            Command::Reserve { account, .. } => p.require_account(PointsHold, PointsHoldOwn, account)?,
            Command::Commit { hold_id, .. } | Command::Release { hold_id } => {
                if !p.has(PointsHold) {
                    let account = self.hold_account(caller, *hold_id).await?;
                    p.require_account(PointsHold, PointsHoldOwn, &account)?;
                }
            }
            _ => unreachable!("the ledger service submits ledger commands only"),
        }
        Ok(())
    }

    /// The account of a hold in the caller's tenant (NOT_FOUND otherwise).
    async fn hold_account(&self, caller: &Caller, hold_id: u64) -> Result<String, Status> {
        let view = self.engine()?.hold(hold_id).await.map_err(to_status)?;
        view.filter(|h| h.tenant == caller.tenant)
            .map(|h| h.account_id)
            .ok_or_else(|| classify_rejection(&crate::domain::Rejection::HoldNotFound { hold_id }).into_status())
    }

    /// Authorizes and submits one command of the ledger.
    async fn submit_authorized(&self, caller: &Caller, meta: CommandMeta, command: Command) -> Result<Receipt, Status> {
        self.authorize(caller, &command).await?;
        self.submit(meta, command).await
    }

    /// Waits until queries see every command acknowledged before the call arrived.
    async fn consistent(&self) -> Result<(), Status> {
        self.engine()?.wait_for_projections().await.map_err(to_status)
    }
}

#[tonic::async_trait]
impl Ledger for LedgerService {
    async fn open_account(
        &self,
        request: Request<proto::OpenAccountRequest>,
    ) -> Result<Response<proto::OpenAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (meta, command) = convert::open_account(&caller, request.get_ref());
        let receipt = self.submit_authorized(&caller, meta, command).await?;
        Ok(Response::new(convert::open_account_response(&receipt)))
    }

    async fn award(&self, request: Request<proto::AwardRequest>) -> Result<Response<proto::AwardResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (meta, command) = convert::award(&caller, request.get_ref())?;
        let receipt = self.submit_authorized(&caller, meta, command).await?;
        Ok(Response::new(convert::award_response(&receipt)))
    }

    async fn reserve(
        &self,
        request: Request<proto::ReserveRequest>,
    ) -> Result<Response<proto::ReserveResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (meta, command) = convert::reserve(&caller, request.get_ref());
        let receipt = self.submit_authorized(&caller, meta, command).await?;
        Ok(Response::new(convert::reserve_response(&receipt)))
    }

    async fn commit(&self, request: Request<proto::CommitRequest>) -> Result<Response<proto::CommitResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (meta, command) = convert::commit(&caller, request.get_ref());
        let receipt = self.submit_authorized(&caller, meta, command).await?;
        Ok(Response::new(convert::commit_response(&receipt)))
    }

    async fn release(
        &self,
        request: Request<proto::ReleaseRequest>,
    ) -> Result<Response<proto::ReleaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let (meta, command) = convert::release(&caller, request.get_ref());
        let receipt = self.submit_authorized(&caller, meta, command).await?;
        Ok(Response::new(convert::release_response(&receipt)))
    }

    async fn submit_batch(
        &self,
        request: Request<proto::SubmitBatchRequest>,
    ) -> Result<Response<proto::SubmitBatchResponse>, Status> {
        use proto::batch_result::Result as R;
        let caller = Caller::of(&request)?;
        self.slot.admit(&caller.tenant, request.get_ref().commands.len())?;
        let commands = &request.get_ref().commands;
        if commands.is_empty() || commands.len() > MAX_BATCH_COMMANDS {
            return Err(invalid(
                "commands",
                format!(
                    "a batch holds 1 to {MAX_BATCH_COMMANDS} commands, got {}",
                    commands.len()
                ),
            ));
        }
        // Commands that do not even convert get their error in place; the rest go to the
        // engine together, in order.
        let mut results: Vec<Option<R>> = Vec::with_capacity(commands.len());
        let mut accepted = Vec::new();
        let mut positions = Vec::new();
        for (position, command) in commands.iter().enumerate() {
            let converted = convert::batch_command(&caller, command);
            let authorized = match converted {
                Ok((meta, command)) => self.authorize(&caller, &command).await.map(|()| (meta, command)),
                Err(status) => Err(status),
            };
            match authorized {
                Ok(pair) => {
                    positions.push(position);
                    accepted.push(pair);
                    results.push(None);
                }
                Err(status) => results.push(Some(R::Error(status_error(&status)))),
            }
        }
        let spans: Vec<_> = accepted
            .iter()
            .map(|(meta, command)| trace::command_span(meta, command))
            .collect();
        let kinds: Vec<_> = accepted.iter().map(|(_, command)| command.clone()).collect();
        let outcomes = if accepted.is_empty() {
            Vec::new()
        } else {
            let batch = tracing::debug_span!("batch", commands = accepted.len(), tenant = %caller.tenant);
            self.engine()?
                .submit_batch(accepted)
                .instrument(batch)
                .await
                .map_err(to_status)?
        };
        for (((position, command), outcome), span) in positions.into_iter().zip(kinds).zip(outcomes).zip(spans) {
            trace::record(&span, outcome.as_ref());
            results[position] = Some(match outcome {
                Ok(receipt) => convert::batch_result(&command, &receipt),
                Err(rejection) => R::Error(classify_rejection(&rejection).into_batch_error()),
            });
        }
        let results = results
            .into_iter()
            .map(|result| proto::BatchResult {
                result: Some(result.expect("every command has a result")),
            })
            .collect();
        Ok(Response::new(proto::SubmitBatchResponse { results }))
    }

    async fn get_account(
        &self,
        request: Request<proto::GetAccountRequest>,
    ) -> Result<Response<proto::GetAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        let account_id = &request.get_ref().account_id;
        // From the sequencer: current, and consistent with every acknowledged command,
        // however far the sled projections lag.
        caller.principal.require_account(
            crate::domain::access::Permission::AccountsRead,
            crate::domain::access::Permission::AccountsReadOwn,
            account_id,
        )?;
        let view = self
            .engine()?
            .account(&caller.tenant, account_id)
            .await
            .map_err(to_status)?;
        let view = view.ok_or_else(|| not_found_account(account_id))?;
        Ok(Response::new(proto::GetAccountResponse {
            account: Some(convert::account(&view)),
        }))
    }

    async fn get_hold(
        &self,
        request: Request<proto::GetHoldRequest>,
    ) -> Result<Response<proto::GetHoldResponse>, Status> {
        let caller = Caller::of(&request)?;
        let hold_id = request.get_ref().hold_id;
        let view = self.engine()?.hold(hold_id).await.map_err(to_status)?;
        let view = view
            .filter(|h| h.tenant == caller.tenant)
            .ok_or_else(|| classify_rejection(&crate::domain::Rejection::HoldNotFound { hold_id }).into_status())?;
        caller.principal.require_account(
            crate::domain::access::Permission::AccountsRead,
            crate::domain::access::Permission::AccountsReadOwn,
            &view.account_id,
        )?;
        Ok(Response::new(proto::GetHoldResponse {
            hold: Some(convert::hold(&view)),
        }))
    }

    async fn list_history(
        &self,
        request: Request<proto::ListHistoryRequest>,
    ) -> Result<Response<proto::ListHistoryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let request = request.get_ref();
        caller.principal.require_account(
            crate::domain::access::Permission::AccountsRead,
            crate::domain::access::Permission::AccountsReadOwn,
            &request.account_id,
        )?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n if n > MAX_PAGE_SIZE => return Err(invalid("page_size", format!("must be at most {MAX_PAGE_SIZE}"))),
            n => n,
        } as usize;
        let after_seq = match request.page_token.as_str() {
            "" => 0,
            token => token
                .parse::<u64>()
                .map_err(|_| invalid("page_token", "is not a token this server issued"))?,
        };
        self.consistent().await?;
        let engine = self.engine()?;
        let mut rows = engine
            .indexed()
            .history(&caller.tenant, &request.account_id, after_seq, page_size + 1)
            .map_err(super::status::indexed)?
            .ok_or_else(|| not_found_account(&request.account_id))?;
        let more = rows.len() > page_size;
        rows.truncate(page_size);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListHistoryResponse {
            entries: rows.iter().map(convert::history_entry).collect(),
            next_page_token,
        }))
    }
}

fn not_found_account(account: &str) -> Status {
    classify_rejection(&crate::domain::Rejection::AccountNotFound {
        account: account.to_string(),
    })
    .into_status()
}

/// A status turned into a batch error, keeping its reason.
pub(super) fn status_error(status: &Status) -> proto::Error {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info();
    proto::Error {
        code: super::status::code_name(status.code()).to_string(),
        reason: info.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        message: status.message().to_string(),
        metadata: info.map(|i| i.metadata).unwrap_or_default(),
    }
}

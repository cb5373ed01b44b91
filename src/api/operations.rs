//! The `tally.v1.Operations` service: start, watch and cancel long-running jobs.
//!
//! A tenant's caller sees and cancels only its tenant's operations: another's answers
//! NOT_FOUND exactly like one that does not exist. Rebuilds and snapshots of the
//! projections act on every tenant's rows, so the door lets only `server:manage` start
//! them; a caller with it sees every operation.

use super::caller::Caller;
use super::convert;
use super::proto::{self, operations_server::Operations};
use super::slot::EngineSlot;
use super::status::{invalid, not_found, storage};
use crate::domain::access::Permission;
use crate::engine::jobs::ExportError;
use crate::engine::operations::Viewer;
use crate::projection::ProjectionName;
use tonic::{Request, Response, Status};

pub struct OperationsService {
    slot: EngineSlot,
}

impl OperationsService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    fn engine(&self) -> Result<&crate::engine::EngineHandle, Status> {
        self.slot.engine()
    }
}

fn unknown(id: &str) -> Status {
    not_found(
        "OPERATION_NOT_FOUND",
        format!("no operation {}", crate::domain::quote(id)),
    )
}

/// Whose operations `caller` may see.
fn viewer(caller: &Caller) -> Viewer<'_> {
    if caller.principal.has(Permission::ServerManage) {
        Viewer::Server
    } else {
        Viewer::Tenant(&caller.tenant)
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn start_rebuild(
        &self,
        request: Request<proto::StartRebuildRequest>,
    ) -> Result<Response<proto::Operation>, Status> {
        let r = request.get_ref();
        let only = match r.projection.as_str() {
            "" => None,
            name => Some(ProjectionName::from_name(name).ok_or_else(|| {
                let known: Vec<&str> = ProjectionName::ALL.iter().map(|p| p.name()).collect();
                invalid(
                    "projection",
                    format!(
                        "unknown projection {}; known: {}",
                        crate::domain::quote(name),
                        known.join(", ")
                    ),
                )
            })?),
        };
        let op = self.engine()?.start_rebuild(only, r.verify_only, r.from_snapshot);
        Ok(Response::new(convert::operation(&op)))
    }

    async fn start_replay_to_file(
        &self,
        request: Request<proto::StartReplayToFileRequest>,
    ) -> Result<Response<proto::Operation>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let replay = r.replay.clone().unwrap_or_default();
        let (window, filter, max_events) = convert::replay_spec(&caller, &replay)?;
        let op = self
            .engine()?
            .start_replay_to_file(&caller.tenant, window, filter, max_events, &r.file_name)
            .map_err(|error| match error {
                ExportError::Name(why) => invalid("file_name", why),
                ExportError::Storage(why) => storage(why),
            })?;
        Ok(Response::new(convert::operation(&op)))
    }

    async fn start_projection_snapshot(
        &self,
        _request: Request<proto::StartProjectionSnapshotRequest>,
    ) -> Result<Response<proto::Operation>, Status> {
        Ok(Response::new(convert::operation(
            &self.engine()?.start_projection_snapshot(),
        )))
    }

    async fn get_operation(
        &self,
        request: Request<proto::GetOperationRequest>,
    ) -> Result<Response<proto::Operation>, Status> {
        let caller = Caller::of(&request)?;
        let id = &request.get_ref().id;
        let op = self
            .engine()?
            .operations()
            .get(id, viewer(&caller))
            .ok_or_else(|| unknown(id))?;
        Ok(Response::new(convert::operation(&op)))
    }

    async fn list_operations(
        &self,
        request: Request<proto::ListOperationsRequest>,
    ) -> Result<Response<proto::ListOperationsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let operations = self
            .engine()?
            .operations()
            .list(viewer(&caller))
            .iter()
            .map(convert::operation)
            .collect();
        Ok(Response::new(proto::ListOperationsResponse { operations }))
    }

    async fn cancel_operation(
        &self,
        request: Request<proto::CancelOperationRequest>,
    ) -> Result<Response<proto::Operation>, Status> {
        let caller = Caller::of(&request)?;
        let id = &request.get_ref().id;
        let op = self
            .engine()?
            .operations()
            .cancel(id, viewer(&caller))
            .ok_or_else(|| unknown(id))?;
        Ok(Response::new(convert::operation(&op)))
    }
}

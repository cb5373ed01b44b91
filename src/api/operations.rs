//! The `tally.v1.Operations` service: start, watch and cancel long-running jobs.

use super::caller::Caller;
use super::convert;
use super::proto::{self, operations_server::Operations};
use super::slot::EngineSlot;
use super::status::{invalid, not_found};
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
    not_found("OPERATION_NOT_FOUND", format!("no operation {id:?}"))
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
                    format!("unknown projection {name:?}; known: {}", known.join(", ")),
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
            .start_replay_to_file(window, filter, max_events, &r.file_name)
            .map_err(|e| invalid("file_name", e))?;
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
        let id = &request.get_ref().id;
        let op = self.engine()?.operations().get(id).ok_or_else(|| unknown(id))?;
        Ok(Response::new(convert::operation(&op)))
    }

    async fn list_operations(
        &self,
        _request: Request<proto::ListOperationsRequest>,
    ) -> Result<Response<proto::ListOperationsResponse>, Status> {
        let operations = self
            .engine()?
            .operations()
            .list()
            .iter()
            .map(convert::operation)
            .collect();
        Ok(Response::new(proto::ListOperationsResponse { operations }))
    }

    async fn cancel_operation(
        &self,
        request: Request<proto::CancelOperationRequest>,
    ) -> Result<Response<proto::Operation>, Status> {
        let id = &request.get_ref().id;
        let op = self.engine()?.operations().cancel(id).ok_or_else(|| unknown(id))?;
        Ok(Response::new(convert::operation(&op)))
    }
}

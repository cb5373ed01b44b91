//! The gRPC API: the `tally.v1.Ledger`, `tally.v1.Audit` and `tally.v1.Operations`
//! services, standard health and reflection (v1 and v1alpha), and the one mapping from
//! errors to status codes.
//!
//! Invariant: handlers translate and delegate; every rule lives in the domain, every write
//! goes through the engine.

pub mod audit;
pub mod caller;
pub mod convert;
pub mod ledger;
pub mod operations;
pub mod proto;
pub mod status;

use crate::engine::{EngineHandle, Status as EngineStatus};
use proto::audit_server::AuditServer;
use proto::ledger_server::LedgerServer;
use proto::operations_server::OperationsServer;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight calls
/// finish. Health reports SERVING while the engine serves and NOT_SERVING once it fails or
/// stops.
pub async fn serve(
    engine: EngineHandle,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let service_name = <LedgerServer<ledger::LedgerService> as tonic::server::NamedService>::NAME;
    let mut status = engine.status_watch();
    tokio::spawn(async move {
        loop {
            let serving = match *status.borrow_and_update() {
                EngineStatus::Serving => ServingStatus::Serving,
                _ => ServingStatus::NotServing,
            };
            reporter.set_service_status("", serving).await;
            reporter.set_service_status(service_name, serving).await;
            if status.changed().await.is_err() {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                reporter
                    .set_service_status(service_name, ServingStatus::NotServing)
                    .await;
                return;
            }
        }
    });
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("the embedded descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptors are valid");
    tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(LedgerServer::new(ledger::LedgerService::new(engine.clone())))
        .add_service(AuditServer::new(audit::AuditService::new(engine.clone())))
        .add_service(OperationsServer::new(operations::OperationsService::new(engine)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}

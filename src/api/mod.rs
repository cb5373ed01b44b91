//! The gRPC API: the `tally.v1.Ledger`, `tally.v1.Audit`, `tally.v1.Ingest`,
//! `tally.v1.Links`, `tally.v1.Identity`, `tally.v1.Deliveries` and `tally.v1.Operations` services behind the
//! door that authenticates and authorizes every call (`auth.rs`), standard health and reflection (v1 and v1alpha), and the one mapping from
//! errors to status codes.
//!
//! Invariant: handlers translate and delegate; every rule lives in the domain, every write
//! goes through the engine.

pub mod admission;
pub mod audit;
pub mod auth;
pub mod caller;
pub mod convert;
pub mod deliveries;
pub mod external;
pub mod identity;
pub mod ingest;
pub mod ledger;
pub mod limits;
pub mod link_settings;
pub mod links;
pub mod malformed;
pub mod operations;
pub mod payload;
pub mod proto;
pub mod records;
pub mod slot;
pub mod status;
pub mod strict;
pub mod trace;

pub use slot::{ApiSettings, EngineSlot, Phase};

use crate::engine::EngineHandle;
use proto::audit_server::AuditServer;
use proto::deliveries_server::DeliveriesServer;
use proto::identity_server::IdentityServer;
use proto::ingest_server::IngestServer;
use proto::ledger_server::LedgerServer;
use proto::links_server::LinksServer;
use proto::operations_server::OperationsServer;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Serves the API for a running engine; see [`serve_slot`].
pub async fn serve(
    engine: EngineHandle,
    settings: ApiSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_slot(EngineSlot::ready(engine, settings), listener, shutdown).await
}

/// Serves the API on `listener` until `shutdown` completes, then lets in-flight calls
/// finish. The engine may arrive in the slot later (the port opens before recovery).
/// Health reports SERVING only while the engine in the slot serves: NOT_SERVING while
/// recovering, when the log was refused, while a follower (projector, snapshotter) cannot
/// fold the log, and once the engine fails or stops.
pub async fn serve_slot(
    slot: EngineSlot,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    // Set before the first call can arrive: an engine already in the slot serves from the
    // start, not from whenever the reporting task first runs.
    let initial = match slot.get() {
        Some(engine) if engine.serving() => ServingStatus::Serving,
        _ => ServingStatus::NotServing,
    };
    set_health(&reporter, initial).await;
    tokio::spawn(report_health(slot.clone(), reporter.clone()));
    // A stop: health NOT_SERVING and new calls refused first (`EngineSlot::begin_stop`; open
    // streams end with SHUTTING_DOWN), then the listener closes and tonic lets the calls
    // under way finish.
    let stopping = slot.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.begin_stop();
        set_health(&reporter, ServingStatus::NotServing).await;
        tracing::info!("stopping: health NOT_SERVING, new calls refused, open streams ended");
    };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().expect("the embedded descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("the embedded descriptors are valid");
    let limit = malformed::MAX_REQUEST_MESSAGE_BYTES;
    let admission = slot.admission();
    tonic::transport::Server::builder()
        .max_concurrent_streams(Some(admission.max_streams_per_connection))
        // Outermost: an overloaded server refuses before reading or checking anything.
        .layer(admission::AdmissionLayer::new(admission))
        // The codec's refusals (undecodable, oversized) become the caller's errors.
        .layer(malformed::MalformedLayer)
        .layer(auth::AuthLayer::new(slot.clone()))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(LedgerServer::new(ledger::LedgerService::new(slot.clone())).max_decoding_message_size(limit))
        .add_service(AuditServer::new(audit::AuditService::new(slot.clone())).max_decoding_message_size(limit))
        .add_service(IngestServer::new(ingest::IngestService::new(slot.clone())).max_decoding_message_size(limit))
        .add_service(LinksServer::new(links::LinksService::new(slot.clone())).max_decoding_message_size(limit))
        .add_service(IdentityServer::new(identity::IdentityService::new(slot.clone())).max_decoding_message_size(limit))
        .add_service(
            DeliveriesServer::new(deliveries::DeliveriesService::new(slot.clone())).max_decoding_message_size(limit),
        )
        .add_service(OperationsServer::new(operations::OperationsService::new(slot)).max_decoding_message_size(limit))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
}

/// Accepted connections with Nagle's algorithm off: an answer is one small write that must
/// leave at once, not wait for the client's delayed acknowledgement.
fn incoming(listener: TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.inspect(|stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot turn Nagle's algorithm off");
            }
        })
    })
}

/// Follows the slot, then the engine's status, into the health service, until a stop.
async fn report_health(slot: EngineSlot, reporter: HealthReporter) {
    let mut phase = slot.phase_watch();
    match phase.wait_for(|p| matches!(p, Phase::Ready | Phase::Stopping)).await {
        Ok(p) if *p == Phase::Ready => {}
        _ => return,
    }
    let engine = slot.get().expect("a ready slot holds the engine");
    let mut status = engine.status_watch();
    let mut followers = engine.followers().watch();
    loop {
        status.borrow_and_update();
        let trouble = followers.borrow_and_update().clone();
        let serving = if engine.serving() {
            ServingStatus::Serving
        } else {
            if let Some(trouble) = trouble {
                tracing::warn!(%trouble, "health NOT_SERVING: a follower cannot fold the log");
            }
            ServingStatus::NotServing
        };
        if *phase.borrow() == Phase::Stopping {
            return; // the stop set NOT_SERVING; nothing turns it back
        }
        set_health(&reporter, serving).await;
        tokio::select! {
            changed = status.changed() => if changed.is_err() {
                set_health(&reporter, ServingStatus::NotServing).await;
                return;
            },
            _ = phase.changed() => {}
            _ = followers.changed() => {}
        }
    }
}

/// Sets the overall status and the Ledger service's.
async fn set_health(reporter: &HealthReporter, serving: ServingStatus) {
    let service_name = <LedgerServer<ledger::LedgerService> as tonic::server::NamedService>::NAME;
    reporter.set_service_status("", serving).await;
    reporter.set_service_status(service_name, serving).await;
}

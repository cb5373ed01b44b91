//! Admission: a server under more load than it can serve says so at once, instead of
//! queueing every caller until all of them are slow. Each call takes a slot of a fixed
//! number of calls in flight (`limits.max_calls_in_flight`) before anything of it is read
//! or checked; when none is free it is answered RESOURCE_EXHAUSTED / `SERVER_OVERLOADED`
//! with a retry hint, having cost the server a header parse. The slot is given back when
//! the handler has answered (a stream's when it starts; its items flow after). Health
//! checks are never refused, so that a busy server is not taken for a dead one.
//!
//! Per connection, HTTP/2 bounds the streams a client may open at once
//! (`limits.max_streams_per_connection`, SETTINGS_MAX_CONCURRENT_STREAMS): a connection
//! cannot hold more than its share of the slots.

use super::status::error_status;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tonic::Code;

/// Calls in flight at once, by default: far above what two cores serve in a millisecond,
/// far below what would hold memory a person would notice.
pub const DEFAULT_MAX_CALLS_IN_FLIGHT: usize = 4096;
/// Streams one HTTP/2 connection may have open at once, by default.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// The retry hint of an overloaded answer.
pub const OVERLOADED_RETRY_AFTER_MS: u64 = 50;

/// Counter of calls refused as overload.
pub const OVERLOADED_TOTAL: &str = "tally_calls_overloaded_total";

/// Describes the admission metric for /metrics.
pub fn describe() {
    metrics::describe_counter!(
        OVERLOADED_TOTAL,
        "Calls refused as overload: limits.max_calls_in_flight calls were in flight"
    );
}

/// How many calls the server admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// `None`: no bound.
    pub max_calls_in_flight: Option<usize>,
    pub max_streams_per_connection: u32,
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_calls_in_flight: Some(DEFAULT_MAX_CALLS_IN_FLIGHT),
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
        }
    }
}

/// The tower layer in front of every service.
#[derive(Clone, Debug)]
pub struct AdmissionLayer {
    /// The free slots, and how many there are in all.
    slots: Option<(Arc<Semaphore>, usize)>,
}

impl AdmissionLayer {
    pub fn new(admission: Admission) -> Self {
        Self {
            slots: admission.max_calls_in_flight.map(|n| (Arc::new(Semaphore::new(n)), n)),
        }
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            slots: self.slots.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    slots: Option<(Arc<Semaphore>, usize)>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// The answer to a call no slot was free for.
fn overloaded(limit: usize) -> tonic::Status {
    error_status(
        Code::ResourceExhausted,
        "SERVER_OVERLOADED",
        &format!("the server has {limit} calls in flight, its limit; retry after a short pause"),
        HashMap::from([
            ("limit".to_string(), limit.to_string()),
            ("retry_after_ms".to_string(), OVERLOADED_RETRY_AFTER_MS.to_string()),
        ]),
    )
}

impl<S, B> tower::Service<http::Request<B>> for AdmissionService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let exempt = request.uri().path().starts_with("/grpc.health.v1.Health/");
        let permit = match &self.slots {
            Some((slots, limit)) if !exempt => match slots.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    ::metrics::counter!(OVERLOADED_TOTAL).increment(1);
                    let status = overloaded(*limit);
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            },
            _ => None,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(permit);
            response
        })
    }
}

//! Requests that never reach a handler. tonic's codec refuses a message that does not
//! decode — invalid UTF-8 in a string, a wrong wire type, a truncated message, nesting past
//! prost's recursion limit, a bad compression flag — as INTERNAL, and one over the size
//! limit as OUT_OF_RANGE, both without an ErrorInfo: to a client, a server fault. They are
//! the caller's errors. A layer in front of every service rewrites them, in the shape every
//! other error has (`status.rs`): INVALID_ARGUMENT / `MALFORMED_REQUEST`, and
//! RESOURCE_EXHAUSTED / `MESSAGE_TOO_LARGE` with the limit.
//!
//! The codec's statuses are recognized by their texts (tonic's and prost's own, tested in
//! `tests/grpc.rs`, so an upgrade that changes them fails there) and only on a
//! trailers-only answer without details: a handler's statuses always carry an ErrorInfo,
//! so none of them is ever taken for the codec's.

use super::status::error_status;
use std::collections::HashMap;
use tonic::{Code, Status};

/// Largest request message a service decodes: gRPC's customary 4 MiB (tonic's default,
/// set explicitly on every service so that this constant is the limit). The largest
/// legitimate request, a batch of 4096 commands with 128-byte ids, is under 2 MiB.
pub const MAX_REQUEST_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What tonic and prost call a message they could not decode (INTERNAL).
const UNDECODABLE: [&str; 4] = [
    "failed to decode Protobuf message",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "protocol error: received message with",
];

/// What tonic calls a message over the size limit (OUT_OF_RANGE), or one that inflates
/// past it (RESOURCE_EXHAUSTED).
const OVERSIZED: [&str; 2] = [
    "Error, decoded message length too large",
    "Error decompressing: size limit",
];

/// The status to answer instead of the codec's `status`, if it is one of the codec's
/// refusals of the request; `None` leaves it as it is.
pub fn rewrite(status: &Status) -> Option<Status> {
    if !status.details().is_empty() {
        return None;
    }
    let said = status.message();
    let matches = |texts: &[&str]| texts.iter().any(|text| said.starts_with(text));
    match status.code() {
        Code::Internal if matches(&UNDECODABLE) => Some(error_status(
            Code::InvalidArgument,
            "MALFORMED_REQUEST",
            &format!("the request is not a valid message of this method: {said}"),
            HashMap::new(),
        )),
        Code::OutOfRange | Code::ResourceExhausted if matches(&OVERSIZED) => Some(error_status(
            Code::ResourceExhausted,
            "MESSAGE_TOO_LARGE",
            &format!("the request message is larger than {MAX_REQUEST_MESSAGE_BYTES} bytes: {said}"),
            HashMap::from([("limit_bytes".to_string(), MAX_REQUEST_MESSAGE_BYTES.to_string())]),
        )),
        _ => None,
    }
}

/// The tower layer that rewrites the codec's refusals.
#[derive(Clone, Copy, Debug, Default)]
pub struct MalformedLayer;

impl<S> tower::Layer<S> for MalformedLayer {
    type Service = MalformedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MalformedService { inner }
    }
}

#[derive(Clone)]
pub struct MalformedService<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for MalformedService<S>
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
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            // A refusal before the handler is a trailers-only answer: its status is in the
            // headers, and there is no body to keep.
            let rewritten = Status::from_header_map(response.headers())
                .filter(|status| status.code() != Code::Ok)
                .and_then(|status| rewrite(&status));
            Ok(match rewritten {
                Some(status) => status.into_http(),
                None => response,
            })
        })
    }
}

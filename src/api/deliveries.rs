//! The `tally.v1.Deliveries` service: endpoints, acks, and the deliveries' state. Endpoint
//! URLs are checked here (scheme, host, and unless allowed, a public address); the signing
//! secret's nonce is drawn here and the secret derived from the key ring, never logged.

use super::caller::Caller;
use super::proto::{self, deliveries_server::Deliveries};
use super::slot::EngineSlot;
use super::status::{classify_rejection, invalid, to_status};
use super::trace;
use crate::domain::delivery::{
    AckMode, Delivery, DeliveryStatus, Endpoint, EndpointConfig, EndpointStatus, RetrySelection, Semantics,
};
use crate::domain::{Command, CommandMeta, Event, EventKind, Rejection};
use crate::engine::{EngineHandle, Receipt};
use tonic::{Request, Response, Status};

/// Attempts when the settings name none: the default, five.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Backoff from 1 s to at most 30 s when the settings name none.
pub const DEFAULT_BACKOFF_INITIAL_MS: u64 = 1_000;
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;
/// Time to ack when the settings name none: a minute.
pub const DEFAULT_ACK_TIMEOUT_SECONDS: u32 = 60;
/// Request timeout when the settings name none: 10 s.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u32 = 10_000;
/// Deliveries listed when the request names no limit, and at most.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
pub const MAX_LIST_LIMIT: u32 = 1000;

pub struct DeliveriesService {
    slot: EngineSlot,
}

impl DeliveriesService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    fn engine(&self) -> Result<&EngineHandle, Status> {
        self.slot.engine()
    }

    async fn submit(&self, meta: CommandMeta, command: Command) -> Result<Receipt, Status> {
        trace::submit(self.engine()?, meta, command).await
    }

    /// The endpoint as the ledger has it now, in the caller's tenant.
    async fn endpoint(&self, tenant: &str, endpoint_id: u64) -> Result<Endpoint, Status> {
        let tenant = tenant.to_string();
        let found = self
            .engine()?
            .inspect(move |state| {
                state
                    .deliveries
                    .endpoints
                    .get(&endpoint_id)
                    .filter(|e| e.tenant == tenant)
                    .cloned()
            })
            .await
            .map_err(to_status)?;
        found.ok_or_else(|| classify_rejection(&Rejection::EndpointNotFound { endpoint_id }).into_status())
    }

    /// Checks the URL's destination under the server's policy.
    async fn check_url(&self, config: &EndpointConfig) -> Result<(), Status> {
        crate::domain::delivery::validate_config(config).map_err(|r| classify_rejection(&r).into_status())?;
        crate::outbound::check_destination(&config.url, self.slot.destinations())
            .await
            .map(|_| ())
            .map_err(|why| invalid("settings.url", why))
    }

    async fn set_status(
        &self,
        request: Request<proto::EndpointRequest>,
        status: EndpointStatus,
    ) -> Result<Response<proto::EndpointResponse>, Status> {
        let caller = Caller::of(&request)?;
        let endpoint_id = request.get_ref().endpoint_id;
        let command = Command::UpdateEndpoint {
            endpoint_id,
            config: None,
            status: Some(status),
        };
        let receipt = self.submit(meta(&caller, ""), command).await?;
        let endpoint = self.endpoint(&caller.tenant, endpoint_id).await?;
        Ok(Response::new(proto::EndpointResponse {
            endpoint: Some(endpoint_message(endpoint_id, &endpoint)),
            secret: String::new(),
            sequence: receipt.records.first().map_or(0, |r| r.seq),
        }))
    }
}

fn meta(caller: &Caller, key: &str) -> CommandMeta {
    super::convert::caller_meta(caller, key, "")
}

/// The settings with their defaults filled in.
fn config(settings: Option<&proto::EndpointSettings>) -> Result<EndpointConfig, Status> {
    let s = settings.ok_or_else(|| invalid("settings", "is required"))?;
    let semantics = match proto::DeliverySemantics::try_from(s.semantics) {
        Ok(proto::DeliverySemantics::AtMostOnce) => Semantics::AtMostOnce,
        Ok(proto::DeliverySemantics::ExactlyOnce) => Semantics::ExactlyOnce,
        Ok(proto::DeliverySemantics::AtLeastOnce | proto::DeliverySemantics::Unspecified) => Semantics::AtLeastOnce,
        Err(_) => return Err(invalid("settings.semantics", "unknown value")),
    };
    let ack_mode = match proto::AckMode::try_from(s.ack_mode) {
        Ok(proto::AckMode::Explicit) => AckMode::Explicit,
        Ok(proto::AckMode::Status2xx) => AckMode::Status2xx,
        Ok(proto::AckMode::Unspecified) if semantics == Semantics::ExactlyOnce => AckMode::Explicit,
        Ok(proto::AckMode::Unspecified) => AckMode::Status2xx,
        Err(_) => return Err(invalid("settings.ack_mode", "unknown value")),
    };
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    Ok(EndpointConfig {
        url: s.url.trim().to_string(),
        kinds: s.event_kinds.clone(),
        semantics,
        max_attempts: or(s.max_attempts.into(), DEFAULT_MAX_ATTEMPTS.into()) as u32,
        backoff_initial_ms: or(s.backoff_initial_ms, DEFAULT_BACKOFF_INITIAL_MS),
        backoff_max_ms: or(s.backoff_max_ms, DEFAULT_BACKOFF_MAX_MS),
        ack_mode,
        ack_timeout_seconds: or(s.ack_timeout_seconds.into(), DEFAULT_ACK_TIMEOUT_SECONDS.into()) as u32,
        ordered: s.ordered,
        request_timeout_ms: or(s.request_timeout_ms.into(), DEFAULT_REQUEST_TIMEOUT_MS.into()) as u32,
    })
}

fn settings_message(c: &EndpointConfig) -> proto::EndpointSettings {
    proto::EndpointSettings {
        url: c.url.clone(),
        event_kinds: c.kinds.clone(),
        semantics: match c.semantics {
            Semantics::AtMostOnce => proto::DeliverySemantics::AtMostOnce,
            Semantics::AtLeastOnce => proto::DeliverySemantics::AtLeastOnce,
            Semantics::ExactlyOnce => proto::DeliverySemantics::ExactlyOnce,
        } as i32,
        max_attempts: c.max_attempts,
        backoff_initial_ms: c.backoff_initial_ms,
        backoff_max_ms: c.backoff_max_ms,
        ack_mode: match c.ack_mode {
            AckMode::Status2xx => proto::AckMode::Status2xx,
            AckMode::Explicit => proto::AckMode::Explicit,
        } as i32,
        ack_timeout_seconds: c.ack_timeout_seconds,
        ordered: c.ordered,
        request_timeout_ms: c.request_timeout_ms,
    }
}

fn endpoint_message(endpoint_id: u64, e: &Endpoint) -> proto::Endpoint {
    proto::Endpoint {
        endpoint_id,
        settings: Some(settings_message(&e.config)),
        status: e.status.name().to_string(),
        registered_at_us: e.registered_at_us,
    }
}

fn delivery_message(endpoint_id: u64, event_seq: u64, d: &Delivery) -> proto::DeliveryInfo {
    let waiting = matches!(
        d.status,
        DeliveryStatus::Pending | DeliveryStatus::Failed | DeliveryStatus::AwaitingAck
    );
    proto::DeliveryInfo {
        delivery_id: format!("{endpoint_id}:{event_seq}"),
        endpoint_id,
        event_sequence: event_seq,
        event_kind: EventKind::from_code(d.event_kind).map_or("", |k| k.name()).to_string(),
        account_id: d.account.clone(),
        event_timestamp_us: d.event_ts_us,
        state: d.status.name().to_string(),
        next_attempt_at_us: if waiting { d.next_at_us } else { 0 },
        finished_at_us: d.finished_at_us,
        attempts: d
            .attempts
            .iter()
            .map(|a| proto::DeliveryAttempt {
                attempt: a.attempt,
                at_us: a.at_us,
                status_code: a.status_code.into(),
                latency_us: a.latency_us,
                error: a.error.clone(),
            })
            .collect(),
    }
}

/// `<endpoint id>:<event sequence>`.
fn parse_delivery_id(text: &str) -> Result<(u64, u64), Status> {
    text.split_once(':')
        .and_then(|(e, s)| Some((e.parse().ok()?, s.parse().ok()?)))
        .ok_or_else(|| {
            invalid(
                "delivery_id",
                "is `<endpoint id>:<event sequence>`, as in the Tally-Delivery-Id header",
            )
        })
}

#[tonic::async_trait]
impl Deliveries for DeliveriesService {
    async fn register_endpoint(
        &self,
        request: Request<proto::RegisterEndpointRequest>,
    ) -> Result<Response<proto::EndpointResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let config = config(r.settings.as_ref())?;
        self.check_url(&config).await?;
        let auth = self.slot.auth();
        let nonce = super::auth::fresh_id("n-")?;
        let command = Command::RegisterEndpoint {
            config,
            secret_kid: auth.keys.signing().kid.clone(),
            secret_nonce: nonce,
        };
        let receipt = self.submit(meta(&caller, &r.idempotency_key), command).await?;
        let Event::EndpointRegistered(registered) = &receipt.records[0].event else {
            unreachable!("a registration is its record");
        };
        // A retry answers the secret of the first registration, derived again.
        let secret = auth
            .endpoint_secret(&registered.secret_kid, &registered.secret_nonce)
            .ok_or_else(|| {
                Status::failed_precondition("KEY_RETIRED: the key this endpoint's secret came from is gone")
            })?;
        let endpoint = self.endpoint(&caller.tenant, registered.endpoint_id).await?;
        Ok(Response::new(proto::EndpointResponse {
            endpoint: Some(endpoint_message(registered.endpoint_id, &endpoint)),
            secret,
            sequence: receipt.records[0].seq,
        }))
    }

    async fn update_endpoint(
        &self,
        request: Request<proto::UpdateEndpointRequest>,
    ) -> Result<Response<proto::EndpointResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let config = config(r.settings.as_ref())?;
        self.check_url(&config).await?;
        let command = Command::UpdateEndpoint {
            endpoint_id: r.endpoint_id,
            config: Some(config),
            status: None,
        };
        let receipt = self.submit(meta(&caller, ""), command).await?;
        let endpoint = self.endpoint(&caller.tenant, r.endpoint_id).await?;
        Ok(Response::new(proto::EndpointResponse {
            endpoint: Some(endpoint_message(r.endpoint_id, &endpoint)),
            secret: String::new(),
            sequence: receipt.records.first().map_or(0, |r| r.seq),
        }))
    }

    async fn pause_endpoint(
        &self,
        request: Request<proto::EndpointRequest>,
    ) -> Result<Response<proto::EndpointResponse>, Status> {
        self.set_status(request, EndpointStatus::Paused).await
    }

    async fn resume_endpoint(
        &self,
        request: Request<proto::EndpointRequest>,
    ) -> Result<Response<proto::EndpointResponse>, Status> {
        self.set_status(request, EndpointStatus::Active).await
    }

    async fn delete_endpoint(
        &self,
        request: Request<proto::EndpointRequest>,
    ) -> Result<Response<proto::EndpointResponse>, Status> {
        self.set_status(request, EndpointStatus::Deleted).await
    }

    async fn list_endpoints(
        &self,
        request: Request<proto::ListEndpointsRequest>,
    ) -> Result<Response<proto::ListEndpointsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let tenant = caller.tenant.clone();
        let endpoints = self
            .engine()?
            .inspect(move |state| {
                state
                    .deliveries
                    .endpoints
                    .iter()
                    .filter(|(_, e)| e.tenant == tenant && e.status != EndpointStatus::Deleted)
                    .map(|(&id, e)| endpoint_message(id, e))
                    .collect()
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListEndpointsResponse { endpoints }))
    }

    async fn ack(&self, request: Request<proto::AckRequest>) -> Result<Response<proto::AckResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (endpoint_id, event_seq) = parse_delivery_id(&r.delivery_id)?;
        let command = Command::AckDelivery {
            endpoint_id,
            event_seq,
            receipt: r.receipt.clone(),
        };
        let receipt = self.submit(meta(&caller, ""), command).await?;
        Ok(Response::new(proto::AckResponse {
            delivery_id: r.delivery_id.clone(),
            acked: !receipt.records.is_empty(),
        }))
    }

    async fn get_delivery(
        &self,
        request: Request<proto::GetDeliveryRequest>,
    ) -> Result<Response<proto::DeliveryInfo>, Status> {
        let caller = Caller::of(&request)?;
        let (endpoint_id, event_seq) = parse_delivery_id(&request.get_ref().delivery_id)?;
        let tenant = caller.tenant.clone();
        let found = self
            .engine()?
            .inspect(move |state| {
                state
                    .deliveries
                    .deliveries
                    .get(&(endpoint_id, event_seq))
                    .filter(|d| d.tenant == tenant)
                    .map(|d| delivery_message(endpoint_id, event_seq, d))
            })
            .await
            .map_err(to_status)?;
        let delivery = found
            .ok_or_else(|| classify_rejection(&Rejection::DeliveryNotFound { endpoint_id, event_seq }).into_status())?;
        Ok(Response::new(delivery))
    }

    async fn list_deliveries(
        &self,
        request: Request<proto::ListDeliveriesRequest>,
    ) -> Result<Response<proto::ListDeliveriesResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref().clone();
        self.endpoint(&caller.tenant, r.endpoint_id).await?;
        let limit = match r.limit {
            0 => DEFAULT_LIST_LIMIT,
            n if n > MAX_LIST_LIMIT => return Err(invalid("limit", format!("must be at most {MAX_LIST_LIMIT}"))),
            n => n,
        } as usize;
        let deliveries = self
            .engine()?
            .inspect(move |state| {
                state
                    .deliveries
                    .deliveries
                    .range((r.endpoint_id, 0)..=(r.endpoint_id, u64::MAX))
                    .filter(|(_, d)| r.state.is_empty() || d.status.name() == r.state)
                    .filter(|(_, d)| d.event_ts_us >= r.from_us && (r.to_us == 0 || d.event_ts_us <= r.to_us))
                    .take(limit)
                    .map(|(&(e, s), d)| delivery_message(e, s, d))
                    .collect()
            })
            .await
            .map_err(to_status)?;
        Ok(Response::new(proto::ListDeliveriesResponse { deliveries }))
    }

    async fn retry_delivery(
        &self,
        request: Request<proto::RetryDeliveryRequest>,
    ) -> Result<Response<proto::RetryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let (endpoint_id, event_seq) = parse_delivery_id(&r.delivery_id)?;
        let selection = RetrySelection::One { endpoint_id, event_seq };
        self.retry(&caller, selection, &r.reason).await
    }

    async fn redrive_deliveries(
        &self,
        request: Request<proto::RedriveDeliveriesRequest>,
    ) -> Result<Response<proto::RetryResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let selection = RetrySelection::FailedBetween {
            endpoint_id: r.endpoint_id,
            from_us: r.from_us,
            to_us: r.to_us,
        };
        self.retry(&caller, selection, &r.reason).await
    }

    async fn get_endpoint_stats(
        &self,
        request: Request<proto::EndpointRequest>,
    ) -> Result<Response<proto::EndpointStats>, Status> {
        let caller = Caller::of(&request)?;
        let endpoint_id = request.get_ref().endpoint_id;
        let endpoint = self.endpoint(&caller.tenant, endpoint_id).await?;
        let pending = self
            .engine()?
            .inspect(move |state| {
                state
                    .deliveries
                    .deliveries
                    .range((endpoint_id, 0)..=(endpoint_id, u64::MAX))
                    .filter(|(_, d)| !d.status.done() && d.status != DeliveryStatus::FailedPermanent)
                    .count() as u64
            })
            .await
            .map_err(to_status)?;
        let s = &endpoint.stats;
        let mut latencies: Vec<u64> = s.latencies_us.iter().copied().collect();
        latencies.sort_unstable();
        let average = match latencies.len() {
            0 => 0,
            n => latencies.iter().sum::<u64>() / n as u64,
        };
        let p99 = match latencies.len() {
            0 => 0,
            n => latencies[((n * 99).div_ceil(100)).saturating_sub(1)],
        };
        let tried = s.delivered + s.failed_attempts;
        Ok(Response::new(proto::EndpointStats {
            endpoint_id,
            delivered: s.delivered,
            acked: s.acked,
            failed_attempts: s.failed_attempts,
            failed_permanent: s.failed_permanent,
            retried_by_hand: s.retried_by_hand,
            pending,
            success_rate: if tried == 0 {
                0.0
            } else {
                s.delivered as f64 / tried as f64
            },
            latency_average_us: average,
            latency_p99_us: p99,
        }))
    }
}

impl DeliveriesService {
    async fn retry(
        &self,
        caller: &Caller,
        selection: RetrySelection,
        reason: &str,
    ) -> Result<Response<proto::RetryResponse>, Status> {
        let command = Command::RetryDeliveries {
            selection,
            reason: reason.to_string(),
        };
        let receipt = self.submit(meta(caller, ""), command).await?;
        let delivery_ids = receipt
            .records
            .iter()
            .filter_map(|r| match &r.event {
                Event::DeliveryRetried(d) => Some(format!("{}:{}", d.endpoint_id, d.event_seq)),
                _ => None,
            })
            .collect();
        Ok(Response::new(proto::RetryResponse { delivery_ids }))
    }
}

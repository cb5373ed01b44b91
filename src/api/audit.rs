//! The `tally.v1.Audit` service: window replays and subscriptions (server streaming),
//! digests, and audit queries. Every read is confined to the caller's tenant.

use super::caller::Caller;
use super::proto::{self, audit_server::Audit};
use super::slot::EngineSlot;
use super::status::{indexed, invalid, not_found, storage, to_status};
use super::{convert, records};
use crate::domain::quote;
use crate::projection::HistoryView;
use crate::query::{self, subscribe::Delivery, Replay};
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Request, Response, Status};

/// Messages buffered per stream: a slow client slows its own stream, nothing more.
const STREAM_BUFFER: usize = 256;
/// A replay reports progress after this many events (and at the end).
const PROGRESS_EVERY_EVENTS: u64 = 1000;
/// Default records between subscription checkpoints.
const DEFAULT_CHECKPOINT_EVERY: u32 = 1000;
/// Audit query page sizes.
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

pub struct AuditService {
    slot: EngineSlot,
}

impl AuditService {
    pub fn new(slot: EngineSlot) -> Self {
        Self { slot }
    }

    fn engine(&self) -> Result<&crate::engine::EngineHandle, Status> {
        self.slot.engine()
    }

    async fn consistent(&self) -> Result<(), Status> {
        self.engine()?.wait_for_projections().await.map_err(to_status)
    }
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested as usize {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n > MAX_PAGE_SIZE => Err(invalid("page_size", format!("must be at most {MAX_PAGE_SIZE}"))),
        n => Ok(n),
    }
}

fn entries(
    mut rows: Vec<HistoryView>,
    page_size: usize,
    token: impl Fn(&HistoryView) -> String,
) -> proto::AuditEntries {
    let more = rows.len() > page_size;
    rows.truncate(page_size);
    let next_page_token = match (more, rows.last()) {
        (true, Some(last)) => token(last),
        _ => String::new(),
    };
    proto::AuditEntries {
        entries: rows.iter().map(convert::history_entry).collect(),
        next_page_token,
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    type ReplayStream = EventStream<proto::ReplayResponse>;
    type SubscribeStream = EventStream<proto::SubscribeResponse>;

    async fn replay(&self, request: Request<proto::ReplayRequest>) -> Result<Response<Self::ReplayStream>, Status> {
        use proto::replay_response::Item;
        let caller = Caller::of(&request)?;
        let (window, filter, max_events) = convert::replay_spec(&caller, request.get_ref())?;
        let events_per_second = request.get_ref().events_per_second;
        let reader = self.engine()?.reader().clone();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::task::spawn_blocking(move || {
            let mut replay = Replay::new(&reader, window, filter, max_events);
            let started = Instant::now();
            let progress = |p: query::Progress| proto::ReplayResponse {
                item: Some(Item::Progress(proto::ReplayProgress {
                    events_sent: p.events_sent,
                    position: p.position,
                    percent: p.percent,
                    done: p.done,
                })),
            };
            loop {
                let event = match replay.next_event() {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        let _ = tx.blocking_send(Ok(progress(replay.progress())));
                        return;
                    }
                    Err(error) => {
                        let _ = tx.blocking_send(Err(to_status(error.into())));
                        return;
                    }
                };
                if events_per_second > 0 {
                    // Pace: event n goes out no earlier than n / rate seconds after the start.
                    let due =
                        Duration::from_secs_f64(replay.progress().events_sent as f64 / f64::from(events_per_second));
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let message = proto::ReplayResponse {
                    item: Some(Item::Event(records::ledger_event(&event))),
                };
                // A closed channel is a client that went away (or cancelled): stop reading.
                if tx.blocking_send(Ok(message)).is_err() {
                    return;
                }
                if replay.progress().events_sent.is_multiple_of(PROGRESS_EVERY_EVENTS)
                    && tx.blocking_send(Ok(progress(replay.progress()))).is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(until_stop(
            self.slot.clone(),
            ReceiverStream::new(rx),
        ))))
    }

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use proto::subscribe_response::Item;
        let caller = Caller::of(&request)?;
        let request = request.into_inner();
        let filter = convert::filter(&caller, request.filter.as_ref())?;
        let every = match request.checkpoint_every {
            0 => DEFAULT_CHECKPOINT_EVERY,
            n => n,
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(query::subscribe::run(
            self.engine()?.reader().clone(),
            self.engine()?.committed_watch(),
            request.from_sequence,
            filter,
            u64::from(every),
            tx,
        ));
        let stream = ReceiverStream::new(rx).map(|delivery| match delivery {
            Ok(Delivery::Event(record)) => Ok(proto::SubscribeResponse {
                item: Some(Item::Event(records::ledger_event(&record))),
            }),
            Ok(Delivery::Checkpoint(sequence)) => Ok(proto::SubscribeResponse {
                item: Some(Item::Checkpoint(proto::Checkpoint { sequence })),
            }),
            Err(error) => Err(to_status(error.into())),
        });
        Ok(Response::new(Box::pin(until_stop(self.slot.clone(), stream))))
    }

    /// The chain hash at the head, or at one of the caller's tenant's records. The head is
    /// the log's, whoever wrote it: its hash commits to every record, the caller's among
    /// them, and shows nothing of the others; its time is not shown, since the record there
    /// may be another tenant's. A record of another tenant is NOT_FOUND exactly like one
    /// beyond the head.
    async fn get_digest(&self, request: Request<proto::GetDigestRequest>) -> Result<Response<proto::Digest>, Status> {
        let caller = Caller::of(&request)?;
        let head = self.engine()?.reader().head();
        let sequence = request.get_ref().sequence;
        if sequence == 0 {
            return Ok(Response::new(proto::Digest {
                sequence: head.seq,
                timestamp_us: 0,
                hash: crate::hex::hex(&head.hash),
                head_sequence: head.seq,
            }));
        }
        let missing = || {
            not_found(
                "SEQUENCE_NOT_FOUND",
                format!("no record {sequence} in tenant {:?}", caller.tenant),
            )
        };
        if sequence > head.seq {
            return Err(missing());
        }
        let reader = self.engine()?.reader().clone();
        let record = tokio::task::spawn_blocking(move || crate::log::read_one(&reader, sequence))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| to_status(e.into()))?
            .filter(|record| record.envelope.tenant == caller.tenant)
            .ok_or_else(missing)?;
        Ok(Response::new(proto::Digest {
            sequence,
            timestamp_us: record.ts_us,
            hash: crate::hex::hex(&record.hash),
            head_sequence: head.seq,
        }))
    }

    async fn list_by_correlation(
        &self,
        request: Request<proto::ListByCorrelationRequest>,
    ) -> Result<Response<proto::AuditEntries>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let size = page_size(r.page_size)?;
        let after = match r.page_token.as_str() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| invalid("page_token", "is not a token this server issued"))?,
        };
        self.consistent().await?;
        let engine = self.engine()?;
        let rows = engine
            .indexed()
            .by_correlation(&caller.tenant, &r.correlation_id, after, size + 1)
            .map_err(indexed)?;
        Ok(Response::new(entries(rows, size, |last| last.seq.to_string())))
    }

    async fn list_by_actor(
        &self,
        request: Request<proto::ListByActorRequest>,
    ) -> Result<Response<proto::AuditEntries>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let size = page_size(r.page_size)?;
        let after = match r.page_token.split_once(':') {
            None if r.page_token.is_empty() => None,
            Some((ts, seq)) => Some((
                ts.parse::<u64>().map_err(|_| invalid("page_token", "malformed"))?,
                seq.parse().map_err(|_| invalid("page_token", "malformed"))?,
            )),
            None => return Err(invalid("page_token", "is not a token this server issued")),
        };
        let to = if r.to_time_us == 0 { u64::MAX } else { r.to_time_us };
        self.consistent().await?;
        let engine = self.engine()?;
        let rows = engine
            .indexed()
            .by_actor(
                &caller.tenant,
                &r.actor,
                r.from_time_us,
                to,
                after.map_or(0, |(_, seq)| seq),
                size + 1,
            )
            .map_err(indexed)?;
        Ok(Response::new(entries(rows, size, |last| {
            format!("{}:{}", last.ts_us, last.seq)
        })))
    }

    async fn get_by_idempotency_key(
        &self,
        request: Request<proto::GetByIdempotencyKeyRequest>,
    ) -> Result<Response<proto::AuditEntries>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        self.consistent().await?;
        let engine = self.engine()?;
        let rows = engine
            .indexed()
            .by_idempotency_key(&caller.tenant, &r.idempotency_scope, &r.idempotency_key)
            .map_err(indexed)?;
        if rows.is_empty() {
            return Err(not_found(
                "IDEMPOTENCY_KEY_NOT_FOUND",
                format!(
                    "no command with key {} in scope {}",
                    quote(&r.idempotency_key),
                    quote(&r.idempotency_scope)
                ),
            ));
        }
        Ok(Response::new(entries(rows, usize::MAX, |_| String::new())))
    }

    async fn get_account_as_of(
        &self,
        request: Request<proto::GetAccountAsOfRequest>,
    ) -> Result<Response<proto::AccountAsOf>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.get_ref();
        let head = self.engine()?.committed_seq();
        let sequence = match (r.sequence, r.time_us) {
            (0, 0) | (1.., 1..) => return Err(invalid("sequence", "give exactly one of sequence and time_us")),
            (seq, 0) if seq > head => {
                return Err(invalid("sequence", format!("is beyond the head of the log ({head})")))
            }
            (seq, 0) => seq,
            (_, time) => self
                .engine()?
                .reader()
                .seq_at_time(time)
                .map_err(|e| to_status(e.into()))?,
        };
        self.consistent().await?;
        let engine = self.engine()?;
        let as_of = engine
            .indexed()
            .account_at(&caller.tenant, &r.account_id, sequence)
            .map_err(|e| match e {
                query::indexed::AccountAtError::Indexed(e) => indexed(e),
                query::indexed::AccountAtError::AsOf(e) => storage(e.to_string()),
            })?
            .ok_or_else(|| {
                not_found(
                    "ACCOUNT_NOT_FOUND",
                    format!("account {} was not open at sequence {sequence}", quote(&r.account_id)),
                )
            })?;
        Ok(Response::new(proto::AccountAsOf {
            sequence,
            account: Some(convert::account(&as_of.account)),
            active_holds: as_of.active_holds.iter().map(convert::hold).collect(),
        }))
    }
}

/// How long a stream's stop notice waits for the client to take what it has not read yet.
const STOP_NOTICE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A stream that ends with SHUTTING_DOWN when the server begins to stop, so that an open
/// subscription or replay never holds a stopping server up.
fn until_stop<T: Send + 'static>(
    slot: EngineSlot,
    mut stream: impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static,
) -> ReceiverStream<Result<T, Status>> {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let stopping = slot.stopping();
        tokio::pin!(stopping);
        loop {
            let item = tokio::select! {
                _ = &mut stopping => break,
                item = stream.next() => item,
            };
            let Some(item) = item else { return };
            tokio::select! {
                _ = &mut stopping => break,
                sent = tx.send(item) => if sent.is_err() { return },
            }
        }
        // The notice waits behind what the client has not read yet (the channel holds one
        // item), but a client that reads nothing is not waited for past STOP_NOTICE_WAIT.
        let _ = tokio::time::timeout(STOP_NOTICE_WAIT, tx.send(Err(super::status::shutting_down()))).await;
    });
    ReceiverStream::new(rx)
}

//! Metrics for Prometheus: installs the recorder behind the `metrics` facade, serves
//! `GET /metrics` over HTTP/1.1, and samples the gauges (inbox depth, log head and bytes,
//! projection lag) at each scrape, so they are as fresh as the scrape and cost nothing in
//! between. The counters and histograms are recorded where things happen (see
//! `engine::metrics`).

use crate::api::EngineSlot;
use crate::engine::{metrics as engine_metrics, Status};
use crate::projection::ProjectionName;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 1 while the engine serves, 0 while recovering, refused, failed or stopped.
pub const UP: &str = "tally_up";
/// Jobs and reads waiting in the inbox.
pub const INBOX_DEPTH: &str = "tally_inbox_depth";
/// Sequence number of the last committed record.
pub const LOG_HEAD_SEQUENCE: &str = "tally_log_head_sequence";
/// Bytes of committed frames in the log.
pub const LOG_BYTES: &str = "tally_log_bytes";
/// Records a projection still has to apply, by `projection`.
pub const PROJECTION_LAG: &str = "tally_projection_lag_records";
/// Records after the newest write-state snapshot: what a restart after a crash folds.
pub const SNAPSHOT_LAG: &str = "tally_snapshot_lag_records";

/// Largest request head the endpoint reads: a scrape's GET line and headers are far below.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// A client that sends no complete request head within this is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Histogram buckets are drained into the rendered state at least this often, so memory
/// stays bounded when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Group-commit sizes: 1 to 8192 commands, by powers of two.
const COUNT_BUCKETS: [f64; 14] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];
/// Group-commit latencies: 50 µs to 2.5 s.
const SECONDS_BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Installs the global recorder. Call once, before the engine starts (the sequencer
/// registers its handles at start).
pub fn install() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_commands".into()), &COUNT_BUCKETS))
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_records".into()), &COUNT_BUCKETS))
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    engine_metrics::describe();
    crate::api::admission::describe();
    metrics::describe_gauge!(
        UP,
        "1 while the ledger serves; 0 while recovering, refused, failed or stopped"
    );
    metrics::describe_gauge!(INBOX_DEPTH, "Requests waiting in the sequencer's inbox");
    metrics::describe_gauge!(LOG_HEAD_SEQUENCE, "Sequence number of the last committed record");
    metrics::describe_gauge!(LOG_BYTES, metrics::Unit::Bytes, "Bytes of committed frames in the log");
    metrics::describe_gauge!(PROJECTION_LAG, "Records a projection has yet to apply");
    metrics::describe_gauge!(
        SNAPSHOT_LAG,
        "Records after the newest write-state snapshot (what a restart after a crash folds)"
    );
    Ok(handle)
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    slot: EngineSlot,
    shutdown: impl Future<Output = ()> + Send,
) {
    let upkeep = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                ticker.tick().await;
                handle.run_upkeep();
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (handle, slot) = (handle.clone(), slot.clone());
                    tokio::spawn(async move {
                        if let Err(error) = answer(stream, &handle, &slot).await {
                            tracing::debug!(%error, "metrics request failed");
                        }
                    });
                }
                Err(error) => tracing::warn!(%error, "metrics endpoint cannot accept"),
            },
        }
    }
    upkeep.abort();
}

/// Reads one request head and answers it; the connection closes after the answer.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle, slot: &EngineSlot) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut buffer = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    match read {
        Err(_timed_out) => return Ok(()),
        Ok(result) => result?,
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, content_type, body) = match (method, path) {
        (b"GET", b"/metrics") => {
            sample(slot);
            handle.run_upkeep();
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        (b"GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_string(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Sets the gauges from the engine as it is now.
pub fn sample(slot: &EngineSlot) {
    let Some(engine) = slot.get() else {
        metrics::gauge!(UP).set(0.0);
        return;
    };
    metrics::gauge!(UP).set(if engine.status() == Status::Serving { 1.0 } else { 0.0 });
    metrics::gauge!(INBOX_DEPTH).set(engine.inbox_depth() as f64);
    let head = engine.committed_seq();
    metrics::gauge!(LOG_HEAD_SEQUENCE).set(head as f64);
    metrics::gauge!(LOG_BYTES).set(engine.log_bytes() as f64);
    metrics::gauge!(SNAPSHOT_LAG).set(head.saturating_sub(engine.snapshot_seq()) as f64);
    for name in ProjectionName::ALL {
        if let Ok(checkpoint) = engine.indexes().checkpoint(name) {
            metrics::gauge!(PROJECTION_LAG, "projection" => name.name()).set(head.saturating_sub(checkpoint) as f64);
        }
    }
}

//! Protects a stop that finishes: on SIGTERM a running `tally serve` ends an open Subscribe
//! stream with UNAVAILABLE (reason SHUTTING_DOWN) instead of waiting for the client to go
//! away, writes its write-state snapshot, and exits 0 — once seen staying up as long as a
//! subscriber stayed connected. A grace that is not a number in range is a usage error.

mod support;

use std::time::{Duration, Instant};
use tally::api::proto::{audit_client::AuditClient, SubscribeRequest};

/// Longest this test waits for the server to exit after SIGTERM: far above the few
/// milliseconds a stop takes, below the server's own grace (10 s by default) plus margin.
const EXIT_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_streams_writes_the_snapshot_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, address) = support::serve(dir.path(), &[]);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = support::token("t1", "auditor-1", &["auditor"]);
    let mut audit = AuditClient::new(channel.clone());
    let mut stream = audit
        .subscribe(support::with_token(SubscribeRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    // An open account gives the stream something committed, and the snapshot a head.
    let mut ledger = tally::api::proto::ledger_client::LedgerClient::new(channel);
    let service = support::token("t1", "pos-1", &["service"]);
    ledger
        .open_account(support::with_token(
            tally::api::proto::OpenAccountRequest {
                account_id: "m1".into(),
                idempotency_key: "open-m1".into(),
                ..Default::default()
            },
            &service,
        ))
        .await
        .unwrap();

    // SAFETY: kill sends a signal to the child this test spawned; it touches no memory.
    assert_eq!(unsafe { libc::kill(server.0.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(
        String::from_utf8_lossy(ended.details()).contains("SHUTTING_DOWN"),
        "{ended:?}"
    );
    drop(stream);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < EXIT_WAIT, "the server is still up after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    assert!(
        tally::engine::snapshot::path(dir.path()).exists(),
        "the stop wrote the write-state snapshot"
    );
}

#[test]
fn a_grace_out_of_range_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let out = support::tally(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--shutdown-grace-seconds",
        "0",
        "--data-dir",
        data,
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.shutdown_grace_seconds"));
}

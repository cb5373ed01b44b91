//! Protects the per-tenant rate limits on mutating calls: a tenant over its rate is refused
//! with RESOURCE_EXHAUSTED / TENANT_RATE_LIMITED and told when to retry; other tenants and
//! queries are not held back; a refused call records nothing; the bucket refills with
//! (injected) time; a batch larger than the burst passes when the bucket is full.

mod support;

use support::{request, TestServer};
use tally::api::limits::{RateLimit, TenantLimiter};
use tally::api::proto::*;
use tonic::Code;
use tonic_types::StatusExt;

fn open(account: &str) -> OpenAccountRequest {
    OpenAccountRequest {
        account_id: account.into(),
        idempotency_key: format!("open-{account}"),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_tenant_over_its_rate_is_told_when_to_retry() {
    let mut server = TestServer::start_configured(|api, engine| {
        let limit = RateLimit {
            per_second: 10,
            burst: 5,
        };
        api.limiter = Some(TenantLimiter::new(limit, engine.clock.clone()));
    })
    .await;
    let mut client = server.client().await;
    for n in 0..5 {
        client
            .open_account(request(open(&format!("a{n}")), "t1", "svc"))
            .await
            .unwrap();
    }
    let head = server.engine.handle().committed_seq();
    let refused = client.open_account(request(open("a5"), "t1", "svc")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let info = refused.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "TENANT_RATE_LIMITED");
    assert_eq!(info.metadata["retry_after_ms"], "100", "one command at 10 a second");
    let retry = refused.get_details_retry_info().expect("retry info");
    assert_eq!(retry.retry_delay, Some(std::time::Duration::from_millis(100)));
    assert_eq!(
        server.engine.handle().committed_seq(),
        head,
        "a refused call records nothing"
    );
    // Other tenants and queries go through.
    client.open_account(request(open("b0"), "t2", "svc")).await.unwrap();
    let account = GetAccountRequest {
        account_id: "a0".into(),
    };
    client.get_account(request(account, "t1", "svc")).await.unwrap();
    // The bucket refills with time.
    server.engine.clock.advance(99_000);
    assert!(client.open_account(request(open("a5"), "t1", "svc")).await.is_err());
    server.engine.clock.advance(1_000);
    client.open_account(request(open("a5"), "t1", "svc")).await.unwrap();
    // A batch larger than the burst passes once the bucket is full, and empties it.
    server.engine.clock.advance(1_000_000);
    let commands = (0..20)
        .map(|n| BatchCommand {
            command: Some(batch_command::Command::OpenAccount(open(&format!("c{n}")))),
        })
        .collect();
    let batch = client
        .submit_batch(request(SubmitBatchRequest { commands }, "t1", "svc"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.results.len(), 20);
    assert!(client.open_account(request(open("a6"), "t1", "svc")).await.is_err());
    server.stop().await;
}

/// Every RPC that changes something is limited at the door, from the one method table, so no
/// handler can forget it (the Deliveries RPCs once did); no read ever is. Each method gets a
/// tenant of its own with a bucket of one: its second call must be refused as over the rate
/// (a read's never), whatever the first call's fate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutating_rpc_is_limited_at_the_door_and_no_read_is() {
    use tally::api::auth::{Charge, METHODS};
    let mut server = TestServer::start_configured(|api, engine| {
        let limit = RateLimit {
            per_second: 1,
            burst: 1,
        };
        api.limiter = Some(TenantLimiter::new(limit, engine.clock.clone()));
    })
    .await;
    let channel = server.channel().await;
    let mut limited = 0;
    for (n, (path, _, charge)) in METHODS.iter().enumerate() {
        if path.ends_with("/Replay") || path.ends_with("/Subscribe") {
            continue; // streams: reads
        }
        let tenant = format!("rate-{n}");
        let token = support::token(&tenant, "svc", &support::ALL_ROLES);
        let headers = vec![("authorization", format!("Bearer {token}"))];
        let mut last = Ok(());
        for _ in 0..2 {
            last = support::raw_call(&channel, path, false, Vec::new(), &headers).await;
        }
        let rate_limited = matches!(&last, Err(status)
            if status.get_details_error_info().is_some_and(|i| i.reason == "TENANT_RATE_LIMITED"));
        match charge {
            Charge::One => {
                assert!(rate_limited, "{path}: the second call in a second: {last:?}");
                limited += 1;
            }
            Charge::Free => assert!(!rate_limited, "{path}: {last:?}"),
            // Charged by their handlers per item (an empty batch here): not this test's.
            Charge::PerItem => {}
        }
    }
    assert!(limited >= 28, "{limited} mutating RPCs");
    server.stop().await;
}

//! Protects what a follower in trouble looks like from outside. The projector and the
//! snapshotter read the committed log on threads of their own; when one cannot (the disk fails
//! its reads, or a bug panics it):
//! - the engine says so (`EngineHandle::followers`) and health answers NOT_SERVING, over
//!   gRPC too;
//! - a query that needs the projections is answered UNAVAILABLE at once, with the reason,
//!   instead of waiting out its timeout;
//! - a panicked follower is started again from what is durable, and once the disk reads
//!   again everything folds, health is SERVING and the queries see every command;
//! - commands are still accepted meanwhile: the write side does not depend on the followers.
//!
//! Faults come from a simulated disk (`SimDisk::fail_reads`, `SimDisk::panic_reads`); every
//! wait is for an event (a watch), bounded only to turn a hang into a failure.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::{meta, TestEngine};
use tally::domain::{AwardRequest, Command};
use tally::engine::{EngineConfig, EngineError, EngineHandle, LogPlace};
use tally::log::{Durability, SimDisk, Storage};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const BOUND: Duration = Duration::from_secs(30);

fn engine_on(disk: &SimDisk) -> TestEngine {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        durability: Durability::Sync,
        log_place: LogPlace::Storage(Arc::new(disk.clone()) as Arc<dyn Storage>),
        ..EngineConfig::new(dir.path())
    };
    TestEngine::start_with(dir, config)
}

fn award(n: u64) -> Command {
    Command::Award {
        account: "p1".into(),
        source: AwardRequest::Promotion {
            points: n,
            promotion_id: "promo".into(),
            external_reward_id: format!("r{n}"),
        },
    }
}

/// Waits until the followers' trouble satisfies `what`, and returns it.
async fn followers_until(handle: &EngineHandle, what: impl Fn(&Option<String>) -> bool) -> Option<String> {
    let mut watch = handle.followers().watch();
    let seen = tokio::time::timeout(BOUND, async { watch.wait_for(|t| what(t)).await.map(|t| t.clone()) }).await;
    let Ok(seen) = seen else {
        panic!(
            "the followers did not reach the expected health in time: {:?}",
            handle.followers().summary()
        );
    };
    seen.expect("the engine is running")
}

/// Reads the health service's stream of statuses until it reports `status`.
async fn health_becomes(changes: &mut tonic::Streaming<HealthCheckResponse>, status: ServingStatus) {
    let until = async {
        while let Some(change) = changes.message().await.unwrap() {
            if change.status() == status {
                return;
            }
        }
        panic!("the health stream ended before {status:?}");
    };
    tokio::time::timeout(BOUND, until)
        .await
        .unwrap_or_else(|_| panic!("health did not become {status:?} in time"));
}

async fn posted(handle: &EngineHandle) -> u64 {
    handle.wait_for_projections().await.unwrap();
    let head = handle.reader().head().seq;
    let as_of = handle.indexed().account_at("t1", "p1", head);
    as_of.unwrap().unwrap().account.posted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_cannot_read_the_log_turns_health_not_serving_until_it_can() {
    let disk = SimDisk::new(1, "/sim/log");
    let engine = engine_on(&disk);
    let handle = engine.handle();
    handle
        .submit(meta("open"), Command::OpenAccount { account: "p1".into() })
        .await
        .unwrap();
    assert_eq!(posted(&handle).await, 0);
    assert!(handle.serving());

    disk.fail_reads(u32::MAX);
    handle.submit(meta("a1"), award(10)).await.expect("commands go on");
    let trouble = followers_until(&handle, |t| t.is_some()).await.unwrap();
    assert!(trouble.contains("simulated disk: read failed"), "{trouble}");
    assert!(!handle.serving(), "health follows the followers");
    let started = std::time::Instant::now();
    match handle.wait_for_projections().await {
        Err(EngineError::Unavailable(reason)) => assert!(reason.contains("projector"), "{reason}"),
        other => panic!("a query that needs the projections: {other:?}"),
    }
    assert!(
        started.elapsed() < tally::engine::QUERY_CONSISTENCY_WAIT,
        "answered at once, not after the query's timeout"
    );

    disk.fail_reads(0);
    followers_until(&handle, |t| t.is_none()).await;
    assert!(handle.serving());
    assert_eq!(posted(&handle).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicked_follower_is_started_again_and_health_says_so_meanwhile() {
    let disk = SimDisk::new(2, "/sim/log");
    let engine = engine_on(&disk);
    let handle = engine.handle();
    let mut server = support::TestServer::start_in_front_of(engine, |_, _| {}).await;
    let mut health = HealthClient::new(server.channel().await);
    // The health service's own stream of changes: each status as health reports it.
    let mut changes = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    handle
        .submit(meta("open"), Command::OpenAccount { account: "p1".into() })
        .await
        .unwrap();
    assert_eq!(posted(&handle).await, 0);
    health_becomes(&mut changes, ServingStatus::Serving).await;

    // Every read panics: both followers die on the next commit, and every start again
    // dies too, until the fault is gone.
    disk.panic_reads(u32::MAX);
    handle.submit(meta("a1"), award(7)).await.expect("commands go on");
    let trouble = followers_until(&handle, |t| t.as_deref().is_some_and(|t| t.contains("panic"))).await;
    assert!(trouble.unwrap().contains("read panicked"));
    health_becomes(&mut changes, ServingStatus::NotServing).await;
    handle.submit(meta("a2"), award(5)).await.expect("commands go on");

    disk.panic_reads(0);
    followers_until(&handle, |t| t.is_none()).await;
    assert_eq!(
        posted(&handle).await,
        12,
        "the restarted projector folded every command"
    );
    assert!(handle.serving());
    health_becomes(&mut changes, ServingStatus::Serving).await;
    drop(changes); // an open stream would hold the stop for its grace
    server.stop().await;
}

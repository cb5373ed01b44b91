//! Protects rebuilds: a projection folded again from the log (from the start, or from a
//! projection snapshot) has the live projection's digest after random workloads, after
//! restarts, and while the server keeps writing; a deliberately corrupted projection is
//! caught by `tally rebuild --verify` and repaired by `tally rebuild`; a lost projection
//! store starts again from its snapshot files; rebuilds run as operations with state,
//! progress and history, over gRPC too, and history written before operations had owners
//! still loads, as the server's.

mod support;

use std::time::Duration;
use support::{random_workload, request, tally, Rng, TestEngine, TestServer};
use tally::engine::operations::Viewer;
use tally::engine::OperationState;
use tally::projection::ProjectionName;

const WAIT: Duration = Duration::from_secs(60);

fn finished(engine: &TestEngine, op: tally::engine::OperationRecord) -> tally::engine::OperationRecord {
    engine
        .handle()
        .operations()
        .wait(&op.id, WAIT)
        .expect("the operation exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilt_projections_match_the_live_ones() {
    let mut engine = TestEngine::start();
    random_workload(&engine, &mut Rng(21), 500).await;
    let before = engine.digests().await;
    let op = finished(&engine, engine.handle().start_rebuild(None, false, false));
    assert_eq!(op.state, OperationState::Completed, "{op:?}");
    assert_eq!(
        op.result.matches("matches the live projection").count(),
        ProjectionName::ALL.len(),
        "{}",
        op.result
    );
    assert_eq!(
        engine.digests().await,
        before,
        "the swapped-in projections are the same"
    );
    // After a restart and more writes, a verifying rebuild still agrees.
    engine.restart();
    random_workload(&engine, &mut Rng(22), 200).await;
    let op = finished(&engine, engine.handle().start_rebuild(None, true, false));
    assert_eq!(op.state, OperationState::Completed, "{op:?}");
    assert_eq!(op.total, op.done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_writes_go_on_catches_up_before_the_swap() {
    let engine = TestEngine::start();
    random_workload(&engine, &mut Rng(31), 300).await;
    let op = engine
        .handle()
        .start_rebuild(Some(ProjectionName::History), false, false);
    random_workload(&engine, &mut Rng(32), 150).await;
    let op = finished(&engine, op);
    assert_eq!(op.state, OperationState::Completed, "{op:?}");
    assert!(op.result.contains("matches the live projection"), "{}", op.result);
    // The swapped-in projection keeps following the log.
    random_workload(&engine, &mut Rng(33), 50).await;
    let op = finished(
        &engine,
        engine
            .handle()
            .start_rebuild(Some(ProjectionName::History), true, false),
    );
    assert_eq!(op.state, OperationState::Completed, "{op:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_can_start_from_a_projection_snapshot() {
    let mut engine = TestEngine::start();
    random_workload(&engine, &mut Rng(41), 300).await;
    engine.handle().wait_for_projections().await.unwrap();
    let snapshot = finished(&engine, engine.handle().start_projection_snapshot());
    assert_eq!(snapshot.state, OperationState::Completed, "{snapshot:?}");
    let at = engine.handle().committed_seq();
    random_workload(&engine, &mut Rng(42), 100).await;
    let op = finished(&engine, engine.handle().start_rebuild(None, false, true));
    assert_eq!(op.state, OperationState::Completed, "{op:?}");
    assert!(
        op.result.contains(&format!("from the snapshot at {at}")),
        "{}",
        op.result
    );
    assert!(!op.result.contains("DIFFERS"), "{}", op.result);
    // A lost projection store starts again from the snapshot files, then catches up.
    let before = engine.digests().await;
    engine.engine.take().unwrap().shutdown();
    std::fs::remove_dir_all(engine.dir.path().join("projections")).unwrap();
    engine.engine = Some(tally::engine::Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
    let adopted = &engine.engine.as_ref().unwrap().report().projections_from_snapshot;
    assert_eq!(
        adopted.len(),
        ProjectionName::ALL.len(),
        "every projection started from its snapshot: {adopted:?}"
    );
    assert!(adopted.iter().all(|(_, seq)| *seq == at));
    assert_eq!(engine.digests().await, before);
}

/// The live tree of a projection in a stopped server's store, through sled itself.
fn live_tree(db: &sled::Db, name: &str) -> sled::Tree {
    let generation = db
        .open_tree("generations")
        .unwrap()
        .get(name)
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()));
    db.open_tree(format!("{name}.{generation}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_projection_is_caught_by_verify_and_repaired_by_rebuild() {
    let mut engine = TestEngine::start();
    random_workload(&engine, &mut Rng(51), 300).await;
    engine.handle().wait_for_projections().await.unwrap();
    engine.engine.take().unwrap().shutdown();
    let data = engine.dir.path().to_str().unwrap().to_string();
    assert!(
        tally(&["rebuild", &data, "--verify"]).status.success(),
        "a sound store verifies"
    );
    let (corrupted_key, corrupted_len);
    {
        let db = support::open_sled_store(&engine.dir.path().join("projections"));
        let history = live_tree(&db, "history");
        let (key, value) = history.iter().next().unwrap().unwrap();
        assert_eq!(key.len(), 10, "a run of the history index");
        corrupted_key = key.escape_ascii().to_string();
        corrupted_len = value.len();
        let mut damaged = value.to_vec();
        damaged[value.len() / 2] ^= 0x10;
        history.insert(key, damaged).unwrap();
        db.flush().unwrap();
    }
    let caught = tally(&["rebuild", &data, "--verify", "--projection", "history"]);
    let stdout = String::from_utf8_lossy(&caught.stdout);
    assert_eq!(caught.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("DIFFERS from the live projection") && stdout.contains("verified only"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "first differing row \"{corrupted_key}\": left {corrupted_len} bytes"
        )),
        "the mismatch names the row that does not decode and its live bytes: {stdout}"
    );
    let repaired = tally(&["rebuild", &data, "--projection", "history"]);
    assert!(repaired.status.success() && String::from_utf8_lossy(&repaired.stdout).contains("swapped in"));
    let after = tally(&["rebuild", &data, "--verify"]);
    assert!(after.status.success(), "{}", String::from_utf8_lossy(&after.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_over_grpc_have_state_progress_and_history() {
    use tally::api::proto::{operations_client::OperationsClient, *};
    let mut server = TestServer::start().await;
    random_workload(&server.engine, &mut Rng(61), 200).await;
    let mut client = OperationsClient::new(server.channel().await);
    let op = client
        .start_rebuild(request(
            StartRebuildRequest {
                projection: "history".into(),
                verify_only: true,
                ..Default::default()
            },
            "t1",
            "admin",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op.kind, "rebuild");
    server.engine.handle().operations().wait(&op.id, WAIT);
    let done = client
        .get_operation(request(GetOperationRequest { id: op.id.clone() }, "t1", "admin"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state(), OperationState::Completed);
    assert!(done.ended_at_us >= done.started_at_us && done.result.contains("history"));
    let export = StartReplayToFileRequest {
        replay: Some(ReplayRequest::default()),
        file_name: "all.jsonl".into(),
    };
    let export = client
        .start_replay_to_file(request(export, "t1", "admin"))
        .await
        .unwrap()
        .into_inner();
    let export = server.engine.handle().operations().wait(&export.id, WAIT).unwrap();
    assert_eq!(export.state, tally::engine::OperationState::Completed, "{export:?}");
    let lines = std::fs::read_to_string(server.engine.dir.path().join("exports/t1/all.jsonl")).unwrap();
    assert_eq!(
        export.result,
        format!("{} events written to exports/t1/all.jsonl", lines.lines().count())
    );
    assert!(
        lines.lines().all(|l| l.contains("\"tenant\":\"t1\"")),
        "a replay to file is confined to the caller's tenant"
    );
    let listed = client
        .list_operations(request(ListOperationsRequest {}, "t1", "admin"))
        .await
        .unwrap()
        .into_inner()
        .operations;
    assert_eq!(
        listed.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        [export.id.as_str(), op.id.as_str()],
        "newest first"
    );
    let bad_name = StartReplayToFileRequest {
        replay: None,
        file_name: "../escape".into(),
    };
    assert_eq!(
        client
            .start_replay_to_file(request(bad_name, "t1", "admin"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    let unknown = client
        .cancel_operation(request(CancelOperationRequest { id: "nope".into() }, "t1", "admin"))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let bad_projection = StartRebuildRequest {
        projection: "balances".into(),
        ..Default::default()
    };
    assert_eq!(
        client
            .start_rebuild(request(bad_projection, "t1", "admin"))
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    // Finished operations are history that survives a restart.
    server.stop().await;
    server.engine.restart();
    let kept = server.engine.handle().operations().list(Viewer::Server);
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|o| o.state == tally::engine::OperationState::Completed));
}

/// An operation as the history kept it before operations had owners: the same fields in
/// the same order, without `tenant`.
#[derive(serde::Serialize)]
struct OwnerlessRecord {
    id: String,
    kind: String,
    description: String,
    state: OperationState,
    done: u64,
    total: u64,
    started_at_us: u64,
    ended_at_us: u64,
    result: String,
    error: String,
}

#[test]
fn operations_kept_before_they_had_owners_load_as_the_servers() {
    use tally::engine::{ManualClock, Operations};
    let db = sled::Config::new().temporary(true).open().unwrap();
    let tree = db.open_tree("operations").unwrap();
    let old = OwnerlessRecord {
        id: "0190c0de-0000-7000-8000-000000000001".into(),
        kind: "replay_to_file".into(),
        description: "replay to /srv/tally/exports/a.jsonl".into(),
        state: OperationState::Completed,
        done: 100,
        total: 100,
        started_at_us: support::T0,
        ended_at_us: support::T0 + 5,
        result: "3 events written".into(),
        error: String::new(),
    };
    tree.insert(old.id.as_bytes(), rmp_serde::to_vec(&old).unwrap())
        .unwrap();
    let operations = Operations::load(tree, std::sync::Arc::new(ManualClock::new(support::T0)));
    let loaded = operations
        .get(&old.id, Viewer::Server)
        .expect("an old record still loads");
    assert_eq!(
        (
            loaded.kind.as_str(),
            loaded.state,
            loaded.result.as_str(),
            loaded.tenant
        ),
        ("replay_to_file", OperationState::Completed, "3 events written", None)
    );
    for tenant in ["t1", ""] {
        assert_eq!(operations.get(&old.id, Viewer::Tenant(tenant)), None, "{tenant:?}");
        assert!(operations.list(Viewer::Tenant(tenant)).is_empty());
        assert_eq!(operations.cancel(&old.id, Viewer::Tenant(tenant)), None);
    }
    assert_eq!(operations.list(Viewer::Server).len(), 1);
}

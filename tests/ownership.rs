//! Protects "one owner per data directory": a second engine or `tally serve` on a directory
//! that is owned is refused at once, naming the holder's process id; `tally rebuild` beside
//! an owner refuses and moves nothing (it once moved a live server's store aside and then
//! compared its rebuild with itself); the read-only tools (`verify`, `replay`, `audit`) work
//! beside an owner and leave every file as it was; and the lock dies with its holder, even
//! by `kill -9`, so a crash never leaves a directory locked.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use support::{random_workload, serve, tally, Rng, TestEngine};
use tally::engine::{Engine, EngineError, OwnerError};

/// Every file below `dir` with its length and content hash (the `LOCK` file aside, whose
/// content is the holder's id).
fn files(dir: &Path) -> BTreeMap<String, (u64, [u8; 32])> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, (bytes.len() as u64, *blake3::hash(&bytes).as_bytes()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_is_refused_naming_the_holder_until_the_first_stops() {
    let mut engine = TestEngine::start();
    random_workload(&engine, &mut Rng(3), 40).await;
    match Engine::start(engine.config.clone(), engine.clock.clone()) {
        Err(EngineError::Owner(OwnerError::Held { holder, .. })) => {
            assert_eq!(holder, std::process::id().to_string())
        }
        Err(other) => panic!("expected the directory to be held, got {other}"),
        Ok(_) => panic!("two engines own one data directory"),
    }
    let before = engine.digests().await;
    engine.restart();
    assert_eq!(engine.digests().await, before, "the owner lost nothing");
}

/// A directory with a log and projections, owned by this process (its lock held, nothing
/// running, so that no file changes but by the tool under test), and the digests it holds.
async fn owned_quiet_directory(seed: u64) -> (TestEngine, tally::engine::DataDirLock, Vec<[u8; 32]>) {
    let mut engine = TestEngine::start();
    random_workload(&engine, &mut Rng(seed), 60).await;
    let before = engine.digests().await;
    engine.engine.take().unwrap().shutdown();
    let lock = tally::engine::DataDirLock::acquire(engine.dir.path()).unwrap();
    (engine, lock, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_exits_at_once_and_rebuild_beside_an_owner_moves_nothing() {
    let (mut engine, lock, before) = owned_quiet_directory(5).await;
    let data = engine.dir.path().to_str().unwrap().to_string();
    let pid = std::process::id().to_string();
    let listing = files(engine.dir.path());

    let server = tally(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--data-dir",
        &data,
    ]);
    let stderr = String::from_utf8_lossy(&server.stderr);
    assert_eq!(server.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains(&format!("in use by process {pid}")), "{stderr}");
    assert!(
        !String::from_utf8_lossy(&server.stdout).contains("listening"),
        "a second owner never opens its port"
    );

    let rebuild = tally(&["rebuild", &data, "--verify"]);
    let stderr = String::from_utf8_lossy(&rebuild.stderr);
    assert_eq!(rebuild.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("in use by process {pid}")), "{stderr}");
    assert_eq!(
        files(engine.dir.path()),
        listing,
        "a refused server and a refused rebuild moved and wrote nothing"
    );
    drop(lock);
    engine.engine = Some(Engine::start(engine.config.clone(), engine.clock.clone()).unwrap());
    assert_eq!(
        engine.digests().await,
        before,
        "the owner's projections are as they were"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_tools_work_beside_the_owner_and_change_nothing() {
    let (engine, _lock, _) = owned_quiet_directory(7).await;
    let data = engine.dir.path().to_str().unwrap().to_string();
    let listing = files(engine.dir.path());
    for args in [
        vec!["verify", &data],
        vec!["replay", &data],
        vec!["audit", &data, "--tenant", "t1", "history", "p1"],
    ] {
        let out = tally(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(files(engine.dir.path()), listing, "read-only tools changed nothing");
}

#[test]
fn the_lock_dies_with_a_killed_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _) = serve(dir.path(), &[]);
    let held = tally::engine::DataDirLock::acquire(dir.path());
    match held {
        Err(OwnerError::Held { holder, .. }) => assert_eq!(holder, server.0.id().to_string()),
        other => panic!("the server holds its directory: {other:?}"),
    }
    server.0.kill().unwrap(); // SIGKILL: no chance to clean up
    server.0.wait().unwrap();
    tally::engine::DataDirLock::acquire(dir.path()).expect("a dead owner's lock is gone");
}

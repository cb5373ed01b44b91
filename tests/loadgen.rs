//! Protects `tally bench`: every workload it sends is valid (no errors against a real
//! server), the mixed workload really reserves, commits and releases, batch mode sends whole
//! batches, and what it counts as done is in the log.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;
use support::TestServer;
use tally::loadgen::{run, BenchConfig, Distribution, Mode, Workload};

fn config(address: std::net::SocketAddr, mode: Mode, workload: Workload) -> BenchConfig {
    BenchConfig {
        target: format!("http://{address}"),
        token: support::token("bench", "tally-bench", &["service"]),
        clients: 4,
        duration: Duration::from_millis(700),
        warmup: Duration::ZERO,
        mode,
        batch_size: 50,
        workload,
        accounts: 100,
        distribution: Distribution::Zipf,
        seed: 7,
        rate: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_sends_valid_commands_of_every_kind() {
    let mut server = TestServer::start().await;
    for (mode, workload) in [
        (Mode::Unary, Workload::Mixed),
        (Mode::Batch, Workload::Mixed),
        (Mode::Unary, Workload::Award),
    ] {
        let before = server.engine.handle().committed_seq();
        let report = run(config(server.address, mode, workload)).await.unwrap();
        assert!(report.errors.is_empty(), "{mode:?} {workload:?}: {:?}", report.errors);
        assert!(report.commands > 0 && report.rpcs > 0 && report.latency.len() == report.rpcs);
        if mode == Mode::Batch {
            assert_eq!(report.commands, report.rpcs * 50);
        }
        let handle = server.engine.handle();
        let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
        let mut load_commands = std::collections::BTreeSet::new();
        for record in handle.reader().iter_from(before + 1) {
            let record = record.unwrap();
            *kinds.entry(record.event.kind().name()).or_default() += 1;
            let key = &record.envelope.idempotency_key;
            if !key.starts_with("bench-open-") && !key.contains("-fund-") {
                load_commands.insert(key.clone());
            }
        }
        // Every command counted as done is in the log (reads, at most 5% of the mixed load,
        // write nothing; commands that finished after the window are in the log too).
        let written = load_commands.len() as u64;
        assert!(
            written >= report.commands * 9 / 10,
            "{mode:?} {workload:?}: {written} commands in the log, {} counted",
            report.commands
        );
        if workload == Workload::Mixed {
            for kind in ["points.awarded", "hold.reserved", "hold.committed", "hold.released"] {
                assert!(
                    kinds.get(kind).copied().unwrap_or(0) > 0,
                    "{mode:?}: no {kind} in {kinds:?}"
                );
            }
        }
    }
    server.stop().await;
}

/// The ping workload measures the round trip alone: health checks that all succeed and
/// that append nothing to the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ping_workload_checks_health_and_writes_nothing() {
    let mut server = TestServer::start().await;
    let before = server.engine.handle().committed_seq();
    let mut ping = config(server.address, Mode::Unary, Workload::Ping);
    ping.token = String::new();
    let report = run(ping.clone()).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.render(&ping).contains(" health checks/s "),
        "{}",
        report.render(&ping)
    );
    assert!(report.rpcs > 0 && report.commands == report.rpcs && report.latency.len() == report.rpcs);
    assert_eq!(
        server.engine.handle().committed_seq(),
        before,
        "a health check writes nothing"
    );
    server.stop().await;
}

/// With a rate, the clients send on a schedule: no more commands than the rate allows in
/// the measured window (one more per client for a schedule's edge), where an unpaced run
/// of the same length sends more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_run_sends_no_more_than_its_rate() {
    let mut server = TestServer::start().await;
    let mut paced = config(server.address, Mode::Unary, Workload::Award);
    paced.rate = Some(100.0);
    paced.duration = Duration::from_secs(1);
    let bound = 100 + paced.clients as u64;
    let report = run(paced.clone()).await.unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        report.commands > 0 && report.commands <= bound,
        "{} commands in 1 s at 100/s",
        report.commands
    );
    assert!(report.render(&paced).contains("paced at 100 commands/s"));
    let unpaced = run(BenchConfig { rate: None, ..paced }).await.unwrap();
    assert!(unpaced.errors.is_empty(), "{:?}", unpaced.errors);
    assert!(
        unpaced.commands > bound,
        "unpaced, the same clients sent {} commands in 1 s",
        unpaced.commands
    );
    server.stop().await;
}

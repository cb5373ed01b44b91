//! Protects what an operator sees of a running server: the Prometheus endpoint counts
//! commands by kind and outcome (the sweeper's idle pulses apart) and the ingest pipeline's
//! events, and reports the log head
//! and the dead-letter queue's depth; every command's span carries its
//! correlation id, tenant, actor and sequence number into the JSON logs; health answers
//! NOT_SERVING while recovering and when the log is refused as corrupt (calls then answer
//! UNAVAILABLE / DATA_LOSS); and the configuration file, environment and flags combine in
//! that order, with every key documented in docs/CONFIG.md.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use support::request;
use tally::api::proto::ledger_client::LedgerClient;
use tally::api::proto::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn tally() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

/// Spawns `tally serve` and reads stdout until it serves: (child, gRPC address, metrics address).
fn serve(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (Child, String, Option<String>) {
    let mut child = tally()
        .args(["serve", "--listen", "127.0.0.1:0", "--segment-mib", "1", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("TALLY_AUTH_KEYS", support::TEST_KEYS)
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tally serve starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut address = None;
    let mut metrics = None;
    loop {
        let line = lines.next().expect("tally serve ended before serving").unwrap();
        if let Some(rest) = line.strip_prefix("tally listening on ") {
            address = rest.split_whitespace().next().map(str::to_string);
        } else if let Some(rest) = line.strip_prefix("tally metrics on ") {
            metrics = Some(
                rest.trim_start_matches("http://")
                    .trim_end_matches("/metrics")
                    .to_string(),
            );
        } else if line.starts_with("tally serving") {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (child, address.expect("an address line"), metrics)
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}

/// GET over plain HTTP/1.1: (status line, body).
fn http_get(address: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: {address}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one sample line of a Prometheus text page, e.g. `tally_up` or
/// `tally_commands_total{kind="award",outcome="appended"}`; labels may come in any order.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        let wanted = metric == name && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
        wanted.then(|| value.parse().unwrap())
    })
}

fn award(account: &str, key: &str, points: u64, correlation: &str) -> AwardRequest {
    AwardRequest {
        account_id: account.into(),
        idempotency_key: key.into(),
        correlation_id: correlation.into(),
        source: Some(award_request::Source::Promotion(Promotion {
            points,
            promotion_id: "spring".into(),
            external_reward_id: key.into(),
        })),
        ..Default::default()
    }
}

async fn open_and_award(address: &str, correlation: &str) -> u64 {
    let mut client = LedgerClient::connect(format!("http://{address}")).await.unwrap();
    let open = OpenAccountRequest {
        account_id: "p1".into(),
        idempotency_key: "open-p1".into(),
        ..Default::default()
    };
    client.open_account(request(open, "t1", "staff-7")).await.unwrap();
    let mut last = 0;
    for n in 0..3 {
        let response = client
            .award(request(award("p1", &format!("a{n}"), 10, correlation), "t1", "staff-7"))
            .await
            .unwrap();
        last = response.into_inner().outcome.unwrap().sequence;
    }
    // A retry is a replay; a reserve beyond the balance is a rejection.
    client
        .award(request(award("p1", "a0", 10, correlation), "t1", "staff-7"))
        .await
        .unwrap();
    let reserve = ReserveRequest {
        account_id: "p1".into(),
        amount: 1_000_000,
        idempotency_key: "r1".into(),
        correlation_id: correlation.into(),
        ..Default::default()
    };
    let refused = client.reserve(request(reserve, "t1", "staff-7")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_commands_by_kind_and_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address, metrics) = serve(
        dir.path(),
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--ingest-max-attempts",
            "1",
            "--sweep-interval-ms",
            "5",
        ],
        &[],
    );
    let metrics = metrics.expect("the metrics endpoint is on");
    let head = open_and_award(&address, "c-1").await;
    let (status, page) = http_get(&metrics, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let count = |kind, outcome| sample(&page, "tally_commands_total", &[("kind", kind), ("outcome", outcome)]);
    assert_eq!(count("open_account", "appended"), Some(1.0), "{page}");
    assert_eq!(count("award", "appended"), Some(3.0), "{page}");
    assert_eq!(count("award", "replayed"), Some(1.0), "{page}");
    assert_eq!(count("reserve", "rejected"), Some(1.0), "{page}");
    assert_eq!(
        sample(
            &page,
            "tally_commands_rejected_total",
            &[("kind", "reserve"), ("reason", "insufficient_points")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&page, "tally_up", &[]), Some(1.0));
    assert_eq!(sample(&page, "tally_log_head_sequence", &[]), Some(head as f64));
    assert!(sample(&page, "tally_log_bytes", &[]).unwrap() > 0.0);
    assert!(sample(&page, "tally_group_commit_seconds_count", &[]).unwrap() >= 5.0);
    assert!(sample(&page, "tally_group_commit_commands_bucket", &[("le", "+Inf")]).unwrap() >= 5.0);
    assert!(sample(&page, "tally_projection_lag_records", &[("projection", "history")]).is_some());
    let snapshot_lag = sample(&page, "tally_snapshot_lag_records", &[]).expect("the snapshot's lag is shown");
    assert!((0.0..=head as f64).contains(&snapshot_lag), "{snapshot_lag}");
    assert_eq!(http_get(&metrics, "/nothing").0, "HTTP/1.1 404 Not Found");

    // The ingest pipeline: one event applied, one dead-lettered (one attempt only, so the
    // sweeper's retries cannot change the counts), one duplicate.
    let mut ingest = tally::api::proto::ingest_client::IngestClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    for (id, member) in [("x1", "p1"), ("x2", "nobody"), ("x1", "p1")] {
        let event = IngestRequest {
            source: "promo".into(),
            external_id: id.into(),
            r#type: "points.award".into(),
            payload_json: format!(r#"{{"member_id":"{member}","points":5,"promotion_id":"{id}"}}"#),
            correlation_id: String::new(),
            payload: None,
        };
        ingest.ingest(request(event, "t1", "svc")).await.unwrap();
    }
    let (_, page) = http_get(&metrics, "/metrics");
    let pipeline = |event| sample(&page, "tally_ingest_events_total", &[("event", event)]);
    assert_eq!(pipeline("received"), Some(2.0), "{page}");
    assert_eq!(pipeline("processed"), Some(1.0));
    assert_eq!(pipeline("dead_lettered"), Some(1.0));
    assert_eq!(sample(&page, "tally_dead_letter_depth", &[]), Some(1.0));
    assert_eq!(sample(&page, "tally_ingest_retrying", &[]), Some(0.0));
    // The deliveries' counters are there from the start (nothing delivered here).
    assert_eq!(
        sample(&page, "tally_deliveries_total", &[("event", "delivered")]),
        Some(0.0)
    );
    let count = |kind, outcome| sample(&page, "tally_commands_total", &[("kind", kind), ("outcome", outcome)]);
    assert_eq!(count("ingest", "appended"), Some(2.0));
    assert_eq!(count("ingest", "replayed"), Some(1.0));
    // The sweeper pulsed every 5 ms with nothing due: pulses, not commands.
    let pulses = |pulse| sample(&page, "tally_sweeper_pulses_total", &[("pulse", pulse)]).unwrap_or(0.0);
    assert!(pulses("retry_due") >= 1.0 && pulses("expire_due") >= 1.0, "{page}");
    for kind in ["retry_due", "expire_due"] {
        assert_eq!(
            count(kind, "unchanged"),
            Some(0.0),
            "an idle pulse is not a command: {page}"
        );
    }
    assert!(terminate(&mut child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_span_carries_correlation_tenant_actor_and_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, address, _) = serve(
        dir.path(),
        &["--metrics-listen", "", "--log-format", "json"],
        &[("TALLY_LOG", "tally=debug")],
    );
    let head = open_and_award(&address, "corr-42").await;
    assert!(terminate(&mut child).success());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let spans: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["span"]["name"] == "command" && v["fields"]["message"] == "close")
        .collect();
    let awards: Vec<_> = spans
        .iter()
        .filter(|v| v["span"]["correlation_id"] == "corr-42")
        .collect();
    assert_eq!(awards.len(), 5, "three awards, a replay, a rejection: {stderr}");
    for span in &awards {
        assert_eq!(span["span"]["tenant"], "t1");
        assert_eq!(span["span"]["actor"], "staff-7");
    }
    let last = awards
        .iter()
        .find(|v| v["span"]["idempotency_key"] == "a2")
        .expect("the third award's span");
    assert_eq!(last["span"]["outcome"], "appended");
    assert_eq!(last["span"]["seq"], head);
    let replay = awards
        .iter()
        .find(|v| v["span"]["outcome"] == "replayed")
        .expect("the retry's span");
    assert_eq!(replay["span"]["idempotency_key"], "a0");
    let rejected = awards.iter().find(|v| v["span"]["kind"] == "reserve").unwrap();
    assert_eq!(rejected["span"]["outcome"], "rejected");
    assert_eq!(rejected["span"]["reason"], "insufficient_points");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_log_keeps_the_port_open_not_serving_and_answers_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = support::TestEngine::start_with(
            tempfile::tempdir().unwrap(),
            tally::engine::EngineConfig {
                segment_bytes: 1 << 20,
                ..tally::engine::EngineConfig::new(dir.path())
            },
        );
        let mut rng = support::Rng(7);
        support::random_workload(&engine, &mut rng, 20).await;
    }
    // Damage the first record's payload: corruption before the tail.
    let segment = dir.path().join("log").join(format!("{:020}.seg", 1));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
        .unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 64 + 100).unwrap();
    file.write_all_at(&[byte[0] ^ 0x01], 64 + 100).unwrap();

    let mut child = tally()
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "", "--data-dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line.split_whitespace().nth(3).unwrap().to_string();
    // The server says on stderr when it has refused the log; read up to there.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("NOT_SERVING") {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "stderr ended: {said}");
        said.push_str(&line);
    }
    assert!(said.contains("sequence 1"), "{said}");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap();
    assert_eq!(health.into_inner().status, ServingStatus::NotServing as i32);
    let refused = LedgerClient::new(channel)
        .get_account(request(
            GetAccountRequest {
                account_id: "p1".into(),
            },
            "t1",
            "a",
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::DataLoss);
    assert!(refused.message().contains("LOG_REFUSED"), "{}", refused.message());
    assert!(refused.message().contains("sequence 1"), "{}", refused.message());
    assert_eq!(terminate(&mut child).code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_recovery_puts_the_engine_in() {
    use tally::api::EngineSlot;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = tally::api::ApiSettings::for_data_dir(dir.path()).unwrap();
    settings.auth = support::test_auth();
    let slot = EngineSlot::recovering(settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tally::api::serve_slot(slot.clone(), listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    let mut client = LedgerClient::new(channel);
    let open = || OpenAccountRequest {
        account_id: "p1".into(),
        idempotency_key: "open-p1".into(),
        ..Default::default()
    };
    let early = client.open_account(request(open(), "t1", "a")).await.unwrap_err();
    assert_eq!(early.code(), tonic::Code::Unavailable);
    assert!(early.message().starts_with("RECOVERING"), "{}", early.message());

    let engine = support::TestEngine::start();
    slot.fill(engine.handle());
    loop {
        let next = watch.message().await.unwrap().expect("the watch goes on");
        if next.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    client.open_account(request(open(), "t1", "a")).await.unwrap();
    // A graceful stop waits for open streams: end the watch first.
    drop((watch, health, client));
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

fn print_config(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    tally()
        .args(["serve", "--print-config"])
        .args(args)
        .env_remove("TALLY_LISTEN")
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tally.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:6000\"\n[storage]\nsegment_mib = 2\ndurability = \"buffered\"\n[engine]\ninbox_capacity = 77\n",
    )
    .unwrap();
    let out = print_config(
        &["--config", file.to_str().unwrap(), "--segment-mib", "3"],
        &[("TALLY_LISTEN", "127.0.0.1:7000"), ("TALLY_SEGMENT_MIB", "4")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = tally::config::Config::from_toml(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(
        printed.server.listen, "127.0.0.1:7000",
        "the environment beats the file"
    );
    assert_eq!(printed.storage.segment_mib, 3, "a flag beats the environment");
    assert_eq!(printed.engine.inbox_capacity, 77, "the file beats the default");
    assert_eq!(printed.storage.durability, tally::config::DurabilitySetting::Buffered);
    assert_eq!(
        printed.ledger,
        tally::config::Config::default().ledger,
        "the rest is default"
    );
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tally.toml");
    let cases: [(&str, &[&str], &str); 5] = [
        ("[storage]\nsegmen_mib = 2\n", &[], "unknown field `segmen_mib`"),
        ("[storage]\nsegment_mib = \"big\"\n", &[], "segment_mib"),
        ("", &["--segment-mib", "0"], "storage.segment_mib: must be 1 to 1024"),
        ("[ledger]\ntiers = \"Gold:5\"\n", &[], "ledger.tiers"),
        ("[metrics]\nlisten = \"nowhere\"\n", &[], "metrics.listen"),
    ];
    for (text, flags, expected) in cases {
        std::fs::write(&file, text).unwrap();
        let mut args = vec!["--config", file.to_str().unwrap()];
        args.extend_from_slice(flags);
        let out = print_config(&args, &[]);
        assert_eq!(out.status.code(), Some(64), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
}

#[test]
fn every_setting_is_documented_with_its_variable() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CONFIG.md")).unwrap();
    let defaults = tally::config::Config::default().to_toml();
    let mut section = String::new();
    for line in defaults.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
        } else if let Some((key, _)) = line.split_once(" = ") {
            let dotted = format!("`{section}.{key}`");
            assert!(doc.contains(&dotted), "docs/CONFIG.md does not document {dotted}");
        }
    }
    let help = tally().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for variable in help.split(|c: char| !(c.is_ascii_uppercase() || c == '_')) {
        if variable.starts_with("TALLY_") {
            assert!(doc.contains(variable), "docs/CONFIG.md does not name {variable}");
        }
    }
}

//! Protects "acknowledged means durable" and exactly-once retries across crashes: the real
//! `tally serve` binary (durability Sync) is driven by concurrent gRPC clients and killed
//! with SIGKILL mid-load, several times. After each restart every request whose answer was
//! lost is retried with its key; at the end every command the clients ever sent is in the
//! log exactly once, every acknowledged one with the sequence number it was acknowledged
//! with, balances add up, and `tally verify` passes. The same holds for external events
//! sent to the ingest pipeline: each accepted one is received exactly once, processed at
//! most once, and nothing is applied twice across the crashes. After the crashes every
//! projection (killed with folded records not yet written, folded again from its
//! checkpoint) has the digest of one rebuilt from the log (`tally rebuild --verify`).

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use support::request;
use tally::api::proto::{ledger_client::LedgerClient, *};
use tokio::sync::Notify;

const CYCLES: usize = 4;
const CLIENTS: usize = 8;
const ACCOUNTS: usize = 4;
/// Acknowledgements to wait for before each kill.
const ACKS_BEFORE_KILL: u64 = 150;

struct Server {
    child: Child,
    address: String,
}

fn start(data_dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(["--segment-mib", "1", "--metrics-listen", ""])
        // Projections written every second, so that a cycle's load outlasts a flush.
        .args(["--projection-flush-seconds", "1"])
        .env("TALLY_AUTH_KEYS", support::TEST_KEYS)
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tally serve starts");
    let address = support::wait_until_serving(child.stdout.take().unwrap());
    Server { child, address }
}

async fn connect(server: &Server) -> LedgerClient<tonic::transport::Channel> {
    LedgerClient::connect(format!("http://{}", server.address))
        .await
        .expect("connect")
}

fn award(n: u64) -> AwardRequest {
    AwardRequest {
        account_id: format!("p{}", n % ACCOUNTS as u64),
        idempotency_key: format!("award-{n}"),
        source: Some(award_request::Source::Promotion(Promotion {
            points: 1 + n % 17,
            promotion_id: "load".into(),
            external_reward_id: format!("reward-{n}"),
        })),
        ..Default::default()
    }
}

/// Opens the accounts the loads award to.
async fn open_accounts(server: &Server) {
    let mut client = connect(server).await;
    for a in 0..ACCOUNTS {
        let open = OpenAccountRequest {
            account_id: format!("p{a}"),
            idempotency_key: format!("open-{a}"),
            ..Default::default()
        };
        client.open_account(request(open, "t1", "load")).await.unwrap();
    }
}

/// One cycle of load: each of `clients` sends numbered requests (`send`, answering the
/// sequence number it got) until `ACKS_BEFORE_KILL` are answered in all, then the server is
/// killed with SIGKILL. Returns the answered numbers with their sequence numbers, and the
/// numbers whose answer was lost.
async fn load_then_kill<C, F, Fut>(
    server: &mut Server,
    cycle: usize,
    next: &Arc<AtomicU64>,
    clients: Vec<C>,
    send: F,
) -> (HashMap<u64, u64>, Vec<u64>)
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, tonic::Status>> + Send,
{
    let acked = Arc::new(AtomicU64::new(0));
    let enough = Arc::new(Notify::new());
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|client| {
            let (next, acked, enough) = (next.clone(), acked.clone(), enough.clone());
            tokio::spawn(async move {
                let (mut ok, mut lost) = (HashMap::new(), Vec::new());
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    match send(client.clone(), n).await {
                        Ok(sequence) => {
                            ok.insert(n, sequence);
                            if acked.fetch_add(1, Ordering::SeqCst) + 1 == ACKS_BEFORE_KILL {
                                enough.notify_one();
                            }
                        }
                        Err(_) => {
                            lost.push(n);
                            return (ok, lost);
                        }
                    }
                }
            })
        })
        .collect();
    enough.notified().await;
    // Every other cycle the load goes on past the projector's one-second flush, so that
    // some kills fall after a flush, with the next batch folded and not yet written; the
    // others fall before any flush of that run.
    if cycle % 2 == 1 {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    let (mut answered, mut unanswered) = (HashMap::new(), Vec::new());
    for task in tasks {
        let (ok, lost) = task.await.unwrap();
        answered.extend(ok);
        unanswered.extend(lost);
    }
    (answered, unanswered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    open_accounts(&server).await;
    let next = Arc::new(AtomicU64::new(0));
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();
    for cycle in 0..CYCLES {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(connect(&server).await);
        }
        let (answered, unanswered) = load_then_kill(&mut server, cycle, &next, clients, |mut client, n| async move {
            let response = client.award(request(award(n), "t1", "load")).await?;
            Ok(response.into_inner().outcome.unwrap().sequence)
        })
        .await;
        acknowledged.extend(answered);
        assert!(acknowledged.len() as u64 >= ACKS_BEFORE_KILL * (cycle as u64 + 1));
        server = start(dir.path());
        let mut client = connect(&server).await;
        // Every acknowledged command is there, with the sequence number it was given.
        for (&n, &sequence) in acknowledged.iter().filter(|(n, _)| *n % 7 == cycle as u64 % 7) {
            let replay = client
                .award(request(award(n), "t1", "load"))
                .await
                .unwrap()
                .into_inner()
                .outcome
                .unwrap();
            assert!(replay.replayed, "cycle {cycle}: acknowledged award {n} must replay");
            assert_eq!(
                replay.sequence, sequence,
                "cycle {cycle}: award {n} keeps its sequence number"
            );
        }
        // Requests whose answer was lost are retried with the same key: applied at most once.
        for n in unanswered {
            let outcome = client
                .award(request(award(n), "t1", "load"))
                .await
                .unwrap()
                .into_inner()
                .outcome
                .unwrap();
            acknowledged.insert(n, outcome.sequence);
        }
    }
    // Stop gracefully and check the log and the projections offline.
    sigterm(&server.child);
    server.child.wait().unwrap();
    verify_offline(dir.path());
    let (log, _) = tally::log::FileLog::open(&dir.path().join("log"), tally::log::LogOptions::default()).unwrap();
    let records: Vec<_> = tally::log::LogWriter::reader(&log)
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut posted: HashMap<String, u64> = HashMap::new();
    for record in &records {
        if let tally::domain::Event::PointsAwarded(award) = &record.event {
            *seen.entry(record.envelope.idempotency_key.clone()).or_default() += 1;
            *posted.entry(record.envelope.stream.clone()).or_default() += award.points;
        }
    }
    for (n, sequence) in &acknowledged {
        assert_eq!(
            seen.get(&format!("award-{n}")),
            Some(&1),
            "award {n} is in the log exactly once"
        );
        assert!(records
            .iter()
            .any(|r| r.seq == *sequence && r.envelope.idempotency_key == format!("award-{n}")));
    }
    assert_eq!(seen.len(), acknowledged.len(), "nothing but what the clients sent");
    let expected: u64 = acknowledged.keys().map(|n| 1 + n % 17).sum();
    assert_eq!(posted.values().sum::<u64>(), expected, "points add up");
}

fn external(n: u64) -> IngestRequest {
    IngestRequest {
        source: "promo".into(),
        external_id: format!("x-{n}"),
        r#type: "points.award".into(),
        payload_json: format!(
            r#"{{"member_id":"p{}","points":{},"promotion_id":"load-{n}"}}"#,
            n % ACCOUNTS as u64,
            1 + n % 13
        ),
        correlation_id: String::new(),
        payload: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_ingest_load_receives_each_event_once_and_applies_it_once() {
    use tally::api::proto::ingest_client::IngestClient;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    open_accounts(&server).await;
    let next = Arc::new(AtomicU64::new(0));
    let mut acknowledged: HashMap<u64, u64> = HashMap::new();
    for cycle in 0..CYCLES - 1 {
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(
                IngestClient::connect(format!("http://{}", server.address))
                    .await
                    .unwrap(),
            );
        }
        let (answered, unanswered) = load_then_kill(&mut server, cycle, &next, clients, |mut client, n| async move {
            let response = client.ingest(request(external(n), "t1", "partner")).await?;
            Ok(response.into_inner().receipt_sequence)
        })
        .await;
        acknowledged.extend(answered);
        server = start(dir.path());
        let mut client = IngestClient::connect(format!("http://{}", server.address))
            .await
            .unwrap();
        // Acknowledged events are answered as duplicates with their receipt; lost answers
        // are sent again and received at most once.
        for (&n, &receipt) in acknowledged.iter().filter(|(n, _)| *n % 5 == cycle as u64 % 5) {
            let again = client
                .ingest(request(external(n), "t1", "partner"))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                again.duplicate,
                Duplicate::ExternalId as i32,
                "cycle {cycle}: event {n}"
            );
            assert_eq!(
                again.receipt_sequence, receipt,
                "cycle {cycle}: event {n} keeps its receipt"
            );
        }
        for n in unanswered {
            let answer = client
                .ingest(request(external(n), "t1", "partner"))
                .await
                .unwrap()
                .into_inner();
            acknowledged.insert(n, answer.receipt_sequence);
        }
    }
    sigterm(&server.child);
    server.child.wait().unwrap();
    verify_offline(dir.path());
    let (log, _) = tally::log::FileLog::open(&dir.path().join("log"), tally::log::LogOptions::default()).unwrap();
    let records: Vec<_> = tally::log::LogWriter::reader(&log)
        .iter_from(1)
        .collect::<Result<_, _>>()
        .unwrap();
    let mut received: HashMap<String, u64> = HashMap::new();
    let mut processed: HashMap<u64, u64> = HashMap::new();
    let mut posted = 0;
    for record in &records {
        match &record.event {
            tally::domain::Event::ExternalReceived(r) => {
                assert!(
                    received.insert(r.external_id.clone(), record.seq).is_none(),
                    "{} received twice",
                    r.external_id
                );
            }
            tally::domain::Event::ExternalProcessed(p) => *processed.entry(p.receipt_seq).or_default() += 1,
            tally::domain::Event::PointsAwarded(a) => posted += a.points,
            _ => {}
        }
    }
    assert_eq!(received.len(), acknowledged.len(), "nothing but what the clients sent");
    for (n, receipt) in &acknowledged {
        assert_eq!(
            received.get(&format!("x-{n}")),
            Some(receipt),
            "event {n} at its receipt"
        );
        assert_eq!(processed.get(receipt), Some(&1), "event {n} processed exactly once");
    }
    let expected: u64 = acknowledged.keys().map(|n| 1 + n % 13).sum();
    assert_eq!(posted, expected, "points add up");
}

/// The chain verifies, and every projection, folded by servers that were killed while they
/// held folded records not yet written (a flush comes every second here, or 65,536 records, and
/// each kill falls within a second of load) and folded them again from their checkpoints
/// after each restart, has the digest of one rebuilt once from the log.
fn verify_offline(dir: &Path) {
    for args in [vec!["verify"], vec!["rebuild", "--verify"]] {
        let output = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(&args[..1])
            .arg(dir)
            .args(&args[1..])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "tally {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

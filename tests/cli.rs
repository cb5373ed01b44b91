//! Protects the command line: `tally verify` prints the head sequence number and hash of a
//! sound log and exits 0, and exits 2 naming the bad sequence number of a corrupt one;
//! `tally serve` refuses to start on a corrupt log and says why; `tally ingest` loads a
//! JSON-lines file into a running server (twice without applying anything twice) and
//! `tally dlq` lists, shows, re-drives and discards its dead letters (a line naming a key
//! twice is refused before it is sent); `tally token issue`
//! signs with an existing key ring only and refuses unknown roles, long lives and bad ids;
//! `tally deliveries` registers an endpoint and shows what the server's worker delivered;
//! `tally audit` takes `--tenant` and `--format` before or after its query, as the README
//! writes them.

mod support;

use std::os::unix::fs::FileExt;
use std::process::Command;
use support::{serve, tally};

fn write_log(dir: &std::path::Path, records: u64) {
    use tally::domain::{event::AccountOpened, Envelope, Event};
    use tally::log::{FileLog, LogOptions, LogWriter};
    let (mut log, _) = FileLog::open(
        &dir.join("log"),
        LogOptions {
            segment_bytes: tally::log::MIN_SEGMENT_BYTES,
            ..LogOptions::default()
        },
    )
    .unwrap();
    for seq in 1..=records {
        let envelope = Envelope {
            tenant: "t1".into(),
            stream: format!("p{seq}"),
            ..Envelope::default()
        };
        log.stage(
            seq,
            seq,
            &envelope,
            &Event::AccountOpened(AccountOpened { tier: "Member".into() }),
        );
        log.commit().unwrap();
    }
}

#[test]
fn verify_reports_the_head_of_a_sound_log() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5);
    let out = tally(&["verify", dir.path().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("head sequence: 5"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("head hash: ") && l.len() == "head hash: ".len() + 64),
        "{stdout}"
    );
}

#[test]
fn audit_takes_its_options_before_or_after_the_query() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5);
    let data = dir.path().to_str().unwrap();
    let before = tally(&["audit", data, "--tenant", "t1", "--format", "jsonl", "history", "p3"]);
    let after = tally(&["audit", data, "history", "p3", "--tenant", "t1", "--format", "jsonl"]);
    let mixed = tally(&["audit", data, "--tenant", "t1", "history", "p3", "--format", "jsonl"]);
    let stdout = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).to_string();
    for out in [&before, &after, &mixed] {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(stdout(&before).contains("\"seq\":3"), "{}", stdout(&before));
    assert_eq!(stdout(&after), stdout(&before));
    assert_eq!(stdout(&mixed), stdout(&before));
    let other = tally(&["audit", data, "history", "p3", "--tenant", "t2", "--format", "jsonl"]);
    assert!(
        !stdout(&other).contains("\"seq\":3"),
        "another tenant's account: {}",
        stdout(&other)
    );
}

#[test]
fn verify_and_serve_refuse_a_corrupt_log_naming_the_sequence() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 5);
    let segment = dir.path().join("log").join(format!("{:020}.seg", 1));
    let bytes = std::fs::read(&segment).unwrap();
    // Frames of one record each: find the third frame and damage its record's payload.
    let mut at = 64;
    for _ in 0..2 {
        at += u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .write_all_at(&[bytes[at + 100] ^ 1], (at + 100) as u64)
        .unwrap();
    let out = tally(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("CORRUPT at sequence 3"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = tally(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--on-corrupt-log",
        "exit",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sequence 3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn verify_of_a_directory_without_a_log_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(tally(&["verify", dir.path().to_str().unwrap()]).status.code(), Some(64));
}

#[test]
fn a_ping_load_in_batches_is_a_usage_error() {
    let out = tally(&["bench", "--workload", "ping", "--mode", "batch", "--token", "t"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unary only"));
}

/// Runs `tally` with a client subcommand against `address`; (exit code, stdout, stderr).
fn client(address: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .args([
            "--target",
            &format!("http://{address}"),
            "--tenant",
            "club",
            "--actor",
            "ops-1",
        ])
        .env("TALLY_AUTH_KEYS", support::TEST_KEYS)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ingest_and_dlq_work_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    // One attempt: an event for a member not enrolled is dead-lettered at once, so nothing
    // here waits on the wall clock.
    let (_server, address) = serve(&dir.path().join("data"), &["--ingest-max-attempts", "1"]);
    let file = dir.path().join("events.jsonl");
    std::fs::write(
        &file,
        [
            r#"{"source":"crm","external_id":"e1","type":"member.enrolled","payload":{"member_id":"m1"}}"#,
            r#"{"source":"promo","external_id":"p1","type":"points.award","payload":{"member_id":"m1","points":250,"promotion_id":"spring"}}"#,
            r#"{"source":"promo","external_id":"p2","type":"points.award","payload":{"member_id":"m2","points":40,"promotion_id":"spring"}}"#,
            r#"{"source":"promo","external_id":"p3","type":"points.award","payload":{"member_id":"m2","points":60,"promotion_id":"summer"}}"#,
            "",
            r#"{"source":"promo","external_id":"p4","type":"points.award","payload":{"member_id":"m1","points":-1,"promotion_id":"x"}}"#,
            r#"{"source":"promo","external_id":"p5","type":"points.award","payload":{"member_id":"m1","points":1,"promotion_id":"x"},"extra":1}"#,
            r#"{"source":"promo","external_id":"p6","type":"points.award","payload":{"member_id":"m1","points":1,"promotion_id":"dk","points":999999}}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let (code, stdout, stderr) = client(&address, &["ingest", path]);
    assert_eq!(code, 1, "three lines are refused: {stdout} {stderr}");
    assert!(
        stdout.contains("7 lines, 1 dead_lettered, 1 parked, 2 processed, 0 duplicates, 3 rejected"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 8: ") && stderr.contains("names the key \"points\" twice"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 6: ") && stderr.contains("payload.points"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 7: ") && stderr.contains("unknown field `extra`"),
        "{stderr}"
    );
    // Again: nothing is applied twice.
    let (_, stdout, _) = client(&address, &["ingest", path]);
    assert!(stdout.contains("4 duplicates, 3 rejected"), "{stdout}");

    let (code, stdout, _) = client(&address, &["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("2 shown, 2 matching, 2 in the queue"), "{stdout}");
    let receipts: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("points.award"))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    let (code, stdout, _) = client(&address, &["dlq", "show", &receipts[1].to_string()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("state          parked"), "{stdout}");
    assert!(stdout.contains(&format!("parked behind  {}", receipts[0])), "{stdout}");

    // Enroll m2 (never parked), then re-drive its sequence in order.
    std::fs::write(
        &file,
        r#"{"source":"crm","external_id":"e2","type":"member.enrolled","payload":{"member_id":"m2"}}"#,
    )
    .unwrap();
    assert_eq!(client(&address, &["ingest", path]).0, 0);
    let (code, stdout, stderr) = client(&address, &["dlq", "redrive", "--member", "m2", "--key", "fix-m2"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.matches("processed").count(), 2, "{stdout}");
    let (_, again, _) = client(&address, &["dlq", "redrive", "--member", "m2", "--key", "fix-m2"]);
    assert!(again.contains("(replayed)"), "the same key replays: {again}");
    let (_, by_id, _) = client(&address, &["dlq", "redrive", &receipts[0].to_string()]);
    assert!(by_id.contains("already_resolved"), "{by_id}");
    let (code, _, stderr) = client(
        &address,
        &[
            "dlq",
            "discard",
            &receipts[0].to_string(),
            "--reason",
            "applied already, by hand",
        ],
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("already processed"), "{stderr}");
    let (_, stats, _) = client(&address, &["dlq", "stats"]);
    assert!(
        stats.contains("received 5  processed 5") && stats.contains("queue depth 0"),
        "{stats}"
    );
}

#[test]
fn token_issue_signs_with_the_key_ring_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("auth.keys");
    let issue = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(["token", "issue", "--keys"])
            .arg(&keys)
            .args(args)
            .env_remove("TALLY_AUTH_KEYS")
            .output()
            .unwrap()
    };
    let ok = ["--tenant", "club", "--subject", "ops-1", "--role", "admin"];
    // No key ring: the tool never makes one (its tokens would be the server's by accident).
    let missing = issue(&ok);
    assert_eq!(missing.status.code(), Some(66));
    assert!(!keys.exists());
    std::fs::write(&keys, format!("{}\n", support::TEST_KEYS.replacen(':', " ", 1))).unwrap();
    let out = issue(&ok);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let claims = support::test_auth().verify(token.trim(), now_us).unwrap();
    assert_eq!(
        (claims.tnt.as_str(), claims.sub.as_str(), claims.roles.as_slice()),
        ("club", "ops-1", &["admin".to_string()][..])
    );
    assert_eq!(
        issue(&["--tenant", "club", "--subject", "ops-1", "--role", "root"])
            .status
            .code(),
        Some(64)
    );
    let too_long = [
        "--tenant",
        "club",
        "--subject",
        "ops-1",
        "--role",
        "admin",
        "--ttl-seconds",
        "90000",
    ];
    assert_eq!(issue(&too_long).status.code(), Some(64));
    assert_eq!(
        issue(&["--tenant", "no spaces", "--subject", "ops-1", "--role", "admin"])
            .status
            .code(),
        Some(64)
    );
}

#[test]
fn deliveries_cli_registers_an_endpoint_and_shows_what_the_worker_delivered() {
    use std::io::{Read, Write};
    // A receiver that answers 200 to everything and counts requests.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", receiver.local_addr().unwrap());
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for stream in receiver.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                request.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = [
        "--deliveries-allow-private-networks",
        "true",
        "--deliveries-poll-interval-ms",
        "20",
    ];
    let (_server, address) = serve(&dir.path().join("data"), &extra);
    let (code, stdout, stderr) = client(
        &address,
        &[
            "deliveries",
            "register",
            "--url",
            &url,
            "--kinds",
            "account.opened",
            "--ordered",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("endpoint "), "{stdout}");
    assert!(stdout.contains("secret: whsec_"), "{stdout}");
    let endpoint = stdout.split_whitespace().nth(1).unwrap().to_string();
    let file = dir.path().join("enroll.jsonl");
    std::fs::write(
        &file,
        r#"{"source":"crm","external_id":"e1","type":"member.enrolled","payload":{"member_id":"m1"}}"#,
    )
    .unwrap();
    let (code, _, stderr) = client(&address, &["ingest", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    // The worker runs on its own: wait (bounded) until the receiver has the event.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let listed = loop {
        let (_, stdout, _) = client(&address, &["deliveries", "list", "--endpoint", &endpoint]);
        if stdout.contains(" delivered ") || std::time::Instant::now() > deadline {
            break stdout;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        listed.contains(" delivered ") && listed.contains("account.opened"),
        "{listed}"
    );
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 1);
    let id = listed.split_whitespace().next().unwrap();
    let (_, shown, _) = client(&address, &["deliveries", "show", id]);
    assert!(shown.contains("attempt 1") && shown.contains("HTTP 200"), "{shown}");
    let (_, stats, _) = client(&address, &["deliveries", "stats", "--endpoint", &endpoint]);
    assert!(
        stats.contains("delivered 1") && stats.contains("success 100.0%"),
        "{stats}"
    );
    let (code, _, stderr) = client(&address, &["deliveries", "retry", id]);
    assert_eq!(code, 1, "a delivered event is not retried: {stderr}");
    assert!(stderr.contains("DELIVERY_NOT_DUE"), "{stderr}");
}

//! Protects the command line: `tally verify` prints the head sequence number and hash of a
//! sound log and exits 0, and exits 2 naming the bad sequence number of a corrupt one;
//! `tally serve` refuses to start on a corrupt log and says why.

use std::os::unix::fs::FileExt;
use std::process::Command;

fn tally(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tally"))
        .args(args)
        .env("TALLY_LOG", "error")
        .output()
        .unwrap()
}

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

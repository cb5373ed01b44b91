//! Protects what fuzzing found and what it reached, on a stable toolchain and without
//! libFuzzer: every input in the committed corpora (`fuzz/corpus/<target>/`) and every input
//! that once made a target fail (`tests/fixtures/fuzz/<target>/`) goes through the same
//! checks as under `cargo fuzz` (the targets' bodies are `fuzz/src/lib.rs`, included here):
//! bytes from outside — a log on disk, a request message, a partner's JSON payload — are
//! answered with an error, never a panic. See docs/TESTING.md, "Fuzzing".

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::{Path, PathBuf};

/// The inputs of `target` in the committed corpus and among the fixtures, by path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut inputs = Vec::new();
    for dir in [
        root.join("fuzz/corpus").join(target),
        root.join("tests/fixtures/fuzz").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a readable directory").path();
            let bytes = std::fs::read(&path).expect("a readable input");
            inputs.push((path, bytes));
        }
    }
    inputs.sort();
    inputs
}

/// Runs `check` on every input of `target`, naming the input that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(!inputs.is_empty(), "no committed inputs for {target}");
    for (path, bytes) in inputs {
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("{target} fails on {}", path.display());
        }
    }
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode", harness::frame_decode);
}

#[test]
fn log_scan_corpus() {
    replay("log_scan", harness::log_scan);
}

#[test]
fn proto_command_corpus() {
    replay("proto_command", harness::proto_command);
}

#[test]
fn ingest_json_corpus() {
    replay("ingest_json", harness::ingest_json);
}

/// The log a `log_scan` fixture stands for, on a simulated disk.
fn log_of(fixture: &str) -> tally::log::SimDisk {
    use tally::log::{SimDisk, Storage};
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz/log_scan")
        .join(fixture);
    let input = std::fs::read(path).expect("the fixture");
    let disk = SimDisk::new(1, "/log");
    for (name, bytes) in harness::segment_files(&input) {
        let file = disk.create(&name, bytes.len() as u64).expect("a new file");
        file.write_all_at(&bytes, 0).expect("written");
    }
    disk
}

/// Asserts that verifying the log on `disk`, opening it for reading and opening it for
/// writing all refuse it as corrupt at `seq`, with a reason that says `reason`.
fn assert_refused(disk: &tally::log::SimDisk, seq: u64, reason: &str) {
    use std::sync::Arc;
    use tally::log::{verify_storage, FileLog, LogError, LogOptions, LogReader};
    let refused = |error: LogError| match error {
        LogError::Corrupt {
            seq: at, reason: why, ..
        } => {
            assert_eq!(at, seq, "{why}");
            assert!(why.contains(reason), "{why}");
        }
        other => panic!("{other}"),
    };
    refused(verify_storage(disk).expect_err("verify refuses the log"));
    refused(
        LogReader::open_on(Arc::new(disk.clone()))
            .err()
            .expect("a reader refuses the log"),
    );
    refused(
        FileLog::open_on(Arc::new(disk.clone()), LogOptions::default())
            .err()
            .expect("the writer refuses the log"),
    );
}

/// Found by `log_scan`: a log whose segment file is named `1.seg` verified and opened, and
/// then no record of it could be read (readers open `00000000000000000001.seg`). Such a
/// file is now refused, named, when the log is listed.
#[test]
fn a_segment_named_otherwise_is_refused() {
    let disk = log_of("short-segment-name");
    assert_eq!(disk.files()[0].0, "1.seg");
    assert_refused(&disk, 1, "1.seg");
}

/// Found with `log_scan`: after a damaged frame in the last segment, the scan looks for a
/// valid frame further on (to tell damage from a torn tail), and one that names the largest
/// sequence number made it add past `u64::MAX` (a panic with overflow checks). Such a frame
/// is now not valid, and the damage before it is refused as corruption.
#[test]
fn a_frame_at_the_largest_sequence_number_is_not_an_overflow() {
    let disk = log_of("largest-sequence-number");
    assert_refused(&disk, 2, "frame header counts more records");
}

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

/// Found by `log_scan`: a log whose segment file is named `1.seg` verified and opened, and
/// then no record of it could be read (readers open `00000000000000000001.seg`). Such a
/// file is now refused when the log is listed, naming it.
#[test]
fn a_segment_named_otherwise_is_refused() {
    use std::sync::Arc;
    use tally::log::{verify_storage, FileLog, LogError, LogOptions, LogReader, SimDisk, Storage};

    let input =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/log_scan/short-segment-name"))
            .expect("the fixture");
    let segment = &input[1..]; // the harness's flags byte, then the segment file
    for (name, refused) in [("1.seg", true), ("00000000000000000001.seg", false)] {
        let disk = SimDisk::new(1, "/log");
        let file = disk.create(name, segment.len() as u64).expect("a new file");
        file.write_all_at(segment, 0).expect("written");
        match verify_storage(&disk) {
            Err(LogError::Corrupt { reason, .. }) if refused => {
                assert!(reason.contains(name), "the error names the file: {reason}")
            }
            Ok(verified) if !refused => assert_eq!(verified.head.seq, 2),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(LogReader::open_on(Arc::new(disk.clone())).is_err(), refused);
        assert_eq!(
            FileLog::open_on(Arc::new(disk.clone()), LogOptions::default()).is_err(),
            refused
        );
    }
}

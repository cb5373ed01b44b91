//! Protects the layering ARCHITECTURE.md draws: which top-level module may import which
//! (every arrow points down; nothing points back up), that the domain stays pure (no I/O,
//! no clock, no threads, no async runtime), and that every source file stays small enough
//! to read in one sitting, and that the concrete stores (the file log's reader, the sled
//! projections) are named only where they are made: the rest reads through `ReadLog` and
//! `ReadIndexes`. A new top-level module fails here until it is given its place.
//! (Circles between the files inside one module are checked by `.ci/cycles.py`.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each layer and the library modules it may import. The binary (`main.rs`, `cli/`) may
/// import everything and is not listed.
const ALLOWED: &[(&str, &[&str])] = &[
    ("hex", &[]),
    ("domain", &[]),
    ("secrets", &["hex"]),
    ("outbound", &[]),
    ("log", &["domain", "hex"]),
    ("projection", &["domain", "hex"]),
    ("query", &["domain", "log", "projection", "hex"]),
    ("engine", &["domain", "log", "projection", "query", "hex"]),
    (
        "deliverer",
        &["domain", "log", "query", "engine", "secrets", "outbound", "hex"],
    ),
    (
        "api",
        &[
            "domain",
            "log",
            "projection",
            "query",
            "engine",
            "secrets",
            "outbound",
            "hex",
        ],
    ),
    ("telemetry", &["api", "engine", "projection"]),
    ("operator", &["api", "query", "hex"]),
    ("loadgen", &["api", "operator"]),
    (
        "config",
        &[
            "domain",
            "log",
            "projection",
            "engine",
            "secrets",
            "outbound",
            "api",
            "hex",
        ],
    ),
];

/// What the domain never names: it decides and folds, and everything it knows comes in
/// through its arguments (time included).
const DOMAIN_NEVER: &[&str] = &[
    "tokio",
    "tonic",
    "sled",
    "std::fs",
    "std::net",
    "std::thread",
    "SystemTime",
    "Instant",
    "std::env",
];

/// Lines a source file may have.
const MAX_LINES: usize = 700;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("src is readable").flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The top-level module a file belongs to; `None` for the crate roots and the binary.
fn layer_of(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main" | "cli")).then_some(name)
}

/// The code of a file without its comments (line, doc and block comments); string
/// literals are kept, which can only make the check stricter.
fn code_of(text: &str) -> Vec<(usize, String)> {
    let mut lines = Vec::new();
    let mut in_block = false;
    for (n, line) in text.lines().enumerate() {
        let mut code = String::new();
        let mut rest = line;
        loop {
            if in_block {
                match rest.find("*/") {
                    Some(end) => {
                        rest = &rest[end + 2..];
                        in_block = false;
                    }
                    None => break,
                }
            } else {
                let line_comment = rest.find("//");
                let block = rest.find("/*");
                match (line_comment, block) {
                    (Some(l), Some(b)) if b < l => {
                        code.push_str(&rest[..b]);
                        rest = &rest[b + 2..];
                        in_block = true;
                    }
                    (None, Some(b)) => {
                        code.push_str(&rest[..b]);
                        rest = &rest[b + 2..];
                        in_block = true;
                    }
                    (Some(l), _) => {
                        code.push_str(&rest[..l]);
                        break;
                    }
                    (None, None) => {
                        code.push_str(rest);
                        break;
                    }
                }
            }
        }
        lines.push((n + 1, code));
    }
    lines
}

/// The top-level modules a line of code names through `crate::`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        let after = &rest[at + "crate::".len()..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        if !preceded_by_ident && !name.is_empty() {
            found.push(name.clone());
        }
        // `crate::{a, b}`: every module in the braces.
        if !preceded_by_ident && after.starts_with('{') {
            let inner = &after[1..after.find('}').unwrap_or(after.len())];
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        }
        rest = after;
    }
    found
}

#[test]
fn every_arrow_between_top_level_modules_points_down() {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).expect("under src");
        let Some(layer) = layer_of(relative) else { continue };
        let Some(may) = allowed.get(layer.as_str()) else {
            wrong.push(format!(
                "{}: the module `{layer}` has no place in the layering; give it one in tests/layers.rs and ARCHITECTURE.md",
                relative.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("readable source");
        for (line, code) in code_of(&text) {
            for target in crate_paths(&code) {
                let known = allowed.contains_key(target.as_str());
                if known && target != layer && !may.contains(&target.as_str()) {
                    wrong.push(format!(
                        "{}:{line}: `{layer}` imports `{target}`, which it must not (it may import {may:?})",
                        relative.display()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "arrows that point up or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_top_level_module_has_a_place_in_the_layering() {
    let lib = std::fs::read_to_string(src().join("lib.rs")).expect("lib.rs");
    let allowed: Vec<&str> = ALLOWED.iter().map(|(name, _)| *name).collect();
    for line in lib.lines() {
        if let Some(name) = line.strip_prefix("pub mod ").and_then(|rest| rest.strip_suffix(';')) {
            assert!(allowed.contains(&name), "`{name}` (lib.rs) is missing from ALLOWED");
        }
    }
}

#[test]
fn the_domain_does_no_io_keeps_no_clock_and_starts_no_thread() {
    let root = src();
    let mut files = Vec::new();
    sources(&root.join("domain"), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable source");
        for (line, code) in code_of(&text) {
            for name in DOMAIN_NEVER {
                if code.contains(name) {
                    wrong.push(format!(
                        "{}:{line}: names `{name}`",
                        file.strip_prefix(&root).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the domain must stay pure:\n{}", wrong.join("\n"));
}

/// Concrete stores and who may name them: the rest reads the log through `ReadLog` (and
/// writes it through `LogWriter` and `Storage`) and the indexes through `ReadIndexes`. The
/// binary (`main.rs`, `cli/`) opens data directories and may name them all.
const CONCRETE: &[(&str, &[&str])] = &[
    ("LogReader", &["log"]),
    ("RecordIter", &["log"]),
    ("Projections", &["projection", "engine"]),
];

#[test]
fn concrete_stores_are_named_only_where_they_are_made() {
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&root).unwrap();
        if relative.starts_with("cli") || relative == Path::new("main.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        for (line, code) in code_of(&text) {
            for (name, owners) in CONCRETE {
                let owned = owners.iter().any(|owner| relative.starts_with(owner));
                if !owned
                    && code
                        .split(|c: char| !c.is_alphanumeric() && c != '_')
                        .any(|word| word == *name)
                {
                    wrong.push(format!("{}:{line}: names `{name}`", relative.display()));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "read the log through `ReadLog` and the indexes through `ReadIndexes`:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_source_file_reads_in_one_sitting() {
    let root = src();
    let mut files = Vec::new();
    sources(&root, &mut files);
    let long: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let lines = std::fs::read_to_string(file).expect("readable source").lines().count();
            (lines > MAX_LINES).then(|| format!("{} has {lines} lines", file.strip_prefix(&root).unwrap().display()))
        })
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines:\n{}", long.join("\n"));
}

#[test]
fn the_comment_stripper_and_path_finder_see_what_the_compiler_sees() {
    let code = code_of("use crate::log::Head; // crate::api\n/* crate::engine\n */ let x = crate::{domain, query};");
    let names: Vec<String> = code.iter().flat_map(|(_, c)| crate_paths(c)).collect();
    assert_eq!(names, ["log", "domain", "query"]);
    assert_eq!(crate_paths("$crate::domain::event::Event"), Vec::<String>::new());
    assert_eq!(layer_of(Path::new("engine/mod.rs")).as_deref(), Some("engine"));
    assert_eq!(layer_of(Path::new("config.rs")).as_deref(), Some("config"));
    assert_eq!(layer_of(Path::new("cli/serve.rs")), None);
}

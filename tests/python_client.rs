//! Protects the promise that a client generated from `proto/` in another language works:
//! protoc (Python's grpcio-tools, pinned in tests/python/requirements.txt and installed into
//! target/python-client on first use) compiles the protos, and the generated Python client
//! runs the README's session against the real `tally serve`: with tokens from `tally token
//! issue`, the ingest call (its payload a Struct built from a dict) signed in Python with an
//! API key from `tally keys create`, a replayed signature refused.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A virtual environment with the pinned grpcio-tools, made once per target directory.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target/python-client");
    let python = venv.join("bin/python");
    let requirements = root.join("tests/python/requirements.txt");
    let stamp = venv.join("installed.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
        run(Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements));
        std::fs::write(&stamp, wanted).unwrap();
    }
    python
}

#[test]
fn a_python_client_generated_by_protoc_runs_the_readme_session() {
    let python = python();
    let generated = tempfile::tempdir().unwrap();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut protoc = Command::new(&python);
    protoc
        .args(["-m", "grpc_tools.protoc"])
        .arg(format!("-I{}", proto.display()));
    protoc
        .arg(format!("--python_out={}", generated.path().display()))
        .arg(format!("--grpc_python_out={}", generated.path().display()));
    // Every proto, as a team generating a client would; the session uses three of them.
    let protos: Vec<String> = std::fs::read_dir(proto.join("tally/v1"))
        .unwrap()
        .map(|entry| format!("tally/v1/{}", entry.unwrap().file_name().to_string_lossy()))
        .filter(|name| name.ends_with(".proto"))
        .collect();
    assert!(protos.len() >= 6, "{protos:?}");
    run(protoc.args(&protos));

    let data = tempfile::tempdir().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_tally"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--segment-mib",
            "1",
            "--metrics-listen",
            "",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .env("TALLY_AUTH_KEYS", support::TEST_KEYS)
        .env("TALLY_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let address = support::wait_until_serving(server.stdout.take().unwrap());
    let tally = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tally"))
            .args(args)
            .env("TALLY_AUTH_KEYS", support::TEST_KEYS)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let token = |role: &str| {
        let issued = tally(&[
            "token",
            "issue",
            "--tenant",
            "casino-1",
            "--subject",
            "pos-7",
            "--role",
            role,
        ]);
        issued.trim().to_string()
    };
    let created = tally(&[
        "keys",
        "create",
        "--name",
        "promo-engine",
        "--target",
        &format!("http://{address}"),
        "--tenant",
        "casino-1",
        "--actor",
        "admin-1",
    ]);
    let field = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {created}"))
            .to_string()
    };
    let client = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/client.py"))
        .arg(&address)
        .arg(generated.path())
        .args([token("service"), token("auditor"), field("key id: "), field("secret: ")])
        .output()
        .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(
        client.status.success(),
        "{}{}",
        String::from_utf8_lossy(&client.stdout),
        String::from_utf8_lossy(&client.stderr)
    );
    assert!(String::from_utf8_lossy(&client.stdout).contains("python client: ok"));
}

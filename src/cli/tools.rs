//! `tally token issue`, `tally bench` and `tally verify`.

use super::args::{BenchArgs, DistributionArg, ModeArg, WorkloadArg};
use super::client_args::{auth_settings, unix_seconds};
use super::offline;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tally::log::{self, LogError};

pub(crate) fn issue_token(tenant: &str, subject: &str, roles: &[String], ttl_seconds: u64, keys: &Path) -> ExitCode {
    use tally::api::auth::OPERATOR_TOKEN_TTL_MAX_SECONDS;
    use tally::domain::access::Role;
    let mut parsed = Vec::new();
    for name in roles {
        match Role::parse(name) {
            Some(role) => parsed.push(role),
            None => {
                let known: Vec<_> = Role::ALL.iter().map(|r| r.name()).collect();
                eprintln!("tally token issue: unknown role {name:?} ({})", known.join(", "));
                return ExitCode::from(64);
            }
        }
    }
    if ttl_seconds == 0 || ttl_seconds > OPERATOR_TOKEN_TTL_MAX_SECONDS {
        eprintln!("tally token issue: --ttl-seconds must be 1 to {OPERATOR_TOKEN_TTL_MAX_SECONDS}");
        return ExitCode::from(64);
    }
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c))
    };
    if !valid(tenant) || !valid(subject) {
        eprintln!("tally token issue: --tenant and --subject are 1 to 128 ASCII letters, digits or -_.:@/");
        return ExitCode::from(64);
    }
    match auth_settings(keys) {
        Ok(settings) => {
            let token =
                tally::api::auth::operator_token(&settings, tenant, subject, &parsed, unix_seconds(), ttl_seconds);
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally token issue: {error}");
            ExitCode::from(66)
        }
    }
}

pub(crate) fn bench(args: BenchArgs) -> ExitCode {
    use tally::loadgen::{BenchConfig, Distribution, Mode, Workload};
    if args.clients == 0 || args.accounts == 0 || args.batch_size == 0 || args.batch_size > 4096 {
        eprintln!("tally bench: --clients and --accounts must be at least 1, --batch-size 1 to 4096");
        return ExitCode::from(64);
    }
    if matches!((args.workload, args.mode), (WorkloadArg::Ping, ModeArg::Batch)) {
        eprintln!("tally bench: --workload ping is unary only (a health check has no batch form)");
        return ExitCode::from(64);
    }
    let token = match args.credential.token(&[tally::domain::access::Role::Service]) {
        Ok(token) => token,
        Err(error) => {
            eprintln!("tally bench: {error}");
            return ExitCode::from(66);
        }
    };
    let config = BenchConfig {
        target: args.target,
        token,
        clients: args.clients,
        duration: Duration::from_secs(args.seconds.max(1)),
        warmup: Duration::from_secs(args.warmup_seconds),
        mode: match args.mode {
            ModeArg::Unary => Mode::Unary,
            ModeArg::Batch => Mode::Batch,
        },
        batch_size: args.batch_size,
        workload: match args.workload {
            WorkloadArg::Award => Workload::Award,
            WorkloadArg::Mixed => Workload::Mixed,
            WorkloadArg::Ping => Workload::Ping,
        },
        accounts: args.accounts,
        distribution: match args.distribution {
            DistributionArg::Uniform => Distribution::Uniform,
            DistributionArg::Zipf => Distribution::Zipf,
        },
        seed: args.seed,
        rate: args.rate,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    match runtime.block_on(tally::loadgen::run(config.clone())) {
        Ok(report) => {
            println!("{}", report.render(&config));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("tally bench: {error}");
            ExitCode::from(1)
        }
    }
}

pub(crate) fn verify(data_dir: &std::path::Path, expect: Option<&str>) -> ExitCode {
    let log_dir = data_dir.join("log");
    if !log_dir.is_dir() {
        eprintln!("tally verify: {} has no log directory", data_dir.display());
        return ExitCode::from(64);
    }
    match log::verify(&log_dir) {
        Ok(verified) => {
            println!("ok: {} records in {} segments", verified.head.seq, verified.segments);
            println!("head sequence: {}", verified.head.seq);
            println!("head hash: {}", tally::hex::hex(&verified.head.hash));
            if let Some((seq, bytes)) = verified.torn_tail {
                println!("torn tail: {bytes} bytes from sequence {seq} were never acknowledged and are cut off when the server opens the log");
            }
            match expect {
                Some(digest) => offline::check_digest(&log_dir, digest),
                None => ExitCode::SUCCESS,
            }
        }
        Err(error @ LogError::Corrupt { .. }) => {
            let LogError::Corrupt { seq, .. } = &error else {
                unreachable!()
            };
            println!("CORRUPT at sequence {seq}");
            eprintln!("tally verify: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("tally verify: {error}");
            ExitCode::from(1)
        }
    }
}

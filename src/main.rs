//! `tally`: the ledger server and its offline tools.

use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tally::domain::{Policy, RateTable, TierPolicy};
use tally::engine::{sweeper, Engine, EngineConfig, SystemClock};
use tally::log::{self, Durability, LogError};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a loyalty-points ledger on an append-only, blake3-chained log"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the ledger server (gRPC) on a data directory.
    Serve(ServeArgs),
    /// Check a data directory's log offline: every record's hash and the whole chain.
    /// Exits 0 if sound, 2 on corruption (naming the bad sequence number).
    Verify {
        /// The data directory (the one `serve` was given).
        data_dir: PathBuf,
    },
}

#[derive(Parser)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port (printed on start).
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Where the log and the projections live.
    #[arg(long, env = "TALLY_DATA_DIR", default_value = "./tally-data")]
    data_dir: PathBuf,
    /// sync: acknowledge only after fdatasync (default). buffered: skip fdatasync; a
    /// machine crash can lose acknowledged commands (benchmarks only).
    #[arg(long, env = "TALLY_DURABILITY", value_enum, default_value_t = DurabilityArg::Sync)]
    durability: DurabilityArg,
    /// Tiers by lifetime points earned, ascending, the first at 0.
    #[arg(long, env = "TALLY_TIERS", default_value = tally::domain::tier::DEFAULT_TIERS)]
    tiers: String,
    /// Version name of the accrual rate table, recorded in every accrual.
    #[arg(long, env = "TALLY_RATE_TABLE_VERSION", default_value = "default-1")]
    rate_table_version: String,
    /// Points per theo dollar, in thousandths (1000 = one point per dollar of theo).
    #[arg(long, env = "TALLY_POINTS_PER_THEO_DOLLAR_MILLI", default_value_t = 1000)]
    points_per_theo_dollar_milli: u64,
    /// How often the sweeper expires holds past their deadline, in milliseconds.
    #[arg(long, env = "TALLY_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    sweep_interval_ms: u64,
    /// Size of each preallocated log segment, in MiB.
    #[arg(long, env = "TALLY_SEGMENT_MIB", default_value_t = 64)]
    segment_mib: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Sync,
    Buffered,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Cmd::Serve(args) => serve(args),
        Cmd::Verify { data_dir } => verify(&data_dir),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let tiers = match TierPolicy::parse(&args.tiers) {
        Ok(tiers) => tiers,
        Err(error) => {
            eprintln!("tally: --tiers: {error}");
            return ExitCode::from(64);
        }
    };
    if args.segment_mib == 0 || args.segment_mib > 1024 {
        eprintln!("tally: --segment-mib must be between 1 and 1024");
        return ExitCode::from(64);
    }
    let config = EngineConfig {
        durability: match args.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Buffered => Durability::Buffered,
        },
        segment_bytes: args.segment_mib << 20,
        policy: Policy {
            tiers,
            rate_table: RateTable {
                version: args.rate_table_version.clone(),
                points_per_theo_dollar_milli: args.points_per_theo_dollar_milli,
            },
        },
        ..EngineConfig::new(&args.data_dir)
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(async move {
        let engine = match tokio::task::spawn_blocking(move || Engine::start(config, Arc::new(SystemClock))).await {
            Ok(Ok(engine)) => engine,
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot start the ledger");
                eprintln!("tally: cannot start: {error}");
                return ExitCode::from(2);
            }
            Err(error) => panic!("engine start panicked: {error}"),
        };
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("tally: cannot listen on {}: {error}", args.listen);
                tokio::task::spawn_blocking(move || engine.shutdown())
                    .await
                    .expect("shutdown");
                return ExitCode::from(2);
            }
        };
        let address = listener.local_addr().expect("a bound listener has an address");
        println!("tally listening on {address} (data dir {})", args.data_dir.display());
        let sweeper = sweeper::spawn(engine.handle(), Duration::from_millis(args.sweep_interval_ms.max(1)));
        let served = tally::api::serve(engine.handle(), listener, shutdown_signal()).await;
        sweeper.abort();
        tracing::info!("no longer accepting calls; stopping the ledger");
        tokio::task::spawn_blocking(move || engine.shutdown())
            .await
            .expect("shutdown");
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tally: server error: {error}");
                ExitCode::from(1)
            }
        }
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutdown requested");
}

fn verify(data_dir: &std::path::Path) -> ExitCode {
    let log_dir = data_dir.join("log");
    if !log_dir.is_dir() {
        eprintln!("tally verify: {} has no log directory", data_dir.display());
        return ExitCode::from(64);
    }
    match log::verify(&log_dir) {
        Ok(verified) => {
            println!("ok: {} records in {} segments", verified.head.seq, verified.segments);
            println!("head sequence: {}", verified.head.seq);
            println!("head hash: {}", hex(&verified.head.hash));
            if let Some((seq, bytes)) = verified.torn_tail {
                println!("torn tail: {bytes} bytes from sequence {seq} were never acknowledged and are cut off when the server opens the log");
            }
            ExitCode::SUCCESS
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

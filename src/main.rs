//! `tally`: the ledger server and its offline tools.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[path = "cli/args.rs"]
mod args;
#[path = "cli/client.rs"]
mod client;
#[path = "cli/client_args.rs"]
mod client_args;
#[path = "cli/offline.rs"]
mod offline;
#[path = "cli/serve.rs"]
mod serve;
#[path = "cli/tools.rs"]
mod tools;

use args::{AuditQuery, BenchArgs, Format, LogFormat, ReplayArgs, ServeArgs};
use client_args::{DeliveriesCommand, DlqCommand, KeysCommand, TargetArgs, TokenCommand};

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Tally: a loyalty-points ledger on an append-only, blake3-chained log"
)]
struct Cli {
    /// Log lines for people (human, the default) or one JSON object per line (json); which
    /// lines come from TALLY_LOG (e.g. info, tally=debug).
    #[arg(long, global = true, env = "TALLY_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the ledger server (gRPC) on a data directory.
    Serve(Box<ServeArgs>),
    /// Check a data directory's log offline: every record's hash and the whole chain.
    /// Exits 0 if sound, 2 on corruption (naming the bad sequence number), 3 if the log
    /// does not contain the digest given with --expect.
    Verify {
        /// The data directory (the one `serve` was given).
        data_dir: PathBuf,
        /// A digest saved earlier, SEQUENCE:HASH (as `verify` prints it): the log must still
        /// hold that record with that chain hash, i.e. nothing up to it was rewritten or lost.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Print a window of events (reads the log only; safe beside a running server).
    Replay(ReplayArgs),
    /// Fold projections again from the log, compare with the live ones, and swap them in.
    /// Needs the server stopped (use the StartRebuild RPC while it runs).
    Rebuild {
        data_dir: PathBuf,
        /// One projection (history, idempotency, correlation, actor).
        #[arg(long)]
        projection: Option<String>,
        /// Compare only; exit 1 if a projection differs from the fold of the log.
        #[arg(long)]
        verify: bool,
        /// Start from the latest projection snapshot file instead of sequence 1.
        #[arg(long)]
        from_snapshot: bool,
    },
    /// Load a running server over gRPC and report throughput, latency percentiles and errors.
    /// Its awards are real commands: they stay in the server's log for good, in the tenant
    /// it runs as (`--tenant`, "default" unless given), on accounts bench-0, bench-1, ….
    /// Point it at a server for trials, not at a ledger in use.
    Bench(BenchArgs),
    /// Send external events from a JSON-lines file to a running server (docs/INGEST.md).
    /// Safe to run again: events already accepted are answered as duplicates.
    Ingest {
        /// One event per line: {"source", "external_id", "type", "payload": {…}}.
        file: PathBuf,
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Inspect and operate the dead-letter queue of a running server.
    Dlq {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Operator tokens, made offline with the server's key ring.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// API keys of a running server, for services that sign their calls (admin).
    Keys {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Webhook endpoints and their deliveries on a running server (admin; docs/DELIVERIES.md).
    Deliveries {
        #[command(flatten)]
        target: TargetArgs,
        #[command(subcommand)]
        command: DeliveriesCommand,
    },
    /// Who changed what, when and why (reads the log only; safe beside a running server).
    Audit {
        data_dir: PathBuf,
        /// Only this tenant (before or after the query).
        #[arg(long, global = true)]
        tenant: Option<String>,
        /// How to print (before or after the query).
        #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
        format: Format,
        #[command(subcommand)]
        query: AuditQuery,
    },
}

/// mimalloc instead of the C library's malloc: the sequencer allocates each record's strings
/// and frees them on other threads once answered, and glibc's arenas spent a fifth of the
/// sequencer's time in `malloc`, `free` and consolidation; mimalloc's per-thread free
/// lists took the in-process durable batched award rate from 119k to 145k a second
/// (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Serve(args) = cli.command {
        return serve::serve(*args, cli.log_format);
    }
    let filter = std::env::var("TALLY_LOG").unwrap_or_else(|_| "info".into());
    serve::init_logs(cli.log_format.unwrap_or(LogFormat::Human), &filter);
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled above"),
        Cmd::Verify { data_dir, expect } => tools::verify(&data_dir, expect.as_deref()),
        Cmd::Replay(args) => offline::replay(args),
        Cmd::Bench(args) => tools::bench(args),
        Cmd::Ingest { file, target } => client::ingest(&file, target),
        Cmd::Dlq { target, command } => client::dlq(target, command),
        Cmd::Token {
            command:
                TokenCommand::Issue {
                    tenant,
                    subject,
                    roles,
                    ttl_seconds,
                    keys,
                },
        } => tools::issue_token(&tenant, &subject, &roles, ttl_seconds, &keys),
        Cmd::Keys { target, command } => client::keys(target, command),
        Cmd::Deliveries { target, command } => client::deliveries(target, command),
        Cmd::Rebuild {
            data_dir,
            projection,
            verify,
            from_snapshot,
        } => offline::rebuild(&data_dir, projection.as_deref(), verify, from_snapshot),
        Cmd::Audit {
            data_dir,
            tenant,
            format,
            query,
        } => offline::audit(&data_dir, tenant, format, query),
    }
}

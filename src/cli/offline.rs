//! The offline tools: they read a data directory, never the network.

use super::args::{AuditQuery, Format, ReplayArgs};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;
use tally::engine::{jobs, JobControl};
use tally::log::{LogReader, ReadLog};
use tally::projection::{HistoryView, HoldView, ProjectionName, Projections};
use tally::query::{asof, json, time, EventFilter, Replay, Window};

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tally: {message}");
    ExitCode::from(1)
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("tally: {message}");
    ExitCode::from(64)
}

fn open_log(data_dir: &Path) -> Result<LogReader, ExitCode> {
    let dir = data_dir.join("log");
    if !dir.is_dir() {
        return Err(usage(format!("{} has no log directory", data_dir.display())));
    }
    LogReader::open(&dir).map_err(|e| {
        eprintln!("tally: {e}");
        ExitCode::from(2)
    })
}

/// `SEQUENCE:HASH` must be a record of the log.
pub fn check_digest(log_dir: &Path, digest: &str) -> ExitCode {
    let Some((seq, hash)) = digest
        .split_once(':')
        .and_then(|(s, h)| Some((s.parse::<u64>().ok()?, h.to_ascii_lowercase())))
    else {
        return usage("--expect takes SEQUENCE:HASH, as `tally verify` prints them");
    };
    // A placeholder taken literally (`4:<hash>`) is a mistake of the command line, not a
    // log rewritten under a digest.
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return usage(format!(
            "--expect {digest}: the hash is 64 hexadecimal digits, as `tally verify` prints it"
        ));
    }
    let reader = match LogReader::open(log_dir) {
        Ok(reader) => reader,
        Err(e) => return fail(e),
    };
    match tally::log::read_one(&reader, seq) {
        Ok(Some(record)) if tally::hex::hex(&record.hash) == hash => {
            println!("digest matches: sequence {seq} has hash {hash}");
            ExitCode::SUCCESS
        }
        Ok(Some(record)) => {
            println!("DIGEST MISMATCH at sequence {seq}: the log has {}, the digest says {hash}; the log was rewritten up to there", tally::hex::hex(&record.hash));
            ExitCode::from(3)
        }
        Ok(None) => {
            println!(
                "DIGEST MISMATCH: the log ends at {} and no longer has sequence {seq}",
                reader.head().seq
            );
            ExitCode::from(3)
        }
        Err(e) => fail(e),
    }
}

fn print_record(format: Format, record: &tally::domain::Record, out: &mut impl Write) -> std::io::Result<()> {
    match format {
        Format::Jsonl => writeln!(out, "{}", json::to_json_line(record)),
        Format::Table => {
            if !record.event.kind().is_ledger() {
                let e = &record.envelope;
                return writeln!(
                    out,
                    "{:>8}  {}  {:<15} {}/{}  actor={}  corr={}",
                    record.seq,
                    time::format_rfc3339(record.ts_us),
                    record.event.kind().name(),
                    e.tenant,
                    e.stream,
                    e.actor,
                    e.correlation_id
                );
            }
            let row = HistoryView::of(record).expect("every record has a history row");
            let e = &row.effect;
            writeln!(
                out,
                "{:>8}  {}  {:<15} {}/{}  actor={}  points={}  posted {}->{}  held {}->{}  tier {}->{}  corr={}  {}",
                row.seq,
                time::format_rfc3339(row.ts_us),
                record.event.kind().name(),
                record.envelope.tenant,
                row.account_id,
                row.actor,
                row.points,
                e.posted_before,
                e.posted_after,
                e.held_before,
                e.held_after,
                e.tier_before,
                e.tier_after,
                row.correlation_id,
                row.reason
            )
        }
    }
}

/// Runs a replay to stdout, with a progress line on stderr when it is a terminal.
fn run_replay(reader: &LogReader, window: Window, filter: EventFilter, max: u64, format: Format) -> ExitCode {
    let mut replay = Replay::new(reader, window, filter, max);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let show_progress = std::io::stderr().is_terminal();
    loop {
        match replay.next_event() {
            Ok(Some(record)) => {
                if print_record(format, &record, &mut out).is_err() {
                    return ExitCode::SUCCESS; // the reader went away (a closed pipe)
                }
                let progress = replay.progress();
                if show_progress && progress.events_sent.is_multiple_of(1000) {
                    eprint!(
                        "\r{:5.1}%  {} events  at sequence {}",
                        progress.percent, progress.events_sent, progress.position
                    );
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = out.flush();
                eprintln!();
                eprintln!("tally: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let _ = out.flush();
    if show_progress {
        let progress = replay.progress();
        eprintln!(
            "\r100.0%  {} events  at sequence {}",
            progress.events_sent, progress.position
        );
    }
    ExitCode::SUCCESS
}

pub fn replay(args: ReplayArgs) -> ExitCode {
    let reader = match open_log(&args.data_dir) {
        Ok(reader) => reader,
        Err(code) => return code,
    };
    let window = if args.from.is_some() || args.to.is_some() {
        let parse = |t: &Option<String>| t.as_deref().map(time::parse_time).transpose();
        match (parse(&args.from), parse(&args.to)) {
            (Ok(from), Ok(to)) => Window::Time {
                from_us: from.unwrap_or(0),
                to_us: to,
            },
            (Err(e), _) | (_, Err(e)) => return usage(e),
        }
    } else {
        Window::Sequence {
            from: args.from_seq.unwrap_or(1),
            to: args.to_seq,
        }
    };
    let kinds = match EventFilter::parse_kinds(&args.kind) {
        Ok(kinds) => kinds,
        Err(e) => return usage(e),
    };
    let filter = EventFilter {
        tenant: args.tenant,
        kinds,
        accounts: args.account,
        correlation_ids: args.correlation,
        actors: args.actor,
        idempotency: None,
    };
    run_replay(&reader, window, filter, args.max, args.format)
}

pub fn rebuild(data_dir: &Path, projection: Option<&str>, verify_only: bool, from_snapshot: bool) -> ExitCode {
    let names = match projection {
        None => ProjectionName::ALL.to_vec(),
        Some(name) => match ProjectionName::from_name(name) {
            Some(name) => vec![name],
            None => return usage(format!("unknown projection {name:?}")),
        },
    };
    if !data_dir.join("log").is_dir() {
        return usage(format!("{} has no log directory", data_dir.display()));
    }
    // A rebuild writes the projections: it owns the directory while it runs.
    let _owner = match tally::engine::DataDirLock::acquire(data_dir) {
        Ok(owner) => owner,
        Err(e) => return fail(format!("{e}; a running server rebuilds with the StartRebuild RPC")),
    };
    let reader = match open_log(data_dir) {
        Ok(reader) => reader,
        Err(code) => return code,
    };
    let projections = match Projections::open(&data_dir.join("projections")) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let snapshot_dir = data_dir.join("projection-snapshots");
    let lock = Mutex::new(());
    let mut differed = false;
    for name in names {
        let snapshots = from_snapshot.then_some(snapshot_dir.as_path());
        match jobs::rebuild(
            &projections,
            &reader,
            &lock,
            name,
            snapshots,
            verify_only,
            &JobControl::detached(),
        ) {
            Ok(outcome) => {
                differed |= !outcome.matched();
                println!("{}", jobs::describe(&outcome));
            }
            Err(e) => return fail(format!("rebuild of {} failed: {e:?}", name.name())),
        }
    }
    if let Err(e) = projections.flush() {
        return fail(e);
    }
    if verify_only && differed {
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

pub fn audit(data_dir: &Path, tenant: Option<String>, format: Format, query: AuditQuery) -> ExitCode {
    let reader = match open_log(data_dir) {
        Ok(reader) => reader,
        Err(code) => return code,
    };
    let all = Window::Sequence { from: 1, to: None };
    let filter = EventFilter {
        tenant,
        ..EventFilter::default()
    };
    match query {
        AuditQuery::History { account } => run_replay(
            &reader,
            all,
            EventFilter {
                accounts: vec![account],
                ..filter
            },
            0,
            format,
        ),
        AuditQuery::Correlation { correlation_id } => run_replay(
            &reader,
            all,
            EventFilter {
                correlation_ids: vec![correlation_id],
                ..filter
            },
            0,
            format,
        ),
        AuditQuery::Key { key, scope } => run_replay(
            &reader,
            all,
            EventFilter {
                idempotency: Some((key, scope)),
                ..filter
            },
            0,
            format,
        ),
        AuditQuery::Actor { actor, from, to } => {
            let parse = |t: Option<String>| t.as_deref().map(time::parse_time).transpose();
            let window = match (parse(from), parse(to)) {
                (Ok(from), Ok(to)) => Window::Time {
                    from_us: from.unwrap_or(0),
                    to_us: to,
                },
                (Err(e), _) | (_, Err(e)) => return usage(e),
            };
            run_replay(
                &reader,
                window,
                EventFilter {
                    actors: vec![actor],
                    ..filter
                },
                0,
                format,
            )
        }
        AuditQuery::AsOf {
            account,
            sequence,
            time: at,
        } => {
            let seq = match (sequence, at) {
                (Some(seq), _) => seq.min(reader.head().seq),
                (None, Some(at)) => match time::parse_time(&at).map(|t| reader.seq_at_time(t)) {
                    Ok(Ok(seq)) => seq,
                    Ok(Err(e)) => return fail(e),
                    Err(e) => return usage(e),
                },
                (None, None) => return usage("give --sequence or --time"),
            };
            as_of(&reader, filter, &account, seq)
        }
    }
}

fn as_of(reader: &LogReader, filter: EventFilter, account: &str, seq: u64) -> ExitCode {
    let filter = EventFilter {
        accounts: vec![account.to_string()],
        ..filter
    };
    let mut replay = Replay::new(
        reader,
        Window::Sequence {
            from: 1,
            to: Some(seq + 1),
        },
        filter,
        0,
    );
    let (mut rows, mut holds) = (Vec::new(), std::collections::HashMap::new());
    let mut tenants = std::collections::BTreeSet::new();
    loop {
        match replay.next_event() {
            Ok(Some(record)) => {
                tenants.insert(record.envelope.tenant.clone());
                if let Some(hold) = HoldView::reserved(&record) {
                    holds.insert(hold.hold_id, hold);
                }
                rows.push(HistoryView::of(&record).expect("every record has a history row"));
            }
            Ok(None) => break,
            Err(e) => return fail(e),
        }
    }
    if tenants.len() > 1 {
        return usage("the account exists in several tenants; name one with --tenant");
    }
    match asof::account_as_of(seq, &rows, |id| Ok(holds.get(&id).cloned())) {
        Err(e) => fail(e),
        Ok(None) => fail(format!("account {account:?} was not open at sequence {seq}")),
        Ok(Some(state)) => {
            let a = &state.account;
            println!("account {} as of sequence {}", a.account_id, state.seq);
            println!(
                "posted {}  held {}  available {}  lifetime {}  tier {}",
                a.posted,
                a.held,
                a.available(),
                a.lifetime,
                a.tier
            );
            println!(
                "opened {}  last change at sequence {}",
                time::format_rfc3339(a.opened_at_us),
                a.last_seq
            );
            for h in &state.active_holds {
                println!(
                    "active hold {}: {} points, placed {}, expires {}",
                    h.hold_id,
                    h.amount,
                    time::format_rfc3339(h.created_at_us),
                    time::format_rfc3339(h.expires_at_us)
                );
            }
            ExitCode::SUCCESS
        }
    }
}

//! `tally serve`: the effective configuration, logs, and the server run until a stop.

use super::args::{DurabilityArg, LogFormat, OnCorruptArg, ServeArgs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tally::api::EngineSlot;
use tally::config::{Config, DurabilitySetting, LogFormat as ConfigLogFormat, OnCorruptLog, Settings};
use tally::engine::{sweeper, Engine, EngineError, SystemClock};
use tally::log::LogError;

/// Log lines on stderr: `format`, filtered by `filter` (a tracing directive). Command spans
/// (debug level) are logged when they close, with their fields: correlation id, tenant,
/// actor, outcome and sequence numbers.
pub(crate) fn init_logs(format: LogFormat, filter: &str) {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|error| {
        eprintln!("tally: log filter {filter:?} is not valid ({error}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).init(),
    }
}

/// The effective configuration: defaults, then the file, then environment and flags.
pub(crate) fn effective_config(args: &ServeArgs, log_format: Option<LogFormat>) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let c = &mut config;
    if let Some(v) = &args.listen {
        c.server.listen = v.clone();
    }
    if let Some(v) = args.shutdown_grace_seconds {
        c.server.shutdown_grace_seconds = v;
    }
    if let Some(v) = args.on_corrupt_log {
        c.server.on_corrupt_log = match v {
            OnCorruptArg::Stay => OnCorruptLog::Stay,
            OnCorruptArg::Exit => OnCorruptLog::Exit,
        };
    }
    if let Some(v) = &args.data_dir {
        c.storage.data_dir = v.clone();
    }
    if let Some(v) = args.durability {
        c.storage.durability = match v {
            DurabilityArg::Sync => DurabilitySetting::Sync,
            DurabilityArg::Buffered => DurabilitySetting::Buffered,
        };
    }
    if let Some(v) = args.segment_mib {
        c.storage.segment_mib = v;
    }
    if let Some(v) = &args.tiers {
        c.ledger.tiers = v.clone();
    }
    if let Some(v) = &args.rate_table_version {
        c.ledger.rate_table_version = v.clone();
    }
    if let Some(v) = args.points_per_theo_dollar_milli {
        c.ledger.points_per_theo_dollar_milli = v;
    }
    if let Some(v) = args.inbox_capacity {
        c.engine.inbox_capacity = v;
    }
    if let Some(v) = args.snapshot_every_records {
        c.engine.snapshot_every_records = v;
    }
    if let Some(v) = args.projection_snapshot_every_records {
        c.engine.projection_snapshot_every_records = v;
    }
    if let Some(v) = args.projection_cache_mib {
        c.engine.projection_cache_mib = v;
    }
    if let Some(v) = args.projection_flush_seconds {
        c.engine.projection_flush_seconds = v;
    }
    if let Some(v) = args.identity_window_seconds {
        c.engine.identity_window_seconds = v;
    }
    if let Some(v) = args.identity_window_mib {
        c.engine.identity_window_mib = v;
    }
    if let Some(v) = args.sweep_interval_ms {
        c.engine.sweep_interval_ms = v;
    }
    if let Some(v) = args.ingest_max_attempts {
        c.ingest.max_attempts = v;
    }
    if let Some(v) = args.ingest_retry_base_delay_ms {
        c.ingest.retry_base_delay_ms = v;
    }
    if let Some(v) = args.ingest_retry_max_delay_ms {
        c.ingest.retry_max_delay_ms = v;
    }
    if let Some(v) = args.ingest_dedup_window_seconds {
        c.ingest.dedup_window_seconds = v;
    }
    if let Some(v) = args.ingest_dead_letters_per_member_max {
        c.ingest.dead_letters_per_member_max = v;
    }
    if let Some(v) = args.ingest_dead_letters_max {
        c.ingest.dead_letters_max = v;
    }
    if let Some(v) = &args.links_base_url {
        c.links.base_url = v.clone();
    }
    if let Some(v) = &args.auth_keys_file {
        c.auth.keys_file = v.clone();
    }
    if let Some(v) = &args.auth_issuer {
        c.auth.issuer = v.clone();
    }
    if let Some(v) = &args.auth_audience {
        c.auth.audience = v.clone();
    }
    if let Some(v) = args.auth_clock_skew_seconds {
        c.auth.clock_skew_seconds = v;
    }
    if let Some(v) = args.deliveries_poll_interval_ms {
        c.deliveries.poll_interval_ms = v;
    }
    if let Some(v) = args.deliveries_allow_private_networks {
        c.deliveries.allow_private_networks = v;
    }
    if let Some(v) = &args.deliveries_ca_file {
        c.deliveries.ca_file = v.clone();
    }
    if let Some(v) = args.tenant_commands_per_second {
        c.limits.tenant_commands_per_second = v;
    }
    if let Some(v) = args.tenant_burst {
        c.limits.tenant_burst = v;
    }
    if let Some(v) = args.max_calls_in_flight {
        c.limits.max_calls_in_flight = v;
    }
    if let Some(v) = args.max_streams_per_connection {
        c.limits.max_streams_per_connection = v;
    }
    if let Some(v) = &args.metrics_listen {
        c.metrics.listen = v.clone();
    }
    if let Some(v) = &args.log_filter {
        c.log.filter = v.clone();
    }
    if let Some(v) = log_format {
        c.log.format = match v {
            LogFormat::Human => ConfigLogFormat::Human,
            LogFormat::Json => ConfigLogFormat::Json,
        };
    }
    Ok(config)
}

pub(crate) fn serve(args: ServeArgs, log_format: Option<LogFormat>) -> ExitCode {
    let config = match effective_config(&args, log_format) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("tally: configuration: {error}");
            return ExitCode::from(64);
        }
    };
    let settings = match config.settings() {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("tally: configuration: {error}");
            return ExitCode::from(64);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logs(
        match config.log.format {
            ConfigLogFormat::Human => LogFormat::Human,
            ConfigLogFormat::Json => LogFormat::Json,
        },
        &config.log.filter,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    runtime.block_on(run_server(settings))
}

/// Opens the ports first, then recovers: health answers NOT_SERVING until the engine serves.
pub(crate) async fn run_server(settings: Settings) -> ExitCode {
    // Installed first, before the server says anything: a SIGTERM sent after any line it
    // prints finds the handler, never the default action (which would end it unclean).
    let stop_signals = StopSignals::install();
    // One owner per data directory: a second server exits here, before it opens a port.
    let owner = match tally::engine::DataDirLock::acquire(&settings.engine.data_dir) {
        Ok(owner) => owner,
        Err(error) => {
            eprintln!("tally: {error}");
            return ExitCode::from(75);
        }
    };
    let metrics = match tally::telemetry::install() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("tally: cannot install metrics: {error}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tally: cannot listen on {}: {error}", settings.listen);
            return ExitCode::from(2);
        }
    };
    let metrics_listener = match settings.metrics_listen {
        None => None,
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => {
                eprintln!("tally: cannot listen for metrics on {address}: {error}");
                return ExitCode::from(2);
            }
        },
    };
    let data_dir = settings.engine.data_dir.clone();
    let address = listener.local_addr().expect("a bound listener has an address");
    println!("tally listening on {address} (data dir {})", data_dir.display());
    if let Some(listener) = &metrics_listener {
        let address = listener.local_addr().expect("a bound listener has an address");
        println!("tally metrics on http://{address}/metrics");
    }
    let links = match tally::api::link_settings::LinkSettings::for_data_dir(&data_dir, &settings.links_base_url) {
        Ok(links) => links,
        Err(error) => {
            eprintln!("tally: the link key: {error}");
            return ExitCode::from(2);
        }
    };
    let extra_roots = match &settings.delivery_ca_file {
        None => None,
        Some(file) => match std::fs::read(file) {
            Ok(pem) => Some(pem),
            Err(error) => {
                eprintln!("tally: deliveries.ca_file {}: {error}", file.display());
                return ExitCode::from(2);
            }
        },
    };
    let outbound = match tally::outbound::Outbound::new(settings.delivery_destinations, extra_roots.as_deref()) {
        Ok(outbound) => outbound,
        Err(error) => {
            eprintln!("tally: deliveries.ca_file: {error}");
            return ExitCode::from(2);
        }
    };
    let auth = match tally::api::auth::AuthSettings::load(
        &settings.auth_keys_file,
        &settings.auth_issuer,
        &settings.auth_audience,
        settings.auth_clock_skew_seconds,
    ) {
        Ok(auth) => auth,
        Err(error) => {
            eprintln!("tally: the auth keys: {error}");
            return ExitCode::from(2);
        }
    };
    let slot = EngineSlot::recovering(tally::api::ApiSettings {
        auth,
        links,
        destinations: settings.delivery_destinations,
        admission: settings.admission,
        limiter: settings
            .tenant_limit
            .map(|limit| tally::api::limits::TenantLimiter::new(limit, Arc::new(SystemClock))),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stop_rx = stop_rx.clone();
        async move {
            let _ = stop_rx.wait_for(|&stop| stop).await;
        }
    };
    let grace = settings.shutdown_grace;
    tokio::spawn(async move {
        stop_signals.wait().await;
        let _ = stop_tx.send(true);
        // The stop drains calls, ends streams and writes the snapshot; past the grace it is
        // cut short. Nothing acknowledged is lost by that: every acknowledged command is on
        // disk, and a commit under way was never acknowledged (its torn tail is cut on start).
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            tracing::error!(
                grace_seconds = grace.as_secs(),
                "the stop outlasted its grace; stopping hard"
            );
            eprintln!(
                "tally: the stop outlasted its grace of {} s; stopping hard",
                grace.as_secs()
            );
            std::process::exit(1);
        });
    });
    let metrics_task = metrics_listener
        .map(|listener| tokio::spawn(tally::telemetry::serve(listener, metrics, slot.clone(), stopped())));
    let server = tokio::spawn(tally::api::serve_slot(slot.clone(), listener, stopped()));
    let config = settings.engine.clone();
    let started = tokio::task::spawn_blocking(move || Engine::start_owned(config, Arc::new(SystemClock), owner)).await;
    let engine = match started.expect("engine start does not panic") {
        Ok(engine) => engine,
        Err(error) => {
            tracing::error!(%error, "cannot start the ledger");
            eprintln!("tally: cannot start: {error}");
            let corrupt = matches!(
                error,
                EngineError::Log(LogError::Corrupt { .. })
                    | EngineError::LogBehind { .. }
                    | EngineError::Unfoldable { .. }
            );
            if corrupt && settings.on_corrupt_log == OnCorruptLog::Stay {
                slot.refuse(error.to_string());
                eprintln!("tally: health answers NOT_SERVING and every call DATA_LOSS until stopped");
                stopped().await;
            }
            server.abort();
            return ExitCode::from(2);
        }
    };
    slot.fill(engine.handle());
    tracing::info!(head = engine.report().head_seq, "ledger serving");
    println!("tally serving: head sequence {}", engine.report().head_seq);
    // Every call needs a credential: say where the keys that make them are.
    match std::env::var("TALLY_AUTH_KEYS") {
        Ok(keys) if !keys.trim().is_empty() => println!("tally auth keys: from TALLY_AUTH_KEYS"),
        _ => println!(
            "tally auth keys: {} (tally token issue --keys {} --tenant T --subject S --role R)",
            settings.auth_keys_file.display(),
            settings.auth_keys_file.display()
        ),
    }
    let sweeper = sweeper::spawn(engine.handle(), settings.sweep_interval);
    let keys = slot.auth().keys.clone();
    let deliverer = tally::deliverer::Deliverer::new(engine.handle(), keys, outbound);
    let (deliveries_stop, deliveries_stopped) = tokio::sync::watch::channel(false);
    let deliveries = tokio::spawn(deliverer.run(settings.delivery_poll_interval, deliveries_stopped));
    let served = server.await.expect("the server task does not panic");
    sweeper.abort();
    // An attempt under way may wait for its receiver up to its request timeout; one that is
    // cut short is made again after the restart (at-most-once ones are settled as failed).
    let _ = deliveries_stop.send(true);
    if tokio::time::timeout(Duration::from_secs(5), deliveries).await.is_err() {
        tracing::warn!("delivery attempts still under way at shutdown; they are retried after the restart");
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
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
}

/// SIGTERM and SIGINT, each listened for from the moment it is installed.
pub(crate) struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub(crate) fn install() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            terminate: signal(SignalKind::terminate()).expect("SIGTERM handler installs"),
            interrupt: signal(SignalKind::interrupt()).expect("SIGINT handler installs"),
        }
    }

    pub(crate) async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        tracing::info!("shutdown requested");
    }
}

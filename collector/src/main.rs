//! `shoal-collector`: the daemon. Flags override the optional TOML file,
//! which overrides the defaults (all on loopback).

use clap::Parser;
use shoal_collector::Config;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Merges the deltas of shoal SDK instances into cluster rollups and serves
/// them to Prometheus.
#[derive(Parser, Debug)]
#[command(name = "shoal-collector", version, about)]
struct Args {
    /// TOML configuration file (every key optional; unknown keys are errors).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC ingest address [default: 127.0.0.1:7171].
    #[arg(long)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz and /api/v1 [default: 127.0.0.1:9171].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Rollup interval in seconds [default: 10].
    #[arg(long)]
    interval_secs: Option<u64>,
    /// Retention of interval rollups in seconds [default: 3600].
    #[arg(long)]
    retention_secs: Option<u64>,
    /// Window of the quantiles on /metrics in seconds [default: 60].
    #[arg(long)]
    summary_window_secs: Option<u64>,
    /// Remote-write endpoint to push every closed interval to (repeatable;
    /// added to the `[[remote_write]]` tables, with their defaults).
    #[arg(long = "remote-write", value_name = "URL")]
    remote_write: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut config = match &args.config {
        Some(path) => match Config::from_toml_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("shoal-collector: {e}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if let Some(a) = args.grpc_listen {
        config.grpc_listen = a;
    }
    if let Some(a) = args.http_listen {
        config.http_listen = a;
    }
    if let Some(v) = args.interval_secs {
        config.interval_secs = v;
    }
    if let Some(v) = args.retention_secs {
        config.retention_secs = v;
    }
    if let Some(v) = args.summary_window_secs {
        config.summary_window_secs = v;
    }
    config.remote_write.extend(args.remote_write.iter().map(shoal_collector::config::RemoteWriteConfig::new));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-collector: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("shoal-collector: {e}");
        return ExitCode::from(2);
    }
    let shared = shoal_collector::Shared::new(config);
    let served = runtime.block_on(async {
        tokio::spawn(reload_on_sighup(shared.clone(), args.config.clone()));
        shoal_collector::serve_shared(shared, shutdown_signal()).await
    });
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-collector: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Re-reads the config file on every SIGHUP and applies what can change
/// while running (blocklist, series limits, ...). Without a file, SIGHUP
/// only logs.
async fn reload_on_sighup(shared: shoal_collector::Shared, path: Option<PathBuf>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP, config reload disabled: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match &path {
                Some(path) => {
                    tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
                    // Errors are logged and counted by reload_from_file.
                    let _ = shared.reload_from_file(path);
                }
                None => tracing::info!("SIGHUP: no config file to reload"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (shared, path);
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

//! `shoal-collector`, the daemon: command line, logging, signals (SIGHUP
//! reloads, SIGINT/SIGTERM stop). Flags override the optional TOML file,
//! which overrides the defaults (all on loopback). The binary is
//! `run(std::env::args_os())`; tests run the same function in a child
//! process to get the real daemon without naming another package's binary.

use crate::config::parse_listen;
use crate::Config;
use clap::{Parser, ValueEnum};
use std::fmt::Display;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status: bad command line or configuration (clap's usage errors too).
const EXIT_CONFIG: u8 = 2;
/// Exit status: could not serve (bind, runtime, data dir or server failure).
const EXIT_SERVE: u8 = 1;

const AFTER_HELP: &str = "\
Listen addresses: IP:PORT (127.0.0.1:9171, 0.0.0.0:9171 for every interface,
[::1]:9171), HOST:PORT (localhost:9171, resolved once at start: its first
IPv4 address, else its first IPv6 one) or :PORT (that port on 127.0.0.1; an
empty host never means every interface).

Logging: every log line goes to stderr; stdout stays empty (only --help and
--version print there). RUST_LOG filters (default: info). --log-format text
colours its output only when stderr is a terminal and NO_COLOR is unset;
--log-format json writes one JSON object per line.

Signals: SIGHUP reloads the config file (limits, blocklist, gauge rules, ...)
and re-reads the TLS certificate, key and client CA and the tokens files;
SIGINT and SIGTERM stop after draining in-flight requests.

Security: both listeners stay on loopback unless an address says otherwise.
Beyond loopback, use --tls-cert/--tls-key (TLS on gRPC and HTTP) and
--auth-tokens-file (a bearer token on every batch); the collector warns at
start when either is missing there.

Exit status:
  0  stopped by SIGINT or SIGTERM
  1  could not serve: a listen address cannot be bound, the data dir cannot be restored, or a server failed
  2  bad command line or configuration: nothing was started";

/// Merges the deltas of shoal SDK instances into cluster rollups and serves
/// them to Prometheus.
#[derive(Parser, Debug)]
#[command(name = "shoal-collector", version, about, after_help = AFTER_HELP)]
struct Args {
    /// TOML configuration file (every key optional; unknown keys are errors).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// gRPC ingest address [default: 127.0.0.1:7171].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    grpc_listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz and /api/v1 [default: 127.0.0.1:9171].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    http_listen: Option<SocketAddr>,
    /// Rollup interval in seconds [default: 10].
    #[arg(long, value_name = "SECS", value_parser = at_least_one)]
    interval_secs: Option<u64>,
    /// Retention of interval rollups in seconds [default: 3600].
    #[arg(long, value_name = "SECS", value_parser = at_least_one)]
    retention_secs: Option<u64>,
    /// Window of the quantiles on /metrics in seconds [default: 60].
    #[arg(long, value_name = "SECS", value_parser = at_least_one)]
    summary_window_secs: Option<u64>,
    /// Remote-write endpoint to push every closed interval to (repeatable;
    /// added to the `[[remote_write]]` tables, with their defaults).
    #[arg(long = "remote-write", value_name = "URL")]
    remote_write: Vec<String>,
    /// Directory of the write-ahead log and checkpoints (durable collector)
    /// [default: none, in memory only].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Upstream collector to forward every interval's merged deltas to, as
    /// one instance of the next tier (repeatable: several are shards; added
    /// to the file's `upstream` list).
    #[arg(long = "upstream", value_name = "URL")]
    upstream: Vec<String>,
    /// Instance label sent upstream, e.g. `region=eu` (repeatable; added to
    /// the file's `upstream_labels`).
    #[arg(long = "upstream-label", value_name = "KEY=VALUE", value_parser = parse_label)]
    upstream_label: Vec<(String, String)>,
    /// StatsD / DogStatsD lines over UDP and newline-delimited TCP on ADDR
    /// [default: none, off].
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    statsd_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM) of both listeners; needs --tls-key.
    /// Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that gRPC clients' certificates must chain to (mutual TLS
    /// on ingest). Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// Bearer tokens required on gRPC ingest, one a line: `token` or
    /// `token tenant`. Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    auth_tokens_file: Option<PathBuf>,
    /// Bearer tokens required on HTTP (all but /healthz and /readyz).
    /// Re-read on SIGHUP.
    #[arg(long, value_name = "FILE")]
    http_auth_tokens_file: Option<PathBuf>,
    /// Format of the log lines on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, fields, target).
    Json,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.to_string()),
    }
}

/// The settings given on the command line. They win over the file, at start
/// and on every SIGHUP reload.
#[derive(Clone, Debug)]
struct Overrides {
    grpc_listen: Option<SocketAddr>,
    http_listen: Option<SocketAddr>,
    interval_secs: Option<u64>,
    retention_secs: Option<u64>,
    summary_window_secs: Option<u64>,
    remote_write: Vec<String>,
    data_dir: Option<PathBuf>,
    upstream: Vec<String>,
    upstream_labels: Vec<(String, String)>,
    statsd_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    auth_tokens_file: Option<PathBuf>,
    http_auth_tokens_file: Option<PathBuf>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(a) = self.grpc_listen {
            config.grpc_listen = a;
        }
        if let Some(a) = self.http_listen {
            config.http_listen = a;
        }
        if let Some(v) = self.interval_secs {
            config.interval_secs = v;
        }
        if let Some(v) = self.retention_secs {
            config.retention_secs = v;
        }
        if let Some(v) = self.summary_window_secs {
            config.summary_window_secs = v;
        }
        if let Some(d) = &self.data_dir {
            config.data_dir = Some(d.clone());
        }
        config.remote_write.extend(self.remote_write.iter().map(crate::config::RemoteWriteConfig::new));
        for u in &self.upstream {
            if !config.upstream.contains(u) {
                config.upstream.push(u.clone());
            }
        }
        config.upstream_labels.extend(self.upstream_labels.iter().cloned());
        if let Some(a) = self.statsd_listen {
            config.statsd_listen = Some(a);
        }
        let paths = [
            (&self.tls_cert, &mut config.tls_cert),
            (&self.tls_key, &mut config.tls_key),
            (&self.tls_client_ca, &mut config.tls_client_ca),
            (&self.auth_tokens_file, &mut config.auth_tokens_file),
            (&self.http_auth_tokens_file, &mut config.http_auth_tokens_file),
        ];
        for (flag, setting) in paths {
            if let Some(path) = flag {
                *setting = Some(path.clone());
            }
        }
    }

    /// `(config key, flag, value)` of each setting given on the command line.
    fn given(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut given = Vec::new();
        let mut add = |key, flag, value: Option<String>| {
            if let Some(v) = value {
                given.push((key, flag, v));
            }
        };
        add("grpc_listen", "--grpc-listen", self.grpc_listen.map(|a| a.to_string()));
        add("http_listen", "--http-listen", self.http_listen.map(|a| a.to_string()));
        add("interval_secs", "--interval-secs", self.interval_secs.map(|v| v.to_string()));
        add("retention_secs", "--retention-secs", self.retention_secs.map(|v| v.to_string()));
        add("summary_window_secs", "--summary-window-secs", self.summary_window_secs.map(|v| v.to_string()));
        add("data_dir", "--data-dir", self.data_dir.as_ref().map(|d| d.display().to_string()));
        add("statsd_listen", "--statsd-listen", self.statsd_listen.map(|a| a.to_string()));
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        add("tls_cert", "--tls-cert", path(&self.tls_cert));
        add("tls_key", "--tls-key", path(&self.tls_key));
        add("tls_client_ca", "--tls-client-ca", path(&self.tls_client_ca));
        add("auth_tokens_file", "--auth-tokens-file", path(&self.auth_tokens_file));
        add("http_auth_tokens_file", "--http-auth-tokens-file", path(&self.http_auth_tokens_file));
        add("upstream", "--upstream", (!self.upstream.is_empty()).then(|| self.upstream.join(" --upstream ")));
        let labels: Vec<String> = self.upstream_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        add("upstream_labels", "--upstream-label", (!labels.is_empty()).then(|| labels.join(" --upstream-label ")));
        given
    }

    /// A validation error, with the flags behind the settings it names.
    fn explain(&self, error: String) -> String {
        let flags: Vec<String> =
            self.given().into_iter().filter(|(key, _, _)| error.contains(key)).map(|(_, flag, v)| format!("{flag} {v}")).collect();
        if flags.is_empty() {
            error
        } else {
            format!("{error} (given on the command line: {})", flags.join(", "))
        }
    }
}

/// The daemon: parses `args` (the program name first), serves until SIGINT
/// or SIGTERM, and returns the exit status documented in `--help`.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(a) => a,
        Err(e) => {
            // What `Args::parse` would do, without exiting the process.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    init_logging(args.log_format);
    let overrides = Overrides {
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        interval_secs: args.interval_secs,
        retention_secs: args.retention_secs,
        summary_window_secs: args.summary_window_secs,
        remote_write: args.remote_write.clone(),
        data_dir: args.data_dir.clone(),
        upstream: args.upstream.clone(),
        upstream_labels: args.upstream_label.clone(),
        statsd_listen: args.statsd_listen,
        tls_cert: args.tls_cert.clone(),
        tls_key: args.tls_key.clone(),
        tls_client_ca: args.tls_client_ca.clone(),
        auth_tokens_file: args.auth_tokens_file.clone(),
        http_auth_tokens_file: args.http_auth_tokens_file.clone(),
    };
    let mut config = match &args.config {
        Some(path) => match Config::from_toml_file(path) {
            Ok(c) => c,
            Err(e) => return fatal(e, EXIT_CONFIG),
        },
        None => Config::default(),
    };
    overrides.apply(&mut config);
    if let Err(e) = config.validate() {
        return fatal(overrides.explain(e), EXIT_CONFIG);
    }
    // Certificates, keys and tokens files: unreadable or invalid is a
    // configuration error, found before anything starts.
    let security = crate::security::Security::load(&config, Default::default()).map(drop);
    if let Err(e) = security.and_then(|()| crate::forward::upstream_security(&config).map(drop)) {
        return fatal(overrides.explain(e), EXIT_CONFIG);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fatal(format!("cannot start the runtime: {e}"), EXIT_SERVE),
    };
    let shared = match crate::Shared::open(config) {
        Ok(s) => s,
        Err(e) => return fatal(e, EXIT_SERVE),
    };
    let served = runtime.block_on(async {
        tokio::spawn(reload_on_sighup(shared.clone(), args.config.clone(), overrides));
        crate::serve_shared(shared, shutdown_signal()).await
    });
    match served {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fatal(e, EXIT_SERVE),
    }
}

/// Logs go to stderr, in `format`; text has colours only on a terminal and
/// never with `NO_COLOR` set (<https://no-color.org>).
fn init_logging(format: LogFormat) {
    let filter = || tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).with_ansi(colour).try_init().ok();
        }
        LogFormat::Json => {
            tracing_subscriber::fmt().json().with_env_filter(filter()).with_writer(std::io::stderr).with_ansi(false).try_init().ok();
        }
    }
}

/// Reports why the collector cannot run and returns `code`. The message is
/// logged (in the chosen format) unless RUST_LOG hides errors, in which case
/// it is still written to stderr: a fatal error is never silent.
fn fatal(message: impl Display, code: u8) -> ExitCode {
    if tracing::enabled!(tracing::Level::ERROR) {
        tracing::error!("{message}");
    } else {
        eprintln!("shoal-collector: {message}");
    }
    ExitCode::from(code)
}

/// Re-reads the config file on every SIGHUP and applies what can change
/// while running (blocklist, series limits, ...). The command line still wins
/// over the file, so a setting given there is never reported as changed.
/// Without a file, SIGHUP only logs.
async fn reload_on_sighup(shared: crate::Shared, path: Option<PathBuf>, overrides: Overrides) {
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
            // Certificates, keys and tokens: re-read whether or not there
            // is a config file (logged and counted by reload_security).
            let _ = shared.reload_security();
            let Some(path) = &path else {
                tracing::info!("SIGHUP: no config file to reload");
                continue;
            };
            tracing::info!(path = %path.display(), "SIGHUP: reloading the config");
            match Config::from_toml_file(path) {
                Ok(mut config) => {
                    overrides.apply(&mut config);
                    // Logged and counted by reload.
                    let _ = shared.reload(&config);
                }
                Err(e) => {
                    shared.stats.config_reload_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!("config reload refused, keeping the old settings: {e}");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (shared, path, overrides);
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

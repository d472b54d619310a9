//! Collector settings: defaults, the optional TOML file, and validation.

use crate::remote_write::{HistogramMode, RemoteWriteTarget};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the gauges of several instances roll up into one cluster value.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GaugeRule {
    /// Sum over instances (the default: queue depths, connections, memory).
    #[default]
    Sum,
    /// Smallest instance value.
    Min,
    /// Largest instance value.
    Max,
    /// Mean over instances.
    Mean,
}

impl GaugeRule {
    /// Combines instance values (never empty).
    pub fn apply(self, values: &[f64]) -> f64 {
        match self {
            GaugeRule::Sum => values.iter().sum(),
            GaugeRule::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            GaugeRule::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            GaugeRule::Mean => values.iter().sum::<f64>() / values.len() as f64,
        }
    }
}

/// Everything the collector can be told. Every field has a default; the TOML
/// file and the command line override them. Serializes to the TOML it reads
/// (the README's sample is checked against `Config::default()` that way).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC ingest address (any form [`parse_listen`] accepts).
    #[serde(deserialize_with = "deserialize_listen")]
    pub grpc_listen: SocketAddr,
    /// HTTP address of `/metrics`, `/healthz` and `/api/v1/...` (any form
    /// [`parse_listen`] accepts).
    #[serde(deserialize_with = "deserialize_listen")]
    pub http_listen: SocketAddr,
    /// Width of the aligned rollup intervals, in seconds.
    pub interval_secs: u64,
    /// How long interval rollups are kept, in seconds.
    pub retention_secs: u64,
    /// Window of the quantiles exposed on `/metrics`, in seconds.
    pub summary_window_secs: u64,
    /// An instance silent for this many intervals stops contributing gauges.
    pub gauge_stale_intervals: u64,
    /// An instance silent this long is forgotten (its dedup state too), in seconds.
    pub instance_expiry_secs: u64,
    /// Gauge rollup rule per metric name (default: sum).
    pub gauge_rules: HashMap<String, GaugeRule>,
    /// Quantiles shown on `/metrics` for every histogram.
    pub quantiles: Vec<f64>,
    /// On shutdown, how long in-flight requests may take to finish, in ms.
    pub shutdown_grace_ms: u64,
    /// Most series one instance may define; its further series are rejected
    /// one by one (reason `series_limit_instance`). Reloadable.
    pub max_series_per_instance: usize,
    /// Most rollup series per metric name; updates that would create more
    /// are rejected one by one (`series_limit_metric`). Reloadable.
    pub max_series_per_metric: usize,
    /// Most rollup series in all; updates that would create more are
    /// rejected one by one (`series_limit_total`). Reloadable.
    pub max_series_total: usize,
    /// Metric names and glob patterns (`*`, `?`, `[a-z]`, `{a,b}`) refused
    /// by the collector and pushed to every SDK in each flush response, so
    /// the SDKs stop sending them. Reloadable (SIGHUP).
    pub blocklist: Vec<String>,
    /// Batches that may wait for or be in the merge step at once; past it,
    /// batches are answered `RESOURCE_EXHAUSTED` with a retry hint.
    pub ingest_queue: usize,
    /// The retry hint of an overloaded answer (`retry-after-ms` metadata);
    /// SDKs add jitter. Reloadable.
    pub overload_retry_after_ms: u64,
    /// Remote-write targets (`[[remote_write]]` tables; `--remote-write URL`
    /// adds more): every closed rollup interval is pushed to each.
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Directory of the write-ahead log and checkpoints: acknowledged
    /// batches survive a crash. `None`: in memory only. Needs a restart.
    pub data_dir: Option<PathBuf>,
    /// A rollup series with no update for this long leaves memory,
    /// `/metrics` and the API, in seconds; 0 = never. Needs a restart.
    pub series_expiry_secs: u64,
    /// Upstream collectors (`--upstream URL`, repeatable): every interval
    /// this collector forwards what it merged to them as one instance of
    /// the next tier; several are shards (each rollup series goes to one,
    /// by rendezvous hashing). The list is reloadable (SIGHUP); turning
    /// forwarding on or off needs a restart.
    pub upstream: Vec<String>,
    /// Instance labels this collector sends upstream (e.g. `region`), added
    /// to every series it forwards. Needs a restart.
    pub upstream_labels: BTreeMap<String, String>,
    /// Labels added to every series pushed to remote-write targets (where
    /// the series lacks the key), as Prometheus' `external_labels`: each
    /// shard of a sharded tier writing to one TSDB needs its own (e.g.
    /// `shard = "0"`), else a series that moves between shards is written
    /// by both under one name. Reloadable.
    pub external_labels: BTreeMap<String, String>,
    /// StatsD / DogStatsD lines over UDP, and newline-delimited over TCP,
    /// on this address (any form [`parse_listen`] accepts). `None`: off.
    /// Needs a restart, as do the other `statsd_*` settings.
    #[serde(deserialize_with = "deserialize_listen_opt", skip_serializing_if = "Option::is_none")]
    pub statsd_listen: Option<SocketAddr>,
    /// UDP receive buffer of the StatsD socket, in bytes (`SO_RCVBUF`; the
    /// kernel caps it at `net.core.rmem_max`). 0: the system's default.
    pub statsd_recv_buffer: usize,
    /// Every this many ms, each StatsD source's lines become one batch.
    pub statsd_flush_ms: u64,
    /// StatsD sources (peer IPs per transport) held at most; lines of one
    /// more are refused (`source_limit`).
    pub statsd_max_sources: usize,
    /// Series one StatsD source may hold; further lines of new series are
    /// refused (`series_limit`). All sources together hold at most
    /// `max_series_total`.
    pub statsd_max_series_per_source: usize,
    /// Distinct members a StatsD set counts per interval, exactly; further
    /// new members are refused (`set_full`).
    pub statsd_max_set_size: usize,
    /// Largest StatsD UDP datagram and TCP line, in bytes; larger ones are
    /// refused (`datagram_too_large`, `line_too_long`).
    pub statsd_max_datagram_bytes: usize,
    /// TLS certificate chain (PEM) of both listeners; with `tls_key`, gRPC
    /// ingest and HTTP speak TLS only. Re-read on SIGHUP; a new path needs a
    /// restart, as do the other paths below.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) whose certificates gRPC clients must present: mutual TLS on
    /// ingest. Needs `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens required on gRPC ingest: one a line, `token` or `token
    /// tenant` (the tenant becomes the `tenant` label of everything the token
    /// sends). Re-read on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Bearer tokens required on HTTP (`/metrics`, `/api/v1/`, the page;
    /// never on `/healthz` and `/readyz`); same format, tenants ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_auth_tokens_file: Option<PathBuf>,
    /// CA (PEM) trusted for `https://` upstreams, beside the system roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_tls_ca_file: Option<PathBuf>,
    /// File holding the bearer token sent to the upstreams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_auth_token_file: Option<PathBuf>,
}

fn deserialize_listen_opt<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text).map(Some).map_err(serde::de::Error::custom)
}

/// One `[[remote_write]]` table.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// Endpoint, e.g. `http://127.0.0.1:9090/api/v1/write` (plain http).
    pub url: String,
    /// `summary` (default), `native` or `both`.
    #[serde(default)]
    pub histograms: HistogramMode,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// File holding a bearer token (read at each send).
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// CA (PEM) trusted for an `https://` url, beside the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Bound on one request, in ms [default: 30000].
    #[serde(default = "default_remote_write_timeout_ms")]
    pub timeout_ms: u64,
    /// Intervals queued at most; past it the oldest is dropped [default: 64].
    #[serde(default = "default_remote_write_queue_size")]
    pub queue_size: usize,
}

fn default_remote_write_timeout_ms() -> u64 {
    crate::remote_write::sender::DEFAULT_TIMEOUT.as_millis() as u64
}

fn default_remote_write_queue_size() -> usize {
    crate::remote_write::sender::DEFAULT_QUEUE_CAPACITY
}

impl RemoteWriteConfig {
    /// A target at `url` with the defaults (what `--remote-write URL` adds).
    pub fn new(url: impl Into<String>) -> RemoteWriteConfig {
        RemoteWriteConfig {
            url: url.into(),
            histograms: HistogramMode::default(),
            headers: BTreeMap::new(),
            bearer_token_file: None,
            tls_ca_file: None,
            timeout_ms: default_remote_write_timeout_ms(),
            queue_size: default_remote_write_queue_size(),
        }
    }

    /// The sender's description of this target.
    pub fn target(&self) -> RemoteWriteTarget {
        let mut t = RemoteWriteTarget::new(self.url.clone());
        t.histograms = self.histograms;
        t.headers = self.headers.clone();
        t.bearer_token_file = self.bearer_token_file.clone();
        t.tls_ca_file = self.tls_ca_file.clone();
        t.timeout = Duration::from_millis(self.timeout_ms);
        t.queue_capacity = self.queue_size;
        t
    }
}

/// A listen address as written on the command line or in the TOML file:
///
/// - `IP:PORT`: `127.0.0.1:9171`, `0.0.0.0:9171` (every interface),
///   `[::1]:9171`, `[::]:9171`;
/// - `HOST:PORT`: `localhost:9171`, resolved once, at start; the first IPv4
///   address it resolves to, else the first IPv6 one;
/// - `:PORT`: the port on the loopback address `127.0.0.1`. Unlike Go
///   programs (Prometheus' `--web.listen-address=:9090`), an empty host does
///   not mean every interface: shoal listens beyond loopback only where an
///   address says so.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("invalid listen address {text:?}: {port:?} is not a port (0-65535)"))?;
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("invalid listen address {text:?}: expected HOST:PORT, IP:PORT, [IPv6]:PORT or :PORT"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("invalid listen address {text:?}: expected HOST:PORT, IP:PORT, [IPv6]:PORT or :PORT"));
    }
    let addrs: Vec<SocketAddr> = text.to_socket_addrs().map_err(|e| format!("cannot resolve listen address {text:?}: {e}"))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("listen address {text:?} resolves to no address"))
}

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_listen: "127.0.0.1:7171".parse().expect("valid default address"),
            http_listen: "127.0.0.1:9171".parse().expect("valid default address"),
            interval_secs: 10,
            retention_secs: 3600,
            summary_window_secs: 60,
            gauge_stale_intervals: 3,
            instance_expiry_secs: 3600,
            gauge_rules: HashMap::new(),
            quantiles: vec![0.5, 0.9, 0.99, 0.999],
            shutdown_grace_ms: 2000,
            max_series_per_instance: 100_000,
            max_series_per_metric: 100_000,
            max_series_total: 2_000_000,
            blocklist: Vec::new(),
            ingest_queue: 1024,
            overload_retry_after_ms: 1000,
            remote_write: Vec::new(),
            data_dir: None,
            series_expiry_secs: 900,
            upstream: Vec::new(),
            upstream_labels: BTreeMap::new(),
            external_labels: BTreeMap::new(),
            statsd_listen: None,
            statsd_recv_buffer: 0,
            statsd_flush_ms: 1000,
            statsd_max_sources: 1024,
            statsd_max_series_per_source: 100_000,
            statsd_max_set_size: 10_000,
            statsd_max_datagram_bytes: 8192,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth_tokens_file: None,
            http_auth_tokens_file: None,
            upstream_tls_ca_file: None,
            upstream_auth_token_file: None,
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are errors.
    pub fn from_toml_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the settings make sense together.
    pub fn validate(&self) -> Result<(), String> {
        if self.interval_secs == 0 {
            return Err("interval_secs must be at least 1".into());
        }
        if self.retention_secs < self.interval_secs {
            return Err("retention_secs must be at least interval_secs".into());
        }
        if self.summary_window_secs == 0 {
            return Err("summary_window_secs must be at least 1".into());
        }
        if self.gauge_stale_intervals == 0 {
            return Err("gauge_stale_intervals must be at least 1".into());
        }
        if self.series_expiry_secs != 0 && self.series_expiry_secs < 2 * self.interval_secs {
            // Shorter, a series flushed once per interval would expire
            // between two of its own updates.
            return Err(format!("series_expiry_secs must be 0 (never) or at least 2 × interval_secs ({})", 2 * self.interval_secs));
        }
        if let Some(q) = self.quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(format!("quantile {q} is not in [0, 1]"));
        }
        if self.max_series_per_instance == 0 || self.max_series_per_metric == 0 || self.max_series_total == 0 {
            return Err("max_series_per_instance, max_series_per_metric and max_series_total must be at least 1".into());
        }
        if self.ingest_queue == 0 {
            return Err("ingest_queue must be at least 1".into());
        }
        for t in &self.remote_write {
            if !t.url.starts_with("http://") && !t.url.starts_with("https://") {
                return Err(format!("remote_write url {:?}: must start with http:// or https://", t.url));
            }
            if t.timeout_ms == 0 || t.queue_size == 0 {
                return Err(format!("remote_write {:?}: timeout_ms and queue_size must be at least 1", t.url));
            }
        }
        if !self.upstream.is_empty() {
            for u in &self.upstream {
                if !u.starts_with("http://") && !u.starts_with("https://") {
                    return Err(format!("upstream {u:?}: must start with http:// or https://"));
                }
            }
            shoal_proto::client::check_endpoints(&self.upstream).map_err(|e| format!("upstream: {e}"))?;
        }
        shoal_proto::limits::check_series("external_labels", self.external_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("external_labels: {e}"))?;
        shoal_proto::limits::check_series("upstream_labels", self.upstream_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| format!("upstream_labels: {e}"))?;
        self.compiled_blocklist()?;
        self.validate_statsd()?;
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err("tls_cert is set without tls_key".into()),
            (None, Some(_)) => return Err("tls_key is set without tls_cert".into()),
            _ => {}
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err("tls_client_ca (mutual TLS) needs tls_cert and tls_key".into());
        }
        Ok(())
    }

    fn validate_statsd(&self) -> Result<(), String> {
        if self.statsd_flush_ms == 0 || self.statsd_flush_ms > 3_600_000 {
            return Err(format!("statsd_flush_ms must be 1 to 3600000, got {}", self.statsd_flush_ms));
        }
        if self.statsd_max_sources == 0 || self.statsd_max_series_per_source == 0 || self.statsd_max_set_size == 0 {
            return Err("statsd_max_sources, statsd_max_series_per_source and statsd_max_set_size must be at least 1".into());
        }
        if !(64..=65_535).contains(&self.statsd_max_datagram_bytes) {
            return Err(format!("statsd_max_datagram_bytes must be 64 to 65535, got {}", self.statsd_max_datagram_bytes));
        }
        if let Some(addr) = self.statsd_listen {
            // StatsD also listens on TCP: the same address as a TCP listener cannot work.
            for (key, other) in [("grpc_listen", self.grpc_listen), ("http_listen", self.http_listen)] {
                if addr.port() != 0 && addr == other {
                    return Err(format!("statsd_listen {addr} is also {key}: StatsD needs that TCP port too"));
                }
            }
        }
        Ok(())
    }

    /// The blocklist, compiled (the error names the bad pattern).
    pub fn compiled_blocklist(&self) -> Result<shoal_core::Blocklist, String> {
        shoal_core::Blocklist::new(&self.blocklist).map_err(|e| e.to_string())
    }

    /// `self` with the settings of `new` that can change while running
    /// (limits, blocklist, gauge rules, quantiles, retry hint, staleness and
    /// expiry, shutdown grace); the others (listen addresses, interval,
    /// retention, summary window, queue size) need a restart and are kept.
    /// Returns the names of the settings that were not applied.
    pub fn reloaded(&self, new: &Config) -> (Config, Vec<&'static str>) {
        let mut ignored = Vec::new();
        if new.grpc_listen != self.grpc_listen {
            ignored.push("grpc_listen");
        }
        if new.http_listen != self.http_listen {
            ignored.push("http_listen");
        }
        if new.interval_secs != self.interval_secs {
            ignored.push("interval_secs");
        }
        if new.ingest_queue != self.ingest_queue {
            ignored.push("ingest_queue");
        }
        if new.retention_secs != self.retention_secs {
            ignored.push("retention_secs");
        }
        if new.summary_window_secs != self.summary_window_secs {
            ignored.push("summary_window_secs");
        }
        if new.remote_write != self.remote_write {
            ignored.push("remote_write");
        }
        if new.data_dir != self.data_dir {
            ignored.push("data_dir");
        }
        if new.series_expiry_secs != self.series_expiry_secs {
            ignored.push("series_expiry_secs");
        }
        if new.upstream_labels != self.upstream_labels {
            ignored.push("upstream_labels");
        }
        // The files are re-read on SIGHUP; which files, and whether there is
        // TLS at all, is fixed at start.
        let paths: [(&'static str, &Option<PathBuf>, &Option<PathBuf>); 7] = [
            ("tls_cert", &new.tls_cert, &self.tls_cert),
            ("tls_key", &new.tls_key, &self.tls_key),
            ("tls_client_ca", &new.tls_client_ca, &self.tls_client_ca),
            ("auth_tokens_file", &new.auth_tokens_file, &self.auth_tokens_file),
            ("http_auth_tokens_file", &new.http_auth_tokens_file, &self.http_auth_tokens_file),
            ("upstream_tls_ca_file", &new.upstream_tls_ca_file, &self.upstream_tls_ca_file),
            ("upstream_auth_token_file", &new.upstream_auth_token_file, &self.upstream_auth_token_file),
        ];
        ignored.extend(paths.into_iter().filter(|(_, new, old)| new != old).map(|(key, _, _)| key));
        // The list of shards changes while running; forwarding on or off does not.
        let upstream = match new.upstream.is_empty() == self.upstream.is_empty() {
            true => new.upstream.clone(),
            false => {
                ignored.push("upstream");
                self.upstream.clone()
            }
        };
        if (
            new.statsd_listen,
            new.statsd_recv_buffer,
            new.statsd_flush_ms,
            new.statsd_max_sources,
            new.statsd_max_series_per_source,
            new.statsd_max_set_size,
            new.statsd_max_datagram_bytes,
        ) != (
            self.statsd_listen,
            self.statsd_recv_buffer,
            self.statsd_flush_ms,
            self.statsd_max_sources,
            self.statsd_max_series_per_source,
            self.statsd_max_set_size,
            self.statsd_max_datagram_bytes,
        ) {
            ignored.push("statsd_*");
        }
        let config = Config {
            max_series_per_instance: new.max_series_per_instance,
            max_series_per_metric: new.max_series_per_metric,
            max_series_total: new.max_series_total,
            blocklist: new.blocklist.clone(),
            gauge_rules: new.gauge_rules.clone(),
            quantiles: new.quantiles.clone(),
            overload_retry_after_ms: new.overload_retry_after_ms,
            gauge_stale_intervals: new.gauge_stale_intervals,
            instance_expiry_secs: new.instance_expiry_secs,
            shutdown_grace_ms: new.shutdown_grace_ms,
            upstream,
            external_labels: new.external_labels.clone(),
            ..self.clone()
        };
        (config, ignored)
    }

    /// The rollup interval.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs)
    }

    /// The rule for a gauge name.
    pub fn gauge_rule(&self, name: &str) -> GaugeRule {
        self.gauge_rules.get(name).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_expiry_is_never_or_at_least_two_intervals() {
        let with = |expiry, interval| Config { series_expiry_secs: expiry, interval_secs: interval, ..Config::default() }.validate();
        assert!(with(0, 10).is_ok());
        assert!(with(20, 10).is_ok());
        let err = with(15, 10).unwrap_err();
        assert!(err.contains("series_expiry_secs") && err.contains("20"), "{err}");
    }

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let c = Config::from_toml("interval_secs = 5\n[gauge_rules]\ncpu = \"max\"\n").unwrap();
        assert_eq!(c.interval_secs, 5);
        assert_eq!(c.gauge_rule("cpu"), GaugeRule::Max);
        assert_eq!(c.gauge_rule("other"), GaugeRule::Sum);
        assert_eq!(c.retention_secs, 3600);
        assert!(Config::from_toml("nonsense = 1").unwrap_err().contains("nonsense"));
        assert!(Config::from_toml("interval_secs = 0").unwrap_err().contains("interval_secs"));
        assert!(Config::from_toml("[gauge_rules]\ncpu = \"median\"").is_err());
    }

    #[test]
    fn limits_and_blocklist_are_read_and_checked() {
        let c = Config::from_toml("blocklist = [\"debug_*\", \"x_total\"]\nmax_series_per_metric = 5\n").unwrap();
        assert_eq!(c.blocklist, vec!["debug_*", "x_total"]);
        assert_eq!(c.max_series_per_metric, 5);
        assert!(c.compiled_blocklist().unwrap().blocks("debug_foo"));
        assert!(Config::from_toml("blocklist = [\"a[\"]").unwrap_err().contains("a["));
        assert!(Config::from_toml("max_series_total = 0").is_err());
        assert!(Config::from_toml("ingest_queue = 0").is_err());
        let (r, ignored) = c.reloaded(&Config { blocklist: vec![], interval_secs: 1, ..c.clone() });
        assert!(r.blocklist.is_empty());
        assert_eq!(r.interval_secs, c.interval_secs);
        assert_eq!(ignored, vec!["interval_secs"]);
    }

    #[test]
    fn listen_addresses_take_hosts_ipv6_and_a_bare_port() {
        let v4 = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        assert_eq!(parse_listen("127.0.0.1:9171"), Ok(v4(9171)));
        assert_eq!(parse_listen("0.0.0.0:9171"), Ok("0.0.0.0:9171".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:9171"), Ok("[::1]:9171".parse().unwrap()));
        assert_eq!(parse_listen(":9171"), Ok(v4(9171)), "a bare port stays on loopback");
        assert_eq!(parse_listen(":0"), Ok(v4(0)));
        let localhost = parse_listen("localhost:9171").unwrap();
        assert!(localhost.ip().is_loopback() && localhost.port() == 9171, "{localhost}");
        for bad in ["", ":", "9171", "localhost", ":99999", "localhost:x", "[::1]"] {
            assert!(parse_listen(bad).is_err(), "{bad:?} accepted");
        }
        let c = Config::from_toml("http_listen = \"localhost:9172\"\ngrpc_listen = \":7172\"\n").unwrap();
        assert!(c.http_listen.ip().is_loopback() && c.http_listen.port() == 9172);
        assert_eq!(c.grpc_listen, v4(7172));
        assert!(Config::from_toml("http_listen = \"nope\"").unwrap_err().contains("nope"));
    }

    #[test]
    fn remote_write_tables_are_read_with_defaults() {
        let c = Config::from_toml(
            "[[remote_write]]\nurl = \"http://a:9090/api/v1/write\"\n\n[[remote_write]]\nurl = \"http://b/write\"\nhistograms = \"native\"\ntimeout_ms = 500\nqueue_size = 3\nbearer_token_file = \"/t\"\n[remote_write.headers]\nX-Scope-OrgID = \"team\"\n",
        )
        .unwrap();
        assert_eq!(c.remote_write.len(), 2);
        let a = c.remote_write[0].target();
        assert_eq!((a.histograms, a.timeout, a.queue_capacity), (HistogramMode::Summary, Duration::from_secs(30), 64));
        let b = c.remote_write[1].target();
        assert_eq!((b.histograms, b.timeout, b.queue_capacity), (HistogramMode::Native, Duration::from_millis(500), 3));
        assert_eq!(b.headers.get("X-Scope-OrgID").map(String::as_str), Some("team"));
        assert_eq!(b.bearer_token_file.as_deref(), Some(Path::new("/t")));
        assert!(Config::from_toml("[[remote_write]]\nurl = \"http://a\"\nhistograms = \"dense\"\n").is_err());
        // https is a target like http (issue 14); other schemes are refused.
        assert!(Config::from_toml("[[remote_write]]\nurl = \"https://a\"\n").is_ok());
        assert!(Config::from_toml("[[remote_write]]\nurl = \"ftp://a\"\n").is_err());
        assert!(Config::from_toml("[[remote_write]]\nurl = \"http://a\"\nqueue = 1\n").is_err());
        let (_, ignored) = c.reloaded(&Config::default());
        assert_eq!(ignored, vec!["remote_write"]);
    }

    #[test]
    fn gauge_rules_combine_values() {
        let v = [1.0, 5.0, 3.0];
        assert_eq!(GaugeRule::Sum.apply(&v), 9.0);
        assert_eq!(GaugeRule::Min.apply(&v), 1.0);
        assert_eq!(GaugeRule::Max.apply(&v), 5.0);
        assert_eq!(GaugeRule::Mean.apply(&v), 3.0);
    }

    #[test]
    fn statsd_settings_are_read_and_checked() {
        let c = Config::from_toml("statsd_listen = \":8125\"\nstatsd_recv_buffer = 4194304\nstatsd_flush_ms = 500\n").unwrap();
        assert_eq!(c.statsd_listen, Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 8125))));
        assert_eq!((c.statsd_recv_buffer, c.statsd_flush_ms), (4_194_304, 500));
        assert_eq!(Config::default().statsd_listen, None, "off unless asked for");
        assert!(Config::from_toml("statsd_listen = \"nope\"").unwrap_err().contains("nope"));
        assert!(Config::from_toml("statsd_flush_ms = 0").unwrap_err().contains("statsd_flush_ms"));
        assert!(Config::from_toml("statsd_max_sources = 0").unwrap_err().contains("statsd_max_sources"));
        assert!(Config::from_toml("statsd_max_datagram_bytes = 70000").unwrap_err().contains("statsd_max_datagram_bytes"));
        let clash = Config::from_toml("statsd_listen = \"127.0.0.1:7171\"").unwrap_err();
        assert!(clash.contains("grpc_listen"), "{clash}");
        let (_, ignored) = Config::default().reloaded(&c);
        assert_eq!(ignored, vec!["statsd_*"]);
    }
}

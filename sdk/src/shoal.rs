//! `Shoal`: the recorder and its builder.

use crate::error::Error;
use crate::flusher::{Flusher, FlusherConfig};
use crate::handles::{Counter, Gauge, Histogram};
use crate::hot::slot;
use crate::inner::Inner;
use crate::registry::Registry;
use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;
use shoal_core::sketch::{scale_for_relative_error, Sketch, DEFAULT_RELATIVE_ERROR, MAX_SCALE};
use shoal_core::{Deltas, SeriesKey};
use shoal_proto::client::{AuthToken, ClientSecurity, FlusherStats, Identity};
use shoal_proto::limits::{check_series, MAX_INSTANCE_LABEL_BYTES};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Default cardinality limit: series per metric name.
pub const DEFAULT_CARDINALITY_LIMIT: usize = 10_000;
/// Default flush interval.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Builds a [`Shoal`]. Obtain one with [`Shoal::builder`].
#[derive(Clone, Debug)]
pub struct ShoalBuilder {
    service: Option<String>,
    labels: Vec<(String, String)>,
    collectors: Vec<String>,
    flush_interval: Duration,
    cardinality_limit: usize,
    relative_error: f64,
    shutdown_timeout: Duration,
    send_own_metrics: bool,
    /// Set by [`ShoalBuilder::flush_interval`] (an environment value must not override it).
    flush_interval_set: bool,
    tls_ca_file: Option<PathBuf>,
    tls_client_cert: Option<(PathBuf, PathBuf)>,
    auth_token: Option<Secret>,
    /// What [`ShoalBuilder::from_env`] read; explicit calls win over it.
    env: Option<Env>,
}

/// A token kept out of `Debug` output.
#[derive(Clone)]
struct Secret(String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The `SHOAL_*` environment variables, as read (checked at build).
#[derive(Clone, Debug, Default)]
struct Env {
    collectors: Vec<String>,
    auth_token: Option<Secret>,
    service: Option<String>,
    flush_interval: Option<String>,
    tls_ca_file: Option<PathBuf>,
}

impl Env {
    fn read(var: impl Fn(&str) -> Option<String>) -> Env {
        let var = |name: &str| var(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        Env {
            collectors: var(ENV_COLLECTOR)
                .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            auth_token: var(ENV_AUTH_TOKEN).map(Secret),
            service: var(ENV_SERVICE),
            flush_interval: var(ENV_FLUSH_INTERVAL),
            tls_ca_file: var(ENV_TLS_CA_FILE).map(PathBuf::from),
        }
    }
}

/// Collector URLs, comma-separated (several are shards).
pub const ENV_COLLECTOR: &str = "SHOAL_COLLECTOR";
/// Bearer token sent with every batch.
pub const ENV_AUTH_TOKEN: &str = "SHOAL_AUTH_TOKEN";
/// The service name.
pub const ENV_SERVICE: &str = "SHOAL_SERVICE";
/// Flush interval: `10s`, `500ms`, `2m` or a number of seconds.
pub const ENV_FLUSH_INTERVAL: &str = "SHOAL_FLUSH_INTERVAL";
/// A private CA (PEM file) for `https://` collectors.
pub const ENV_TLS_CA_FILE: &str = "SHOAL_TLS_CA_FILE";

/// `10s`, `500ms`, `2m`, `1h` or a bare number of seconds (`1.5`).
fn parse_interval(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let number: f64 = number.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let secs = match unit.trim() {
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

impl Default for ShoalBuilder {
    fn default() -> Self {
        ShoalBuilder {
            service: None,
            labels: Vec::new(),
            collectors: Vec::new(),
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            cardinality_limit: DEFAULT_CARDINALITY_LIMIT,
            relative_error: DEFAULT_RELATIVE_ERROR,
            shutdown_timeout: Duration::from_secs(5),
            send_own_metrics: true,
            flush_interval_set: false,
            tls_ca_file: None,
            tls_client_cert: None,
            auth_token: None,
            env: None,
        }
    }
}

impl ShoalBuilder {
    /// The service name: an instance label (`service`), sent once per batch.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = Some(name.into());
        self
    }

    /// Adds an instance label (region, host, ...), sent once per batch.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// gRPC endpoint of a `shoal-collector`, e.g. `http://127.0.0.1:7171`.
    /// Without one, shoal records locally only.
    ///
    /// Called more than once, the collectors are shards: each series goes
    /// to exactly one of them, chosen by rendezvous hashing of its rollup
    /// key (series plus instance labels), the same choice every instance
    /// and every forwarding collector makes, so each series' cluster rollup
    /// lives on one shard. A shard that is down holds its own series'
    /// deltas until it is back; they never go to another shard.
    pub fn collector(mut self, url: impl Into<String>) -> Self {
        self.collectors.push(url.into());
        self
    }

    /// How often the flusher sends a batch (default 10 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self.flush_interval_set = true;
        self
    }

    /// A private CA (PEM file) to trust for `https://` collectors, beside
    /// the system's roots and the Mozilla roots (which are enough for a
    /// collector whose certificate comes from a public CA).
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// A client certificate chain and its private key (PEM files), for a
    /// collector that requires mutual TLS (`tls_client_ca`).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_client_cert = Some((cert.into(), key.into()));
        self
    }

    /// The bearer token sent with every batch (the collector's
    /// `auth_tokens_file` lists it). A collector that refuses it answers
    /// `UNAUTHENTICATED`: the flusher keeps the deltas, retries with
    /// backoff, logs a warning at most every 30 s and counts
    /// `shoal_flush_batches_unauthenticated_total`; recording is unaffected.
    pub fn auth_token(mut self, token: impl Into<String>) -> Self {
        self.auth_token = Some(Secret(token.into()));
        self
    }

    /// Reads the settings from the environment, for twelve-factor
    /// deployments: `SHOAL_COLLECTOR` (comma-separated URLs: shards),
    /// `SHOAL_AUTH_TOKEN`, `SHOAL_SERVICE`, `SHOAL_FLUSH_INTERVAL` (`10s`,
    /// `500ms`, or seconds) and `SHOAL_TLS_CA_FILE`. Unset or empty
    /// variables change nothing. Explicit builder calls win, whether made
    /// before or after this one; a bad value is an error at
    /// [`ShoalBuilder::build`] naming the variable.
    ///
    /// ```no_run
    /// // SHOAL_COLLECTOR=https://collector.internal:7171 SHOAL_AUTH_TOKEN=... ./service
    /// let shoal = shoal::Shoal::builder().service("checkout").from_env().install()?;
    /// # Ok::<(), shoal::Error>(())
    /// ```
    pub fn from_env(self) -> Self {
        self.from_env_with(|name| std::env::var(name).ok())
    }

    /// [`ShoalBuilder::from_env`] reading variables through `var` (tests,
    /// or settings from elsewhere under the same names).
    pub fn from_env_with(mut self, var: impl Fn(&str) -> Option<String>) -> Self {
        self.env = Some(Env::read(var));
        self
    }

    /// Series per metric name before updates go to the name's overflow series
    /// (default 10,000).
    pub fn cardinality_limit(mut self, limit: usize) -> Self {
        self.cardinality_limit = limit;
        self
    }

    /// Relative error bound of every histogram quantile (default 0.01 = 1%).
    pub fn relative_error(mut self, relative_error: f64) -> Self {
        self.relative_error = relative_error;
        self
    }

    /// How long `shutdown` (and drop) waits for the final flush (default 5 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether this instance's own health series (`shoal_flush_*`,
    /// `shoal_rejected_*`, `shoal_series`, ...) go to the collector as
    /// ordinary series of the instance, so that a fleet's own losses show on
    /// the collector's `/metrics` (default: yes). They ride with the batches
    /// the instance sends anyway (never a batch of their own) and are
    /// outside the value-conservation counts (`shoal_flush_values_*`).
    pub fn send_own_metrics(mut self, send: bool) -> Self {
        self.send_own_metrics = send;
        self
    }

    /// Builds the `Shoal` without installing it as the global recorder.
    pub fn build(mut self) -> Result<Shoal, Error> {
        self.merge_env()?;
        let scale = scale_for_relative_error(self.relative_error)
            .map(|s| s.max(0))
            .filter(|s| *s <= MAX_SCALE)
            .ok_or_else(|| Error::InvalidConfig(format!("relative_error {} must be in [0.00136, 1)", self.relative_error)))?;
        if self.cardinality_limit == 0 {
            return Err(Error::InvalidConfig("cardinality_limit must be at least 1".into()));
        }
        if self.flush_interval < Duration::from_millis(1) {
            return Err(Error::InvalidConfig("flush_interval must be at least 1 ms".into()));
        }
        let mut labels = self.labels.clone();
        if let Some(service) = &self.service {
            labels.push(("service".into(), service.clone()));
        }
        // Instance labels follow the per-series rules (a collector refuses a
        // whole batch whose instance labels break them).
        check_series("instance", labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|r| Error::InvalidConfig(format!("instance labels: {r}")))?;
        let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_INSTANCE_LABEL_BYTES {
            return Err(Error::InvalidConfig(format!("instance labels are {bytes} bytes, at most {MAX_INSTANCE_LABEL_BYTES}")));
        }
        // Reuse SeriesKey's sort + dedup (last value wins).
        let labels = SeriesKey::new("", labels).labels().to_vec();
        let identity = Identity { instance_id: new_instance_id(), labels };
        slot::owned_slots();
        let inner = Arc::new(Inner::new(Registry::new(self.cardinality_limit, scale), identity, self.send_own_metrics));
        let auth_token = self.auth_token.map(|t| AuthToken::new(t.0)).transpose()?;
        let flusher = match self.collectors.is_empty() {
            false => Some(Flusher::start(
                inner.clone(),
                FlusherConfig {
                    endpoints: self.collectors,
                    interval: self.flush_interval,
                    shutdown_timeout: self.shutdown_timeout,
                    security: ClientSecurity { tls_ca_file: self.tls_ca_file, tls_client_cert: self.tls_client_cert, auth_token },
                },
            )?),
            true => None,
        };
        Ok(Shoal { inner, flusher: Arc::new(Mutex::new(flusher)), installed: false })
    }

    /// Builds the `Shoal` and installs it as the global `metrics` recorder.
    ///
    /// The global recorder lives for the rest of the process, and so does its
    /// flusher: dropping the returned handle does not stop flushing (as with
    /// other `metrics` exporters, `let _ = builder.install()?;` is enough).
    /// Call [`Shoal::shutdown`] before the process exits to send what was
    /// recorded since the last flush.
    pub fn install(self) -> Result<Shoal, Error> {
        let mut shoal = self.build()?;
        let recorder = GlobalRecorder { inner: shoal.inner.clone(), _flusher: shoal.flusher.clone() };
        metrics::set_global_recorder(recorder).map_err(|_| Error::RecorderAlreadyInstalled)?;
        shoal.installed = true;
        Ok(shoal)
    }
}

impl ShoalBuilder {
    /// Fills what no explicit call set from [`ShoalBuilder::from_env`].
    fn merge_env(&mut self) -> Result<(), Error> {
        let Some(env) = self.env.take() else { return Ok(()) };
        if self.collectors.is_empty() {
            self.collectors = env.collectors;
        }
        if self.auth_token.is_none() {
            if let Some(token) = env.auth_token {
                AuthToken::new(token.0.clone()).map_err(|_| {
                    Error::InvalidConfig(format!("{ENV_AUTH_TOKEN}: not a bearer token (letters, digits and -._~+/ then optional =)"))
                })?;
                self.auth_token = Some(token);
            }
        }
        if self.service.is_none() {
            self.service = env.service;
        }
        if !self.flush_interval_set {
            if let Some(text) = env.flush_interval {
                self.flush_interval = parse_interval(&text).ok_or_else(|| {
                    Error::InvalidConfig(format!(
                        "{ENV_FLUSH_INTERVAL}={text:?}: expected a duration such as 10s, 500ms, 2m or a number of seconds"
                    ))
                })?;
            }
        }
        if self.tls_ca_file.is_none() {
            self.tls_ca_file = env.tls_ca_file;
        }
        Ok(())
    }
}

fn new_instance_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let random: u64 = rand::random();
    format!("{:x}-{:x}-{:016x}", std::process::id(), nanos as u64, random)
}

/// An in-process metrics recorder: lock-free aggregation, optional flushing
/// to a collector. See the crate docs for an example.
///
/// Dropping a `Shoal` from [`ShoalBuilder::build`] shuts it down (final
/// flush, flusher stopped). One from [`ShoalBuilder::install`] keeps
/// flushing for the life of the process.
#[must_use = "dropping a built Shoal shuts its flusher down; keep it for as long as you record (or use install())"]
pub struct Shoal {
    inner: Arc<Inner>,
    flusher: Arc<Mutex<Option<Flusher>>>,
    /// Installed as the global recorder: dropping this handle does not shut down.
    installed: bool,
}

impl Shoal {
    /// A builder with the defaults: local only, 10 s flush interval, 1% error,
    /// 10,000 series per metric name.
    pub fn builder() -> ShoalBuilder {
        ShoalBuilder::default()
    }

    /// This process's identity as sent to the collector.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// A counter handle (direct calls, no facade dispatch).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Counter {
        let reg = &self.inner.registry;
        let key = SeriesKey::new(name, labels.iter().copied());
        Counter(reg.counters.resolve_key(key, reg.cardinality_limit, &reg.stats, |k, o| reg.new_counter(k, o)).into_series())
    }

    /// A gauge handle.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Gauge {
        let reg = &self.inner.registry;
        let key = SeriesKey::new(name, labels.iter().copied());
        Gauge(reg.gauges.resolve_key(key, reg.cardinality_limit, &reg.stats, |k, o| reg.new_gauge(k, o)).into_series())
    }

    /// A histogram handle.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Histogram {
        let reg = &self.inner.registry;
        let key = SeriesKey::new(name, labels.iter().copied());
        Histogram(reg.histograms.resolve_key(key, reg.cardinality_limit, &reg.stats, |k, o| reg.new_histogram(k, o)).into_series())
    }

    /// Takes the delta of every series since the previous take (see
    /// [`crate::delta`]). The flusher uses this; call it yourself only on a
    /// `Shoal` without a collector, or the two will split the deltas.
    pub fn take_deltas(&self) -> Deltas {
        self.inner.take_deltas()
    }

    /// The cumulative sketch of a histogram series, by canonical id.
    pub fn histogram_snapshot(&self, canonical: &str) -> Option<Sketch> {
        self.inner.registry.histograms.all().into_iter().find(|s| s.key.canonical() == canonical).map(|s| s.cells.read())
    }

    /// Bytes held by the hot-path cells of a histogram series (all stripes).
    pub fn histogram_memory_bytes(&self, canonical: &str) -> Option<usize> {
        self.inner.registry.histograms.all().into_iter().find(|s| s.key.canonical() == canonical).map(|s| s.cells.memory_bytes())
    }

    /// The cumulative value of a counter series, by canonical id.
    pub fn counter_value(&self, canonical: &str) -> Option<u64> {
        self.inner.registry.counters.all().into_iter().find(|s| s.key.canonical() == canonical).map(|s| s.cells.read())
    }

    /// Sends a batch now and waits for the acknowledgement (up to the
    /// shutdown timeout). Without a collector this does nothing.
    pub fn flush(&self) -> Result<(), Error> {
        match &*self.flusher.lock() {
            Some(f) => f.flush_now(),
            None => Ok(()),
        }
    }

    /// Final flush within the shutdown timeout, then stops the flusher.
    /// Recording keeps working afterwards but nothing more is sent.
    pub fn shutdown(&self) -> Result<(), Error> {
        match self.flusher.lock().take() {
            Some(f) => f.shutdown(),
            None => Ok(()),
        }
    }

    /// Counters of the flusher (batches sent, acknowledged, failed, ...).
    pub fn flusher_stats(&self) -> &FlusherStats {
        &self.inner.flusher_stats
    }

    /// This instance's cumulative view in the Prometheus text format:
    /// counters, gauges, histograms as summaries (quantiles 0.5, 0.9, 0.99,
    /// 0.999 since start, plus `_sum` and `_count`), and `shoal_` self-metrics.
    pub fn render_prometheus(&self) -> String {
        crate::render::render(&self.inner)
    }
}

impl Drop for Shoal {
    fn drop(&mut self) {
        if !self.installed {
            let _ = self.shutdown();
        }
    }
}

/// The recorder installed globally by [`ShoalBuilder::install`]. It holds
/// the flusher, so the flusher lives as long as the recorder: for the rest
/// of the process.
struct GlobalRecorder {
    inner: Arc<Inner>,
    _flusher: Arc<Mutex<Option<Flusher>>>,
}

macro_rules! forward_recorder {
    ($ty:ty, $inner:ident => $get:expr) => {
        impl metrics::Recorder for $ty {
            fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
                let $inner = self;
                $get.registry.describe(key.as_str(), unit, &description);
            }
            fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
                let $inner = self;
                $get.registry.describe(key.as_str(), unit, &description);
            }
            fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
                let $inner = self;
                $get.registry.describe(key.as_str(), unit, &description);
            }
            fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
                let $inner = self;
                let reg = &$get.registry;
                metrics::Counter::from_arc(
                    reg.counters.resolve(key, reg.cardinality_limit, &reg.stats, |k, o| reg.new_counter(k, o)).into_series(),
                )
            }
            fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
                let $inner = self;
                let reg = &$get.registry;
                metrics::Gauge::from_arc(
                    reg.gauges.resolve(key, reg.cardinality_limit, &reg.stats, |k, o| reg.new_gauge(k, o)).into_series(),
                )
            }
            fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> metrics::Histogram {
                let $inner = self;
                let reg = &$get.registry;
                metrics::Histogram::from_arc(
                    reg.histograms.resolve(key, reg.cardinality_limit, &reg.stats, |k, o| reg.new_histogram(k, o)).into_series(),
                )
            }
        }
    };
}

forward_recorder!(GlobalRecorder, this => this.inner);
forward_recorder!(Shoal, this => this.inner);

#[cfg(test)]
mod env_tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn environment_fills_what_no_call_set() {
        let mut b = Shoal::builder().from_env_with(vars(&[
            (ENV_COLLECTOR, " https://a:7171, ,http://b:7171 "),
            (ENV_AUTH_TOKEN, "tok-en"),
            (ENV_SERVICE, "checkout"),
            (ENV_FLUSH_INTERVAL, "500ms"),
            (ENV_TLS_CA_FILE, "/etc/ca.pem"),
        ]));
        b.merge_env().unwrap();
        assert_eq!(b.collectors, vec!["https://a:7171", "http://b:7171"]);
        assert_eq!(b.auth_token.as_ref().map(|t| t.0.as_str()), Some("tok-en"));
        assert_eq!(b.service.as_deref(), Some("checkout"));
        assert_eq!(b.flush_interval, Duration::from_millis(500));
        assert_eq!(b.tls_ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!format!("{b:?}").contains("tok-en"), "the token never shows in Debug");
    }

    #[test]
    fn explicit_calls_win_before_or_after_from_env() {
        let env = vars(&[(ENV_COLLECTOR, "http://env:1"), (ENV_SERVICE, "env"), (ENV_FLUSH_INTERVAL, "3"), (ENV_AUTH_TOKEN, "env")]);
        let before = Shoal::builder().collector("http://mine:1").service("mine").flush_interval(Duration::from_secs(1)).auth_token("mine");
        let after =
            |b: ShoalBuilder| b.collector("http://mine:1").service("mine").flush_interval(Duration::from_secs(1)).auth_token("mine");
        for mut b in [before.from_env_with(&env), after(Shoal::builder().from_env_with(&env))] {
            b.merge_env().unwrap();
            assert_eq!(b.collectors, vec!["http://mine:1"]);
            assert_eq!(b.service.as_deref(), Some("mine"));
            assert_eq!(b.flush_interval, Duration::from_secs(1));
            assert_eq!(b.auth_token.as_ref().map(|t| t.0.as_str()), Some("mine"));
        }
    }

    #[test]
    fn bad_environment_values_are_errors_naming_the_variable() {
        for (name, value) in [(ENV_FLUSH_INTERVAL, "soon"), (ENV_FLUSH_INTERVAL, "-1s"), (ENV_AUTH_TOKEN, "has space\"")] {
            let e = Shoal::builder().from_env_with(vars(&[(name, value)])).build().err().expect("refused");
            let text = e.to_string();
            assert!(text.contains(name), "{text}");
            if name == ENV_AUTH_TOKEN {
                assert!(!text.contains("has space"), "the token is not repeated: {text}");
            }
        }
        assert_eq!(parse_interval("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_interval("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_interval("0"), None);
    }
}

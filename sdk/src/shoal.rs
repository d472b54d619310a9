//! `Shoal`: the recorder, its builder, and what it exposes.

use crate::delta::{self, Deltas};
use crate::error::Error;
use crate::exposition::{format_value, help_text, sanitize_label_name, sanitize_metric_name, TextWriter, SUMMARY_QUANTILES};
use crate::flusher::{Flusher, FlusherConfig, FlusherStats};
use crate::handles::{Counter, Gauge, Histogram};
use crate::hot::slot;
use crate::key::SeriesKey;
use crate::registry::Registry;
use crate::sketch::{scale_for_relative_error, Sketch, DEFAULT_RELATIVE_ERROR, MAX_SCALE};
use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Default cardinality limit: series per metric name.
pub const DEFAULT_CARDINALITY_LIMIT: usize = 10_000;
/// Default flush interval.
pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(10);

/// Who this process is, sent once per batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Unique per process start.
    pub instance_id: String,
    /// Instance labels (`service` among them when set), sorted by key.
    pub labels: Vec<(String, String)>,
}

/// State shared by the `Shoal`, the global recorder and the flusher.
pub(crate) struct Inner {
    pub(crate) registry: Registry,
    pub(crate) identity: Identity,
    take_lock: Mutex<()>,
    pub(crate) flusher_stats: Arc<FlusherStats>,
}

impl Inner {
    pub(crate) fn take_deltas(&self) -> Deltas {
        let _serialised = self.take_lock.lock();
        delta::take(&self.registry)
    }
}

/// Builds a [`Shoal`]. Obtain one with [`Shoal::builder`].
#[derive(Clone, Debug)]
pub struct ShoalBuilder {
    service: Option<String>,
    labels: Vec<(String, String)>,
    collector: Option<String>,
    flush_interval: Duration,
    cardinality_limit: usize,
    relative_error: f64,
    shutdown_timeout: Duration,
}

impl Default for ShoalBuilder {
    fn default() -> Self {
        ShoalBuilder {
            service: None,
            labels: Vec::new(),
            collector: None,
            flush_interval: DEFAULT_FLUSH_INTERVAL,
            cardinality_limit: DEFAULT_CARDINALITY_LIMIT,
            relative_error: DEFAULT_RELATIVE_ERROR,
            shutdown_timeout: Duration::from_secs(5),
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
    pub fn collector(mut self, url: impl Into<String>) -> Self {
        self.collector = Some(url.into());
        self
    }

    /// How often the flusher sends a batch (default 10 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
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

    /// Builds the `Shoal` without installing it as the global recorder.
    pub fn build(self) -> Result<Shoal, Error> {
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
        for (k, _) in &labels {
            if k.is_empty() || crate::exposition::sanitize_label_name(k) != *k {
                return Err(Error::InvalidConfig(format!("instance label key {k:?} must match [a-zA-Z_][a-zA-Z0-9_]*")));
            }
        }
        // Reuse SeriesKey's sort + dedup (last value wins).
        let labels = SeriesKey::new("", labels).labels().to_vec();
        let identity = Identity { instance_id: new_instance_id(), labels };
        slot::owned_slots();
        let inner = Arc::new(Inner {
            registry: Registry::new(self.cardinality_limit, scale),
            identity,
            take_lock: Mutex::new(()),
            flusher_stats: Arc::new(FlusherStats::default()),
        });
        let flusher = match self.collector {
            Some(url) => Some(Flusher::start(
                inner.clone(),
                FlusherConfig { endpoint: url, interval: self.flush_interval, shutdown_timeout: self.shutdown_timeout },
            )?),
            None => None,
        };
        Ok(Shoal { inner, flusher: Mutex::new(flusher) })
    }

    /// Builds the `Shoal` and installs it as the global `metrics` recorder.
    pub fn install(self) -> Result<Shoal, Error> {
        let shoal = self.build()?;
        metrics::set_global_recorder(GlobalRecorder(shoal.inner.clone())).map_err(|_| Error::RecorderAlreadyInstalled)?;
        Ok(shoal)
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
/// Dropping a `Shoal` shuts it down (final flush, flusher stopped).
pub struct Shoal {
    inner: Arc<Inner>,
    flusher: Mutex<Option<Flusher>>,
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
        render(&self.inner)
    }
}

impl Drop for Shoal {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// What one exposed series adds up to: several registered series can land on
/// the same exposed name and labels once sanitised (`a.b` and `a_b`); they are
/// merged, never written twice (Prometheus would reject the whole scrape).
enum Exposed {
    Counter(u64),
    Gauge(f64),
    Summary(Sketch),
}

/// An exposed family: its TYPE, its HELP, and its series by exposed key.
type Family = (&'static str, String, BTreeMap<String, (Vec<(String, String)>, Exposed)>);

fn render(inner: &Inner) -> String {
    let reg = &inner.registry;
    let descriptions = reg.descriptions.read().clone();
    let help = |name: &str, fallback: &str| {
        let d = descriptions.get(name);
        help_text(d.map(|d| d.text.as_str()), d.and_then(|d| d.unit).map(|u| u.as_str()), fallback)
    };
    // Exposed name -> (kind, help, exposed key -> value), in name order.
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut add = |key: &SeriesKey, kind: &'static str, fallback: &str, value: Exposed| {
        let exposed = exposed_key(key);
        let family = families.entry(exposed.name().to_string()).or_insert_with(|| (kind, help(key.name(), fallback), BTreeMap::new()));
        if family.0 != kind {
            // Two kinds under one exposed name: the first kind registered wins.
            return;
        }
        match family.2.entry(exposed.canonical().to_string()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((exposed.labels().to_vec(), value));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => match (&mut o.get_mut().1, value) {
                (Exposed::Counter(a), Exposed::Counter(b)) => *a = a.wrapping_add(b),
                (Exposed::Gauge(a), Exposed::Gauge(b)) => *a = b,
                (Exposed::Summary(a), Exposed::Summary(b)) => a.merge(&b),
                _ => {}
            },
        }
    };
    for s in reg.counters.all() {
        add(&s.key, "counter", "counter recorded with shoal", Exposed::Counter(s.cells.read()));
    }
    for s in reg.gauges.all() {
        add(&s.key, "gauge", "gauge recorded with shoal", Exposed::Gauge(s.cell.read()));
    }
    for s in reg.histograms.all() {
        add(&s.key, "summary", "histogram recorded with shoal", Exposed::Summary(s.cells.read()));
    }
    let mut w = TextWriter::default();
    for (name, (kind, help, series)) in families {
        w.family(&name, kind, &help);
        for (labels, value) in series.into_values() {
            match value {
                Exposed::Counter(v) => w.sample(&name, &labels, None, &v.to_string()),
                Exposed::Gauge(v) => w.sample(&name, &labels, None, &format_value(v)),
                Exposed::Summary(sketch) => write_summary(&mut w, &name, &labels, &sketch),
            }
        }
    }
    write_self_metrics(&mut w, inner);
    w.finish()
}

/// The key a series is exposed (and sent) under: Prometheus-valid name and
/// label keys, de-duplicated after sanitising.
pub(crate) fn exposed_key(key: &SeriesKey) -> SeriesKey {
    SeriesKey::new(sanitize_metric_name(key.name()), key.labels().iter().map(|(k, v)| (sanitize_label_name(k), v.clone())))
}

/// Writes the sample lines of a summary from a sketch. A series label named
/// `quantile` is renamed `exported_quantile` (Prometheus's convention), so it
/// cannot clash with the summary's own.
pub fn write_summary(w: &mut TextWriter, name: &str, labels: &[(String, String)], sketch: &Sketch) {
    let labels = &*crate::exposition::summary_labels(labels);
    for q in SUMMARY_QUANTILES {
        let v = sketch.quantile(q).map(format_value).unwrap_or_else(|| "NaN".into());
        w.sample(name, labels, Some(("quantile", &q.to_string())), &v);
    }
    w.sample(&format!("{name}_sum"), labels, None, &format_value(sketch.sum()));
    w.sample(&format!("{name}_count"), labels, None, &sketch.count().to_string());
}

fn write_self_metrics(w: &mut TextWriter, inner: &Inner) {
    let reg = &inner.registry;
    let stats = &reg.stats;
    w.family("shoal_series", "gauge", "Series registered in this process, by kind");
    for (kind, n) in reg.series_counts() {
        w.sample("shoal_series", &[("kind".into(), kind.as_str().into())], None, &n.to_string());
    }
    w.family("shoal_rejected_values_total", "counter", "Values rejected and not recorded, by reason");
    for (reason, n) in [("nan", &stats.rejected_nan), ("infinite", &stats.rejected_infinite)] {
        w.sample("shoal_rejected_values_total", &[("reason".into(), reason.into())], None, &n.load(Relaxed).to_string());
    }
    w.family("shoal_overflow_updates_total", "counter", "Updates recorded into a metric's overflow series after its cardinality limit");
    w.sample("shoal_overflow_updates_total", &[], None, &stats.overflowed_updates.load(Relaxed).to_string());
    w.family("shoal_overflow_series_total", "counter", "Registrations of a new label set refused by the cardinality limit");
    w.sample("shoal_overflow_series_total", &[], None, &stats.overflowed_series.load(Relaxed).to_string());
    w.family("shoal_cardinality_limit", "gauge", "Series allowed per metric name");
    w.sample("shoal_cardinality_limit", &[], None, &reg.cardinality_limit.to_string());
    inner.flusher_stats.write(w);
}

/// The recorder installed globally by [`ShoalBuilder::install`].
struct GlobalRecorder(Arc<Inner>);

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

forward_recorder!(GlobalRecorder, this => this.0);
forward_recorder!(Shoal, this => this.inner);

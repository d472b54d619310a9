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
use shoal_proto::client::{FlusherStats, Identity};
use shoal_proto::limits::{check_series, MAX_INSTANCE_LABEL_BYTES};
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
        let flusher = match self.collectors.is_empty() {
            false => Some(Flusher::start(
                inner.clone(),
                FlusherConfig { endpoints: self.collectors, interval: self.flush_interval, shutdown_timeout: self.shutdown_timeout },
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

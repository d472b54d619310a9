//! Prometheus remote-write 1.0: pushes each closed rollup interval to
//! Prometheus, VictoriaMetrics, Mimir, Thanos receive, ...
//!
//! The merge engine hands every closed interval over as an [`Interval`], a
//! neutral description of the cluster rollups at the interval's end
//! (cumulative counters, gauges, histograms with their summary quantiles and,
//! where the sketch allows it, their exact native buckets). Each configured
//! target ([`RemoteWriteTarget`]) has a [`RemoteWriter`]: a bounded, in-order
//! queue and one task that encodes ([`encode`]), compresses (snappy block
//! format) and posts the intervals, one request in flight at a time.
//!
//! # What a target receives
//!
//! Every sample of an interval carries the timestamp [`Interval::end_ms`].
//!
//! - Counter: one sample, the cumulative total, named `<name>_total` (the
//!   suffix is not doubled when `name` already ends with it). Remote-write
//!   carries doubles, so totals above 2^53 lose their last digits.
//! - Gauge: one sample.
//! - Histogram, by the target's [`HistogramMode`]:
//!   - `summary` (the default): `<name>{quantile="q"}` per quantile, plus
//!     `<name>_sum` and `<name>_count`. Every TSDB ingests these.
//!   - `native`: one native histogram sample `<name>` carrying the exact merged
//!     buckets (schema = sketch scale, zero bucket, positive and negative
//!     spans, delta-encoded integer counts). A histogram whose buckets cannot
//!     be expressed (scale below -4) goes out as a summary instead, counted in
//!     [`EncodeStats::native_unrepresentable`].
//!   - `both`: the native sample and the summary series side by side (query
//!     the native one as `<name>{quantile=""}` there).
//! - Metadata, once per family and request: type (`counter`, `gauge`,
//!   `summary`, or `histogram` in `native` / `both` mode), HELP and unit.
//!
//! Known receiver behaviour: Prometheus 2.42 answers 500 to native histograms
//! unless started with `--enable-feature=native-histograms` (so such a target
//! retries until its queue overflows: use `summary` there);
//! VictoriaMetrics 1.79 accepts native histograms with 204 and silently drops
//! them. Hence `summary` is the default and the choice is per target.
//!
//! # Bucket index convention
//!
//! The sketch (`shoal_core::sketch::mapping`) and Prometheus share the base
//! `2^(2^-scale)` and upper-inclusive buckets, but number them differently:
//! sketch bucket `i` covers `(base^i, base^(i+1)]`, Prometheus bucket `i`
//! covers `(base^(i-1), base^i]`. So the Prometheus index is the sketch index
//! plus one ([`prometheus_index`]). [`NativeBuckets`] holds sketch indices.
//!
//! # Delivery
//!
//! See [`sender`]: retries with capped exponential backoff and jitter on
//! connection errors, timeouts, 5xx and 429 (honouring `Retry-After`), no
//! retry on any other 4xx (dropped, counted by status), a full queue drops its
//! oldest interval (counted). [`TargetStats`] counts everything per target.
//! With `--data-dir` each target's queue is a [`DiskQueue`] ([`disk_queue`]):
//! what was queued before a restart, clean or `kill -9`, is sent after it,
//! in order, at least once.

pub mod disk_queue;
pub mod encode;
pub mod proto;
pub mod sender;

pub use disk_queue::DiskQueue;
pub use encode::{
    compress, decode_request, encode_interval, encode_request, native_histogram, prometheus_index, sample_count, EncodeStats,
    EncodedRequest,
};
pub use sender::{
    DropReason, MemoryQueue, QueueStorage, QueuedInterval, RemoteWriteSet, RemoteWriteTarget, RemoteWriter, RetryPolicy, TargetStats,
    TargetStatsSnapshot,
};

use serde::Deserialize;
use shoal_core::Sketch;

/// One closed rollup interval, as the merge engine hands it over.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interval {
    /// End of the interval, milliseconds since the Unix epoch: the timestamp
    /// of every sample.
    pub end_ms: i64,
    /// The cluster rollups at the end of the interval.
    pub series: Vec<ExportSeries>,
}

/// One series of an [`Interval`].
#[derive(Clone, Debug, PartialEq)]
pub struct ExportSeries {
    /// Metric name, already sanitised (without `_total` for counters, though a
    /// name that has it is not suffixed again).
    pub name: String,
    /// Labels, already sanitised and sorted by name; never `__name__`.
    pub labels: Vec<(String, String)>,
    /// HELP text of the family.
    pub help: Option<String>,
    /// Unit of the family (`seconds`, `bytes`).
    pub unit: Option<String>,
    /// The value.
    pub value: ExportValue,
}

/// The value of an [`ExportSeries`].
#[derive(Clone, Debug, PartialEq)]
pub enum ExportValue {
    /// Cumulative total since the collector's series began.
    Counter(u64),
    /// Current value.
    Gauge(f64),
    /// Cumulative histogram.
    Histogram(ExportHistogram),
}

/// A histogram rollup: summary quantiles and, optionally, exact native buckets.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportHistogram {
    /// `(q, value)` pairs, `q` in `[0, 1]`.
    pub quantiles: Vec<(f64, f64)>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// The exact buckets, when the merge engine has them.
    pub native: Option<NativeBuckets>,
}

/// The buckets of a base-2 exponential sketch, in the **sketch's** index
/// convention: at `schema` (= scale) `s`, with `base = 2^(2^-s)`, index `i`
/// holds the values `v` with `base^i < |v| <= base^(i+1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeBuckets {
    /// The sketch scale; Prometheus accepts `-4..=8` (finer scales are
    /// downscaled exactly on export, coarser ones cannot be expressed).
    pub schema: i32,
    /// `|v| <= zero_threshold` counts in the zero bucket.
    pub zero_threshold: f64,
    /// Observations in the zero bucket.
    pub zero_count: u64,
    /// `(sketch index, count)` of positive buckets, any order, zero counts allowed.
    pub positive: Vec<(i32, u64)>,
    /// `(sketch index, count)` of negative buckets (by `|v|`).
    pub negative: Vec<(i32, u64)>,
}

impl NativeBuckets {
    /// The buckets of `sketch` (its scale, zero bucket, non-empty buckets).
    pub fn from_sketch(sketch: &Sketch) -> NativeBuckets {
        NativeBuckets {
            schema: sketch.scale(),
            zero_threshold: shoal_core::sketch::ZERO_THRESHOLD,
            zero_count: sketch.zero_count(),
            positive: sketch.positive().iter().collect(),
            negative: sketch.negative().iter().collect(),
        }
    }
}

impl ExportHistogram {
    /// A histogram rollup of `sketch`: the quantiles `qs`, sum, count and the
    /// native buckets.
    pub fn from_sketch(sketch: &Sketch, qs: &[f64]) -> ExportHistogram {
        let quantiles = qs.iter().zip(sketch.quantiles(qs)).filter_map(|(&q, v)| v.map(|v| (q, v))).collect();
        ExportHistogram { quantiles, sum: sketch.sum(), count: sketch.count(), native: Some(NativeBuckets::from_sketch(sketch)) }
    }
}

/// How a target receives histograms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramMode {
    /// Quantile series + `_sum` + `_count` (every TSDB ingests them).
    #[default]
    Summary,
    /// One native histogram series with the exact buckets.
    Native,
    /// Both of the above.
    Both,
}

impl HistogramMode {
    /// Whether quantile / `_sum` / `_count` series are sent.
    pub fn summary(self) -> bool {
        matches!(self, HistogramMode::Summary | HistogramMode::Both)
    }

    /// Whether native histogram samples are sent.
    pub fn native(self) -> bool {
        matches!(self, HistogramMode::Native | HistogramMode::Both)
    }
}

impl std::str::FromStr for HistogramMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "summary" => Ok(HistogramMode::Summary),
            "native" => Ok(HistogramMode::Native),
            "both" => Ok(HistogramMode::Both),
            other => Err(format!("histograms = {other:?}: expected \"summary\", \"native\" or \"both\"")),
        }
    }
}

#[cfg(test)]
mod tests;

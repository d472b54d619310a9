//! The Prometheus protobuf exposition messages (`client_model`,
//! `io/prometheus/client/metrics.proto`, package `io.prometheus.client`),
//! written by hand with `prost` derives (no build script, no `protoc`).
//!
//! The file is `proto2`: every scalar is `optional` with presence, which is
//! what `prost-build` would generate as `Option<_>` here. Field numbers and
//! types follow upstream. Left out: exemplars (`Counter` 2, `Bucket` 3,
//! `Histogram` 16) and the `google.protobuf.Timestamp` created timestamps
//! (`Counter` 3, `Summary` 4, `Histogram` 15), which shoal never produces;
//! a decoder skips them as unknown fields.

/// `io.prometheus.client.MetricFamily`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricFamily {
    /// Family name (for a counter, with its `_total`, as the text format spells it).
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// HELP text (not escaped).
    #[prost(string, optional, tag = "2")]
    pub help: Option<String>,
    /// A [`MetricType`].
    #[prost(enumeration = "MetricType", optional, tag = "3")]
    pub r#type: Option<i32>,
    /// The series of the family.
    #[prost(message, repeated, tag = "4")]
    pub metric: Vec<Metric>,
    /// Unit (`seconds`, `bytes`).
    #[prost(string, optional, tag = "5")]
    pub unit: Option<String>,
}

/// `io.prometheus.client.MetricType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MetricType {
    /// Counter (`Metric.counter`).
    Counter = 0,
    /// Gauge (`Metric.gauge`).
    Gauge = 1,
    /// Summary (`Metric.summary`).
    Summary = 2,
    /// Untyped (`Metric.untyped`).
    Untyped = 3,
    /// Histogram, classic or native (`Metric.histogram`).
    Histogram = 4,
    /// Gauge histogram (`Metric.histogram`).
    GaugeHistogram = 5,
}

/// `io.prometheus.client.Metric`: one series of a family.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    /// Labels (without the name).
    #[prost(message, repeated, tag = "1")]
    pub label: Vec<LabelPair>,
    /// Value of a gauge.
    #[prost(message, optional, tag = "2")]
    pub gauge: Option<Gauge>,
    /// Value of a counter.
    #[prost(message, optional, tag = "3")]
    pub counter: Option<Counter>,
    /// Value of a summary.
    #[prost(message, optional, tag = "4")]
    pub summary: Option<Summary>,
    /// Value of an untyped metric.
    #[prost(message, optional, tag = "5")]
    pub untyped: Option<Untyped>,
    /// Value of a histogram.
    #[prost(message, optional, tag = "7")]
    pub histogram: Option<Histogram>,
    /// Milliseconds since the Unix epoch; absent: the scrape's time.
    #[prost(int64, optional, tag = "6")]
    pub timestamp_ms: Option<i64>,
}

/// `io.prometheus.client.LabelPair`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct LabelPair {
    /// Label name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Label value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `io.prometheus.client.Gauge`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Gauge {
    /// The value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Counter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Counter {
    /// The cumulative value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Untyped`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Untyped {
    /// The value.
    #[prost(double, optional, tag = "1")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Quantile`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Quantile {
    /// `q` in `[0, 1]`.
    #[prost(double, optional, tag = "1")]
    pub quantile: Option<f64>,
    /// The value at `q`.
    #[prost(double, optional, tag = "2")]
    pub value: Option<f64>,
}

/// `io.prometheus.client.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// Number of observations.
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    /// Sum of observations.
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// The quantiles.
    #[prost(message, repeated, tag = "3")]
    pub quantile: Vec<Quantile>,
}

/// `io.prometheus.client.Histogram`: classic buckets (`bucket`) and/or
/// native ones (`schema`, zero bucket, spans and delta-encoded counts).
///
/// Native bucket `i` of schema `s` covers `(base^(i-1), base^i]` with
/// `base = 2^(2^-s)` (negative buckets mirror it on `|v|`), as in
/// remote-write's `prometheus.Histogram`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {
    /// Number of observations.
    #[prost(uint64, optional, tag = "1")]
    pub sample_count: Option<u64>,
    /// Float count; overrides `sample_count` if > 0.
    #[prost(double, optional, tag = "4")]
    pub sample_count_float: Option<f64>,
    /// Sum of observations.
    #[prost(double, optional, tag = "2")]
    pub sample_sum: Option<f64>,
    /// Classic buckets, increasing `upper_bound` (shoal sends none).
    #[prost(message, repeated, tag = "3")]
    pub bucket: Vec<Bucket>,
    /// Native bucket schema (the OpenTelemetry scale), `-4..=8`.
    #[prost(sint32, optional, tag = "5")]
    pub schema: Option<i32>,
    /// Breadth of the zero bucket.
    #[prost(double, optional, tag = "6")]
    pub zero_threshold: Option<f64>,
    /// Count in the zero bucket.
    #[prost(uint64, optional, tag = "7")]
    pub zero_count: Option<u64>,
    /// Float zero count; overrides `zero_count` if > 0.
    #[prost(double, optional, tag = "8")]
    pub zero_count_float: Option<f64>,
    /// Negative bucket spans.
    #[prost(message, repeated, tag = "9")]
    pub negative_span: Vec<BucketSpan>,
    /// Negative bucket counts, each the delta to the previous one (the first to zero).
    #[prost(sint64, repeated, tag = "10")]
    pub negative_delta: Vec<i64>,
    /// Negative bucket counts, absolute (float histograms).
    #[prost(double, repeated, tag = "11")]
    pub negative_count: Vec<f64>,
    /// Positive bucket spans.
    #[prost(message, repeated, tag = "12")]
    pub positive_span: Vec<BucketSpan>,
    /// Positive bucket counts, each the delta to the previous one (the first to zero).
    #[prost(sint64, repeated, tag = "13")]
    pub positive_delta: Vec<i64>,
    /// Positive bucket counts, absolute (float histograms).
    #[prost(double, repeated, tag = "14")]
    pub positive_count: Vec<f64>,
}

/// `io.prometheus.client.Bucket`: a classic, cumulative bucket.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Bucket {
    /// Observations `<= upper_bound`.
    #[prost(uint64, optional, tag = "1")]
    pub cumulative_count: Option<u64>,
    /// Float count; overrides `cumulative_count` if > 0.
    #[prost(double, optional, tag = "4")]
    pub cumulative_count_float: Option<f64>,
    /// Inclusive upper bound.
    #[prost(double, optional, tag = "2")]
    pub upper_bound: Option<f64>,
}

/// `io.prometheus.client.BucketSpan`: `length` consecutive buckets starting
/// `offset` buckets after the end of the previous span (or at index
/// `offset` for the first span).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct BucketSpan {
    /// Gap to the previous span, or the first index.
    #[prost(sint32, optional, tag = "1")]
    pub offset: Option<i32>,
    /// Number of consecutive buckets.
    #[prost(uint32, optional, tag = "2")]
    pub length: Option<u32>,
}

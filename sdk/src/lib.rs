//! # shoal
//!
//! An embedded, in-process metrics SDK: record counters, gauges, histograms
//! and timers through the [`metrics`] facade (or shoal's own handles),
//! aggregated in process with no lock, no allocation and no network call per
//! update; a background flusher sends deltas and mergeable sketches to a
//! `shoal-collector`, which merges a whole fleet into cluster rollups.
//!
//! ```
//! use std::time::Duration;
//!
//! let shoal = shoal::Shoal::builder()
//!     .service("checkout")
//!     .label("region", "eu-west-1")
//!     // .collector("http://127.0.0.1:7171")   // none = local only
//!     .flush_interval(Duration::from_secs(10))
//!     .build()?;                                // or .install() for the global recorder
//!
//! metrics::with_local_recorder(&shoal, || {
//!     metrics::counter!("http_requests_total", "method" => "GET").increment(1);
//!     metrics::histogram!("http_request_duration_seconds").record(0.012);
//!     let _t = shoal::timer!("db_query_duration_seconds", "table" => "users");
//! });
//!
//! // Shoal's own handles skip the facade's dynamic dispatch.
//! let errors = shoal.counter("errors_total", &[("kind", "timeout")]);
//! errors.increment(1);
//!
//! let text = shoal.render_prometheus();
//! assert!(text.contains("http_requests_total{method=\"GET\"} 1"));
//! assert!(text.contains("errors_total{kind=\"timeout\"} 1"));
//! shoal.shutdown()?;
//! # Ok::<(), shoal::Error>(())
//! ```
//!
//! Modules, from the hot path outwards: [`hot`] (the cells recording threads
//! write, and the invariant they keep), [`sketch`] (the mergeable histogram),
//! [`registry`] (series lookup and cardinality limits), [`delta`] (taking
//! deltas without stopping recorders), [`exposition`] (Prometheus text),
//! `flusher` (batches to the collector) and [`wire`] (protobuf conversions).

#![warn(missing_docs)]

pub mod delta;
mod error;
pub mod exposition;
mod flusher;
mod handles;
pub mod hot;
pub mod instrument;
pub mod key;
pub mod registry;
mod shoal;
pub mod sketch;
mod timer;
pub mod wire;

pub use crate::delta::{CounterDelta, Deltas, GaugeValue, HistogramDelta};
pub use crate::error::Error;
pub use crate::flusher::{DropReason, FlusherStats};
pub use crate::handles::{Counter, Gauge, Histogram};
pub use crate::key::SeriesKey;
pub use crate::shoal::{write_summary, Identity, Shoal, ShoalBuilder, DEFAULT_CARDINALITY_LIMIT, DEFAULT_FLUSH_INTERVAL};
pub use crate::sketch::Sketch;
pub use crate::timer::Timer;
pub use shoal_macros::{timed, LabelSet, Metrics};

/// Re-exports used by shoal's macros; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::instrument::{
        base_labels, call_labels, call_once, checked_product, describe, timed_future, Callsite, LabelSet, Metric, MetricKind, PlainOutcome,
        Probe, RecorderMetric, ResultOutcome,
    };
    pub use crate::Shoal;
    pub use metrics;
}

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
//! Crates: `shoal` (this one: the recorder, its hot path and registry) is
//! built on [`shoal_core`] (the sketch, series keys, name rules, deltas,
//! exposition) and [`shoal_proto`] (the protocol, its limits and the flush
//! client), the same building blocks the collector uses.
//!
//! A series that a collector would refuse (an invalid or too long name or
//! label, a metric name registered as two kinds) is refused when it is
//! registered: its handle works but records into a discard series that is
//! never sent, the refusal is counted in `shoal_rejected_series_total{reason}`
//! and logged at `warn` (rate-limited). The other series are unaffected.

#![warn(missing_docs)]

mod delta;
mod error;
mod flusher;
mod handles;
mod hot;
mod inner;
pub mod instrument;
mod key_cache;
mod registry;
mod render;
mod shoal;
mod timer;

pub use crate::error::Error;
pub use crate::handles::{Counter, Gauge, Histogram};
pub use crate::registry::Refusal;
pub use crate::shoal::{
    Shoal, ShoalBuilder, DEFAULT_CARDINALITY_LIMIT, DEFAULT_FLUSH_INTERVAL, ENV_AUTH_TOKEN, ENV_COLLECTOR, ENV_FLUSH_INTERVAL, ENV_SERVICE,
    ENV_TLS_CA_FILE,
};
pub use crate::timer::Timer;
pub use shoal_core::{self, sketch, CounterDelta, Deltas, GaugeValue, HistogramDelta, SeriesKey, Sketch};
pub use shoal_macros::{timed, LabelSet, Metrics};
pub use shoal_proto::client::{DropReason, FlusherStats, Identity};
pub use shoal_proto::{self, limits};

/// Re-exports used by shoal's macros; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::instrument::{
        base_labels, call_labels, call_once, checked_product, describe, timed_future, Callsite, LabelSet, Metric, MetricKind, PlainOutcome,
        Probe, RecorderMetric, ResultOutcome,
    };
    pub use crate::Shoal;
    pub use metrics;

    /// The thread-slot pool, for tests that check slots are returned.
    pub mod slot {
        pub use crate::hot::slot::{free_slots, owned_slots, stripes};
    }
}

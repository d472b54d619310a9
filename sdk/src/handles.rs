//! Recording handles: shoal's own (`Counter`, `Gauge`, `Histogram`: direct
//! calls, no dynamic dispatch) and the `metrics` facade's, which wrap the same
//! series. Every method here is hot path: see the invariant in [`crate::hot`].

use crate::registry::{CounterSeries, GaugeSeries, HistogramSeries};
use shoal_core::sketch::Rejection;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

impl CounterSeries {
    #[inline(always)]
    fn add(&self, n: u64) {
        self.cells.increment(n);
        if let Some(stats) = &self.overflow {
            stats.overflowed_updates.fetch_add(1, Relaxed);
        }
    }
}

impl GaugeSeries {
    #[inline(always)]
    fn accept(&self, value: f64) -> bool {
        if self.overflow {
            self.stats.overflowed_updates.fetch_add(1, Relaxed);
        }
        if value.is_finite() {
            true
        } else {
            self.stats.reject(if value.is_nan() { Rejection::Nan } else { Rejection::Infinite });
            false
        }
    }

    #[inline(always)]
    fn set(&self, value: f64) {
        if self.accept(value) {
            self.cell.set(value);
        }
    }

    #[inline(always)]
    fn add(&self, delta: f64) {
        if self.accept(delta) {
            self.cell.add(delta);
        }
    }
}

impl HistogramSeries {
    #[inline(always)]
    fn record_n(&self, value: f64, n: u64) {
        if self.overflow {
            self.stats.overflowed_updates.fetch_add(1, Relaxed);
        }
        if let Err(why) = self.cells.record(value, n) {
            self.stats.reject(why);
        }
    }
}

impl metrics::CounterFn for CounterSeries {
    #[inline]
    fn increment(&self, value: u64) {
        self.add(value);
    }

    fn absolute(&self, value: u64) {
        self.cells.absolute(value);
    }
}

impl metrics::GaugeFn for GaugeSeries {
    #[inline]
    fn increment(&self, value: f64) {
        self.add(value);
    }

    #[inline]
    fn decrement(&self, value: f64) {
        self.add(-value);
    }

    #[inline]
    fn set(&self, value: f64) {
        GaugeSeries::set(self, value);
    }
}

impl metrics::HistogramFn for HistogramSeries {
    #[inline]
    fn record(&self, value: f64) {
        self.record_n(value, 1);
    }

    /// O(1): one bucket update of `count`, not a loop.
    #[inline]
    fn record_many(&self, value: f64, count: usize) {
        self.record_n(value, count as u64);
    }
}

/// A monotonic counter. Cheap to clone; clones record into the same series.
#[derive(Clone)]
pub struct Counter(pub(crate) Arc<CounterSeries>);

impl Counter {
    /// Adds `n`.
    #[inline]
    pub fn increment(&self, n: u64) {
        self.0.add(n);
    }

    /// Sets the counter from an external monotonic source: the series reports
    /// the largest value given here plus any increments.
    pub fn absolute(&self, value: u64) {
        self.0.cells.absolute(value);
    }

    /// Canonical id `name{labels}` of the series.
    pub fn series(&self) -> &str {
        self.0.key.canonical()
    }

    /// The facade handle for the same series.
    pub fn to_metrics(&self) -> metrics::Counter {
        metrics::Counter::from_arc(self.0.clone())
    }
}

/// A gauge. Non-finite values are rejected and counted.
#[derive(Clone)]
pub struct Gauge(pub(crate) Arc<GaugeSeries>);

impl Gauge {
    /// Sets the value.
    #[inline]
    pub fn set(&self, value: f64) {
        self.0.set(value);
    }

    /// Adds `delta`.
    #[inline]
    pub fn increment(&self, delta: f64) {
        self.0.add(delta);
    }

    /// Subtracts `delta`.
    #[inline]
    pub fn decrement(&self, delta: f64) {
        self.0.add(-delta);
    }

    /// Canonical id `name{labels}` of the series.
    pub fn series(&self) -> &str {
        self.0.key.canonical()
    }

    /// The facade handle for the same series.
    pub fn to_metrics(&self) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.0.clone())
    }
}

/// A histogram recorded into a mergeable sketch. NaN and infinities are
/// rejected and counted.
#[derive(Clone)]
pub struct Histogram(pub(crate) Arc<HistogramSeries>);

impl Histogram {
    /// Records one value.
    #[inline]
    pub fn record(&self, value: f64) {
        self.0.record_n(value, 1);
    }

    /// Records `count` samples of `value` in O(1).
    #[inline]
    pub fn record_many(&self, value: f64, count: u64) {
        self.0.record_n(value, count);
    }

    /// Canonical id `name{labels}` of the series.
    pub fn series(&self) -> &str {
        self.0.key.canonical()
    }

    /// The facade handle for the same series.
    pub fn to_metrics(&self) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.0.clone())
    }
}

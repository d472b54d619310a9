//! Gauge cells. A gauge is a single last-writer-wins value, so it cannot be
//! striped: `set` is one relaxed store, `increment`/`decrement` a
//! compare-exchange loop on the `f64` bits. No lock, no allocation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The cell of one gauge series (`f64` bits).
#[derive(Default)]
pub struct GaugeCell {
    bits: AtomicU64,
}

impl GaugeCell {
    /// Sets the value.
    #[inline]
    pub fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Relaxed);
    }

    /// Adds `delta` (negative to decrement).
    #[inline]
    pub fn add(&self, delta: f64) {
        let _ = self.bits.fetch_update(Relaxed, Relaxed, |b| Some((f64::from_bits(b) + delta).to_bits()));
    }

    /// Current value.
    pub fn read(&self) -> f64 {
        f64::from_bits(self.bits.load(Relaxed))
    }
}

//! The collector's counts of what it received, merged and refused, exposed
//! under `shoal_collector_` so that loss is visible.

use shoal::exposition::TextWriter;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a batch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A malformed field (names, labels, sizes, values).
    InvalidField,
    /// A malformed sketch.
    InvalidSketch,
    /// A metric sent as two different kinds.
    KindConflict,
    /// The ingest queue was full.
    Overloaded,
}

impl Rejection {
    /// Every reason, for exposition.
    pub const ALL: [Rejection; 4] = [Rejection::InvalidField, Rejection::InvalidSketch, Rejection::KindConflict, Rejection::Overloaded];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidField => "invalid_field",
            Rejection::InvalidSketch => "invalid_sketch",
            Rejection::KindConflict => "kind_conflict",
            Rejection::Overloaded => "overloaded",
        }
    }
}

/// Self-metrics of the collector.
#[derive(Default, Debug)]
pub struct Stats {
    /// Batches received (every outcome).
    pub batches_received: AtomicU64,
    /// Batches merged.
    pub batches_merged: AtomicU64,
    /// Batches acknowledged without merging (already merged).
    pub batches_duplicate: AtomicU64,
    /// Batches answered with unknown refs (nothing merged, SDK resends).
    pub batches_unknown_refs: AtomicU64,
    /// Series-updates merged.
    pub series_updates_merged: AtomicU64,
    /// Series-updates in refused batches.
    pub series_updates_rejected: AtomicU64,
    /// Encoded bytes of received batches.
    pub bytes_received: AtomicU64,
    /// Nanoseconds spent merging.
    pub merge_nanos: AtomicU64,
    rejected: [AtomicU64; 4],
}

impl Stats {
    /// Counts a refused batch.
    pub fn reject(&self, why: Rejection, series_updates: u64) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
        self.series_updates_rejected.fetch_add(series_updates, Relaxed);
    }

    /// Refused batches for one reason.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.rejected[why as usize].load(Relaxed)
    }

    /// Writes the self-metrics.
    pub fn write(&self, w: &mut TextWriter, series: usize, instances: usize) {
        let counters: [(&str, &AtomicU64, &str); 7] = [
            ("shoal_collector_batches_received_total", &self.batches_received, "Batches received, whatever their outcome"),
            ("shoal_collector_batches_merged_total", &self.batches_merged, "Batches merged into the rollups"),
            (
                "shoal_collector_batches_duplicate_total",
                &self.batches_duplicate,
                "Batches acknowledged but not merged: already merged before",
            ),
            (
                "shoal_collector_batches_unknown_refs_total",
                &self.batches_unknown_refs,
                "Batches not merged because they referred to unknown series; the SDK resends them",
            ),
            ("shoal_collector_series_updates_merged_total", &self.series_updates_merged, "Series-updates merged"),
            ("shoal_collector_series_updates_rejected_total", &self.series_updates_rejected, "Series-updates in refused batches"),
            ("shoal_collector_bytes_received_total", &self.bytes_received, "Encoded bytes of the batches received"),
        ];
        for (name, value, help) in counters {
            w.family(name, "counter", help);
            w.sample(name, &[], None, &value.load(Relaxed).to_string());
        }
        w.family("shoal_collector_merge_seconds_total", "counter", "Time spent validating and merging batches");
        w.sample(
            "shoal_collector_merge_seconds_total",
            &[],
            None,
            &shoal::exposition::format_value(self.merge_nanos.load(Relaxed) as f64 / 1e9),
        );
        w.family("shoal_collector_batches_rejected_total", "counter", "Batches refused, by reason; nothing of them was merged");
        for why in Rejection::ALL {
            w.sample(
                "shoal_collector_batches_rejected_total",
                &[("reason".into(), why.as_str().into())],
                None,
                &self.rejected(why).to_string(),
            );
        }
        w.family("shoal_collector_series", "gauge", "Rollup series held");
        w.sample("shoal_collector_series", &[], None, &series.to_string());
        w.family("shoal_collector_instances", "gauge", "Instances known (seen within the expiry)");
        w.sample("shoal_collector_instances", &[], None, &instances.to_string());
    }
}

//! Taking deltas: what every series recorded since the previous take.
//!
//! Cells are cumulative and only their recording threads write them. A take
//! reads each series' cumulative value and subtracts the value it read last
//! time, then remembers the new one. A racing update lands either before the
//! read (in this delta) or after it (in the next), never in both and never in
//! neither, so the sum of all deltas equals the sum of all updates, exactly.

use crate::hot::histogram::TakeScratch;
use crate::registry::Registry;
use shoal_core::deltas::{CounterDelta, Deltas, GaugeValue, HistogramDelta};
use std::sync::atomic::Ordering::Relaxed;

/// Takes the deltas of every series. The caller serialises takes.
pub(crate) fn take(registry: &Registry) -> Deltas {
    let mut deltas = Deltas::default();
    for series in registry.counters.all() {
        let now = series.cells.read();
        let before = series.last_taken.swap(now, Relaxed);
        let delta = now.wrapping_sub(before);
        if delta != 0 {
            deltas.counters.push(CounterDelta { key: series.key.clone(), delta });
        }
    }
    for series in registry.gauges.all() {
        deltas.gauges.push(GaugeValue { key: series.key.clone(), value: series.cell.read() });
    }
    let mut scratch = TakeScratch::default();
    for series in registry.histograms.all() {
        if let Some(sketch) = series.cells.take_delta(&mut series.last_taken.lock(), &mut scratch) {
            deltas.histograms.push(HistogramDelta { key: series.key.clone(), sketch });
        }
    }
    deltas
}

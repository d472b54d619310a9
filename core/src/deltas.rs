//! Deltas: what a set of series recorded over an interval. The SDK takes
//! them from its cells, the flush client numbers and sends them, the
//! collector's forwarder builds them from its rollups; all with one type.

use crate::blocklist::Blocklist;
use crate::key::SeriesKey;
use crate::sketch::Sketch;
use std::collections::HashMap;
use std::sync::Arc;

/// A counter's increase since the previous take.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterDelta {
    /// The series.
    pub key: Arc<SeriesKey>,
    /// Increase (u64, wrapping arithmetic on the cumulative cells).
    pub delta: u64,
}

/// A gauge's current value.
#[derive(Clone, Debug, PartialEq)]
pub struct GaugeValue {
    /// The series.
    pub key: Arc<SeriesKey>,
    /// Last value set.
    pub value: f64,
}

/// A histogram's samples since the previous take, as a sketch.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramDelta {
    /// The series.
    pub key: Arc<SeriesKey>,
    /// Sketch of the new samples only.
    pub sketch: Sketch,
}

/// Deltas of every series that changed since the previous take, and the
/// current value of every gauge.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Deltas {
    /// Counters that increased.
    pub counters: Vec<CounterDelta>,
    /// Every gauge.
    pub gauges: Vec<GaugeValue>,
    /// Histograms that recorded samples.
    pub histograms: Vec<HistogramDelta>,
}

impl Deltas {
    /// True if no counter increased, no histogram recorded and no gauge exists.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty() && self.gauges.is_empty() && self.histograms.is_empty()
    }

    /// Number of series-updates carried (one per series in the batch).
    pub fn series_updates(&self) -> usize {
        self.counters.len() + self.gauges.len() + self.histograms.len()
    }

    /// Values carried: the unit in which shoal's conservation counts are
    /// exact. A counter delta of `n` is `n` values (its increments summed), a
    /// histogram delta of `n` samples is `n` values, a gauge is 0 values (a
    /// last-value observation: sent again every flush, never summed).
    /// Taking, absorbing and merging preserve it exactly, which series-updates
    /// do not (two takes of one series absorb into one series-update).
    pub fn values(&self) -> u64 {
        let counters = self.counters.iter().fold(0u64, |a, c| a.wrapping_add(c.delta));
        let histograms = self.histograms.iter().fold(0u64, |a, h| a.wrapping_add(h.sketch.count()));
        counters.wrapping_add(histograms)
    }

    /// Removes the series whose metric name `blocklist` blocks and returns
    /// them. Matches the name as it goes on the wire (sanitised), as the
    /// collector does.
    pub fn remove_blocked(&mut self, blocklist: &Blocklist) -> Deltas {
        let mut removed = Deltas::default();
        if blocklist.is_empty() {
            return removed;
        }
        let blocked = |key: &SeriesKey| blocklist.blocks(key.name());
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.counters).into_iter().partition(|c| !blocked(&c.key));
        self.counters = keep;
        removed.counters = drop;
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.gauges).into_iter().partition(|g| !blocked(&g.key));
        self.gauges = keep;
        removed.gauges = drop;
        let (keep, drop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.histograms).into_iter().partition(|h| !blocked(&h.key));
        self.histograms = keep;
        removed.histograms = drop;
        removed
    }

    /// Delta of a counter by canonical id (`name{k="v"}`).
    pub fn counter(&self, canonical: &str) -> Option<u64> {
        self.counters.iter().find(|c| c.key.canonical() == canonical).map(|c| c.delta)
    }

    /// Value of a gauge by canonical id.
    pub fn gauge(&self, canonical: &str) -> Option<f64> {
        self.gauges.iter().find(|g| g.key.canonical() == canonical).map(|g| g.value)
    }

    /// Sketch of a histogram by canonical id.
    pub fn histogram(&self, canonical: &str) -> Option<&Sketch> {
        self.histograms.iter().find(|h| h.key.canonical() == canonical).map(|h| &h.sketch)
    }

    /// Folds `newer` into `self`: counters add, sketches merge, gauges take
    /// the newer value. Used to carry unacknowledged deltas into the next batch.
    pub fn absorb(&mut self, newer: Deltas) {
        let mut counters: HashMap<u64, usize> = HashMap::new();
        for (i, c) in self.counters.iter().enumerate() {
            counters.insert(c.key.id(), i);
        }
        for c in newer.counters {
            match counters.get(&c.key.id()).copied().filter(|&i| self.counters[i].key == c.key) {
                Some(i) => self.counters[i].delta = self.counters[i].delta.wrapping_add(c.delta),
                None => {
                    counters.insert(c.key.id(), self.counters.len());
                    self.counters.push(c);
                }
            }
        }
        let mut gauges: HashMap<u64, usize> = HashMap::new();
        for (i, g) in self.gauges.iter().enumerate() {
            gauges.insert(g.key.id(), i);
        }
        for g in newer.gauges {
            match gauges.get(&g.key.id()).copied().filter(|&i| self.gauges[i].key == g.key) {
                Some(i) => self.gauges[i].value = g.value,
                None => {
                    gauges.insert(g.key.id(), self.gauges.len());
                    self.gauges.push(g);
                }
            }
        }
        let mut histograms: HashMap<u64, usize> = HashMap::new();
        for (i, h) in self.histograms.iter().enumerate() {
            histograms.insert(h.key.id(), i);
        }
        for h in newer.histograms {
            match histograms.get(&h.key.id()).copied().filter(|&i| self.histograms[i].key == h.key) {
                Some(i) => self.histograms[i].sketch.merge(&h.sketch),
                None => {
                    histograms.insert(h.key.id(), self.histograms.len());
                    self.histograms.push(h);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocklist_matches_names_and_globs_and_keeps_the_rest() {
        let b = Blocklist::new(&["debug_*", "exact_total", "tmp_{a,b}_seconds"]).unwrap();
        assert!(b.blocks("debug_anything"));
        assert!(b.blocks("exact_total"));
        assert!(b.blocks("tmp_b_seconds"));
        assert!(b.blocks("debug.dotted"), "matched as sent on the wire");
        assert!(!b.blocks("exact_total_2"));
        assert!(!b.blocks("http_requests_total"));
        assert!(Blocklist::new(&["a["]).unwrap_err().to_string().contains("a["));
        let key = |n: &str| Arc::new(SeriesKey::new(n, std::iter::empty::<(String, String)>()));
        let mut d = Deltas {
            counters: vec![CounterDelta { key: key("debug_x"), delta: 3 }, CounterDelta { key: key("ok"), delta: 4 }],
            gauges: vec![GaugeValue { key: key("exact_total"), value: 1.0 }],
            histograms: vec![],
        };
        assert_eq!(d.values(), 7);
        let removed = d.remove_blocked(&b);
        assert_eq!((removed.values(), removed.series_updates()), (3, 2));
        assert_eq!((d.values(), d.series_updates()), (4, 1));
        assert!(Blocklist::default().is_empty());
        assert_eq!(d.clone().remove_blocked(&Blocklist::default()).series_updates(), 0);
    }
}

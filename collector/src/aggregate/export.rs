//! A closed interval, as remote-write targets receive it: taken under the
//! aggregator's lock ([`super::Aggregator::export`], clones only), turned
//! into an [`Interval`] off it.

use super::{Kind, SeriesView};
use crate::remote_write::{ExportHistogram, ExportSeries, ExportValue, Interval, NativeBuckets};
use crate::validate::Description;
use shoal_core::exposition::summary_labels;
use std::collections::HashMap;

/// The rollups at the close of an interval.
#[derive(Clone, Debug)]
pub struct Export {
    /// Every rollup series, with its cumulative sketch.
    pub views: Vec<SeriesView>,
    /// The quantiles of the summaries (as `/metrics` shows them).
    pub quantiles: Vec<f64>,
    /// HELP and unit of the metric names that have one.
    pub descriptions: HashMap<String, Description>,
    /// `external_labels`: added to every series that lacks them.
    pub external_labels: Vec<(String, String)>,
}

impl Export {
    /// The interval ending at `end_ms` (Unix ms): counters as cumulative
    /// totals, gauges rolled up over live instances (a gauge without one is
    /// left out), histograms with the summary quantiles over the summary
    /// window, cumulative `_sum` / `_count` and the cumulative native buckets.
    /// Names and labels as exposed on `/metrics`.
    pub fn into_interval(self, end_ms: i64) -> Interval {
        let (quantiles, descriptions, external) = (self.quantiles, self.descriptions, self.external_labels);
        let series = self
            .views
            .into_iter()
            .filter_map(|v| {
                let exposed = v.key.exposed();
                let value = match v.kind {
                    Kind::Counter => ExportValue::Counter(v.total),
                    Kind::Gauge => ExportValue::Gauge(v.gauge?),
                    Kind::Histogram => {
                        let window = v.window.unwrap_or_default();
                        let quantiles =
                            quantiles.iter().zip(window.quantiles(&quantiles)).filter_map(|(&q, x)| x.map(|x| (q, x))).collect();
                        let native = v.cumulative.as_ref().map(NativeBuckets::from_sketch);
                        ExportValue::Histogram(ExportHistogram { quantiles, sum: v.sum, count: v.total, native })
                    }
                };
                let mut labels = match v.kind {
                    Kind::Histogram => summary_labels(exposed.labels()).into_owned(),
                    _ => exposed.labels().to_vec(),
                };
                if !external.is_empty() {
                    for (k, v) in &external {
                        if !labels.iter().any(|(have, _)| have == k) {
                            labels.push((k.clone(), v.clone()));
                        }
                    }
                    labels.sort();
                }
                let d = descriptions.get(v.key.name());
                let help = d.map(|d| d.help.clone()).filter(|h| !h.is_empty());
                let unit = d.and_then(|d| d.unit.clone());
                Some(ExportSeries { name: exposed.name().to_string(), labels, help, unit, value })
            })
            .collect();
        Interval { end_ms, series }
    }
}

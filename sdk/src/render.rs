//! The instance's own view in the Prometheus text format (through the
//! core crate's one writer): what `Shoal::render_prometheus` returns.

use crate::inner::Inner;
use crate::registry::Refusal;
use shoal_core::exposition::{format_value, help_text, write_summary, TextWriter};
use shoal_core::{OwnMetrics, SeriesKey, Sketch};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

/// What one exposed series adds up to: several registered series can land on
/// the same exposed name and labels once sanitised (`a.b` and `a_b`); they are
/// merged, never written twice (Prometheus would reject the whole scrape).
enum Exposed {
    Counter(u64),
    Gauge(f64),
    Summary(Sketch),
}

/// An exposed family: its TYPE, its HELP, and its series by exposed key.
type Family = (&'static str, String, BTreeMap<String, (Vec<(String, String)>, Exposed)>);

pub(crate) fn render(inner: &Inner) -> String {
    let reg = &inner.registry;
    let descriptions = reg.descriptions.read().clone();
    let help = |name: &str, fallback: &str| {
        let d = descriptions.get(name);
        help_text(d.map(|d| d.text.as_str()), d.and_then(|d| d.unit).map(|u| u.as_str()), fallback)
    };
    // Exposed name -> (kind, help, exposed key -> value), in name order.
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut add = |key: &SeriesKey, kind: &'static str, fallback: &str, value: Exposed| {
        let exposed = key.exposed();
        let family = families.entry(exposed.name().to_string()).or_insert_with(|| (kind, help(key.name(), fallback), BTreeMap::new()));
        if family.0 != kind {
            // Two kinds under one exposed name: the first kind registered wins.
            return;
        }
        match family.2.entry(exposed.canonical().to_string()) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert((exposed.labels().to_vec(), value));
            }
            std::collections::btree_map::Entry::Occupied(mut o) => match (&mut o.get_mut().1, value) {
                (Exposed::Counter(a), Exposed::Counter(b)) => *a = a.wrapping_add(b),
                (Exposed::Gauge(a), Exposed::Gauge(b)) => *a = b,
                (Exposed::Summary(a), Exposed::Summary(b)) => a.merge(&b),
                _ => {}
            },
        }
    };
    for s in reg.counters.all() {
        add(&s.key, "counter", "counter recorded with shoal", Exposed::Counter(s.cells.read()));
    }
    for s in reg.gauges.all() {
        add(&s.key, "gauge", "gauge recorded with shoal", Exposed::Gauge(s.cell.read()));
    }
    for s in reg.histograms.all() {
        add(&s.key, "summary", "histogram recorded with shoal", Exposed::Summary(s.cells.read()));
    }
    let mut w = TextWriter::default();
    for (name, (kind, help, series)) in families {
        w.family(&name, kind, &help);
        for (labels, value) in series.into_values() {
            match value {
                Exposed::Counter(v) => w.sample(&name, &labels, None, &v.to_string()),
                Exposed::Gauge(v) => w.sample(&name, &labels, None, &format_value(v)),
                Exposed::Summary(sketch) => write_summary(&mut w, &name, &labels, &sketch),
            }
        }
    }
    own_metrics(inner).write(&mut w);
    w.finish()
}

/// The instance's own health series: written here, and sent to the
/// collector as ordinary series of the instance ([`Inner`]'s `DeltaSource`).
pub(crate) fn own_metrics(inner: &Inner) -> OwnMetrics {
    let reg = &inner.registry;
    let stats = &reg.stats;
    let mut own = OwnMetrics::default();
    for (kind, n) in reg.series_counts() {
        own.gauge("shoal_series", "Series registered in this process, by kind", &[("kind", kind.as_str())], n as f64);
    }
    for (reason, n) in [("nan", &stats.rejected_nan), ("infinite", &stats.rejected_infinite)] {
        own.counter("shoal_rejected_values_total", "Values rejected and not recorded, by reason", &[("reason", reason)], n.load(Relaxed));
    }
    for why in Refusal::all() {
        own.counter(
            "shoal_rejected_series_total",
            "Series refused at registration (a collector would refuse them); their updates are never sent",
            &[("reason", why.as_str())],
            stats.refused_series(why),
        );
    }
    let counters = reg.counters.discarded().map_or(0, |s| s.cells.read());
    let histograms = reg.histograms.discarded().map_or(0, |s| s.cells.read().count());
    for (kind, n) in [("counter", counters), ("histogram", histograms)] {
        own.counter(
            "shoal_rejected_updates_total",
            "Values recorded into refused series (counter increments, histogram samples), never sent",
            &[("kind", kind)],
            n,
        );
    }
    own.counter(
        "shoal_overflow_updates_total",
        "Updates recorded into a metric's overflow series after its cardinality limit",
        &[],
        stats.overflowed_updates.load(Relaxed),
    );
    own.counter(
        "shoal_overflow_series_total",
        "Registrations of a new label set refused by the cardinality limit",
        &[],
        stats.overflowed_series.load(Relaxed),
    );
    own.gauge("shoal_cardinality_limit", "Series allowed per metric name", &[], reg.cardinality_limit as f64);
    own.extend(inner.flusher_stats.own_metrics());
    own
}

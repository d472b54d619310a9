//! The instance's own view in the Prometheus text format (through the
//! core crate's one writer): what `Shoal::render_prometheus` returns.

use crate::inner::Inner;
use crate::registry::Refusal;
use shoal_core::exposition::{format_value, help_text, write_summary, TextWriter};
use shoal_core::{SeriesKey, Sketch};
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
    write_self_metrics(&mut w, inner);
    w.finish()
}

fn write_self_metrics(w: &mut TextWriter, inner: &Inner) {
    let reg = &inner.registry;
    let stats = &reg.stats;
    w.family("shoal_series", "gauge", "Series registered in this process, by kind");
    for (kind, n) in reg.series_counts() {
        w.sample("shoal_series", &[("kind".into(), kind.as_str().into())], None, &n.to_string());
    }
    w.family("shoal_rejected_values_total", "counter", "Values rejected and not recorded, by reason");
    for (reason, n) in [("nan", &stats.rejected_nan), ("infinite", &stats.rejected_infinite)] {
        w.sample("shoal_rejected_values_total", &[("reason".into(), reason.into())], None, &n.load(Relaxed).to_string());
    }
    w.family(
        "shoal_rejected_series_total",
        "counter",
        "Series refused at registration (a collector would refuse them); their updates are never sent",
    );
    for why in Refusal::all() {
        w.sample("shoal_rejected_series_total", &[("reason".into(), why.as_str().into())], None, &stats.refused_series(why).to_string());
    }
    w.family(
        "shoal_rejected_updates_total",
        "counter",
        "Values recorded into refused series (counter increments, histogram samples), never sent",
    );
    let counters = reg.counters.discarded().map_or(0, |s| s.cells.read());
    let histograms = reg.histograms.discarded().map_or(0, |s| s.cells.read().count());
    for (kind, n) in [("counter", counters), ("histogram", histograms)] {
        w.sample("shoal_rejected_updates_total", &[("kind".into(), kind.into())], None, &n.to_string());
    }
    w.family("shoal_overflow_updates_total", "counter", "Updates recorded into a metric's overflow series after its cardinality limit");
    w.sample("shoal_overflow_updates_total", &[], None, &stats.overflowed_updates.load(Relaxed).to_string());
    w.family("shoal_overflow_series_total", "counter", "Registrations of a new label set refused by the cardinality limit");
    w.sample("shoal_overflow_series_total", &[], None, &stats.overflowed_series.load(Relaxed).to_string());
    w.family("shoal_cardinality_limit", "gauge", "Series allowed per metric name");
    w.sample("shoal_cardinality_limit", &[], None, &reg.cardinality_limit.to_string());
    inner.flusher_stats.write(w);
}

//! A process's own health series: what shoal counts about itself (flushes,
//! refusals, drops by reason). Listed once, as data, and used twice: written
//! into the local exposition, and sent to the collector as ordinary series
//! of the instance, so that a fleet's own losses show where its metrics do.

use crate::exposition::{format_value, TextWriter};
use crate::key::SeriesKey;

/// Metric names starting with this are shoal's own (the SDK's health
/// series, the collector's self-metrics): an application may not register
/// one, so its series can never collide with them in a batch or on a
/// collector's `/metrics`.
pub const RESERVED_PREFIX: &str = "shoal_";

/// Whether `name` (as exposed, sanitised) is reserved for shoal's own series.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with(RESERVED_PREFIX)
}

/// The value of one own series.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OwnValue {
    /// A cumulative count since the process started.
    Counter(u64),
    /// A current value.
    Gauge(f64),
}

impl OwnValue {
    /// The value as the text exposition spells it.
    pub fn text(&self) -> String {
        match self {
            OwnValue::Counter(v) => v.to_string(),
            OwnValue::Gauge(v) => format_value(*v),
        }
    }
}

/// One family of own series: a name, its HELP, and a value per label set.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnFamily {
    /// Metric name (already a valid Prometheus name).
    pub name: &'static str,
    /// HELP text.
    pub help: &'static str,
    /// `(labels, value)`; every value of a family has the same kind.
    pub samples: Vec<(Vec<(String, String)>, OwnValue)>,
}

impl OwnFamily {
    /// `counter` or `gauge` (every value of a family has the same kind).
    pub fn kind(&self) -> &'static str {
        match self.samples.first() {
            Some((_, OwnValue::Gauge(_))) => "gauge",
            _ => "counter",
        }
    }
}

/// Own series, in exposition order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OwnMetrics {
    /// The families.
    pub families: Vec<OwnFamily>,
}

impl OwnMetrics {
    /// Adds a counter sample (to the family `name`, started if needed).
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: u64) {
        self.push(name, help, labels, OwnValue::Counter(value));
    }

    /// Adds a gauge sample (to the family `name`, started if needed).
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: f64) {
        self.push(name, help, labels, OwnValue::Gauge(value));
    }

    fn push(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], value: OwnValue) {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        match self.families.last_mut() {
            Some(f) if f.name == name => f.samples.push((labels, value)),
            _ => self.families.push(OwnFamily { name, help, samples: vec![(labels, value)] }),
        }
    }

    /// Appends the families of `other`.
    pub fn extend(&mut self, other: OwnMetrics) {
        self.families.extend(other.families);
    }

    /// Writes every family in the Prometheus text format.
    pub fn write(&self, w: &mut TextWriter) {
        for f in &self.families {
            w.family(f.name, f.kind(), f.help);
            for (labels, value) in &f.samples {
                w.sample(f.name, labels, None, &value.text());
            }
        }
    }

    /// Every series with its key and value.
    pub fn series(&self) -> impl Iterator<Item = (SeriesKey, OwnValue)> + '_ {
        self.families.iter().flat_map(|f| f.samples.iter().map(|(labels, v)| (SeriesKey::new(f.name, labels.iter().cloned()), *v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_group_consecutive_samples_and_write_as_text() {
        let mut own = OwnMetrics::default();
        own.counter("shoal_x_total", "X things", &[("reason", "a")], 3);
        own.counter("shoal_x_total", "X things", &[("reason", "b")], 0);
        own.gauge("shoal_y", "Y now", &[], 1.5);
        assert_eq!(own.families.len(), 2);
        let mut w = TextWriter::default();
        own.write(&mut w);
        let text = w.finish();
        assert!(text.contains("# TYPE shoal_x_total counter\n"), "{text}");
        assert!(text.contains("shoal_x_total{reason=\"a\"} 3\n"), "{text}");
        assert!(text.contains("# TYPE shoal_y gauge\nshoal_y 1.5\n"), "{text}");
        let keys: Vec<String> = own.series().map(|(k, _)| k.canonical().to_string()).collect();
        assert_eq!(keys, [r#"shoal_x_total{reason="a"}"#, r#"shoal_x_total{reason="b"}"#, "shoal_y"]);
    }
}

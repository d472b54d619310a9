//! Series identity: a metric name plus a sorted label set.
//!
//! The canonical id of a series is the string `name{k1="v1",k2="v2"}` with
//! label keys sorted (values escaped as in the Prometheus text format), and
//! its stable 64-bit hash is XXH3-64 of that string: the same in every process
//! and version, so it can route series to collectors.

use crate::names::{sanitize_label_name, sanitize_metric_name};
use std::fmt::Write;

/// The identity of one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    canonical: String,
    name: String,
    labels: Vec<(String, String)>,
    id: u64,
}

impl SeriesKey {
    /// Builds a key; label order does not matter. If a label key repeats, the
    /// last value wins.
    pub fn new<N, I, K, V>(name: N, labels: I) -> SeriesKey
    where
        N: Into<String>,
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let name = name.into();
        let mut labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        // Stable sort keeps call order among equal keys; keep the last of each.
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(String, String)> = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            match deduped.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => deduped.push((k, v)),
            }
        }
        let canonical = canonical_string(&name, &deduped);
        let id = stable_hash(&canonical);
        SeriesKey { canonical, name, labels: deduped, id }
    }

    /// The metric name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Labels sorted by key.
    pub fn labels(&self) -> &[(String, String)] {
        &self.labels
    }

    /// `name{k="v",...}` with sorted keys.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Stable XXH3-64 hash of [`SeriesKey::canonical`].
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The key this series is exposed and sent under: Prometheus-valid name
    /// and label keys (see [`crate::names`]), label keys that collide once
    /// sanitised de-duplicated (the last wins, as in [`SeriesKey::new`]).
    pub fn exposed(&self) -> SeriesKey {
        SeriesKey::new(sanitize_metric_name(&self.name), self.labels.iter().map(|(k, v)| (sanitize_label_name(k), v.clone())))
    }
}

/// Stable 64-bit hash of a canonical series string.
pub fn stable_hash(canonical: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())
}

fn canonical_string(name: &str, labels: &[(String, String)]) -> String {
    let mut s = String::with_capacity(name.len() + labels.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + 2);
    s.push_str(name);
    if !labels.is_empty() {
        s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{k}=\"");
            escape_label_value(&mut s, v);
            s.push('"');
        }
        s.push('}');
    }
    s
}

/// Appends `v` escaped for a Prometheus label value (`\\`, `\"`, `\n`).
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_order_does_not_matter() {
        let a = SeriesKey::new("req", [("b", "2"), ("a", "1")]);
        let b = SeriesKey::new("req", [("a", "1"), ("b", "2")]);
        assert_eq!(a, b);
        assert_eq!(a.canonical(), r#"req{a="1",b="2"}"#);
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn values_are_escaped_in_the_canonical_form() {
        let k = SeriesKey::new("m", [("path", "a\"b\\c\nd")]);
        assert_eq!(k.canonical(), r#"m{path="a\"b\\c\nd"}"#);
        // Distinct label sets never collide in the canonical form.
        let x = SeriesKey::new("m", [("a", "1\",b=\"2")]);
        let y = SeriesKey::new("m", [("a", "1"), ("b", "2")]);
        assert_ne!(x.canonical(), y.canonical());
    }

    #[test]
    fn hash_is_stable_across_versions() {
        // Pinned: routing depends on this value never changing.
        assert_eq!(stable_hash(r#"http_requests_total{method="GET"}"#), SeriesKey::new("http_requests_total", [("method", "GET")]).id());
        assert_eq!(stable_hash(""), 0x2d06800538d394c2);
    }

    #[test]
    fn repeated_label_keeps_last_value() {
        let k = SeriesKey::new("m", [("a", "1"), ("a", "2")]);
        assert_eq!(k.labels(), &[("a".to_string(), "2".to_string())]);
    }
}

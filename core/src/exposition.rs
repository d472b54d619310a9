//! Prometheus text exposition (format 0.0.4) of cumulative values.
//!
//! The one writer of the text format: the SDK's local render and its
//! self-metrics, and the collector's `/metrics` (cluster rollups and its
//! self-metrics) all go through [`TextWriter`], so names, labels, escapes and
//! numbers are written the same way everywhere.

use crate::names::sanitize_label_name;
use crate::sketch::Sketch;
use std::fmt::Write;

/// Quantiles rendered for every histogram (as a Prometheus summary).
pub const SUMMARY_QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// Escapes `# HELP` text (`\\` and newlines).
pub fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Formats a float the way Prometheus parses it.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        let mut s = format!("{v}");
        if s == "-0" {
            s = "0".into();
        }
        s
    }
}

/// Writes a text exposition, one metric family at a time.
#[derive(Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    /// Starts a family: `# HELP` (always present, for linters) and `# TYPE`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// Writes one sample line. `extra` is appended after the series labels
    /// (e.g. `quantile`).
    pub fn sample(&mut self, name: &str, labels: &[(String, String)], extra: Option<(&str, &str)>, value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() || extra.is_some() {
            self.out.push('{');
            let mut first = true;
            for (k, v) in labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(extra) {
                if !first {
                    self.out.push(',');
                }
                first = false;
                self.out.push_str(&sanitize_label_name(k));
                self.out.push_str("=\"");
                crate::key::escape_label_value(&mut self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(value);
        self.out.push('\n');
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// Labels of a summary series: a series label named `quantile` becomes
/// `exported_quantile` (Prometheus's convention) so it cannot clash with the
/// summary's own `quantile` label.
pub fn summary_labels(labels: &[(String, String)]) -> std::borrow::Cow<'_, [(String, String)]> {
    if labels.iter().any(|(k, _)| k == "quantile") {
        let renamed =
            labels.iter().map(|(k, v)| (if k == "quantile" { "exported_quantile".into() } else { k.clone() }, v.clone())).collect();
        std::borrow::Cow::Owned(renamed)
    } else {
        std::borrow::Cow::Borrowed(labels)
    }
}

/// Writes the sample lines of a summary from a sketch. A series label named
/// `quantile` is renamed `exported_quantile` (Prometheus's convention), so it
/// cannot clash with the summary's own.
pub fn write_summary(w: &mut TextWriter, name: &str, labels: &[(String, String)], sketch: &Sketch) {
    let labels = &*summary_labels(labels);
    for q in SUMMARY_QUANTILES {
        let v = sketch.quantile(q).map(format_value).unwrap_or_else(|| "NaN".into());
        w.sample(name, labels, Some(("quantile", &q.to_string())), &v);
    }
    w.sample(&format!("{name}_sum"), labels, None, &format_value(sketch.sum()));
    w.sample(&format!("{name}_count"), labels, None, &sketch.count().to_string());
}

/// Help text for a described metric: description plus unit.
pub fn help_text(description: Option<&str>, unit: Option<&str>, fallback: &str) -> String {
    let text = description.filter(|d| !d.is_empty()).unwrap_or(fallback);
    match unit {
        Some(u) if !u.is_empty() => format!("{text} (unit: {u})"),
        _ => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_escape_values() {
        let mut w = TextWriter::default();
        w.family("m", "counter", "line1\nline2");
        w.sample("m", &[("path".into(), "a\"b".into())], Some(("quantile", "0.5")), "1");
        let text = w.finish();
        assert!(text.contains("# HELP m line1\\nline2\n"));
        assert!(text.contains("m{path=\"a\\\"b\",quantile=\"0.5\"} 1\n"));
    }

    #[test]
    fn values_use_prometheus_spelling() {
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(-0.0), "0");
        assert_eq!(format_value(1e-7), "0.0000001");
        assert_eq!(format_value(12.5), "12.5");
    }
}

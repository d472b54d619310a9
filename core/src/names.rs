//! The name rules, in one place: what a metric name and a label key may be,
//! and how a name that is not valid is rewritten for exposition and the wire.
//!
//! Used by the SDK (when a series is registered), the collector (when a
//! series is defined), the exposition writer and, at compile time, the
//! `shoal-macros` crate, so the three can never disagree again.

/// True for a valid Prometheus metric name: `[a-zA-Z_:][a-zA-Z0-9_:]*`.
pub fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// True for a valid label key: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with
/// `__` (reserved by Prometheus for its own labels, such as `__name__`).
pub fn is_label_key(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

/// Rewrites a metric name into the Prometheus charset `[a-zA-Z_:][a-zA-Z0-9_:]*`
/// (every other character becomes `_`; an empty name becomes `_`).
pub fn sanitize_metric_name(name: &str) -> String {
    sanitize(name, true)
}

/// Rewrites a label key into `[a-zA-Z_][a-zA-Z0-9_]*`. A reserved `__` prefix
/// is kept: such a key is refused by [`is_label_key`], not silently renamed.
pub fn sanitize_label_name(name: &str) -> String {
    sanitize(name, false)
}

fn sanitize(name: &str, colons: bool) -> String {
    let mut out = String::with_capacity(name.len().max(1));
    for (i, c) in name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (colons && c == ':') || (i > 0 && c.is_ascii_digit());
        out.push(if ok { c } else { '_' });
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus() {
        assert!(is_metric_name("http_requests_total"));
        assert!(is_metric_name("a:b"));
        assert!(is_metric_name("__x"), "a reserved prefix is a valid metric name");
        assert!(!is_metric_name("9a"));
        assert!(!is_metric_name(""));
        assert!(!is_metric_name("a.b"));
        assert!(is_label_key("_x1"));
        assert!(!is_label_key("a:b"));
        assert!(!is_label_key("__x"), "reserved by Prometheus");
        assert!(!is_label_key("__name__"));
        assert!(!is_label_key(""));
    }

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize_metric_name("http.requests-total"), "http_requests_total");
        assert_eq!(sanitize_metric_name("9lives"), "_lives");
        assert_eq!(sanitize_metric_name("a:b"), "a:b");
        assert_eq!(sanitize_label_name("a:b"), "a_b");
        assert_eq!(sanitize_label_name(""), "_");
        for s in ["a.b", "9", "é", "x y", "__a"] {
            assert!(is_metric_name(&sanitize_metric_name(s)), "{s}");
        }
    }
}

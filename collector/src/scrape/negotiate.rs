//! Content negotiation for `/metrics`: `Accept` (which exposition format)
//! and `Accept-Encoding` (gzip or not), parsed as RFC 9110 lists with
//! q-values and quoted strings, not matched by substring.

/// An exposition format `/metrics` can answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// Varint-length-delimited `io.prometheus.client.MetricFamily` messages.
    Protobuf,
}

/// Content type of the text answer.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Content type of the protobuf answer.
pub const PROTOBUF_CONTENT_TYPE: &str = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// The `proto` parameter the protobuf answer needs.
const PROTOBUF_PROTO: &str = "io.prometheus.client.MetricFamily";

impl Format {
    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT_CONTENT_TYPE,
            Format::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// One element of an `Accept` list.
#[derive(Clone, Debug, PartialEq)]
struct MediaRange {
    /// Lower case; `*` for a wildcard.
    kind: String,
    /// Lower case; `*` for a wildcard.
    subtype: String,
    /// Media type parameters (before `q`), names lower case, values unquoted.
    params: Vec<(String, String)>,
    /// Weight in `[0, 1]`.
    q: f64,
}

impl MediaRange {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Splits `s` at `sep` outside double-quoted strings (which may hold `\"`).
fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

/// A parameter value: a token, or a quoted string with its escapes removed.
fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
            }
            out
        }
        None => v.to_string(),
    }
}

/// A `q` value (`0`, `1`, `0.x` with at most three decimals); `None` when malformed.
fn weight(v: &str) -> Option<f64> {
    let q: f64 = v.parse().ok()?;
    let well_formed = v.len() <= 5 && v.chars().all(|c| c.is_ascii_digit() || c == '.') && (0.0..=1.0).contains(&q);
    well_formed.then_some(q)
}

/// The elements of an `Accept` header, in order; malformed elements are left out.
fn parse_accept(header: &str) -> Vec<MediaRange> {
    let mut ranges = Vec::new();
    'elements: for element in split_unquoted(header, ',') {
        let mut parts = split_unquoted(element, ';').into_iter();
        let Some((kind, subtype)) = parts.next().and_then(|t| t.trim().split_once('/')) else { continue };
        let (kind, subtype) = (kind.trim().to_ascii_lowercase(), subtype.trim().to_ascii_lowercase());
        if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
            continue;
        }
        let mut range = MediaRange { kind, subtype, params: Vec::new(), q: 1.0 };
        for p in parts {
            let Some((name, value)) = p.split_once('=') else { continue 'elements };
            let name = name.trim().to_ascii_lowercase();
            if name == "q" {
                // What follows `q` are accept-extensions, not media type parameters.
                match weight(value.trim()) {
                    Some(q) => range.q = q,
                    None => continue 'elements,
                }
                break;
            }
            range.params.push((name, unquote(value.trim())));
        }
        ranges.push(range);
    }
    ranges
}

/// Weight and position of the range that decides for an offer: the most
/// specific range matching it (RFC 9110, 12.5.1), or `None`. `specificity`
/// is `None` for ranges that do not match.
fn decide(ranges: &[MediaRange], specificity: impl Fn(&MediaRange) -> Option<u32>) -> Option<(f64, usize)> {
    ranges
        .iter()
        .enumerate()
        .filter_map(|(i, r)| specificity(r).map(|s| (s, r.q, i)))
        // Most specific first; among equals, the first listed.
        .max_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)))
        .map(|(_, q, i)| (q, i))
}

/// The format to answer a request whose `Accept` header (all its values
/// joined by `,`) is `accept`.
///
/// The protobuf answer is chosen only when a range names it explicitly,
/// `application/vnd.google.protobuf` with `proto=io.prometheus.client.MetricFamily`
/// and `encoding=delimited` (wildcards never select it, as in the Go client
/// library), and its weight beats the text format's: `text/plain` (without
/// `version` or with `version=0.0.4`), `text/*` or `*/*`, the most specific
/// match deciding. Equal weights go to the range listed first. Everything
/// else, no header or one that accepts neither, gets the text format.
pub fn format(accept: Option<&str>) -> Format {
    let Some(accept) = accept else { return Format::Text };
    let ranges = parse_accept(accept);
    let protobuf = decide(&ranges, |r| {
        let named = r.kind == "application"
            && r.subtype == "vnd.google.protobuf"
            && r.param("proto") == Some(PROTOBUF_PROTO)
            && r.param("encoding") == Some("delimited");
        named.then_some(3)
    });
    let text = decide(&ranges, |r| match (r.kind.as_str(), r.subtype.as_str()) {
        ("text", "plain") => match r.param("version") {
            None => Some(2),
            Some("0.0.4") => Some(3),
            Some(_) => None,
        },
        ("text", "*") => Some(1),
        ("*", "*") => Some(0),
        _ => None,
    });
    match (protobuf, text) {
        (Some((pq, _)), None) if pq > 0.0 => Format::Protobuf,
        (Some((pq, pi)), Some((tq, ti))) if pq > 0.0 && (pq > tq || (pq == tq && pi < ti)) => Format::Protobuf,
        _ => Format::Text,
    }
}

/// Whether an `Accept-Encoding` header (all its values joined by `,`)
/// allows gzip and prefers it to no encoding: `gzip` (or `x-gzip`) with a
/// weight above zero, or, when it is not listed, `*` with one; and not
/// below the weight given to `identity`, when that is listed.
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    let Some(header) = accept_encoding else { return false };
    let (mut gzip, mut any, mut identity) = (None, None, None);
    for element in header.split(',') {
        let mut parts = element.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let mut q = Some(1.0);
        for p in parts {
            if let Some((name, value)) = p.split_once('=') {
                if name.trim().eq_ignore_ascii_case("q") {
                    q = weight(value.trim());
                }
            }
        }
        let Some(q) = q else { continue };
        let slot = match coding.as_str() {
            "gzip" | "x-gzip" => &mut gzip,
            "*" => &mut any,
            "identity" => &mut identity,
            _ => continue,
        };
        // A coding listed twice: the higher weight.
        *slot = Some(slot.map_or(q, |old: f64| old.max(q)));
    }
    let q = gzip.or(any).unwrap_or(0.0);
    q > 0.0 && q >= identity.unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 sends with `--enable-feature=native-histograms`.
    const PROMETHEUS_PROTOBUF: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    /// What Prometheus 2.42 sends without it.
    const PROMETHEUS_TEXT: &str =
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn prometheus_headers() {
        assert_eq!(format(Some(PROMETHEUS_PROTOBUF)), Format::Protobuf);
        assert_eq!(format(Some(PROMETHEUS_TEXT)), Format::Text);
        assert_eq!(format(None), Format::Text);
        assert_eq!(format(Some("")), Format::Text);
    }

    #[test]
    fn protobuf_needs_an_explicit_range_with_both_parameters() {
        assert_eq!(format(Some("*/*")), Format::Text);
        assert_eq!(format(Some("application/*")), Format::Text);
        assert_eq!(format(Some("application/vnd.google.protobuf")), Format::Text);
        assert_eq!(format(Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily")), Format::Text);
        assert_eq!(format(Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text")), Format::Text);
        assert_eq!(format(Some("application/vnd.google.protobuf;proto=other.Message;encoding=delimited")), Format::Text);
        // Spaces, case of names, quoted values and parameter order do not matter.
        assert_eq!(
            format(Some(" Application/Vnd.Google.Protobuf ; Encoding=\"delimited\" ; PROTO=io.prometheus.client.MetricFamily ")),
            Format::Protobuf
        );
        // Not a substring match: the type must be exactly this one.
        assert_eq!(
            format(Some("application/vnd.google.protobuf-x;proto=io.prometheus.client.MetricFamily;encoding=delimited")),
            Format::Text
        );
        assert_eq!(
            format(Some("text/plain;x=\"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited\"")),
            Format::Text
        );
    }

    #[test]
    fn q_values_decide() {
        let pb = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
        assert_eq!(format(Some(&format!("{pb};q=0.4,text/plain;q=0.5"))), Format::Text);
        assert_eq!(format(Some(&format!("text/plain;q=0.5,{pb};q=0.6"))), Format::Protobuf);
        assert_eq!(format(Some(&format!("{pb};q=0,*/*"))), Format::Text, "q=0: not acceptable");
        assert_eq!(format(Some(&format!("{pb};q=0"))), Format::Text);
        // Equal weights: the first listed.
        assert_eq!(format(Some(&format!("{pb},text/plain"))), Format::Protobuf);
        assert_eq!(format(Some(&format!("text/plain,{pb}"))), Format::Text);
        // The most specific text range decides, wherever it stands.
        assert_eq!(format(Some(&format!("text/plain;version=0.0.4;q=0.2,{pb};q=0.3,text/*;q=1"))), Format::Protobuf);
        assert_eq!(format(Some(&format!("*/*;q=0.9,{pb};q=0.5"))), Format::Text);
        // A text version we do not speak does not count for text.
        assert_eq!(format(Some(&format!("text/plain;version=1.0.0,{pb};q=0.3"))), Format::Protobuf);
        // Parameters after q are accept-extensions.
        assert_eq!(format(Some(&format!("{pb};q=0.9;ext=1,text/plain;q=0.8"))), Format::Protobuf);
        // A malformed q leaves its element out.
        assert_eq!(format(Some(&format!("{pb};q=2,text/plain;q=0.1"))), Format::Text);
        assert_eq!(format(Some(&format!("{pb};q=abc"))), Format::Text);
        assert_eq!(format(Some(&format!("garbage,{pb};q=0.7,text/plain;q=0.6"))), Format::Protobuf);
    }

    #[test]
    fn gzip_by_accept_encoding() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("GZip")));
        assert!(accepts_gzip(Some("br, gzip;q=0.5, deflate")));
        assert!(accepts_gzip(Some("x-gzip")));
        assert!(accepts_gzip(Some("*")));
        assert!(accepts_gzip(Some("identity;q=0.5, *")));
        assert!(!accepts_gzip(None));
        assert!(!accepts_gzip(Some("")));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("br, deflate")));
        assert!(!accepts_gzip(Some("gzip;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=0, *")), "an explicit gzip;q=0 wins over *");
        assert!(!accepts_gzip(Some("*;q=0")));
        assert!(!accepts_gzip(Some("gzip;q=0.2, identity;q=0.9")), "identity preferred");
        assert!(!accepts_gzip(Some("gzip;q=nope")));
        assert!(!accepts_gzip(Some("gzipx")));
    }
}

//! The StatsD / DogStatsD line grammar, without allocation.
//!
//! ```text
//! line    = name ":" value *(":" value) "|" type *("|" field)
//! type    = "c" | "g" | "ms" | "h" | "d" | "s"
//! field   = "@" rate            ; 0 < rate <= 1
//!         | "#" tag *("," tag)  ; tag = key ":" value (DogStatsD)
//!         | "c:" container-id   ; DogStatsD origin detection: accepted, ignored
//!         | "T" unix-seconds    ; DogStatsD timestamp: accepted, ignored
//!         | "e:" external-data  ; DogStatsD origin detection: accepted, ignored
//! ```
//!
//! Decisions (documented in the README's StatsD section):
//! - a value list `name:v1:v2|type` (DogStatsD packing) is several samples of
//!   one series; a gauge value with a leading `+` or `-` is a delta (Etsy);
//! - the sample rate is checked on every type but used only by `c`, `ms`,
//!   `h` and `d` (Etsy ignores it on gauges and sets);
//! - a tag without a value (`#canary`) refuses the line
//!   ([`Reason::TagWithoutValue`]): Prometheus treats a label whose value is
//!   `""` as absent, so `x{canary=""}` would collide with the untagged `x`;
//! - `|T<unix>` is accepted and ignored: values count in the interval they
//!   arrive in, like every other StatsD line (a rollup interval is only as
//!   trustworthy as the collector's clock);
//! - events (`_e{...}`) and service checks (`_sc|...`) are refused
//!   ([`Reason::Unsupported`]).
//!
//! Only the syntax of a line is checked here, so that the hot loop never
//! allocates; names and tags are turned into a series (sanitised and checked
//! against the core name rules) by the accumulator, once per new series.

use shoal_proto::limits::MAX_LABELS;

/// Tags a line may carry: the protocol's label limit. Counting stops there,
/// so an absurd tag list costs no more than this to refuse.
pub const MAX_TAGS: usize = MAX_LABELS;

/// A StatsD metric type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// `c`: a counter increment (`value / rate` is added).
    Counter,
    /// `g`: a gauge (absolute, or a delta with a leading sign).
    Gauge,
    /// `ms`: a timer in milliseconds, recorded in seconds into a histogram.
    Timer,
    /// `h`: a histogram sample.
    Histogram,
    /// `d`: a DogStatsD distribution sample (a histogram here).
    Distribution,
    /// `s`: a set member (distinct values per interval are counted).
    Set,
}

impl Type {
    fn parse(text: &str) -> Option<Type> {
        Some(match text {
            "c" => Type::Counter,
            "g" => Type::Gauge,
            "ms" => Type::Timer,
            "h" => Type::Histogram,
            "d" => Type::Distribution,
            "s" => Type::Set,
            _ => return None,
        })
    }

    /// One byte standing for the type (part of the accumulator's line key).
    pub fn tag(self) -> u8 {
        match self {
            Type::Counter => b'c',
            Type::Gauge => b'g',
            Type::Timer => b'm',
            Type::Histogram => b'h',
            Type::Distribution => b'd',
            Type::Set => b's',
        }
    }

    /// True for the types that record into a histogram sketch.
    pub fn is_histogram(self) -> bool {
        matches!(self, Type::Timer | Type::Histogram | Type::Distribution)
    }
}

/// Why a line (or a datagram) was refused: the `reason` label of
/// `shoal_collector_statsd_lines_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A UDP datagram larger than `statsd_max_datagram_bytes` (counted once
    /// per datagram: its lines are not looked at).
    DatagramTooLarge,
    /// A TCP line longer than `statsd_max_datagram_bytes`.
    LineTooLong,
    /// The line is not UTF-8.
    InvalidUtf8,
    /// No `:` between name and value.
    MissingValue,
    /// No `|type`.
    MissingType,
    /// A type other than `c`, `g`, `ms`, `h`, `d`, `s`.
    UnknownType,
    /// A value that is not a number (or an empty one), or a counter
    /// increment too large to count exactly (value / rate over 2^53).
    BadValue,
    /// NaN or ±infinity (also a finite value that overflows to infinity).
    NonFinite,
    /// A negative counter increment (shoal counters only grow).
    NegativeCounter,
    /// A sample rate that is not a number in [`MIN_RATE`, 1].
    BadRate,
    /// A `|` field that is none of `@`, `#`, `c:`, `T`, `e:`.
    BadField,
    /// A `|T` field that is not Unix seconds.
    BadTimestamp,
    /// More than [`MAX_TAGS`] tags.
    TooManyTags,
    /// A tag without `:value` (see the module documentation).
    TagWithoutValue,
    /// A tag with an empty key.
    BadTags,
    /// An empty name, or one too long once sanitised.
    InvalidName,
    /// A tag key that breaks the label rules once sanitised (`__` prefix,
    /// too long), a value too long, or a key given twice.
    InvalidLabels,
    /// A name in the `shoal_` namespace, which belongs to shoal's own series.
    ReservedName,
    /// A DogStatsD event or service check.
    Unsupported,
    /// The source would be one more than `statsd_max_sources`.
    SourceLimit,
    /// The series would be one more than `statsd_max_series_per_source`.
    SeriesLimit,
    /// A set member past `statsd_max_set_size` distinct values this interval.
    SetFull,
}

impl Reason {
    /// Every reason, for exposition.
    pub const ALL: [Reason; 22] = [
        Reason::DatagramTooLarge,
        Reason::LineTooLong,
        Reason::InvalidUtf8,
        Reason::MissingValue,
        Reason::MissingType,
        Reason::UnknownType,
        Reason::BadValue,
        Reason::NonFinite,
        Reason::NegativeCounter,
        Reason::BadRate,
        Reason::BadField,
        Reason::BadTimestamp,
        Reason::TooManyTags,
        Reason::TagWithoutValue,
        Reason::BadTags,
        Reason::InvalidName,
        Reason::InvalidLabels,
        Reason::ReservedName,
        Reason::Unsupported,
        Reason::SourceLimit,
        Reason::SeriesLimit,
        Reason::SetFull,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DatagramTooLarge => "datagram_too_large",
            Reason::LineTooLong => "line_too_long",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::MissingValue => "missing_value",
            Reason::MissingType => "missing_type",
            Reason::UnknownType => "unknown_type",
            Reason::BadValue => "bad_value",
            Reason::NonFinite => "non_finite",
            Reason::NegativeCounter => "negative_counter",
            Reason::BadRate => "bad_rate",
            Reason::BadField => "bad_field",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::TooManyTags => "too_many_tags",
            Reason::TagWithoutValue => "tag_without_value",
            Reason::BadTags => "bad_tags",
            Reason::InvalidName => "invalid_name",
            Reason::InvalidLabels => "invalid_labels",
            Reason::ReservedName => "reserved_name",
            Reason::Unsupported => "unsupported",
            Reason::SourceLimit => "source_limit",
            Reason::SeriesLimit => "series_limit",
            Reason::SetFull => "set_full",
        }
    }
}

/// One syntactically valid line, borrowing from the input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line<'a> {
    /// The name as sent (not yet sanitised; never empty).
    pub name: &'a str,
    /// The value list: one value, or several separated by `:`.
    pub values: &'a str,
    /// The type.
    pub kind: Type,
    /// The sample rate, 1.0 when absent.
    pub rate: f64,
    /// The raw tag list after `#` (empty when absent), checked by [`tags`].
    pub tags: &'a str,
}

impl<'a> Line<'a> {
    /// The values of the line (more than one when packed).
    pub fn values(&self) -> std::str::Split<'a, char> {
        // A set member is any text (`user:42`): sets are never packed.
        self.values.split(if self.kind == Type::Set { '\0' } else { ':' })
    }

    /// True when the line packs more than one value.
    pub fn is_packed(&self) -> bool {
        self.kind != Type::Set && self.values.as_bytes().contains(&b':')
    }
}

/// Parses one line (without its `\n`). Checks everything but the tags'
/// contents and the name rules (see the module documentation).
pub fn parse_line(line: &str) -> Result<Line<'_>, Reason> {
    // Byte searches: every delimiter is ASCII, so each position found is a
    // char boundary (the hot loop's cost is mostly these scans).
    let bytes = line.as_bytes();
    if bytes.starts_with(b"_e{") || bytes.starts_with(b"_sc|") {
        return Err(Reason::Unsupported);
    }
    let pipe = find(bytes, b'|').ok_or(Reason::MissingType)?;
    let colon = find(&bytes[..pipe], b':').ok_or(Reason::MissingValue)?;
    let (name, values) = (&line[..colon], &line[colon + 1..pipe]);
    if name.is_empty() {
        return Err(Reason::InvalidName);
    }
    if values.is_empty() {
        return Err(Reason::BadValue);
    }
    let rest = &line[pipe + 1..];
    let (kind, mut fields) = match find(rest.as_bytes(), b'|') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    if kind.is_empty() {
        return Err(Reason::MissingType);
    }
    let kind = Type::parse(kind).ok_or(Reason::UnknownType)?;
    let mut parsed = Line { name, values, kind, rate: 1.0, tags: "" };
    while let Some(text) = fields {
        let (field, next) = match find(text.as_bytes(), b'|') {
            Some(p) => (&text[..p], Some(&text[p + 1..])),
            None => (text, None),
        };
        fields = next;
        let fb = field.as_bytes();
        match fb.first() {
            Some(b'@') => parsed.rate = rate(&field[1..])?,
            Some(b'#') => parsed.tags = &field[1..],
            Some(b'T') => {
                if field.len() < 2 || field.len() > 20 || !fb[1..].iter().all(u8::is_ascii_digit) {
                    return Err(Reason::BadTimestamp);
                }
            }
            Some(b'c' | b'e') if fb.get(1) == Some(&b':') => {}
            _ => return Err(Reason::BadField),
        }
    }
    Ok(parsed)
}

fn find(bytes: &[u8], needle: u8) -> Option<usize> {
    bytes.iter().position(|b| *b == needle)
}

/// The smallest sample rate taken: below it a line would stand for more than
/// a million events (and a subnormal rate for infinitely many).
pub const MIN_RATE: f64 = 1e-6;

fn rate(text: &str) -> Result<f64, Reason> {
    match text.parse::<f64>() {
        Ok(r) if (MIN_RATE..=1.0).contains(&r) => Ok(r),
        _ => Err(Reason::BadRate),
    }
}

/// A number value: finite, else [`Reason::NonFinite`] (`nan`, `inf`,
/// `1e999`); not a number: [`Reason::BadValue`].
pub fn number(text: &str) -> Result<f64, Reason> {
    // `f64::from_str` takes "inf", "NaN", "infinity": refused below.
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(Reason::NonFinite),
        Err(_) => Err(Reason::BadValue),
    }
}

/// What a gauge value does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GaugeOp {
    /// `name:5|g`: the gauge becomes 5.
    Set(f64),
    /// `name:+5|g`, `name:-5|g`: the gauge moves by ±5 (from 0 when unset).
    Add(f64),
}

/// Parses a gauge value (a leading sign makes it a delta, as in Etsy StatsD).
pub fn gauge(text: &str) -> Result<GaugeOp, Reason> {
    let v = number(text)?;
    Ok(if text.starts_with(['+', '-']) { GaugeOp::Add(v) } else { GaugeOp::Set(v) })
}

/// Checks and splits a raw tag list into `(key, value)` pairs, in the order
/// sent (empty items, as in a trailing `,`, are skipped).
pub fn tags(raw: &str) -> Result<Vec<(&str, &str)>, Reason> {
    let mut out = Vec::new();
    for tag in raw.split(',') {
        if tag.is_empty() {
            continue;
        }
        if out.len() == MAX_TAGS {
            return Err(Reason::TooManyTags);
        }
        let (k, v) = tag.split_once(':').ok_or(Reason::TagWithoutValue)?;
        if k.is_empty() {
            return Err(Reason::BadTags);
        }
        out.push((k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Line<'_> {
        parse_line(line).unwrap_or_else(|r| panic!("{line:?} refused: {r:?}"))
    }

    fn err(line: &str) -> Reason {
        match parse_line(line) {
            Ok(l) => panic!("{line:?} accepted: {l:?}"),
            Err(r) => r,
        }
    }

    #[test]
    fn etsy_types_and_rates() {
        let l = ok("api.requests:1|c");
        assert_eq!((l.name, l.values, l.kind, l.rate, l.tags), ("api.requests", "1", Type::Counter, 1.0, ""));
        assert_eq!(ok("x:3|c|@0.1").rate, 0.1);
        assert_eq!(ok("x:3|g").kind, Type::Gauge);
        assert_eq!(ok("x:320|ms|@0.5").kind, Type::Timer);
        assert_eq!(ok("x:1.5|h").kind, Type::Histogram);
        assert_eq!(ok("x:1.5|d").kind, Type::Distribution);
        assert_eq!(ok("x:user42|s").kind, Type::Set);
        assert_eq!(ok("x:1|c|@1").rate, 1.0);
        assert!(Type::Timer.is_histogram() && Type::Distribution.is_histogram() && !Type::Set.is_histogram());
    }

    #[test]
    fn dogstatsd_extensions() {
        let l = ok("page.views:1|c|@0.5|#env:prod,region:eu-west-1");
        assert_eq!((l.rate, l.tags), (0.5, "env:prod,region:eu-west-1"));
        assert_eq!(tags(l.tags).unwrap(), vec![("env", "prod"), ("region", "eu-west-1")]);
        // Fields in any order; container id, timestamp and external data accepted.
        let l = ok("x:1|d|#a:b|c:83c4b8f0|T1656581400|e:it-false,cn-x|@0.25");
        assert_eq!((l.rate, l.tags), (0.25, "a:b"));
        let l = ok("x:1:2:3.5|h");
        assert!(l.is_packed());
        assert_eq!(l.values().collect::<Vec<_>>(), vec!["1", "2", "3.5"]);
        assert_eq!(tags("a:1,,b:").unwrap(), vec![("a", "1"), ("b", "")], "empty items skipped; an explicit empty value is kept");
        assert_eq!(tags("url:http://x").unwrap(), vec![("url", "http://x")], "a value may hold ':'");
    }

    #[test]
    fn gauges_with_a_sign_are_deltas() {
        assert_eq!(gauge("5"), Ok(GaugeOp::Set(5.0)));
        assert_eq!(gauge("+5"), Ok(GaugeOp::Add(5.0)));
        assert_eq!(gauge("-2.5"), Ok(GaugeOp::Add(-2.5)));
        assert_eq!(gauge("nan"), Err(Reason::NonFinite));
        assert_eq!(gauge("+-1"), Err(Reason::BadValue));
    }

    #[test]
    fn every_malformed_line_has_its_reason() {
        assert_eq!(err("x:1"), Reason::MissingType);
        assert_eq!(err("x:1|"), Reason::MissingType);
        assert_eq!(err("x|c"), Reason::MissingValue);
        assert_eq!(err(":1|c"), Reason::InvalidName);
        assert_eq!(err("x:|c"), Reason::BadValue);
        assert_eq!(err("x:1|q"), Reason::UnknownType);
        assert_eq!(err("x:1|C"), Reason::UnknownType);
        for rate in ["@0", "@2", "@x", "@", "@-0.5", "@nan", "@inf", "@1.0000001", "@1e-300", "@0.0000009"] {
            assert_eq!(err(&format!("x:1|c|{rate}")), Reason::BadRate, "{rate}");
        }
        assert_eq!(err("x:1|c|zz"), Reason::BadField);
        assert_eq!(err("x:1|c|"), Reason::BadField);
        assert_eq!(err("x:1|c|T"), Reason::BadTimestamp);
        assert_eq!(err("x:1|c|T12a"), Reason::BadTimestamp);
        assert_eq!(err("_e{5,4}:title|text"), Reason::Unsupported);
        assert_eq!(err("_sc|check|0"), Reason::Unsupported);
        assert_eq!(tags("a:1,canary"), Err(Reason::TagWithoutValue));
        assert_eq!(tags(":v"), Err(Reason::BadTags));
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("k{i}:v")).collect();
        assert_eq!(tags(&many.join(",")), Err(Reason::TooManyTags));
        assert_eq!(tags(&many[..MAX_TAGS].join(",")).unwrap().len(), MAX_TAGS);
    }

    #[test]
    fn numbers_are_finite() {
        assert_eq!(number("1e3"), Ok(1000.0));
        assert_eq!(number("-0.5"), Ok(-0.5));
        for v in ["nan", "NaN", "inf", "-inf", "infinity", "1e999"] {
            assert_eq!(number(v), Err(Reason::NonFinite), "{v}");
        }
        for v in ["", "1,5", "0x10", "one", " 1"] {
            assert_eq!(number(v), Err(Reason::BadValue), "{v:?}");
        }
    }

    #[test]
    fn reasons_are_distinct_labels() {
        let labels: std::collections::HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}

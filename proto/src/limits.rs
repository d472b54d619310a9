//! The protocol limits: one definition, used by the SDK (which never sends
//! what a collector would refuse, and splits what it sends to fit), the
//! collector (which refuses what breaks them) and the fuzz target.
//!
//! Per-series limits ([`check_series`]) refuse one series; per-batch limits
//! refuse a whole batch, which a conforming sender never sends.

use shoal_core::names::{is_label_key, is_metric_name};
use std::fmt;

/// Longest instance id, in bytes.
pub const MAX_INSTANCE_ID: usize = 256;
/// Longest metric name, in bytes.
pub const MAX_NAME: usize = 256;
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE: usize = 1024;
/// Most bytes of a metric's HELP text kept by a collector (longer text is
/// truncated at a character boundary, not refused).
pub const MAX_HELP: usize = 1024;
/// Most bytes of a metric's unit kept by a collector (longer is truncated).
pub const MAX_UNIT: usize = 64;

/// Truncates `text` to at most `max` bytes, at a character boundary.
pub fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Most labels on a series, and on an instance.
pub const MAX_LABELS: usize = 32;
/// Most bytes of instance labels (keys and values) on a batch: they are
/// copied into every series key the batch defines.
pub const MAX_INSTANCE_LABEL_BYTES: usize = 4096;
/// Most series-updates (and, separately, definitions) in one batch.
pub const MAX_BATCH_SERIES: usize = 200_000;
/// Most bytes of series keys one batch may define, instance labels
/// included: bounds what decoding a small batch makes the collector allocate.
pub const MAX_BATCH_KEY_BYTES: usize = 64 * 1024 * 1024;
/// Most histogram bucket counts in one batch, both sides of every sketch.
pub const MAX_BATCH_BUCKETS: usize = 4 * 1024 * 1024;
/// Largest encoded batch a collector decodes (larger messages are refused
/// before decoding, with `OUT_OF_RANGE`, and counted).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// What a conforming sender puts in one batch at most: well inside the
/// limits above, so that a batch is quick to merge and to resend, and a first
/// flush of a million series goes as a few dozen batches, each acknowledged
/// on its own.
pub const SEND_BATCH_SERIES: usize = 20_000;
/// See [`SEND_BATCH_SERIES`]: encoded bytes per batch a sender aims at.
pub const SEND_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// See [`SEND_BATCH_SERIES`]: bucket counts per batch a sender aims at.
pub const SEND_BATCH_BUCKETS: usize = MAX_BATCH_BUCKETS / 4;
/// See [`SEND_BATCH_SERIES`]: series-key bytes per batch a sender aims at.
pub const SEND_BATCH_KEY_BYTES: usize = MAX_BATCH_KEY_BYTES / 4;

/// Response metadata key of the collector's retry hint on
/// `RESOURCE_EXHAUSTED` (and `UNAVAILABLE`), in milliseconds.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// Why a series cannot be sent or merged. Machine-readable via
/// [`SeriesFault::as_str`] (the `reason` label of the SDK's
/// `shoal_rejected_series_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SeriesFault {
    /// The metric name is not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    InvalidName,
    /// The metric name is longer than [`MAX_NAME`].
    NameTooLong,
    /// A label key is not `[a-zA-Z_][a-zA-Z0-9_]*`, or starts with `__`.
    InvalidLabelKey,
    /// A label key is longer than [`MAX_LABEL_KEY`].
    LabelKeyTooLong,
    /// A label value is longer than [`MAX_LABEL_VALUE`].
    LabelValueTooLong,
    /// More than [`MAX_LABELS`] labels.
    TooManyLabels,
    /// A label key appears twice.
    RepeatedLabelKey,
}

impl SeriesFault {
    /// Every fault.
    pub const ALL: [SeriesFault; 7] = [
        SeriesFault::InvalidName,
        SeriesFault::NameTooLong,
        SeriesFault::InvalidLabelKey,
        SeriesFault::LabelKeyTooLong,
        SeriesFault::LabelValueTooLong,
        SeriesFault::TooManyLabels,
        SeriesFault::RepeatedLabelKey,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            SeriesFault::InvalidName => "invalid_name",
            SeriesFault::NameTooLong => "name_too_long",
            SeriesFault::InvalidLabelKey => "invalid_label_key",
            SeriesFault::LabelKeyTooLong => "label_key_too_long",
            SeriesFault::LabelValueTooLong => "label_value_too_long",
            SeriesFault::TooManyLabels => "too_many_labels",
            SeriesFault::RepeatedLabelKey => "repeated_label_key",
        }
    }
}

/// A series refused by [`check_series`]: the fault and a message naming
/// what is wrong (values truncated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeriesRefusal {
    /// The fault.
    pub fault: SeriesFault,
    /// Human-readable detail.
    pub message: String,
}

impl fmt::Display for SeriesRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SeriesRefusal {}

/// The first 64 characters of `s`, for messages.
pub fn truncate(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Checks one series as it travels on the wire (name and labels, without
/// the instance labels): the per-series rules a collector applies.
pub fn check_series<'a, L>(name: &str, labels: L) -> Result<(), SeriesRefusal>
where
    L: IntoIterator<Item = (&'a str, &'a str)>,
{
    let refuse = |fault, message: String| Err(SeriesRefusal { fault, message });
    if name.len() > MAX_NAME {
        return refuse(SeriesFault::NameTooLong, format!("metric name {:?} is {} bytes, at most {MAX_NAME}", truncate(name), name.len()));
    }
    if !is_metric_name(name) {
        return refuse(SeriesFault::InvalidName, format!("metric name {:?} must match [a-zA-Z_:][a-zA-Z0-9_:]*", truncate(name)));
    }
    let mut count = 0usize;
    let mut keys: Vec<&str> = Vec::new();
    for (k, v) in labels {
        count += 1;
        if count > MAX_LABELS {
            return refuse(SeriesFault::TooManyLabels, format!("series {:?} has more than {MAX_LABELS} labels", truncate(name)));
        }
        if k.len() > MAX_LABEL_KEY {
            return refuse(
                SeriesFault::LabelKeyTooLong,
                format!("series {:?}: label key {:?} is {} bytes, at most {MAX_LABEL_KEY}", truncate(name), truncate(k), k.len()),
            );
        }
        if !is_label_key(k) {
            return refuse(
                SeriesFault::InvalidLabelKey,
                format!("series {:?}: label key {:?} must match [a-zA-Z_][a-zA-Z0-9_]* and not start with __", truncate(name), truncate(k)),
            );
        }
        if v.len() > MAX_LABEL_VALUE {
            return refuse(
                SeriesFault::LabelValueTooLong,
                format!("series {:?}: value of label {k:?} is {} bytes, at most {MAX_LABEL_VALUE}", truncate(name), v.len()),
            );
        }
        if keys.contains(&k) {
            return refuse(SeriesFault::RepeatedLabelKey, format!("series {:?}: label key {k:?} repeated", truncate(name)));
        }
        keys.push(k);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(name: &str, labels: &[(&str, &str)]) -> Option<SeriesFault> {
        check_series(name, labels.iter().copied()).err().map(|r| r.fault)
    }

    #[test]
    fn every_per_series_rule_has_its_fault() {
        assert_eq!(fault("ok_total", &[("method", "GET")]), None);
        assert_eq!(fault(&"a".repeat(MAX_NAME), &[]), None);
        assert_eq!(fault(&"a".repeat(MAX_NAME + 1), &[]), Some(SeriesFault::NameTooLong));
        assert_eq!(fault("a.b", &[]), Some(SeriesFault::InvalidName));
        assert_eq!(fault("", &[]), Some(SeriesFault::InvalidName));
        assert_eq!(fault("x", &[("__x", "1")]), Some(SeriesFault::InvalidLabelKey));
        assert_eq!(fault("x", &[("a-b", "1")]), Some(SeriesFault::InvalidLabelKey));
        let long_key = "k".repeat(MAX_LABEL_KEY + 1);
        assert_eq!(fault("x", &[(long_key.as_str(), "1")]), Some(SeriesFault::LabelKeyTooLong));
        let big = "v".repeat(2000);
        assert_eq!(fault("x", &[("big", big.as_str())]), Some(SeriesFault::LabelValueTooLong));
        assert_eq!(fault("x", &[("a", "1"), ("a", "2")]), Some(SeriesFault::RepeatedLabelKey));
        let keys: Vec<String> = (0..=MAX_LABELS).map(|i| format!("k{i}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        assert_eq!(fault("x", &many), Some(SeriesFault::TooManyLabels));
        assert_eq!(fault("x", &many[..MAX_LABELS]), None);
    }

    #[test]
    fn messages_truncate_what_they_quote() {
        let r = check_series(&"n".repeat(300), std::iter::empty()).unwrap_err();
        assert!(r.message.len() < 160, "{}", r.message);
        assert!(r.message.contains("300 bytes"), "{}", r.message);
    }
}

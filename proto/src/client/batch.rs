//! Batches: numbering, splitting deltas so that no batch breaks a protocol
//! limit, and encoding a batch with the definitions it needs.

use super::refs::RefTable;
use super::Identity;
use crate::convert::{labels_to_proto, sketch_to_proto};
use crate::limits;
use crate::v1 as pb;
use shoal_core::{Deltas, SeriesKey};
use std::sync::Arc;

/// A numbered batch: immutable once numbered, resent as it is until
/// acknowledged.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Per-instance number, from 1.
    pub sequence: u64,
    /// Start of the interval covered, Unix nanoseconds.
    pub start_nanos: u64,
    /// End of the interval covered, Unix nanoseconds.
    pub end_nanos: u64,
    /// The deltas.
    pub deltas: Deltas,
    /// The source's own health series, sent with the deltas but outside
    /// the conservation counts (see `DeltaSource::own_metrics`).
    pub own: Deltas,
}

/// How much one batch may carry. The defaults are the protocol's
/// `SEND_BATCH_*` figures, well inside what a collector accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitLimits {
    /// Series-updates (and so definitions) per batch.
    pub series: usize,
    /// Encoded bytes per batch (estimated from above).
    pub bytes: usize,
    /// Histogram bucket counts per batch.
    pub buckets: usize,
    /// Series-key bytes (instance labels included) of the definitions.
    pub key_bytes: usize,
}

impl Default for SplitLimits {
    fn default() -> Self {
        SplitLimits {
            series: limits::SEND_BATCH_SERIES,
            bytes: limits::SEND_BATCH_BYTES,
            buckets: limits::SEND_BATCH_BUCKETS,
            key_bytes: limits::SEND_BATCH_KEY_BYTES,
        }
    }
}

/// What one series-update costs against [`SplitLimits`], estimated from
/// above (definition included, as if the collector knew none).
#[derive(Clone, Copy, Default)]
struct Cost {
    series: usize,
    bytes: usize,
    buckets: usize,
    key_bytes: usize,
}

impl Cost {
    fn of_key(key: &SeriesKey, instance_label_bytes: usize) -> Cost {
        // The canonical text holds the name and every label key and value
        // (escaped, so never shorter) plus punctuation: an upper bound that
        // needs no walk over the labels' strings.
        let key_bytes = key.canonical().len();
        // Definition: ref, name, labels with their tags and lengths.
        let definition = 16 + key_bytes + 8 * key.labels().len();
        Cost { series: 1, bytes: definition + 16, buckets: 0, key_bytes: key_bytes + instance_label_bytes }
    }

    fn fits(&self, add: &Cost, limits: &SplitLimits) -> bool {
        self.series + add.series <= limits.series
            && self.bytes + add.bytes <= limits.bytes
            && self.buckets + add.buckets <= limits.buckets
            && self.key_bytes + add.key_bytes <= limits.key_bytes
    }

    fn add(&mut self, c: &Cost) {
        self.series += c.series;
        self.bytes += c.bytes;
        self.buckets += c.buckets;
        self.key_bytes += c.key_bytes;
    }
}

/// Splits `deltas` into parts that each fit `limits` (a single series
/// larger than the limits goes alone). Order is kept; nothing is lost or
/// duplicated: the parts' values add up to the whole's.
pub fn split(deltas: Deltas, limits: &SplitLimits, instance_label_bytes: usize) -> Vec<Deltas> {
    let mut parts = Vec::new();
    let mut part = Deltas::default();
    let mut used = Cost::default();
    let push = |part: &mut Deltas, used: &mut Cost, cost: Cost, parts: &mut Vec<Deltas>| {
        if part.series_updates() > 0 && !used.fits(&cost, limits) {
            parts.push(std::mem::take(part));
            *used = Cost::default();
        }
        used.add(&cost);
    };
    for c in deltas.counters {
        push(&mut part, &mut used, Cost::of_key(&c.key, instance_label_bytes), &mut parts);
        part.counters.push(c);
    }
    for g in deltas.gauges {
        push(&mut part, &mut used, Cost::of_key(&g.key, instance_label_bytes), &mut parts);
        part.gauges.push(g);
    }
    for h in deltas.histograms {
        let mut cost = Cost::of_key(&h.key, instance_label_bytes);
        let span = h.sketch.positive().len() + h.sketch.negative().len();
        // Dense counts are at most 10 bytes each; sparse ones (chosen only
        // when smaller) at most 15 per non-empty bucket, fewer than half.
        cost.bytes += 64 + 10 * span;
        cost.buckets = span;
        push(&mut part, &mut used, cost, &mut parts);
        part.histograms.push(h);
    }
    if part.series_updates() > 0 || parts.is_empty() {
        parts.push(part);
    }
    parts
}

/// What [`encode`] asks for a metric's HELP text and unit
/// ([`super::DeltaSource::describe`]).
pub type Describe<'a> = &'a dyn Fn(&str) -> Option<(String, Option<String>)>;

/// The request of `batch`, defining every ref the collector does not know,
/// and the refs it uses. Series travel under their exposed key
/// ([`SeriesKey::exposed`]): Prometheus-valid names and label keys. The
/// first definition of each metric name in the request carries its HELP
/// text and unit from `describe` (truncated to [`limits::MAX_HELP`] and
/// [`limits::MAX_UNIT`]), so they cost at most that per name and batch.
pub fn encode(batch: &Batch, refs: &mut RefTable, identity: &Identity, describe: Describe<'_>) -> (pb::FlushRequest, Vec<u32>) {
    let mut definitions = Vec::new();
    let mut used = Vec::with_capacity(batch.deltas.series_updates());
    let mut described = std::collections::HashSet::new();
    let mut define = |key: &Arc<SeriesKey>| -> u32 {
        let r = refs.ref_of(key);
        if !refs.is_known(r) {
            let exposed = key.exposed();
            let (help, unit) = match described.insert(exposed.name().to_string()) {
                true => describe(key.name()).map_or((String::new(), String::new()), |(help, unit)| {
                    let unit = unit.unwrap_or_default();
                    (limits::truncate_utf8(&help, limits::MAX_HELP).to_string(), limits::truncate_utf8(&unit, limits::MAX_UNIT).to_string())
                }),
                false => (String::new(), String::new()),
            };
            definitions.push(pb::SeriesDefinition {
                r#ref: r,
                name: exposed.name().to_string(),
                labels: labels_to_proto(exposed.labels()),
                help,
                unit,
            });
        }
        used.push(r);
        r
    };
    let (d, own) = (&batch.deltas, &batch.own);
    let counters = d.counters.iter().chain(&own.counters).map(|c| pb::CounterDelta { r#ref: define(&c.key), delta: c.delta }).collect();
    let gauges = d.gauges.iter().chain(&own.gauges).map(|g| pb::GaugeValue { r#ref: define(&g.key), value: g.value }).collect();
    let histograms = d
        .histograms
        .iter()
        .chain(&own.histograms)
        .map(|h| pb::HistogramDelta { r#ref: define(&h.key), sketch: Some(sketch_to_proto(&h.sketch)) })
        .collect();
    let request = pb::FlushRequest {
        instance_id: identity.instance_id.clone(),
        instance_labels: labels_to_proto(&identity.labels),
        sequence: batch.sequence,
        interval_start_unix_nanos: batch.start_nanos,
        interval_end_unix_nanos: batch.end_nanos,
        definitions,
        counters,
        gauges,
        histograms,
    };
    (request, used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use shoal_core::{CounterDelta, GaugeValue, HistogramDelta, Sketch};
    use std::sync::Arc;

    fn key(name: &str, i: usize) -> Arc<SeriesKey> {
        Arc::new(SeriesKey::new(name, [("id", format!("{i:040}"))]))
    }

    fn big_deltas(n: usize) -> Deltas {
        let mut d = Deltas::default();
        for i in 0..n {
            d.counters.push(CounterDelta { key: key("c", i), delta: i as u64 + 1 });
        }
        for i in 0..n / 10 {
            d.gauges.push(GaugeValue { key: key("g", i), value: 1.5 });
            let mut s = Sketch::default();
            for v in 0..200 {
                s.record(0.001 * 1.07f64.powi(v + i as i32 % 50)).unwrap();
            }
            d.histograms.push(HistogramDelta { key: key("h", i), sketch: s });
        }
        d
    }

    #[test]
    fn every_part_encodes_within_the_protocol_limits_and_nothing_is_lost() {
        let whole = big_deltas(60_000);
        let limits = SplitLimits::default();
        let parts = split(whole.clone(), &limits, 0);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        assert_eq!(parts.iter().map(|p| p.values()).sum::<u64>(), whole.values());
        assert_eq!(parts.iter().map(|p| p.series_updates()).sum::<usize>(), whole.series_updates());
        let identity = Identity { instance_id: "i".into(), labels: vec![("service".into(), "s".into())] };
        let mut refs = RefTable::default();
        for (i, deltas) in parts.into_iter().enumerate() {
            let batch = Batch { sequence: i as u64 + 1, start_nanos: 0, end_nanos: 1, deltas, own: Deltas::default() };
            let (request, used) = encode(&batch, &mut refs, &identity, &|_| None);
            let series = request.counters.len() + request.gauges.len() + request.histograms.len();
            assert!(series <= limits.series);
            assert_eq!(request.definitions.len(), used.len(), "nothing known yet: every ref defined");
            let bytes = request.encoded_len();
            assert!(bytes <= limits.bytes, "batch {i}: {bytes} bytes");
            assert!(bytes <= crate::limits::MAX_BATCH_BYTES);
        }
    }

    #[test]
    fn bytes_and_buckets_split_too() {
        let whole = big_deltas(2_000);
        let tight = SplitLimits { series: 1_000_000, bytes: 20_000, buckets: 1_000, key_bytes: usize::MAX };
        let parts = split(whole.clone(), &tight, 0);
        assert!(parts.len() > 10);
        let identity = Identity { instance_id: "i".into(), labels: vec![] };
        for (i, deltas) in parts.iter().enumerate() {
            let buckets: usize = deltas.histograms.iter().map(|h| h.sketch.positive().len()).sum();
            assert!(buckets <= 1_000 || deltas.series_updates() == 1);
            let batch = Batch { sequence: i as u64 + 1, start_nanos: 0, end_nanos: 1, deltas: deltas.clone(), own: Deltas::default() };
            let bytes = encode(&batch, &mut RefTable::default(), &identity, &|_| None).0.encoded_len();
            assert!(bytes <= 20_000 || deltas.series_updates() == 1, "part {i}: {bytes}");
        }
        assert_eq!(parts.iter().map(|p| p.values()).sum::<u64>(), whole.values());
    }

    #[test]
    fn known_refs_are_not_defined_again_and_names_travel_sanitised() {
        let identity = Identity { instance_id: "i".into(), labels: vec![] };
        let mut refs = RefTable::default();
        let k = Arc::new(SeriesKey::new("http.requests", [("a-b", "1")]));
        let batch = Batch {
            sequence: 1,
            start_nanos: 0,
            end_nanos: 1,
            deltas: Deltas { counters: vec![CounterDelta { key: k, delta: 2 }], ..Default::default() },
            own: Deltas::default(),
        };
        let (request, used) = encode(&batch, &mut refs, &identity, &|_| None);
        assert_eq!(request.definitions[0].name, "http_requests");
        assert_eq!(request.definitions[0].labels[0].key, "a_b");
        refs.mark_known(used);
        let (request, _) = encode(&batch, &mut refs, &identity, &|_| None);
        assert!(request.definitions.is_empty());
        assert_eq!(request.counters[0].delta, 2);
        assert_eq!(split(Deltas::default(), &SplitLimits::default(), 0).len(), 1, "an empty batch still polls");
    }

    #[test]
    fn own_series_travel_after_the_deltas_with_their_definitions() {
        let identity = Identity { instance_id: "i".into(), labels: vec![] };
        let mut refs = RefTable::default();
        let own_key = Arc::new(SeriesKey::new("shoal_flush_batches_sent_total", Vec::<(String, String)>::new()));
        let batch = Batch {
            sequence: 1,
            start_nanos: 0,
            end_nanos: 1,
            deltas: Deltas { counters: vec![CounterDelta { key: key("c", 1), delta: 2 }], ..Default::default() },
            own: Deltas {
                counters: vec![CounterDelta { key: own_key, delta: 5 }],
                gauges: vec![GaugeValue { key: key("shoal_series", 0), value: 3.0 }],
                ..Default::default()
            },
        };
        let (request, used) = encode(&batch, &mut refs, &identity, &|_| None);
        assert_eq!(request.counters.iter().map(|c| c.delta).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(request.gauges.len(), 1);
        let names: Vec<_> = request.definitions.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["c", "shoal_flush_batches_sent_total", "shoal_series"]);
        assert_eq!(used.len(), 3);
    }

    #[test]
    fn help_and_unit_travel_once_per_name_and_are_truncated() {
        let identity = Identity { instance_id: "i".into(), labels: vec![] };
        let counters = (0..3).map(|i| CounterDelta { key: key("http.req", i), delta: 1 }).collect();
        let batch =
            Batch { sequence: 1, start_nanos: 0, end_nanos: 1, deltas: Deltas { counters, ..Default::default() }, own: Deltas::default() };
        let long = "é".repeat(crate::limits::MAX_HELP);
        let describe = |name: &str| (name == "http.req").then(|| (long.clone(), Some("seconds".to_string())));
        let (request, _) = encode(&batch, &mut RefTable::default(), &identity, &describe);
        assert_eq!(request.definitions.len(), 3);
        assert_eq!(request.definitions[0].unit, "seconds");
        assert_eq!(request.definitions[0].help.len(), crate::limits::MAX_HELP, "truncated at a char boundary");
        assert!(request.definitions[1..].iter().all(|d| d.help.is_empty() && d.unit.is_empty()));
    }
}

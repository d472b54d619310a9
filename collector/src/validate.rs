//! Validation of a flush batch before anything of it is merged: the first
//! stage after decoding. It turns a request into a [`ValidBatch`] (every
//! per-series problem attached to its series) or refuses it as a whole with
//! a typed [`Refused`]. Only what makes the batch itself meaningless is
//! refused whole: the instance id, sequence, instance labels, sizes and refs
//! defined or used twice. A bad name, label, gauge value or sketch refuses
//! that series alone, so one bad series never stops its neighbours.
//!
//! The rules and limits are the protocol crate's ([`shoal_proto::limits`]),
//! the same ones the SDK applies before sending.

use crate::rejection::{Refused, Rejection};
use shoal_core::Sketch;
use shoal_proto as pb;
use shoal_proto::convert::{labels_from_proto, sketch_from_proto, DecodeError};
use shoal_proto::limits::{
    check_series, truncate, truncate_utf8, MAX_BATCH_BUCKETS, MAX_BATCH_KEY_BYTES, MAX_BATCH_SERIES, MAX_HELP, MAX_INSTANCE_ID,
    MAX_INSTANCE_LABEL_BYTES, MAX_UNIT,
};
use std::collections::HashSet;

/// Name and labels of a defined series, or why it is refused.
pub type DefinedSeries = Result<(String, Vec<(String, String)>), Refused>;

/// A series definition, checked on its own.
#[derive(Debug)]
pub struct Definition {
    /// The ref it binds.
    pub r#ref: u32,
    /// Name and labels, or why the series is refused.
    pub series: DefinedSeries,
}

/// What one series-update carries, once checked.
#[derive(Debug)]
pub enum Value {
    /// A counter increase.
    Counter(u64),
    /// A gauge's last value (finite).
    Gauge(f64),
    /// A histogram delta, decoded.
    Histogram(Sketch),
}

impl Value {
    /// The kind of series this update is for.
    pub fn kind(&self) -> shoal_core::Kind {
        match self {
            Value::Counter(_) => shoal_core::Kind::Counter,
            Value::Gauge(_) => shoal_core::Kind::Gauge,
            Value::Histogram(_) => shoal_core::Kind::Histogram,
        }
    }
}

/// One series-update of a batch: its ref, and its value or why that value
/// is refused.
#[derive(Debug)]
pub struct Update {
    /// The series ref.
    pub r#ref: u32,
    /// The value, or the refusal of this update.
    pub value: Result<Value, Refused>,
    /// Values this update stands for in the conservation counts (counter
    /// increase, histogram samples; 0 for a gauge), even when refused.
    pub values: u64,
}

/// A batch that may be merged: its instance fields are valid and every
/// per-series problem is attached to its series.
#[derive(Debug)]
pub struct ValidBatch {
    /// The sender.
    pub instance_id: String,
    /// Its sequence number.
    pub sequence: u64,
    /// End of the interval covered, Unix nanoseconds.
    pub interval_end_unix_nanos: u64,
    /// Instance labels.
    pub instance_labels: Vec<(String, String)>,
    /// The definitions, checked one by one.
    pub definitions: Vec<Definition>,
    /// Counters, then gauges, then histograms, as in the request.
    pub updates: Vec<Update>,
    /// HELP text and unit per metric name, from valid definitions that
    /// carry one, truncated to `MAX_HELP` / `MAX_UNIT` bytes.
    pub descriptions: Vec<(String, Description)>,
}

/// HELP text and unit of a metric name, as the SDK described it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Description {
    /// HELP text (may be empty when only a unit was given).
    pub help: String,
    /// Unit (`seconds`, `bytes`).
    pub unit: Option<String>,
}

fn invalid(message: String) -> Refused {
    Refused::new(Rejection::InvalidField, message)
}

/// Checks a batch: a [`ValidBatch`], or the reason it is refused whole.
pub fn batch(req: &pb::FlushRequest) -> Result<ValidBatch, Refused> {
    if req.instance_id.is_empty() || req.instance_id.len() > MAX_INSTANCE_ID {
        return Err(invalid(format!("instance_id must be 1 to {MAX_INSTANCE_ID} bytes, got {}", req.instance_id.len())));
    }
    if req.instance_id.chars().any(char::is_control) {
        return Err(invalid(format!("instance_id {:?} contains control characters", truncate(&req.instance_id))));
    }
    if req.sequence == 0 {
        return Err(invalid("sequence must start at 1".into()));
    }
    if req.interval_start_unix_nanos > req.interval_end_unix_nanos {
        return Err(invalid(format!("interval start {} is after its end {}", req.interval_start_unix_nanos, req.interval_end_unix_nanos)));
    }
    check_series("instance_labels", req.instance_labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
        .map_err(|r| invalid(format!("instance_labels: {r}")))?;
    let instance_label_bytes: usize = req.instance_labels.iter().map(|l| l.key.len() + l.value.len()).sum();
    if instance_label_bytes > MAX_INSTANCE_LABEL_BYTES {
        return Err(invalid(format!("instance_labels: {instance_label_bytes} bytes, at most {MAX_INSTANCE_LABEL_BYTES}")));
    }
    let updates = req.counters.len() + req.gauges.len() + req.histograms.len();
    if updates > MAX_BATCH_SERIES || req.definitions.len() > MAX_BATCH_SERIES {
        return Err(invalid(format!(
            "batch carries {updates} series-updates and {} definitions, at most {MAX_BATCH_SERIES} each",
            req.definitions.len()
        )));
    }
    let buckets: usize = req
        .histograms
        .iter()
        .filter_map(|h| h.sketch.as_ref())
        .flat_map(|s| [&s.positive, &s.negative])
        .flatten()
        .map(|b| b.counts.len())
        .sum();
    if buckets > MAX_BATCH_BUCKETS {
        return Err(invalid(format!("batch carries {buckets} histogram bucket counts, at most {MAX_BATCH_BUCKETS}")));
    }
    let mut key_bytes = 0usize;
    let mut defined = HashSet::with_capacity(req.definitions.len());
    let mut definitions = Vec::with_capacity(req.definitions.len());
    let mut descriptions = Vec::new();
    for d in &req.definitions {
        key_bytes += d.name.len() + d.labels.iter().map(|l| l.key.len() + l.value.len()).sum::<usize>() + instance_label_bytes;
        if key_bytes > MAX_BATCH_KEY_BYTES {
            return Err(invalid(format!("definitions expand to more than {MAX_BATCH_KEY_BYTES} bytes of series keys")));
        }
        if !defined.insert(d.r#ref) {
            return Err(invalid(format!("ref {} defined twice", d.r#ref)));
        }
        let series = check_series(&d.name, d.labels.iter().map(|l| (l.key.as_str(), l.value.as_str())))
            .map(|()| (d.name.clone(), labels_from_proto(&d.labels)))
            .map_err(|r| Refused::new(Rejection::InvalidSeries, format!("ref {}: {r}", d.r#ref)));
        if series.is_ok() && !(d.help.is_empty() && d.unit.is_empty()) {
            let help = truncate_utf8(&d.help, MAX_HELP).to_string();
            let unit = (!d.unit.is_empty()).then(|| truncate_utf8(&d.unit, MAX_UNIT).to_string());
            descriptions.push((d.name.clone(), Description { help, unit }));
        }
        definitions.push(Definition { r#ref: d.r#ref, series });
    }
    let mut used = HashSet::with_capacity(updates);
    for r in req.counters.iter().map(|c| c.r#ref).chain(req.gauges.iter().map(|g| g.r#ref)).chain(req.histograms.iter().map(|h| h.r#ref)) {
        if !used.insert(r) {
            return Err(invalid(format!("ref {r} appears twice in one batch")));
        }
    }
    let mut out = Vec::with_capacity(updates);
    out.extend(req.counters.iter().map(|c| Update { r#ref: c.r#ref, value: Ok(Value::Counter(c.delta)), values: c.delta }));
    out.extend(req.gauges.iter().map(|g| Update {
        r#ref: g.r#ref,
        value: if g.value.is_finite() {
            Ok(Value::Gauge(g.value))
        } else {
            Err(Refused::new(Rejection::InvalidValue, format!("gauge ref {}: value {} is not finite", g.r#ref, g.value)))
        },
        values: 0,
    }));
    out.extend(req.histograms.iter().map(|h| {
        let values = h.sketch.as_ref().map_or(0, sketch_values);
        let value = h
            .sketch
            .as_ref()
            .ok_or(DecodeError::Missing)
            .and_then(sketch_from_proto)
            .map(Value::Histogram)
            .map_err(|e| Refused::new(Rejection::InvalidSketch, format!("histogram ref {}: {e}", h.r#ref)));
        Update { r#ref: h.r#ref, value, values }
    }));
    Ok(ValidBatch {
        instance_id: req.instance_id.clone(),
        sequence: req.sequence,
        interval_end_unix_nanos: req.interval_end_unix_nanos,
        instance_labels: labels_from_proto(&req.instance_labels),
        definitions,
        updates: out,
        descriptions,
    })
}

/// Samples a wire sketch claims, with wrapping arithmetic (a malformed
/// sketch still gets a number for the conservation counts).
pub fn sketch_values(s: &pb::Sketch) -> u64 {
    let mut v = s.zero_count;
    for b in [&s.positive, &s.negative].into_iter().flatten() {
        v = b.counts.iter().fold(v, |a, c| a.wrapping_add(*c));
    }
    v
}

/// Values a request carries (counter deltas summed, histogram samples), with
/// wrapping arithmetic: a malformed request still gets a number.
pub fn request_values(req: &pb::FlushRequest) -> u64 {
    let counters = req.counters.iter().fold(0u64, |a, c| a.wrapping_add(c.delta));
    req.histograms.iter().filter_map(|h| h.sketch.as_ref()).fold(counters, |a, s| a.wrapping_add(sketch_values(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> pb::FlushRequest {
        pb::FlushRequest {
            instance_id: "i".into(),
            sequence: 1,
            definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "a".into(), labels: vec![], ..Default::default() }],
            counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }],
            ..Default::default()
        }
    }

    #[test]
    fn sizes_that_would_amplify_are_refused() {
        assert!(batch(&ok()).is_ok());
        let big_labels: Vec<pb::Label> = (0..8).map(|i| pb::Label { key: format!("k{i}"), value: "v".repeat(1000) }).collect();
        let r = batch(&pb::FlushRequest { instance_labels: big_labels.clone(), ..ok() }).unwrap_err();
        assert!(r.message.contains("instance_labels"), "{}", r.message);
        // Four 1000-byte instance labels copied into 20,000 definitions: 80 MB of keys from a ~200 kB batch.
        let definitions =
            (0..20_000).map(|r| pb::SeriesDefinition { r#ref: r, name: "a".into(), labels: vec![], ..Default::default() }).collect();
        let r = batch(&pb::FlushRequest { instance_labels: big_labels[..4].to_vec(), definitions, counters: vec![], ..ok() }).unwrap_err();
        assert!(r.message.contains("expand"), "{}", r.message);
        let r = batch(&pb::FlushRequest { instance_id: "a\nb".into(), ..ok() }).unwrap_err();
        assert!(r.message.contains("control"), "{}", r.message);
        let sketch = pb::Sketch {
            positive: Some(pb::Buckets { offset: 0, counts: vec![0; MAX_BATCH_BUCKETS + 1], gaps: vec![] }),
            ..Default::default()
        };
        let r =
            batch(&pb::FlushRequest { histograms: vec![pb::HistogramDelta { r#ref: 1, sketch: Some(sketch) }], counters: vec![], ..ok() })
                .unwrap_err();
        assert_eq!(r.reason, Rejection::InvalidField);
    }

    #[test]
    fn a_bad_series_is_refused_alone() {
        let req = pb::FlushRequest {
            definitions: vec![
                pb::SeriesDefinition { r#ref: 1, name: "ok_total".into(), labels: vec![], ..Default::default() },
                pb::SeriesDefinition {
                    r#ref: 2,
                    name: "x".into(),
                    labels: vec![pb::Label { key: "big".into(), value: "v".repeat(2000) }],
                    ..Default::default()
                },
                pb::SeriesDefinition { r#ref: 3, name: "n".repeat(300), labels: vec![], ..Default::default() },
                pb::SeriesDefinition {
                    r#ref: 4,
                    name: "g".into(),
                    labels: vec![pb::Label { key: "__x".into(), value: "1".into() }],
                    ..Default::default()
                },
                pb::SeriesDefinition { r#ref: 5, name: "h".into(), labels: vec![], ..Default::default() },
            ],
            counters: vec![pb::CounterDelta { r#ref: 1, delta: 5 }, pb::CounterDelta { r#ref: 2, delta: 7 }],
            gauges: vec![pb::GaugeValue { r#ref: 4, value: f64::NAN }],
            histograms: vec![pb::HistogramDelta { r#ref: 5, sketch: Some(pb::Sketch { scale: 99, zero_count: 3, ..Default::default() }) }],
            ..ok()
        };
        let v = batch(&req).expect("per-series problems do not refuse the batch");
        let refused: Vec<(u32, Rejection)> =
            v.definitions.iter().filter_map(|d| d.series.as_ref().err().map(|e| (d.r#ref, e.reason))).collect();
        assert_eq!(refused, vec![(2, Rejection::InvalidSeries), (3, Rejection::InvalidSeries), (4, Rejection::InvalidSeries)]);
        let bad_values: Vec<(u32, Rejection, u64)> =
            v.updates.iter().filter_map(|u| u.value.as_ref().err().map(|e| (u.r#ref, e.reason, u.values))).collect();
        assert_eq!(bad_values, vec![(4, Rejection::InvalidValue, 0), (5, Rejection::InvalidSketch, 3)]);
        assert_eq!(v.updates.iter().map(|u| u.values).sum::<u64>(), request_values(&req));
    }

    #[test]
    fn refs_defined_or_used_twice_refuse_the_batch() {
        let mut req = ok();
        req.definitions.push(req.definitions[0].clone());
        assert!(batch(&req).unwrap_err().message.contains("defined twice"));
        let mut req = ok();
        req.counters.push(req.counters[0]);
        assert!(batch(&req).unwrap_err().message.contains("twice in one batch"));
    }
}

//! Conversions between shoal's types and the protobuf messages of the flush
//! protocol (`proto/shoal.proto`), shared by the SDK and the collector.

use crate::sketch::{BucketStore, Sketch, MAX_SCALE, MIN_SCALE};
use shoal_proto as pb;

/// Most buckets one side of a wire sketch may carry: the whole `f64` range at
/// the finest scale. Anything larger is malformed.
pub const MAX_WIRE_BUCKETS: usize = 2046 << MAX_SCALE;

/// A sketch as a protobuf message.
pub fn sketch_to_proto(s: &Sketch) -> pb::Sketch {
    let buckets = |store: &BucketStore| {
        if store.is_empty() {
            return None;
        }
        let first = store.offset();
        let counts = (0..store.len() as i32).map(|i| store.get(first + i)).collect();
        Some(pb::Buckets { offset: first, counts })
    };
    pb::Sketch {
        scale: s.scale(),
        zero_count: s.zero_count(),
        sum: s.sum(),
        min: s.min().unwrap_or(0.0),
        max: s.max().unwrap_or(0.0),
        positive: buckets(s.positive()),
        negative: buckets(s.negative()),
    }
}

/// A protobuf sketch as a [`Sketch`], validated: scale in range, bucket range
/// within the `f64` range, counts summing without overflow, finite sum and
/// extremes. The error says what is wrong.
pub fn sketch_from_proto(p: &pb::Sketch) -> Result<Sketch, String> {
    if !(MIN_SCALE..=MAX_SCALE).contains(&p.scale) {
        return Err(format!("sketch scale {} outside {MIN_SCALE}..={MAX_SCALE}", p.scale));
    }
    let (lowest, highest) = crate::sketch::mapping::index_range(p.scale);
    let store = |b: &Option<pb::Buckets>, side: &str| -> Result<BucketStore, String> {
        let Some(b) = b else { return Ok(BucketStore::default()) };
        if b.counts.len() > MAX_WIRE_BUCKETS {
            return Err(format!("{side} buckets: {} counts, at most {MAX_WIRE_BUCKETS}", b.counts.len()));
        }
        let last = b.offset as i64 + b.counts.len() as i64 - 1;
        if !b.counts.is_empty() && ((b.offset as i64) < lowest as i64 || last > highest as i64) {
            return Err(format!("{side} buckets [{}, {last}] outside the range [{lowest}, {highest}] of scale {}", b.offset, p.scale));
        }
        let mut total: u64 = 0;
        for &c in &b.counts {
            total = total.checked_add(c).ok_or_else(|| format!("{side} bucket counts overflow u64"))?;
        }
        Ok(BucketStore::from_counts(b.offset, &b.counts))
    };
    let positive = store(&p.positive, "positive")?;
    let negative = store(&p.negative, "negative")?;
    Sketch::from_parts(p.scale, p.zero_count, positive, negative, p.sum, p.min, p.max)
}

/// Labels as protobuf messages.
pub fn labels_to_proto(labels: &[(String, String)]) -> Vec<pb::Label> {
    labels.iter().map(|(k, v)| pb::Label { key: k.clone(), value: v.clone() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_round_trips() {
        let mut s = Sketch::default();
        for v in [-5.0, 0.0, 1e-9, 2.5, 2.5, 1e9] {
            s.record(v).unwrap();
        }
        let back = sketch_from_proto(&sketch_to_proto(&s)).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn malformed_sketches_are_rejected_with_a_reason() {
        let mut p = sketch_to_proto(&{
            let mut s = Sketch::default();
            s.record(1.0).unwrap();
            s
        });
        p.scale = 99;
        assert!(sketch_from_proto(&p).unwrap_err().contains("scale"));
        p.scale = 6;
        p.positive = Some(pb::Buckets { offset: i32::MAX - 1, counts: vec![1, 1] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("outside"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![u64::MAX, 1] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("overflow"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1] });
        p.sum = f64::NAN;
        assert!(sketch_from_proto(&p).unwrap_err().contains("sum"));
    }
}

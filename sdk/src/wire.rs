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
        let nonzero: Vec<(i32, u64)> = store.iter().collect();
        // Dense costs about a byte per slot, sparse about two per non-empty
        // bucket: a short delta of a wide distribution is mostly gaps.
        if nonzero.len() * 2 < store.len() {
            let mut gaps = Vec::with_capacity(nonzero.len());
            let mut previous = first;
            for (i, &(index, _)) in nonzero.iter().enumerate() {
                gaps.push(if i == 0 { (index - first) as u32 } else { (index - previous) as u32 });
                previous = index;
            }
            let counts = nonzero.iter().map(|&(_, c)| c).collect();
            return Some(pb::Buckets { offset: first, counts, gaps });
        }
        let counts = (0..store.len() as i32).map(|i| store.get(first + i)).collect();
        Some(pb::Buckets { offset: first, counts, gaps: Vec::new() })
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
        let mut total: u64 = 0;
        for &c in &b.counts {
            total = total.checked_add(c).ok_or_else(|| format!("{side} bucket counts overflow u64"))?;
        }
        let in_range = |first: i64, last: i64| first >= lowest as i64 && last <= highest as i64;
        if b.gaps.is_empty() {
            let last = b.offset as i64 + b.counts.len() as i64 - 1;
            if !b.counts.is_empty() && !in_range(b.offset as i64, last) {
                return Err(format!("{side} buckets [{}, {last}] outside the range [{lowest}, {highest}] of scale {}", b.offset, p.scale));
            }
            return Ok(BucketStore::from_counts(b.offset, &b.counts));
        }
        if b.gaps.len() != b.counts.len() {
            return Err(format!("{side} buckets: {} gaps for {} counts", b.gaps.len(), b.counts.len()));
        }
        let mut index = b.offset as i64;
        let mut indices = Vec::with_capacity(b.gaps.len());
        for (k, &gap) in b.gaps.iter().enumerate() {
            if k > 0 && gap == 0 {
                return Err(format!("{side} buckets: gap {k} is 0 (indices must increase)"));
            }
            index += gap as i64;
            if !in_range(index, index) {
                return Err(format!("{side} bucket {index} outside the range [{lowest}, {highest}] of scale {}", p.scale));
            }
            indices.push(index as i32);
        }
        let (first, last) = (indices[0], indices[indices.len() - 1]);
        let mut dense = vec![0u64; (last as i64 - first as i64 + 1) as usize];
        for (&i, &c) in indices.iter().zip(&b.counts) {
            dense[(i - first) as usize] = c;
        }
        Ok(BucketStore::from_counts(first, &dense))
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
    fn sparse_deltas_round_trip_and_stay_small() {
        let mut s = Sketch::default();
        for i in 0..20 {
            s.record(0.005 * 1.26f64.powi(i)).unwrap();
        }
        let p = sketch_to_proto(&s);
        let b = p.positive.as_ref().unwrap();
        assert_eq!(b.gaps.len(), 20, "a wide, thin delta is sent sparse");
        assert_eq!(sketch_from_proto(&p).unwrap(), s);
        use prost::Message;
        assert!(p.encoded_len() < 100, "{} bytes", p.encoded_len());
    }

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
        p.positive = Some(pb::Buckets { offset: i32::MAX - 1, counts: vec![1, 1], gaps: vec![] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("outside"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![u64::MAX, 1], gaps: vec![] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("overflow"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1, 1], gaps: vec![0, 0] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("gap 1 is 0"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1, 1], gaps: vec![0] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("gaps"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1], gaps: vec![u32::MAX] });
        assert!(sketch_from_proto(&p).unwrap_err().contains("outside"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1], gaps: vec![] });
        p.sum = f64::NAN;
        assert!(sketch_from_proto(&p).unwrap_err().contains("sum"));
    }
}

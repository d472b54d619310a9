//! Conversions between the core types and the protobuf messages of the
//! flush protocol (`proto/shoal.proto`), shared by the SDK, the collector and
//! the fuzz target. Decoding validates: a [`DecodeError`] says what is wrong.

use crate::v1 as pb;
use shoal_core::sketch::{mapping, BucketStore, Sketch, MAX_SCALE, MIN_SCALE};
use std::fmt;

/// Most buckets one side of a wire sketch may carry: the whole `f64` range at
/// the finest scale. Anything larger is malformed.
pub const MAX_WIRE_BUCKETS: usize = 2046 << MAX_SCALE;

/// Why a protobuf sketch is not a valid [`Sketch`].
#[derive(Clone, Debug, PartialEq)]
pub enum DecodeError {
    /// The scale is outside `MIN_SCALE..=MAX_SCALE`.
    Scale(i32),
    /// A side carries more than [`MAX_WIRE_BUCKETS`] counts.
    TooManyBuckets {
        /// `positive` or `negative`.
        side: &'static str,
        /// Counts carried.
        counts: usize,
    },
    /// A side's counts overflow `u64` when summed.
    CountOverflow {
        /// `positive` or `negative`.
        side: &'static str,
    },
    /// Bucket indices outside the `f64` range at this scale.
    OutOfRange {
        /// `positive` or `negative`.
        side: &'static str,
        /// First index claimed.
        first: i64,
        /// Last index claimed.
        last: i64,
        /// The scale.
        scale: i32,
    },
    /// A sparse side with gaps and counts of different lengths.
    GapCount {
        /// `positive` or `negative`.
        side: &'static str,
        /// Gaps carried.
        gaps: usize,
        /// Counts carried.
        counts: usize,
    },
    /// A sparse gap after the first is 0 (indices must increase).
    ZeroGap {
        /// `positive` or `negative`.
        side: &'static str,
        /// Its position.
        position: usize,
    },
    /// A histogram update without a sketch.
    Missing,
    /// Count, sum or extremes that do not fit the buckets (non-finite sum,
    /// extremes outside the buckets, ...), as [`Sketch::from_parts`] says.
    Inconsistent(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Scale(s) => write!(f, "sketch scale {s} outside {MIN_SCALE}..={MAX_SCALE}"),
            DecodeError::TooManyBuckets { side, counts } => write!(f, "{side} buckets: {counts} counts, at most {MAX_WIRE_BUCKETS}"),
            DecodeError::CountOverflow { side } => write!(f, "{side} bucket counts overflow u64"),
            DecodeError::OutOfRange { side, first, last, scale } => {
                let (lowest, highest) = mapping::index_range(*scale);
                write!(f, "{side} buckets [{first}, {last}] outside the range [{lowest}, {highest}] of scale {scale}")
            }
            DecodeError::GapCount { side, gaps, counts } => write!(f, "{side} buckets: {gaps} gaps for {counts} counts"),
            DecodeError::ZeroGap { side, position } => write!(f, "{side} buckets: gap {position} is 0 (indices must increase)"),
            DecodeError::Missing => f.write_str("histogram update without a sketch"),
            DecodeError::Inconsistent(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<&Sketch> for pb::Sketch {
    fn from(s: &Sketch) -> pb::Sketch {
        sketch_to_proto(s)
    }
}

impl TryFrom<&pb::Sketch> for Sketch {
    type Error = DecodeError;

    fn try_from(p: &pb::Sketch) -> Result<Sketch, DecodeError> {
        sketch_from_proto(p)
    }
}

/// A sketch as a protobuf message.
pub fn sketch_to_proto(s: &Sketch) -> pb::Sketch {
    let buckets = |store: &BucketStore| {
        if store.is_empty() {
            return None;
        }
        let first = store.offset();
        let mut counts = Vec::new();
        let mut gaps = Vec::new();
        let mut previous = first;
        store.for_each_nonzero(|index, count| {
            gaps.push((index - previous) as u32);
            counts.push(count);
            previous = index;
        });
        // Dense costs about a byte per slot, sparse about two per non-empty
        // bucket: a short delta of a wide distribution is mostly gaps.
        if counts.len() * 2 < store.len() {
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
pub fn sketch_from_proto(p: &pb::Sketch) -> Result<Sketch, DecodeError> {
    if !(MIN_SCALE..=MAX_SCALE).contains(&p.scale) {
        return Err(DecodeError::Scale(p.scale));
    }
    let (lowest, highest) = mapping::index_range(p.scale);
    let positive = decode_side(&p.positive, "positive", lowest, highest, p.scale)?;
    let negative = decode_side(&p.negative, "negative", lowest, highest, p.scale)?;
    // A sparse side costs a few bytes per bucket on the wire but its whole
    // span in memory: past MAX_DECODED_SPAN slots, decode at a coarser scale
    // (an exact downscale; the error bound widens only for such absurdly wide
    // sketches, 77 decades at scale 6).
    let span = positive.span().max(negative.span());
    let mut shift = 0u32;
    while (span >> shift) > MAX_DECODED_SPAN as u64 && p.scale - (shift as i32) > MIN_SCALE {
        shift += 1;
    }
    let mut sketch = Sketch::from_parts(
        p.scale - shift as i32,
        p.zero_count,
        positive.into_store(shift),
        negative.into_store(shift),
        p.sum,
        p.min,
        p.max,
    )
    .map_err(DecodeError::Inconsistent)?;
    // Quantiles are clamped to the extremes, so extremes that disagree with
    // the buckets (a sender's bug, or hostile) would drag every quantile of
    // a merged rollup: each is kept only if it lies in the outermost bucket
    // on its side, else that bucket's representative (within the error
    // bound). Exact extremes from an SDK always lie there.
    sketch.set_extremes_within_buckets(p.min, p.max);
    Ok(sketch)
}

/// Most slots a decoded side may span before it is decoded at a coarser scale.
pub const MAX_DECODED_SPAN: usize = 16_384;

enum Side<'a> {
    Empty,
    Dense(i32, &'a [u64]),
    Sparse(Vec<(i64, u64)>),
}

impl Side<'_> {
    fn span(&self) -> u64 {
        match self {
            Side::Empty => 0,
            Side::Dense(_, counts) => counts.len() as u64,
            Side::Sparse(entries) => match (entries.first(), entries.last()) {
                (Some(f), Some(l)) => (l.0 - f.0 + 1) as u64,
                _ => 0,
            },
        }
    }

    fn into_store(self, shift: u32) -> BucketStore {
        match self {
            Side::Empty => BucketStore::default(),
            Side::Dense(offset, counts) if shift == 0 => BucketStore::from_counts(offset, counts),
            Side::Dense(offset, counts) => {
                let mut store = BucketStore::default();
                for (i, &c) in counts.iter().enumerate() {
                    store.add((offset as i64 + i as i64) as i32 >> shift, c);
                }
                store
            }
            Side::Sparse(entries) => {
                let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return BucketStore::default() };
                let first = (first.0 as i32) >> shift;
                let last = (last.0 as i32) >> shift;
                let mut dense = vec![0u64; (last as i64 - first as i64 + 1) as usize];
                for (i, c) in entries {
                    let slot = &mut dense[((i as i32 >> shift) - first) as usize];
                    *slot = slot.saturating_add(c);
                }
                BucketStore::from_counts(first, &dense)
            }
        }
    }
}

fn decode_side<'a>(b: &'a Option<pb::Buckets>, side: &'static str, lowest: i32, highest: i32, scale: i32) -> Result<Side<'a>, DecodeError> {
    let Some(b) = b else { return Ok(Side::Empty) };
    if b.counts.len() > MAX_WIRE_BUCKETS {
        return Err(DecodeError::TooManyBuckets { side, counts: b.counts.len() });
    }
    let mut total: u64 = 0;
    for &c in &b.counts {
        total = total.checked_add(c).ok_or(DecodeError::CountOverflow { side })?;
    }
    let in_range = |first: i64, last: i64| first >= lowest as i64 && last <= highest as i64;
    if b.counts.is_empty() {
        return Ok(Side::Empty);
    }
    if b.gaps.is_empty() {
        let last = b.offset as i64 + b.counts.len() as i64 - 1;
        if !in_range(b.offset as i64, last) {
            return Err(DecodeError::OutOfRange { side, first: b.offset as i64, last, scale });
        }
        return Ok(Side::Dense(b.offset, &b.counts));
    }
    if b.gaps.len() != b.counts.len() {
        return Err(DecodeError::GapCount { side, gaps: b.gaps.len(), counts: b.counts.len() });
    }
    let mut index = b.offset as i64;
    let mut entries = Vec::with_capacity(b.gaps.len());
    for (k, (&gap, &count)) in b.gaps.iter().zip(&b.counts).enumerate() {
        if k > 0 && gap == 0 {
            return Err(DecodeError::ZeroGap { side, position: k });
        }
        index += gap as i64;
        if !in_range(index, index) {
            return Err(DecodeError::OutOfRange { side, first: index, last: index, scale });
        }
        entries.push((index, count));
    }
    Ok(Side::Sparse(entries))
}

/// Labels as protobuf messages.
pub fn labels_to_proto(labels: &[(String, String)]) -> Vec<pb::Label> {
    labels.iter().map(|(k, v)| pb::Label { key: k.clone(), value: v.clone() }).collect()
}

/// Protobuf labels as pairs.
pub fn labels_from_proto(labels: &[pb::Label]) -> Vec<(String, String)> {
    labels.iter().map(|l| (l.key.clone(), l.value.clone())).collect()
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
    fn a_tiny_message_cannot_claim_a_huge_span() {
        let (lowest, highest) = mapping::index_range(6);
        let p = pb::Sketch {
            scale: 6,
            zero_count: 0,
            sum: 2.0,
            min: 1e-300,
            max: 1e300,
            positive: Some(pb::Buckets { offset: lowest, counts: vec![1, 1], gaps: vec![0, (highest - lowest) as u32] }),
            negative: None,
        };
        let s = sketch_from_proto(&p).unwrap();
        assert!(s.scale() < 6, "decoded at a coarser scale");
        assert!(s.memory_bytes() < 64 * 1024, "{} bytes", s.memory_bytes());
        assert_eq!(s.count(), 2);
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
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("scale"));
        p.scale = 6;
        p.positive = Some(pb::Buckets { offset: i32::MAX - 1, counts: vec![1, 1], gaps: vec![] });
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("outside"));
        // Extremes outside the buckets are pulled into them.
        let mut s = Sketch::with_scale(6);
        s.record(2.0).unwrap();
        s.record(3.0).unwrap();
        s.set_extremes(2.0, 3.0);
        let mut p = sketch_to_proto(&s);
        assert_eq!(sketch_from_proto(&p).unwrap().quantile(0.0), Some(2.0), "exact extremes kept");
        (p.min, p.max) = (-1e9, 1e9);
        let d = sketch_from_proto(&p).unwrap();
        let (min, max) = (d.min().unwrap(), d.max().unwrap());
        assert!((min - 2.0).abs() < 0.02 && (max - 3.0).abs() < 0.03, "{min} {max}");
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![u64::MAX, 1], gaps: vec![] });
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("overflow"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1, 1], gaps: vec![0, 0] });
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("gap 1 is 0"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1, 1], gaps: vec![0] });
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("gaps"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1], gaps: vec![u32::MAX] });
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("outside"));
        p.positive = Some(pb::Buckets { offset: 0, counts: vec![1], gaps: vec![] });
        p.sum = f64::NAN;
        assert!(sketch_from_proto(&p).unwrap_err().to_string().contains("sum"));
    }
}

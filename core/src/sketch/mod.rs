//! The mergeable histogram sketch.
//!
//! A [`Sketch`] counts samples in base-2 exponential buckets (see [`mapping`]
//! for the layout and the proof of the error bound). Two sketches of the same
//! scale merge by adding counts bucket by bucket, so:
//!
//! - merge is exact: the merge of two sketches has the same buckets as the
//!   sketch of the union of their samples;
//! - merge is order-independent: integer additions commute, so any merge order
//!   yields bit-identical buckets, counts, minimum and maximum (the `sum` is a
//!   float sum and can differ in its last bits);
//! - memory depends on the range of values, never on the number of samples.
//!
//! Sketches of different scales merge at the coarser of the two, which is an
//! exact downscale.

pub mod mapping;
pub mod store;

use std::sync::OnceLock;

pub use mapping::{relative_error_of_scale, scale_for_relative_error, Mapping, MAX_SCALE, MIN_SCALE, ZERO_THRESHOLD};
pub use store::BucketStore;

/// The default relative error bound of every quantile: 1%.
pub const DEFAULT_RELATIVE_ERROR: f64 = 0.01;
/// The scale that meets [`DEFAULT_RELATIVE_ERROR`].
pub const DEFAULT_SCALE: i32 = 6;

/// Why a value was not recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The value was NaN.
    Nan,
    /// The value was `+inf` or `-inf`.
    Infinite,
}

impl Rejection {
    /// Label value used in self-metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Nan => "nan",
            Rejection::Infinite => "infinite",
        }
    }
}

/// Shared, lazily built mappings for every scale.
pub fn mapping_for(scale: i32) -> &'static Mapping {
    static MAPPINGS: OnceLock<Vec<Mapping>> = OnceLock::new();
    let all = MAPPINGS.get_or_init(|| (MIN_SCALE..=MAX_SCALE).map(Mapping::new).collect());
    &all[(scale.clamp(MIN_SCALE, MAX_SCALE) - MIN_SCALE) as usize]
}

/// A mergeable histogram sketch with a relative-error guarantee.
#[derive(Clone, Debug, PartialEq)]
pub struct Sketch {
    scale: i32,
    zero_count: u64,
    positive: BucketStore,
    negative: BucketStore,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch::with_scale(DEFAULT_SCALE)
    }
}

impl Sketch {
    /// An empty sketch at `scale` (clamped to `MIN_SCALE..=MAX_SCALE`).
    pub fn with_scale(scale: i32) -> Sketch {
        Sketch {
            scale: scale.clamp(MIN_SCALE, MAX_SCALE),
            zero_count: 0,
            positive: BucketStore::default(),
            negative: BucketStore::default(),
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// An empty sketch whose quantiles are within `relative_error`, or `None`
    /// if no supported scale meets it.
    pub fn with_relative_error(relative_error: f64) -> Option<Sketch> {
        scale_for_relative_error(relative_error).map(Sketch::with_scale)
    }

    /// Rebuilds a sketch from its parts (the wire format). Returns an error
    /// message if the parts are inconsistent.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        scale: i32,
        zero_count: u64,
        positive: BucketStore,
        negative: BucketStore,
        sum: f64,
        min: f64,
        max: f64,
    ) -> Result<Sketch, String> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&scale) {
            return Err(format!("scale {scale} outside {MIN_SCALE}..={MAX_SCALE}"));
        }
        let count = zero_count
            .checked_add(positive.total())
            .and_then(|c| c.checked_add(negative.total()))
            .ok_or_else(|| "bucket counts overflow u64".to_string())?;
        if !sum.is_finite() {
            return Err("sum is not finite".into());
        }
        if count > 0 && !(min.is_finite() && max.is_finite() && min <= max) {
            return Err(format!("min {min} / max {max} invalid for a non-empty sketch"));
        }
        let (min, max) = if count == 0 { (f64::INFINITY, f64::NEG_INFINITY) } else { (min, max) };
        Ok(Sketch { scale, zero_count, positive, negative, count, sum, min, max })
    }

    /// The scale (`2^scale` buckets per power of two).
    pub fn scale(&self) -> i32 {
        self.scale
    }

    /// The relative error bound of every quantile of this sketch.
    pub fn relative_error(&self) -> f64 {
        relative_error_of_scale(self.scale)
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the samples.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// Smallest sample, if any.
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// Largest sample, if any.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Samples that counted as zero (`|v| < ZERO_THRESHOLD`).
    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }

    /// Buckets of the positive values.
    pub fn positive(&self) -> &BucketStore {
        &self.positive
    }

    /// Buckets of the negative values (indexed by the absolute value).
    pub fn negative(&self) -> &BucketStore {
        &self.negative
    }

    /// True if no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Approximate heap plus inline bytes of this sketch.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Sketch>() + self.positive.heap_bytes() + self.negative.heap_bytes()
    }

    /// Records one sample; NaN and infinities are rejected and not counted.
    pub fn record(&mut self, value: f64) -> Result<(), Rejection> {
        self.record_many(value, 1)
    }

    /// Records `n` samples of the same value in O(1).
    pub fn record_many(&mut self, value: f64, n: u64) -> Result<(), Rejection> {
        if value.is_nan() {
            return Err(Rejection::Nan);
        }
        if value.is_infinite() {
            return Err(Rejection::Infinite);
        }
        if n == 0 {
            return Ok(());
        }
        let magnitude = value.abs();
        if magnitude < ZERO_THRESHOLD {
            self.zero_count = self.zero_count.saturating_add(n);
        } else {
            let index = mapping_for(self.scale).index(magnitude);
            if value > 0.0 {
                self.positive.add(index, n);
            } else {
                self.negative.add(index, n);
            }
        }
        self.count = self.count.saturating_add(n);
        self.sum += value * n as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        Ok(())
    }

    /// Adds raw bucket counts at this sketch's scale (the SDK folds its
    /// hot-path cells with it). `sign` is `1` for positive buckets, `-1` for
    /// negative. The caller keeps `sum`, `min` and `max` consistent.
    pub fn add_bucket(&mut self, sign: i8, index: i32, n: u64) {
        if sign >= 0 {
            self.positive.add(index, n);
        } else {
            self.negative.add(index, n);
        }
        self.count = self.count.saturating_add(n);
    }

    /// Adds a whole store of raw bucket counts to one side (as
    /// [`Sketch::add_bucket`]); moved in without a copy when that side is
    /// empty.
    pub fn add_buckets(&mut self, sign: i8, buckets: BucketStore) {
        self.count = self.count.saturating_add(buckets.total());
        let side = if sign >= 0 { &mut self.positive } else { &mut self.negative };
        if side.is_empty() {
            *side = buckets;
        } else {
            side.merge(&buckets);
        }
    }

    /// Adds `n` samples to the zero bucket (raw, as [`Sketch::add_bucket`]).
    pub fn add_zero(&mut self, n: u64) {
        self.zero_count = self.zero_count.saturating_add(n);
        self.count = self.count.saturating_add(n);
    }

    /// Adds to the sum of samples (raw, as [`Sketch::add_bucket`]).
    pub fn add_sum(&mut self, sum: f64) {
        self.sum += sum;
    }

    /// Lowers the scale by `by`, merging `2^by` neighbours (exact).
    pub fn downscale(&mut self, by: u32) {
        let by = by.min((self.scale - MIN_SCALE) as u32);
        if by == 0 {
            return;
        }
        self.positive.downscale(by);
        self.negative.downscale(by);
        self.scale -= by as i32;
    }

    /// Merges `other` into `self`. If scales differ the result has the coarser
    /// scale. Exact and order-independent (see module docs).
    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0 && other.sum == 0.0 {
            return;
        }
        if other.scale < self.scale {
            self.downscale((self.scale - other.scale) as u32);
        }
        if other.scale > self.scale {
            let mut o = other.clone();
            o.downscale((other.scale - self.scale) as u32);
            self.merge_same_scale(&o);
        } else {
            self.merge_same_scale(other);
        }
    }

    fn merge_same_scale(&mut self, other: &Sketch) {
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// `self - earlier`, where `earlier` is an earlier state of the same
    /// cumulative sketch. Minimum and maximum of the difference are not known
    /// exactly; the caller supplies them (or keeps this sketch's). `None` if
    /// `earlier` is not a prefix of `self`.
    pub fn checked_sub(&self, earlier: &Sketch) -> Option<Sketch> {
        if earlier.scale != self.scale {
            return None;
        }
        let positive = self.positive.checked_sub(&earlier.positive)?;
        let negative = self.negative.checked_sub(&earlier.negative)?;
        let zero_count = self.zero_count.checked_sub(earlier.zero_count)?;
        let count = self.count.checked_sub(earlier.count)?;
        Some(Sketch {
            scale: self.scale,
            zero_count,
            positive,
            negative,
            count,
            sum: self.sum - earlier.sum,
            min: if count > 0 { self.min } else { f64::INFINITY },
            max: if count > 0 { self.max } else { f64::NEG_INFINITY },
        })
    }

    /// Sets the recorded extremes (used when the extremes of a delta are
    /// tracked separately from its buckets).
    pub fn set_extremes(&mut self, min: f64, max: f64) {
        if self.count > 0 {
            self.min = min;
            self.max = max;
        }
    }

    /// Sets the extremes from values tracked beside the buckets (an SDK's
    /// exact minimum and maximum of an interval), each kept only if it lies
    /// in the outermost non-empty bucket on its side; otherwise (a record
    /// that raced a take, landing its count and its extreme in different
    /// intervals) that bucket's representative, within the error bound.
    /// The result always agrees with the buckets.
    pub fn set_extremes_within_buckets(&mut self, min: f64, max: f64) {
        if self.count == 0 {
            return;
        }
        let scale = self.scale;
        let mapping = mapping_for(scale);
        // Which bucket a finite value falls in: (sign, index), zero bucket
        // as (0, 0).
        let bucket_of = |v: f64| -> Option<(i8, i32)> {
            if !v.is_finite() {
                None
            } else if v.abs() < ZERO_THRESHOLD {
                Some((0, 0))
            } else {
                Some((if v > 0.0 { 1 } else { -1 }, mapping.index(v.abs())))
            }
        };
        let rep = |(sign, i): (i8, i32)| if sign == 0 { 0.0 } else { f64::from(sign) * mapping::bucket_representative(scale, i) };
        let lowest = if let Some((i, _)) = self.negative.iter().next_back() {
            (-1, i)
        } else if self.zero_count > 0 {
            (0, 0)
        } else {
            (1, self.positive.iter().next().map_or(0, |(i, _)| i))
        };
        let highest = if let Some((i, _)) = self.positive.iter().next_back() {
            (1, i)
        } else if self.zero_count > 0 {
            (0, 0)
        } else {
            (-1, self.negative.iter().next().map_or(0, |(i, _)| i))
        };
        self.min = if bucket_of(min) == Some(lowest) { min } else { rep(lowest) };
        self.max = if bucket_of(max) == Some(highest) { max } else { rep(highest) };
        if self.min > self.max {
            // One bucket, both extremes raced: its representative for both.
            (self.min, self.max) = (rep(lowest), rep(highest));
        }
    }

    /// The value at quantile `q` (0 ≤ q ≤ 1): within the sketch's relative
    /// error of the sample of rank `ceil(q · count)` (nearest rank; q = 0 is
    /// the minimum). `None` if empty or `q` is not in `[0, 1]`.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        // The extremes are known exactly (or, for sketches folded from
        // cells, as bucket representatives): use them for the end ranks.
        if rank == 1 {
            return Some(self.min);
        }
        if rank == self.count {
            return Some(self.max);
        }
        Some(self.value_at_rank(rank).clamp(self.min, self.max))
    }

    /// Several quantiles in one pass over the buckets (same semantics as
    /// [`Sketch::quantile`]).
    pub fn quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        qs.iter().map(|&q| self.quantile(q)).collect()
    }

    fn value_at_rank(&self, rank: u64) -> f64 {
        let mut seen = 0u64;
        // Most negative first: negative buckets by descending magnitude.
        for (index, c) in self.negative.iter().rev() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return -mapping::bucket_representative(self.scale, index);
            }
        }
        seen = seen.saturating_add(self.zero_count);
        if seen >= rank {
            return 0.0;
        }
        for (index, c) in self.positive.iter() {
            seen = seen.saturating_add(c);
            if seen >= rank {
                return mapping::bucket_representative(self.scale, index);
            }
        }
        self.max
    }

    /// Releases spare capacity and empty edge slots.
    pub fn trim(&mut self) {
        self.positive.trim();
        self.negative.trim();
    }
}

#[cfg(test)]
mod tests;

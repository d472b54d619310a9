//! The base-2 exponential bucket layout shared with OpenTelemetry exponential
//! histograms and Prometheus native histograms.
//!
//! At scale `s` the base is `b = 2^(2^-s)` and bucket `i` holds the values `v`
//! with `b^i < v <= b^(i+1)` (upper bound inclusive, as in both of those
//! formats). Lowering the scale by `d` merges `2^d` neighbours: the bucket of
//! index `i` becomes `i >> d` (arithmetic shift), which is exact, so a sketch at
//! scale 6 converts to any lower scale without losing a single count.
//!
//! # The error bound
//!
//! Every value in bucket `i` lies in `(l, u]` with `l = b^i`, `u = b^(i+1)`.
//! Reporting the bucket as `x = 2lu / (l + u)` gives, for any `v` in the bucket,
//!
//! ```text
//! |x - v| / v  <=  max((x - l) / l, (u - x) / u)  =  (u - l) / (u + l)  =  (b - 1) / (b + 1)
//! ```
//!
//! because `(x - l)/l` and `(u - x)/u` are equal at that `x` and the relative
//! distance to `v` is largest at the ends. So a quantile read from the sketch is
//! within `(b - 1)/(b + 1)` of the sample of the same rank: 0.54% at scale 6,
//! 0.27% at scale 7, 1.09% at scale 5. [`scale_for_relative_error`] picks the
//! coarsest scale whose bound is at or below the one asked for (scale 6 for the
//! default 1%).

/// Finest scale supported: 256 buckets per power of two (0.135% error).
pub const MAX_SCALE: i32 = 8;
/// Coarsest scale a sketch can be downscaled to.
pub const MIN_SCALE: i32 = -10;

/// Smallest positive normal value; anything closer to zero counts as zero (the
/// OpenTelemetry "zero threshold").
pub const ZERO_THRESHOLD: f64 = f64::MIN_POSITIVE;

const MANTISSA_BITS: u32 = 52;
const MANTISSA_MASK: u64 = (1 << MANTISSA_BITS) - 1;
const EXPONENT_BIAS: i32 = 1023;
/// Bits of the mantissa used to pick a slice of the lookup table. At scale 8
/// the narrowest bucket spans 2^(1/256) - 1 > 2^-9 of the mantissa, so a slice
/// of width 2^-10 contains at most one bucket boundary.
const SLICE_BITS: u32 = 10;

/// The relative error bound `(b - 1)/(b + 1)` of a scale.
pub fn relative_error_of_scale(scale: i32) -> f64 {
    let base = 2f64.powf(2f64.powi(-scale));
    (base - 1.0) / (base + 1.0)
}

/// The coarsest scale (fewest buckets) whose error bound is `<= relative_error`,
/// or `None` if even [`MAX_SCALE`] cannot meet it (or the input is not a
/// positive finite number).
pub fn scale_for_relative_error(relative_error: f64) -> Option<i32> {
    if !(relative_error.is_finite() && relative_error > 0.0) {
        return None;
    }
    (MIN_SCALE..=MAX_SCALE).find(|&s| relative_error_of_scale(s) <= relative_error)
}

/// Maps values to bucket indices at one scale. Built once per scale; `index`
/// is a handful of integer operations and one table lookup (no `log`).
#[derive(Debug)]
pub struct Mapping {
    scale: i32,
    /// For scale > 0: mantissa (as the 52-bit integer of `2^(k/2^s) - 1`) of the
    /// lower boundary of sub-bucket `k`, for `k in 0..2^s`, plus a sentinel.
    boundaries: Box<[u64]>,
    /// For scale > 0: the sub-bucket whose lower boundary is the last one at or
    /// below the start of each mantissa slice.
    slice_start: Box<[u16]>,
}

impl Mapping {
    /// Builds the mapping for `scale` in `MIN_SCALE..=MAX_SCALE`.
    pub fn new(scale: i32) -> Mapping {
        assert!((MIN_SCALE..=MAX_SCALE).contains(&scale), "scale {scale} out of range");
        if scale <= 0 {
            return Mapping { scale, boundaries: Box::new([]), slice_start: Box::new([]) };
        }
        let n = 1usize << scale;
        let mut boundaries = Vec::with_capacity(n + 1);
        for k in 0..n {
            // 2^(k/n) in [1, 2): its mantissa bits are the boundary.
            let b = 2f64.powf(k as f64 / n as f64);
            boundaries.push(b.to_bits() & MANTISSA_MASK);
        }
        boundaries.push(1 << MANTISSA_BITS); // sentinel: the next power of two
        let slices = 1usize << SLICE_BITS;
        let mut slice_start = Vec::with_capacity(slices);
        let mut k = 0usize;
        for slice in 0..slices {
            let start = (slice as u64) << (MANTISSA_BITS - SLICE_BITS);
            while boundaries[k + 1] <= start {
                k += 1;
            }
            slice_start.push(k as u16);
        }
        Mapping { scale, boundaries: boundaries.into(), slice_start: slice_start.into() }
    }

    /// The scale of this mapping.
    #[inline]
    pub fn scale(&self) -> i32 {
        self.scale
    }

    /// Bucket index of a positive normal value (`v >= ZERO_THRESHOLD`, finite).
    /// Callers route zero, negative, NaN and infinite values elsewhere.
    #[inline]
    pub fn index(&self, v: f64) -> i32 {
        debug_assert!(v.is_finite() && v >= ZERO_THRESHOLD);
        let bits = v.to_bits();
        let exponent = ((bits >> MANTISSA_BITS) & 0x7ff) as i32 - EXPONENT_BIAS;
        let mantissa = bits & MANTISSA_MASK;
        if self.scale <= 0 {
            // An exact power of two is the inclusive upper end of the bucket below.
            let e = if mantissa == 0 { exponent - 1 } else { exponent };
            return e >> -self.scale;
        }
        let k = if mantissa == 0 {
            // Exactly 2^exponent: last sub-bucket of the octave below.
            return (exponent << self.scale) - 1;
        } else {
            let slice = (mantissa >> (MANTISSA_BITS - SLICE_BITS)) as usize;
            // SAFETY-free indexing: slice < 2^SLICE_BITS by construction.
            let k = self.slice_start[slice] as usize;
            // Sub-bucket k holds mantissas in (boundary[k], boundary[k+1]].
            // The slice holds at most one boundary, so at most one step.
            let k = if mantissa > self.boundaries[k + 1] { k + 1 } else { k };
            // mantissa == boundary[k] belongs to the sub-bucket below.
            if mantissa <= self.boundaries[k] {
                k as i32 - 1
            } else {
                k as i32
            }
        };
        (exponent << self.scale) + k
    }

    /// Lower (exclusive) boundary of bucket `index`.
    pub fn lower_boundary(&self, index: i32) -> f64 {
        bucket_lower_boundary(self.scale, index)
    }
}

/// Lower (exclusive) boundary `b^index` of a bucket at `scale`.
pub fn bucket_lower_boundary(scale: i32, index: i32) -> f64 {
    if scale > 0 {
        let n = 1i64 << scale;
        let i = index as i64;
        let (octave, sub) = (i.div_euclid(n), i.rem_euclid(n));
        2f64.powi(octave as i32) * 2f64.powf(sub as f64 / n as f64)
    } else {
        let width = 1i64 << -scale;
        let e = index as i64 * width;
        pow2_saturating(e)
    }
}

fn pow2_saturating(e: i64) -> f64 {
    if e > 1023 {
        f64::MAX
    } else if e < -1074 {
        0.0
    } else {
        2f64.powi(e as i32)
    }
}

/// The value reported for bucket `index`: `2lu/(l+u)`, which minimises the
/// worst relative error over the bucket (see the module docs).
pub fn bucket_representative(scale: i32, index: i32) -> f64 {
    let l = bucket_lower_boundary(scale, index);
    let u = bucket_lower_boundary(scale, index.saturating_add(1));
    if !u.is_finite() || u == f64::MAX {
        return l;
    }
    // 2lu/(l+u) = 2l / (1 + l/u), written to avoid overflow near f64::MAX.
    2.0 * l / (1.0 + l / u)
}

/// Lowest and highest bucket index a finite normal value can map to at `scale`.
pub fn index_range(scale: i32) -> (i32, i32) {
    let m = Mapping::new(scale);
    (m.index(ZERO_THRESHOLD), m.index(f64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_precision_is_scale_six() {
        assert_eq!(scale_for_relative_error(0.01), Some(6));
        assert!(relative_error_of_scale(6) < 0.0055);
        assert_eq!(scale_for_relative_error(0.0), None);
        assert_eq!(scale_for_relative_error(f64::NAN), None);
        assert_eq!(scale_for_relative_error(1e-9), None);
    }

    #[test]
    fn index_matches_definition_on_every_scale() {
        for scale in MIN_SCALE..=MAX_SCALE {
            let m = Mapping::new(scale);
            let mut x = 1e-300f64;
            while x < 1e300 {
                let i = m.index(x);
                let l = bucket_lower_boundary(scale, i);
                let u = bucket_lower_boundary(scale, i + 1);
                // Allow one ulp of slack at the boundary computed with powf.
                assert!(x > l * (1.0 - 1e-15) && x <= u * (1.0 + 1e-15), "scale {scale} x {x} i {i} ({l}, {u}]");
                x *= 1.37;
            }
        }
    }

    #[test]
    fn powers_of_two_are_upper_inclusive() {
        for scale in MIN_SCALE..=MAX_SCALE {
            let m = Mapping::new(scale);
            // 1.0 = b^0 is the upper end of bucket -1.
            assert_eq!(m.index(1.0), -1, "scale {scale}");
            if scale >= 0 {
                assert_eq!(m.index(2.0), (1 << scale) - 1, "scale {scale}");
            }
        }
    }

    #[test]
    fn downscale_by_shift_is_exact() {
        let fine = Mapping::new(6);
        for coarse_scale in MIN_SCALE..6 {
            let coarse = Mapping::new(coarse_scale);
            let mut x = 1e-200f64;
            while x < 1e200 {
                assert_eq!(fine.index(x) >> (6 - coarse_scale), coarse.index(x), "x {x} to scale {coarse_scale}");
                x *= 1.013;
            }
        }
    }

    #[test]
    fn extremes_map_without_overflow() {
        let (lo, hi) = index_range(MAX_SCALE);
        assert!(lo < 0 && hi > 0);
        let (lo6, hi6) = index_range(6);
        assert_eq!(hi6, 1024 * 64 - 1);
        assert_eq!(lo6, -1022 * 64 - 1);
        assert!(bucket_representative(6, hi6).is_finite());
        assert!(bucket_representative(6, lo6) > 0.0);
    }
}

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
/// Low bits of a packed slice entry hold `k_below + 1` (0..=256); the rest
/// the boundary offset (< 2^51).
const K_BITS: u32 = 9;

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
/// is a handful of integer operations and one table load (no `log`).
///
/// For scale `s > 0` the mantissa range `[0, 2^52)` is cut into `2^(s+1)`
/// equal slices. Sub-bucket boundaries `2^(k/2^s)` are at least
/// `2^(1/2^s) - 1 > ln 2 / 2^s > 2^-(s+1)` apart, so a slice holds at most one
/// boundary. Each slice stores, packed in one `u64`, the sub-bucket just
/// below its boundary and the boundary's offset in the slice (or "none"):
/// the sub-bucket of a mantissa is that one, plus one if it lies above the
/// boundary. Buckets are upper-inclusive, so `m > boundary` is the test.
#[derive(Debug)]
pub struct Mapping {
    scale: i32,
    /// `52 - (scale + 1)`: mantissa bits below the slice number.
    slice_shift: u32,
    slices: Box<[u64]>,
}

impl Mapping {
    /// Builds the mapping for `scale` in `MIN_SCALE..=MAX_SCALE`.
    pub fn new(scale: i32) -> Mapping {
        assert!((MIN_SCALE..=MAX_SCALE).contains(&scale), "scale {scale} out of range");
        if scale <= 0 {
            return Mapping { scale, slice_shift: 0, slices: Box::new([]) };
        }
        let n = 1usize << scale;
        // Mantissa (52-bit integer of 2^(k/n) - 1) of each sub-bucket boundary.
        let boundaries: Vec<u64> = (0..n).map(|k| 2f64.powf(k as f64 / n as f64).to_bits() & MANTISSA_MASK).collect();
        let slice_bits = scale as u32 + 1;
        let slice_shift = MANTISSA_BITS - slice_bits;
        let slice_width = 1u64 << slice_shift;
        let slices = (0..1u64 << slice_bits)
            .map(|slice| {
                let start = slice * slice_width;
                let end = start + slice_width;
                // Sub-bucket holding the first mantissa of the slice: the last k
                // with boundary[k] < start (upper-inclusive), -1 below boundary 0.
                let below = boundaries.iter().rposition(|&b| b < start).map_or(-1, |k| k as i64);
                match boundaries.iter().position(|&b| b >= start && b < end) {
                    // m <= b stays in `below`; m > b moves up one.
                    Some(k) => pack(k as i64 - 1, boundaries[k] - start),
                    None => pack(below, slice_width),
                }
            })
            .collect();
        Mapping { scale, slice_shift, slices }
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
        self.index_of_bits(v.to_bits()) - (EXPONENT_BIAS << self.scale.max(0))
    }

    /// `index + (1023 << scale)` for the bits of a positive normal value (for
    /// scale > 0): what the hot path uses, with the bias folded into its
    /// offset.
    #[inline(always)]
    pub fn index_of_bits(&self, bits: u64) -> i32 {
        let biased_exponent = (bits >> MANTISSA_BITS) as i32;
        let mantissa = bits & MANTISSA_MASK;
        if self.scale <= 0 {
            // An exact power of two is the inclusive upper end of the bucket below.
            let e = biased_exponent - EXPONENT_BIAS - (mantissa == 0) as i32;
            return (e >> -self.scale) + EXPONENT_BIAS;
        }
        let entry = self.slices[(mantissa >> self.slice_shift) as usize];
        let in_slice = mantissa & ((1u64 << self.slice_shift) - 1);
        let k = (entry & ((1 << K_BITS) - 1)) as i32 - 1 + (in_slice > entry >> K_BITS) as i32;
        (biased_exponent << self.scale) + k
    }

    /// Lower (exclusive) boundary of bucket `index`.
    pub fn lower_boundary(&self, index: i32) -> f64 {
        bucket_lower_boundary(self.scale, index)
    }
}

fn pack(k_below: i64, offset: u64) -> u64 {
    (offset << K_BITS) | (k_below + 1) as u64
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
    // Cached per scale: validation calls this for every sketch it decodes.
    let m = super::mapping_for(scale);
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

use super::*;
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

/// Nearest-rank quantile of raw samples: the sample of rank ceil(q·n).
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len() as u64;
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    sorted[(rank - 1) as usize]
}

fn relative_error(estimate: f64, exact: f64) -> f64 {
    if exact == 0.0 {
        estimate.abs()
    } else {
        (estimate - exact).abs() / exact.abs()
    }
}

const QUANTILES: [f64; 9] = [0.0, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0];

fn assert_within_bound(sketch: &Sketch, samples: &[f64]) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // One part in 1e12 of slack for the float boundaries computed with powf.
    let bound = sketch.relative_error() * (1.0 + 1e-9) + 1e-12;
    for q in QUANTILES {
        let exact = exact_quantile(&sorted, q);
        let got = sketch.quantile(q).unwrap();
        assert!(relative_error(got, exact) <= bound, "q {q}: sketch {got} exact {exact} err {} bound {bound}", relative_error(got, exact));
    }
}

fn lognormal(rng: &mut StdRng, mu: f64, sigma: f64) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    (mu + sigma * z).exp()
}

fn sample_strategy() -> impl Strategy<Value = Vec<f64>> {
    let value = prop_oneof![
        // latencies: 1 µs .. 100 s
        (1e-6f64..100.0),
        // log-uniform over 12 decades
        (-6.0f64..6.0).prop_map(|e| 10f64.powf(e)),
        // negatives and zeros
        (-1e6f64..1e6),
        Just(0.0),
        // huge and tiny magnitudes
        (-300.0f64..300.0).prop_map(|e| 10f64.powf(e)),
        (-300.0f64..300.0).prop_map(|e| -(10f64.powf(e))),
    ];
    prop::collection::vec(value, 1..400)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn every_quantile_within_bound_of_exact(samples in sample_strategy(), scale in 0i32..=8) {
        let mut s = Sketch::with_scale(scale);
        for &v in &samples {
            s.record(v).unwrap();
        }
        prop_assert_eq!(s.count(), samples.len() as u64);
        assert_within_bound(&s, &samples);
    }

    #[test]
    fn merge_equals_sketch_of_union(a in sample_strategy(), b in sample_strategy()) {
        let mut sa = Sketch::default();
        let mut sb = Sketch::default();
        let mut union = Sketch::default();
        for &v in &a { sa.record(v).unwrap(); union.record(v).unwrap(); }
        for &v in &b { sb.record(v).unwrap(); union.record(v).unwrap(); }
        let mut ab = sa.clone();
        ab.merge(&sb);
        let mut ba = sb.clone();
        ba.merge(&sa);
        prop_assert_eq!(ab.positive(), union.positive());
        prop_assert_eq!(ab.negative(), union.negative());
        prop_assert_eq!(ab.zero_count(), union.zero_count());
        prop_assert_eq!(ab.count(), union.count());
        prop_assert_eq!(ab.min(), union.min());
        prop_assert_eq!(ab.max(), union.max());
        // Order-independent, bit for bit, on everything a quantile reads.
        for q in QUANTILES {
            prop_assert_eq!(ab.quantile(q).map(f64::to_bits), ba.quantile(q).map(f64::to_bits));
            prop_assert_eq!(ab.quantile(q).map(f64::to_bits), union.quantile(q).map(f64::to_bits));
        }
    }

    #[test]
    fn merge_across_scales_downscales_exactly(a in sample_strategy(), b in sample_strategy(), sa_scale in 0i32..=8, sb_scale in 0i32..=8) {
        let mut sa = Sketch::with_scale(sa_scale);
        let mut sb = Sketch::with_scale(sb_scale);
        let coarse = sa_scale.min(sb_scale);
        let mut union = Sketch::with_scale(coarse);
        for &v in &a { sa.record(v).unwrap(); union.record(v).unwrap(); }
        for &v in &b { sb.record(v).unwrap(); union.record(v).unwrap(); }
        sa.merge(&sb);
        prop_assert_eq!(sa.scale(), coarse);
        prop_assert_eq!(sa.positive(), union.positive());
        prop_assert_eq!(sa.negative(), union.negative());
    }

    #[test]
    fn agrees_with_hdrhistogram(samples in prop::collection::vec(1u64..10_000_000_000, 1..500)) {
        // hdrhistogram with 3 significant figures is within 0.1%; the sketch within 0.54%.
        let mut hdr = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let mut s = Sketch::default();
        for &v in &samples {
            hdr.record(v).unwrap();
            s.record(v as f64).unwrap();
        }
        let mut sorted: Vec<f64> = samples.iter().map(|&v| v as f64).collect();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        for q in [0.5, 0.9, 0.99, 0.999] {
            let exact = exact_quantile(&sorted, q);
            let ours = s.quantile(q).unwrap();
            let reference = hdr.value_at_quantile(q) as f64;
            prop_assert!(relative_error(reference, exact) <= 1e-3 + 1e-12, "hdr {} exact {}", reference, exact);
            prop_assert!(relative_error(ours, exact) <= s.relative_error() + 1e-12);
            // So the two agree within the sum of their bounds.
            prop_assert!(relative_error(ours, reference) <= s.relative_error() + 1.1e-3);
        }
    }

    #[test]
    fn sub_undoes_merge(a in sample_strategy(), b in sample_strategy()) {
        let mut sa = Sketch::default();
        let mut sb = Sketch::default();
        for &v in &a { sa.record(v).unwrap(); }
        for &v in &b { sb.record(v).unwrap(); }
        let mut both = sa.clone();
        both.merge(&sb);
        let diff = both.checked_sub(&sa).unwrap();
        prop_assert_eq!(diff.positive(), sb.positive());
        prop_assert_eq!(diff.negative(), sb.negative());
        prop_assert_eq!(diff.count(), sb.count());
    }
}

#[test]
fn rejects_nan_and_infinities_without_counting() {
    let mut s = Sketch::default();
    assert_eq!(s.record(f64::NAN), Err(Rejection::Nan));
    assert_eq!(s.record(f64::INFINITY), Err(Rejection::Infinite));
    assert_eq!(s.record(f64::NEG_INFINITY), Err(Rejection::Infinite));
    assert!(s.is_empty());
    assert_eq!(s.quantile(0.5), None);
    s.record(0.0).unwrap();
    s.record(-0.0).unwrap();
    s.record(1e-320).unwrap(); // subnormal counts as zero
    assert_eq!(s.zero_count(), 3);
    assert_eq!(s.quantile(0.5), Some(0.0));
    assert_eq!(s.quantile(2.0), None);
    assert_eq!(s.quantile(f64::NAN), None);
}

#[test]
fn extreme_values_do_not_panic() {
    let mut s = Sketch::default();
    for v in [f64::MAX, f64::MIN, f64::MIN_POSITIVE, -f64::MIN_POSITIVE, 1.0, -1.0] {
        s.record(v).unwrap();
    }
    assert_eq!(s.count(), 6);
    assert_eq!(s.quantile(1.0), Some(f64::MAX));
    assert_eq!(s.quantile(0.0), Some(f64::MIN));
    let median = s.quantile(0.5).unwrap();
    assert!(median < 0.0 && median > -1.01, "median {median}");
}

#[test]
fn record_many_is_the_same_as_a_loop() {
    let mut a = Sketch::default();
    let mut b = Sketch::default();
    a.record_many(0.25, 1_000_000).unwrap();
    for _ in 0..1000 {
        b.record_many(0.25, 1000).unwrap();
    }
    assert_eq!(a.positive(), b.positive());
    assert_eq!(a.count(), 1_000_000);
    assert_eq!(a.sum(), 250_000.0);
}

#[test]
fn lognormal_over_six_decades_fits_in_4_kib() {
    // Lognormal with sigma = 1 decade, truncated to the 6 decades 1 µs .. 1 s.
    let mut rng = StdRng::seed_from_u64(7);
    let mut s = Sketch::default();
    let mut samples = Vec::new();
    while samples.len() < 1_000_000 {
        let v = lognormal(&mut rng, (1e-3f64).ln(), std::f64::consts::LN_10);
        if (1e-6..=1.0).contains(&v) {
            samples.push(v);
            s.record(v).unwrap();
        }
    }
    s.trim();
    let bytes = s.memory_bytes();
    let span = s.max().unwrap() / s.min().unwrap();
    assert!(span > 0.9e6, "span only {span}");
    println!("lognormal 6 decades, 1e6 samples: {} buckets, {bytes} bytes", s.positive().len());
    assert!(bytes <= 4096, "sketch uses {bytes} bytes");
    assert_within_bound(&s, &samples);
}

#[test]
fn memory_does_not_grow_with_sample_count() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut s = Sketch::default();
    for _ in 0..200_000 {
        s.record(rng.gen_range(1e-3..1e3)).unwrap();
    }
    let after_200k = s.memory_bytes();
    for _ in 0..2_000_000 {
        s.record(rng.gen_range(1e-3..1e3)).unwrap();
    }
    // Only the counter width may grow (u16 -> u32), never the bucket range.
    assert!(s.memory_bytes() <= after_200k * 2, "{} > 2 x {after_200k}", s.memory_bytes());
}

#[test]
fn extremes_within_buckets_keep_exact_values_and_settle_races() {
    let mut s = Sketch::with_scale(6);
    for v in [0.25, 0.25, 3.0] {
        s.record(v).unwrap();
    }
    s.set_extremes_within_buckets(0.25, 3.0);
    assert_eq!((s.min(), s.max()), (Some(0.25), Some(3.0)));
    assert_eq!(s.quantile(0.5), Some(0.25));
    // An extreme outside the outermost bucket (a raced record): that
    // bucket's representative, within the error bound, never outside.
    s.set_extremes_within_buckets(0.1, 9.0);
    let (min, max) = (s.min().unwrap(), s.max().unwrap());
    assert!((min - 0.25).abs() / 0.25 <= s.relative_error() && (max - 3.0).abs() / 3.0 <= s.relative_error());
    // Zero and negative sides.
    let mut z = Sketch::with_scale(6);
    z.record(0.0).unwrap();
    z.record(-2.0).unwrap();
    z.set_extremes_within_buckets(-2.0, 0.0);
    assert_eq!((z.min(), z.max()), (Some(-2.0), Some(0.0)));
    z.set_extremes_within_buckets(f64::INFINITY, f64::NEG_INFINITY);
    assert!(z.min().unwrap() < -1.9 && z.max() == Some(0.0));
}

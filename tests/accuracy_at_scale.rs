//! Accuracy at fleet scale: 1,200 simulated instances with four latency
//! profiles (fast, slow, bimodal, heavy tail; together more than six decades of
//! values) each send three batches of deltas: their samples as a mergeable
//! sketch plus two counters. A collector's `Aggregator` merges every batch,
//! exactly as its gRPC service would.
//!
//! Asserted: every quantile the collector reports (0.5, 0.9, 0.99, 0.999) is
//! within the configured relative error (1%) of the exact nearest-rank
//! quantile of all raw samples; three different merge orders give
//! bit-identical quantiles; counter totals are exact `u64` sums, also far
//! beyond 2^53 where a float accumulator loses counts.
//!
//! Measured, not asserted: what a StatsD-style pipeline reports (the average
//! of the per-instance percentiles) and how far off that is. Run with
//! `cargo test --test accuracy_at_scale -- --nocapture` to see the table.

mod common;

use common::exact_quantile;
use rand::seq::SliceRandom;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal::sketch::DEFAULT_RELATIVE_ERROR;
use shoal::Sketch;
use shoal_collector::aggregate::{Kind, Outcome, SeriesView};
use shoal_collector::stats::Stats;
use shoal_collector::{Aggregator, Config};
use shoal_proto as pb;
use shoal_proto::convert as wire;
use std::sync::Arc;

const INSTANCES: usize = 1_200;
const BATCHES_PER_INSTANCE: u64 = 3;
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
const REQUESTS: &str = "http_requests_total";
const LATENCY: &str = "http_request_duration_seconds";
const BYTES: &str = "response_bytes_total";
/// Each batch adds about this much to `response_bytes_total`: the fleet total
/// passes 2^61, where an `f64` accumulator can no longer count in ones.
const BIG_DELTA: u64 = 1 << 50;

#[derive(Clone, Copy, Debug)]
enum Profile {
    /// Cache hits: ~150 µs.
    Fast,
    /// Batch endpoints: ~300 ms.
    Slow,
    /// 90% ~2 ms, 10% ~120 ms (a cache in front of a database).
    Bimodal,
    /// Pareto from 1 ms, alpha 1.1, up to 60 s.
    HeavyTail,
}

const PROFILES: [Profile; 4] = [Profile::Fast, Profile::Slow, Profile::Bimodal, Profile::HeavyTail];

/// Standard normal by Box-Muller.
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn lognormal(rng: &mut StdRng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

impl Profile {
    fn sample(self, rng: &mut StdRng, speed: f64) -> f64 {
        speed
            * match self {
                Profile::Fast => lognormal(rng, 150e-6, 0.4),
                Profile::Slow => lognormal(rng, 0.3, 0.5),
                Profile::Bimodal if rng.gen_bool(0.9) => lognormal(rng, 2e-3, 0.3),
                Profile::Bimodal => lognormal(rng, 0.12, 0.3),
                Profile::HeavyTail => {
                    let u: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                    (1e-3 / u.powf(1.0 / 1.1)).min(60.0)
                }
            }
    }
}

/// One simulated instance: its raw samples and the batches it would flush.
struct Instance {
    profile: Profile,
    samples: Vec<f64>,
    batches: Vec<pb::FlushRequest>,
    requests: u64,
    bytes: u64,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<pb::Label> {
    pairs.iter().map(|(k, v)| pb::Label { key: k.to_string(), value: v.to_string() }).collect()
}

fn simulate(index: usize, now: u64, rng: &mut StdRng) -> Instance {
    let profile = PROFILES[index % PROFILES.len()];
    // Every instance is a little faster or slower than its peers (x0.3..x3),
    // and serves its own share of traffic.
    let speed = 10f64.powf(rng.gen_range(-0.5..0.5));
    let n = rng.gen_range(200..=1_800);
    let samples: Vec<f64> = (0..n).map(|_| profile.sample(rng, speed)).collect();
    let per_batch = samples.len().div_ceil(BATCHES_PER_INSTANCE as usize);
    let (mut requests, mut bytes) = (0u64, 0u64);
    let mut batches = Vec::new();
    for (b, chunk) in samples.chunks(per_batch).enumerate() {
        let sequence = b as u64 + 1;
        let mut sketch = Sketch::default();
        for &v in chunk {
            sketch.record(v).unwrap();
        }
        let bytes_delta = BIG_DELTA + rng.gen_range(0..1_000_000_007u64);
        requests += chunk.len() as u64;
        bytes += bytes_delta;
        // Definitions travel once, in the first batch; later batches use refs.
        let definitions = if sequence == 1 {
            vec![
                pb::SeriesDefinition { r#ref: 1, name: REQUESTS.into(), labels: labels(&[("method", "GET")]), ..Default::default() },
                pb::SeriesDefinition { r#ref: 2, name: LATENCY.into(), labels: vec![], ..Default::default() },
                pb::SeriesDefinition { r#ref: 3, name: BYTES.into(), labels: vec![], ..Default::default() },
            ]
        } else {
            vec![]
        };
        // Ten-second intervals ending in the last minute.
        let end = (now - 40 + 10 * sequence) * 1_000_000_000;
        batches.push(pb::FlushRequest {
            instance_id: format!("instance-{index:05}"),
            instance_labels: labels(&[("service", "checkout")]),
            sequence,
            interval_start_unix_nanos: end - 10_000_000_000,
            interval_end_unix_nanos: end,
            definitions,
            counters: vec![pb::CounterDelta { r#ref: 1, delta: chunk.len() as u64 }, pb::CounterDelta { r#ref: 3, delta: bytes_delta }],
            gauges: vec![],
            histograms: vec![pb::HistogramDelta { r#ref: 2, sketch: Some(wire::sketch_to_proto(&sketch)) }],
        });
    }
    Instance { profile, samples, batches, requests, bytes }
}

/// Merges every batch, in `order` (instance indices; each instance's batches
/// go in sequence order, as one SDK stream sends them).
fn merge(fleet: &[Instance], order: &[usize], now: u64) -> (Aggregator, Arc<Stats>) {
    let config = Config { summary_window_secs: 3600, retention_secs: 3600, ..Config::default() };
    let stats = Arc::new(Stats::default());
    let mut aggregator = Aggregator::new(config, stats.clone());
    let mut next = vec![0usize; fleet.len()];
    for &i in order {
        let batch = &fleet[i].batches[next[i]];
        next[i] += 1;
        match aggregator.apply(batch, now) {
            Ok(Outcome::Merged(rejected)) if rejected.is_empty() => {}
            other => panic!("batch {} of instance {i}: {other:?}", batch.sequence),
        }
    }
    assert!(next.iter().zip(fleet).all(|(n, f)| *n == f.batches.len()), "every batch merged once");
    (aggregator, stats)
}

fn view<'a>(views: &'a [SeriesView], name: &str) -> &'a SeriesView {
    let found: Vec<_> = views.iter().filter(|v| v.key.name() == name).collect();
    assert_eq!(found.len(), 1, "one cluster series for {name}, got {found:?}");
    found[0]
}

fn pct(x: f64) -> String {
    format!("{:+.2}%", x * 100.0)
}

#[test]
fn cluster_quantiles_are_within_one_percent_at_fleet_scale_and_merge_order_does_not_matter() {
    let started = std::time::Instant::now();
    let now = shoal_collector::aggregate::unix_secs();
    let mut rng = StdRng::seed_from_u64(0x5_40a1);
    let fleet: Vec<Instance> = (0..INSTANCES).map(|i| simulate(i, now, &mut rng)).collect();

    let mut all: Vec<f64> = fleet.iter().flat_map(|f| f.samples.iter().copied()).collect();
    all.sort_unstable_by(f64::total_cmp);
    let (min, max) = (all[0], all[all.len() - 1]);
    let decades = (max / min).log10();
    assert!(decades >= 6.0, "samples span only {decades:.1} decades ({min:e} .. {max:e})");
    let exact_requests: u64 = fleet.iter().map(|f| f.requests).sum();
    let exact_bytes: u64 = fleet.iter().map(|f| f.bytes).sum();
    assert_eq!(exact_requests, all.len() as u64);
    assert!(exact_bytes > 1 << 61, "the bytes total must pass 2^61 to prove u64 exactness");

    // Three merge orders: instance after instance; round-robin by sequence
    // with the instances reversed; a seeded random interleaving.
    let sequential: Vec<usize> = (0..INSTANCES).flat_map(|i| [i; BATCHES_PER_INSTANCE as usize]).collect();
    let round_robin: Vec<usize> = (0..BATCHES_PER_INSTANCE).flat_map(|_| (0..INSTANCES).rev()).collect();
    let mut shuffled = sequential.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(7));
    assert_ne!(shuffled, sequential);
    let merged: Vec<(Aggregator, Arc<Stats>)> = [&sequential, &round_robin, &shuffled].iter().map(|o| merge(&fleet, o, now)).collect();

    // What the collector reports: its views, and the same numbers on /metrics.
    let (aggregator, stats) = &merged[0];
    let views = aggregator.views(now);
    let latency = view(&views, LATENCY);
    assert_eq!(latency.kind, Kind::Histogram);
    let sketch = latency.window.as_ref().expect("histogram window");
    assert_eq!(sketch.count(), all.len() as u64);
    assert_eq!(latency.total, all.len() as u64);
    let requests = view(&views, REQUESTS);
    assert_eq!(requests.total, exact_requests, "request counter total must be exact");
    let bytes = view(&views, BYTES);
    assert_eq!(bytes.total, exact_bytes, "bytes counter total must be exact (u64, no float accumulation)");
    let float_bytes: f64 = fleet.iter().flat_map(|f| f.batches.iter()).map(|b| b.counters[1].delta as f64).sum();
    let text = shoal_collector::render(aggregator, stats);
    assert!(text.contains(&format!("response_bytes_total{{service=\"checkout\"}} {exact_bytes}\n")), "exact u64 in the exposition");

    // Every reported quantile within 1% of the exact nearest-rank quantile.
    let tolerance = DEFAULT_RELATIVE_ERROR;
    let mut rows = Vec::new();
    for q in QUANTILES {
        let exact = exact_quantile(&all, q);
        let cluster = sketch.quantile(q).unwrap();
        let exposed = common::sample(&text, &format!(r#"http_request_duration_seconds{{service="checkout",quantile="{q}"}}"#))
            .unwrap_or_else(|| panic!("no q{q} line in\n{text}"));
        assert_eq!(exposed.to_bits(), cluster.to_bits(), "q{q}: /metrics shows {exposed}, the merged sketch says {cluster}");
        let error = (cluster - exact) / exact;
        assert!(error.abs() <= tolerance, "q{q}: cluster {cluster} vs exact {exact}: error {} > {}", pct(error), pct(tolerance));
        // StatsD-style: every instance computes its own percentile over its
        // raw samples (the best case for StatsD), the dashboard averages them.
        let per_instance: Vec<f64> = fleet
            .iter()
            .map(|f| {
                let mut mine = f.samples.clone();
                mine.sort_unstable_by(f64::total_cmp);
                exact_quantile(&mine, q)
            })
            .collect();
        let naive = per_instance.iter().sum::<f64>() / per_instance.len() as f64;
        rows.push((q, exact, cluster, naive));
    }

    // Bit-identical whatever the merge order.
    for (other, _) in &merged[1..] {
        let views_b = other.views(now);
        let b = view(&views_b, LATENCY).window.as_ref().unwrap();
        assert_eq!(wire::sketch_to_proto(b).positive, wire::sketch_to_proto(sketch).positive, "same buckets");
        assert_eq!((b.count(), b.zero_count(), b.min(), b.max()), (sketch.count(), sketch.zero_count(), sketch.min(), sketch.max()));
        for i in 0..=1000 {
            let q = i as f64 / 1000.0;
            assert_eq!(b.quantile(q).map(f64::to_bits), sketch.quantile(q).map(f64::to_bits), "q{q} differs between merge orders");
        }
        assert_eq!(view(&views_b, REQUESTS).total, exact_requests);
        assert_eq!(view(&views_b, BYTES).total, exact_bytes);
    }

    let mut per_profile = [0usize; 4];
    for f in &fleet {
        per_profile[f.profile as usize] += 1;
    }
    println!();
    println!(
        "{INSTANCES} instances ({} fast, {} slow, {} bimodal, {} heavy tail), {} samples from {min:.2e} s to {max:.2e} s ({decades:.1} decades)",
        per_profile[0],
        per_profile[1],
        per_profile[2],
        per_profile[3],
        all.len()
    );
    println!("merged {} batches in 3 orders: quantiles bit-identical", INSTANCES as u64 * BATCHES_PER_INSTANCE);
    println!();
    println!(
        "| quantile | exact (all samples) | shoal cluster (merged sketches) | error  | StatsD-style (avg of per-instance) | error     |"
    );
    println!(
        "|----------|---------------------|---------------------------------|--------|------------------------------------|-----------|"
    );
    for (q, exact, cluster, naive) in &rows {
        println!(
            "| p{:<7} | {:>17.6} s | {:>29.6} s | {:>6} | {:>32.6} s | {:>9} |",
            q * 100.0,
            exact,
            cluster,
            pct((cluster - exact) / exact),
            naive,
            pct((naive - exact) / exact)
        );
    }
    println!();
    println!(
        "counters: requests {exact_requests} (exact), bytes {exact_bytes} (exact u64); an f64 accumulator says {float_bytes:.0} (off by {})",
        (float_bytes as u128 as i128 - exact_bytes as i128)
    );
    println!("took {:.1?}", started.elapsed());
}

//! Remote-write encode + snappy compress of one closed interval of 100 k
//! series (90 k counters, 10 k histograms), as series/s on one core, side by
//! side in the same run with the same series written by the `prometheus`
//! crate's text encoder (the usual way a Rust service exposes them). Bytes per
//! series on the wire are printed once per encoding before the timings.
//!
//! Run: `cargo bench --bench remote_write_encode`. Criterion prints
//! throughput in elements/s; one element is one series.
//!
//! Both sides are handed values already aggregated: shoal encodes an
//! `Interval` (what `Aggregator::export` produces; the export itself is
//! measured by `collector_ingest`), the peer encodes a registry whose
//! counters and histograms hold the same counts. The peer's histograms have
//! Prometheus' 11 default buckets; shoal's carry summary quantiles
//! (`summary`) or the exact merged buckets of the ~1% sketch (`native`).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::remote_write::{encode_interval, ExportHistogram, ExportSeries, ExportValue, HistogramMode, Interval};
use shoal_core::Sketch;
use std::time::Duration;

const COUNTERS: usize = 90_000;
const HISTOGRAMS: usize = 10_000;
const SERIES: usize = COUNTERS + HISTOGRAMS;
/// Samples recorded into each histogram (latencies, log-normal-ish).
const SAMPLES_PER_HISTOGRAM: usize = 200;
/// The sender's default request size.
const MAX_SAMPLES_PER_REQUEST: usize = 2000;

fn labels(i: usize) -> [(&'static str, String); 3] {
    [("pod", format!("pod-{}", i % 500)), ("route", format!("/api/v1/r{}", i / 500)), ("service", "checkout".to_string())]
}

fn latencies(rng: &mut StdRng) -> Vec<f64> {
    (0..SAMPLES_PER_HISTOGRAM).map(|_| (rng.gen_range(-7.0f64..0.5)).exp()).collect()
}

/// The interval shoal pushes, and a `prometheus` registry holding the same counts.
fn workload() -> (Interval, Registry) {
    let mut rng = StdRng::seed_from_u64(7);
    let registry = Registry::new();
    let names = ["pod", "route", "service"];
    let counters = IntCounterVec::new(Opts::new("http_requests_total", "Requests served."), &names).unwrap();
    let histograms = HistogramVec::new(HistogramOpts::new("http_request_duration_seconds", "Request latency."), &names).unwrap();
    registry.register(Box::new(counters.clone())).unwrap();
    registry.register(Box::new(histograms.clone())).unwrap();
    let qs = [0.5, 0.9, 0.99, 0.999];
    let mut series = Vec::with_capacity(SERIES);
    for i in 0..COUNTERS {
        let l = labels(i);
        let total = rng.gen_range(1..1_000_000u64);
        counters.with_label_values(&[&l[0].1, &l[1].1, &l[2].1]).inc_by(total);
        series.push(ExportSeries {
            name: "http_requests_total".into(),
            labels: l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            help: Some("Requests served.".into()),
            unit: None,
            value: ExportValue::Counter(total),
        });
    }
    for i in 0..HISTOGRAMS {
        let l = labels(i);
        let values = latencies(&mut rng);
        let h = histograms.with_label_values(&[&l[0].1, &l[1].1, &l[2].1]);
        let mut sketch = Sketch::default();
        for v in &values {
            h.observe(*v);
            sketch.record(*v).unwrap();
        }
        series.push(ExportSeries {
            name: "http_request_duration_seconds".into(),
            labels: l.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            help: Some("Request latency.".into()),
            unit: Some("seconds".into()),
            value: ExportValue::Histogram(ExportHistogram::from_sketch(&sketch, &qs)),
        });
    }
    (Interval { end_ms: 1_700_000_000_000, series }, registry)
}

fn text_encode(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 << 20);
    TextEncoder::new().encode(&registry.gather(), &mut out).unwrap();
    out
}

fn shoal_encode(interval: &Interval, mode: HistogramMode) -> usize {
    let (requests, _) = encode_interval(interval, mode, MAX_SAMPLES_PER_REQUEST).unwrap();
    requests.iter().map(|r| r.body.len()).sum()
}

fn encode(c: &mut Criterion) {
    let (interval, registry) = workload();
    let text = text_encode(&registry).len();
    let modes = [("summary", HistogramMode::Summary), ("native", HistogramMode::Native)];
    eprintln!("bytes per series on the wire ({SERIES} series: {COUNTERS} counters, {HISTOGRAMS} histograms):");
    for (label, mode) in modes {
        let bytes = shoal_encode(&interval, mode);
        eprintln!("  shoal remote-write ({label}, protobuf + snappy): {:.1}", bytes as f64 / SERIES as f64);
    }
    eprintln!("  prometheus crate text encoder (uncompressed):   {:.1}", text as f64 / SERIES as f64);

    let mut g = c.benchmark_group("encode_100k_series");
    g.throughput(Throughput::Elements(SERIES as u64));
    for (label, mode) in modes {
        g.bench_function(format!("shoal_remote_write_{label}"), |b| b.iter(|| black_box(shoal_encode(&interval, mode))));
    }
    g.bench_function("prometheus_text_encoder", |b| b.iter(|| black_box(text_encode(&registry).len())));
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(10)).sample_size(10)
}

criterion_group! { name = benches; config = config(); targets = encode }
criterion_main!(benches);

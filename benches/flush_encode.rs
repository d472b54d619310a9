//! The SDK's flush of 100 k changed series (90 k counters, 10 k histograms
//! of 50 samples over 6 decades): take the deltas, split them into batches
//! and encode every request to bytes, in the steady state (the collector
//! knows every ref, so no definitions travel); side by side in the same run
//! with prometheus-client text-encoding a registry holding the same series
//! (what its scrape costs). Only the take + encode (shoal) and the encode
//! (peer) are timed, not the recording between them.
//!
//! Also: what a recording thread loses while another thread takes and
//! encodes those 100 k series over and over (ns per record of a counter
//! and a histogram sample into series of the take, alone vs beside it).
//!
//! Run: `cargo bench --bench flush_encode`. Criterion prints elements/s;
//! one element is one series. The bytes of one flush and of one text scrape
//! are printed before the timings.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use prost::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_core::Deltas;
use shoal_proto::client::batch::{encode as encode_batch, split};
use shoal_proto::client::refs::RefTable;
use shoal_proto::client::{Batch, Identity, SplitLimits};
use std::time::{Duration, Instant};

const COUNTERS: usize = 90_000;
const HISTOGRAMS: usize = 10_000;
const SERIES: usize = COUNTERS + HISTOGRAMS;
const SAMPLES_PER_HISTOGRAM: usize = 50;

type Labels = Vec<(String, String)>;

fn labels(i: usize) -> Labels {
    vec![("pod".into(), format!("pod-{}", i % 500)), ("route".into(), format!("/api/v1/r{}", i / 500))]
}

/// Latencies spread over 6 decades (1 µs to 1 s).
fn latencies(rng: &mut StdRng) -> Vec<f64> {
    (0..SAMPLES_PER_HISTOGRAM).map(|_| 10f64.powf(rng.gen_range(-6.0..0.0))).collect()
}

/// One flush: take, split, encode every batch. Returns the bytes sent.
fn flush(shoal: &shoal::Shoal, refs: &mut RefTable, identity: &Identity, sequence: &mut u64) -> usize {
    let deltas = shoal.take_deltas();
    let mut bytes = 0;
    for part in split(deltas, &SplitLimits::default(), 0) {
        *sequence += 1;
        let batch = Batch { sequence: *sequence, start_nanos: 0, end_nanos: 0, deltas: part, own: Deltas::default() };
        let (request, used) = encode_batch(&batch, refs, identity, &|_| None);
        bytes += request.encode_to_vec().len();
        refs.mark_known(used);
    }
    bytes
}

fn bench(c: &mut Criterion) {
    let mut rng = StdRng::seed_from_u64(7);
    let values: Vec<Vec<f64>> = (0..HISTOGRAMS).map(|_| latencies(&mut rng)).collect();

    let shoal = shoal::Shoal::builder().service("checkout").cardinality_limit(2 * SERIES).send_own_metrics(false).build().unwrap();
    let counters: Vec<_> = (0..COUNTERS)
        .map(|i| {
            let l = labels(i);
            shoal.counter("requests_total", &l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>())
        })
        .collect();
    let histograms: Vec<_> = (0..HISTOGRAMS)
        .map(|i| {
            let l = labels(i);
            shoal.histogram("request_seconds", &l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>())
        })
        .collect();
    let record = || {
        for c in &counters {
            c.increment(1);
        }
        for (h, vs) in histograms.iter().zip(&values) {
            for v in vs {
                h.record(*v);
            }
        }
    };
    let identity = Identity { instance_id: "bench".into(), labels: vec![("service".into(), "checkout".into())] };
    let mut refs = RefTable::default();
    let mut sequence = 0;
    record();
    let first = flush(&shoal, &mut refs, &identity, &mut sequence);
    record();
    let steady = flush(&shoal, &mut refs, &identity, &mut sequence);

    let mut registry = Registry::default();
    let peer_counters = Family::<Labels, Counter>::default();
    let peer_histograms = Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(1e-6, 4.0, 11)));
    registry.register("requests", "requests", peer_counters.clone());
    registry.register("request_seconds", "latency", peer_histograms.clone());
    for i in 0..COUNTERS {
        peer_counters.get_or_create(&labels(i)).inc();
    }
    for (i, vs) in values.iter().enumerate() {
        let h = peer_histograms.get_or_create(&labels(i));
        for v in vs {
            h.observe(*v);
        }
    }
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    println!(
        "one flush of {SERIES} series: {first} bytes with definitions, {steady} bytes steady ({:.1} per series); \
         prometheus-client text: {} bytes ({:.1} per series)",
        steady as f64 / SERIES as f64,
        text.len(),
        text.len() as f64 / SERIES as f64
    );

    let mut g = c.benchmark_group("flush_100k_series");
    g.throughput(Throughput::Elements(SERIES as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("shoal_take_split_encode", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                record();
                let start = Instant::now();
                black_box(flush(&shoal, &mut refs, &identity, &mut sequence));
                timed += start.elapsed();
            }
            timed
        })
    });
    g.bench_function("prometheus_client_text_encode", |b| {
        b.iter(|| {
            let mut text = String::with_capacity(16 << 20);
            encode(&mut text, &registry).unwrap();
            black_box(text.len())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("recording_beside_a_take");
    g.throughput(Throughput::Elements(1));
    let record_one = |i: &mut usize| {
        *i = (*i + 1) % HISTOGRAMS;
        counters[*i].increment(1);
        histograms[*i].record(values[*i][*i % SAMPLES_PER_HISTOGRAM]);
    };
    let mut i = 0;
    g.bench_function("alone", |b| b.iter(|| record_one(&mut i)));
    let taking = std::sync::atomic::AtomicBool::new(true);
    let takes = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while taking.load(std::sync::atomic::Ordering::Relaxed) {
                black_box(flush(&shoal, &mut refs, &identity, &mut sequence));
                takes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // The first take has started before anything is timed.
        while takes.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            record_one(&mut i);
        }
        g.bench_function("while_another_thread_takes_100k_series", |b| b.iter(|| record_one(&mut i)));
        taking.store(false, std::sync::atomic::Ordering::Relaxed);
    });
    println!("takes of 100 k series beside the recording: {}", takes.load(std::sync::atomic::Ordering::Relaxed));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

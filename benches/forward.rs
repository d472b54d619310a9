//! An edge collector forwarding 100 k series per interval (90 k counters,
//! 10 k histograms of 50-sample deltas): the edge's CPU per interval and
//! the bytes it sends upstream per series.
//!
//! - `edge_take_split_encode`: in process, one core: the forwarder's take
//!   from the aggregator (under its lock), the split into protocol-sized
//!   batches and their protobuf encoding: what an interval costs the edge
//!   besides the network.
//! - `edge_to_upstream_loopback`: `Collector::forward_now` to a real
//!   upstream collector in the same process over loopback gRPC (the
//!   upstream's merge included, both on the same 2 cores).
//!
//! Bytes per series are printed once (first interval: with definitions;
//! steady state: refs only).
//!
//! Run: `cargo bench --bench forward`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::{stats::Stats, Aggregator, Collector, Config};
use shoal_proto as pb;
use shoal_proto::client::{batch, refs::RefTable, Batch, Identity, SplitLimits};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

const COUNTERS: u32 = 90_000;
const HISTOGRAMS: u32 = 10_000;
const PER_REQUEST: u32 = 10_000;

/// The SDK batches that update every series once (refs 1..=100 k, defined
/// in the first use of each ref).
fn sdk_batches(sequence: &mut u64, define: bool) -> Vec<pb::FlushRequest> {
    let mut rng = StdRng::seed_from_u64(*sequence);
    let mut out = Vec::new();
    let total = COUNTERS + HISTOGRAMS;
    let mut first = 1;
    while first <= total {
        let last = (first + PER_REQUEST - 1).min(total);
        *sequence += 1;
        let mut req = pb::FlushRequest {
            instance_id: "sdk".into(),
            instance_labels: vec![pb::Label { key: "service".into(), value: "api".into() }],
            sequence: *sequence,
            ..Default::default()
        };
        for r in first..=last {
            let histogram = r > COUNTERS;
            if define {
                req.definitions.push(pb::SeriesDefinition {
                    r#ref: r,
                    name: if histogram { "latency_seconds".into() } else { "requests_total".into() },
                    labels: vec![pb::Label { key: "route".into(), value: format!("/route/{r}") }],
                    ..Default::default()
                });
            }
            if histogram {
                let mut s = shoal_core::Sketch::default();
                for _ in 0..50 {
                    s.record(0.02 * (rng.gen::<f64>() * 2.0).exp()).unwrap();
                }
                req.histograms.push(pb::HistogramDelta { r#ref: r, sketch: Some(shoal_proto::convert::sketch_to_proto(&s)) });
            } else {
                req.counters.push(pb::CounterDelta { r#ref: r, delta: rng.gen_range(1..100) });
            }
        }
        out.push(req);
        first = last + 1;
    }
    out
}

fn edge_config() -> Config {
    Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        // The bench drives the forwarder itself (`forward_now`).
        interval_secs: 3600,
        retention_secs: 3600,
        max_series_per_instance: 200_000,
        max_series_per_metric: 200_000,
        series_expiry_secs: 0,
        ..Config::default()
    }
}

fn in_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_100k_series");
    g.throughput(Throughput::Elements((COUNTERS + HISTOGRAMS) as u64));
    g.sample_size(10);
    let mut config = edge_config();
    config.upstream = vec!["http://127.0.0.1:1".into()];
    let mut agg = Aggregator::new(config, Arc::new(Stats::default()));
    let mut sequence = 0;
    for req in sdk_batches(&mut sequence, true) {
        agg.apply(&req, 1).unwrap();
    }
    let identity = Identity { instance_id: "edge".into(), labels: vec![("tier".into(), "edge".into())] };
    let mut refs = RefTable::default();
    let encode_all = |agg: &mut Aggregator, refs: &mut RefTable| {
        let (_, deltas) = agg.forward_take(1, false).expect("forwarding on");
        let mut bytes = 0;
        let mut used = Vec::new();
        for (i, part) in batch::split(deltas, &SplitLimits::default(), 8).into_iter().enumerate() {
            let b = Batch { sequence: i as u64 + 1, start_nanos: 0, end_nanos: 1, deltas: part, own: Default::default() };
            let (request, r) = batch::encode(&b, refs, &identity, &|_| None);
            bytes += prost::Message::encoded_len(&request);
            used.extend(r);
        }
        refs.mark_known(used);
        bytes
    };
    let first = encode_all(&mut agg, &mut refs);
    let feed = |agg: &mut Aggregator, sequence: &mut u64| {
        for req in sdk_batches(sequence, false) {
            agg.apply(&req, 1).unwrap();
        }
    };
    feed(&mut agg, &mut sequence);
    let steady = encode_all(&mut agg, &mut refs);
    let series = (COUNTERS + HISTOGRAMS) as f64;
    println!(
        "forward encode: {:.1} bytes/series upstream on the first interval (definitions), {:.1} in the steady state \
         (counters: refs + deltas; histograms: 50-sample sketches)",
        first as f64 / series,
        steady as f64 / series
    );
    g.bench_function("edge_take_split_encode", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                feed(&mut agg, &mut sequence);
                let started = Instant::now();
                std::hint::black_box(encode_all(&mut agg, &mut refs));
                spent += started.elapsed();
            }
            spent
        })
    });
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_100k_series");
    g.throughput(Throughput::Elements((COUNTERS + HISTOGRAMS) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    let mut up_config = edge_config();
    up_config.max_series_total = 1_000_000;
    let upstream = Collector::start(up_config).unwrap();
    let mut config = edge_config();
    config.upstream = vec![upstream.grpc_url()];
    let edge = Collector::start(config).unwrap();
    let mut sequence = 0;
    let apply = |define: bool, sequence: &mut u64| {
        for req in sdk_batches(sequence, define) {
            edge.shared().aggregator.lock().apply(&req, shoal_collector::aggregate::unix_secs()).unwrap();
        }
    };
    apply(true, &mut sequence);
    edge.forward_now().unwrap();
    let stats = edge.shared().stats.forwarder().unwrap();
    let (bytes, updates) = (stats.bytes_sent.load(Relaxed), stats.series_updates_sent.load(Relaxed));
    apply(false, &mut sequence);
    edge.forward_now().unwrap();
    let (bytes2, updates2) = (stats.bytes_sent.load(Relaxed) - bytes, stats.series_updates_sent.load(Relaxed) - updates);
    println!(
        "forward over gRPC: {:.1} bytes/series-update on the first interval, {:.1} steady ({} series-updates per interval)",
        bytes as f64 / updates as f64,
        bytes2 as f64 / updates2 as f64,
        updates2
    );
    g.bench_function("edge_to_upstream_loopback", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                apply(false, &mut sequence);
                let started = Instant::now();
                edge.forward_now().unwrap();
                spent += started.elapsed();
            }
            spent
        })
    });
    g.finish();
    edge.shutdown().unwrap();
    upstream.shutdown().unwrap();
}

criterion_group!(benches, in_process, end_to_end);
criterion_main!(benches);

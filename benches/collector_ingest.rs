//! Series-updates per second merged by the collector: in process (one core,
//! `Aggregator::apply`, validation and sketch decoding included) and end to
//! end over loopback gRPC (tonic client -> embedded collector), in memory
//! and durable (`data_dir`: every batch fsynced before its answer, group
//! commit), in the same run; and the restart time of a durable collector
//! holding 1 M series.
//!
//! Run: `cargo bench --bench collector_ingest`. Criterion prints throughput
//! in elements/s; one element is one series-update.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::{stats::Stats, Aggregator, Collector, Config};
use shoal_proto as pb;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERIES: u32 = 1000;

fn definitions() -> Vec<pb::SeriesDefinition> {
    (1..=SERIES)
        .map(|r| pb::SeriesDefinition {
            r#ref: r,
            name: "http_requests_total".into(),
            labels: vec![pb::Label { key: "route".into(), value: format!("/r/{r}") }],
            ..Default::default()
        })
        .collect()
}

fn counter_batch(instance: &str) -> pb::FlushRequest {
    pb::FlushRequest {
        instance_id: instance.into(),
        instance_labels: vec![pb::Label { key: "service".into(), value: "bench".into() }],
        sequence: 1,
        interval_start_unix_nanos: 0,
        interval_end_unix_nanos: 0,
        definitions: definitions(),
        counters: (1..=SERIES).map(|r| pb::CounterDelta { r#ref: r, delta: 3 }).collect(),
        gauges: vec![],
        histograms: vec![],
    }
}

fn histogram_batch(instance: &str) -> pb::FlushRequest {
    let mut rng = StdRng::seed_from_u64(1);
    let histograms = (1..=SERIES)
        .map(|r| {
            // A 10 s delta of a busy endpoint: 50 latencies around 20 ms.
            let mut s = shoal::Sketch::default();
            for _ in 0..50 {
                s.record(0.02 * (rng.gen::<f64>() * 2.0).exp()).unwrap();
            }
            pb::HistogramDelta { r#ref: r, sketch: Some(shoal_proto::convert::sketch_to_proto(&s)) }
        })
        .collect();
    let defs = definitions()
        .into_iter()
        .map(|mut d| {
            d.name = "http_request_duration_seconds".into();
            d
        })
        .collect();
    pb::FlushRequest { definitions: defs, counters: vec![], histograms, ..counter_batch(instance) }
}

fn in_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("collector_in_process");
    g.throughput(Throughput::Elements(SERIES as u64));
    for (name, mut batch) in [("counters", counter_batch("a")), ("histograms", histogram_batch("a"))] {
        let mut agg = Aggregator::new(Config::default(), Arc::new(Stats::default()));
        agg.apply(&batch, 1).unwrap();
        // Steady state: refs only, definitions already known.
        batch.definitions.clear();
        g.bench_function(name, |b| {
            b.iter(|| {
                batch.sequence += 1;
                agg.apply(&batch, 1).unwrap()
            })
        });
    }
    g.finish();
}

/// Instances sending concurrently over gRPC, as a fleet would.
const SENDERS: usize = 16;

fn bench_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn over_grpc(c: &mut Criterion) {
    grpc_group(c, "collector_grpc_loopback", None);
    let dir = bench_dir("durable");
    grpc_group(c, "collector_grpc_loopback_durable", Some(dir.clone()));
    let _ = std::fs::remove_dir_all(&dir);
}

fn grpc_group(c: &mut Criterion, group: &str, data_dir: Option<std::path::PathBuf>) {
    let collector = Collector::start(Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        ..Config::default()
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(SERIES as u64));
    for (name, make) in [("counters", counter_batch as fn(&str) -> pb::FlushRequest), ("histograms", histogram_batch)] {
        let mut clients: Vec<pb::ingest_client::IngestClient<tonic::transport::Channel>> = Vec::new();
        let mut batches = Vec::new();
        for i in 0..SENDERS {
            let id = format!("{name}-{i}");
            let mut client = runtime.block_on(pb::ingest_client::IngestClient::connect(collector.grpc_url())).unwrap();
            let mut batch = make(&id);
            runtime.block_on(client.flush(batch.clone())).unwrap();
            batch.definitions.clear();
            clients.push(client);
            batches.push(batch);
        }
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                runtime.block_on(async {
                    let mut remaining = iters;
                    while remaining > 0 {
                        let n = remaining.min(SENDERS as u64) as usize;
                        let mut sends = tokio::task::JoinSet::new();
                        for (c, b) in clients.iter().zip(batches.iter_mut()).take(n) {
                            b.sequence += 1;
                            let (mut c, req) = (c.clone(), b.clone());
                            sends.spawn(async move { c.flush(req).await.unwrap() });
                        }
                        while let Some(r) = sends.join_next().await {
                            r.unwrap();
                        }
                        remaining -= n as u64;
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
    drop(collector);
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20)
}

/// Restart of a durable collector holding 1 M series (counters, and one
/// histogram in ten): open the WAL, load and decode the checkpoint, rebuild
/// the aggregator.
fn restart_1m(c: &mut Criterion) {
    let dir = bench_dir("restart");
    let config = Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.clone()),
        max_series_total: 2_000_000,
        max_series_per_metric: 2_000_000,
        ..Config::default()
    };
    {
        let collector = Collector::start(config.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut client = runtime.block_on(pb::ingest_client::IngestClient::connect(collector.grpc_url())).unwrap();
        let per = 50_000u32;
        let mut s = shoal::Sketch::default();
        for v in [0.01, 0.02, 0.5] {
            s.record(v).unwrap();
        }
        for i in 0..20u32 {
            let definitions = (0..per)
                .map(|r| pb::SeriesDefinition {
                    r#ref: r,
                    name: if r % 10 == 0 { "restart_seconds".into() } else { "restart_total".into() },
                    labels: vec![pb::Label { key: "id".into(), value: format!("{}", i * per + r) }],
                    ..Default::default()
                })
                .collect();
            let req = pb::FlushRequest {
                instance_id: format!("restart-{i}"),
                sequence: 1,
                definitions,
                counters: (0..per).filter(|r| r % 10 != 0).map(|r| pb::CounterDelta { r#ref: r, delta: 1 }).collect(),
                histograms: (0..per)
                    .filter(|r| r % 10 == 0)
                    .map(|r| pb::HistogramDelta { r#ref: r, sketch: Some(shoal_proto::convert::sketch_to_proto(&s)) })
                    .collect(),
                ..Default::default()
            };
            runtime.block_on(client.flush(req)).unwrap();
        }
        assert_eq!(collector.shared().aggregator.lock().series_count(), 1_000_000);
        collector.shutdown().unwrap(); // final checkpoint
    }
    let mut g = c.benchmark_group("collector_restart");
    g.sample_size(10).measurement_time(Duration::from_secs(15));
    g.bench_function("1m_series", |b| {
        b.iter_with_large_drop(|| {
            let shared = shoal_collector::Shared::open(config.clone()).unwrap();
            assert_eq!(shared.aggregator.lock().series_count(), 1_000_000);
            shared
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group! { name = benches; config = config(); targets = in_process, over_grpc, restart_1m }
criterion_main!(benches);

//! Hot-path cost of shoal against its baselines and peers, in one run.
//!
//! Run: `cargo bench --bench hot_path`, then `python3 benches/ratios.py` for
//! the ratio table. Every group records the same operation the same way:
//! handles are resolved once outside the timed loop (as applications do),
//! except the `macro` groups, which resolve the key on every call.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use metrics::with_local_recorder;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn values() -> Vec<f64> {
    // Latency-like values spread over 4 decades, cycled through.
    (0..1024).map(|i| 1e-5 * 1.009f64.powi(i)).collect()
}

fn baselines(c: &mut Criterion) {
    let mut g = c.benchmark_group("baseline");
    let a = AtomicU64::new(0);
    g.bench_function("atomic_fetch_add", |b| b.iter(|| a.fetch_add(black_box(1), Relaxed)));
    let mut hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
    let ints: Vec<u64> = values().iter().map(|v| (v * 1e9) as u64).collect();
    let mut i = 0usize;
    g.bench_function("hdrhistogram_record", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            hdr.record(black_box(ints[i])).unwrap();
        })
    });
    g.bench_function("quanta_now", |b| b.iter(quanta::Instant::now));
    g.bench_function("std_instant_now", |b| b.iter(Instant::now));
    g.finish();
}

fn shoal_single_thread(c: &mut Criterion) {
    let shoal = shoal::Shoal::builder().build().unwrap();
    let vals = values();
    let mut g = c.benchmark_group("shoal");
    let counter = shoal.counter("x", &[("method", "GET")]);
    g.bench_function("counter_handle", |b| b.iter(|| counter.increment(black_box(1))));
    let facade_counter = with_local_recorder(&shoal, || metrics::counter!("y", "method" => "GET"));
    g.bench_function("counter_facade_handle", |b| b.iter(|| facade_counter.increment(black_box(1))));
    let hist = shoal.histogram("h", &[]);
    let mut i = 0usize;
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            hist.record(black_box(vals[i]));
        })
    });
    let facade_hist = with_local_recorder(&shoal, || metrics::histogram!("fh"));
    g.bench_function("histogram_facade_record", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            facade_hist.record(black_box(vals[i]));
        })
    });
    let gauge = shoal.gauge("g", &[]);
    g.bench_function("gauge_set", |b| b.iter(|| gauge.set(black_box(1.5))));
    with_local_recorder(&shoal, || {
        g.bench_function("counter_macro", |b| b.iter(|| metrics::counter!("x", "method" => "GET").increment(black_box(1))));
        g.bench_function("histogram_macro", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                metrics::histogram!("hm", "route" => "/a").record(black_box(vals[i]));
            })
        });
    });
    g.finish();
}

/// A recorder that does nothing but hand back a counter: what the `metrics`
/// facade costs any recorder on `counter!("x", "method" => "GET")` (building
/// the key, the dispatch, and with a real counter cloning and dropping an
/// `Arc`), measured in the same run as shoal's and the peers' macro paths.
struct StubRecorder {
    counter: Option<std::sync::Arc<NoopCounter>>,
    histogram: Option<std::sync::Arc<NoopCounter>>,
}

struct NoopCounter;

impl metrics::HistogramFn for NoopCounter {
    fn record(&self, value: f64) {
        black_box(value);
    }
}

impl metrics::CounterFn for NoopCounter {
    fn increment(&self, value: u64) {
        black_box(value);
    }
    fn absolute(&self, value: u64) {
        black_box(value);
    }
}

impl metrics::Recorder for StubRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        black_box(key);
        match &self.counter {
            Some(c) => metrics::Counter::from_arc(c.clone()),
            None => metrics::Counter::noop(),
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        black_box(key);
        match &self.histogram {
            Some(h) => metrics::Histogram::from_arc(h.clone()),
            None => metrics::Histogram::noop(),
        }
    }
}

fn facade_floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("facade_floor");
    // Key built and dispatched, a no-op counter handed back (no Arc).
    let vals = values();
    let mut i = 0usize;
    let noop = StubRecorder { counter: None, histogram: None };
    with_local_recorder(&noop, || {
        g.bench_function("counter_macro_noop", |b| b.iter(|| metrics::counter!("x", "method" => "GET").increment(black_box(1))));
        g.bench_function("histogram_macro_noop", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                metrics::histogram!("hm", "route" => "/a").record(black_box(vals[i]));
            })
        });
    });
    // The same, handing back one shared counter (an Arc clone and drop, as
    // every recorder that returns a real handle pays).
    let shared = StubRecorder { counter: Some(std::sync::Arc::new(NoopCounter)), histogram: Some(std::sync::Arc::new(NoopCounter)) };
    with_local_recorder(&shared, || {
        g.bench_function("counter_macro_arc", |b| b.iter(|| metrics::counter!("x", "method" => "GET").increment(black_box(1))));
        g.bench_function("histogram_macro_arc", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                metrics::histogram!("hm", "route" => "/a").record(black_box(vals[i]));
            })
        });
    });
    g.finish();
}

fn peers(c: &mut Criterion) {
    let vals = values();
    let mut i = 0usize;

    // metrics-exporter-prometheus (no HTTP listener).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let mut g = c.benchmark_group("metrics_exporter_prometheus");
    let counter = with_local_recorder(&recorder, || metrics::counter!("x", "method" => "GET"));
    g.bench_function("counter_handle", |b| b.iter(|| counter.increment(black_box(1))));
    // Its histograms append raw samples to a buffer that its upkeep drains
    // into the summary: the upkeep runs every 1,024 records inside the timed
    // loop, so its per-sample cost is counted (as shoal's bucketing is) and
    // memory stays bounded.
    let handle = recorder.handle();
    let hist = with_local_recorder(&recorder, || metrics::histogram!("h"));
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            hist.record(black_box(vals[i]));
            if i == 0 {
                handle.run_upkeep();
            }
        })
    });
    with_local_recorder(&recorder, || {
        g.bench_function("counter_macro", |b| b.iter(|| metrics::counter!("x", "method" => "GET").increment(black_box(1))));
    });
    with_local_recorder(&recorder, || {
        g.bench_function("histogram_macro", |b| {
            b.iter(|| {
                i = (i + 1) & 1023;
                metrics::histogram!("hm", "route" => "/a").record(black_box(vals[i]));
                if i == 0 {
                    handle.run_upkeep();
                }
            })
        });
    });
    g.finish();

    // prometheus (tikv).
    let mut g = c.benchmark_group("prometheus");
    let counter = prometheus::IntCounter::new("x", "x").unwrap();
    g.bench_function("counter_handle", |b| b.iter(|| counter.inc_by(black_box(1))));
    let hist = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            hist.observe(black_box(vals[i]));
        })
    });
    let vec = prometheus::IntCounterVec::new(prometheus::Opts::new("v", "v"), &["method"]).unwrap();
    g.bench_function("counter_with_label_values", |b| b.iter(|| vec.with_label_values(&["GET"]).inc_by(black_box(1))));
    g.finish();

    // prometheus-client.
    let mut g = c.benchmark_group("prometheus_client");
    let counter: prometheus_client::metrics::counter::Counter = Default::default();
    g.bench_function("counter_handle", |b| b.iter(|| counter.inc_by(black_box(1))));
    let hist =
        prometheus_client::metrics::histogram::Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(1e-5, 2.0, 20));
    g.bench_function("histogram_record", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            hist.observe(black_box(vals[i]));
        })
    });
    g.finish();
}

/// Wall time per operation with `threads` threads each doing `iters`
/// operations through `op` at once.
fn per_op_parallel<F: Fn(u64) + Send + Sync + 'static>(threads: usize, iters: u64, op: Arc<F>) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, op) = (barrier.clone(), op.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for i in 0..iters {
                    op(i);
                }
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    handles.into_iter().map(|h| h.join().unwrap()).max().unwrap()
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("two_threads_one_series");
    let shared = Arc::new(AtomicU64::new(0));
    g.bench_function("atomic_fetch_add", |b| {
        b.iter_custom(|iters| {
            let a = shared.clone();
            per_op_parallel(
                2,
                iters,
                Arc::new(move |_| {
                    a.fetch_add(black_box(1), Relaxed);
                }),
            )
        })
    });
    let shoal = Arc::new(shoal::Shoal::builder().build().unwrap());
    let counter = shoal.counter("x", &[]);
    g.bench_function("shoal_counter", |b| {
        b.iter_custom(|iters| {
            let c = counter.clone();
            per_op_parallel(2, iters, Arc::new(move |_| c.increment(black_box(1))))
        })
    });
    let hist = shoal.histogram("h", &[]);
    let vals = Arc::new(values());
    g.bench_function("shoal_histogram", |b| {
        b.iter_custom(|iters| {
            let (h, v) = (hist.clone(), vals.clone());
            per_op_parallel(2, iters, Arc::new(move |i| h.record(black_box(v[(i & 1023) as usize]))))
        })
    });
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let counter = with_local_recorder(&recorder, || metrics::counter!("x"));
    g.bench_function("metrics_exporter_prometheus_counter", |b| {
        b.iter_custom(|iters| {
            let c = counter.clone();
            per_op_parallel(2, iters, Arc::new(move |_| c.increment(black_box(1))))
        })
    });
    g.finish();

    // The same closures on one thread, for the per-op ratio.
    let mut g = c.benchmark_group("one_thread_same_harness");
    let counter = shoal.counter("x", &[]);
    g.bench_function("shoal_counter", |b| {
        b.iter_custom(|iters| {
            let c = counter.clone();
            per_op_parallel(1, iters, Arc::new(move |_| c.increment(black_box(1))))
        })
    });
    g.bench_function("shoal_histogram", |b| {
        b.iter_custom(|iters| {
            let (h, v) = (hist.clone(), vals.clone());
            per_op_parallel(1, iters, Arc::new(move |i| h.record(black_box(v[(i & 1023) as usize]))))
        })
    });
    g.finish();
}

/// The histogram records again in a loop whose index lives in a register
/// (`iter_custom`), so the harness adds no store-to-load chain of its own
/// (the `iter` closures above keep their index in memory, which every
/// record then waits on): the ratio against hdrhistogram without the
/// harness's share diluting it. Also the floor of shoal's bucket mapping:
/// `Mapping::index` into a flat, unshared `u64` array, hdrhistogram's own
/// shape, which tells the mapping's cost from the cells'. `std::hint::black_box`
/// here: criterion's own `black_box` is a volatile stack round trip.
fn tight_loop(c: &mut Criterion) {
    let mut g = c.benchmark_group("tight_loop");
    let vals = values();
    let ints: Vec<u64> = vals.iter().map(|v| (v * 1e9) as u64).collect();
    let mut hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
    g.bench_function("hdrhistogram_record", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for k in 0..iters {
                hdr.record(std::hint::black_box(ints[(k & 1023) as usize])).unwrap();
            }
            start.elapsed()
        })
    });
    let shoal = shoal::Shoal::builder().build().unwrap();
    let hist = shoal.histogram("h", &[]);
    g.bench_function("shoal_histogram_record", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for k in 0..iters {
                hist.record(std::hint::black_box(vals[(k & 1023) as usize]));
            }
            start.elapsed()
        })
    });
    let mapping = shoal_core::sketch::mapping_for(6);
    let mut flat = vec![0u64; 1 << 12];
    g.bench_function("floor_mapping_into_flat_array", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for k in 0..iters {
                // The 1,024 values span 4 decades: 850 buckets at scale 6.
                let index = mapping.index(std::hint::black_box(vals[(k & 1023) as usize]));
                flat[(index & 4095) as usize] += 1;
            }
            start.elapsed()
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = baselines, shoal_single_thread, facade_floor, peers, two_threads, tight_loop }
criterion_main!(benches);

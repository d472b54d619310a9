//! Bytes per series, counted by a global allocator (live bytes after the
//! series exist and hold data, minus before, divided by the series): shoal's
//! SDK, metrics-exporter-prometheus and the `prometheus` crate holding the
//! same counters and histograms, and the collector holding what the SDK
//! flushed. Histograms: 200 samples each over 6 decades (1 µs to 1 s);
//! the SDK is counted before and after its first take (which adds the
//! state each later delta is taken against);
//! shoal's sketch at its default 1% error, the peers with 11 and 20 buckets.
//!
//! Run: `cargo run --release --example memory_per_series`.

use prost::Message;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_core::Deltas;
use shoal_proto::client::batch::{encode as encode_batch, split};
use shoal_proto::client::refs::RefTable;
use shoal_proto::client::{Batch, Identity, SplitLimits};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};
use std::sync::Arc;

struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERIES: usize = 20_000;
const SAMPLES: usize = 200;

fn name_labels(i: usize) -> [(&'static str, String); 2] {
    [("pod", format!("pod-{}", i % 500)), ("route", format!("/api/v1/r{}", i / 500))]
}

/// Live bytes `make` leaves behind, per series (it returns what it built,
/// dropped after the count).
fn per_series<T>(make: impl FnOnce() -> T) -> f64 {
    let before = LIVE.load(Relaxed);
    let kept = make();
    let after = LIVE.load(Relaxed);
    drop(kept);
    (after - before) as f64 / SERIES as f64
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let values: Vec<Vec<f64>> = (0..SERIES).map(|_| (0..SAMPLES).map(|_| 10f64.powf(rng.gen_range(-6.0..0.0))).collect()).collect();
    let labels: Vec<_> = (0..SERIES).map(name_labels).collect();

    let sdk = |histograms: bool| {
        let shoal = shoal::Shoal::builder().service("m").cardinality_limit(4 * SERIES).send_own_metrics(false).build().unwrap();
        let mut handles = Vec::new();
        for (i, l) in labels.iter().enumerate() {
            let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if histograms {
                let h = shoal.histogram("latency_seconds", &l);
                for v in &values[i] {
                    h.record(*v);
                }
                handles.push(Box::new(h) as Box<dyn std::any::Any>);
            } else {
                let c = shoal.counter("requests_total", &l);
                c.increment(1);
                handles.push(Box::new(c));
            }
        }
        (shoal, handles)
    };
    let mep = |histograms: bool| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let mut handles = Vec::new();
        metrics::with_local_recorder(&recorder, || {
            for (i, l) in labels.iter().enumerate() {
                let l: Vec<metrics::Label> = l.iter().map(|(k, v)| metrics::Label::new(*k, v.clone())).collect();
                if histograms {
                    let h = metrics::histogram!("latency_seconds", l);
                    for v in &values[i] {
                        h.record(*v);
                    }
                    handles.push(Box::new(h) as Box<dyn std::any::Any>);
                } else {
                    let c = metrics::counter!("requests_total", l);
                    c.increment(1);
                    handles.push(Box::new(c));
                }
            }
        });
        // What a scrape would keep: the recorder's rendered state.
        let handle = recorder.handle();
        handle.run_upkeep();
        (recorder, handles)
    };
    let prom = |histograms: bool| {
        let registry = prometheus::Registry::new();
        if histograms {
            let buckets = prometheus::exponential_buckets(1e-6, 2.0, 20).unwrap();
            let h =
                prometheus::HistogramVec::new(prometheus::HistogramOpts::new("latency_seconds", "l").buckets(buckets), &["pod", "route"])
                    .unwrap();
            registry.register(Box::new(h.clone())).unwrap();
            let hs: Vec<_> = labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let h = h.with_label_values(&[&l[0].1, &l[1].1]);
                    for v in &values[i] {
                        h.observe(*v);
                    }
                    h
                })
                .collect();
            (registry, hs.len())
        } else {
            let c = prometheus::IntCounterVec::new(prometheus::Opts::new("requests_total", "r"), &["pod", "route"]).unwrap();
            registry.register(Box::new(c.clone())).unwrap();
            for l in &labels {
                c.with_label_values(&[&l[0].1, &l[1].1]).inc();
            }
            (registry, SERIES)
        }
    };
    // The collector: an aggregator holding what one SDK flushed.
    let collector = |histograms: bool| {
        let (shoal, _handles) = sdk(histograms);
        let identity = Identity { instance_id: "m".into(), labels: vec![("service".into(), "m".into())] };
        let mut refs = RefTable::default();
        let requests: Vec<_> = split(shoal.take_deltas(), &SplitLimits::default(), 0)
            .into_iter()
            .enumerate()
            .map(|(n, d)| {
                let batch = Batch { sequence: n as u64 + 1, start_nanos: 0, end_nanos: 0, deltas: d, own: Deltas::default() };
                let request = encode_batch(&batch, &mut refs, &identity, &|_| None).0;
                shoal_proto::FlushRequest::decode(request.encode_to_vec().as_slice()).unwrap()
            })
            .collect();
        drop(shoal);
        let config = shoal_collector::Config::default();
        let now = shoal_collector::aggregate::unix_secs();
        let before = LIVE.load(Relaxed);
        let mut aggregator = shoal_collector::Aggregator::new(config, Arc::new(shoal_collector::stats::Stats::default()));
        for r in &requests {
            aggregator.apply(r, now).unwrap();
        }
        let bytes = LIVE.load(Relaxed) - before;
        drop(aggregator);
        bytes as f64 / SERIES as f64
    };

    println!("bytes per series ({SERIES} series; histograms: {SAMPLES} samples over 6 decades)");
    println!("{:34} {:>10} {:>12}", "", "counter", "histogram");
    println!("{:34} {:>10.0} {:>12.0}", "shoal SDK (1% sketch)", per_series(|| sdk(false)), per_series(|| sdk(true)));
    // A running SDK also keeps, per histogram series, what its cells held at
    // the last take (about a byte per bucket of the range seen): counted
    // here after one take, with the deltas it produced dropped.
    let flushed = |histograms: bool| {
        let (shoal, handles) = sdk(histograms);
        drop(shoal.take_deltas());
        (shoal, handles)
    };
    println!("{:34} {:>10.0} {:>12.0}", "shoal SDK after a take", per_series(|| flushed(false)), per_series(|| flushed(true)));
    println!("{:34} {:>10.0} {:>12.0}", "shoal collector (rollup series)", collector(false), collector(true));
    println!("{:34} {:>10.0} {:>12.0}", "metrics-exporter-prometheus 0.18", per_series(|| mep(false)), per_series(|| mep(true)));
    println!("{:34} {:>10.0} {:>12.0}", "prometheus 0.14 (20 buckets)", per_series(|| prom(false)), per_series(|| prom(true)));
}

//! Bytes per series-update on the wire, measured through the real flusher: a
//! series' name and labels travel once, later batches carry a numeric ref.
//! Run with `--nocapture` to see the figures.

mod common;

use common::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

fn bytes_and_updates(s: &shoal::Shoal) -> (u64, u64) {
    let st = s.flusher_stats();
    (st.bytes_sent.load(Relaxed), st.series_updates_sent.load(Relaxed))
}

#[test]
fn steady_state_batches_carry_refs_not_names() {
    let collector = start_collector(None, |_| {});
    let s = shoal::Shoal::builder()
        .service("wire")
        .label("region", "eu-west-1")
        .collector(collector.grpc_url())
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let counters: Vec<_> = (0..1000).map(|i| s.counter("http_requests_total", &[("route", &format!("/api/v1/items/{i}"))])).collect();
    let histograms: Vec<_> =
        (0..1000).map(|i| s.histogram("http_request_duration_seconds", &[("route", &format!("/api/v1/items/{i}"))])).collect();
    let record = |round: u64| {
        for (i, c) in counters.iter().enumerate() {
            c.increment(1 + (i as u64 + round) % 50);
        }
        for (i, h) in histograms.iter().enumerate() {
            // ~20 latencies per series per interval, 5 ms .. 500 ms.
            for j in 0..20 {
                h.record(0.005 * 1.26f64.powi(((i + j) % 20) as i32));
            }
        }
    };
    record(0);
    s.flush().unwrap();
    let (first_bytes, first_updates) = bytes_and_updates(&s);
    record(1);
    s.flush().unwrap();
    let (bytes, updates) = bytes_and_updates(&s);
    let steady = (bytes - first_bytes) as f64 / (updates - first_updates) as f64;
    let first = first_bytes as f64 / first_updates as f64;

    // Counters alone.
    for c in &counters {
        c.increment(7);
    }
    s.flush().unwrap();
    let (b2, u2) = bytes_and_updates(&s);
    let per_counter = (b2 - bytes) as f64 / (u2 - updates) as f64;
    // Histograms alone.
    record_histograms(&histograms);
    s.flush().unwrap();
    let (b3, u3) = bytes_and_updates(&s);
    let per_histogram = (b3 - b2) as f64 / (u3 - u2) as f64;
    println!("bytes per series-update: first batch (with definitions) {first:.1}, steady mixed {steady:.1}, counter {per_counter:.1}, histogram (20 samples) {per_histogram:.1}");
    assert!(per_counter <= 10.0, "counter update costs {per_counter} bytes");
    assert!(per_histogram <= 100.0, "histogram update costs {per_histogram} bytes");
    assert!(steady * 1.5 < first, "refs must be much smaller than definitions: {steady} vs {first}");
    let text = scrape(&collector);
    assert!(sample(&text, r#"http_requests_total{region="eu-west-1",route="/api/v1/items/0",service="wire"}"#).unwrap() > 0.0);
    drop(s);
    collector.shutdown().unwrap();
}

fn record_histograms(histograms: &[shoal::Histogram]) {
    for (i, h) in histograms.iter().enumerate() {
        for j in 0..20 {
            h.record(0.005 * 1.26f64.powi(((i + j) % 20) as i32));
        }
    }
}

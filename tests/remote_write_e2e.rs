//! Remote-write end to end (nothing mocked but one flaky receiver): real SDK
//! instances flush to a collector configured with three `[[remote_write]]`
//! targets, and every closed interval reaches
//! - a real Prometheus 2.42 (`--enable-feature=native-histograms`, target
//!   `histograms = "native"`): `histogram_quantile(q, sum(name))` within 1%
//!   of the exact quantile of every raw sample, `sum(name_total)` exact;
//! - a real VictoriaMetrics 1.79 (default `summary` target): `sum(..._total)`
//!   exact, `name{quantile="0.99"}` within 1%;
//! - a receiver that answers 500 before it recovers: every interval it
//!   acknowledged arrived once, in order, and the last one has everything.
//!
//! The HELP text given with `describe_counter!` shows on the collector's
//! `/metrics`, in `/api/v1/series` and in the remote-write metadata.
//! Servers are killed by pid when the test ends, also when it fails. Fails,
//! never skips, when `prometheus` or `victoria-metrics` is missing.

mod common;

use common::real_servers::{prometheus_receiver, receiver, victoria_metrics, within, R204, R500};
use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::config::RemoteWriteConfig;
use shoal_collector::remote_write::{decode_request, HistogramMode};
use std::time::Duration;

const INSTANCES: usize = 3;
const SAMPLES: usize = 30_000;
const QS: [f64; 4] = [0.5, 0.9, 0.99, 0.999];
const COUNTER: &str = "rwe2e_requests_total";
const HISTOGRAM: &str = "rwe2e_latency_seconds";
const HELP: &str = "Requests served by the checkout service";

#[test]
fn closed_intervals_reach_prometheus_victoria_metrics_and_a_flaky_receiver() {
    let prometheus = prometheus_receiver();
    let vm = victoria_metrics();
    // The first three requests get 500, the others 204.
    let (flaky_url, flaky) = receiver(vec![R500, R500, R500, R204]);
    let collector = start_collector(None, |c| {
        c.interval_secs = 1;
        let mut native = RemoteWriteConfig::new(format!("{}/api/v1/write", prometheus.base));
        native.histograms = HistogramMode::Native;
        c.remote_write = vec![native, RemoteWriteConfig::new(format!("{}/api/v1/write", vm.base)), RemoteWriteConfig::new(&flaky_url)];
    });
    let shoals: Vec<shoal::Shoal> = (0..INSTANCES)
        .map(|_| {
            shoal::Shoal::builder()
                .service("checkout")
                .collector(collector.grpc_url())
                .flush_interval(Duration::from_millis(200))
                .build()
                .unwrap()
        })
        .collect();

    // Instance i is 10^i times slower: no instance's percentiles describe the cluster.
    let mut rng = StdRng::seed_from_u64(12);
    let mut raw = Vec::with_capacity(INSTANCES * SAMPLES);
    for (i, shoal) in shoals.iter().enumerate() {
        metrics::with_local_recorder(shoal, || {
            metrics::describe_counter!(COUNTER, HELP);
            metrics::describe_histogram!(HISTOGRAM, metrics::Unit::Seconds, "Time to serve a request");
            let counter = metrics::counter!(COUNTER);
            let latency = metrics::histogram!(HISTOGRAM);
            for _ in 0..SAMPLES {
                let v = 10f64.powi(i as i32) * 1e-3 * (-rng.gen::<f64>().ln()).max(1e-6);
                counter.increment(1);
                latency.record(v);
                raw.push(v);
            }
        });
    }
    for shoal in &shoals {
        shoal.flush().expect("flush to a running collector");
    }
    raw.sort_by(f64::total_cmp);
    let total = (INSTANCES * SAMPLES) as f64;

    // HELP from describe_counter! on the collector's /metrics and JSON API.
    let exposed = scrape(&collector);
    assert!(exposed.contains(&format!("# HELP {COUNTER} {HELP}\n")), "{exposed}");
    assert!(exposed.contains(&format!("# HELP {HISTOGRAM} Time to serve a request (unit: seconds)\n")), "{exposed}");
    let series = http_get(&format!("http://{}/api/v1/series?name={COUNTER}", collector.http_addr()));
    let series: serde_json::Value = serde_json::from_str(&series).unwrap();
    assert_eq!(series["series"][0]["help"], HELP, "{series}");

    // Prometheus, native histograms: exact total, quantiles of all raw samples within 1%.
    let got = prometheus.query_value_until(&format!("sum({COUNTER})"), None, || {}, |v| v == total);
    assert_eq!(got, total);
    prometheus.query_value_until(&format!("histogram_count(sum({HISTOGRAM}))"), None, || {}, |v| v == total);
    for q in QS {
        let got = prometheus.query_value(&format!("histogram_quantile({q}, sum({HISTOGRAM}))"), None).unwrap();
        let exact = exact_quantile(&raw, q);
        eprintln!("prometheus histogram_quantile({q}) = {got}, exact {exact}, error {:+.3}%", (got / exact - 1.0) * 100.0);
        assert!(within(got, exact, 0.01), "q {q}: prometheus {got} vs exact {exact}");
    }

    // VictoriaMetrics, summaries (the default): exact total, p99 within 1%.
    let flush = || {
        let _ = ureq::get(format!("{}/internal/force_flush", vm.base)).call();
    };
    let got = vm.query_value_until(&format!("sum({COUNTER})"), None, flush, |v| v == total);
    assert_eq!(got, total);
    vm.query_value_until(&format!("sum({HISTOGRAM}_count)"), None, flush, |v| v == total);
    let p99 = vm.query_value(&format!("{HISTOGRAM}{{quantile=\"0.99\"}}"), None).unwrap();
    let exact = exact_quantile(&raw, 0.99);
    assert!(within(p99, exact, 0.01), "victoria-metrics p99 {p99} vs exact {exact}");

    // Self-metrics per target.
    let exposed = scrape(&collector);
    let sent = |url: &str| sample(&exposed, &format!("shoal_collector_remote_write_samples_sent_total{{url=\"{url}\"}}"));
    assert!(sent(&format!("{}/api/v1/write", vm.base)).unwrap() > 0.0, "{exposed}");
    let histograms = format!("shoal_collector_remote_write_histograms_sent_total{{url=\"{}/api/v1/write\"}}", prometheus.base);
    assert!(sample(&exposed, &histograms).unwrap() > 0.0, "{exposed}");

    // The flaky receiver: retried through the 500s, then every acknowledged
    // interval once, in order, the last one with the whole total.
    let acknowledged_total = || {
        let seen = flaky.lock().unwrap();
        let delivered: Vec<_> = seen.iter().filter(|r| r.answer == R204).map(|r| decode_request(&r.body).unwrap()).collect();
        let ends: Vec<i64> = delivered.iter().filter_map(|r| r.timeseries.first()?.samples.first().map(|s| s.timestamp)).collect();
        assert!(ends.windows(2).all(|w| w[0] < w[1]), "acknowledged intervals in order, none twice: {ends:?}");
        let last = delivered.last()?;
        let counter = last.timeseries.iter().find(|t| t.labels.iter().any(|l| l.name == "__name__" && l.value == COUNTER))?;
        let help = last.metadata.iter().find(|m| m.metric_family_name == COUNTER).map(|m| m.help.clone());
        assert_eq!(help.as_deref(), Some(HELP), "HELP in the remote-write metadata");
        Some(counter.samples[0].value).filter(|v| *v == total)
    };
    wait_for(Duration::from_secs(30), acknowledged_total).expect("the flaky receiver gets the whole total");
    assert!(flaky.lock().unwrap().iter().filter(|r| r.answer == R500).count() == 3);
    let retried = sample(&scrape(&collector), &format!("shoal_collector_remote_write_retries_total{{url=\"{flaky_url}\"}}"));
    assert!(retried.unwrap() >= 3.0);

    for shoal in &shoals {
        shoal.shutdown().unwrap();
    }
    collector.shutdown().unwrap();
}

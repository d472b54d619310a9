//! End to end against a real Prometheus server (Debian's `prometheus`
//! package; nothing mocked): a small fleet of SDK instances flushes to a
//! collector, Prometheus scrapes the collector's `/metrics` every second, and
//! PromQL over Prometheus's HTTP API must return the exact cluster counter
//! total and the very quantiles the collector computed from merged sketches.
//! The PromQL queries are the ones the README documents (section "Scraping with Prometheus").
//!
//! Every process started here is killed by pid when the test ends, also when
//! it fails (see `common::PrometheusServer`). Fails, never skips, when the
//! `prometheus` binary is missing.

mod common;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const INSTANCES: usize = 3;
const SAMPLES_PER_PHASE: usize = 20_000;
/// Label values Prometheus must read back exactly as recorded.
const AWKWARD: [&str; 3] = [r#"say "hi""#, r"C:\temp\x", "two\nlines"];
/// How long Prometheus may take to show a new value (1 s scrapes).
const SCRAPE_WAIT: Duration = Duration::from_secs(30);

/// The documented PromQL (README.md, "Scraping with Prometheus").
const CLUSTER_P99: &str = r#"http_request_duration_seconds{service="checkout", quantile="0.99"}"#;
const REQUEST_RATE: &str = "sum by (service) (rate(http_requests_total[5m]))";
const MEAN_LATENCY: &str = "rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m])";
const REJECTED_ALERT: &str = "sum(rate(shoal_collector_batches_rejected_total[5m])) > 0";

/// Polls an instant query until it returns `want` (as Prometheus prints it).
fn wait_for_value(prometheus: &PrometheusServer, promql: &str, want: &str) {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < SCRAPE_WAIT {
        last = prometheus.query_one(promql);
        if last.as_deref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "after {SCRAPE_WAIT:?} Prometheus answers {promql} with {last:?}, expected {want}\ntargets: {}\nlogs:\n{}",
        prometheus.get_json("/api/v1/targets"),
        prometheus.logs()
    );
}

fn as_f64(promql: &str, value: Option<String>) -> f64 {
    let value = value.unwrap_or_else(|| panic!("no result for {promql}"));
    value.parse().unwrap_or_else(|e| panic!("{promql} returned {value:?}: {e}"))
}

#[test]
fn promql_returns_the_exact_cluster_total_and_the_collectors_quantiles() {
    let collector = start_collector(None, |_| {});
    let shoals: Vec<shoal::Shoal> = (0..INSTANCES)
        .map(|_| {
            shoal::Shoal::builder()
                .service("checkout")
                .label("region", "eu-west-1")
                .collector(collector.grpc_url())
                .flush_interval(Duration::from_millis(100))
                .build()
                .unwrap()
        })
        .collect();
    let prometheus = PrometheusServer::start(&[collector.http_addr()]);
    eprintln!("prometheus pid {} at {} scraping {}", prometheus.pid(), prometheus.url, collector.http_addr());

    let mut rng = StdRng::seed_from_u64(42);
    let mut all_samples = Vec::new();
    let mut requests = 0u64;
    // Two phases, so that Prometheus sees the counter grow (rate > 0).
    for phase in 0..2 {
        for (i, shoal) in shoals.iter().enumerate() {
            // Instance i is 5^i times slower: no per-instance percentile
            // describes the cluster.
            let slowness = 5f64.powi(i as i32);
            metrics::with_local_recorder(shoal, || {
                let counter = metrics::counter!("http_requests_total", "method" => "GET");
                let latency = metrics::histogram!("http_request_duration_seconds");
                for _ in 0..SAMPLES_PER_PHASE {
                    let v = slowness * 1e-3 * (1.0 + 9.0 * rng.gen::<f64>()) * if rng.gen_bool(0.02) { 40.0 } else { 1.0 };
                    counter.increment(1);
                    latency.record(v);
                    all_samples.push(v);
                }
                for (j, path) in AWKWARD.iter().enumerate() {
                    metrics::counter!("awkward_requests_total", "path" => *path).increment(j as u64 + 1);
                }
                metrics::gauge!("inflight_requests").set((i + phase) as f64);
            });
            requests += SAMPLES_PER_PHASE as u64;
        }
        for shoal in &shoals {
            shoal.flush().expect("flush to a running collector");
        }
        // Prometheus has scraped a state that includes this phase.
        wait_for_value(&prometheus, r#"http_requests_total{method="GET",service="checkout"}"#, &requests.to_string());
    }

    // The exact cluster total, merged by the collector, read through PromQL.
    let total = prometheus.query_one(r#"sum(http_requests_total{job="shoal"})"#);
    assert_eq!(total.as_deref(), Some(requests.to_string().as_str()), "exact cluster counter total");
    assert_eq!(requests, (2 * INSTANCES * SAMPLES_PER_PHASE) as u64);

    // The collector's own view (nothing changes after the final flush).
    let exposed = scrape(&collector);
    all_samples.sort_unstable_by(f64::total_cmp);
    let labels = r#"region="eu-west-1",service="checkout""#;
    for q in [0.5, 0.9, 0.99, 0.999] {
        let from_collector = sample(&exposed, &format!("http_request_duration_seconds{{{labels},quantile=\"{q}\"}}"))
            .unwrap_or_else(|| panic!("no q{q} in\n{exposed}"));
        let promql = format!(r#"http_request_duration_seconds{{service="checkout",quantile="{q}"}}"#);
        let from_prometheus = as_f64(&promql, prometheus.query_one(&promql));
        assert_eq!(
            from_prometheus.to_bits(),
            from_collector.to_bits(),
            "q{q}: PromQL {from_prometheus} vs collector {from_collector} (must be the same number)"
        );
        let exact = exact_quantile(&all_samples, q);
        let error = (from_prometheus - exact).abs() / exact;
        assert!(error <= 0.01, "q{q}: PromQL {from_prometheus} vs exact {exact}: error {error}");
        eprintln!("q{q}: PromQL {from_prometheus}  collector {from_collector}  exact {exact}  error {:.3}%", error * 100.0);
    }
    let count = prometheus.query_one(r#"http_request_duration_seconds_count{service="checkout"}"#);
    assert_eq!(count.as_deref(), Some(all_samples.len().to_string().as_str()));
    let sum = as_f64("_sum", prometheus.query_one(r#"http_request_duration_seconds_sum{service="checkout"}"#));
    let collector_sum = sample(&exposed, &format!("http_request_duration_seconds_sum{{{labels}}}")).unwrap();
    assert_eq!(sum.to_bits(), collector_sum.to_bits());

    // The documented queries.
    let p99 = as_f64(CLUSTER_P99, prometheus.query_one(CLUSTER_P99));
    assert_eq!(p99.to_bits(), sample(&exposed, &format!("http_request_duration_seconds{{{labels},quantile=\"0.99\"}}")).unwrap().to_bits());
    let rate = prometheus.query(REQUEST_RATE);
    assert_eq!(rate.len(), 1, "{REQUEST_RATE}: {rate:?}");
    assert_eq!(rate[0]["metric"]["service"], "checkout");
    let rate: f64 = rate[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(rate > 0.0, "{REQUEST_RATE} = {rate}");
    let mean = as_f64(MEAN_LATENCY, prometheus.query_one(MEAN_LATENCY));
    assert!(mean > 0.0 && mean < all_samples[all_samples.len() - 1], "{MEAN_LATENCY} = {mean}");
    assert!(prometheus.query(REJECTED_ALERT).is_empty(), "{REJECTED_ALERT} fired");

    // Gauges roll up (sum by default): instances set 1, 2, 3 in the last phase.
    assert_eq!(prometheus.query_one(r#"inflight_requests{service="checkout"}"#).as_deref(), Some("6"));

    // Escaped label values arrive in Prometheus exactly as recorded.
    let awkward = prometheus.query(r#"awkward_requests_total{service="checkout"}"#);
    let paths: BTreeSet<String> = awkward.iter().map(|s| s["metric"]["path"].as_str().unwrap().to_string()).collect();
    assert_eq!(paths, AWKWARD.iter().map(|s| s.to_string()).collect(), "{awkward:?}");
    for s in &awkward {
        let path = s["metric"]["path"].as_str().unwrap();
        let j = AWKWARD.iter().position(|p| *p == path).unwrap() as u64;
        let want = 2 * INSTANCES as u64 * (j + 1);
        assert_eq!(s["value"][1].as_str(), Some(want.to_string().as_str()), "awkward path {path:?}");
    }

    // The scrape itself is healthy and the collector's self-metrics arrive.
    assert_eq!(prometheus.query_one(r#"up{job="shoal"}"#).as_deref(), Some("1"));
    let targets = prometheus.get_json("/api/v1/targets");
    let active = targets["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
    assert_eq!(active.len(), 1, "{targets}");
    assert_eq!(active[0]["health"], "up", "{targets}");
    assert_eq!(active[0]["lastError"], "", "{targets}");
    let merged = as_f64("merged", prometheus.query_one("shoal_collector_batches_merged_total"));
    assert!(merged >= (2 * INSTANCES) as f64, "batches merged: {merged}");
    assert_eq!(prometheus.query_one("sum(shoal_collector_batches_rejected_total)").as_deref(), Some("0"));
    assert_eq!(prometheus.query_one("shoal_collector_instances").as_deref(), Some(INSTANCES.to_string().as_str()));

    let pid = prometheus.pid();
    drop(prometheus);
    // Gone: the pid no longer names a live process (a zombie would, but Drop reaps it).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "prometheus (pid {pid}) still running");
    for shoal in shoals {
        shoal.shutdown().unwrap();
    }
    collector.shutdown().unwrap();
}

//! Several SDK instances -> one collector -> /metrics over HTTP: counter
//! totals exact, every quantile within 1% of the exact quantile of all samples.

mod common;

use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn fleet_counters_are_exact_and_cluster_quantiles_within_one_percent() {
    let collector = start_collector(None, |_| {});
    let instances = 4;
    let threads_per_instance = 3;
    let samples_per_thread = 20_000;
    let all_samples = Arc::new(Mutex::new(Vec::new()));
    let mut shoals = Vec::new();
    for i in 0..instances {
        let shoal = shoal::Shoal::builder()
            .service("checkout")
            .label("region", "test-1")
            .collector(collector.grpc_url())
            .flush_interval(Duration::from_millis(100))
            .build()
            .unwrap();
        shoals.push(Arc::new(shoal));
        let _ = i;
    }
    let mut workers = Vec::new();
    for (i, shoal) in shoals.iter().enumerate() {
        for t in 0..threads_per_instance {
            let shoal = shoal.clone();
            let all = all_samples.clone();
            workers.push(std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64((i * 100 + t) as u64);
                // Instance i is slower by a factor 3^i: a spread no average of
                // per-instance percentiles can represent.
                let scale = 3f64.powi(i as i32);
                let mut mine = Vec::with_capacity(samples_per_thread);
                metrics::with_local_recorder(&*shoal, || {
                    let requests = metrics::counter!("http_requests_total", "method" => "GET");
                    let latency = metrics::histogram!("http_request_duration_seconds");
                    for _ in 0..samples_per_thread {
                        let v = scale * 1e-3 * (1.0 + rng.gen::<f64>() * 9.0) * if rng.gen_bool(0.02) { 50.0 } else { 1.0 };
                        requests.increment(1);
                        latency.record(v);
                        mine.push(v);
                    }
                });
                all.lock().unwrap().extend(mine);
            }));
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    for s in &shoals {
        s.flush().expect("flush to a running collector");
    }
    let text = scrape(&collector);
    let labels = r#"method="GET",region="test-1",service="checkout""#;
    let total = sample(&text, &format!("http_requests_total{{{labels}}}")).unwrap_or_else(|| panic!("no counter in\n{text}"));
    assert_eq!(total as u64, (instances * threads_per_instance * samples_per_thread) as u64);

    let mut all = all_samples.lock().unwrap().clone();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let hist_labels = r#"region="test-1",service="checkout""#;
    let count = sample(&text, &format!("http_request_duration_seconds_count{{{hist_labels}}}")).unwrap();
    assert_eq!(count as usize, all.len());
    for q in [0.5, 0.9, 0.99, 0.999] {
        let reported = sample(&text, &format!("http_request_duration_seconds{{{hist_labels},quantile=\"{q}\"}}")).unwrap();
        let exact = exact_quantile(&all, q);
        let err = (reported - exact).abs() / exact;
        assert!(err <= 0.01, "q{q}: collector {reported} exact {exact} error {err}");
    }
    let sum = sample(&text, &format!("http_request_duration_seconds_sum{{{hist_labels}}}")).unwrap();
    let exact_sum: f64 = all.iter().sum();
    assert!((sum - exact_sum).abs() / exact_sum < 1e-9, "sum {sum} vs {exact_sum}");

    // Self-metrics on both sides agree on what was sent and merged.
    let merged = sample(&text, "shoal_collector_batches_merged_total").unwrap();
    let acked: u64 = shoals.iter().map(|s| s.flusher_stats().batches_acknowledged.load(std::sync::atomic::Ordering::Relaxed)).sum();
    let dups = sample(&text, "shoal_collector_batches_duplicate_total").unwrap();
    assert_eq!(merged as u64 + dups as u64, acked);
    assert!(sample(&text, "shoal_collector_series").unwrap() >= 2.0);
    for s in shoals {
        Arc::try_unwrap(s).ok().unwrap().shutdown().unwrap();
    }
    collector.shutdown().unwrap();
}

#[test]
fn gauges_roll_up_by_rule_and_query_api_answers() {
    let collector = start_collector(None, |c| {
        c.gauge_rules.insert("cpu_max".into(), shoal_collector::GaugeRule::Max);
    });
    let shoals: Vec<_> = (0..3)
        .map(|i| {
            let s = shoal::Shoal::builder()
                .service("api")
                .collector(collector.grpc_url())
                .flush_interval(Duration::from_secs(3600))
                .build()
                .unwrap();
            s.gauge("inflight", &[]).set(i as f64 + 1.0);
            s.gauge("cpu_max", &[]).set(10.0 * (i as f64 + 1.0));
            s.counter("jobs_total", &[("kind", "a")]).increment(5);
            s.histogram("job_seconds", &[]).record(0.5 * (i + 1) as f64);
            s.flush().unwrap();
            s
        })
        .collect();
    let text = scrape(&collector);
    assert_eq!(sample(&text, r#"inflight{service="api"}"#), Some(6.0), "{text}");
    assert_eq!(sample(&text, r#"cpu_max{service="api"}"#), Some(30.0), "{text}");
    assert_eq!(sample(&text, r#"jobs_total{kind="a",service="api"}"#), Some(15.0), "{text}");
    assert!(text.contains("# TYPE job_seconds summary"), "{text}");

    let base = format!("http://{}", collector.http_addr());
    assert_eq!(http_get(&format!("{base}/healthz")).trim(), "ok");
    let series: serde_json::Value = serde_json::from_str(&http_get(&format!("{base}/api/v1/series?name=jobs_total"))).unwrap();
    assert_eq!(series["series"][0]["series"], r#"jobs_total{kind="a",service="api"}"#);
    let q: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{base}/api/v1/query?name=job_seconds&labels=service=api&quantiles=0.5,1"))).unwrap();
    let point = &q["series"][0]["points"][0];
    assert_eq!(point["count"], 3);
    let median = point["quantiles"]["0.5"].as_f64().unwrap();
    assert!((median - 1.0).abs() <= 0.01, "{q}");
    let counters: serde_json::Value = serde_json::from_str(&http_get(&format!("{base}/api/v1/query?name=jobs_total"))).unwrap();
    assert_eq!(counters["series"][0]["points"][0]["value"], 15);
    // Bad queries get a 400 with a reason, not a panic.
    let err = ureq::get(&format!("{base}/api/v1/query?quantiles=2")).call().unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
    drop(shoals);
    collector.shutdown().unwrap();
}

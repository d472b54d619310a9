//! Exact where exactness is knowable: the SDK tracks each interval's exact
//! minimum and maximum, the collector merges them exactly, and every
//! quantile is clamped to them. A constant histogram reports its value
//! exactly (the bucket's representative would be 0.24865), and p0 / p100 are
//! the exact extremes: locally, at the collector's /metrics and in its API.

mod common;

use common::*;
use std::time::Duration;

fn sdk(collector: &shoal_collector::Collector) -> shoal::Shoal {
    shoal::Shoal::builder().service("exact").collector(collector.grpc_url()).flush_interval(Duration::from_secs(3600)).build().unwrap()
}

#[test]
fn constant_histograms_and_extremes_are_exact_from_sdk_to_every_export() {
    let collector = start_collector(None, |c| c.quantiles = vec![0.0, 0.5, 0.99, 1.0]);
    let base = format!("http://{}", collector.http_addr());
    let shoals: Vec<shoal::Shoal> = (0..3).map(|_| sdk(&collector)).collect();
    // Values whose buckets' representatives differ from them.
    let (lowest, highest) = (0.001_234_5, 987.654_321);
    for (i, s) in shoals.iter().enumerate() {
        let constant = s.histogram("constant_seconds", &[]);
        let spread = s.histogram("spread_seconds", &[]);
        for round in 0..2 {
            for k in 0..500 {
                constant.record(0.25);
                spread.record(0.01 + (k as f64) * 0.37 + i as f64);
            }
            if i == 1 && round == 1 {
                spread.record(lowest);
            }
            if i == 2 && round == 0 {
                spread.record(highest);
            }
            // Two flushes: extremes of separate deltas merge exactly.
            s.flush().unwrap();
        }
    }

    // Locally.
    let local = shoals[0].render_prometheus();
    for line in local.lines().filter(|l| l.starts_with("constant_seconds{") && l.contains("quantile=")) {
        assert!(line.ends_with(" 0.25"), "{line}");
    }

    // The collector's /metrics.
    let text = scrape(&collector);
    for q in ["0", "0.5", "0.99", "1"] {
        let v = sample(&text, &format!("constant_seconds{{service=\"exact\",quantile=\"{q}\"}}")).unwrap_or_else(|| panic!("{text}"));
        assert_eq!(v, 0.25, "constant p{q}");
    }
    assert_eq!(sample(&text, "spread_seconds{service=\"exact\",quantile=\"0\"}"), Some(lowest));
    assert_eq!(sample(&text, "spread_seconds{service=\"exact\",quantile=\"1\"}"), Some(highest));

    // The JSON API, per interval and merged over a step.
    let body: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{base}/api/v1/query?name=spread_seconds&quantiles=0,1&step=3600"))).unwrap();
    let point = &body["series"][0]["points"][0];
    assert_eq!(point["count"], 3 * 2 * 500 + 2);
    assert_eq!(point["min"], lowest);
    assert_eq!(point["max"], highest);
    assert_eq!(point["quantiles"]["0"], lowest);
    assert_eq!(point["quantiles"]["1"], highest);
    let body: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{base}/api/v1/query?name=constant_seconds&quantiles=0.5,0.999"))).unwrap();
    for p in body["series"][0]["points"].as_array().unwrap() {
        assert_eq!((&p["min"], &p["max"]), (&serde_json::json!(0.25), &serde_json::json!(0.25)));
        assert_eq!(p["quantiles"]["0.5"], 0.25);
        assert_eq!(p["quantiles"]["0.999"], 0.25);
    }
}

//! The JSON API as a new user tries it: a collector on 127.0.0.1 fed by real
//! SDK instances, read over HTTP. Gauges have points, typos are 400s naming
//! the parameter, every error body is JSON, the series list is paged and
//! searched server side, `/readyz` says when the collector serves.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

/// GET `url`: status and JSON body (whatever the status).
fn get_json(url: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {url}: {status} body is not JSON ({e}): {text:?}"));
    (status, body)
}

fn sdk(collector: &shoal_collector::Collector, service: &str) -> shoal::Shoal {
    shoal::Shoal::builder().service(service).collector(collector.grpc_url()).flush_interval(Duration::from_secs(3600)).build().unwrap()
}

#[test]
fn a_typo_or_a_repeat_is_a_json_400_naming_the_parameter() {
    let collector = start_collector(None, |_| {});
    let base = format!("http://{}", collector.http_addr());
    let cases = [
        ("/api/v1/query?name=x&label=a=b", "label"),
        ("/api/v1/query?name=x&name=y", "name"),
        ("/api/v1/query?name=", "name"),
        ("/api/v1/query", "name"),
        ("/api/v1/query?name=x&labels==v", "labels"),
        ("/api/v1/query?name=x&labels=a", "labels"),
        ("/api/v1/query?name=x&quantiles=2", "quantiles"),
        ("/api/v1/query?name=x&step=7", "step"),
        ("/api/v1/query?name=x&start=20&end=10", "start"),
        ("/api/v1/query?name=x&start=yesterday", "start"),
        ("/api/v1/query?name=x&buckets=yes", "buckets"),
        ("/api/v1/query?name=x&labels=a=1,a=2", "labels"),
        ("/api/v1/query?name=x&start=1e300", "start"),
        ("/api/v1/query?name=x&series=", "series"),
        ("/api/v1/series?nme=x", "nme"),
        ("/api/v1/series?kind=summary", "kind"),
        ("/api/v1/series?limit=0", "limit"),
        ("/api/v1/series?offset=-1", "offset"),
        ("/api/v1/instances?verbose=1", "verbose"),
    ];
    for (path, parameter) in cases {
        let (status, body) = get_json(&format!("{base}{path}"));
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["parameter"], parameter, "{path}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(parameter)), "{path}: the message names it: {body}");
    }
    // Unknown paths: JSON 404s that list what there is.
    for path in ["/api/v1/nope", "/api/v2/query", "/nope"] {
        let (status, body) = get_json(&format!("{base}{path}"));
        assert_eq!(status, 404, "{path}");
        assert!(body["error"].as_str().unwrap().contains(path));
        assert!(body["endpoints"].as_array().unwrap().len() >= 4);
    }
    // Bounded work per request: at most 32 quantiles and label filters.
    let many: Vec<String> = (0..40).map(|i| format!("0.{i:02}1")).collect();
    let (status, body) = get_json(&format!("{base}/api/v1/query?name=x&quantiles={}", many.join(",")));
    assert_eq!((status, body["parameter"].as_str()), (400, Some("quantiles")), "{body}");
    let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
    let (status, body) = get_json(&format!("{base}/api/v1/series?labels={}", many.join(",")));
    assert_eq!((status, body["parameter"].as_str()), (400, Some("labels")), "{body}");
    let (status, body) = get_json(&format!("{base}/api/v1/"));
    assert_eq!(status, 200);
    let paths: Vec<&str> = body["endpoints"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    for p in ["/api/v1/series", "/api/v1/query", "/api/v1/instances", "/api/v1/health"] {
        assert!(paths.contains(&p), "{p} listed in {paths:?}");
    }
}

#[test]
fn gauges_counters_and_histograms_have_points() {
    let collector = start_collector(None, |c| c.interval_secs = 1);
    let base = format!("http://{}", collector.http_addr());
    let a = sdk(&collector, "api");
    let b = sdk(&collector, "api");
    for (i, s) in [&a, &b].into_iter().enumerate() {
        s.gauge("queue_depth", &[]).set(10.0 * (i + 1) as f64);
        s.counter("jobs_total", &[]).increment(5);
        let h = s.histogram("job_seconds", &[]);
        for v in 1..=100 {
            h.record(v as f64 / 100.0);
        }
        s.flush().unwrap();
    }
    // Gauge: sum over the two live instances (the default rule), as a point
    // of the interval now open at once, and of closed intervals later.
    let (status, body) = get_json(&format!("{base}/api/v1/query?name=queue_depth"));
    assert_eq!(status, 200, "{body}");
    let series = &body["series"][0];
    assert_eq!(series["kind"], "gauge");
    assert_eq!(series["rule"], "sum");
    let points = series["points"].as_array().unwrap();
    assert!(!points.is_empty(), "a gauge has points: {body}");
    assert_eq!(points.last().unwrap()["value"], 30.0);
    let closed = wait_for(Duration::from_secs(5), || {
        // Both stay live (a gauge counts while its instance reports).
        a.flush().unwrap();
        b.flush().unwrap();
        let (_, body) = get_json(&format!("{base}/api/v1/query?name=queue_depth"));
        let n = body["series"][0]["points"].as_array().unwrap().len();
        (n >= 2).then_some(body)
    })
    .expect("a closed interval's gauge point within a few intervals");
    for p in closed["series"][0]["points"].as_array().unwrap() {
        assert_eq!(p["value"], 30.0, "{closed}");
    }

    let (_, body) = get_json(&format!("{base}/api/v1/query?name=jobs_total"));
    let total: u64 = body["series"][0]["points"].as_array().unwrap().iter().map(|p| p["value"].as_u64().unwrap()).sum();
    assert_eq!(total, 10);

    let (_, body) = get_json(&format!("{base}/api/v1/query?name=job_seconds&buckets=true&quantiles=0.5,1"));
    let points = body["series"][0]["points"].as_array().unwrap();
    let count: u64 = points.iter().map(|p| p["count"].as_u64().unwrap()).sum();
    assert_eq!(count, 200);
    for p in points {
        let buckets = p["buckets"].as_array().unwrap();
        let in_buckets: u64 = buckets.iter().map(|b| b[2].as_u64().unwrap()).sum();
        assert_eq!(in_buckets, p["count"].as_u64().unwrap(), "heatmap buckets hold every sample exactly");
        let bounds: Vec<(f64, f64)> = buckets.iter().map(|b| (b[0].as_f64().unwrap(), b[1].as_f64().unwrap())).collect();
        assert!(bounds.windows(2).all(|w| w[0].1 <= w[1].0 + 1e-12), "ascending, disjoint: {bounds:?}");
        // Within the sketch's relative error (exact extremes are issue 17).
        let max = p["max"].as_f64().unwrap();
        assert!((max - 1.0).abs() <= 0.01, "max {max}");
        assert_eq!(p["quantiles"]["1"], p["max"]);
    }

    // A step of several intervals merges them: the same totals.
    let (status, body) = get_json(&format!("{base}/api/v1/query?name=jobs_total&step=60"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["step_secs"], 60);
    let points = body["series"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{body}");
    assert_eq!(points[0]["value"], 10);
    assert_eq!(points[0]["end"].as_u64().unwrap() - points[0]["start"].as_u64().unwrap(), 60);
    // A range before anything was recorded: no points, never zeros.
    let (_, body) = get_json(&format!("{base}/api/v1/query?name=jobs_total&start=0&end=1000"));
    assert_eq!(body["series"][0]["points"], serde_json::json!([]));
}

#[test]
fn the_series_list_is_paged_and_searched_server_side() {
    let collector = start_collector(None, |_| {});
    let base = format!("http://{}", collector.http_addr());
    let s = sdk(&collector, "paging");
    for i in 0..250 {
        s.counter("requests_total", &[("route", &format!("/r{i:03}"))]).increment(1);
    }
    s.gauge("temperature", &[("room", "a")]).set(20.0);
    s.flush().unwrap();

    let (_, first) = get_json(&format!("{base}/api/v1/series?name=requests_total&limit=100"));
    assert_eq!(first["total"], 250);
    assert_eq!(first["series"].as_array().unwrap().len(), 100);
    let mut seen = Vec::new();
    for offset in [0, 100, 200] {
        let (_, page) = get_json(&format!("{base}/api/v1/series?name=requests_total&limit=100&offset={offset}"));
        seen.extend(page["series"].as_array().unwrap().iter().map(|s| s["series"].as_str().unwrap().to_string()));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages in order without repeats");
    assert_eq!(seen.len(), 250);

    let (_, found) = get_json(&format!("{base}/api/v1/series?match=%2Fr12"));
    assert_eq!(found["total"], 10, "/r120../r129: {found}");
    let (_, found) = get_json(&format!("{base}/api/v1/series?labels=route=/r007"));
    assert_eq!(found["total"], 1);
    // One exact series by its key, whatever other series share its labels.
    let key = found["series"][0]["series"].as_str().unwrap().to_string();
    let url = format!("{base}/api/v1/query?name=requests_total&series={}", key.replace('"', "%22").replace('{', "%7B").replace('}', "%7D"));
    let (status, exact) = get_json(&url);
    assert_eq!(status, 200, "{exact}");
    assert_eq!(exact["total"], 1);
    assert_eq!(exact["series"][0]["series"], key.as_str());
    let (_, found) = get_json(&format!("{base}/api/v1/series?kind=gauge&name=temperature"));
    assert_eq!(found["total"], 1);
    assert_eq!(found["series"][0]["rule"], "sum");
    let (_, gauges) = get_json(&format!("{base}/api/v1/series?kind=gauge&limit=1000"));
    assert!(gauges["series"].as_array().unwrap().iter().all(|s| s["kind"] == "gauge"));
    let (_, counters) = get_json(&format!("{base}/api/v1/series?kind=counter&limit=1000"));
    assert!(counters["total"].as_u64().unwrap() >= 250);
    assert!(counters["series"].as_array().unwrap().iter().all(|s| s["kind"] == "counter"));
    let (_, found) = get_json(&format!("{base}/api/v1/series?match=nothing-like-this"));
    assert_eq!(found["total"], 0);
}

#[test]
fn instances_and_health_describe_the_fleet_and_the_collector() {
    let collector = start_collector(None, |c| c.interval_secs = 1);
    let base = format!("http://{}", collector.http_addr());
    let (_, empty) = get_json(&format!("{base}/api/v1/instances"));
    assert_eq!(empty["instances"], serde_json::json!([]));
    let keeps = sdk(&collector, "checkout");
    let stops = sdk(&collector, "billing");
    for s in [&keeps, &stops] {
        s.counter("orders_total", &[]).increment(3);
        s.flush().unwrap();
    }
    let (_, body) = get_json(&format!("{base}/api/v1/instances"));
    let instances = body["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 2, "{body}");
    assert!(instances.iter().all(|i| i["silent"] == false && i["batches"].as_u64().unwrap() >= 1 && i["series"].as_u64().unwrap() >= 1));
    let services: Vec<&str> = body["services"].as_array().unwrap().iter().map(|s| s["service"].as_str().unwrap()).collect();
    assert_eq!(services, ["billing", "checkout"]);

    // One keeps flushing, the other stops: it turns silent.
    drop(stops);
    let silent = wait_for(Duration::from_secs(8), || {
        // A live service records something: its batch goes out.
        keeps.counter("orders_total", &[]).increment(1);
        keeps.flush().unwrap();
        let (_, body) = get_json(&format!("{base}/api/v1/instances"));
        let list = body["instances"].as_array().unwrap().clone();
        let billing = list.iter().find(|i| i["service"] == "billing")?.clone();
        let checkout = list.iter().find(|i| i["service"] == "checkout")?.clone();
        (billing["silent"] == true).then_some((billing, checkout))
    });
    let (billing, checkout) = silent.expect("the stopped instance is shown as silent");
    assert_eq!(checkout["silent"], false, "the one still flushing is not");
    assert!(billing["seconds_since_seen"].as_u64().unwrap() >= 2);

    let (status, health) = get_json(&format!("{base}/api/v1/health"));
    assert_eq!(status, 200);
    assert_eq!(health["conservation"]["values"]["balance"], 0.0, "{health}");
    assert!(health["ingest"]["batches_merged"].as_u64().unwrap() >= 2);
    assert!(health["ingest"]["values_merged"].as_u64().unwrap() >= 6);
    assert!(health["rejections"].as_object().unwrap().contains_key("invalid_series"));
    assert!(health["metrics"].as_array().unwrap().iter().any(|m| m["name"] == "shoal_collector_batches_merged_total"));
}

#[test]
fn readyz_and_healthz_answer_and_the_page_is_served() {
    let collector = start_collector(None, |_| {});
    let base = format!("http://{}", collector.http_addr());
    assert_eq!(http_get(&format!("{base}/readyz")), "ready\n");
    assert_eq!(http_get(&format!("{base}/healthz")), "ok\n");
    let page = http_get(&format!("{base}/"));
    assert!(page.contains("<script src=\"app.js\">") && page.contains("Nothing has reported yet"));
    assert!(http_get(&format!("{base}/app.js")).contains("api/v1/"));
    assert!(http_get(&format!("{base}/style.css")).contains("body"));
}

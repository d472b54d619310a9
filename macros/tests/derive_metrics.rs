//! `#[derive(Metrics)]` and `#[derive(LabelSet)]`: registration, families,
//! descriptions, read back from the recorder.

use shoal::instrument::{Family, LabelSet as _};
use shoal::{LabelSet, Metrics, Shoal};

#[derive(Clone, Copy, Debug, PartialEq, LabelSet)]
pub enum Method {
    Get,
    Post,
    #[label(value = "other")]
    Unknown,
}

#[derive(Clone, Copy, Debug, LabelSet)]
#[label(key = "class", rename_all = "UPPERCASE")]
enum StatusClass {
    Ok2xx,
    Err4xx,
    Err5xx,
}

#[derive(Clone, Copy, Debug, LabelSet)]
struct Route {
    method: Method,
    status: StatusClass,
}

#[derive(Metrics)]
#[metrics(prefix = "http")]
struct HttpMetrics {
    /// Requests served.
    requests_total: shoal::Counter,
    #[metric(name = "errors_total", labels(kind = "timeout", tier = "edge"))]
    timeouts: shoal::Counter,
    #[metric(unit = "seconds", description = "Time to serve a request")]
    request_duration_seconds: shoal::Histogram,
    #[metric(unit = "bytes")]
    in_flight_bytes: shoal::Gauge,
    #[metric(description = "Requests by method")]
    by_method: Family<Method, shoal::Counter>,
    #[metric(labels(service = "api"))]
    by_route: Family<Route, metrics::Counter>,
    latency_by_method: Family<Method, metrics::Histogram>,
    facade_gauge: metrics::Gauge,
}

#[test]
fn registers_every_field_with_prefix_names_and_labels() {
    let shoal = Shoal::builder().build().unwrap();
    let m = HttpMetrics::register(&shoal);
    m.requests_total.increment(3);
    m.timeouts.increment(1);
    m.request_duration_seconds.record(0.25);
    m.in_flight_bytes.set(512.0);
    m.by_method.get(Method::Post).increment(2);
    m.by_method[Method::Unknown].increment(1);
    m.by_route.get(Route { method: Method::Get, status: StatusClass::Err5xx }).increment(7);
    m.latency_by_method.get(Method::Get).record(0.5);
    m.facade_gauge.set(4.0);

    let d = shoal.take_deltas();
    assert_eq!(d.counter("http_requests_total"), Some(3));
    assert_eq!(d.counter(r#"http_errors_total{kind="timeout",tier="edge"}"#), Some(1));
    assert_eq!(d.histogram("http_request_duration_seconds").map(|s| s.count()), Some(1));
    assert_eq!(d.gauge("http_in_flight_bytes"), Some(512.0));
    assert_eq!(d.counter(r#"http_by_method{method="post"}"#), Some(2));
    assert_eq!(d.counter(r#"http_by_method{method="other"}"#), Some(1));
    assert_eq!(d.counter(r#"http_by_route{class="ERR5XX",method="get",service="api"}"#), Some(7));
    assert_eq!(d.histogram(r#"http_latency_by_method{method="get"}"#).map(|s| s.count()), Some(1));
    assert_eq!(d.gauge("http_facade_gauge"), Some(4.0));
}

#[test]
fn families_register_every_label_combination_up_front() {
    let shoal = Shoal::builder().build().unwrap();
    let m = HttpMetrics::register(&shoal);
    assert_eq!(m.by_method.len(), 3);
    assert_eq!(m.by_route.len(), 9);
    let text = shoal.render_prometheus();
    for method in ["get", "post", "other"] {
        for class in ["OK2XX", "ERR4XX", "ERR5XX"] {
            let line = format!(r#"http_by_route{{class="{class}",method="{method}",service="api"}} 0"#);
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
    let labels: Vec<_> = m.by_route.iter().map(|(labels, _)| labels).collect();
    assert_eq!(labels[0], vec![("method", "get"), ("class", "OK2XX")]);
    assert_eq!(labels[5], vec![("method", "post"), ("class", "ERR5XX")]);
}

#[test]
fn units_and_descriptions_reach_help() {
    let shoal = Shoal::builder().build().unwrap();
    let _m = HttpMetrics::register(&shoal);
    let text = shoal.render_prometheus();
    for help in [
        "# HELP http_requests_total Requests served.",
        "# HELP http_request_duration_seconds Time to serve a request (unit: seconds)",
        "# HELP http_by_method Requests by method",
        "# HELP http_in_flight_bytes gauge recorded with shoal (unit: bytes)",
    ] {
        assert!(text.contains(help), "missing {help:?} in\n{text}");
    }
}

#[test]
fn label_set_indexes_are_dense_and_stable() {
    assert_eq!(Method::CARDINALITY, 3);
    assert_eq!(Route::CARDINALITY, 9);
    assert_eq!(Method::Unknown.index(), 2);
    assert_eq!(StatusClass::Ok2xx.index(), 0);
    let r = Route { method: Method::Post, status: StatusClass::Err4xx };
    assert_eq!(r.index(), 4);
    let mut out = Vec::new();
    Route::labels_at(r.index(), &mut out);
    assert_eq!(out, vec![("method", "post"), ("class", "ERR4XX")]);
}

/// Only `metrics` handles: can be registered through any recorder.
#[derive(Metrics)]
pub struct JobMetrics {
    #[metric(description = "Jobs run")]
    pub jobs_total: metrics::Counter,
    #[metric(unit = "seconds")]
    pub job_seconds: Family<Method, metrics::Histogram>,
}

#[test]
fn register_global_uses_the_current_recorder() {
    let shoal = Shoal::builder().build().unwrap();
    let m = metrics::with_local_recorder(&shoal, JobMetrics::register_global);
    m.jobs_total.increment(2);
    m.job_seconds.get(Method::Get).record(1.0);
    let text = shoal.render_prometheus();
    assert!(text.contains("jobs_total 2"), "{text}");
    assert!(text.contains("# HELP jobs_total Jobs run"), "{text}");
    assert!(text.contains("# HELP job_seconds histogram recorded with shoal (unit: seconds)"), "{text}");

    let other = Shoal::builder().build().unwrap();
    let m2 = JobMetrics::register_with(&other);
    m2.jobs_total.increment(5);
    assert_eq!(other.take_deltas().counter("jobs_total"), Some(5));
    assert_eq!(shoal.take_deltas().counter("jobs_total"), Some(2));
}

#[derive(Metrics)]
struct Empty {}

#[test]
fn an_empty_struct_registers_nothing() {
    let shoal = Shoal::builder().build().unwrap();
    let Empty {} = Empty::register(&shoal);
    assert!(shoal.take_deltas().is_empty());
}

//! `promtool check metrics` (the real one, from Debian's `prometheus`
//! package) must accept, with no lint problem at all, both expositions shoal
//! writes: an instance's `render_prometheus()` and the collector's `/metrics`,
//! with counters, gauges, histograms (summaries), described metrics, label
//! values that need escaping, and the self-metrics. Fails (never skips) when
//! `promtool` is not installed.

mod common;

use common::*;
use std::time::Duration;

/// Label values that the text format must escape: a quote, a backslash, a
/// newline, and all three together with non-ASCII.
const AWKWARD: [&str; 4] = [r#"say "hi""#, r"C:\temp\x", "two\nlines", "é \\\"\n 雪"];

fn assert_lint_clean(what: &str, text: &str) {
    let (status, printed) = promtool_check_metrics(text);
    assert!(
        status.success() && printed.trim().is_empty(),
        "promtool check metrics on the {what} exited with {status} and printed:\n{printed}\n--- exposition ---\n{text}"
    );
}

/// Records one of everything into `shoal` through the `metrics` facade and
/// shoal's own handles.
fn record_everything(shoal: &shoal::Shoal, scale: f64) {
    metrics::with_local_recorder(shoal, || {
        metrics::describe_counter!("http_requests_total", metrics::Unit::Count, "HTTP requests served");
        metrics::describe_histogram!(
            "http_request_duration_seconds",
            metrics::Unit::Seconds,
            "Time to serve a request\nfrom first byte in to last byte out, C:\\ included"
        );
        metrics::describe_gauge!("inflight_requests", "Requests being served right now");
        for (i, value) in AWKWARD.iter().enumerate() {
            metrics::counter!("http_requests_total", "method" => "GET", "path" => *value).increment(i as u64 + 1);
            metrics::histogram!("http_request_duration_seconds", "path" => *value).record(scale * 0.01 * (i + 1) as f64);
        }
        metrics::counter!("http_requests_total", "method" => "POST", "path" => "/").increment(3);
        metrics::gauge!("inflight_requests").set(4.0 * scale);
        metrics::gauge!("temperature_celsius", "room" => "a\"b").set(-12.5);
        metrics::histogram!("payload_bytes").record(1024.0 * scale);
        metrics::histogram!("payload_bytes").record(0.0);
        let _t = shoal::timer!("db_query_duration_seconds", "table" => "users");
    });
    // Shoal's own handles, an undescribed metric, and a histogram that was
    // registered but never recorded (its quantiles are NaN).
    shoal.counter("jobs_processed_total", &[("queue", "a\\b")]).increment(5);
    shoal.gauge("queue_depth", &[]).set(7.0);
    shoal.histogram("job_duration_seconds", &[("queue", "a\\b")]).record(1e-6 * scale);
    let _never_recorded = shoal.histogram("idle_duration_seconds", &[]);
}

#[test]
fn promtool_accepts_the_sdk_instance_exposition() {
    let shoal = shoal::Shoal::builder().service("checkout").label("region", "eu \"west\"\n1").build().unwrap();
    record_everything(&shoal, 1.0);
    let text = shoal.render_prometheus();
    for needle in [
        "# TYPE http_requests_total counter",
        "# TYPE http_request_duration_seconds summary",
        "# TYPE inflight_requests gauge",
        "# HELP http_requests_total HTTP requests served",
        "# TYPE shoal_series gauge",
        "# TYPE shoal_flush_batches_sent_total counter",
        "# TYPE shoal_rejected_values_total counter",
        r#"path="say \"hi\"""#,
        r#"path="C:\\temp\\x""#,
        r#"path="two\nlines""#,
        r#"queue="a\\b""#,
        // Registered, never recorded: NaN quantiles are valid exposition too.
        r#"idle_duration_seconds{quantile="0.5"} NaN"#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert_lint_clean("SDK instance exposition", &text);
    shoal.shutdown().unwrap();
}

#[test]
fn promtool_accepts_the_collector_exposition() {
    let collector = start_collector(None, |c| {
        c.gauge_rules.insert("temperature_celsius".into(), shoal_collector::GaugeRule::Max);
    });
    // Before any instance reported: only the self-metrics.
    assert_lint_clean("collector /metrics with no data", &scrape(&collector));

    let shoals: Vec<_> = (0..3)
        .map(|i| {
            let shoal = shoal::Shoal::builder()
                .service("checkout")
                // Instance labels with characters to escape travel in the batch.
                .label("region", "eu \"west\"\\1\nb")
                .collector(collector.grpc_url())
                .flush_interval(Duration::from_millis(100))
                .build()
                .unwrap();
            record_everything(&shoal, (i + 1) as f64);
            shoal.flush().expect("flush to a running collector");
            shoal
        })
        .collect();
    let text = scrape(&collector);
    for needle in [
        "# TYPE http_requests_total counter",
        "# TYPE http_request_duration_seconds summary",
        "# TYPE inflight_requests gauge",
        "# TYPE temperature_celsius gauge",
        "# TYPE shoal_collector_batches_merged_total counter",
        "# TYPE shoal_collector_batches_rejected_total counter",
        "# TYPE shoal_collector_instances gauge",
        r#"path="say \"hi\"""#,
        r#"path="C:\\temp\\x""#,
        r#"path="two\nlines""#,
        r#"region="eu \"west\"\\1\nb""#,
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The fleet merged: the first path got 1 request from each of 3 instances.
    let awkward_get = r#"http_requests_total{method="GET",path="say \"hi\"",region="eu \"west\"\\1\nb",service="checkout"} 3"#;
    assert!(text.contains(awkward_get), "missing {awkward_get:?} in\n{text}");
    assert_lint_clean("collector /metrics", &text);
    drop(shoals);
    collector.shutdown().unwrap();
}

#[test]
fn promtool_reports_problems_so_a_clean_result_means_something() {
    // A counter without `_total` and without HELP: promtool must complain,
    // proving the checks above run the real linter on real input.
    let (status, printed) = promtool_check_metrics("# TYPE requests counter\nrequests 1\n");
    assert!(!status.success(), "promtool accepted a lint problem: {printed}");
    assert!(printed.contains("_total"), "{printed}");
    // And a syntax error is an error.
    let (status, printed) = promtool_check_metrics("not a metric line {\n");
    assert!(!status.success(), "promtool accepted garbage: {printed}");
}

/// Names and label keys outside the Prometheus charset (OpenTelemetry-style
/// dotted names), names and keys that collide once sanitized, and a user label
/// called `quantile` on a histogram (which the summary adds too).
fn record_clashing_names(shoal: &shoal::Shoal) {
    metrics::with_local_recorder(shoal, || {
        metrics::describe_counter!("http.client.requests_total", "Requests sent, dotted name");
        metrics::counter!("http.client.requests_total", "peer" => "a").increment(1);
        metrics::counter!("http_client_requests_total", "peer" => "a").increment(2);
        metrics::counter!("retries_total", "error-kind" => "x", "error_kind" => "y").increment(1);
        metrics::histogram!("rpc.duration-seconds").record(0.25);
        metrics::histogram!("render_seconds", "quantile" => "mine").record(0.5);
        metrics::gauge!("9lives").set(1.0);
    });
}

/// Fails until `render_prometheus` groups families by their sanitized name
/// and sanitizes label keys before writing (see the issue 5 report).
#[test]
fn promtool_accepts_the_sdk_exposition_of_clashing_names_and_labels() {
    let shoal = shoal::Shoal::builder().service("clash").build().unwrap();
    record_clashing_names(&shoal);
    let text = shoal.render_prometheus();
    assert_lint_clean("SDK exposition of clashing names", &text);
    // One family per exposed name, holding both recorded names' counts, as the
    // collector's rollup does.
    assert_eq!(text.matches("# TYPE http_client_requests_total counter").count(), 1, "{text}");
    assert!(text.contains("http_client_requests_total{peer=\"a\"} 3\n"), "{text}");
    assert!(text.contains("\"mine\""), "the user's quantile label value is kept\n{text}");
    shoal.shutdown().unwrap();
}

/// Fails until the collector's `/metrics` keeps a series' own `quantile`
/// label apart from the summary's (see the issue 5 report). One such series
/// makes Prometheus reject the whole scrape: every cluster metric is lost.
#[test]
fn promtool_accepts_the_collector_exposition_of_clashing_names_and_labels() {
    let collector = start_collector(None, |_| {});
    let shoal = shoal::Shoal::builder().service("clash").collector(collector.grpc_url()).build().unwrap();
    record_clashing_names(&shoal);
    shoal.flush().expect("flush to a running collector");
    let text = scrape(&collector);
    assert!(text.contains("http_client_requests_total{peer=\"a\",service=\"clash\"} 3\n"), "{text}");
    assert!(text.contains("# TYPE rpc_duration_seconds summary"), "{text}");
    assert!(text.contains("\"mine\""), "the user's quantile label value is kept\n{text}");
    assert_lint_clean("collector /metrics with clashing names", &text);
    drop(shoal);
    collector.shutdown().unwrap();
}

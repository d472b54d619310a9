//! Recording through the facade and shoal's handles, read back through the
//! exposition and the delta take.

use shoal::Shoal;
use std::sync::Arc;

fn shoal() -> Shoal {
    Shoal::builder().service("test").build().unwrap()
}

#[test]
fn facade_macros_are_captured_with_a_local_recorder() {
    let s = shoal();
    metrics::with_local_recorder(&s, || {
        metrics::counter!("http_requests_total", "method" => "GET").increment(3);
        metrics::counter!("http_requests_total", "method" => "GET").increment(2);
        metrics::gauge!("queue_depth").set(7.5);
        metrics::gauge!("queue_depth").increment(1.0);
        metrics::gauge!("queue_depth").decrement(0.5);
        metrics::histogram!("latency_seconds").record(0.25);
    });
    let text = s.render_prometheus();
    assert!(text.contains("http_requests_total{method=\"GET\"} 5\n"), "{text}");
    assert!(text.contains("queue_depth 8\n"), "{text}");
    assert!(text.contains("latency_seconds_count 1\n"), "{text}");
    assert!(text.contains("# TYPE latency_seconds summary\n"), "{text}");
}

#[test]
fn facade_handles_outlive_the_closure() {
    let s = shoal();
    let c = metrics::with_local_recorder(&s, || metrics::counter!("kept_total"));
    for _ in 0..10 {
        c.increment(1);
    }
    assert_eq!(s.counter_value("kept_total"), Some(10));
}

#[test]
fn label_order_does_not_make_a_new_series() {
    let s = shoal();
    metrics::with_local_recorder(&s, || {
        metrics::counter!("req_total", "a" => "1", "b" => "2").increment(1);
        metrics::counter!("req_total", "b" => "2", "a" => "1").increment(1);
    });
    s.counter("req_total", &[("b", "2"), ("a", "1")]).increment(1);
    assert_eq!(s.counter_value(r#"req_total{a="1",b="2"}"#), Some(3));
    let series_lines = s.render_prometheus().lines().filter(|l| l.starts_with("req_total{")).count();
    assert_eq!(series_lines, 1);
}

#[test]
fn descriptions_and_units_reach_help() {
    let s = shoal();
    metrics::with_local_recorder(&s, || {
        metrics::describe_histogram!("db_seconds", metrics::Unit::Seconds, "Time spent in the database");
        metrics::describe_counter!("jobs_total", "Jobs run");
        metrics::histogram!("db_seconds").record(0.1);
        metrics::counter!("jobs_total").increment(1);
    });
    let text = s.render_prometheus();
    assert!(text.contains("# HELP db_seconds Time spent in the database (unit: seconds)\n"), "{text}");
    assert!(text.contains("# HELP jobs_total Jobs run\n"), "{text}");
}

#[test]
fn counter_absolute_keeps_the_largest_value() {
    let s = shoal();
    let c = s.counter("bytes_total", &[]);
    c.absolute(100);
    c.absolute(40);
    assert_eq!(s.counter_value("bytes_total"), Some(100));
    assert_eq!(s.take_deltas().counter("bytes_total"), Some(100));
    c.absolute(150);
    assert_eq!(s.take_deltas().counter("bytes_total"), Some(50));
}

#[test]
fn non_finite_values_are_rejected_and_counted() {
    let s = shoal();
    let h = s.histogram("h", &[]);
    let g = s.gauge("g", &[]);
    h.record(f64::NAN);
    h.record(f64::INFINITY);
    h.record(1.0);
    g.set(f64::NAN);
    g.set(2.0);
    g.increment(f64::NEG_INFINITY);
    let d = s.take_deltas();
    assert_eq!(d.histogram("h").unwrap().count(), 1);
    assert_eq!(d.gauge("g"), Some(2.0));
    let text = s.render_prometheus();
    assert!(text.contains("shoal_rejected_values_total{reason=\"nan\"} 2\n"), "{text}");
    assert!(text.contains("shoal_rejected_values_total{reason=\"infinite\"} 2\n"), "{text}");
}

#[test]
fn record_many_counts_every_sample_in_one_update() {
    let s = shoal();
    let h = s.histogram("batch_seconds", &[]);
    h.record_many(0.5, 1_000_000_000);
    metrics::with_local_recorder(&s, || metrics::histogram!("batch_seconds").record_many(0.5, 5));
    let sketch = s.histogram_snapshot("batch_seconds").unwrap();
    assert_eq!(sketch.count(), 1_000_000_005);
    assert_eq!(sketch.sum(), 500_000_002.5);
    let q = sketch.quantile(0.5).unwrap();
    assert!((q - 0.5).abs() / 0.5 <= 0.01, "{q}");
}

#[test]
fn cardinality_limit_sends_excess_series_to_one_overflow_series() {
    let s = Shoal::builder().cardinality_limit(3).build().unwrap();
    metrics::with_local_recorder(&s, || {
        for user in 0..100 {
            metrics::counter!("logins_total", "user" => user.to_string()).increment(1);
        }
        metrics::counter!("other_total", "k" => "v").increment(1);
    });
    let text = s.render_prometheus();
    let own = text.lines().filter(|l| l.starts_with("logins_total{user=")).count();
    assert_eq!(own, 3, "{text}");
    assert!(text.contains("logins_total{shoal_overflow=\"true\"} 97\n"), "{text}");
    assert!(text.contains("other_total{k=\"v\"} 1\n"), "{text}");
    assert!(text.contains("shoal_overflow_updates_total 97\n"), "{text}");
    assert!(text.contains("shoal_overflow_series_total 97\n"), "{text}");
    // Nothing is lost: the total is exact.
    let total: u64 = s.take_deltas().counters.iter().filter(|c| c.key.name() == "logins_total").map(|c| c.delta).sum();
    assert_eq!(total, 100);
}

#[test]
fn invalid_configuration_is_an_error_not_a_panic() {
    assert!(Shoal::builder().relative_error(0.0).build().is_err());
    assert!(Shoal::builder().relative_error(f64::NAN).build().is_err());
    assert!(Shoal::builder().relative_error(1e-9).build().is_err());
    assert!(Shoal::builder().cardinality_limit(0).build().is_err());
    assert!(Shoal::builder().collector("not a url").build().is_err());
    let e = Shoal::builder().relative_error(-1.0).build().err().unwrap();
    assert!(e.to_string().contains("relative_error"), "{e}");
}

#[test]
fn relative_error_setting_changes_the_bound() {
    let s = Shoal::builder().relative_error(0.002).build().unwrap();
    let h = s.histogram("precise", &[]);
    for i in 1..=10_000 {
        h.record(i as f64);
    }
    let sketch = s.histogram_snapshot("precise").unwrap();
    assert!(sketch.relative_error() <= 0.002);
    let p99 = sketch.quantile(0.99).unwrap();
    assert!((p99 - 9900.0).abs() / 9900.0 <= 0.002, "{p99}");
}

#[test]
fn timer_records_elapsed_seconds() {
    let s = shoal();
    metrics::with_local_recorder(&s, || {
        let _t = shoal::timer!("sleep_seconds", "kind" => "short");
        std::thread::sleep(std::time::Duration::from_millis(20));
    });
    let sketch = s.histogram_snapshot(r#"sleep_seconds{kind="short"}"#).unwrap();
    assert_eq!(sketch.count(), 1);
    let v = sketch.quantile(0.5).unwrap();
    assert!((0.019..1.0).contains(&v), "{v}");
}

#[test]
fn exposition_escapes_labels_and_sanitizes_names() {
    let s = shoal();
    s.counter("http.requests", &[("path", "/a\"b\\c\nd")]).increment(1);
    let text = s.render_prometheus();
    assert!(text.contains("http_requests{path=\"/a\\\"b\\\\c\\nd\"} 1\n"), "{text}");
}

#[test]
fn handles_are_shared_across_threads() {
    let s = Arc::new(shoal());
    let c = s.counter("shared_total", &[]);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let c = c.clone();
            std::thread::spawn(move || {
                for _ in 0..100_000 {
                    c.increment(1);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(s.counter_value("shared_total"), Some(400_000));
}

#[test]
fn macro_path_keeps_each_shoal_apart_on_one_thread() {
    // The per-thread resolution cache must never hand one Shoal's series to another.
    let a = shoal();
    let b = shoal();
    for _ in 0..3 {
        metrics::with_local_recorder(&a, || metrics::counter!("same_total", "k" => "v").increment(1));
        metrics::with_local_recorder(&b, || metrics::counter!("same_total", "k" => "v").increment(10));
    }
    drop(a);
    let c = shoal();
    metrics::with_local_recorder(&c, || metrics::counter!("same_total", "k" => "v").increment(100));
    assert_eq!(b.counter_value(r#"same_total{k="v"}"#), Some(30));
    assert_eq!(c.counter_value(r#"same_total{k="v"}"#), Some(100));
}

#[test]
fn macro_path_keeps_many_keys_apart_through_the_thread_cache() {
    // More distinct keys than the per-thread cache has slots, with run-time
    // label values (new key addresses every call) and a static key among
    // them: every update lands in its own series, however the keys share
    // slots.
    let s = Shoal::builder().service("test").cardinality_limit(10_000).build().unwrap();
    metrics::with_local_recorder(&s, || {
        for round in 1..=3u64 {
            for i in 0..2_000u64 {
                metrics::counter!("keyed_total", "id" => i.to_string()).increment(i + 1);
                metrics::histogram!("keyed_seconds", "id" => i.to_string()).record(i as f64);
                metrics::counter!("static_total", "id" => "fixed").increment(round);
            }
        }
    });
    for i in [0u64, 1, 255, 256, 1_023, 1_999] {
        assert_eq!(s.counter_value(&format!(r#"keyed_total{{id="{i}"}}"#)), Some(3 * (i + 1)), "id {i}");
    }
    assert_eq!(s.counter_value(r#"static_total{id="fixed"}"#), Some(2_000 * (1 + 2 + 3)));
    let text = s.render_prometheus();
    assert!(text.contains("keyed_seconds_count{id=\"1999\"} 3\n"), "{text:.300}");
    assert!(text.contains("keyed_seconds_sum{id=\"7\"} 21\n"), "{text:.300}");
}

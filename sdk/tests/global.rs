//! `install()` makes shoal the global `metrics` recorder (own test binary:
//! the global recorder can be set once per process).

#[test]
fn install_captures_every_facade_call_and_refuses_a_second_install() {
    let shoal = shoal::Shoal::builder().service("global-test").install().unwrap();
    metrics::counter!("global_total", "route" => "/").increment(4);
    metrics::gauge!("global_gauge").set(1.5);
    let _t = shoal::timer!("global_seconds");
    drop(_t);
    let text = shoal.render_prometheus();
    assert!(text.contains("global_total{route=\"/\"} 4\n"), "{text}");
    assert!(text.contains("global_gauge 1.5\n"), "{text}");
    assert!(text.contains("global_seconds_count 1\n"), "{text}");
    let second = shoal::Shoal::builder().install();
    assert!(matches!(second, Err(shoal::Error::RecorderAlreadyInstalled)));
    assert_eq!(shoal.identity().labels, vec![("service".to_string(), "global-test".to_string())]);
}

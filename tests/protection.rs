//! The collector protects itself from its clients, end to end with real SDKs:
//! a blocklist pushed to every SDK (and lifted again), series limits that
//! reject series one by one, and an overloaded collector that SDKs back off
//! from without losing anything.

mod common;

use common::*;
use shoal::DropReason;
use shoal_proto as pb;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

fn sdk(collector: &shoal_collector::Collector, service: &str) -> shoal::Shoal {
    shoal::Shoal::builder()
        .service(service)
        .collector(collector.grpc_url())
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(5))
        // These tests count every series and value the collector refuses;
        // the instance's own series would be refused by the tight limits too.
        .send_own_metrics(false)
        .build()
        .unwrap()
}

/// SDK-side conservation: taken = acknowledged + dropped + pending.
fn assert_sdk_conserved(s: &shoal::Shoal) {
    let f = s.flusher_stats();
    let taken = f.values_taken.load(Relaxed);
    let accounted = f.values_acknowledged.load(Relaxed) + f.values_dropped_total() + f.values_pending.load(Relaxed);
    assert_eq!(taken, accounted, "taken {taken} != acknowledged + dropped + pending {accounted}");
}

#[test]
fn the_blocklist_reaches_the_sdks_and_lifting_it_lets_series_through_again() {
    let collector = start_collector(None, |c| c.blocklist = vec!["debug_*".into()]);
    let s = sdk(&collector, "bl");
    let debug = s.counter("debug_requests_total", &[]);
    let kept = s.counter("requests_total", &[]);
    let hist = s.histogram("debug_latency_seconds", &[]);

    // First flush: the SDK does not know the blocklist yet; the collector
    // rejects the blocked series itself and the SDK learns the list.
    debug.increment(5);
    kept.increment(1);
    hist.record(0.5);
    s.flush().unwrap();
    assert_eq!(s.flusher_stats().blocklist(), vec!["debug_*".to_string()]);
    assert_eq!(s.flusher_stats().values_dropped(DropReason::Rejected), 6, "5 increments + 1 sample rejected by the collector");

    // From now on the SDK drops them itself, counted, and sends nothing of them.
    debug.increment(7);
    kept.increment(2);
    s.flush().unwrap();
    assert_eq!(s.flusher_stats().values_dropped(DropReason::Blocked), 7);
    assert_eq!(s.flusher_stats().series_updates_dropped(DropReason::Blocked), 1);
    let text = scrape(&collector);
    assert_eq!(sample(&text, r#"requests_total{service="bl"}"#), Some(3.0), "{text}");
    assert_eq!(sample(&text, r#"debug_requests_total{service="bl"}"#), None, "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_values_rejected_total{reason="blocked"}"#), Some(6.0), "{text}");
    let sdk_text = s.render_prometheus();
    assert!(sdk_text.contains(r#"shoal_flush_values_dropped_total{reason="blocked"} 7"#), "{sdk_text}");

    // Lift it (what SIGHUP does with an edited file): the next response says so.
    let config = collector.shared().aggregator.lock().config().clone();
    collector.reload(&shoal_collector::Config { blocklist: vec![], ..config }).unwrap();
    debug.increment(100); // taken with the old list in force: still dropped
    s.flush().unwrap();
    assert!(s.flusher_stats().blocklist().is_empty());
    debug.increment(11);
    hist.record(0.25);
    s.flush().unwrap();
    let text = scrape(&collector);
    assert_eq!(sample(&text, r#"debug_requests_total{service="bl"}"#), Some(11.0), "{text}");
    assert_eq!(sample(&text, r#"debug_latency_seconds_count{service="bl"}"#), Some(1.0), "{text}");
    assert_eq!(s.flusher_stats().values_dropped(DropReason::Blocked), 107);
    assert_sdk_conserved(&s);
    drop(s);
    collector.shutdown().unwrap();
}

#[test]
fn series_limits_reject_series_one_by_one_and_the_sdk_counts_them() {
    let collector = start_collector(None, |c| {
        c.max_series_per_metric = 3;
    });
    let s = sdk(&collector, "lim");
    for i in 0..6 {
        s.counter("per_user_total", &[("user", &i.to_string())]).increment(10);
    }
    s.counter("other_total", &[]).increment(1);
    s.flush().unwrap();
    let text = scrape(&collector);
    let merged: f64 = (0..6).filter_map(|i| sample(&text, &format!(r#"per_user_total{{service="lim",user="{i}"}}"#))).sum();
    assert_eq!(merged, 30.0, "three series of the metric fit: {text}");
    assert_eq!(sample(&text, r#"other_total{service="lim"}"#), Some(1.0), "the rest of the batch is merged: {text}");
    let by_metric = sample(&text, r#"shoal_collector_values_rejected_total{reason="series_limit_metric"}"#).unwrap();
    assert_eq!(by_metric, 30.0, "{text}");
    assert_eq!(sample(&text, r#"shoal_collector_series_rejected_total{reason="series_limit_metric"}"#), Some(3.0), "{text}");
    assert_eq!(s.flusher_stats().values_dropped(DropReason::Rejected), 30);
    // Later batches by ref only are rejected again, not answered "unknown".
    for i in 0..6 {
        s.counter("per_user_total", &[("user", &i.to_string())]).increment(1);
    }
    s.flush().unwrap();
    assert_eq!(s.flusher_stats().values_dropped(DropReason::Rejected), 33);
    assert_eq!(s.flusher_stats().batches_failed.load(Relaxed), 0);
    assert_sdk_conserved(&s);
    drop(s);
    collector.shutdown().unwrap();
}

#[test]
fn an_overloaded_collector_answers_resource_exhausted_and_sdks_back_off_without_loss() {
    let collector = start_collector(None, |c| {
        c.ingest_queue = 1;
        c.overload_retry_after_ms = 150;
    });
    // Stall the merge step: the one queue slot fills with a raw batch.
    let gate = collector.shared().ingest.gate.blocking_lock();
    let url = collector.grpc_url();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let queued = runtime.spawn({
        let url = url.clone();
        async move {
            let mut client = pb::ingest_client::IngestClient::connect(url).await.unwrap();
            let req = pb::FlushRequest {
                instance_id: "raw".into(),
                sequence: 1,
                definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "raw_total".into(), labels: vec![], ..Default::default() }],
                counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }],
                ..Default::default()
            };
            client.flush(req).await
        }
    });
    assert!(wait_for(Duration::from_secs(5), || (collector.shared().stats.ingest_queue_depth.load(Relaxed) == 1).then_some(())).is_some());
    // The queue is full: a raw client sees the status and the hint.
    let status = runtime
        .block_on(async {
            let mut client = pb::ingest_client::IngestClient::connect(url.clone()).await.unwrap();
            client.flush(pb::FlushRequest { instance_id: "other".into(), sequence: 1, ..Default::default() }).await
        })
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.metadata().get("retry-after-ms").unwrap().to_str().unwrap(), "150");

    // An SDK flushing now backs off and keeps its deltas.
    let s = sdk(&collector, "busy");
    let c = s.counter("busy_total", &[]);
    c.increment(42);
    let started = Instant::now();
    let flusher = std::thread::spawn(move || {
        let r = s.flush();
        (s, r)
    });
    std::thread::sleep(Duration::from_millis(400));
    drop(gate);
    let (s, result) = flusher.join().unwrap();
    result.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    let overloaded = s.flusher_stats().batches_overloaded.load(Relaxed);
    assert!((1..=4).contains(&overloaded), "backed off by the hint, not hammering: {overloaded}");
    assert!(runtime.block_on(queued).unwrap().is_ok());
    let text = scrape(&collector);
    assert_eq!(sample(&text, r#"busy_total{service="busy"}"#), Some(42.0), "{text}");
    assert!(sample(&text, r#"shoal_collector_batches_rejected_total{reason="overloaded"}"#).unwrap() >= 2.0, "{text}");
    assert_sdk_conserved(&s);
    drop(s);
    collector.shutdown().unwrap();
}

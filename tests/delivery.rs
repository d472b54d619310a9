//! Delivery under faults, with real sockets: a collector that starts late, a
//! collector restarted while SDKs record, and a batch delivered twice.

mod common;

use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

fn counter_total(text: &str, series: &str) -> u64 {
    sample(text, series).map_or(0, |v| v as u64)
}

#[test]
fn collector_started_after_the_sdks_receives_everything() {
    let addr = free_addr();
    let shoals: Vec<_> = (0..3)
        .map(|_| {
            shoal::Shoal::builder()
                .service("late")
                .collector(format!("http://{addr}"))
                .flush_interval(Duration::from_millis(50))
                .shutdown_timeout(Duration::from_secs(3))
                .build()
                .unwrap()
        })
        .collect();
    for (i, s) in shoals.iter().enumerate() {
        let c = s.counter("events_total", &[]);
        let h = s.histogram("event_seconds", &[]);
        for j in 0..1000 {
            c.increment(1);
            h.record((i * 1000 + j + 1) as f64 * 1e-4);
        }
    }
    // Nothing listens: flushes fail, deltas are kept.
    std::thread::sleep(Duration::from_millis(300));
    assert!(shoals[0].flusher_stats().batches_failed.load(Relaxed) > 0);
    let collector = start_collector(Some(addr), |_| {});
    for s in &shoals {
        s.flush().expect("flush once the collector is up");
    }
    let text = scrape(&collector);
    assert_eq!(counter_total(&text, r#"events_total{service="late"}"#), 3000, "{text}");
    assert_eq!(counter_total(&text, r#"event_seconds_count{service="late"}"#), 3000, "{text}");
    for s in &shoals {
        assert_eq!(s.flusher_stats().pending_series.load(Relaxed), 0, "everything was acknowledged");
    }
    drop(shoals);
    collector.shutdown().unwrap();
}

#[test]
fn collector_restart_while_recording_loses_nothing_and_counts_nothing_twice() {
    let addr = free_addr();
    let first = start_collector(Some(addr), |_| {});
    let instances = 3;
    let stop = Arc::new(AtomicBool::new(false));
    let recorded = Arc::new(AtomicU64::new(0));
    let shoals: Vec<_> = (0..instances)
        .map(|_| {
            Arc::new(
                shoal::Shoal::builder()
                    .service("restart")
                    .collector(format!("http://{addr}"))
                    .flush_interval(Duration::from_millis(30))
                    .shutdown_timeout(Duration::from_secs(5))
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let workers: Vec<_> = shoals
        .iter()
        .flat_map(|s| (0..2).map(move |_| s.clone()))
        .map(|s| {
            let (stop, recorded) = (stop.clone(), recorded.clone());
            std::thread::spawn(move || {
                let c = s.counter("work_total", &[]);
                let h = s.histogram("work_seconds", &[]);
                while !stop.load(Relaxed) {
                    for _ in 0..100 {
                        c.increment(1);
                        h.record(0.001);
                    }
                    recorded.fetch_add(100, Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    // Stop the collector for real; everything it merged is in its state.
    let first_state = first.shared().clone();
    first.shutdown().unwrap();
    let before_restart = {
        let text = shoal_collector::render(&first_state.aggregator.lock(), &first_state.stats);
        counter_total(&text, r#"work_total{service="restart"}"#)
    };
    assert!(before_restart > 0);
    // Down for a while: flushes fail and back off.
    std::thread::sleep(Duration::from_millis(500));
    let second = start_collector(Some(addr), |_| {});
    std::thread::sleep(Duration::from_millis(400));
    stop.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for s in &shoals {
        s.flush().expect("final flush");
    }
    let text = scrape(&second);
    let after_restart = counter_total(&text, r#"work_total{service="restart"}"#);
    let samples_after = counter_total(&text, r#"work_seconds_count{service="restart"}"#);
    let total = recorded.load(Relaxed);
    assert_eq!(before_restart + after_restart, total, "before {before_restart} + after {after_restart} != recorded {total}");
    let samples_before = {
        let t = shoal_collector::render(&first_state.aggregator.lock(), &first_state.stats);
        counter_total(&t, r#"work_seconds_count{service="restart"}"#)
    };
    assert_eq!(samples_before + samples_after, total);
    let failed: u64 = shoals.iter().map(|s| s.flusher_stats().batches_failed.load(Relaxed)).sum();
    assert!(failed > 0, "the outage should have failed some sends");
    drop(shoals);
    second.shutdown().unwrap();
}

#[test]
fn the_same_batch_delivered_twice_is_counted_once() {
    use shoal_proto as pb;
    let collector = start_collector(None, |_| {});
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = pb::ingest_client::IngestClient::connect(collector.grpc_url()).await.unwrap();
        let batch = pb::FlushRequest {
            instance_id: "instance-a".into(),
            instance_labels: vec![pb::Label { key: "service".into(), value: "dup".into() }],
            sequence: 1,
            interval_start_unix_nanos: 0,
            interval_end_unix_nanos: 1,
            definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "orders_total".into(), labels: vec![], ..Default::default() }],
            counters: vec![pb::CounterDelta { r#ref: 1, delta: 7 }],
            gauges: vec![],
            histograms: vec![],
        };
        let first = client.flush(batch.clone()).await.unwrap().into_inner();
        assert_eq!(first.acknowledged_sequence, 1);
        assert!(!first.duplicate);
        // The acknowledgement was "lost": the SDK sends the same batch again.
        let again = client.flush(batch.clone()).await.unwrap().into_inner();
        assert_eq!(again.acknowledged_sequence, 1);
        assert!(again.duplicate);
        // The next batch refers to the series by ref only.
        let next =
            pb::FlushRequest { sequence: 2, definitions: vec![], counters: vec![pb::CounterDelta { r#ref: 1, delta: 3 }], ..batch.clone() };
        assert_eq!(client.flush(next).await.unwrap().into_inner().acknowledged_sequence, 2);
        // A ref the collector never saw: nothing merged, the SDK is asked to resend definitions.
        let unknown =
            pb::FlushRequest { sequence: 3, definitions: vec![], counters: vec![pb::CounterDelta { r#ref: 99, delta: 1000 }], ..batch };
        let r = client.flush(unknown).await.unwrap().into_inner();
        assert_eq!(r.unknown_refs, vec![99]);
        assert_eq!(r.acknowledged_sequence, 0);
    });
    let text = scrape(&collector);
    assert_eq!(sample(&text, r#"orders_total{service="dup"}"#), Some(10.0), "{text}");
    assert_eq!(sample(&text, "shoal_collector_batches_duplicate_total"), Some(1.0));
    assert_eq!(sample(&text, "shoal_collector_batches_unknown_refs_total"), Some(1.0));
    collector.shutdown().unwrap();
}

#[test]
fn sdk_resends_definitions_to_a_collector_that_forgot_them() {
    let addr = free_addr();
    let first = start_collector(Some(addr), |_| {});
    let s = shoal::Shoal::builder()
        .service("forget")
        .collector(format!("http://{addr}"))
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let c = s.counter("pings_total", &[]);
    c.increment(1);
    s.flush().unwrap();
    first.shutdown().unwrap();
    let second = start_collector(Some(addr), |_| {});
    c.increment(2);
    // The first attempt may hit the dead connection; flush retries within its deadline.
    s.flush().unwrap();
    let text = scrape(&second);
    assert_eq!(sample(&text, r#"pings_total{service="forget"}"#), Some(2.0), "{text}");
    let sent_bytes = s.flusher_stats().bytes_sent.load(Relaxed);
    assert!(sent_bytes > 0);
    drop(s);
    second.shutdown().unwrap();
}

//! An SDK with several collectors: shards. Each series goes to exactly one
//! collector (rendezvous hashing of its rollup key, the same choice in every
//! instance), totals are exact, and a shard that is down holds its own
//! series' deltas until it is back: nothing goes to another shard.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn counters(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter(|l| l.starts_with("orders_total{"))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse::<f64>().unwrap() as u64)
        })
        .collect()
}

fn sdk(a: &str, b: &str) -> shoal::Shoal {
    shoal::Shoal::builder()
        .service("shop")
        .collector(a)
        .collector(b)
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(2))
        .send_own_metrics(false)
        .build()
        .unwrap()
}

#[test]
fn each_series_lives_on_one_shard_and_a_shard_down_keeps_its_deltas() {
    let dir = TempDir::new("shards");
    let a = start_collector(None, |_| {});
    let b_grpc = free_addr();
    let b_dir = dir.0.join("b");
    let b = start_collector(Some(b_grpc), |c| c.data_dir = Some(b_dir.clone()));
    let (a_url, b_url) = (a.grpc_url(), b.grpc_url());
    let shoals: Vec<_> = (0..3).map(|_| sdk(&a_url, &b_url)).collect();
    let routes = 200;
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let record = |round: u64, expected: &mut BTreeMap<String, u64>| {
        for (i, s) in shoals.iter().enumerate() {
            for r in 0..routes {
                let by = round + i as u64 + 1;
                s.counter("orders_total", &[("route", &r.to_string())]).increment(by);
                *expected.entry(format!("orders_total{{route=\"{r}\",service=\"shop\"}}")).or_default() += by;
            }
        }
    };
    record(0, &mut expected);
    for s in &shoals {
        s.flush().expect("both shards up");
    }
    let (on_a, on_b) = (counters(&scrape(&a)), counters(&scrape(&b)));
    assert!(on_a.keys().all(|k| !on_b.contains_key(k)), "a series on both shards");
    assert_eq!(on_a.len() + on_b.len(), routes, "every series on a shard");
    let share = on_a.len() as f64 / routes as f64;
    assert!((0.3..0.7).contains(&share), "shard a holds {share} of the series");
    for (k, v) in on_a.iter().chain(&on_b) {
        assert_eq!(expected[k], *v, "{k}");
    }

    // Shard b goes down: its series' deltas wait in each SDK, a's arrive.
    b.shutdown().unwrap();
    record(1, &mut expected);
    for s in &shoals {
        assert!(s.flush().is_err(), "a flush with a shard down does not complete");
    }
    let a_now = counters(&scrape(&a));
    assert_eq!(a_now.keys().collect::<Vec<_>>(), on_a.keys().collect::<Vec<_>>(), "nothing of b's went to a");
    for (k, v) in &a_now {
        assert_eq!(expected[k], *v, "{k} on the shard that stayed up");
    }
    let pending: u64 = shoals.iter().map(|s| s.flusher_stats().values_pending.load(std::sync::atomic::Ordering::Relaxed)).sum();
    let b_share: u64 = on_b.keys().map(|k| expected[k]).sum::<u64>() - on_b.values().sum::<u64>();
    assert_eq!(pending, b_share, "the SDKs hold exactly shard b's new deltas");

    // b is back (same address, same data dir): it gets them, once.
    let b = start_collector(Some(b_grpc), |c| c.data_dir = Some(b_dir.clone()));
    for s in &shoals {
        // The lane of b may still be backing off from the outage.
        wait_for(Duration::from_secs(30), || s.flush().ok()).expect("both shards up again");
    }
    let b_now = counters(&scrape(&b));
    assert_eq!(b_now.keys().collect::<Vec<_>>(), on_b.keys().collect::<Vec<_>>());
    for (k, v) in a_now.iter().chain(&b_now) {
        assert_eq!(expected[k], *v, "{k} after the outage");
    }
}

/// A collector forwarding to shards whose list changes: a shard removed and
/// added again goes on with the sequence numbers it saw (else it would drop
/// the new batches as duplicates), and every series' total across the
/// shards stays exact.
#[test]
fn a_shard_removed_and_added_again_gets_its_new_deltas() {
    let shards: Vec<_> = (0..3).map(|_| start_collector(None, |_| {})).collect();
    let urls: Vec<String> = shards.iter().map(|s| s.grpc_url()).collect();
    let mut edge_config = shoal_collector::Config::default();
    let edge = start_collector(None, |c| {
        c.upstream = urls.clone();
        edge_config = c.clone();
    });
    let instance = shoal::Shoal::builder()
        .service("shop")
        .collector(edge.grpc_url())
        .flush_interval(Duration::from_secs(3600))
        .send_own_metrics(false)
        .build()
        .unwrap();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut phase = |upstream: &[String], by: u64| {
        edge_config.upstream = upstream.to_vec();
        edge.reload(&edge_config).unwrap();
        // Applied synchronously here (the reload's own thread may lag).
        edge.shared().forwarder.lock().clone().expect("forwarding").apply_upstream();
        for r in 0..60 {
            instance.counter("orders_total", &[("route", &r.to_string())]).increment(by);
            *expected.entry(format!("orders_total{{route=\"{r}\",service=\"shop\"}}")).or_default() += by;
        }
        instance.flush().unwrap();
        edge.forward_now().unwrap();
    };
    edge.forward_now().expect("the edge forwards");
    phase(&urls, 1);
    phase(&urls[..2], 10);
    phase(&urls, 100);
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    for s in &shards {
        for (k, v) in counters(&scrape(s)) {
            *totals.entry(k).or_default() += v;
        }
    }
    assert_eq!(totals, expected, "totals across the shards");
    let third = counters(&scrape(&shards[2]));
    assert!(!third.is_empty() && third.values().all(|v| v % 100 == 1), "the re-added shard merged its new deltas: {third:?}");
}

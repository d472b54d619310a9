//! Conservation: everything recorded is merged or counted as dropped, exactly,
//! whatever happens between the SDKs and the collector.
//!
//! Unit: values. A counter increment of `n` is `n` values, a histogram sample
//! is 1 value, a gauge set is 0 values (a last value, resent every flush and
//! never summed, so it has nothing to conserve). Values survive every step
//! exactly: a delta take splits a cumulative cell at one read, absorbing
//! pending deltas adds counters and merges sketches, so `values` is additive
//! where series-updates are not (two takes of a series absorb into one
//! series-update).
//!
//! Several SDK instances record from several threads while the collector
//! injects faults (failures before merging, merged-but-acknowledgement-lost,
//! acknowledgements delayed past the SDK's request timeout, so retries arrive
//! as duplicates), blocks a metric by name (SDKs learn the blocklist from the
//! first response) and caps the series of another metric; the collector is
//! restarted several times on the same address (the SDKs see connection
//! errors, a new epoch, and resend definitions). At the end:
//!
//! `recorded = Σ merged (every collector incarnation)
//!           + Σ rejected per series by the collectors (blocked, limits)
//!           + Σ dropped by the SDKs (blocked, refused, shutdown)`
//!
//! exactly. One limit of the design is kept out of the schedule on purpose:
//! a batch merged by a collector that then restarts before the SDK receives
//! the acknowledgement is merged again by the next incarnation (dedup state
//! is not persisted). The test quiesces recording and flushes every SDK before
//! each restart, so that no batch carrying values is ambiguous across one.

mod common;

use common::*;
use rand::Rng;
use shoal::DropReason;
use shoal_collector::stats::{Rejection, Stats};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const INSTANCES: usize = 4;
const THREADS_PER_INSTANCE: usize = 2;
const USERS: usize = 16;
const USERS_LIMIT: usize = 10;

fn start(addr: std::net::SocketAddr) -> shoal_collector::Collector {
    let c = start_collector(Some(addr), |c| {
        c.blocklist = vec!["noisy_*".into()];
        c.max_series_per_metric = USERS_LIMIT;
        c.shutdown_grace_ms = 300;
    });
    let f = &c.shared().ingest.faults;
    f.fail_before_merge_ppm.store(100_000, Relaxed);
    f.fail_after_merge_ppm.store(50_000, Relaxed);
    f.max_ack_delay_ms.store(700, Relaxed);
    c
}

#[test]
fn recorded_equals_merged_plus_counted_drops_through_faults_and_restarts() {
    let addr = free_addr();
    let mut collector = start(addr);
    let mut incarnations: Vec<Arc<Stats>> = Vec::new();
    let shoals: Vec<Arc<shoal::Shoal>> = (0..INSTANCES)
        .map(|i| {
            Arc::new(
                shoal::Shoal::builder()
                    .service("conserve")
                    .label("shard", i.to_string())
                    .collector(format!("http://{addr}"))
                    .flush_interval(Duration::from_millis(20))
                    .shutdown_timeout(Duration::from_secs(10))
                    // Recorded values are balanced against the collector's
                    // merged values: the own series would add theirs there.
                    .send_own_metrics(false)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let recorded = Arc::new(AtomicU64::new(0));
    let in_loop = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = shoals
        .iter()
        .flat_map(|s| (0..THREADS_PER_INSTANCE).map(move |t| (s.clone(), t)))
        .map(|(s, t)| {
            let (stop, paused, recorded, in_loop) = (stop.clone(), paused.clone(), recorded.clone(), in_loop.clone());
            std::thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let work = s.counter("work_total", &[]);
                let latency = s.histogram("work_seconds", &[]);
                let noisy = s.counter("noisy_debug_total", &[]);
                let depth = s.gauge("queue_depth", &[("thread", &t.to_string())]);
                let users: Vec<_> = (0..USERS).map(|u| s.counter("per_user_total", &[("user", &u.to_string())])).collect();
                while !stop.load(Relaxed) {
                    if paused.load(Relaxed) {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    in_loop.fetch_add(1, Relaxed);
                    if paused.load(Relaxed) {
                        in_loop.fetch_sub(1, Relaxed);
                        continue;
                    }
                    let mut values = 0;
                    for _ in 0..50 {
                        let n = rng.gen_range(1..=5);
                        work.increment(n);
                        latency.record(rng.gen_range(1e-4..2.0));
                        users[rng.gen_range(0..USERS)].increment(1);
                        values += n + 2;
                        if rng.gen_bool(0.2) {
                            noisy.increment(3);
                            values += 3;
                        }
                        depth.set(rng.gen_range(0.0..100.0));
                    }
                    recorded.fetch_add(values, Relaxed);
                    in_loop.fetch_sub(1, Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        })
        .collect();

    let mut rng = rand::thread_rng();
    for _restart in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(400..900)));
        // Quiesce: no new values, faults off, every SDK flushed, so no batch
        // with values is merged-but-unacknowledged across the restart.
        paused.store(true, Relaxed);
        while in_loop.load(Relaxed) > 0 {
            std::thread::yield_now();
        }
        collector.shared().ingest.faults.clear();
        for s in &shoals {
            s.flush().expect("flush before restart");
        }
        incarnations.push(collector.shared().stats.clone());
        collector.shutdown().unwrap();
        paused.store(false, Relaxed);
        // Down for a while: SDKs record, fail to connect and back off.
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..400)));
        collector = start(addr);
    }
    std::thread::sleep(Duration::from_millis(600));
    stop.store(true, Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    collector.shared().ingest.faults.clear();
    for s in &shoals {
        s.flush().expect("final flush");
        s.shutdown().expect("shutdown");
    }
    incarnations.push(collector.shared().stats.clone());
    collector.shutdown().unwrap();

    let recorded = recorded.load(Relaxed);
    let sum = |f: &dyn Fn(&shoal::FlusherStats) -> u64| shoals.iter().map(|s| f(s.flusher_stats())).sum::<u64>();
    let taken = sum(&|f| f.values_taken.load(Relaxed));
    let pending = sum(&|f| f.values_pending.load(Relaxed));
    let sdk_blocked = sum(&|f| f.values_dropped(DropReason::Blocked));
    let sdk_refused = sum(&|f| f.values_dropped(DropReason::Refused));
    let sdk_shutdown = sum(&|f| f.values_dropped(DropReason::Shutdown));
    let merged: u64 = incarnations.iter().map(|s| s.merged.values()).sum();
    let rejected_by = |r: Rejection| incarnations.iter().map(|s| s.rejected_flow(r).values()).sum::<u64>();
    let collector_rejected: u64 = Rejection::ALL.iter().map(|&r| rejected_by(r)).sum();
    let duplicates: u64 = incarnations.iter().map(|s| s.batches_duplicate.load(Relaxed)).sum();
    let failed = sum(&|f| f.batches_failed.load(Relaxed));
    eprintln!(
        "recorded {recorded} = merged {merged} + collector-rejected {collector_rejected} (blocked {}, metric limit {}) \
         + sdk blocked {sdk_blocked} + refused {sdk_refused} + shutdown {sdk_shutdown}; \
         {} incarnations, {duplicates} duplicate batches, {failed} failed sends",
        rejected_by(Rejection::Blocked),
        rejected_by(Rejection::SeriesLimitMetric),
        incarnations.len()
    );
    assert_eq!(taken, recorded, "every value recorded was taken");
    assert_eq!(pending, 0, "nothing left unacknowledged");
    assert_eq!(recorded, merged + collector_rejected + sdk_blocked + sdk_refused + sdk_shutdown);
    // Each collector incarnation balances on its own too.
    for s in &incarnations {
        let rejected: u64 = Rejection::ALL.iter().map(|&r| s.rejected_flow(r).values()).sum();
        assert_eq!(s.received.values(), s.merged.values() + s.duplicate.values() + s.unknown_refs.values() + rejected);
    }
    // The schedule did exercise every path.
    assert!(failed > 0, "faults and restarts failed some sends");
    assert!(duplicates > 0, "lost or late acknowledgements caused duplicates");
    assert!(sdk_blocked > 0, "SDKs dropped blocked series themselves");
    assert!(rejected_by(Rejection::SeriesLimitMetric) > 0, "the series limit rejected some series");
    assert_eq!(sdk_refused + sdk_shutdown, 0, "valid batches are never refused; shutdown flushed everything");
}

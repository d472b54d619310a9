//! kill -9: 5 SDK instances record counters and histograms continuously
//! while a durable collector process is SIGKILLed at random moments 20
//! times and restarted on the same data dir. At the end the cumulative
//! counter and histogram count equal exactly what was recorded, and the
//! conservation counts balance.
//!
//! The collector process is this test binary re-executed in "collector
//! mode" (`collector_process_entry`, which runs `shoal_collector::serve`,
//! what the daemon runs): the suite cannot name the daemon binary of
//! another package, and a real process is what SIGKILL needs.

mod common;

use common::*;
use rand::Rng;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SHOAL_KILL9_COLLECTOR";

/// Collector mode: serves until killed when `CHILD_ENV` is set, else does nothing.
#[test]
fn collector_process_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.split(',');
    let (grpc, http, dir) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
    let config = shoal_collector::Config {
        grpc_listen: grpc.parse().unwrap(),
        http_listen: http.parse().unwrap(),
        data_dir: Some(dir.into()),
        summary_window_secs: 3600,
        overload_retry_after_ms: 20,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Err(e) = rt.block_on(shoal_collector::serve(config, std::future::pending())) {
        eprintln!("collector process: {e}");
        std::process::exit(3);
    }
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(grpc: SocketAddr, http: SocketAddr, dir: &std::path::Path) -> Proc {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["collector_process_entry", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{grpc},{http},{}", dir.display()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let p = Proc(child);
    // Up once /healthz answers.
    wait_for(Duration::from_secs(20), || std::net::TcpStream::connect(http).ok().map(|_| ())).expect("collector process up");
    p
}

fn metrics(http: SocketAddr) -> String {
    http_get(&format!("http://{http}/metrics"))
}

#[test]
fn kill_minus_9_loses_nothing_and_counts_nothing_twice() {
    let dir = std::env::temp_dir().join(format!("shoal-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (grpc, http) = (free_addr(), free_addr());
    let mut proc = spawn(grpc, http, &dir);
    let shoals: Vec<_> = (0..5)
        .map(|i| {
            shoal::Shoal::builder()
                .service("kill9")
                .label("slot", format!("{}", i % 2))
                .collector(format!("http://{grpc}"))
                .flush_interval(Duration::from_millis(20))
                .shutdown_timeout(Duration::from_secs(5))
                .build()
                .unwrap()
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (counted, sampled) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    std::thread::scope(|scope| {
        for s in &shoals {
            let (stop, counted, sampled) = (stop.clone(), counted.clone(), sampled.clone());
            scope.spawn(move || {
                let c = s.counter("jobs_total", &[]);
                let h = s.histogram("job_seconds", &[]);
                let mut rng = rand::thread_rng();
                while !stop.load(Relaxed) {
                    let n = rng.gen_range(1..10);
                    c.increment(n);
                    counted.fetch_add(n, Relaxed);
                    h.record(rng.gen_range(0.001..2.0));
                    sampled.fetch_add(1, Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
        let mut rng = rand::thread_rng();
        let started = Instant::now();
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(50..700)));
            let _ = proc.0.kill(); // SIGKILL
            let _ = proc.0.wait();
            proc = spawn(grpc, http, &dir);
        }
        eprintln!("20 kills in {:?}", started.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Relaxed);
    });
    for s in &shoals {
        s.flush().expect("final flush");
    }
    let text = metrics(http);
    let total = sample(&text, r#"jobs_total{service="kill9",slot="0"}"#).unwrap_or(0.0) as u64
        + sample(&text, r#"jobs_total{service="kill9",slot="1"}"#).unwrap_or(0.0) as u64;
    let count = sample(&text, r#"job_seconds_count{service="kill9",slot="0"}"#).unwrap_or(0.0) as u64
        + sample(&text, r#"job_seconds_count{service="kill9",slot="1"}"#).unwrap_or(0.0) as u64;
    let (counted, sampled) = (counted.load(Relaxed), sampled.load(Relaxed));
    eprintln!("counter {total} / {counted} recorded, histogram count {count} / {sampled} recorded");
    assert_eq!(total, counted, "counter: nothing lost, nothing doubled");
    assert_eq!(count, sampled, "histogram count: nothing lost, nothing doubled");
    // SDK side: everything taken was acknowledged, nothing dropped.
    let sum = |f: &dyn Fn(&shoal::FlusherStats) -> u64| shoals.iter().map(|s| f(s.flusher_stats())).sum::<u64>();
    assert_eq!(sum(&|f| f.values_taken.load(Relaxed)), counted + sampled);
    assert_eq!(sum(&|f| f.values_pending.load(Relaxed)), 0);
    assert_eq!(sum(&|f| f.values_dropped(shoal::DropReason::Refused) + f.values_dropped(shoal::DropReason::Shutdown)), 0);
    // Collector side, this incarnation: received = merged + duplicate + unknown_refs + rejected.
    let v = |name: &str| sample(&text, name).unwrap_or(0.0) as u64;
    let rejected: u64 = text
        .lines()
        .filter(|l| l.starts_with("shoal_collector_values_rejected_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|x| x as u64)
        .sum();
    assert_eq!(
        v("shoal_collector_values_received_total"),
        v("shoal_collector_values_merged_total")
            + v("shoal_collector_values_duplicate_total")
            + v("shoal_collector_values_unknown_refs_total")
            + rejected,
        "{text}"
    );
    // A kill during a group commit may leave a torn, unacknowledged tail, cut at the next start.
    eprintln!("last start cut {} records", v("shoal_collector_wal_corrupt_records_total"));
    for s in &shoals {
        s.shutdown().unwrap();
    }
    drop(proc);
    let _ = std::fs::remove_dir_all(&dir);
}

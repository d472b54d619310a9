//! Load, loopback only, bounded in time. The collector runs in a child
//! process (this test binary re-executed) so that its memory is measured
//! alone (`VmHWM`/`VmRSS` of `/proc/<pid>/status`).
//!
//! 1. Many SDK instances (real `Shoal`s, each with its own flusher) record
//!    into their series from a few threads; driver threads call `flush()` on
//!    each in turn and time it (send + merge + acknowledgement).
//!    Reported: series-updates/s merged, p50/p99/max flush latency, the
//!    collector's peak memory and its resident memory over time (bounded:
//!    the second half of the run must not grow past the first half's peak
//!    by more than a margin).
//! 2. 10,000 simulated instances (raw gRPC clients) each bound their series
//!    with a first batch; the collector restarts; all of them reconnect and
//!    send their next batch at once. They get `RESOURCE_EXHAUSTED` with a
//!    retry hint when the ingest queue is full and back off with jitter, get
//!    `unknown_refs` (new epoch) and resend definitions. Reported: time until
//!    every instance is acknowledged, overloaded answers, collector memory.
//!    Every value sent is checked to be merged exactly once.
//!
//! `cargo test --release --test load -- --ignored --nocapture` runs the full
//! version (60 s + 10,000 instances); the smoke version runs by default.

use rand::Rng;
use shoal_proto as pb;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SHOAL_LOAD_COLLECTOR_CHILD";

/// In the child: serve a collector on the given gRPC address; a line
/// `restart` on stdin restarts it on the same address; `stats` prints the
/// counters; EOF stops it.
#[test]
#[ignore = "the collector process of the load tests; started by them"]
fn load_collector_child() {
    let Ok(addr) = std::env::var(CHILD_ENV) else { return };
    let config = shoal_collector::Config {
        grpc_listen: addr.parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_ms: 200,
        ..Default::default()
    };
    let start = || loop {
        match shoal_collector::Collector::start(config.clone()) {
            Ok(c) => return c,
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let mut collector = start();
    println!("ready");
    let mut merged_before = 0;
    for line in std::io::stdin().lock().lines() {
        match line.unwrap().trim() {
            "restart" => {
                merged_before += collector.shared().stats.merged.values();
                collector.shutdown().unwrap();
                collector = start();
                println!("ready");
            }
            "stats" => {
                let s = &collector.shared().stats;
                println!(
                    "stats {} {} {} {}",
                    merged_before + s.merged.values(),
                    s.merged.series_updates(),
                    s.rejected(shoal_collector::stats::Rejection::Overloaded),
                    s.ingest_queue_peak.load(Relaxed)
                );
            }
            _ => {}
        }
    }
    collector.shutdown().unwrap();
}

struct CollectorProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
    addr: std::net::SocketAddr,
}

impl CollectorProcess {
    fn start() -> CollectorProcess {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "load_collector_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, addr.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = CollectorProcess { child, stdin, stdout, addr };
        p.expect("ready");
        p
    }

    fn expect(&mut self, prefix: &str) -> String {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(self.stdout.read_line(&mut line).unwrap() > 0, "collector process exited");
            // libtest prints `test NAME ... ` before the child's first line.
            if let Some(at) = line.find(prefix) {
                return line[at..].trim().to_string();
            }
        }
    }

    fn command(&mut self, c: &str) {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn restart(&mut self) {
        self.command("restart");
        self.expect("ready");
    }

    /// (values merged over every incarnation, series-updates merged by the
    /// current one, overloaded answers, ingest queue peak).
    fn stats(&mut self) -> (u64, u64, u64, u64) {
        self.command("stats");
        let line = self.expect("stats");
        let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap()).collect();
        (v[0], v[1], v[2], v[3])
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let kb = |key: &str| {
            status.lines().find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Figures {
    updates_per_sec: f64,
    p99: Duration,
    peak_mib: f64,
}

/// Phase 1: `instances` SDKs with `series` counters and `series / 10`
/// histograms each, flushed by driver threads for `duration`.
fn sdk_fleet(collector: &mut CollectorProcess, instances: usize, series: usize, duration: Duration) -> Figures {
    let shoals: Vec<Arc<shoal::Shoal>> = (0..instances)
        .map(|i| {
            Arc::new(
                shoal::Shoal::builder()
                    .service("load")
                    .label("instance", i.to_string())
                    .collector(format!("http://{}", collector.addr))
                    .flush_interval(Duration::from_secs(3600))
                    .shutdown_timeout(Duration::from_secs(10))
                    // Values taken are compared with values merged (own
                    // series are merged but never taken).
                    .send_own_metrics(false)
                    .build()
                    .unwrap(),
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let recorded = Arc::new(AtomicU64::new(0));
    let recorders: Vec<_> = (0..2)
        .map(|t| {
            let (shoals, stop, recorded) = (shoals.clone(), stop.clone(), recorded.clone());
            std::thread::spawn(move || {
                let handles: Vec<_> = shoals
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 2 == t)
                    .map(|(_, s)| {
                        let counters: Vec<_> =
                            (0..series).map(|k| s.counter("load_requests_total", &[("route", &k.to_string())])).collect();
                        let hists: Vec<_> =
                            (0..series / 10).map(|k| s.histogram("load_latency_seconds", &[("route", &k.to_string())])).collect();
                        (counters, hists)
                    })
                    .collect();
                let mut rng = rand::thread_rng();
                while !stop.load(Relaxed) {
                    let mut n = 0;
                    for (counters, hists) in &handles {
                        for c in counters {
                            c.increment(1);
                        }
                        for h in hists {
                            h.record(rng.gen_range(1e-4..1.0));
                        }
                        n += (counters.len() + hists.len()) as u64;
                    }
                    recorded.fetch_add(n, Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let (merged_before, updates_before, _, _) = collector.stats();
    let drivers: Vec<_> = (0..4)
        .map(|d| {
            let (shoals, stop, latencies) = (shoals.clone(), stop.clone(), latencies.clone());
            std::thread::spawn(move || {
                let mine: Vec<_> = shoals.iter().enumerate().filter(|(i, _)| i % 4 == d).map(|(_, s)| s.clone()).collect();
                let mut local = Vec::new();
                while !stop.load(Relaxed) {
                    let round = Instant::now();
                    for s in &mine {
                        let t = Instant::now();
                        s.flush().expect("flush under load");
                        local.push(t.elapsed());
                    }
                    // Each instance flushes about every 100 ms.
                    std::thread::sleep(Duration::from_millis(100).saturating_sub(round.elapsed()));
                }
                latencies.lock().unwrap().extend(local);
            })
        })
        .collect();
    let mut rss = Vec::new();
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(500));
        rss.push(collector.memory().0);
    }
    stop.store(true, Relaxed);
    for t in recorders.into_iter().chain(drivers) {
        t.join().unwrap();
    }
    for s in &shoals {
        s.flush().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (merged_after, updates_after, overloaded, queue_peak) = collector.stats();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort();
    let (rss_now, hwm) = collector.memory();
    let half = rss.len() / 2;
    let first_half = rss[..half.max(1)].iter().copied().fold(0.0, f64::max);
    let second_half = rss[half..].iter().copied().fold(0.0, f64::max);
    let updates = updates_after - updates_before;
    let taken: u64 = shoals.iter().map(|s| s.flusher_stats().values_taken.load(Relaxed)).sum();
    eprintln!(
        "SDK fleet: {instances} instances x {} series, {elapsed:.1} s: {updates} series-updates merged = {:.0}/s; {} values \
         recorded/s; flushes {}: p50 {:?} p99 {:?} max {:?}; overloaded answers {overloaded}, queue peak {queue_peak}; \
         collector RSS first half max {first_half:.1} MiB, second half max {second_half:.1} MiB, now {rss_now:.1} MiB, peak (VmHWM) {hwm:.1} MiB",
        series + series / 10,
        updates as f64 / elapsed,
        (merged_after - merged_before) as f64 / elapsed,
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    assert_eq!(merged_after - merged_before, taken, "every value taken was merged exactly once");
    assert_eq!(recorded.load(Relaxed), taken);
    assert!(second_half <= first_half * 1.5 + 32.0, "collector memory keeps growing: {first_half:.1} -> {second_half:.1} MiB");
    Figures { updates_per_sec: updates as f64 / elapsed, p99: percentile(&lat, 0.99), peak_mib: hwm }
}

fn simulated_batch(id: usize, sequence: u64, series: u32, with_definitions: bool) -> pb::FlushRequest {
    pb::FlushRequest {
        instance_id: format!("sim-{id}"),
        instance_labels: vec![pb::Label { key: "service".into(), value: "sim".into() }],
        sequence,
        definitions: if with_definitions {
            (0..series)
                .map(|r| pb::SeriesDefinition {
                    r#ref: r,
                    name: "sim_requests_total".into(),
                    labels: vec![pb::Label { key: "route".into(), value: r.to_string() }],
                    ..Default::default()
                })
                .collect()
        } else {
            vec![]
        },
        counters: (0..series).map(|r| pb::CounterDelta { r#ref: r, delta: 1 }).collect(),
        ..Default::default()
    }
}

/// Sends until acknowledged, as an SDK would: backs off on overload (the
/// hint plus up to half of it again), resends definitions when asked.
/// Returns the number of overloaded answers.
async fn deliver(client: &mut pb::ingest_client::IngestClient<tonic::transport::Channel>, id: usize, sequence: u64, series: u32) -> u64 {
    let mut definitions = sequence == 1;
    let mut overloaded = 0;
    loop {
        match client.flush(simulated_batch(id, sequence, series, definitions)).await {
            Ok(r) => {
                let r = r.into_inner();
                if !r.unknown_refs.is_empty() {
                    definitions = true;
                    continue;
                }
                assert_eq!(r.acknowledged_sequence, sequence);
                return overloaded;
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                overloaded += 1;
                let hint: u64 = status.metadata().get("retry-after-ms").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(1000);
                let jitter = rand::thread_rng().gen_range(0..=hint / 2);
                tokio::time::sleep(Duration::from_millis(hint + jitter)).await;
            }
            Err(_) => {
                let wait = rand::thread_rng().gen_range(50..150);
                tokio::time::sleep(Duration::from_millis(wait)).await
            }
        }
    }
}

/// Phase 2: `instances` raw clients bind their series, the collector
/// restarts, and they all reconnect and send at once.
fn reconnect_storm(collector: &mut CollectorProcess, instances: usize, series: u32) -> (Duration, u64, f64) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = format!("http://{}", collector.addr);
    let (merged_start, _, _, _) = collector.stats();
    let endpoint = tonic::transport::Endpoint::from_shared(url).unwrap().connect_timeout(Duration::from_secs(5));
    let clients: Vec<_> =
        (0..instances).map(|_| pb::ingest_client::IngestClient::new(runtime.block_on(async { endpoint.connect_lazy() }))).collect();
    let run = |clients: Vec<pb::ingest_client::IngestClient<tonic::transport::Channel>>, sequence: u64| {
        runtime.block_on(async {
            let tasks: Vec<_> = clients
                .into_iter()
                .enumerate()
                .map(|(id, mut c)| tokio::spawn(async move { (deliver(&mut c, id, sequence, series).await, c) }))
                .collect();
            let mut overloaded = 0;
            let mut back = Vec::new();
            for t in tasks {
                let (o, c) = t.await.unwrap();
                overloaded += o;
                back.push(c);
            }
            (overloaded, back)
        })
    };
    let (_, clients) = run(clients, 1);
    collector.restart();
    let started = Instant::now();
    let (overloaded, _clients) = run(clients, 2);
    let took = started.elapsed();
    let (merged_end, _, _, queue_peak) = collector.stats();
    let (_, hwm) = collector.memory();
    eprintln!(
        "reconnect storm: {instances} simulated instances x {series} series reconnected after a restart; all acknowledged in {took:?}; \
         {overloaded} overloaded answers (backed off with jitter); queue peak {queue_peak}; collector peak (VmHWM) {hwm:.1} MiB"
    );
    assert_eq!(merged_end - merged_start, 2 * instances as u64 * series as u64, "every batch merged exactly once");
    drop(runtime);
    (took, overloaded, hwm)
}

#[test]
fn load_smoke() {
    let mut collector = CollectorProcess::start();
    let f = sdk_fleet(&mut collector, 8, 100, Duration::from_secs(3));
    assert!(f.updates_per_sec > 0.0 && f.p99 > Duration::ZERO && f.peak_mib > 0.0);
    reconnect_storm(&mut collector, 500, 10);
}

#[test]
#[ignore = "60 s load run: cargo test --release --test load -- --ignored --nocapture"]
fn load_full() {
    let mut collector = CollectorProcess::start();
    sdk_fleet(&mut collector, 100, 1000, Duration::from_secs(60));
    reconnect_storm(&mut collector, 10_000, 20);
}

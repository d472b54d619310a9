//! A simulated fleet against an embedded collector.
//!
//! `cargo run --release --example fleet` starts a `shoal-collector` in process
//! (gRPC on 127.0.0.1:7171, `/metrics` on http://127.0.0.1:9171/metrics), then
//! a fleet of service instances (default 50, one `Shoal` each, a fifth of them
//! ten times slower) that record request latencies and flush every second.
//! Every few seconds it prints the cluster p50/p99 the collector computed from
//! merged sketches (scraped from its `/metrics`), what a StatsD-style
//! pipeline would show (the average of per-instance p99s), and the exact
//! value over every sample recorded. `--duration` or Ctrl-C ends it.

use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::{Collector, Config};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "A simulated fleet of shoal instances feeding an embedded collector")]
struct Args {
    /// Number of service instances.
    #[arg(long, default_value_t = 50)]
    instances: usize,
    /// Seconds to run (0 = until Ctrl-C).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds between report lines.
    #[arg(long, default_value_t = 5)]
    report_every: u64,
    /// Requests per second per instance.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Collector gRPC address (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:7171")]
    grpc_listen: SocketAddr,
    /// Collector HTTP address serving /metrics.
    #[arg(long, default_value = "127.0.0.1:9171")]
    http_listen: SocketAddr,
}

/// Most raw samples kept for the exact column (8 bytes each).
const EXACT_CAP: usize = 50_000_000;

struct Instance {
    shoal: shoal::Shoal,
    requests: shoal::Counter,
    latency: shoal::Histogram,
    /// Median latency in seconds: slow instances are 10x slower.
    median: f64,
    rng: StdRng,
}

fn main() {
    let args = Args::parse();
    let config = Config {
        grpc_listen: args.grpc_listen,
        http_listen: args.http_listen,
        interval_secs: 1,
        // Quantiles on /metrics over the whole run, so the exact column (every
        // sample since start) compares like with like.
        summary_window_secs: 30 * 24 * 3600,
        retention_secs: 30 * 24 * 3600,
        ..Config::default()
    };
    let collector = match Collector::start(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet: cannot start the collector: {e}\n(use --grpc-listen/--http-listen 127.0.0.1:0 for free ports)");
            std::process::exit(2);
        }
    };
    println!("collector: gRPC {}  metrics http://{}/metrics", collector.grpc_addr(), collector.http_addr());
    println!("fleet: {} instances, {} req/s each, a fifth of them 10x slower\n", args.instances, args.rate);

    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone());

    let exact = Arc::new(Mutex::new(Vec::<f64>::new()));
    let instances: Vec<Arc<Mutex<Instance>>> = (0..args.instances)
        .map(|i| {
            let shoal = shoal::Shoal::builder()
                .service("demo")
                .collector(collector.grpc_url())
                .flush_interval(Duration::from_secs(1))
                .build()
                .expect("valid shoal configuration");
            let requests = shoal.counter("http_requests_total", &[]);
            let latency = shoal.histogram("http_request_duration_seconds", &[]);
            let median = if i % 5 == 4 { 0.2 } else { 0.02 };
            Arc::new(Mutex::new(Instance { shoal, requests, latency, median, rng: StdRng::seed_from_u64(i as u64) }))
        })
        .collect();

    // Two driver threads share the instances (a thread per instance would only
    // contend for this machine's cores).
    let drivers: Vec<_> = (0..2)
        .map(|d| {
            let mine: Vec<_> = instances.iter().skip(d).step_by(2).cloned().collect();
            let (stop, exact, rate) = (stop.clone(), exact.clone(), args.rate);
            std::thread::spawn(move || drive(mine, rate, stop, exact))
        })
        .collect();

    let started = Instant::now();
    let deadline = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    println!(
        "{:>6} {:>10} | {:>11} {:>11} | {:>11} {:>11} | {:>14} | {:>8} {:>8}",
        "t", "requests", "cluster50", "cluster99", "exact50", "exact99", "avg(inst p99)", "err clu", "err avg"
    );
    let mut next_report = started + Duration::from_secs(args.report_every);
    while !stop.load(Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(args.report_every);
            report(&collector, &instances, &exact, started);
        }
    }
    stop.store(true, Relaxed);
    for d in drivers {
        let _ = d.join();
    }
    for i in &instances {
        let _ = i.lock().unwrap().shoal.flush();
    }
    println!("\nfinal (every instance flushed):");
    report(&collector, &instances, &exact, started);
    drop(instances);
    let _ = collector.shutdown();
}

fn drive(instances: Vec<Arc<Mutex<Instance>>>, rate: u64, stop: Arc<AtomicBool>, exact: Arc<Mutex<Vec<f64>>>) {
    let tick = Duration::from_millis(20);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0) as usize;
    let mut next = Instant::now();
    let mut batch = Vec::with_capacity(per_tick * instances.len());
    while !stop.load(Relaxed) {
        batch.clear();
        for inst in &instances {
            let mut guard = inst.lock().unwrap();
            let inst = &mut *guard;
            for _ in 0..per_tick {
                let v = latency(&mut inst.rng, inst.median);
                inst.requests.increment(1);
                inst.latency.record(v);
                batch.push(v);
            }
        }
        let mut all = exact.lock().unwrap();
        if all.len() + batch.len() <= EXACT_CAP {
            all.extend_from_slice(&batch);
        }
        drop(all);
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Lognormal around `median` with a heavy tail: 1% of requests 20x slower.
fn latency(rng: &mut StdRng, median: f64) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    let v = median * (0.5 * z).exp();
    if rng.gen_bool(0.01) {
        v * 20.0
    } else {
        v
    }
}

fn report(collector: &Collector, instances: &[Arc<Mutex<Instance>>], exact: &Mutex<Vec<f64>>, started: Instant) {
    let text = match scrape(collector.http_addr()) {
        Ok(t) => t,
        Err(e) => {
            println!("scrape failed: {e}");
            return;
        }
    };
    let read = |series: &str| {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    let requests = read(r#"http_requests_total{service="demo"}"#).unwrap_or(0.0);
    let c50 = read(r#"http_request_duration_seconds{service="demo",quantile="0.5"}"#).unwrap_or(f64::NAN);
    let c99 = read(r#"http_request_duration_seconds{service="demo",quantile="0.99"}"#).unwrap_or(f64::NAN);
    let inst_p99: Vec<f64> = instances
        .iter()
        .filter_map(|i| {
            let i = i.lock().unwrap();
            i.shoal.histogram_snapshot("http_request_duration_seconds").and_then(|s| s.quantile(0.99))
        })
        .collect();
    let naive = inst_p99.iter().sum::<f64>() / inst_p99.len().max(1) as f64;
    let mut all = exact.lock().unwrap().clone();
    let (e50, e99) = if all.is_empty() || all.len() >= EXACT_CAP {
        (f64::NAN, f64::NAN)
    } else {
        all.sort_unstable_by(|a, b| a.total_cmp(b));
        (nearest_rank(&all, 0.5), nearest_rank(&all, 0.99))
    };
    let err = |v: f64| format!("{:>7.2}%", 100.0 * (v - e99).abs() / e99);
    println!(
        "{:>5}s {:>10} | {:>9.2}ms {:>9.2}ms | {:>9.2}ms {:>9.2}ms | {:>12.2}ms | {} {}",
        started.elapsed().as_secs(),
        requests as u64,
        c50 * 1e3,
        c99 * 1e3,
        e50 * 1e3,
        e99 * 1e3,
        naive * 1e3,
        err(c99),
        err(naive)
    );
}

fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn scrape(addr: SocketAddr) -> Result<String, String> {
    let mut response = ureq::get(&format!("http://{addr}/metrics")).call().map_err(|e| e.to_string())?;
    response.body_mut().read_to_string().map_err(|e| e.to_string())
}

fn watch_ctrl_c(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("signal runtime");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        println!("\nCtrl-C: stopping");
        stop.store(true, Relaxed);
    });
}

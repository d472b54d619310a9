//! A simulated fleet against a collector.
//!
//! `cargo run --release --example fleet` starts a `shoal-collector` in process
//! (gRPC on 127.0.0.1:7171, `/metrics` on http://127.0.0.1:9171/metrics), then
//! a fleet of service instances (default 50, one `Shoal` each, a fifth of them
//! ten times slower) that record request latencies and flush every second.
//! `--collector http://HOST:7171` sends to a running collector instead (its
//! `/metrics` from `--metrics-url`, default port 9171 on the same host); the
//! run's series then carry a `run` label of their own.
//!
//! Every `--report-every` seconds (0 = only at the end) it pauses the fleet,
//! flushes every instance synchronously and, as of that flush, prints the
//! collector's request total and cluster p50/p99 from merged sketches
//! (scraped from its `/metrics`), what a StatsD-style pipeline would show (the
//! average of per-instance p99s), and the exact values over every sample
//! recorded, with the errors against the exact p99. `--duration` or Ctrl-C
//! ends it.

use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::{Collector, Config};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "A simulated fleet of shoal instances feeding a collector (embedded unless --collector)")]
struct Args {
    /// Number of service instances.
    #[arg(long, default_value_t = 50)]
    instances: usize,
    /// Seconds to run (0 = until Ctrl-C).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Seconds between report lines (0 = only the final report).
    #[arg(long, default_value_t = 5)]
    report_every: u64,
    /// Requests per second per instance.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// gRPC URL of a running collector to send to (e.g. http://127.0.0.1:7171)
    /// instead of starting one in process.
    #[arg(long, value_name = "URL")]
    collector: Option<String>,
    /// With --collector: its /metrics URL [default: port 9171 on the --collector host].
    #[arg(long, value_name = "URL", requires = "collector")]
    metrics_url: Option<String>,
    /// With --collector: its `summary_window_secs`. Its quantiles cover that
    /// window only, so they are compared with the exact ones while the run
    /// fits in it.
    #[arg(long, value_name = "SECS", default_value_t = 60, requires = "collector")]
    collector_window_secs: u64,
    /// Embedded collector's gRPC address (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:7171", conflicts_with = "collector")]
    grpc_listen: SocketAddr,
    /// Embedded collector's HTTP address serving /metrics.
    #[arg(long, default_value = "127.0.0.1:9171", conflicts_with = "collector")]
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

/// What the drivers recorded, exactly.
#[derive(Default)]
struct Exact {
    /// Requests recorded (never capped).
    count: u64,
    /// Every latency sample, up to [`EXACT_CAP`].
    samples: Vec<f64>,
}

/// Drivers record a tick and account for it under the read side; a report
/// holds the write side from its flush to its exact snapshot.
type Gate = RwLock<Mutex<Exact>>;

/// Where the fleet sends and where its results are read.
struct Target {
    grpc_url: String,
    metrics_url: String,
    /// Series selector labels of this run, before `quantile` (sorted, as exposed).
    labels: String,
    /// The collector's summary window, in seconds.
    window_secs: u64,
}

fn main() {
    let args = Args::parse();
    let (collector, target, run_label) = match &args.collector {
        Some(url) => {
            let metrics_url = match args.metrics_url.clone().map_or_else(|| default_metrics_url(url), Ok) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("fleet: {e}");
                    std::process::exit(2);
                }
            };
            // Counters on the collector are totals since it started: a label of
            // this run's own keeps them apart from earlier runs.
            let run = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs());
            let labels = format!(r#"run="{run}",service="demo""#);
            (None, Target { grpc_url: url.clone(), metrics_url, labels, window_secs: args.collector_window_secs }, Some(run))
        }
        None => {
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
            let target = Target {
                grpc_url: collector.grpc_url(),
                metrics_url: format!("http://{}/metrics", collector.http_addr()),
                labels: r#"service="demo""#.into(),
                window_secs: 30 * 24 * 3600,
            };
            (Some(collector), target, None)
        }
    };
    match &collector {
        Some(c) => println!("collector (embedded): gRPC {}  metrics http://{}/metrics", c.grpc_addr(), c.http_addr()),
        None => {
            println!(
                "collector: gRPC {}  metrics {}  (this run: run=\"{}\")",
                target.grpc_url,
                target.metrics_url,
                run_label.as_deref().unwrap_or("")
            );
            println!(
                "errors against the exact p99 while the run fits in its {}s summary window (--collector-window-secs)",
                target.window_secs
            );
        }
    }
    println!("fleet: {} instances, {} req/s each, a fifth of them 10x slower\n", args.instances, args.rate);

    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone());

    let gate: Arc<Gate> = Arc::default();
    let instances: Vec<Arc<Mutex<Instance>>> = (0..args.instances)
        .map(|i| {
            let mut builder =
                shoal::Shoal::builder().service("demo").collector(target.grpc_url.clone()).flush_interval(Duration::from_secs(1));
            if let Some(run) = &run_label {
                builder = builder.label("run", run.clone());
            }
            let shoal = builder.build().unwrap_or_else(|e| {
                eprintln!("fleet: {e}");
                std::process::exit(2);
            });
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
            let (stop, gate, rate) = (stop.clone(), gate.clone(), args.rate);
            std::thread::spawn(move || drive(mine, rate, stop, gate))
        })
        .collect();

    let started = Instant::now();
    let deadline = (args.duration > 0).then(|| started + Duration::from_secs(args.duration));
    println!(
        "{:>6} {:>10} {:>6} | {:>11} {:>11} | {:>11} {:>11} | {:>14} | {:>8} {:>8}",
        "t", "requests", "lost", "cluster50", "cluster99", "exact50", "exact99", "avg(inst p99)", "err clu", "err avg"
    );
    let period = (args.report_every > 0).then(|| Duration::from_secs(args.report_every));
    let mut next_report = period.map(|p| started + p);
    while !stop.load(Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        std::thread::sleep(Duration::from_millis(100));
        if let (Some(next), Some(period)) = (next_report.as_mut(), period) {
            if Instant::now() >= *next {
                *next += period;
                report(&target, &instances, &gate, started);
            }
        }
    }
    stop.store(true, Relaxed);
    for d in drivers {
        let _ = d.join();
    }
    println!("\nfinal:");
    report(&target, &instances, &gate, started);
    drop(instances);
    if let Some(c) = collector {
        let _ = c.shutdown();
    }
}

/// `http://HOST:9171/metrics` for the gRPC URL `http://HOST:PORT`.
fn default_metrics_url(grpc_url: &str) -> Result<String, String> {
    let rest = grpc_url.split_once("://").map_or(grpc_url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => h,
        _ if !authority.is_empty() => authority,
        _ => return Err(format!("cannot tell the host of --collector {grpc_url:?}: give --metrics-url")),
    };
    Ok(format!("http://{host}:9171/metrics"))
}

fn drive(instances: Vec<Arc<Mutex<Instance>>>, rate: u64, stop: Arc<AtomicBool>, gate: Arc<Gate>) {
    let tick = Duration::from_millis(20);
    let per_tick = (rate as f64 * tick.as_secs_f64()).max(1.0) as usize;
    let mut next = Instant::now();
    let mut batch = Vec::with_capacity(per_tick * instances.len());
    while !stop.load(Relaxed) {
        batch.clear();
        // Read side: reports (write side) wait for the tick to finish.
        let shared = gate.read().unwrap();
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
        // Accounted for within the same read section: a report sees a tick's
        // samples in the exact column exactly when it sees them recorded.
        let mut exact = shared.lock().unwrap();
        exact.count += batch.len() as u64;
        if exact.samples.len() + batch.len() <= EXACT_CAP {
            exact.samples.extend_from_slice(&batch);
        }
        drop(exact);
        drop(shared);
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

/// Pauses the drivers, flushes every instance synchronously, scrapes the
/// collector and snapshots the exact values, all as of that one flush, then
/// prints a line.
fn report(target: &Target, instances: &[Arc<Mutex<Instance>>], gate: &Gate, started: Instant) {
    let mut paused = gate.write().unwrap();
    let flushed = instances.iter().map(|i| i.lock().unwrap().shoal.flush()).filter(|r| r.is_err()).count();
    let scraped = scrape(&target.metrics_url);
    let inst_p99: Vec<f64> = instances
        .iter()
        .filter_map(|i| {
            let i = i.lock().unwrap();
            i.shoal.histogram_snapshot("http_request_duration_seconds").and_then(|s| s.quantile(0.99))
        })
        .collect();
    let exact = paused.get_mut().unwrap();
    let count = exact.count;
    let mut all = if exact.samples.len() < EXACT_CAP { exact.samples.clone() } else { Vec::new() };
    drop(paused);

    let elapsed = started.elapsed().as_secs();
    if flushed > 0 {
        println!("{elapsed:>5}s {flushed} of {} instances could not flush to {}", instances.len(), target.grpc_url);
    }
    let text = match scraped {
        Ok(t) => t,
        Err(e) => {
            println!("{elapsed:>5}s scrape of {} failed: {e}", target.metrics_url);
            return;
        }
    };
    let read = |series: &str| {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    let labels = &target.labels;
    let requests = read(&format!("http_requests_total{{{labels}}}")).unwrap_or(0.0) as u64;
    let c50 = read(&format!(r#"http_request_duration_seconds{{{labels},quantile="0.5"}}"#)).unwrap_or(f64::NAN);
    let c99 = read(&format!(r#"http_request_duration_seconds{{{labels},quantile="0.99"}}"#)).unwrap_or(f64::NAN);
    let naive = inst_p99.iter().sum::<f64>() / inst_p99.len().max(1) as f64;
    let (e50, e99) = if all.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        all.sort_unstable_by(|a, b| a.total_cmp(b));
        (nearest_rank(&all, 0.5), nearest_rank(&all, 0.99))
    };
    // The collector's quantiles cover its summary window (plus the interval
    // in progress): like with like only while the whole run fits in it.
    let comparable = elapsed + 2 <= target.window_secs;
    let err = |v: f64| if comparable { format!("{:>7.2}%", 100.0 * (v - e99).abs() / e99) } else { format!("{:>8}", "n/a") };
    println!(
        "{:>5}s {:>10} {:>6} | {:>9.2}ms {:>9.2}ms | {:>9.2}ms {:>9.2}ms | {:>12.2}ms | {} {}",
        elapsed,
        requests,
        count as i128 - requests as i128,
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

fn scrape(url: &str) -> Result<String, String> {
    let mut response = ureq::get(url).call().map_err(|e| e.to_string())?;
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

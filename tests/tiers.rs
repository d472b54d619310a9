//! Tiers and shards with real processes on 127.0.0.1: SDK instances ->
//! edge collectors -> sharded global collectors (-> VictoriaMetrics).
//!
//! - 2 edges × 10 SDK instances -> 2 global shards, an edge SIGKILLed
//!   mid-run and restarted on its data dir: counter totals exact across the
//!   union of the shards, every series on exactly one shard, cluster
//!   quantiles within 1% of exact, every tier's conservation counts balance.
//! - A third shard added by SIGHUP: the fraction of series that moved is
//!   about a third, and the totals the shards push to one VictoriaMetrics
//!   stay exact.
//!
//! The collectors are the daemon itself (`shoal_collector::daemon::run`,
//! flags, TOML file, signals) in a child process: this test binary
//! re-executed in "daemon mode" (`daemon_process_entry`).

mod common;

use common::real_servers::{lognormal, victoria_metrics};
use common::*;
use rand::{rngs::StdRng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DAEMON_ENV: &str = "SHOAL_TIERS_DAEMON";

/// One test at a time: each runs several processes on two cores.
static SERIAL: Mutex<()> = Mutex::new(());

/// Daemon mode: runs the collector daemon with the arguments in
/// `DAEMON_ENV` (separated by `\x1f`) until it is signalled.
#[test]
fn daemon_process_entry() {
    let Ok(args) = std::env::var(DAEMON_ENV) else { return };
    let argv = std::iter::once("shoal-collector".to_string()).chain(args.split('\x1f').map(str::to_string));
    let code = shoal_collector::daemon::run(argv);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

/// A collector daemon in a child process, with its TOML file.
struct Daemon {
    name: String,
    child: Option<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    config: PathBuf,
    _dir: Arc<TempDir>,
}

impl Daemon {
    /// Writes `toml` (plus the listen addresses and `data_dir`) to a file
    /// and starts the daemon on it.
    fn start(name: &str, dir: &Arc<TempDir>, toml: &str) -> Daemon {
        let (grpc, http) = (free_addr(), free_addr());
        let config = dir.0.join(format!("{name}.toml"));
        let data = dir.0.join(format!("{name}.data"));
        let head = format!(
            "grpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\ninterval_secs = 1\nsummary_window_secs = 3600\n\
             shutdown_grace_ms = 1000\ndata_dir = \"{}\"\n",
            data.display()
        );
        std::fs::write(&config, format!("{head}{toml}")).unwrap();
        let mut d = Daemon { name: name.into(), child: None, grpc, http, config, _dir: dir.clone() };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let args = format!("--config\x1f{}", self.config.display());
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["daemon_process_entry", "--exact", "--nocapture", "--test-threads=1"])
            .env(DAEMON_ENV, args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("http://{}/healthz", self.http);
        wait_for(Duration::from_secs(30), || ureq::get(&url).call().ok().map(|_| ()))
            .unwrap_or_else(|| panic!("{} did not come up", self.name));
    }

    fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").args([signal, &pid.to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL, then the same daemon on the same data dir.
    fn kill9_and_restart(&mut self, down_for: Duration) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// SIGTERM and wait (the final forward and checkpoint happen).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.http))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Every sample of family `name` on a text page: labels -> value.
fn samples(text: &str, name: &str) -> HashMap<BTreeMap<String, String>, f64> {
    let mut out = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => {
                let end = r.rfind('}').unwrap();
                (&r[..end], r[end + 1..].trim())
            }
            None if rest.starts_with(' ') => ("", rest.trim()),
            None => continue,
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").unwrap();
            map.insert(k.to_string(), v.trim_end_matches('"').to_string());
        }
        out.insert(map, value.parse::<f64>().unwrap());
    }
    out
}

fn sdk(collector: &str) -> shoal::Shoal {
    shoal::Shoal::builder()
        .service("api")
        .collector(collector)
        .flush_interval(Duration::from_millis(200))
        .shutdown_timeout(Duration::from_secs(20))
        // Exact accounting: only what the test records travels.
        .send_own_metrics(false)
        .build()
        .unwrap()
}

/// What the SDKs recorded: counter totals per route, histogram samples per route.
#[derive(Default)]
struct Recorded {
    counters: BTreeMap<String, u64>,
    samples: BTreeMap<String, Vec<f64>>,
}

/// Records `rounds` rounds into every SDK: each round adds to every counter
/// route and a few histogram samples, pausing `pause` between rounds.
fn record(shoals: &[shoal::Shoal], routes: usize, rounds: usize, seed: u64, pause: Duration, into: &mut Recorded) {
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..rounds {
        for (i, s) in shoals.iter().enumerate() {
            for r in 0..routes {
                let by = ((round + i + r) % 5 + 1) as u64;
                s.counter("requests_total", &[("route", &r.to_string())]).increment(by);
                *into.counters.entry(r.to_string()).or_default() += by;
            }
            for r in 0..2 {
                let h = s.histogram("latency_seconds", &[("route", &r.to_string())]);
                for _ in 0..20 {
                    let v = lognormal(&mut rng, -4.0 + r as f64, 1.2);
                    h.record(v);
                    into.samples.entry(r.to_string()).or_default().push(v);
                }
            }
        }
        std::thread::sleep(pause);
    }
}

/// Waits until the shards together hold what was recorded (the sum of
/// `requests_total` and of `latency_seconds_count`); returns each shard's page.
fn converged(shards: &[&Daemon], recorded: &Recorded) -> Vec<String> {
    let expected = (recorded.counters.values().sum::<u64>(), recorded.samples.values().map(Vec::len).sum::<usize>() as u64);
    let mut pages = Vec::new();
    let held = |pages: &[String]| {
        let sum = |name| pages.iter().flat_map(|p| samples(p, name).into_values()).sum::<f64>() as u64;
        (sum("requests_total"), sum("latency_seconds_count"))
    };
    let ok = wait_for(Duration::from_secs(60), || {
        pages = shards.iter().map(|s| s.metrics()).collect();
        (held(&pages) == expected).then_some(())
    });
    assert!(ok.is_some(), "the shards hold (requests, samples) {:?}, {expected:?} were recorded", held(&pages));
    pages
}

/// received = merged + duplicate + unknown_refs + rejected, in values.
fn collector_balances(page: &str, who: &str) {
    let one = |name: &str| samples(page, name).values().sum::<f64>();
    let received = one("shoal_collector_values_received_total");
    let accounted = one("shoal_collector_values_merged_total")
        + one("shoal_collector_values_duplicate_total")
        + one("shoal_collector_values_unknown_refs_total")
        + one("shoal_collector_values_rejected_total");
    assert_eq!(received, accounted, "{who}: received {received} != merged + duplicate + unknown + rejected {accounted}");
    assert_eq!(one("shoal_collector_values_rejected_total"), 0.0, "{who} rejected values");
}

/// The forwarder of an edge: taken = acknowledged + dropped + pending.
fn forwarder_balances(page: &str, who: &str) -> f64 {
    let one = |name: &str| samples(page, name).values().sum::<f64>();
    let taken = one("shoal_collector_forward_values_taken_total");
    let acknowledged = one("shoal_collector_forward_values_acknowledged_total");
    let dropped = one("shoal_collector_forward_values_dropped_total");
    let pending = one("shoal_collector_forward_pending_values");
    assert_eq!(taken, acknowledged + dropped + pending, "{who}: forwarder taken != acknowledged + dropped + pending");
    assert_eq!(dropped, 0.0, "{who}: the forwarder dropped values");
    acknowledged
}

fn config_upstream(shards: &[&Daemon]) -> String {
    let urls: Vec<String> = shards.iter().map(|s| format!("\"{}\"", s.grpc_url())).collect();
    format!("upstream = [{}]\n", urls.join(", "))
}

#[test]
fn two_edges_forward_exactly_once_to_two_shards_through_a_sigkill() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Arc::new(TempDir::new("tiers"));
    let shards = [Daemon::start("global-0", &dir, ""), Daemon::start("global-1", &dir, "")];
    let shard_refs: Vec<&Daemon> = shards.iter().collect();
    let edge_config = format!("{}[upstream_labels]\ntier = \"edge\"\n", config_upstream(&shard_refs));
    let mut edges = [Daemon::start("edge-0", &dir, &edge_config), Daemon::start("edge-1", &dir, &edge_config)];
    let shoals: Vec<shoal::Shoal> = (0..20).map(|i| sdk(&edges[i % 2].grpc_url())).collect();
    let routes = 40;
    let mut recorded = Recorded::default();
    record(&shoals, routes, 15, 1, Duration::from_millis(100), &mut recorded);
    // Mid-run, while both tiers are busy: kill -9 an edge, restart it on its data dir.
    edges[0].kill9_and_restart(Duration::from_millis(300));
    record(&shoals, routes, 15, 2, Duration::from_millis(100), &mut recorded);
    for s in &shoals {
        s.shutdown().expect("every SDK's deltas acknowledged by its edge");
    }
    let pages = converged(&shard_refs, &recorded);

    // Every series on exactly one shard; counter totals exact per series.
    let mut owner: HashMap<String, usize> = HashMap::new();
    for (i, page) in pages.iter().enumerate() {
        for (labels, value) in samples(page, "requests_total") {
            assert_eq!(labels.get("tier").map(String::as_str), Some("edge"), "the edges' upstream label: {labels:?}");
            let route = labels["route"].clone();
            assert!(owner.insert(route.clone(), i).is_none(), "route {route} is on two shards");
            assert_eq!(value as u64, recorded.counters[&route], "requests_total{{route={route}}} on shard {i}");
        }
    }
    assert_eq!(owner.len(), routes, "every series is on a shard");
    let per_shard: Vec<usize> = (0..2).map(|i| owner.values().filter(|s| **s == i).count()).collect();
    assert!(per_shard.iter().all(|n| *n > 0), "both shards own series: {per_shard:?}");

    // Cluster quantiles through two tiers: within 1% of exact.
    for (route, values) in &mut recorded.samples {
        values.sort_by(f64::total_cmp);
        let (page, count) = pages
            .iter()
            .find_map(|p| samples(p, "latency_seconds_count").into_iter().find(|(l, _)| &l["route"] == route).map(|(_, c)| (p, c)))
            .unwrap_or_else(|| panic!("latency_seconds{{route={route}}} on no shard"));
        assert_eq!(count as usize, values.len(), "latency_seconds_count{{route={route}}}");
        for q in [0.5, 0.9, 0.99, 0.999] {
            let got = samples(page, "latency_seconds")
                .into_iter()
                .find(|(l, _)| &l["route"] == route && l.get("quantile").map(String::as_str) == Some(&q.to_string()))
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no q{q} for route {route}"));
            let exact = exact_quantile(values, q);
            assert!((got - exact).abs() <= 0.01 * exact, "route {route} q{q}: {got} vs exact {exact}");
        }
    }

    // Conservation, tier by tier. The restarted edge's forwarder counts
    // from its restart (what it resumed from the state file included).
    // The edge that was not killed forwarded every value it merged, once
    // (its forwarder counts an acknowledgement just after the shard merged).
    let forwarded_all = |page: &String| {
        let merged = samples(page, "shoal_collector_values_merged_total").values().sum::<f64>();
        (samples(page, "shoal_collector_forward_values_acknowledged_total").values().sum::<f64>() == merged).then_some(())
    };
    let mut edge_pages: Vec<String> = Vec::new();
    let settled = wait_for(Duration::from_secs(20), || {
        edge_pages = edges.iter().map(Daemon::metrics).collect();
        forwarded_all(&edge_pages[1])
    });
    assert!(settled.is_some(), "edge-1 forwarded a different number of values than it merged:\n{}", edge_pages[1]);
    for (i, page) in edge_pages.iter().enumerate() {
        collector_balances(page, &format!("edge-{i}"));
        forwarder_balances(page, &format!("edge-{i}"));
    }
    for (i, page) in pages.iter().enumerate() {
        collector_balances(page, &format!("global-{i}"));
    }
    for e in &mut edges {
        e.stop();
    }
}

#[test]
fn a_third_shard_by_sighup_moves_about_a_third_and_the_tsdb_totals_stay_exact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let vm = victoria_metrics();
    let dir = Arc::new(TempDir::new("tiers-sighup"));
    let write = format!("{}/api/v1/write", vm.base);
    let shard = |i: usize| {
        let toml = format!("[[remote_write]]\nurl = \"{write}\"\n[external_labels]\nshard = \"{i}\"\n");
        Daemon::start(&format!("global-{i}"), &dir, &toml)
    };
    let shards = [shard(0), shard(1), shard(2)];
    let two: Vec<&Daemon> = shards[..2].iter().collect();
    let all: Vec<&Daemon> = shards.iter().collect();
    let mut edge = Daemon::start("edge", &dir, &config_upstream(&two));
    let shoals: Vec<shoal::Shoal> = (0..10).map(|_| sdk(&edge.grpc_url())).collect();
    let routes = 300;
    let mut recorded = Recorded::default();
    record(&shoals, routes, 10, 3, Duration::from_millis(100), &mut recorded);
    converged(&two, &recorded);

    // The third shard joins: the edge's file names it, SIGHUP.
    let text = std::fs::read_to_string(&edge.config).unwrap().replace(&config_upstream(&two), &config_upstream(&all));
    std::fs::write(&edge.config, text).unwrap();
    edge.signal("-HUP");
    wait_for(Duration::from_secs(30), || {
        record(&shoals, routes, 1, 4, Duration::from_millis(100), &mut recorded);
        (!samples(&shards[2].metrics(), "requests_total").is_empty()).then_some(())
    })
    .expect("the third shard receives series after the SIGHUP");
    record(&shoals, routes, 10, 5, Duration::from_millis(100), &mut recorded);
    for s in &shoals {
        s.shutdown().unwrap();
    }
    let expected: u64 = recorded.counters.values().sum();
    let pages = converged(&all, &recorded);
    let on_third: BTreeSet<String> = samples(&pages[2], "requests_total").into_keys().map(|l| l["route"].clone()).collect();
    let moved = on_third.len() as f64 / routes as f64;
    eprintln!("series moved to the third shard: {} of {routes} ({moved:.3})", on_third.len());
    assert!((0.2..=0.45).contains(&moved), "fraction moved {moved}");
    for route in &on_third {
        let elsewhere = pages[..2].iter().filter(|p| samples(p, "requests_total").keys().any(|l| &l["route"] == route)).count();
        assert_eq!(elsewhere, 1, "a moved series keeps its history on exactly one old shard: route {route}");
    }

    // One TSDB behind the shards: the totals over the run are exact.
    let flush = || {
        let _ = ureq::get(format!("{}/internal/force_flush", vm.base)).call();
    };
    let total = vm.query_value_until("sum(last_over_time(requests_total[1h]))", None, flush, |v| v as u64 == expected);
    assert_eq!(total as u64, expected);
    let increase = vm.query_value("sum(increase(requests_total[1h]))", None).unwrap_or(f64::NAN);
    eprintln!("VictoriaMetrics: sum(increase(requests_total[1h])) = {increase}, recorded {expected}");
    assert_eq!(increase as u64, expected, "sum(increase(...)) over the run across the shards");
    edge.stop();
}

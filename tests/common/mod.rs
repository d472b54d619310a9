//! Helpers shared by the end-to-end tests: start a collector on ephemeral
//! loopback ports, scrape it over HTTP, read values out of the exposition.
#![allow(dead_code)]

use shoal_collector::{Collector, Config};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A collector on 127.0.0.1 with ephemeral ports (or the given gRPC address).
pub fn start_collector(grpc: Option<SocketAddr>, tweak: impl FnOnce(&mut Config)) -> Collector {
    let mut config = Config {
        grpc_listen: grpc.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        // Tests look at everything recorded: a window wider than any test.
        summary_window_secs: 3600,
        ..Config::default()
    };
    tweak(&mut config);
    // A just-freed port can take a moment to be bindable again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Collector::start(config.clone()) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("collector start retry: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("collector did not start: {e}"),
        }
    }
}

/// A loopback address nothing listens on (yet).
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// GET a URL, returning the body.
pub fn http_get(url: &str) -> String {
    let mut response = ureq::get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    response.body_mut().read_to_string().unwrap()
}

/// GET `/metrics` of a collector.
pub fn scrape(collector: &Collector) -> String {
    http_get(&format!("http://{}/metrics", collector.http_addr()))
}

/// Value of the sample line that starts with exactly `series` followed by a space.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok()
    })
}

/// Nearest-rank quantile of raw samples.
pub fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len() as u64;
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    sorted[(rank - 1) as usize]
}

/// Polls `f` until it returns Some or the timeout passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

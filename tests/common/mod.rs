//! Helpers shared by the end-to-end tests: start a collector on ephemeral
//! loopback ports, scrape it over HTTP, read values out of the exposition.
#![allow(dead_code)]

#[path = "../support/real_servers.rs"]
pub mod real_servers;

#[path = "../support/pki.rs"]
pub mod pki;

#[allow(unused_imports)] // each test uses some
pub use real_servers::{exact_quantile, find_binary, ServerProcess, TempDir};
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

// ---- Real Prometheus tooling (prometheus_e2e.rs, promtool_lint.rs) ----

/// Runs `promtool check metrics` on an exposition; returns its exit status
/// and everything it printed (lint problems, parse errors).
pub fn promtool_check_metrics(text: &str) -> (std::process::ExitStatus, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let promtool = find_binary("promtool");
    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    // Write from a thread: promtool may answer before reading everything.
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status, printed)
}

/// A real `prometheus` server on 127.0.0.1 (free port, temporary storage)
/// scraping `targets` every second; killed by pid on drop (see
/// [`ServerProcess`], which also guards against the test process dying).
pub struct PrometheusServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    server: ServerProcess,
}

impl PrometheusServer {
    /// Starts Prometheus and waits (bounded) until it reports ready.
    pub fn start(targets: &[SocketAddr]) -> PrometheusServer {
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let server = ServerProcess::start(
            "prometheus",
            |dir, listen| {
                let config = dir.join("prometheus.yml");
                std::fs::write(
                    &config,
                    format!(
                        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                         scrape_configs:\n  - job_name: shoal\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
                        targets.join(", ")
                    ),
                )
                .unwrap();
                vec![
                    format!("--config.file={}", config.display()),
                    format!("--storage.tsdb.path={}", dir.join("data").display()),
                    format!("--web.listen-address={listen}"),
                    "--log.level=warn".into(),
                ]
            },
            "/-/ready",
        );
        PrometheusServer { url: server.base.clone(), server }
    }

    /// Pid of the server process.
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// What the server logged so far (for failure messages).
    pub fn logs(&self) -> String {
        self.server.logs()
    }

    /// Runs an instant PromQL query; returns the `data.result` array.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        self.server.query(promql, None)
    }

    /// GET a path of the server's HTTP API as JSON (e.g. `/api/v1/targets`).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        self.server.get_json(path)
    }

    /// The value of a one-series instant query, as Prometheus printed it.
    pub fn query_one(&self, promql: &str) -> Option<String> {
        let result = self.query(promql);
        match result.as_slice() {
            [one] => one["value"][1].as_str().map(str::to_string),
            [] => None,
            many => panic!("query {promql:?} returned {} series, expected one: {many:?}", many.len()),
        }
    }
}

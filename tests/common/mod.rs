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

// ---- Real Prometheus tooling (prometheus_e2e.rs, promtool_lint.rs) ----

/// Path of an executable on `PATH`. Panics with an actionable message when it
/// is missing: these tests exist to run the real binaries, so they fail rather
/// than skip (`scripts/test` installs Debian's `prometheus` package, which brings
/// both `prometheus` and `promtool`).
pub fn require_tool(name: &str) -> std::path::PathBuf {
    let found = std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join(name)).find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` not found on PATH. This test runs the real Prometheus tools and does not skip: \
             install Debian's `prometheus` package (run scripts/test, which installs it)."
        )
    })
}

/// Runs `promtool check metrics` on an exposition; returns its exit status
/// and everything it printed (lint problems, parse errors).
pub fn promtool_check_metrics(text: &str) -> (std::process::ExitStatus, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let promtool = require_tool("promtool");
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

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory whose name starts with `prefix`.
    pub fn new(prefix: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let path = std::env::temp_dir().join(format!("{prefix}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A real `prometheus` server on 127.0.0.1 (free port, temporary storage)
/// scraping `targets` every second. Dropping it (also while a test panics)
/// kills the server by pid and removes its storage. A watchdog shell, also
/// killed on drop, kills the server should this test process die without
/// unwinding (SIGKILL, abort), so no server outlives its test, and removes
/// its storage.
pub struct PrometheusServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    agent: ureq::Agent,
    child: std::process::Child,
    watchdog: Option<std::process::Child>,
    log: std::path::PathBuf,
    // Declared last: removed after the processes are gone.
    dir: TempDir,
}

impl PrometheusServer {
    /// Starts Prometheus and waits (bounded) until it reports ready.
    pub fn start(targets: &[SocketAddr]) -> PrometheusServer {
        let prometheus = require_tool("prometheus");
        // The free port can be taken between our probe and Prometheus's bind.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match PrometheusServer::try_start(&prometheus, targets) {
                Ok(server) => return server,
                Err(logs) if attempts < 3 && logs.contains("address already in use") => continue,
                Err(logs) => panic!("{logs}"),
            }
        }
    }

    fn try_start(prometheus: &std::path::Path, targets: &[SocketAddr]) -> Result<PrometheusServer, String> {
        use std::process::{Command, Stdio};
        let dir = TempDir::new("shoal-prometheus");
        let config = dir.0.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: shoal\n    honor_labels: true\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let log = dir.0.join("prometheus.log");
        let listen = free_addr();
        let child = Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.0.join("prometheus.stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", prometheus.display()));
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null; sleep 1; rm -rf '{}'",
                std::process::id(),
                child.id(),
                dir.0.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        let agent = ureq::Agent::new_with_config(
            ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).http_status_as_error(false).build(),
        );
        let mut server = PrometheusServer { url: format!("http://{listen}"), agent, child, watchdog, log, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("prometheus exited during startup ({status}):\n{}", server.logs()));
            }
            if let Ok(r) = server.agent.get(&format!("{}/-/ready", server.url)).call() {
                if r.status() == 200 {
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("prometheus not ready within 60s:\n{}", server.logs()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pid of the server process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far (for failure messages).
    pub fn logs(&self) -> String {
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.log), read(&self.dir.0.join("prometheus.stderr.log")))
    }

    /// Runs an instant PromQL query; returns the `data.result` array.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let url = format!("{}/api/v1/query", self.url);
        let mut response = self.agent.get(&url).query("query", promql).call().unwrap_or_else(|e| panic!("query {promql:?}: {e}"));
        let text = response.body_mut().read_to_string().unwrap();
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("query {promql:?}: {e}: {text}"));
        assert_eq!(body["status"], "success", "query {promql:?}: {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// GET a path of the server's HTTP API as JSON (e.g. `/api/v1/targets`).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.url);
        let mut response = self.agent.get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
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

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this pid; wait reaps it.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(w) = &mut self.watchdog {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

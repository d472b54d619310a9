//! Real servers for end-to-end tests (Prometheus, VictoriaMetrics): started
//! on 127.0.0.1 with temporary storage, queried over their HTTP API, killed
//! by pid and reaped on drop (also when a test panics).
//!
//! Shared by the suite's tests and the collector's (`#[path]` include), so
//! that there is one way to run a real TSDB in a test. A missing binary fails
//! the test with an install hint: these tests exist to run the real thing.
#![allow(dead_code)] // each including test uses part of it

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A new empty directory whose name starts with `tag`.
    pub fn new(tag: &str) -> TempDir {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("shoal-{tag}-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Path of an executable on `PATH` (or in /usr/bin, /usr/sbin).
pub fn find_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: these tests run the real server and do not skip. Install it \
                 (Debian: apt-get install prometheus victoria-metrics chromium), or run scripts/test, which does."
            )
        })
}

/// A free loopback address (the port may be taken again before use: callers
/// that bind late retry).
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// A server process with its own temporary directory. Dropping it (also
/// while a test panics) kills the server by pid and reaps it. A watchdog
/// shell, killed on drop too, kills the server should the test process die
/// without unwinding (SIGKILL, abort), so no server outlives its test.
/// Fields drop in order: the process dies before its directory is removed.
pub struct ServerProcess {
    child: Child,
    watchdog: Option<Child>,
    /// `http://127.0.0.1:PORT` (`https` with [`ServerProcess::start_checked`]).
    pub base: String,
    log: PathBuf,
    dir: TempDir,
}

impl Drop for ServerProcess {
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

impl ServerProcess {
    /// Starts `binary` with `args(dir, listen address)` and waits (at most
    /// 60 s) until `GET ready_path` answers. The free port can be taken
    /// between the probe and the server's bind: that is retried.
    pub fn start(binary: &str, args: impl Fn(&Path, SocketAddr) -> Vec<String>, ready_path: &str) -> ServerProcess {
        ServerProcess::start_checked(binary, args, "http", |base| ureq::get(format!("{base}{ready_path}")).call().is_ok())
    }

    /// [`ServerProcess::start`] for a server on `scheme` (`https` for one
    /// started with TLS), ready once `ready(base)` says so.
    pub fn start_checked(
        binary: &str,
        args: impl Fn(&Path, SocketAddr) -> Vec<String>,
        scheme: &str,
        ready: impl Fn(&str) -> bool,
    ) -> ServerProcess {
        let path = find_binary(binary);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match ServerProcess::try_start(&path, &args, scheme, &ready) {
                Ok(server) => return server,
                Err(log) if attempts < 3 && log.contains("address already in use") => continue,
                Err(log) => panic!("{binary}: {log}"),
            }
        }
    }

    fn try_start(
        path: &Path,
        args: &impl Fn(&Path, SocketAddr) -> Vec<String>,
        scheme: &str,
        ready: &impl Fn(&str) -> bool,
    ) -> Result<ServerProcess, String> {
        let name = path.file_name().map_or_else(|| "server".into(), |n| n.to_string_lossy().into_owned());
        let dir = TempDir::new(&name);
        let addr = free_addr();
        let log = dir.0.join("server.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(path)
            .args(args(&dir.0, addr))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", path.display()));
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
        let mut server = ServerProcess { child, watchdog, base: format!("{scheme}://{addr}"), log, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited during startup ({status}); log:\n{}", server.logs()));
            }
            if ready(&server.base) {
                return Ok(server);
            }
            if Instant::now() >= deadline {
                return Err(format!("not ready after 60 s; log:\n{}", server.log_tail()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` of the server's HTTP API, as JSON (e.g. `/api/v1/targets`).
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let url = format!("{}{path}", self.base);
        let body = ureq::get(&url).call().unwrap_or_else(|e| panic!("GET {url}: {e}")).body_mut().read_to_string().unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }

    /// The server's temporary directory.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// Pid of the server process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 30 lines the server logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = self.logs();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `data.result` of an instant PromQL / MetricsQL query, at `at_ms`
    /// (Unix ms) or now.
    pub fn query(&self, query: &str, at_ms: Option<i64>) -> Vec<serde_json::Value> {
        let mut request = ureq::get(format!("{}/api/v1/query", self.base)).query("query", query);
        if let Some(ms) = at_ms {
            request = request.query("time", format!("{:.3}", ms as f64 / 1000.0));
        }
        let body =
            request.call().unwrap_or_else(|e| panic!("query {query}: {e}; log:\n{}", self.log_tail())).body_mut().read_to_string().unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {query}: {e}: {body}"));
        assert_eq!(v["status"], "success", "{query}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// The value of a query that names at most one series; None while it
    /// names none.
    pub fn query_value(&self, query: &str, at_ms: Option<i64>) -> Option<f64> {
        let result = self.query(query, at_ms);
        assert!(result.len() <= 1, "{query}: {result:?}");
        result.first().map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap())
    }

    /// Polls `query_value` (calling `before` first each time) until it
    /// answers a value `accept` takes; fails after 30 s.
    pub fn query_value_until(&self, query: &str, at_ms: Option<i64>, before: impl Fn(), accept: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            before();
            last = self.query_value(query, at_ms);
            if let Some(v) = last.filter(|v| accept(*v)) {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{query}: last answer {last:?} after 30 s; log:\n{}", self.log_tail());
    }

    /// Polls a query that names at most one series until its result
    /// satisfies `done`; fails after 60 s.
    pub fn query_until(&self, query: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        while Instant::now() < deadline {
            let result = self.query(query, None);
            assert!(result.len() <= 1, "{query}: {result:?}");
            last = result.into_iter().next();
            if let Some(v) = last.as_ref().filter(|v| done(v)) {
                return v.clone();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{query}: last answer {last:?} after 60 s; log:\n{}", self.log_tail());
    }
}

/// Prometheus 2.42 as a remote-write receiver, native histograms on.
pub fn prometheus_receiver() -> ServerProcess {
    ServerProcess::start(
        "prometheus",
        |dir, addr| {
            let config = dir.join("prometheus.yml");
            std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--web.enable-remote-write-receiver".into(),
                "--enable-feature=native-histograms".into(),
            ]
        },
        "/-/ready",
    )
}

/// VictoriaMetrics 1.79 (single node); query after `/internal/force_flush`.
pub fn victoria_metrics() -> ServerProcess {
    ServerProcess::start(
        "victoria-metrics",
        |dir, addr| {
            vec![
                format!("-httpListenAddr={addr}"),
                format!("-storageDataPath={}", dir.join("data").display()),
                "-search.latencyOffset=1s".into(),
            ]
        },
        "/health",
    )
}

/// What an in-test receiver saw, and what it answered.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answer: &'static str,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/1.1 receiver on an ephemeral port: the n-th request gets the
/// n-th canned response (the last one repeats). Keep-alive is honoured.
pub fn receiver(responses: Vec<&'static str>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<Received>>> = Arc::default();
    let log = seen.clone();
    let answer = move |n: usize| responses[(n - 1).min(responses.len() - 1)];
    serve(listener, log, Arc::new(answer));
    (url, seen)
}

/// `answer(n)` is the response to the n-th request (from 1).
pub type Answer = Arc<dyn Fn(usize) -> &'static str + Send + Sync>;

pub fn serve(listener: TcpListener, log: Arc<Mutex<Vec<Received>>>, answer: Answer) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let log = log.clone();
            let answer = answer.clone();
            std::thread::spawn(move || serve_connection(stream, &log, &*answer));
        }
    });
}

fn serve_connection(stream: TcpStream, log: &Mutex<Vec<Received>>, answer: &(dyn Fn(usize) -> &'static str + Send + Sync)) {
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let len: usize = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response = {
            let mut log = log.lock().unwrap();
            let response = answer(log.len() + 1);
            log.push(Received { headers, body, answer: response });
            response
        };
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

pub const R500: &str = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops";
pub const R204: &str = "HTTP/1.1 204 No Content\r\n\r\n";
pub const R400: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\n\r\nout of order";
pub const R429: &str = "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";

/// A log-normal sample (latency-like).
pub fn lognormal(rng: &mut impl rand::Rng, mu: f64, sigma: f64) -> f64 {
    // Box-Muller.
    let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen_range(0.0..1.0));
    (mu + sigma * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()).exp()
}

/// The exact `q` quantile of sorted samples (nearest rank, as the sketch).
pub fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// `actual` within `tolerance` (relative) of `expected`.
pub fn within(actual: f64, expected: f64, tolerance: f64) -> bool {
    ((actual - expected) / expected).abs() <= tolerance
}

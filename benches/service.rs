//! Cost inside a real service (issue 17): an axum HTTP service on loopback
//! whose handler records 3 counters and 2 histograms with labels per
//! request, instrumented by
//!
//! - (a) nothing (the values are computed and thrown away),
//! - (b) shoal behind the `metrics` facade macros (`Shoal::install`),
//! - (b2) shoal's own handles, resolved once at start-up,
//! - (c) metrics-exporter-prometheus behind the same facade macros,
//! - (d) the `prometheus` crate (`IntCounterVec` / `HistogramVec`,
//!   `with_label_values` per request),
//!
//! driven by `wrk` (Debian package `wrk`) for a fixed request count. Reports
//! requests/s and the server process' CPU time per request for each variant,
//! rounds interleaved (a, b, b2, c, d, a, b, ...), medians per variant.
//!
//! Run: `cargo bench --bench service` (defaults: 300,000 requests per run
//! after a 30,000-request warm-up, 7 rounds, `wrk -t1 -c16`), or e.g.
//! `cargo bench --bench service -- --requests 100000 --rounds 3`.
//!
//! How it measures:
//!
//! - Each run is a fresh child process (this binary re-executed with
//!   `--serve VARIANT`): a global `metrics` recorder can be installed once per
//!   process, and the child's CPU time (`getrusage(RUSAGE_SELF)`, all its
//!   threads) is the server's alone. The server runs on a multi-thread tokio
//!   runtime with 1 worker thread; `wrk -t1` gets the other core of the
//!   2-core machine (16 keep-alive connections keep the worker busy). The
//!   server process is pinned to the first CPU this process may use and wrk
//!   to the second (`--no-pin` to let the scheduler place them), so every
//!   run has the same placement. Runs of one variant still fall into modes
//!   up to ~25 % apart in CPU per request (pinned or not, on the 2-vCPU
//!   development VM), hence interleaved rounds, medians, and the median of
//!   per-round ratios to (a) beside the ratio of medians.
//! - Each run's line shows the share of the machine other processes took
//!   meanwhile (`/proc/stat` busy time minus the server's and wrk's), so runs
//!   disturbed by a parallel build are visible.
//! - Fixed request count: a wrk Lua script counts responses, stops its thread
//!   at N and prints the time from the first to the N-th response (req/s =
//!   (N-1) / that time); the bench then interrupts wrk (SIGINT) for its
//!   summary (errors, latency percentiles). CPU per request = the child's CPU
//!   time across the wrk run / requests the handler served in it (N plus the
//!   at most `connections - 1` still in flight when wrk stopped).
//! - No variant exports during the measurement: shoal has no collector (no
//!   flusher thread), metrics-exporter-prometheus' recorder is built without
//!   its HTTP listener or upkeep task, the `prometheus` registry is not
//!   scraped. After the run each instrumented variant renders its Prometheus
//!   text and the bench checks every counter and histogram count against the
//!   handler's own tally (exact; any loss fails the bench).
//!
//! Under `cargo test --benches` (cargo passes no `--bench`) it runs a smoke
//! round instead: every variant, 2,000 requests, checks included; through
//! `wrk` when it is installed, otherwise through a small built-in keep-alive
//! client.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use clap::{Parser, ValueEnum};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The one route wrk hits (`/api/items/42`).
const ROUTE: &str = "/api/items/{id}";
/// Requests in the smoke round of test mode.
const SMOKE_REQUESTS: u64 = 2_000;

#[derive(Parser, Debug)]
#[command(about = "HTTP service on loopback: instrumentation cost per request (needs wrk)")]
struct Args {
    /// Requests per measured run (each run also gets a warm-up of a tenth of this).
    #[arg(long, default_value_t = 300_000)]
    requests: u64,
    /// Interleaved rounds (every variant once per round); medians are reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// wrk connections (one wrk thread).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Variants to run, in this order within each round.
    #[arg(long, value_delimiter = ',', default_values_t = Variant::ALL)]
    variants: Vec<Variant>,
    /// Do not pin the server to one CPU and wrk to another (by default: the
    /// first two CPUs this process may run on).
    #[arg(long)]
    no_pin: bool,
    /// Internal: serve one variant (the child process).
    #[arg(long, hide = true)]
    serve: Option<Variant>,
    /// Internal: the CPU the child pins itself to.
    #[arg(long, hide = true)]
    cpu: Option<usize>,
    /// Passed by `cargo bench`: run the benchmark (otherwise: the smoke test).
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// (a) no instrumentation.
    None,
    /// (b) shoal through the `metrics` facade macros.
    Shoal,
    /// (b2) shoal handles resolved once.
    ShoalHandles,
    /// (c) metrics-exporter-prometheus through the facade macros.
    Mep,
    /// (d) the `prometheus` crate.
    Prometheus,
}

impl Variant {
    const ALL: [Variant; 5] = [Variant::None, Variant::Shoal, Variant::ShoalHandles, Variant::Mep, Variant::Prometheus];

    fn title(self) -> &'static str {
        match self {
            Variant::None => "(a) none",
            Variant::Shoal => "(b) shoal, `metrics` macros",
            Variant::ShoalHandles => "(b2) shoal handles",
            Variant::Mep => "(c) metrics-exporter-prometheus 0.18",
            Variant::Prometheus => "(d) prometheus 0.14",
        }
    }

    fn arg(self) -> String {
        self.to_possible_value().expect("no skipped variants").get_name().to_string()
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.arg())
    }
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.iter().any(|a| a == "--list") {
        // `cargo test --benches -- --list`: nothing to list, nothing to run.
        return ExitCode::SUCCESS;
    }
    let bench = raw.iter().any(|a| a == "--bench");
    let args = match Args::try_parse_from(&raw) {
        Ok(args) => args,
        Err(e) if !bench && !raw.iter().any(|a| a == "--serve") => {
            // A test harness' flags (`--nocapture`, a filter, ...): smoke test.
            eprintln!("service bench: ignoring the arguments ({}); running the smoke test", e.kind());
            Args::parse_from(["service"])
        }
        Err(e) => e.exit(),
    };
    let result = match args.serve {
        Some(variant) => child::serve(variant, args.cpu),
        None if args.bench => run_bench(&args),
        None => smoke(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The service (child process).
// ---------------------------------------------------------------------------

/// What the handler observed about one request: the same values for every
/// variant; only what is done with them differs.
#[derive(Debug)]
struct Observed {
    method: &'static str,
    route: &'static str,
    status: &'static str,
    request_bytes: u64,
    response_bytes: u64,
    duration_seconds: f64,
}

/// The handler's own exact tally, kept in every variant (the reference for
/// the correctness check): requests started and served (a request is in the
/// handler while they differ), request and response bytes.
static STARTED: AtomicU64 = AtomicU64::new(0);
static SERVED: AtomicU64 = AtomicU64::new(0);
static REQUEST_BYTES: AtomicU64 = AtomicU64::new(0);
static RESPONSE_BYTES: AtomicU64 = AtomicU64::new(0);

trait Instrumentation: Send + Sync + 'static {
    fn record(&self, o: &Observed);
    /// The Prometheus text a scrape would get (`None`: nothing recorded).
    fn render(&self) -> Option<String>;
}

/// The 3 counters and 2 histograms through the `metrics` facade: (b) and
/// (c) run exactly this; only the installed global recorder differs.
fn record_facade(o: &Observed) {
    metrics::counter!("http_requests_total", "method" => o.method, "route" => o.route, "status" => o.status).increment(1);
    metrics::counter!("http_request_bytes_total", "route" => o.route).increment(o.request_bytes);
    metrics::counter!("http_response_bytes_total", "route" => o.route).increment(o.response_bytes);
    metrics::histogram!("http_request_duration_seconds", "method" => o.method, "route" => o.route).record(o.duration_seconds);
    metrics::histogram!("http_response_size_bytes", "route" => o.route).record(o.response_bytes as f64);
}

mod child {
    use super::*;

    /// (a): the values are computed, then only made opaque to the optimiser.
    struct Nothing;

    impl Instrumentation for Nothing {
        fn record(&self, o: &Observed) {
            std::hint::black_box(o);
        }
        fn render(&self) -> Option<String> {
            None
        }
    }

    /// (b): shoal installed as the global `metrics` recorder, no collector.
    struct ShoalFacade(shoal::Shoal);

    impl Instrumentation for ShoalFacade {
        fn record(&self, o: &Observed) {
            record_facade(o);
        }
        fn render(&self) -> Option<String> {
            Some(self.0.render_prometheus())
        }
    }

    /// (b2): shoal's handles, resolved once per label set the handler can
    /// produce (this route answers GET with 200 or 404).
    struct ShoalHandles {
        shoal: shoal::Shoal,
        requests_ok: shoal::Counter,
        requests_not_found: shoal::Counter,
        request_bytes: shoal::Counter,
        response_bytes: shoal::Counter,
        duration: shoal::Histogram,
        size: shoal::Histogram,
    }

    impl ShoalHandles {
        fn new(shoal: shoal::Shoal) -> Self {
            let request = |status| shoal.counter("http_requests_total", &[("method", "GET"), ("route", ROUTE), ("status", status)]);
            ShoalHandles {
                requests_ok: request("200"),
                requests_not_found: request("404"),
                request_bytes: shoal.counter("http_request_bytes_total", &[("route", ROUTE)]),
                response_bytes: shoal.counter("http_response_bytes_total", &[("route", ROUTE)]),
                duration: shoal.histogram("http_request_duration_seconds", &[("method", "GET"), ("route", ROUTE)]),
                size: shoal.histogram("http_response_size_bytes", &[("route", ROUTE)]),
                shoal,
            }
        }
    }

    impl Instrumentation for ShoalHandles {
        fn record(&self, o: &Observed) {
            match o.status {
                "200" => self.requests_ok.increment(1),
                "404" => self.requests_not_found.increment(1),
                status => {
                    self.shoal.counter("http_requests_total", &[("method", o.method), ("route", o.route), ("status", status)]).increment(1)
                }
            }
            self.request_bytes.increment(o.request_bytes);
            self.response_bytes.increment(o.response_bytes);
            self.duration.record(o.duration_seconds);
            self.size.record(o.response_bytes as f64);
        }
        fn render(&self) -> Option<String> {
            Some(self.shoal.render_prometheus())
        }
    }

    /// (c): metrics-exporter-prometheus' recorder installed globally; its
    /// handle renders (histograms as summaries, its default).
    struct Mep(metrics_exporter_prometheus::PrometheusHandle);

    impl Instrumentation for Mep {
        fn record(&self, o: &Observed) {
            record_facade(o);
        }
        fn render(&self) -> Option<String> {
            Some(self.0.render())
        }
    }

    /// (d): the `prometheus` crate, label values looked up per request.
    struct Prom {
        registry: prometheus::Registry,
        requests: prometheus::IntCounterVec,
        request_bytes: prometheus::IntCounterVec,
        response_bytes: prometheus::IntCounterVec,
        duration: prometheus::HistogramVec,
        size: prometheus::HistogramVec,
    }

    impl Prom {
        fn new() -> Result<Self, prometheus::Error> {
            use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
            let registry = prometheus::Registry::new();
            let requests = IntCounterVec::new(Opts::new("http_requests_total", "Requests served"), &["method", "route", "status"])?;
            let request_bytes = IntCounterVec::new(Opts::new("http_request_bytes_total", "Request bytes"), &["route"])?;
            let response_bytes = IntCounterVec::new(Opts::new("http_response_bytes_total", "Response bytes"), &["route"])?;
            let duration = HistogramVec::new(
                HistogramOpts::new("http_request_duration_seconds", "Time to serve").buckets(prometheus::DEFAULT_BUCKETS.to_vec()),
                &["method", "route"],
            )?;
            let size = HistogramVec::new(
                HistogramOpts::new("http_response_size_bytes", "Response body size")
                    .buckets(prometheus::exponential_buckets(64.0, 2.0, 8)?),
                &["route"],
            )?;
            registry.register(Box::new(requests.clone()))?;
            registry.register(Box::new(request_bytes.clone()))?;
            registry.register(Box::new(response_bytes.clone()))?;
            registry.register(Box::new(duration.clone()))?;
            registry.register(Box::new(size.clone()))?;
            Ok(Prom { registry, requests, request_bytes, response_bytes, duration, size })
        }
    }

    impl Instrumentation for Prom {
        fn record(&self, o: &Observed) {
            self.requests.with_label_values(&[o.method, o.route, o.status]).inc();
            self.request_bytes.with_label_values(&[o.route]).inc_by(o.request_bytes);
            self.response_bytes.with_label_values(&[o.route]).inc_by(o.response_bytes);
            self.duration.with_label_values(&[o.method, o.route]).observe(o.duration_seconds);
            self.size.with_label_values(&[o.route]).observe(o.response_bytes as f64);
        }
        fn render(&self) -> Option<String> {
            prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).ok()
        }
    }

    fn instrumentation(variant: Variant) -> Result<Arc<dyn Instrumentation>, String> {
        // No collector: shoal records and aggregates in process, no flusher
        // thread runs (and the parent removed SHOAL_* from the environment).
        let shoal = || shoal::Shoal::builder().service("service-bench");
        Ok(match variant {
            Variant::None => Arc::new(Nothing),
            Variant::Shoal => Arc::new(ShoalFacade(shoal().install().map_err(|e| format!("shoal install: {e}"))?)),
            Variant::ShoalHandles => Arc::new(ShoalHandles::new(shoal().build().map_err(|e| format!("shoal build: {e}"))?)),
            Variant::Mep => {
                let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
                let handle = recorder.handle();
                metrics::set_global_recorder(recorder).map_err(|e| format!("metrics-exporter-prometheus: {e}"))?;
                Arc::new(Mep(handle))
            }
            Variant::Prometheus => Arc::new(Prom::new().map_err(|e| format!("prometheus: {e}"))?),
        })
    }

    #[derive(Clone)]
    struct App {
        instrumentation: Arc<dyn Instrumentation>,
    }

    /// A 64-bit mix of the request number: the synthetic per-request values.
    fn mix(mut x: u64) -> u64 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn method_label(m: &Method) -> &'static str {
        match *m {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            _ => "OTHER",
        }
    }

    fn status_label(s: StatusCode) -> &'static str {
        match s.as_u16() {
            200 => "200",
            404 => "404",
            _ => "other",
        }
    }

    /// Request line and headers as they came over the wire (approximately).
    fn request_bytes(method: &Method, uri: &Uri, headers: &HeaderMap) -> u64 {
        let line = method.as_str().len() + uri.path_and_query().map_or(1, |p| p.as_str().len()) + 12;
        let fields: usize = headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
        (line + fields + 2) as u64
    }

    async fn item(State(app): State<App>, method: Method, uri: Uri, headers: HeaderMap, Path(id): Path<String>) -> Response {
        let start = Instant::now();
        let n = STARTED.fetch_add(1, SeqCst);
        let r = mix(n);
        let (status, body) = match id.parse::<u64>() {
            Ok(id) => (
                StatusCode::OK,
                format!(
                    r#"{{"id":{id},"name":"item-{id}","price_cents":{},"note":"{}"}}"#,
                    id.wrapping_mul(37) % 10_000,
                    "x".repeat((r % 128) as usize)
                ),
            ),
            Err(_) => (StatusCode::NOT_FOUND, r#"{"error":"no such item"}"#.to_string()),
        };
        // The handler's own time plus a synthetic backend latency,
        // log-uniform over 100 µs .. 1 s (so histograms see a realistic
        // spread, not only sub-microsecond values).
        let backend = 1e-4 * 10f64.powf(4.0 * ((r >> 11) as f64 / (1u64 << 53) as f64));
        let o = Observed {
            method: method_label(&method),
            route: ROUTE,
            status: status_label(status),
            request_bytes: request_bytes(&method, &uri, &headers),
            response_bytes: body.len() as u64,
            duration_seconds: start.elapsed().as_secs_f64() + backend,
        };
        app.instrumentation.record(&o);
        REQUEST_BYTES.fetch_add(o.request_bytes, Relaxed);
        RESPONSE_BYTES.fetch_add(o.response_bytes, Relaxed);
        SERVED.fetch_add(1, SeqCst);
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }

    /// User and system CPU time of this whole process (all threads), µs.
    fn cpu_us() -> (u64, u64) {
        // SAFETY: getrusage only writes the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
        assert_eq!(rc, 0, "getrusage failed");
        let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        (us(usage.ru_utime), us(usage.ru_stime))
    }

    /// The rendered text against the handler's tally: every counter and
    /// histogram count exact.
    fn check(instrumentation: &dyn Instrumentation) -> Result<String, String> {
        // Render while no request is in the handler: none in it when STARTED
        // was read, none started until it was read again.
        let quiet = || {
            let served = SERVED.load(SeqCst);
            let started = STARTED.load(SeqCst);
            (served == started).then_some(started)
        };
        let mut attempts = 0;
        let text = loop {
            attempts += 1;
            if let Some(before) = quiet() {
                let text = instrumentation.render();
                if quiet() == Some(before) {
                    break text;
                }
            }
            if attempts == 100 {
                return Err("requests kept arriving: no quiet moment to check in".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let Some(text) = text else {
            return Ok("nothing recorded".into());
        };
        let served = SERVED.load(Relaxed) as f64;
        let request_bytes = REQUEST_BYTES.load(Relaxed) as f64;
        let response_bytes = RESPONSE_BYTES.load(Relaxed) as f64;
        let route = [("route", ROUTE)];
        let expected = [
            ("http_requests_total", served),
            ("http_request_bytes_total", request_bytes),
            ("http_response_bytes_total", response_bytes),
            ("http_request_duration_seconds_count", served),
            ("http_response_size_bytes_count", served),
            ("http_response_size_bytes_sum", response_bytes),
        ];
        let wrong: Vec<String> = expected
            .into_iter()
            .filter_map(|(name, want)| match sum_samples(&text, name, &route) {
                Some(got) if got == want => None,
                got => Some(format!("{name}{{route=\"{ROUTE}\"}}: rendered {got:?}, the handler counted {want}")),
            })
            .collect();
        if !wrong.is_empty() {
            return Err(wrong.join("; "));
        }
        Ok(format!("{served} requests, {request_bytes} request bytes, {response_bytes} response bytes: all exact"))
    }

    /// The child: serve on an ephemeral loopback port, print `READY <port>`,
    /// then answer `stats`, `check` and `quit` on stdin (EOF = quit).
    pub(crate) fn serve(variant: Variant, cpu: Option<usize>) -> Result<(), String> {
        if let Some(cpu) = cpu {
            // Before the runtime's threads exist: they inherit the mask.
            pin_to(cpu).map_err(|e| format!("pin to CPU {cpu}: {e}"))?;
        }
        let instrumentation = instrumentation(variant)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("service-worker")
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).map_err(|e| format!("bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| format!("local_addr: {e}"))?.port();
        let app = Router::new().route(ROUTE, get(item)).with_state(App { instrumentation: instrumentation.clone() });
        runtime.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("service bench child: serve: {e}");
            }
        });
        let mut out = std::io::stdout().lock();
        let mut reply =
            |line: String| -> Result<(), String> { writeln!(out, "{line}").and_then(|_| out.flush()).map_err(|e| format!("stdout: {e}")) };
        reply(format!("READY {port}"))?;
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| format!("stdin: {e}"))?;
            match line.trim() {
                "stats" => {
                    let (user, sys) = cpu_us();
                    reply(format!("STATS {} {user} {sys}", SERVED.load(Relaxed)))?;
                }
                "check" => match check(&*instrumentation) {
                    Ok(summary) => reply(format!("CHECK OK {summary}"))?,
                    Err(e) => reply(format!("CHECK FAIL {e}"))?,
                },
                "quit" => break,
                other => return Err(format!("unknown command {other:?}")),
            }
        }
        runtime.shutdown_timeout(Duration::from_secs(2));
        Ok(())
    }
}

/// Sum of the samples named `name` whose labels include `want` (`None`:
/// no such sample). Enough of the text format for what these exporters write.
fn sum_samples(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (sample_name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}').unwrap_or(rest))),
            None => (series, Vec::new()),
        };
        if sample_name != name || !want.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)) {
            continue;
        }
        let value: f64 = value.parse().ok()?;
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// `k="v",k2="v2"` (values escaped with `\\`, `\"`, `\n`).
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    out
}

/// Restricts the calling thread (and the threads and processes it creates
/// afterwards) to one CPU. Async-signal-safe: also used between fork and exec.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it
    // (cpu < CPU_SETSIZE is checked); sched_setaffinity reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        match libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }
}

/// The first two CPUs this process may run on: (server, wrk).
fn cpu_pair() -> Option<(usize, usize)> {
    // SAFETY: sched_getaffinity fills the set it is given; CPU_ISSET reads it.
    let allowed: Vec<usize> = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    };
    match allowed[..] {
        [server, wrk, ..] => Some((server, wrk)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The driver (parent process).
// ---------------------------------------------------------------------------

/// Lines of a child's stdout, read on a thread (so every wait has a timeout).
fn line_channel<R: Read + Send + 'static>(r: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process killed (and reaped) when dropped, whatever happened.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Waits for the process to exit on its own for up to `timeout`.
    fn wait_for(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().map_err(|e| format!("wait: {e}"))? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("process {} did not exit within {timeout:?}", self.0.id()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits for a line starting with `prefix`; other lines are echoed to stderr
/// (a child's diagnostics), except wrk's own report.
fn expect_line(rx: &Receiver<String>, prefix: &str, timeout: Duration, what: &str) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return Ok(line[prefix.len()..].trim().to_string()),
            Ok(line) if what != "wrk" => eprintln!("  [{what}] {line}"),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return Err(format!("{what}: no {prefix:?} line within {timeout:?}")),
            Err(RecvTimeoutError::Disconnected) => return Err(format!("{what}: exited before printing {prefix:?}")),
        }
    }
}

/// A running server child.
struct Server {
    process: Guard,
    stdin: std::process::ChildStdin,
    lines: Receiver<String>,
    port: u16,
    variant: Variant,
}

struct Stats {
    served: u64,
    user_us: u64,
    sys_us: u64,
}

impl Server {
    fn start(variant: Variant, cpu: Option<usize>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut command = Command::new(exe);
        if let Some(cpu) = cpu {
            command.arg("--cpu").arg(cpu.to_string());
        }
        command.arg("--serve").arg(variant.arg()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        // No collector from the environment: nothing is flushed anywhere.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("SHOAL_") {
                command.env_remove(key);
            }
        }
        let mut process = Guard(command.spawn().map_err(|e| format!("spawn the {variant} server: {e}"))?);
        let stdin = process.0.stdin.take().expect("piped stdin");
        let lines = line_channel(process.0.stdout.take().expect("piped stdout"));
        let ready = expect_line(&lines, "READY ", Duration::from_secs(30), &format!("{variant} server"))?;
        let port = ready.parse().map_err(|e| format!("{variant} server: bad READY line {ready:?}: {e}"))?;
        Ok(Server { process, stdin, lines, port, variant })
    }

    fn ask(&mut self, command: &str, prefix: &str) -> Result<String, String> {
        let what = format!("{} server", self.variant);
        writeln!(self.stdin, "{command}").and_then(|_| self.stdin.flush()).map_err(|e| format!("{what}: {command}: {e}"))?;
        expect_line(&self.lines, prefix, Duration::from_secs(60), &what)
    }

    fn stats(&mut self) -> Result<Stats, String> {
        let line = self.ask("stats", "STATS ")?;
        let v: Vec<u64> =
            line.split(' ').map(|x| x.parse().map_err(|e| format!("bad STATS line {line:?}: {e}"))).collect::<Result<_, _>>()?;
        match v[..] {
            [served, user_us, sys_us] => Ok(Stats { served, user_us, sys_us }),
            _ => Err(format!("bad STATS line {line:?}")),
        }
    }

    fn check(&mut self) -> Result<String, String> {
        let line = self.ask("check", "CHECK ")?;
        match line.strip_prefix("OK ") {
            Some(summary) => Ok(summary.to_string()),
            None => Err(format!("{} lost or miscounted updates: {line}", self.variant.title())),
        }
    }

    fn quit(mut self) -> Result<(), String> {
        let _ = writeln!(self.stdin, "quit").and_then(|_| self.stdin.flush());
        let status = self.process.wait_for(Duration::from_secs(10))?;
        match status.success() {
            true => Ok(()),
            false => Err(format!("{} server exited with {status}", self.variant)),
        }
    }
}

/// What one load run measured on the client side.
struct Load {
    /// Responses the client counted.
    requests: u64,
    requests_per_s: f64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    /// CPU seconds the client used (wrk only).
    client_cpu_s: Option<f64>,
}

/// Stops after `n` responses; prints the first-to-last-response time from
/// the thread, then errors and latency percentiles from `done`.
const WRK_SCRIPT: &str = r#"-- written by benches/service.rs
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } shoal_bench_timespec;
int clock_gettime(int clk_id, shoal_bench_timespec *tp);
]]
local ts = ffi.new("shoal_bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end
local limit, n, first = 0, 0, 0
function init(args) limit = tonumber(args[1]) end
function response(status, headers, body)
  n = n + 1
  if n == 1 then first = now_us() end
  if n == limit then
    io.write(string.format("SHOAL_DONE %d %.0f\n", n, now_us() - first))
    io.flush()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("SHOAL_SUMMARY %d %d %d %d %d %d %d %d\n", summary.requests,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
  io.flush()
end
"#;

fn wrk_available() -> bool {
    Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

fn wrk_command(connections: u32, cap_s: u64) -> String {
    format!("wrk -t1 -c{connections} -d{cap_s}s --timeout 5s -s <script> http://127.0.0.1:<port>/api/items/42 -- <requests>")
}

/// `wrk` until `requests` responses (at most `cap` seconds), then SIGINT
/// for its summary.
fn run_wrk(script: &std::path::Path, port: u16, connections: u32, requests: u64, cpu: Option<usize>) -> Result<Load, String> {
    let cap_s = 60 + requests / 1_000;
    let mut command = Command::new("wrk");
    command
        .args(["-t1", &format!("-c{connections}"), &format!("-d{cap_s}s"), "--timeout", "5s", "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/api/items/42"))
        .arg("--")
        .arg(requests.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(cpu) = cpu {
        use std::os::unix::process::CommandExt;
        // SAFETY: pin_to only makes one system call (async-signal-safe).
        unsafe { command.pre_exec(move || pin_to(cpu)) };
    }
    let mut wrk = Guard(command.spawn().map_err(|e| format!("spawn wrk: {e}"))?);
    let lines = line_channel(wrk.0.stdout.take().expect("piped stdout"));
    let done = loop {
        match lines.recv_timeout(Duration::from_secs(cap_s + 30)) {
            Ok(line) if line.starts_with("SHOAL_DONE ") => break line,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return Err(format!("wrk did not finish {requests} requests within {}s", cap_s + 30)),
            Err(RecvTimeoutError::Disconnected) => return Err(format!("wrk exited before {requests} responses (capped at {cap_s}s)")),
        }
    };
    // The thread has stopped; wrk's main thread sleeps out -d unless interrupted.
    let client_cpu_s = process_ticks(wrk.0.id()).map(|t| t as f64 / TICKS_PER_S);
    // SAFETY: a signal to the wrk process this bench started and still owns.
    if unsafe { libc::kill(wrk.0.id() as libc::pid_t, libc::SIGINT) } != 0 {
        return Err(format!("SIGINT to wrk: {}", std::io::Error::last_os_error()));
    }
    let summary = expect_line(&lines, "SHOAL_SUMMARY ", Duration::from_secs(30), "wrk")?;
    let status = wrk.wait_for(Duration::from_secs(30))?;
    if !status.success() {
        return Err(format!("wrk exited with {status}"));
    }
    let numbers = |line: &str| -> Result<Vec<f64>, String> {
        line.split_whitespace()
            .skip_while(|w| w.starts_with("SHOAL_"))
            .map(|x| x.parse().map_err(|e| format!("wrk line {line:?}: {e}")))
            .collect()
    };
    let d = numbers(&done)?;
    let s = numbers(&summary)?;
    let (&[n, first_last_us], &[completed, connect, read, write, status, timeout, p50, p99]) = (&d[..], &s[..]) else {
        return Err(format!("unexpected wrk lines {done:?} / {summary:?}"));
    };
    if connect + read + write + status + timeout > 0.0 {
        return Err(format!("wrk errors: connect {connect}, read {read}, write {write}, non-2xx {status}, timeout {timeout}"));
    }
    Ok(Load {
        requests: completed as u64,
        requests_per_s: (n - 1.0) / (first_last_us / 1e6),
        p50_us: Some(p50 as u64),
        p99_us: Some(p99 as u64),
        client_cpu_s,
    })
}

/// Test mode without wrk: one keep-alive connection, requests in sequence.
fn run_builtin(port: u16, requests: u64) -> Result<Load, String> {
    let io = |e: std::io::Error| format!("built-in client: {e}");
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(io)?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let mut writer = stream.try_clone().map_err(io)?;
    let mut reader = BufReader::new(stream);
    let start = Instant::now();
    let mut line = String::new();
    for _ in 0..requests {
        writer.write_all(b"GET /api/items/42 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").map_err(io)?;
        line.clear();
        reader.read_line(&mut line).map_err(io)?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(format!("built-in client: unexpected status line {line:?}"));
        }
        let mut length = None;
        loop {
            line.clear();
            reader.read_line(&mut line).map_err(io)?;
            let field = line.trim_end();
            if field.is_empty() {
                break;
            }
            if let Some((k, v)) = field.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or("built-in client: no content-length")?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).map_err(io)?;
    }
    Ok(Load { requests, requests_per_s: requests as f64 / start.elapsed().as_secs_f64(), p50_us: None, p99_us: None, client_cpu_s: None })
}

/// `/proc` times are in USER_HZ, 100 on Linux.
const TICKS_PER_S: f64 = 100.0;

/// Busy time of the whole machine (all CPUs), ticks.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(v.get(..8)?.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum())
}

/// User + system time of one process, ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// One measured run of one variant.
struct Sample {
    requests_per_s: f64,
    cpu_us_per_request: f64,
    user_share: f64,
    /// Share of the machine (all CPUs) other processes used during the run.
    others: Option<f64>,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
}

/// How runs are driven.
struct Setup<'a> {
    requests: u64,
    connections: u32,
    /// The wrk script (`None`: the built-in client, test mode only).
    script: Option<&'a std::path::Path>,
    /// (server CPU, wrk CPU), or no pinning.
    cpus: Option<(usize, usize)>,
}

fn run_one(variant: Variant, setup: &Setup) -> Result<(Sample, String), String> {
    let Setup { requests, connections, script, cpus } = *setup;
    let mut server = Server::start(variant, cpus.map(|c| c.0))?;
    let drive = |port, n| match script {
        Some(script) => run_wrk(script, port, connections, n, cpus.map(|c| c.1)),
        None => run_builtin(port, n),
    };
    // Warm-up: series registered, connections and buffers in place.
    drive(server.port, (requests / 10).max(200))?;
    let (start, busy_before) = (Instant::now(), machine_busy_ticks());
    let before = server.stats()?;
    let load = drive(server.port, requests)?;
    let after = server.stats()?;
    let (elapsed, busy_after) = (start.elapsed().as_secs_f64(), machine_busy_ticks());
    let served = after.served - before.served;
    // The server may have answered requests still in flight when wrk stopped
    // (and, in the worst case, warm-up stragglers): at most one per connection each.
    let in_flight = if script.is_some() { 2 * u64::from(connections) } else { 0 };
    if served < load.requests || served > load.requests + in_flight {
        return Err(format!("{variant}: the client counted {} responses, the server served {served}", load.requests));
    }
    let check = server.check()?;
    server.quit()?;
    let cpu = (after.user_us - before.user_us + after.sys_us - before.sys_us) as f64;
    let cpus_total = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let others = match (busy_before, busy_after, load.client_cpu_s) {
        (Some(b0), Some(b1), Some(client)) => {
            Some((((b1 - b0) as f64 / TICKS_PER_S - cpu / 1e6 - client) / (elapsed * cpus_total)).max(0.0))
        }
        _ => None,
    };
    let sample = Sample {
        requests_per_s: load.requests_per_s,
        cpu_us_per_request: cpu / served as f64,
        user_share: (after.user_us - before.user_us) as f64 / cpu.max(1.0),
        others,
        p50_us: load.p50_us,
        p99_us: load.p99_us,
    };
    Ok((sample, check))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n % 2 {
        1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct WrkScript(std::path::PathBuf);

impl WrkScript {
    fn write() -> Result<Self, String> {
        let path = std::env::temp_dir().join(format!("shoal-service-bench-{}.lua", std::process::id()));
        std::fs::write(&path, WRK_SCRIPT).map_err(|e| format!("write {}: {e}", path.display()))?;
        Ok(WrkScript(path))
    }
}

impl Drop for WrkScript {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn run_bench(args: &Args) -> Result<(), String> {
    if !wrk_available() {
        return Err("`wrk` is not installed (or not on PATH); it is the load generator of this benchmark. \
                    On Debian or Ubuntu: `sudo apt-get install wrk`, then run `cargo bench --bench service` again."
            .into());
    }
    if args.requests < 2 || args.rounds == 0 || args.connections == 0 || args.variants.is_empty() {
        return Err("need --requests >= 2, --rounds >= 1, --connections >= 1 and at least one variant".into());
    }
    let script = WrkScript::write()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpus = if args.no_pin { None } else { cpu_pair() };
    let setup = Setup { requests: args.requests, connections: args.connections, script: Some(&script.0), cpus };
    let variants = &args.variants;
    println!(
        "service bench: {} requests per run (+ {} warm-up), {} rounds, variants {}; {cores} cores, wrk and the server share them; load average {}",
        args.requests,
        (args.requests / 10).max(200),
        args.rounds,
        variants.iter().map(|v| v.arg()).collect::<Vec<_>>().join(","),
        loadavg()
    );
    println!("server: axum 0.8, tokio multi-thread runtime with 1 worker, 127.0.0.1, a fresh process per run");
    println!("load:   {}", wrk_command(args.connections, 60 + args.requests / 1_000));
    match cpus {
        Some((server, wrk)) => {
            println!("pinned: the server process to CPU {server}, wrk to CPU {wrk} (--no-pin: let the scheduler place them)")
        }
        None => println!("not pinned"),
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 1..=args.rounds {
        for (i, &variant) in variants.iter().enumerate() {
            let (s, check) = run_one(variant, &setup)?;
            println!(
                "round {round} {:<40} {:>9.0} req/s  {:>6.2} µs CPU/req ({:.0}% user)  p50 {} µs  p99 {} µs  others {}  [{check}]",
                variant.title(),
                s.requests_per_s,
                s.cpu_us_per_request,
                100.0 * s.user_share,
                s.p50_us.unwrap_or(0),
                s.p99_us.unwrap_or(0),
                s.others.map_or("?".into(), |o| format!("{:.0}%", 100.0 * o)),
            );
            samples[i].push(s);
        }
    }
    let rps: Vec<f64> = samples.iter().map(|s| median(s.iter().map(|x| x.requests_per_s).collect())).collect();
    let cpu: Vec<f64> = samples.iter().map(|s| median(s.iter().map(|x| x.cpu_us_per_request).collect())).collect();
    let base = variants.iter().position(|v| *v == Variant::None);
    let delta = |v: &[f64], i: usize| match base {
        Some(b) if b != i => format!("{:+.2} %", 100.0 * (v[i] / v[b] - 1.0)),
        _ => "".into(),
    };
    println!();
    println!(
        "`cargo bench --bench service -- --requests {} --rounds {} --connections {}`, medians of {} rounds; load average now {}",
        args.requests,
        args.rounds,
        args.connections,
        args.rounds,
        loadavg()
    );
    println!();
    // The same ratio taken within each round (against that round's (a)),
    // then the median over rounds: less moved by drift between rounds.
    let paired = |i: usize| match base {
        Some(b) if b != i => {
            let ratios = samples[i].iter().zip(&samples[b]).map(|(s, a)| s.cpu_us_per_request / a.cpu_us_per_request - 1.0).collect();
            format!("{:+.2} %", 100.0 * median(ratios))
        }
        _ => "".into(),
    };
    println!("| variant | req/s | vs (a) | server CPU µs/req | vs (a) | vs (a), per round | CPU µs/req min–max | p99 latency µs |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, v) in variants.iter().enumerate() {
        let (lo, hi) =
            samples[i].iter().fold((f64::MAX, f64::MIN), |(lo, hi), s| (lo.min(s.cpu_us_per_request), hi.max(s.cpu_us_per_request)));
        let p99 = median(samples[i].iter().map(|s| s.p99_us.unwrap_or(0) as f64).collect());
        println!(
            "| {} | {:.0} | {} | {:.3} | {} | {} | {:.3}–{:.3} | {:.0} |",
            v.title(),
            rps[i],
            delta(&rps, i),
            cpu[i],
            delta(&cpu, i),
            paired(i),
            lo,
            hi,
            p99
        );
    }
    println!();
    println!(
        "req/s and CPU µs/req: medians over rounds; \"vs (a), per round\": the median of each round's CPU/req ratio to that round's (a)"
    );
    let others: Vec<f64> = samples.iter().flatten().filter_map(|s| s.others).collect();
    if !others.is_empty() {
        println!();
        println!(
            "other processes during the runs (share of all CPUs, from /proc/stat minus server and wrk): median {:.0} %, max {:.0} %",
            100.0 * median(others.clone()),
            100.0 * others.iter().cloned().fold(0.0, f64::max)
        );
    }
    if let (Some(b), Some(s)) = (base, variants.iter().position(|v| *v == Variant::Shoal)) {
        let overhead = |i: usize| 100.0 * (cpu[i] / cpu[b] - 1.0);
        let smallest = variants
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != b && variants[*i] != Variant::ShoalHandles)
            .all(|(i, _)| overhead(s) <= overhead(i));
        let goal = smallest && overhead(s) < 1.0;
        println!();
        println!(
            "goal (shoal's CPU/request overhead over (a) the smallest of (b)-(d) and under 1 %): {:+.2} %, {} ({})",
            overhead(s),
            if smallest { "the smallest" } else { "not the smallest" },
            if goal { "met" } else { "not met" }
        );
        if let Some(h) = variants.iter().position(|v| *v == Variant::ShoalHandles) {
            println!("(b2) shoal handles resolved once: {:+.2} %", overhead(h));
        }
    }
    Ok(())
}

/// `cargo test --benches`: every variant once, small, checks included.
fn smoke(args: &Args) -> Result<(), String> {
    let script = match wrk_available() {
        true => Some(WrkScript::write()?),
        false => {
            println!("service bench (test mode): wrk not installed, driving with the built-in client (`sudo apt-get install wrk` for the real bench)");
            None
        }
    };
    let cpus = if args.no_pin { None } else { cpu_pair() };
    let setup = Setup { requests: SMOKE_REQUESTS, connections: 4, script: script.as_ref().map(|s| s.0.as_path()), cpus };
    for variant in Variant::ALL {
        let (s, check) = run_one(variant, &setup)?;
        println!(
            "service bench (test mode) {:<40} {:>8.0} req/s {:>8.2} µs CPU/req [{check}]",
            variant.title(),
            s.requests_per_s,
            s.cpu_us_per_request
        );
    }
    Ok(())
}

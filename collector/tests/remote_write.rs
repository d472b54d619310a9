//! Remote-write against real receivers: Prometheus 2.42 (native histograms)
//! and VictoriaMetrics 1.79 (summaries), started here on 127.0.0.1 with
//! temporary storage and killed by pid; plus tiny in-test receivers for the
//! retry rules (500 then 204, 429 with Retry-After, 400) and for the
//! durable queue (`data_dir`): intervals queued while the receiver is down
//! are sent after a restart (a clean stop or `kill -9`), in order, once.
//!
//! The real servers are required: a missing binary fails the test.

use rand::SeedableRng;
use shoal_collector::config::RemoteWriteConfig;
use shoal_collector::remote_write::disk_queue::queue_dir;
use shoal_collector::remote_write::{
    decode_request, DiskQueue, DropReason, ExportHistogram, ExportSeries, ExportValue, HistogramMode, Interval, QueueStorage,
    RemoteWriteTarget, RemoteWriter,
};
use shoal_collector::{Collector, Config};
use shoal_core::Sketch;
use shoal_proto as pb;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const QS: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

#[path = "../../tests/support/real_servers.rs"]
mod real_servers;
use real_servers::{
    exact_quantile, lognormal, prometheus_receiver, receiver, serve, victoria_metrics, within, Received, TempDir, R204, R400, R429, R500,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Intervals of a multi-instance workload: four instances with different
/// latency distributions merge into one cumulative cluster sketch; a counter
/// with a large exact total grows by a large step per interval.
struct Workload {
    intervals: Vec<Interval>,
    raw: Vec<f64>,
    counter_total: u64,
}

fn workload(histogram: &str, counter: &str, first_end_ms: i64) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut cluster = Sketch::default();
    let mut raw = Vec::new();
    let mut intervals = Vec::new();
    let mut total: u64 = 9_007_198_000_000_001;
    for k in 0..3 {
        for (instance, mu) in [-4.0, -3.5, -3.0, -2.0].into_iter().enumerate() {
            let mut sketch = Sketch::default();
            for _ in 0..4000 + 1000 * instance {
                let v = lognormal(&mut rng, mu, 0.6);
                sketch.record(v).unwrap();
                raw.push(v);
            }
            cluster.merge(&sketch);
        }
        total += 123_456_789 + k;
        let labels = vec![("cluster".to_string(), "eu".to_string())];
        intervals.push(Interval {
            end_ms: first_end_ms + 10_000 * k as i64,
            series: vec![
                ExportSeries {
                    name: counter.into(),
                    labels: labels.clone(),
                    help: Some("Requests served.".into()),
                    unit: None,
                    value: ExportValue::Counter(total),
                },
                ExportSeries {
                    name: histogram.into(),
                    labels,
                    help: Some("Request latency.".into()),
                    unit: Some("seconds".into()),
                    value: ExportValue::Histogram(ExportHistogram::from_sketch(&cluster, &QS)),
                },
            ],
        });
    }
    raw.sort_by(f64::total_cmp);
    assert!(total < 1 << 53, "exact in a double");
    Workload { intervals, raw, counter_total: total }
}

fn push_all(rt: &tokio::runtime::Runtime, target: RemoteWriteTarget, intervals: &[Interval]) -> RemoteWriter {
    let _guard = rt.enter();
    let writer = RemoteWriter::new(target).unwrap();
    for i in intervals {
        writer.push(i.clone());
    }
    assert!(rt.block_on(writer.wait_idle(Duration::from_secs(30))), "not delivered: {:?}", writer.stats());
    writer
}

#[test]
fn prometheus_native_histograms_quantiles_and_exact_counters() {
    let prom = prometheus_receiver();
    let w = workload("rw_latency_seconds", "rw_requests", now_ms() - 60_000);
    let rt = runtime();
    let mut target = RemoteWriteTarget::new(format!("{}/api/v1/write", prom.base));
    target.histograms = HistogramMode::Native;
    let writer = push_all(&rt, target, &w.intervals);
    let stats = writer.stats();
    assert_eq!((stats.requests_sent, stats.samples_sent, stats.histograms_sent), (3, 3, 3), "{stats:?}");
    assert_eq!(stats.requests_failed, 0);
    assert!(stats.dropped.is_empty());
    assert!(stats.last_success_unix_ms.is_some());

    let at = w.intervals.last().unwrap().end_ms;
    let total = prom.query_value_until("sum(rw_requests_total)", Some(at), || {}, |_| true);
    assert_eq!(total, w.counter_total as f64);
    assert_eq!(total as u64, w.counter_total);
    for q in QS {
        let got = prom.query_value_until(&format!("histogram_quantile({q}, sum(rw_latency_seconds))"), Some(at), || {}, |_| true);
        let exact = exact_quantile(&w.raw, q);
        eprintln!("prometheus histogram_quantile({q}) = {got}, exact {exact}, error {:+.3}%", (got / exact - 1.0) * 100.0);
        assert!(within(got, exact, 0.01), "q {q}: prometheus {got} vs exact {exact}");
    }
    let count = prom.query_value_until("histogram_count(sum(rw_latency_seconds))", Some(at), || {}, |_| true);
    assert_eq!(count, w.raw.len() as f64);
}

#[test]
fn victoria_metrics_summaries_and_exact_counters() {
    let vm = victoria_metrics();
    let w = workload("vm_latency_seconds", "vm_requests_total", now_ms() - 60_000);
    let rt = runtime();
    let writer = push_all(&rt, RemoteWriteTarget::new(format!("{}/api/v1/write", vm.base)), &w.intervals);
    let stats = writer.stats();
    // Per interval: counter + 4 quantiles + _sum + _count.
    assert_eq!((stats.requests_sent, stats.samples_sent, stats.histograms_sent), (3, 21, 0), "{stats:?}");

    let flush = || {
        ureq::get(format!("{}/internal/force_flush", vm.base)).call().unwrap();
    };
    let at = w.intervals.last().unwrap().end_ms;
    let total = vm.query_value_until("sum(vm_requests_total)", Some(at), flush, |_| true);
    assert_eq!(total as u64, w.counter_total);
    let ExportValue::Histogram(sent) = &w.intervals.last().unwrap().series[1].value else { unreachable!() };
    for &(q, sent_value) in &sent.quantiles {
        let got = vm.query_value_until(&format!("vm_latency_seconds{{quantile=\"{q}\"}}"), Some(at), flush, |_| true);
        // VictoriaMetrics stores decimals of ~12 significant digits.
        assert!(within(got, sent_value, 1e-9), "q {q}: vm {got} vs sent {sent_value}");
        let exact = exact_quantile(&w.raw, q);
        assert!(within(got, exact, 0.01), "q {q}: vm {got} vs exact {exact}");
    }
    let count = vm.query_value_until("vm_latency_seconds_count", Some(at), flush, |_| true);
    assert_eq!(count, w.raw.len() as f64);

    // Known behaviour: a native histogram is accepted (204) and silently dropped.
    let mut native = RemoteWriteTarget::new(format!("{}/api/v1/write", vm.base));
    native.histograms = HistogramMode::Native;
    let only_hist =
        Interval { end_ms: at, series: vec![ExportSeries { name: "vm_native_seconds".into(), ..w.intervals[2].series[1].clone() }] };
    let writer = push_all(&rt, native, &[only_hist]);
    assert_eq!((writer.stats().requests_sent, writer.stats().histograms_sent), (1, 1));
    flush();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(vm.query_value("count({__name__=~\"vm_native_seconds.*\"})", Some(at)), None);
}

fn small_interval(end_ms: i64, total: u64) -> Interval {
    Interval {
        end_ms,
        series: vec![ExportSeries { name: "jobs".into(), labels: vec![], help: None, unit: None, value: ExportValue::Counter(total) }],
    }
}

fn fast_retries(url: &str) -> RemoteWriteTarget {
    let mut t = RemoteWriteTarget::new(url);
    t.retry.min_backoff = Duration::from_millis(10);
    t.retry.max_backoff = Duration::from_millis(100);
    t.timeout = Duration::from_secs(5);
    t
}

#[test]
fn server_errors_are_retried_and_the_interval_is_delivered_once() {
    let (url, seen) = receiver(vec![R500, R500, R204]);
    let dir = TempDir::new("token");
    let token = dir.0.join("token");
    std::fs::write(&token, "s3cret\n").unwrap();
    let mut target = fast_retries(&url);
    target.bearer_token_file = Some(token);
    target.headers.insert("X-Scope-OrgID".into(), "tenant-7".into());
    let rt = runtime();
    let writer = push_all(&rt, target, &[small_interval(1_000, 41), small_interval(2_000, 42)]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "two failures, then each interval once");
    assert_eq!(seen[0].body, seen[1].body);
    assert_eq!(seen[1].body, seen[2].body);
    let first = decode_request(&seen[2].body).unwrap();
    let second = decode_request(&seen[3].body).unwrap();
    assert_eq!(first.timeseries[0].samples[0].value, 41.0, "in order");
    assert_eq!(second.timeseries[0].samples[0].value, 42.0);
    assert_eq!(first.timeseries[0].labels[0].value, "jobs_total");
    let r = &seen[0];
    assert_eq!(r.header("content-encoding"), Some("snappy"));
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(r.header("x-prometheus-remote-write-version"), Some("0.1.0"));
    assert!(r.header("user-agent").unwrap().starts_with("shoal-collector/"));
    assert_eq!(r.header("authorization"), Some("Bearer s3cret"));
    assert_eq!(r.header("x-scope-orgid"), Some("tenant-7"));
    let s = writer.stats();
    assert_eq!((s.requests_sent, s.requests_failed, s.retries, s.samples_sent, s.queue_len), (2, 2, 2, 2, 0));
    assert!(s.dropped.is_empty());
}

#[test]
fn retry_after_is_honoured() {
    let (url, seen) = receiver(vec![R429, R204]);
    let rt = runtime();
    let started = Instant::now();
    let writer = push_all(&rt, fast_retries(&url), &[small_interval(1_000, 1)]);
    assert!(started.elapsed() >= Duration::from_millis(950), "waited {:?}", started.elapsed());
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert_eq!((writer.stats().retries, writer.stats().requests_sent), (1, 1));
}

#[test]
fn client_errors_are_dropped_counted_and_not_retried() {
    let (url, seen) = receiver(vec![R400]);
    let rt = runtime();
    let writer = push_all(&rt, fast_retries(&url), &[small_interval(1_000, 5)]);
    // Give a retry loop every chance to show itself.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(seen.lock().unwrap().len(), 1, "exactly one request");
    let s = writer.stats();
    assert_eq!((s.requests_sent, s.requests_failed, s.retries, s.queue_len), (0, 1, 0, 0));
    let dropped = s.dropped.get(&DropReason::Status(400)).copied().unwrap();
    assert_eq!((dropped.batches, dropped.samples), (1, 1));
    assert_eq!(s.dropped.len(), 1);
}

/// A receiver that stays at one URL while it goes from down (500) to up
/// (204): it accepts as many requests as it is told to, 500 to the others.
struct Switchable {
    url: String,
    accepts: Arc<AtomicU64>,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Switchable {
    fn start(accepts: u64) -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v1/write", listener.local_addr().unwrap());
        let (accepts, seen) = (Arc::new(AtomicU64::new(accepts)), Arc::<Mutex<Vec<Received>>>::default());
        let budget = accepts.clone();
        let answer = move |_| {
            let take = budget.fetch_update(SeqCst, SeqCst, |a| match a {
                0 => None,
                u64::MAX => Some(a),
                a => Some(a - 1),
            });
            if take.is_ok() {
                R204
            } else {
                R500
            }
        };
        serve(listener, seen.clone(), Arc::new(answer));
        Switchable { url, accepts, seen }
    }

    /// Up from now on; forgets what it saw so far.
    fn come_up(&self) {
        self.seen.lock().unwrap().clear();
        self.accepts.store(u64::MAX, SeqCst);
    }

    /// The bodies it accepted, in order.
    fn accepted(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().iter().filter(|r| r.answer == R204).map(|r| r.body.clone()).collect()
    }

    /// `(timestamp, value)` of every accepted sample of `name`, in order.
    fn samples(&self, name: &str) -> Vec<(i64, f64)> {
        let mut out = Vec::new();
        for body in self.accepted() {
            for ts in decode_request(&body).unwrap().timeseries {
                if ts.labels.iter().any(|l| l.name == "__name__" && l.value == name) {
                    out.extend(ts.samples.iter().map(|s| (s.timestamp, s.value)));
                }
            }
        }
        out
    }
}

/// Polls `done` every 50 ms for at most `secs`.
fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(end_ms, counter value)` of each interval in the durable queue of
/// `url` under `data_dir`, oldest first (opening it also tidies it, as a
/// start would).
fn queued_on_disk(data_dir: &Path, url: &str) -> Vec<(i64, f64)> {
    let q = DiskQueue::open(queue_dir(data_dir, &RemoteWriteTarget::new(url)));
    q.iter()
        .map(|i| {
            let counter = i.interval.series.iter().find_map(|s| match s.value {
                ExportValue::Counter(v) => Some(v as f64),
                _ => None,
            });
            (i.interval.end_ms, counter.expect("the counter is in every interval"))
        })
        .collect()
}

fn interval_files(data_dir: &Path, url: &str) -> usize {
    let dir = queue_dir(data_dir, &RemoteWriteTarget::new(url));
    std::fs::read_dir(dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".interval")).count()
}

/// One instance's batch: the counter `jobs_total` grows by `delta`.
fn jobs_batch(sequence: u64, delta: u64) -> pb::FlushRequest {
    pb::FlushRequest {
        instance_id: "worker-1".into(),
        sequence,
        definitions: vec![pb::SeriesDefinition { r#ref: 1, name: "jobs_total".into(), ..Default::default() }],
        counters: vec![pb::CounterDelta { r#ref: 1, delta }],
        ..Default::default()
    }
}

fn flush(rt: &tokio::runtime::Runtime, grpc: SocketAddr, batch: pb::FlushRequest) {
    rt.block_on(async {
        let mut c = pb::ingest_client::IngestClient::connect(format!("http://{grpc}")).await.unwrap();
        let r = c.flush(batch).await.unwrap().into_inner();
        assert!(!r.duplicate);
    });
}

/// What was queued before the restart arrives first, in order, with its
/// values; every timestamp after it is newer (nothing twice).
fn assert_delivered_in_order_once(before: &[(i64, f64)], got: &[(i64, f64)]) {
    assert!(got.len() >= before.len(), "before the restart {before:?}, delivered {got:?}");
    assert_eq!(&got[..before.len()], before, "the queued intervals first, in order");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "timestamps strictly ascending (none twice): {got:?}");
}

fn durable_config(data_dir: &Path, url: &str) -> Config {
    Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        interval_secs: 1,
        shutdown_grace_ms: 300,
        data_dir: Some(data_dir.to_path_buf()),
        remote_write: vec![RemoteWriteConfig::new(url)],
        ..Config::default()
    }
}

#[test]
fn a_durable_queue_is_sent_after_a_clean_restart() {
    let rx = Switchable::start(0);
    let data = TempDir::new("queue-clean");
    let rt = runtime();
    let first = Collector::start(durable_config(&data.0, &rx.url)).unwrap();
    // The targets appear in the stats once their queues are open (just after the start).
    let queue_len = |c: &Collector| c.shared().stats.remote_write().first().map_or(0, |t| t.queue_len);
    flush(&rt, first.grpc_addr(), jobs_batch(1, 5));
    wait_until(20, "two intervals queued", || queue_len(&first) >= 2);
    flush(&rt, first.grpc_addr(), jobs_batch(2, 7));
    wait_until(20, "three intervals queued", || queue_len(&first) >= 3);
    assert!(rx.accepted().is_empty() && !rx.seen.lock().unwrap().is_empty(), "the receiver was tried and was down");
    first.shutdown().unwrap();
    let before = queued_on_disk(&data.0, &rx.url);
    assert!(before.len() >= 4, "three intervals and the last one pushed at shutdown: {before:?}");
    assert_eq!((before[0].1, before.last().unwrap().1), (5.0, 12.0));

    rx.come_up();
    let second = Collector::start(durable_config(&data.0, &rx.url)).unwrap();
    wait_until(20, "the queued intervals delivered", || rx.samples("jobs_total").len() > before.len());
    second.shutdown().unwrap();
    assert_delivered_in_order_once(&before, &rx.samples("jobs_total"));
    assert_eq!(interval_files(&data.0, &rx.url), 0, "delivered intervals leave the disk");
}

#[test]
fn a_value_that_is_not_durable_is_never_pushed() {
    // A failed log write leaves memory ahead of the disk: a crash then takes
    // the merge back (the SDK resends it). What remote-write pushes must be
    // what a crash cannot take back, or the receiver sees the counter fall,
    // then rise twice.
    use shoal_collector::durable::{FaultPlan, IoOp, WalOptions, ENOSPC};
    let rx = Switchable::start(u64::MAX);
    let data = TempDir::new("durable-push");
    let rt = runtime();
    let plan = FaultPlan::new();
    let options = WalOptions { faults: Some(plan.clone()), ..WalOptions::default() };
    let c = Collector::start_with(durable_config(&data.0, &rx.url), options).unwrap();
    let send = |batch: pb::FlushRequest| {
        rt.block_on(async {
            let mut client = pb::ingest_client::IngestClient::connect(format!("http://{}", c.grpc_addr())).await.unwrap();
            client.flush(batch).await.map(|r| r.into_inner())
        })
    };
    send(jobs_batch(1, 5)).unwrap();
    wait_until(20, "the durable total pushed", || rx.samples("jobs_total").iter().any(|s| s.1 == 5.0));
    plan.fail_always(IoOp::Write, ENOSPC);
    plan.fail_always(IoOp::Create, ENOSPC);
    let status = send(jobs_batch(2, 100)).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "merged in memory, not durable: {status:?}");
    // Two interval closes while degraded: nothing of the 100 goes out.
    std::thread::sleep(Duration::from_millis(2500));
    let degraded = rx.samples("jobs_total");
    assert!(degraded.iter().all(|s| s.1 == 5.0), "a value the log does not hold was pushed: {degraded:?}");
    plan.heal();
    // Like the SDK: resend until acknowledged (the recovery checkpoint makes it durable).
    wait_until(20, "acknowledged once the disk heals", || send(jobs_batch(2, 100)).is_ok());
    wait_until(20, "the durable total pushed", || rx.samples("jobs_total").iter().any(|s| s.1 == 105.0));
    let all = rx.samples("jobs_total");
    assert!(all.iter().all(|s| s.1 == 5.0 || s.1 == 105.0), "{all:?}");
    assert!(all.windows(2).all(|w| w[0].1 <= w[1].1), "never falls: {all:?}");
    c.shutdown().unwrap();
}

/// The daemon with a data dir and one remote-write target, on fresh ports.
struct Daemon {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start(data_dir: &Path, url: &str) -> Daemon {
        let addr = || TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (grpc, http) = (addr(), addr());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_shoal-collector"))
            .args(["--grpc-listen", &grpc.to_string(), "--http-listen", &http.to_string(), "--interval-secs", "1"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--remote-write", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, grpc, http };
        wait_until(20, "the daemon serves /healthz", || {
            assert!(daemon.child.try_wait().unwrap().is_none(), "the daemon exited; see {}/daemon.log", data_dir.display());
            ureq::get(format!("http://{http}/healthz")).call().is_ok()
        });
        daemon
    }

    /// The value of the first sample of `family` on /metrics (0 if none).
    fn metric(&self, family: &str) -> u64 {
        let text = ureq::get(format!("http://{}/metrics", self.http)).call().unwrap().body_mut().read_to_string().unwrap();
        let line = text.lines().find(|l| l.starts_with(&format!("{family}{{"))).unwrap_or("x 0");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap(); // SIGKILL: no final push, no drain, no checkpoint
        self.child.wait().unwrap();
    }
}

#[test]
fn a_durable_queue_is_sent_after_kill_9() {
    let rx = Switchable::start(0);
    let data = TempDir::new("queue-kill");
    let rt = runtime();
    let first = Daemon::start(&data.0, &rx.url);
    flush(&rt, first.grpc, jobs_batch(1, 3));
    wait_until(20, "three intervals queued", || first.metric("shoal_collector_remote_write_queue_length") >= 3);
    first.kill_9();
    let before = queued_on_disk(&data.0, &rx.url);
    assert!(before.len() >= 3, "{before:?}");
    assert!(before.iter().all(|&(_, v)| v == 3.0));
    // A torn file among them: skipped, counted, never a crash.
    let dir = queue_dir(&data.0, &RemoteWriteTarget::new(&rx.url));
    std::fs::write(dir.join("00000000000000099999.interval"), b"SHOALRWI\x40\0\0\0").unwrap();

    rx.come_up();
    let second = Daemon::start(&data.0, &rx.url);
    wait_until(20, "the queued intervals delivered", || rx.samples("jobs_total").len() > before.len());
    assert_eq!(second.metric("shoal_collector_remote_write_queue_corrupt_files_total"), 1);
    drop(second);
    assert_delivered_in_order_once(&before, &rx.samples("jobs_total"));
}

#[test]
fn a_restarted_writer_resumes_an_interval_after_its_delivered_requests() {
    // The first request is accepted, then the receiver is down.
    let rx = Switchable::start(1);
    let data = TempDir::new("queue-parts");
    let mut target = fast_retries(&rx.url);
    target.max_samples_per_request = 1;
    let dir = queue_dir(&data.0, &target);
    let interval = Interval {
        end_ms: 5_000,
        series: ["a", "b", "c"]
            .map(|n| ExportSeries { name: n.into(), labels: vec![], help: None, unit: None, value: ExportValue::Counter(1) })
            .to_vec(),
    };
    let rt = runtime();
    let writer = RemoteWriter::with_storage(target.clone(), Box::new(DiskQueue::open(&dir)), rt.handle()).unwrap();
    writer.push(interval);
    wait_until(20, "the second request refused twice", || rx.seen.lock().unwrap().len() >= 3);
    drop(writer);
    let q = DiskQueue::open(&dir);
    assert_eq!(q.iter().map(|i| (i.interval.end_ms, i.parts_done)).collect::<Vec<_>>(), vec![(5_000, 1)]);
    drop(q);
    let first = rx.accepted();
    assert_eq!(first.len(), 1);

    rx.come_up();
    let writer = RemoteWriter::with_storage(target, Box::new(DiskQueue::open(&dir)), rt.handle()).unwrap();
    assert!(rt.block_on(writer.wait_idle(Duration::from_secs(20))), "{:?}", writer.stats());
    let names = |body: &Vec<u8>| -> Vec<String> {
        decode_request(body)
            .unwrap()
            .timeseries
            .iter()
            .flat_map(|t| t.labels.iter().filter(|l| l.name == "__name__"))
            .map(|l| l.value.clone())
            .collect()
    };
    let mut all: Vec<String> = first.iter().chain(&rx.accepted()).flat_map(names).collect();
    assert_eq!(rx.accepted().len(), 2, "only the requests not yet delivered");
    all.sort();
    assert_eq!(all, ["a_total", "b_total", "c_total"], "each series once");
    assert_eq!(writer.stats().queue_len, 0);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "nothing left on disk");
}

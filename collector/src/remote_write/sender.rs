//! Per-target delivery: a bounded in-order queue and one task that posts it.
//!
//! Each [`RemoteWriter`] owns one tokio task and one HTTP client. The task
//! takes the oldest queued interval, encodes it ([`super::encode`]) and posts
//! its requests in order, one request in flight at a time:
//!
//! - 2xx: delivered, next request.
//! - Connection error, timeout, 5xx, 429: retried after an exponential backoff
//!   (`min_backoff * 2^n`, capped at `max_backoff`, uniformly jittered over its
//!   upper half), or after `Retry-After` when the receiver sends one (capped at
//!   `max_retry_after`). The backoff restarts after a success. Retries go on
//!   as long as the interval is queued: a receiver that stays down costs at
//!   most one request per `max_backoff`, and the queue bound decides what is
//!   lost.
//! - Any other status (4xx, 3xx): never retried; the request is dropped and
//!   counted under its status code.
//!
//! [`RemoteWriter::push`] never blocks and never waits on the network: when the
//! queue already holds `queue_capacity` intervals it drops the oldest one not
//! being sent right now (counted as `queue_full`).
//!
//! The queue lives behind [`QueueStorage`] so that a durable implementation
//! ([`super::disk_queue::DiskQueue`], for `--data-dir`) can replace
//! [`MemoryQueue`]: it must persist `push_back`, `remove` and
//! `set_parts_done`, and hand its content back at start. `parts_done` counts
//! the requests of an interval already delivered; the split is deterministic
//! for a given interval, histogram mode and `max_samples_per_request`. The
//! task changes the storage off the runtime's threads (a durable storage
//! writes and fsyncs files); [`RemoteWriter::push`] changes it on the
//! caller's thread.
//!
//! Delivery is at least once: a request is recorded as done only after its
//! 2xx, so a request on the wire when the process dies (or when a shutdown
//! ends the task) is sent again from a durable queue after the restart.
//! Remote-write receivers ingest an identical sample (same series,
//! timestamp and value) twice as once.

use super::encode::{encode_interval, sample_count, EncodedRequest};
use super::{HistogramMode, Interval};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use rand::Rng;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// `User-Agent` of every request.
pub const USER_AGENT_VALUE: &str = concat!("shoal-collector/", env!("CARGO_PKG_VERSION"));
/// Default request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default queue bound, in intervals.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;
/// Default request size bound, in samples.
pub const DEFAULT_MAX_SAMPLES_PER_REQUEST: usize = 2000;

/// One remote-write target.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteWriteTarget {
    /// Endpoint, e.g. `http://127.0.0.1:9090/api/v1/write` or `https://...`.
    pub url: String,
    /// How histograms are sent.
    pub histograms: HistogramMode,
    /// Extra request headers (they may override the defaults, except the
    /// body's `Content-Encoding` / `Content-Type`).
    pub headers: BTreeMap<String, String>,
    /// File holding a bearer token, read at each send (rotation needs no
    /// restart); surrounding whitespace is ignored.
    pub bearer_token_file: Option<PathBuf>,
    /// CA (PEM) trusted for an `https://` url beside the system's roots
    /// and the Mozilla roots.
    pub tls_ca_file: Option<PathBuf>,
    /// Bound on one request, connect to last response byte.
    pub timeout: Duration,
    /// Bound on queued intervals.
    pub queue_capacity: usize,
    /// Bound on samples (float samples + native histograms) per request.
    pub max_samples_per_request: usize,
    /// Backoff between retries.
    pub retry: RetryPolicy,
}

impl RemoteWriteTarget {
    /// A target at `url` with the defaults (`summary` histograms, 30 s
    /// timeout, 64 intervals queued, 2000 samples per request).
    pub fn new(url: impl Into<String>) -> RemoteWriteTarget {
        RemoteWriteTarget {
            url: url.into(),
            histograms: HistogramMode::default(),
            headers: BTreeMap::new(),
            bearer_token_file: None,
            tls_ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            max_samples_per_request: DEFAULT_MAX_SAMPLES_PER_REQUEST,
            retry: RetryPolicy::default(),
        }
    }
}

/// Backoff between retries of one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First backoff (default 30 ms, as Prometheus).
    pub min_backoff: Duration,
    /// Cap of the doubling backoff (default 5 s, as Prometheus).
    pub max_backoff: Duration,
    /// Cap on a receiver's `Retry-After` (default 5 min).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_backoff: Duration::from_millis(30),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 = first retry): exponential,
    /// capped, jittered uniformly over `[d/2, d]`, and never shorter than the
    /// receiver's `Retry-After` (itself capped).
    pub fn backoff(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let max = self.max_backoff.max(self.min_backoff);
        let d = self.min_backoff.saturating_mul(1u32 << retry.min(20)).min(max);
        let jittered = if d.is_zero() { d } else { rand::thread_rng().gen_range(d / 2..=d) };
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

/// Why something was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// The queue was full: the oldest interval made room.
    QueueFull,
    /// The receiver refused a request with this (non-retryable) status.
    Status(u16),
    /// The interval could not be encoded.
    Encode,
}

impl DropReason {
    /// Label value for self-metrics: `queue_full`, `status_400`, `encode`.
    pub fn label(&self) -> String {
        match self {
            DropReason::QueueFull => "queue_full".into(),
            DropReason::Status(code) => format!("status_{code}"),
            DropReason::Encode => "encode".into(),
        }
    }
}

/// What was dropped for one reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Intervals (`QueueFull`, `Encode`) or requests (`Status`).
    pub batches: u64,
    /// Samples in them (float samples + native histograms).
    pub samples: u64,
}

/// Self-metrics of one target (atomic; read with [`TargetStats::snapshot`]).
#[derive(Debug, Default)]
pub struct TargetStats {
    samples_sent: AtomicU64,
    histograms_sent: AtomicU64,
    requests_sent: AtomicU64,
    bytes_sent: AtomicU64,
    requests_failed: AtomicU64,
    retries: AtomicU64,
    queue_len: AtomicU64,
    last_success_unix_ms: AtomicU64,
    queue_corrupt_files: AtomicU64,
    queue_disk_errors: AtomicU64,
    dropped: Mutex<BTreeMap<DropReason, Dropped>>,
}

/// A copy of a target's [`TargetStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetStatsSnapshot {
    /// The target's URL.
    pub url: String,
    /// Float samples delivered (2xx).
    pub samples_sent: u64,
    /// Native histogram samples delivered.
    pub histograms_sent: u64,
    /// Requests delivered.
    pub requests_sent: u64,
    /// Compressed bytes delivered.
    pub bytes_sent: u64,
    /// Attempts that failed (connection error, timeout, any non-2xx).
    pub requests_failed: u64,
    /// Attempts that were retries.
    pub retries: u64,
    /// What was dropped, by reason.
    pub dropped: BTreeMap<DropReason, Dropped>,
    /// Intervals queued (including the one being sent).
    pub queue_len: u64,
    /// Unix time (ms) of the last delivered request.
    pub last_success_unix_ms: Option<u64>,
    /// Durable queue: files found torn or corrupt at start, skipped.
    pub queue_corrupt_files: u64,
    /// Durable queue: failed file operations (an interval that could not be
    /// written is kept in memory only).
    pub queue_disk_errors: u64,
}

impl TargetStats {
    fn count_drop(&self, reason: DropReason, batches: u64, samples: u64) {
        let mut dropped = self.dropped.lock();
        let d = dropped.entry(reason).or_default();
        d.batches += batches;
        d.samples += samples;
    }

    /// Counts a queue file found torn or corrupt (durable storages).
    pub fn count_queue_corrupt_file(&self) {
        self.queue_corrupt_files.fetch_add(1, Relaxed);
    }

    /// Counts a failed queue file operation (durable storages).
    pub fn count_queue_disk_error(&self) {
        self.queue_disk_errors.fetch_add(1, Relaxed);
    }

    /// Adds the queue counters of `other` (what a storage counted before it
    /// was attached to its writer).
    pub fn add_queue_counts(&self, other: &TargetStats) {
        self.queue_corrupt_files.fetch_add(other.queue_corrupt_files.load(Relaxed), Relaxed);
        self.queue_disk_errors.fetch_add(other.queue_disk_errors.load(Relaxed), Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self, url: &str) -> TargetStatsSnapshot {
        let last = self.last_success_unix_ms.load(Relaxed);
        TargetStatsSnapshot {
            url: url.to_string(),
            samples_sent: self.samples_sent.load(Relaxed),
            histograms_sent: self.histograms_sent.load(Relaxed),
            requests_sent: self.requests_sent.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            requests_failed: self.requests_failed.load(Relaxed),
            retries: self.retries.load(Relaxed),
            dropped: self.dropped.lock().clone(),
            queue_len: self.queue_len.load(Relaxed),
            last_success_unix_ms: (last > 0).then_some(last),
            queue_corrupt_files: self.queue_corrupt_files.load(Relaxed),
            queue_disk_errors: self.queue_disk_errors.load(Relaxed),
        }
    }
}

/// One queued interval.
#[derive(Clone, Debug)]
pub struct QueuedInterval {
    /// Position in the target's stream (increasing, never reused).
    pub seq: u64,
    /// The interval.
    pub interval: Arc<Interval>,
    /// Requests of it already delivered (or dropped by status).
    pub parts_done: usize,
}

/// Storage of a target's queue, oldest first. [`MemoryQueue`] keeps it in
/// memory; a durable implementation persists every change. The writer
/// enforces the capacity.
pub trait QueueStorage: Send + 'static {
    /// Called once by the writer before any other call: the target's
    /// counters, where a durable storage counts corrupt files and disk errors.
    fn attach_stats(&mut self, _stats: Arc<TargetStats>) {}
    /// The `seq` of the next interval pushed: above every `seq` the storage
    /// has seen (a durable one also counts the files it skipped as corrupt).
    fn next_seq(&self) -> u64 {
        self.iter().last().map_or(0, |q| q.seq + 1)
    }
    /// Appends `item` (its `seq` is above every queued one).
    fn push_back(&mut self, item: QueuedInterval);
    /// The queued intervals, oldest first.
    fn iter(&self) -> Box<dyn Iterator<Item = &QueuedInterval> + '_>;
    /// Removes the interval `seq` (delivered or dropped).
    fn remove(&mut self, seq: u64) -> Option<QueuedInterval>;
    /// Records that the first `parts_done` requests of `seq` are done.
    fn set_parts_done(&mut self, seq: u64, parts_done: usize);
    /// Number of queued intervals.
    fn len(&self) -> usize;
    /// Whether the queue is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The in-memory [`QueueStorage`].
#[derive(Debug, Default)]
pub struct MemoryQueue {
    items: VecDeque<QueuedInterval>,
}

impl QueueStorage for MemoryQueue {
    fn push_back(&mut self, item: QueuedInterval) {
        self.items.push_back(item);
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &QueuedInterval> + '_> {
        Box::new(self.items.iter())
    }

    fn remove(&mut self, seq: u64) -> Option<QueuedInterval> {
        let at = self.items.iter().position(|q| q.seq == seq)?;
        self.items.remove(at)
    }

    fn set_parts_done(&mut self, seq: u64, parts_done: usize) {
        if let Some(q) = self.items.iter_mut().find(|q| q.seq == seq) {
            q.parts_done = parts_done;
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

struct Queue {
    storage: Box<dyn QueueStorage>,
    next_seq: u64,
    /// The interval whose request is on the wire right now.
    in_flight: Option<u64>,
}

struct Shared {
    target: RemoteWriteTarget,
    uri: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    queue: Mutex<Queue>,
    wake: Notify,
    stats: Arc<TargetStats>,
}

impl Shared {
    fn set_queue_len(&self, q: &Queue) {
        self.stats.queue_len.store(q.storage.len() as u64, Relaxed);
    }
}

/// Delivery to one target: a bounded queue and the task that empties it.
/// Dropping it stops the task (what is queued is lost, unless the storage is
/// durable); [`RemoteWriter::shutdown`] drains first.
pub struct RemoteWriter {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for RemoteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteWriter").field("url", &self.shared.target.url).finish_non_exhaustive()
    }
}

impl RemoteWriter {
    /// Starts a writer with an in-memory queue on the current tokio runtime.
    /// Fails on an invalid URL or header, or outside a runtime.
    pub fn new(target: RemoteWriteTarget) -> Result<RemoteWriter, String> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| "remote-write: RemoteWriter::new needs a tokio runtime".to_string())?;
        RemoteWriter::with_storage(target, Box::<MemoryQueue>::default(), &handle)
    }

    /// Starts a writer on `runtime` whose queue lives in `storage` (anything
    /// already in it is sent first).
    pub fn with_storage(
        target: RemoteWriteTarget,
        storage: Box<dyn QueueStorage>,
        runtime: &tokio::runtime::Handle,
    ) -> Result<RemoteWriter, String> {
        let uri: Uri = target.url.parse().map_err(|e| format!("remote-write url {:?}: {e}", target.url))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            other => return Err(format!("remote-write url {:?}: scheme {other:?} not supported (http or https)", target.url)),
        }
        if uri.host().is_none() {
            return Err(format!("remote-write url {:?}: no host", target.url));
        }
        let mut headers = Vec::new();
        for (k, v) in &target.headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("remote-write header {k:?}: {e}"))?;
            if name == CONTENT_ENCODING || name == CONTENT_TYPE {
                return Err(format!("remote-write header {k:?} is fixed by the protocol"));
            }
            let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("remote-write header {k:?} value: {e}"))?;
            headers.push((name, value));
        }
        let tls = crate::security::tls::client_config(target.tls_ca_file.as_deref())
            .map_err(|e| format!("remote-write url {:?}: {e}", target.url))?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        let mut storage = storage;
        let stats = Arc::<TargetStats>::default();
        storage.attach_stats(stats.clone());
        let next_seq = storage.next_seq();
        let queue = Queue { storage, next_seq, in_flight: None };
        let shared = Arc::new(Shared { target, uri, headers, queue: Mutex::new(queue), wake: Notify::new(), stats });
        shared.set_queue_len(&shared.queue.lock());
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let task = runtime.spawn(run(shared.clone(), client));
        Ok(RemoteWriter { shared, task })
    }

    /// The target.
    pub fn target(&self) -> &RemoteWriteTarget {
        &self.shared.target
    }

    /// Queues `interval` (an empty one is ignored). Never blocks on the
    /// network; a full queue drops its oldest interval not being sent. With
    /// a durable storage this writes and fsyncs a file: call it off the
    /// async runtime's threads (`spawn_blocking`).
    pub fn push(&self, interval: impl Into<Arc<Interval>>) {
        let interval = interval.into();
        if interval.series.is_empty() {
            return;
        }
        let mut q = self.shared.queue.lock();
        while q.storage.len() >= self.shared.target.queue_capacity.max(1) {
            let in_flight = q.in_flight;
            let Some(victim) = q.storage.iter().map(|i| i.seq).find(|&s| Some(s) != in_flight) else { break };
            if let Some(v) = q.storage.remove(victim) {
                let samples = sample_count(&v.interval, self.shared.target.histograms);
                self.shared.stats.count_drop(DropReason::QueueFull, 1, samples);
                tracing::warn!(url = %self.shared.target.url, end_ms = v.interval.end_ms, "remote-write queue full: oldest interval dropped");
            }
        }
        let seq = q.next_seq;
        q.next_seq += 1;
        q.storage.push_back(QueuedInterval { seq, interval, parts_done: 0 });
        self.shared.set_queue_len(&q);
        drop(q);
        self.shared.wake.notify_one();
    }

    /// The target's live counters (they outlive the writer), for a
    /// self-metrics writer that reads them at each scrape.
    pub fn stats_handle(&self) -> Arc<TargetStats> {
        self.shared.stats.clone()
    }

    /// The target's self-metrics.
    pub fn stats(&self) -> TargetStatsSnapshot {
        self.shared.stats.snapshot(&self.shared.target.url)
    }

    /// Waits (at most `timeout`) until the queue is empty; returns whether it is.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.queue.lock().storage.is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drains the queue for at most `grace`, then stops the task; returns the
    /// final self-metrics.
    pub async fn shutdown(self, grace: Duration) -> TargetStatsSnapshot {
        self.wait_idle(grace).await;
        self.task.abort();
        self.stats()
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The writers of every configured target; each interval goes to all.
#[derive(Debug, Default)]
pub struct RemoteWriteSet {
    writers: Vec<RemoteWriter>,
}

impl RemoteWriteSet {
    /// Starts one writer per target on the current tokio runtime.
    pub fn new(targets: impl IntoIterator<Item = RemoteWriteTarget>) -> Result<RemoteWriteSet, String> {
        let writers = targets.into_iter().map(RemoteWriter::new).collect::<Result<_, _>>()?;
        Ok(RemoteWriteSet { writers })
    }

    /// Starts one writer per target on the current tokio runtime, each with
    /// its queue storage (what a storage already holds is sent first).
    pub fn with_storage(targets: impl IntoIterator<Item = (RemoteWriteTarget, Box<dyn QueueStorage>)>) -> Result<RemoteWriteSet, String> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "remote-write: RemoteWriteSet::with_storage needs a tokio runtime".to_string())?;
        let writers = targets.into_iter().map(|(t, s)| RemoteWriter::with_storage(t, s, &handle)).collect::<Result<_, _>>()?;
        Ok(RemoteWriteSet { writers })
    }

    /// The writers.
    pub fn writers(&self) -> &[RemoteWriter] {
        &self.writers
    }

    /// Queues `interval` on every target (see [`RemoteWriter::push`]: off
    /// the async runtime's threads when a storage is durable).
    pub fn push(&self, interval: Interval) {
        let interval = Arc::new(interval);
        for w in &self.writers {
            w.push(interval.clone());
        }
    }

    /// Self-metrics of every target.
    pub fn stats(&self) -> Vec<TargetStatsSnapshot> {
        self.writers.iter().map(RemoteWriter::stats).collect()
    }

    /// Drains every target (together, at most `grace`) and stops them.
    pub async fn shutdown(self, grace: Duration) -> Vec<TargetStatsSnapshot> {
        let deadline = tokio::time::Instant::now() + grace;
        let mut out = Vec::with_capacity(self.writers.len());
        for w in self.writers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            out.push(w.shutdown(left).await);
        }
        out
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

enum Outcome {
    Delivered,
    Retry { retry_after: Option<Duration>, why: String },
    Refused { status: StatusCode, body: String },
}

/// The task: oldest interval first, its requests in order.
async fn run(shared: Arc<Shared>, client: HttpClient) {
    // Encoded requests of the interval being sent, by seq.
    let mut encoded: Option<(u64, Vec<EncodedRequest>)> = None;
    let mut retry: u32 = 0;
    loop {
        let job = shared.queue.lock().storage.iter().next().cloned();
        let Some(job) = job else {
            encoded = None;
            shared.wake.notified().await;
            continue;
        };
        if !matches!(&encoded, Some((seq, _)) if *seq == job.seq) {
            let target = &shared.target;
            // Off the runtime's threads: a large interval takes a while.
            let (interval, mode, max) = (job.interval.clone(), target.histograms, target.max_samples_per_request);
            let result = tokio::task::spawn_blocking(move || encode_interval(&interval, mode, max).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(format!("encoder panicked: {e}")));
            match result {
                Ok((requests, _)) => encoded = Some((job.seq, requests)),
                Err(e) => {
                    tracing::error!(url = %target.url, error = %e, "remote-write: interval cannot be encoded, dropped");
                    let seq = job.seq;
                    on_queue(&shared, move |shared, q| {
                        if q.storage.remove(seq).is_some() {
                            shared.stats.count_drop(DropReason::Encode, 1, sample_count(&job.interval, shared.target.histograms));
                        }
                        shared.set_queue_len(q);
                    })
                    .await;
                    continue;
                }
            }
        }
        let Some((_, requests)) = encoded.as_ref() else { continue };
        let Some(request) = requests.get(job.parts_done) else {
            // Every part done (a storage that recorded the last part but not the removal).
            let seq = job.seq;
            on_queue(&shared, move |shared, q| {
                q.storage.remove(seq);
                shared.set_queue_len(q);
            })
            .await;
            continue;
        };
        {
            let mut q = shared.queue.lock();
            if !q.storage.iter().any(|i| i.seq == job.seq) {
                continue; // dropped (queue full) while backing off
            }
            q.in_flight = Some(job.seq);
        }
        if retry > 0 {
            shared.stats.retries.fetch_add(1, Relaxed);
        }
        let outcome = send(&shared, &client, request).await;
        let mut part_finished = false;
        match outcome {
            Outcome::Delivered => {
                let s = &shared.stats;
                s.samples_sent.fetch_add(request.samples, Relaxed);
                s.histograms_sent.fetch_add(request.histograms, Relaxed);
                s.requests_sent.fetch_add(1, Relaxed);
                s.bytes_sent.fetch_add(request.body.len() as u64, Relaxed);
                s.last_success_unix_ms.store(unix_ms(), Relaxed);
                part_finished = true;
            }
            Outcome::Refused { status, body } => {
                shared.stats.requests_failed.fetch_add(1, Relaxed);
                shared.stats.count_drop(DropReason::Status(status.as_u16()), 1, request.samples + request.histograms);
                tracing::warn!(url = %shared.target.url, %status, body = %body, "remote-write request refused, dropped (not retried)");
                part_finished = true;
            }
            Outcome::Retry { retry_after, why } => {
                shared.stats.requests_failed.fetch_add(1, Relaxed);
                let wait = shared.target.retry.backoff(retry, retry_after);
                if retry == 0 {
                    tracing::warn!(url = %shared.target.url, error = %why, ?wait, "remote-write request failed, retrying");
                } else {
                    tracing::debug!(url = %shared.target.url, error = %why, retry, ?wait, "remote-write request failed again");
                }
                retry = retry.saturating_add(1);
                shared.queue.lock().in_flight = None;
                tokio::time::sleep(wait).await;
            }
        }
        if part_finished {
            retry = 0;
            let (seq, done, parts) = (job.seq, job.parts_done + 1, requests.len());
            on_queue(&shared, move |shared, q| {
                q.in_flight = None;
                if done >= parts {
                    q.storage.remove(seq);
                } else {
                    q.storage.set_parts_done(seq, done);
                }
                shared.set_queue_len(q);
            })
            .await;
        }
    }
}

/// Runs `f` on the locked queue on a blocking thread (a durable storage
/// writes and fsyncs files). Once started, `f` completes even if the task is
/// aborted meanwhile.
async fn on_queue(shared: &Arc<Shared>, f: impl FnOnce(&Shared, &mut Queue) + Send + 'static) {
    let on = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut q = on.queue.lock();
        f(&on, &mut q);
    })
    .await;
    if let Err(e) = done {
        tracing::error!(url = %shared.target.url, "remote-write: queue update failed: {e}");
    }
}

/// One attempt of one request.
async fn send(shared: &Shared, client: &HttpClient, request: &EncodedRequest) -> Outcome {
    let target = &shared.target;
    let mut builder = Request::post(shared.uri.clone())
        .header(CONTENT_ENCODING, "snappy")
        .header(CONTENT_TYPE, "application/x-protobuf")
        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
        .header(USER_AGENT, USER_AGENT_VALUE);
    if let Some(path) = &target.bearer_token_file {
        match std::fs::read_to_string(path) {
            Ok(token) => match HeaderValue::try_from(format!("Bearer {}", token.trim())) {
                Ok(v) => builder = builder.header(AUTHORIZATION, v),
                Err(e) => return Outcome::Retry { retry_after: None, why: format!("bearer token {}: {e}", path.display()) },
            },
            Err(e) => return Outcome::Retry { retry_after: None, why: format!("bearer token {}: {e}", path.display()) },
        }
    }
    let mut http_request = match builder.body(Full::new(request.body.clone())) {
        Ok(r) => r,
        Err(e) => return Outcome::Retry { retry_after: None, why: format!("request: {e}") },
    };
    for (name, value) in &shared.headers {
        http_request.headers_mut().insert(name.clone(), value.clone());
    }
    let attempt = async {
        let response = client.request(http_request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
        // Read the body so the connection can be reused; keep its start for logs.
        let body = response.into_body().collect().await.map_err(|e| format!("response body: {e}"))?.to_bytes();
        let body = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
        Ok::<_, String>((status, retry_after, body))
    };
    match tokio::time::timeout(target.timeout, attempt).await {
        Err(_) => Outcome::Retry { retry_after: None, why: format!("timed out after {:?}", target.timeout) },
        Ok(Err(why)) => Outcome::Retry { retry_after: None, why },
        Ok(Ok((status, retry_after, body))) => {
            if status.is_success() {
                Outcome::Delivered
            } else if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                Outcome::Retry { retry_after, why: format!("{status}: {body}") }
            } else {
                Outcome::Refused { status, body }
            }
        }
    }
}

/// `Retry-After`: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

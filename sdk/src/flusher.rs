//! The flusher: the only part of the SDK that talks to the network.
//!
//! It runs on its own thread with a single-threaded tokio runtime, so the
//! application needs no runtime of its own. Every interval it takes the deltas
//! of every series and sends at most one batch to the collector.
//!
//! Delivery: a batch, once numbered, is immutable and resent with the same
//! sequence until acknowledged (the collector drops duplicates). What is
//! recorded meanwhile is merged into one pending [`Deltas`] (counters add,
//! sketches merge), so an outage costs memory per series, not per interval.
//! Retries back off exponentially with jitter.

use crate::delta::{Blocklist, Deltas};
use crate::error::Error;
use crate::exposition::TextWriter;
use crate::shoal::Inner;
use crate::wire;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use prost::Message;
use rand::Rng;
use shoal_proto as pb;
use shoal_proto::ingest_client::IngestClient;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

/// Settings of the flusher.
#[derive(Clone, Debug)]
pub(crate) struct FlusherConfig {
    pub(crate) endpoint: String,
    pub(crate) interval: Duration,
    pub(crate) shutdown_timeout: Duration,
}

/// Why the SDK dropped deltas it had taken. Every value dropped is counted
/// under exactly one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// The series matches the collector's blocklist.
    Blocked,
    /// The collector refused the whole batch as malformed or over an
    /// instance-wide limit (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`):
    /// resending it could never succeed.
    Refused,
    /// The collector merged the batch but refused these series one by one
    /// (series limits, blocklist, kind conflicts).
    Rejected,
    /// Still unacknowledged when shutdown's final flush gave up.
    Shutdown,
}

impl DropReason {
    /// Every reason, in exposition order.
    pub const ALL: [DropReason; 4] = [DropReason::Blocked, DropReason::Refused, DropReason::Rejected, DropReason::Shutdown];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Blocked => "blocked",
            DropReason::Refused => "refused",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }
}

/// What the flusher has done, exposed under `shoal_flush_`.
///
/// Conservation, in values (see [`Deltas::values`]: counter increments
/// summed, histogram samples; gauges are 0 values): every value recorded is
/// eventually taken, and every value taken is in exactly one of
/// acknowledged (merged by the collector), dropped (by reason) or pending:
///
/// `values_taken = values_acknowledged + Σ values_dropped(reason) + values_pending`
///
/// and after a successful shutdown `values_pending = 0`. The same identity
/// holds for series-updates only per batch, because absorbing two takes of a
/// series into one pending batch makes one series-update of two.
#[derive(Debug, Default)]
pub struct FlusherStats {
    /// Send attempts (retries included).
    pub batches_sent: AtomicU64,
    /// Batches acknowledged by the collector.
    pub batches_acknowledged: AtomicU64,
    /// Batches the collector reported as already merged (a retry after a
    /// lost acknowledgement).
    pub batches_duplicate: AtomicU64,
    /// Send attempts that failed or timed out (the batch is kept).
    pub batches_failed: AtomicU64,
    /// Send attempts the collector answered `RESOURCE_EXHAUSTED` (it is
    /// overloaded; the batch is kept and resent after the hint).
    pub batches_overloaded: AtomicU64,
    /// Batches the collector refused as a whole and that were dropped.
    pub batches_refused: AtomicU64,
    /// Series-updates in send attempts.
    pub series_updates_sent: AtomicU64,
    /// Series-updates acknowledged.
    pub series_updates_acknowledged: AtomicU64,
    /// Encoded protobuf bytes sent.
    pub bytes_sent: AtomicU64,
    /// Series waiting to be acknowledged (in flight plus accumulating).
    pub pending_series: AtomicU64,
    /// Values taken from the recording cells (counter increments summed,
    /// histogram samples): everything recorded, once taken.
    pub values_taken: AtomicU64,
    /// Values in acknowledged batches that the collector merged.
    pub values_acknowledged: AtomicU64,
    /// Values held, not yet acknowledged.
    pub values_pending: AtomicU64,
    /// Series-updates taken from the recording cells (one per changed series per take).
    pub series_updates_taken: AtomicU64,
    values_dropped: [AtomicU64; 4],
    series_updates_dropped: [AtomicU64; 4],
    blocklist: parking_lot::Mutex<Vec<String>>,
}

impl FlusherStats {
    /// Values dropped for one reason.
    pub fn values_dropped(&self, why: DropReason) -> u64 {
        self.values_dropped[why as usize].load(Relaxed)
    }

    /// Values dropped, all reasons.
    pub fn values_dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|&r| self.values_dropped(r)).sum()
    }

    /// Series-updates dropped for one reason.
    pub fn series_updates_dropped(&self, why: DropReason) -> u64 {
        self.series_updates_dropped[why as usize].load(Relaxed)
    }

    /// The blocklist last received from the collector.
    pub fn blocklist(&self) -> Vec<String> {
        self.blocklist.lock().clone()
    }

    fn drop_deltas(&self, why: DropReason, deltas: &Deltas) {
        self.drop_counts(why, deltas.values(), deltas.series_updates() as u64);
    }

    fn drop_counts(&self, why: DropReason, values: u64, series_updates: u64) {
        self.values_dropped[why as usize].fetch_add(values, Relaxed);
        self.series_updates_dropped[why as usize].fetch_add(series_updates, Relaxed);
    }

    pub(crate) fn write(&self, w: &mut TextWriter) {
        let counters: [(&str, &AtomicU64, &str); 12] = [
            ("shoal_flush_batches_sent_total", &self.batches_sent, "Batch send attempts, retries included"),
            ("shoal_flush_batches_acknowledged_total", &self.batches_acknowledged, "Batches acknowledged by the collector"),
            ("shoal_flush_batches_duplicate_total", &self.batches_duplicate, "Acknowledged batches the collector had already merged"),
            ("shoal_flush_batches_failed_total", &self.batches_failed, "Batch send attempts that failed; the batch is kept and resent"),
            (
                "shoal_flush_batches_overloaded_total",
                &self.batches_overloaded,
                "Batch send attempts refused by an overloaded collector; the batch is kept and resent after a backoff",
            ),
            ("shoal_flush_batches_refused_total", &self.batches_refused, "Batches the collector refused as a whole; dropped and counted"),
            ("shoal_flush_series_updates_sent_total", &self.series_updates_sent, "Series-updates in batch send attempts"),
            (
                "shoal_flush_series_updates_acknowledged_total",
                &self.series_updates_acknowledged,
                "Series-updates acknowledged by the collector",
            ),
            ("shoal_flush_series_updates_taken_total", &self.series_updates_taken, "Series-updates taken from the recording cells"),
            ("shoal_flush_bytes_sent_total", &self.bytes_sent, "Encoded protobuf bytes sent"),
            (
                "shoal_flush_values_taken_total",
                &self.values_taken,
                "Values taken from the recording cells (counter increments summed, histogram samples)",
            ),
            ("shoal_flush_values_acknowledged_total", &self.values_acknowledged, "Values the collector acknowledged and merged"),
        ];
        for (name, value, help) in counters {
            w.family(name, "counter", help);
            w.sample(name, &[], None, &value.load(Relaxed).to_string());
        }
        w.family("shoal_flush_values_dropped_total", "counter", "Values taken but never merged, by reason");
        for why in DropReason::ALL {
            w.sample(
                "shoal_flush_values_dropped_total",
                &[("reason".into(), why.as_str().into())],
                None,
                &self.values_dropped(why).to_string(),
            );
        }
        w.family("shoal_flush_series_updates_dropped_total", "counter", "Series-updates taken but never merged, by reason");
        for why in DropReason::ALL {
            w.sample(
                "shoal_flush_series_updates_dropped_total",
                &[("reason".into(), why.as_str().into())],
                None,
                &self.series_updates_dropped(why).to_string(),
            );
        }
        w.family("shoal_flush_pending_series", "gauge", "Series held for the collector, not yet acknowledged");
        w.sample("shoal_flush_pending_series", &[], None, &self.pending_series.load(Relaxed).to_string());
        w.family("shoal_flush_pending_values", "gauge", "Values held for the collector, not yet acknowledged");
        w.sample("shoal_flush_pending_values", &[], None, &self.values_pending.load(Relaxed).to_string());
        w.family("shoal_flush_blocklist_patterns", "gauge", "Patterns in the blocklist last received from the collector");
        w.sample("shoal_flush_blocklist_patterns", &[], None, &self.blocklist.lock().len().to_string());
    }
}

enum Command {
    Flush(Sender<Result<(), Error>>),
    Shutdown(Sender<Result<(), Error>>),
}

/// Handle to the flusher thread.
pub(crate) struct Flusher {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl Flusher {
    pub(crate) fn start(inner: Arc<Inner>, config: FlusherConfig) -> Result<Flusher, Error> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| Error::InvalidConfig(format!("collector url {:?}: {e}", config.endpoint)))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::InvalidConfig(format!("cannot start the flusher runtime: {e}")))?;
        let (commands, receiver) = bounded(16);
        let timeout = config.shutdown_timeout;
        let thread = std::thread::Builder::new()
            .name("shoal-flusher".into())
            .spawn(move || {
                let client = runtime.block_on(async { IngestClient::new(endpoint.connect_lazy()) });
                let mut state = State::new(inner, client, runtime, config);
                state.run(receiver);
            })
            .map_err(|e| Error::InvalidConfig(format!("cannot start the flusher thread: {e}")))?;
        Ok(Flusher { commands, thread: Some(thread), timeout })
    }

    fn call(&self, make: fn(Sender<Result<(), Error>>) -> Command) -> Result<(), Error> {
        let (tx, rx) = bounded(1);
        self.commands.send(make(tx)).map_err(|_| Error::ShutDown)?;
        // The flusher gives up at `timeout`; allow it a moment to answer.
        rx.recv_timeout(self.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(Error::Flush("the flusher did not answer in time".into())))
    }

    pub(crate) fn flush_now(&self) -> Result<(), Error> {
        self.call(Command::Flush)
    }

    pub(crate) fn shutdown(mut self) -> Result<(), Error> {
        let result = self.call(Command::Shutdown);
        if result.is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        result
    }
}

struct Batch {
    sequence: u64,
    start_nanos: u64,
    end_nanos: u64,
    deltas: Deltas,
}

enum SendOutcome {
    Acknowledged,
    Failed(String),
}

struct State {
    inner: Arc<Inner>,
    client: IngestClient<Channel>,
    runtime: tokio::runtime::Runtime,
    config: FlusherConfig,
    sequence: u64,
    in_flight: Option<Batch>,
    accumulating: Deltas,
    accumulating_since: u64,
    refs: HashMap<String, u32>,
    known: HashSet<u32>,
    epoch: Option<u64>,
    backoff: Duration,
    retry_at: Option<Instant>,
    blocklist: Blocklist,
    /// Something was blocked since the last response: send even an empty
    /// batch, so that an instance whose every series is blocked still hears
    /// when the collector lifts the block.
    poll_blocklist: bool,
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Response metadata key of the collector's retry hint on `RESOURCE_EXHAUSTED`.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

/// The collector's retry hint, capped at [`MAX_BACKOFF`].
fn retry_hint(status: &tonic::Status) -> Option<Duration> {
    let ms: u64 = status.metadata().get(RETRY_AFTER_METADATA)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_millis(ms).min(MAX_BACKOFF))
}

impl State {
    fn new(inner: Arc<Inner>, client: IngestClient<Channel>, runtime: tokio::runtime::Runtime, config: FlusherConfig) -> State {
        State {
            inner,
            client,
            runtime,
            config,
            sequence: 0,
            in_flight: None,
            accumulating: Deltas::default(),
            accumulating_since: unix_nanos(),
            refs: HashMap::new(),
            known: HashSet::new(),
            epoch: None,
            backoff: MIN_BACKOFF,
            retry_at: None,
            blocklist: Blocklist::default(),
            poll_blocklist: false,
        }
    }

    fn run(&mut self, commands: Receiver<Command>) {
        let mut next_tick = Instant::now() + self.config.interval;
        loop {
            let now = Instant::now();
            let wake = self.retry_at.map_or(next_tick, |r| r.min(next_tick));
            match commands.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Command::Flush(reply)) => {
                    let _ = reply.send(self.flush_all());
                }
                Ok(Command::Shutdown(reply)) => {
                    let _ = reply.send(self.final_flush());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= next_tick {
                        self.collect();
                        while next_tick <= Instant::now() {
                            next_tick += self.config.interval;
                        }
                    }
                    if self.retry_at.is_none_or(|r| Instant::now() >= r) {
                        let _ = self.send_once(self.request_timeout());
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.final_flush();
                    return;
                }
            }
        }
    }

    fn request_timeout(&self) -> Duration {
        self.config.interval.clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Moves everything recorded since the last take into the accumulating
    /// deltas, dropping (and counting) what the blocklist blocks.
    fn collect(&mut self) {
        let mut fresh = self.inner.take_deltas();
        let stats = &self.inner.flusher_stats;
        stats.values_taken.fetch_add(fresh.values(), Relaxed);
        stats.series_updates_taken.fetch_add(fresh.series_updates() as u64, Relaxed);
        let blocked = fresh.remove_blocked(&self.blocklist);
        stats.drop_deltas(DropReason::Blocked, &blocked);
        self.poll_blocklist |= !blocked.is_empty();
        self.accumulating.absorb(fresh);
        self.update_pending();
    }

    fn update_pending(&self) {
        let in_flight = self.in_flight.as_ref().map(|b| &b.deltas);
        let pending = self.accumulating.series_updates() + in_flight.map_or(0, |d| d.series_updates());
        let values = self.accumulating.values().wrapping_add(in_flight.map_or(0, |d| d.values()));
        self.inner.flusher_stats.pending_series.store(pending as u64, Relaxed);
        self.inner.flusher_stats.values_pending.store(values, Relaxed);
    }

    /// Replaces the blocklist if the collector sent a different one; drops
    /// (and counts) the newly blocked series of the accumulating deltas. The
    /// batch in flight is immutable and goes as it is (the collector rejects
    /// blocked series itself).
    fn apply_blocklist(&mut self, patterns: Vec<String>) {
        if patterns.as_slice() == self.blocklist.patterns() {
            return;
        }
        match Blocklist::new(&patterns) {
            Ok(b) => {
                tracing::info!(target: "shoal::flusher", "blocklist from the collector: {patterns:?}");
                self.blocklist = b;
                *self.inner.flusher_stats.blocklist.lock() = patterns;
                let blocked = self.accumulating.remove_blocked(&self.blocklist);
                self.inner.flusher_stats.drop_deltas(DropReason::Blocked, &blocked);
                self.update_pending();
            }
            Err(e) => tracing::warn!(target: "shoal::flusher", "ignoring the collector's blocklist: {e}"),
        }
    }

    /// Shutdown's flush: what is still unacknowledged when it gives up is
    /// dropped, and counted.
    fn final_flush(&mut self) -> Result<(), Error> {
        let result = self.flush_all();
        if result.is_err() {
            let stats = &self.inner.flusher_stats;
            if let Some(batch) = self.in_flight.take() {
                stats.drop_deltas(DropReason::Shutdown, &batch.deltas);
            }
            let rest = std::mem::take(&mut self.accumulating);
            stats.drop_deltas(DropReason::Shutdown, &rest);
            self.update_pending();
        }
        result
    }

    /// Sends until nothing is pending or the shutdown timeout passes.
    fn flush_all(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        self.collect();
        loop {
            if self.in_flight.is_none() && self.accumulating.is_empty() && !self.poll_blocklist {
                return Ok(());
            }
            if let Some(at) = self.retry_at {
                // Honour the backoff (and an overloaded collector's hint).
                if at > deadline {
                    return Err(Error::Flush("the collector asked to retry after the deadline".into()));
                }
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Flush("deadline passed with deltas still unacknowledged".into()));
            }
            if let SendOutcome::Failed(why) = self.send_once(remaining.min(self.request_timeout())) {
                if Instant::now() >= deadline {
                    return Err(Error::Flush(why));
                }
            }
        }
    }

    /// Sends the in-flight batch (numbering the accumulated deltas as a new
    /// batch if none is in flight). One attempt, plus one immediate resend if
    /// the collector asked for definitions.
    fn send_once(&mut self, timeout: Duration) -> SendOutcome {
        if self.in_flight.is_none() {
            if self.accumulating.is_empty() && !self.poll_blocklist {
                return SendOutcome::Acknowledged;
            }
            self.sequence += 1;
            let end = unix_nanos();
            let deltas = std::mem::take(&mut self.accumulating);
            self.in_flight = Some(Batch { sequence: self.sequence, start_nanos: self.accumulating_since, end_nanos: end, deltas });
            self.accumulating_since = end;
        }
        for _attempt in 0..2 {
            let (request, refs_in_batch) = self.encode();
            let stats = self.inner.flusher_stats.clone();
            let updates = self.in_flight.as_ref().map_or(0, |b| b.deltas.series_updates()) as u64;
            stats.batches_sent.fetch_add(1, Relaxed);
            stats.series_updates_sent.fetch_add(updates, Relaxed);
            stats.bytes_sent.fetch_add(request.encoded_len() as u64, Relaxed);
            let mut client = self.client.clone();
            let result = self.runtime.block_on(async move { tokio::time::timeout(timeout, client.flush(request)).await });
            let response = match result {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return self.refused(status),
                Err(_) => return self.failed(format!("no answer within {timeout:?}"), None),
            };
            if self.epoch != Some(response.collector_epoch) {
                self.epoch = Some(response.collector_epoch);
                self.known.clear();
            }
            self.poll_blocklist = false;
            self.apply_blocklist(response.blocklist);
            if !response.unknown_refs.is_empty() {
                // The collector forgot our definitions: resend them all.
                self.known.clear();
                continue;
            }
            let sequence = self.in_flight.as_ref().map_or(0, |b| b.sequence);
            if response.acknowledged_sequence != sequence {
                return self.failed(format!("collector acknowledged {} for batch {sequence}", response.acknowledged_sequence), None);
            }
            self.known.extend(refs_in_batch);
            let batch = self.in_flight.take().expect("a batch is in flight");
            let (rejected_values, rejected_updates) = self.rejected_in(&batch.deltas, &response.rejected);
            stats.drop_counts(DropReason::Rejected, rejected_values, rejected_updates);
            if !response.rejected.is_empty() {
                let first = &response.rejected[0];
                tracing::debug!(
                    target: "shoal::flusher",
                    "collector rejected {} series (first: {}: {})",
                    response.rejected.len(),
                    first.reason,
                    first.message
                );
            }
            stats.batches_acknowledged.fetch_add(1, Relaxed);
            stats.series_updates_acknowledged.fetch_add(updates - rejected_updates, Relaxed);
            stats.values_acknowledged.fetch_add(batch.deltas.values().wrapping_sub(rejected_values), Relaxed);
            if response.duplicate {
                stats.batches_duplicate.fetch_add(1, Relaxed);
            }
            self.backoff = MIN_BACKOFF;
            self.retry_at = None;
            self.update_pending();
            return SendOutcome::Acknowledged;
        }
        self.failed("collector kept asking for series definitions".into(), None)
    }

    /// Values and series-updates of `deltas` whose refs the collector rejected.
    fn rejected_in(&self, deltas: &Deltas, rejected: &[pb::SeriesRejection]) -> (u64, u64) {
        if rejected.is_empty() {
            return (0, 0);
        }
        let refs: HashSet<u32> = rejected.iter().map(|r| r.r#ref).collect();
        let hit = |key: &crate::key::SeriesKey| self.refs.get(key.canonical()).is_some_and(|r| refs.contains(r));
        let (mut values, mut updates) = (0u64, 0u64);
        for c in deltas.counters.iter().filter(|c| hit(&c.key)) {
            values = values.wrapping_add(c.delta);
            updates += 1;
        }
        updates += deltas.gauges.iter().filter(|g| hit(&g.key)).count() as u64;
        for h in deltas.histograms.iter().filter(|h| hit(&h.key)) {
            values = values.wrapping_add(h.sketch.count());
            updates += 1;
        }
        (values, updates)
    }

    /// An error status: overload backs off (with the hint), a refusal of the
    /// batch as such drops it (resending could never succeed), anything else
    /// is a failed attempt.
    fn refused(&mut self, status: tonic::Status) -> SendOutcome {
        let why = format!("collector answered {:?}: {}", status.code(), status.message());
        match status.code() {
            tonic::Code::ResourceExhausted => {
                self.inner.flusher_stats.batches_overloaded.fetch_add(1, Relaxed);
                self.failed(why, Some(retry_hint(&status).unwrap_or(self.backoff)))
            }
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                let stats = &self.inner.flusher_stats;
                if let Some(batch) = self.in_flight.take() {
                    tracing::warn!(target: "shoal::flusher", "batch {} dropped: {why}", batch.sequence);
                    stats.batches_refused.fetch_add(1, Relaxed);
                    stats.drop_deltas(DropReason::Refused, &batch.deltas);
                }
                // The collector may have bound some refs before refusing: define them all again.
                self.known.clear();
                self.update_pending();
                SendOutcome::Failed(why)
            }
            _ => self.failed(why, None),
        }
    }

    /// A failed attempt: the batch is kept; the next one waits an
    /// exponential backoff with jitter, or the collector's hint (jittered
    /// upwards by up to half of it) if that is longer.
    fn failed(&mut self, why: String, hint: Option<Duration>) -> SendOutcome {
        self.inner.flusher_stats.batches_failed.fetch_add(1, Relaxed);
        tracing::debug!(target: "shoal::flusher", "flush failed: {why}");
        let mut rng = rand::thread_rng();
        let mut wait = rng.gen_range(self.backoff / 2..=self.backoff);
        if let Some(hint) = hint {
            wait = wait.max(hint + rng.gen_range(Duration::ZERO..=hint / 2));
        }
        self.retry_at = Some(Instant::now() + wait);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.update_pending();
        SendOutcome::Failed(why)
    }

    /// The series' ref, numbered 1, 2, ... in order of first send.
    fn ref_of(&mut self, canonical: &str) -> u32 {
        if let Some(&r) = self.refs.get(canonical) {
            return r;
        }
        let r = self.refs.len() as u32 + 1;
        self.refs.insert(canonical.to_string(), r);
        r
    }

    /// The protobuf request of the in-flight batch, and the refs it uses.
    fn encode(&mut self) -> (pb::FlushRequest, Vec<u32>) {
        let batch = self.in_flight.take().expect("encode needs a batch in flight");
        let mut definitions = Vec::new();
        let mut refs = Vec::new();
        let mut define = |state: &mut State, key: &crate::key::SeriesKey| -> u32 {
            let r = state.ref_of(key.canonical());
            if !state.known.contains(&r) {
                // The wire carries Prometheus-valid names (the collector refuses
                // others); re-keying also drops keys that collide once sanitised.
                let wire_key = crate::shoal::exposed_key(key);
                definitions.push(pb::SeriesDefinition {
                    r#ref: r,
                    name: wire_key.name().to_string(),
                    labels: wire::labels_to_proto(wire_key.labels()),
                });
            }
            refs.push(r);
            r
        };
        let counters = batch.deltas.counters.iter().map(|c| pb::CounterDelta { r#ref: define(self, &c.key), delta: c.delta }).collect();
        let gauges = batch.deltas.gauges.iter().map(|g| pb::GaugeValue { r#ref: define(self, &g.key), value: g.value }).collect();
        let histograms = batch
            .deltas
            .histograms
            .iter()
            .map(|h| pb::HistogramDelta { r#ref: define(self, &h.key), sketch: Some(wire::sketch_to_proto(&h.sketch)) })
            .collect();
        let request = pb::FlushRequest {
            instance_id: self.inner.identity.instance_id.clone(),
            instance_labels: wire::labels_to_proto(&self.inner.identity.labels),
            sequence: batch.sequence,
            interval_start_unix_nanos: batch.start_nanos,
            interval_end_unix_nanos: batch.end_nanos,
            definitions,
            counters,
            gauges,
            histograms,
        };
        self.in_flight = Some(batch);
        (request, refs)
    }
}

//! The flush client: the one implementation of the sending side of the
//! protocol, used by the SDK's flusher and (one tier up) by a collector
//! forwarding to an upstream collector.
//!
//! It runs on its own thread with a single-threaded tokio runtime, so the
//! application needs no runtime of its own. Every interval it takes the
//! deltas of a [`DeltaSource`] and sends them as numbered batches.
//!
//! Delivery: a batch, once numbered, is immutable and resent with the same
//! sequence until acknowledged (the collector drops duplicates). What is
//! taken meanwhile is merged into one pending [`Deltas`] (counters add,
//! sketches merge), so an outage costs memory per series, not per interval.
//! Deltas too large for one batch are split ([`batch::split`]), each part a
//! batch of its own, sent in order. Retries back off exponentially with
//! jitter ([`backoff`]). A batch the collector refuses as a whole
//! (`INVALID_ARGUMENT`, `FAILED_PRECONDITION`, `OUT_OF_RANGE`) can never
//! succeed: it is dropped and counted ([`FlusherStats`]), never resent.
//!
//! Parts: [`refs`] (the ref table), [`backoff`], [`batch`] (numbering,
//! splitting, encoding), [`stats`] (the conservation counts); this module is
//! the run loop.

pub mod backoff;
pub mod batch;
pub mod refs;
pub mod stats;

pub use self::batch::{Batch, SplitLimits};
pub use self::stats::{DropReason, FlusherStats};

use self::backoff::{retry_hint, Backoff};
use self::refs::RefTable;
use crate::ingest_client::IngestClient;
use crate::v1 as pb;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use prost::Message;
use shoal_core::{Blocklist, CounterDelta, Deltas, GaugeValue, OwnMetrics, OwnValue, SeriesKey};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::{Channel, Endpoint};

/// Who is sending, once per batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// Unique per process start (per sender).
    pub instance_id: String,
    /// Instance labels, sorted by key.
    pub labels: Vec<(String, String)>,
}

/// Where deltas come from: the SDK's recording cells, or a collector's
/// rollups when it forwards upstream.
pub trait DeltaSource: Send + Sync + 'static {
    /// Everything recorded since the previous call. Called only by the
    /// client's thread.
    fn take_deltas(&self) -> Deltas;

    /// HELP text and unit of the metric `name` (as recorded, before
    /// sanitising), sent with its series definitions. None by default.
    fn describe(&self, name: &str) -> Option<(String, Option<String>)> {
        let _ = name;
        None
    }

    /// The source's own health series (cumulative counters, current gauges),
    /// read when a batch is numbered. They travel with the batch as ordinary
    /// series of the instance, but outside the value-conservation counts:
    /// they count the flush itself (values taken, batches sent), so counting
    /// them as values would feed every flush back into the next. None by
    /// default.
    fn own_metrics(&self) -> OwnMetrics {
        OwnMetrics::default()
    }
}

/// Settings of a flush client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// gRPC endpoint of the collector, e.g. `http://127.0.0.1:7171`.
    pub endpoint: String,
    /// How often deltas are taken and sent.
    pub interval: Duration,
    /// How long `flush` and `shutdown` wait for acknowledgements.
    pub shutdown_timeout: Duration,
    /// How much one batch may carry.
    pub split: SplitLimits,
}

/// What can go wrong when using the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// The endpoint or a setting is invalid.
    InvalidConfig(String),
    /// A flush did not complete in time; the deltas are kept (or, at
    /// shutdown, dropped and counted).
    Flush(String),
    /// The client has been shut down.
    ShutDown,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::InvalidConfig(m) => write!(f, "invalid configuration: {m}"),
            ClientError::Flush(m) => write!(f, "flush failed: {m}"),
            ClientError::ShutDown => f.write_str("the flush client is shut down"),
        }
    }
}

impl std::error::Error for ClientError {}

enum Command {
    Flush(Sender<Result<(), ClientError>>),
    Shutdown(Sender<Result<(), ClientError>>),
}

/// Handle to a running flush client thread.
pub struct FlushClient {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl FlushClient {
    /// Starts the client thread. Nothing connects until the first send.
    pub fn start(
        source: Arc<dyn DeltaSource>,
        identity: Identity,
        stats: Arc<FlusherStats>,
        config: ClientConfig,
    ) -> Result<FlushClient, ClientError> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|e| ClientError::InvalidConfig(format!("collector url {:?}: {e}", config.endpoint)))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::InvalidConfig(format!("cannot start the flusher runtime: {e}")))?;
        let (commands, receiver) = bounded(16);
        let timeout = config.shutdown_timeout;
        let thread = std::thread::Builder::new()
            .name("shoal-flusher".into())
            .spawn(move || {
                let client = runtime.block_on(async {
                    IngestClient::new(endpoint.connect_lazy()).max_decoding_message_size(crate::limits::MAX_BATCH_BYTES)
                });
                let mut state = State::new(source, identity, stats, client, runtime, config);
                state.run(receiver);
            })
            .map_err(|e| ClientError::InvalidConfig(format!("cannot start the flusher thread: {e}")))?;
        Ok(FlushClient { commands, thread: Some(thread), timeout })
    }

    fn call(&self, make: fn(Sender<Result<(), ClientError>>) -> Command) -> Result<(), ClientError> {
        let (tx, rx) = bounded(1);
        self.commands.send(make(tx)).map_err(|_| ClientError::ShutDown)?;
        // The client gives up at `timeout`; allow it a moment to answer.
        rx.recv_timeout(self.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(ClientError::Flush("the flusher did not answer in time".into())))
    }

    /// Takes and sends everything now; waits for the acknowledgements (up
    /// to the shutdown timeout).
    pub fn flush_now(&self) -> Result<(), ClientError> {
        self.call(Command::Flush)
    }

    /// Final flush, then stops the thread.
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        let result = self.call(Command::Shutdown);
        if result.is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        result
    }
}

enum SendOutcome {
    Acknowledged,
    Failed(String),
}

/// Deltas waiting for the collector: numbered batches in order, and what
/// accumulates behind them.
#[derive(Default)]
struct Pending {
    sealed: VecDeque<Batch>,
    accumulating: Deltas,
    accumulating_since: u64,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.sealed.is_empty() && self.accumulating.is_empty()
    }

    fn series_updates(&self) -> usize {
        self.accumulating.series_updates() + self.sealed.iter().map(|b| b.deltas.series_updates()).sum::<usize>()
    }

    fn values(&self) -> u64 {
        self.sealed.iter().fold(self.accumulating.values(), |a, b| a.wrapping_add(b.deltas.values()))
    }
}

/// The own series to send with a batch: counters that grew since the last
/// numbered batch (by how much), and every gauge.
fn own_deltas(own: &OwnMetrics, sent: &mut HashMap<String, u64>) -> Deltas {
    let mut deltas = Deltas::default();
    for (key, value) in own.series() {
        match value {
            OwnValue::Counter(total) => {
                let before = sent.entry(key.canonical().to_string()).or_insert(0);
                if total > *before {
                    deltas.counters.push(CounterDelta { key: Arc::new(key), delta: total - *before });
                    *before = total;
                }
            }
            OwnValue::Gauge(value) => deltas.gauges.push(GaugeValue { key: Arc::new(key), value }),
        }
    }
    deltas
}

/// Logs at `warn` at most once per [`WARN_EVERY`]; counts what it held back.
struct RateLimitedWarn {
    last: Option<Instant>,
    suppressed: u64,
}

const WARN_EVERY: Duration = Duration::from_secs(30);

impl RateLimitedWarn {
    fn warn(&mut self, message: &str) {
        if self.last.is_some_and(|l| l.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut self.suppressed);
        self.last = Some(Instant::now());
        tracing::warn!(target: "shoal::flusher", suppressed, "{message}");
    }
}

struct State {
    source: Arc<dyn DeltaSource>,
    identity: Identity,
    stats: Arc<FlusherStats>,
    client: IngestClient<Channel>,
    runtime: tokio::runtime::Runtime,
    config: ClientConfig,
    sequence: u64,
    pending: Pending,
    refs: RefTable,
    backoff: Backoff,
    retry_at: Option<Instant>,
    blocklist: Blocklist,
    /// Something was blocked since the last response: send even an empty
    /// batch, so that an instance whose every series is blocked still hears
    /// when the collector lifts the block.
    poll_blocklist: bool,
    unreachable: RateLimitedWarn,
    /// Own counters: the cumulative value carried by the batches numbered so
    /// far (a batch refused whole gives its part back, to be sent again).
    own_sent: HashMap<String, u64>,
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl State {
    fn new(
        source: Arc<dyn DeltaSource>,
        identity: Identity,
        stats: Arc<FlusherStats>,
        client: IngestClient<Channel>,
        runtime: tokio::runtime::Runtime,
        config: ClientConfig,
    ) -> State {
        State {
            source,
            identity,
            stats,
            client,
            runtime,
            config,
            sequence: 0,
            pending: Pending { accumulating_since: unix_nanos(), ..Pending::default() },
            refs: RefTable::default(),
            backoff: Backoff::default(),
            retry_at: None,
            blocklist: Blocklist::default(),
            poll_blocklist: false,
            unreachable: RateLimitedWarn { last: None, suppressed: 0 },
            own_sent: HashMap::new(),
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
                    // Send what is due, batch after batch, until a failure
                    // schedules a retry or nothing is left.
                    while self.retry_at.is_none_or(|r| Instant::now() >= r) && self.has_work() {
                        if let SendOutcome::Failed(_) = self.send_once(self.request_timeout()) {
                            break;
                        }
                        if !commands.is_empty() {
                            break;
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.final_flush();
                    return;
                }
            }
        }
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.poll_blocklist
    }

    fn request_timeout(&self) -> Duration {
        self.config.interval.clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Moves everything taken since the last take into the accumulating
    /// deltas, dropping (and counting) what the blocklist blocks.
    fn collect(&mut self) {
        let mut fresh = self.source.take_deltas();
        let stats = &self.stats;
        stats.values_taken.fetch_add(fresh.values(), Relaxed);
        stats.series_updates_taken.fetch_add(fresh.series_updates() as u64, Relaxed);
        let blocked = fresh.remove_blocked(&self.blocklist);
        stats.drop_deltas(DropReason::Blocked, &blocked);
        self.poll_blocklist |= !blocked.is_empty();
        self.pending.accumulating.absorb(fresh);
        self.update_pending();
    }

    fn update_pending(&self) {
        self.stats.pending_series.store(self.pending.series_updates() as u64, Relaxed);
        self.stats.values_pending.store(self.pending.values(), Relaxed);
    }

    /// Replaces the blocklist if the collector sent a different one; drops
    /// (and counts) the newly blocked series of the accumulating deltas.
    /// Numbered batches are immutable and go as they are (the collector
    /// rejects blocked series itself).
    fn apply_blocklist(&mut self, patterns: Vec<String>) {
        if patterns.as_slice() == self.blocklist.patterns() {
            return;
        }
        match Blocklist::new(&patterns) {
            Ok(b) => {
                tracing::info!(target: "shoal::flusher", "blocklist from the collector: {patterns:?}");
                self.blocklist = b;
                *self.stats.blocklist.lock() = patterns;
                let blocked = self.pending.accumulating.remove_blocked(&self.blocklist);
                self.stats.drop_deltas(DropReason::Blocked, &blocked);
                self.update_pending();
            }
            Err(e) => tracing::warn!(target: "shoal::flusher", "ignoring the collector's blocklist: {e}"),
        }
    }

    /// Shutdown's flush: what is still unacknowledged when it gives up is
    /// dropped, and counted.
    fn final_flush(&mut self) -> Result<(), ClientError> {
        let result = self.flush_all();
        if result.is_err() {
            let pending = std::mem::take(&mut self.pending);
            for batch in &pending.sealed {
                self.stats.drop_deltas(DropReason::Shutdown, &batch.deltas);
            }
            self.stats.drop_deltas(DropReason::Shutdown, &pending.accumulating);
            self.update_pending();
        }
        result
    }

    /// Sends until nothing is pending or the shutdown timeout passes.
    fn flush_all(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        self.collect();
        loop {
            if !self.has_work() {
                return Ok(());
            }
            if let Some(at) = self.retry_at {
                // Honour the backoff (and an overloaded collector's hint).
                if at > deadline {
                    return Err(ClientError::Flush("the collector asked to retry after the deadline".into()));
                }
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClientError::Flush("deadline passed with deltas still unacknowledged".into()));
            }
            if let SendOutcome::Failed(why) = self.send_once(remaining.min(self.request_timeout())) {
                if Instant::now() >= deadline {
                    return Err(ClientError::Flush(why));
                }
            }
        }
    }

    /// Numbers the accumulated deltas as one or more batches (split to fit
    /// the protocol limits) if none is waiting.
    fn seal(&mut self) {
        if !self.pending.sealed.is_empty() {
            return;
        }
        let end = unix_nanos();
        let deltas = std::mem::take(&mut self.pending.accumulating);
        let instance_label_bytes = self.identity.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        for part in batch::split(deltas, &self.config.split, instance_label_bytes) {
            self.sequence += 1;
            self.pending.sealed.push_back(Batch {
                sequence: self.sequence,
                start_nanos: self.pending.accumulating_since,
                end_nanos: end,
                deltas: part,
                own: Deltas::default(),
            });
        }
        // The own series ride with the last batch (they never make one).
        if let Some(last) = self.pending.sealed.back_mut() {
            let mut own = own_deltas(&self.source.own_metrics(), &mut self.own_sent);
            // What the collector blocks is not sent (nor counted: no values).
            own.remove_blocked(&self.blocklist);
            last.own = own;
        }
        self.pending.accumulating_since = end;
    }

    /// Sends the first waiting batch. One attempt, plus one immediate resend
    /// if the collector asked for definitions.
    fn send_once(&mut self, timeout: Duration) -> SendOutcome {
        if !self.has_work() {
            return SendOutcome::Acknowledged;
        }
        self.seal();
        for _attempt in 0..2 {
            let Some(batch) = self.pending.sealed.front() else { return SendOutcome::Acknowledged };
            let (request, refs_in_batch) = batch::encode(batch, &mut self.refs, &self.identity, &|name| self.source.describe(name));
            let sequence = batch.sequence;
            let updates = batch.deltas.series_updates() as u64;
            let stats = self.stats.clone();
            stats.batches_sent.fetch_add(1, Relaxed);
            stats.series_updates_sent.fetch_add(updates, Relaxed);
            stats.bytes_sent.fetch_add(request.encoded_len() as u64, Relaxed);
            let mut client = self.client.clone();
            let result = self.runtime.block_on(async move { tokio::time::timeout(timeout, client.flush(request)).await });
            let response = match result {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return self.refused(status),
                Err(_) => return self.failed(format!("no answer from {} within {timeout:?}", self.config.endpoint), None),
            };
            self.refs.observe_epoch(response.collector_epoch);
            self.poll_blocklist = false;
            self.apply_blocklist(response.blocklist);
            if !response.unknown_refs.is_empty() {
                // The collector forgot our definitions: resend them all.
                self.refs.forget_known();
                continue;
            }
            if response.acknowledged_sequence != sequence {
                return self.failed(format!("collector acknowledged {} for batch {sequence}", response.acknowledged_sequence), None);
            }
            self.refs.mark_known(refs_in_batch);
            let batch = self.pending.sealed.pop_front().expect("a batch is waiting");
            let (rejected_values, rejected_updates) = self.rejected_in(&batch.deltas, &response.rejected);
            stats.drop_counts(DropReason::Rejected, rejected_values, rejected_updates);
            if let Some(first) = response.rejected.first() {
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
            self.backoff.reset();
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
        let hit = |key: &SeriesKey| self.refs.get(key.canonical()).is_some_and(|r| refs.contains(&r));
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
        let why = format!("collector {} answered {:?}: {}", self.config.endpoint, status.code(), status.message());
        match status.code() {
            tonic::Code::ResourceExhausted => {
                self.stats.batches_overloaded.fetch_add(1, Relaxed);
                self.failed(why, retry_hint(&status))
            }
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => {
                if let Some(batch) = self.pending.sealed.pop_front() {
                    tracing::warn!(target: "shoal::flusher", "batch {} dropped: {why}", batch.sequence);
                    self.stats.batches_refused.fetch_add(1, Relaxed);
                    self.stats.drop_deltas(DropReason::Refused, &batch.deltas);
                    for c in &batch.own.counters {
                        if let Some(sent) = self.own_sent.get_mut(c.key.canonical()) {
                            *sent = sent.wrapping_sub(c.delta);
                        }
                    }
                }
                // The collector may have bound some refs before refusing: define them all again.
                self.refs.forget_known();
                self.update_pending();
                SendOutcome::Failed(why)
            }
            // Anything else (UNAVAILABLE included) is a failed attempt,
            // honouring a retry hint if the collector sent one.
            _ => self.failed(why, retry_hint(&status)),
        }
    }

    /// A failed attempt: the batch is kept; the next attempt waits an
    /// exponential backoff with jitter, or the collector's hint (jittered
    /// upwards by up to half of it) if that is longer.
    fn failed(&mut self, why: String, hint: Option<Duration>) -> SendOutcome {
        self.stats.batches_failed.fetch_add(1, Relaxed);
        self.unreachable.warn(&format!("flush failed, deltas kept for the next attempt: {why}"));
        let wait = self.backoff.next_wait(hint, &mut rand::thread_rng());
        self.retry_at = Some(Instant::now() + wait);
        self.update_pending();
        SendOutcome::Failed(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_counters_send_their_growth_once_and_gauges_every_time() {
        let mut sent = HashMap::new();
        let own = |batches: u64, pending: f64| {
            let mut o = OwnMetrics::default();
            o.counter("shoal_flush_batches_sent_total", "h", &[], batches);
            o.gauge("shoal_flush_pending_series", "h", &[], pending);
            o
        };
        let first = own_deltas(&own(3, 7.0), &mut sent);
        assert_eq!(first.counters.iter().map(|c| c.delta).collect::<Vec<_>>(), [3]);
        assert_eq!(first.gauges.iter().map(|g| g.value).collect::<Vec<_>>(), [7.0]);
        // No growth: no counter delta, the gauge still goes.
        let second = own_deltas(&own(3, 0.0), &mut sent);
        assert!(second.counters.is_empty());
        assert_eq!(second.gauges.len(), 1);
        // Growth of 2: a delta of 2.
        let third = own_deltas(&own(5, 0.0), &mut sent);
        assert_eq!(third.counters[0].delta, 2);
        assert_eq!(sent.get("shoal_flush_batches_sent_total"), Some(&5));
    }
}

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

use crate::delta::Deltas;
use crate::error::Error;
use crate::exposition::{sanitize_label_name, sanitize_metric_name, TextWriter};
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

/// What the flusher has done, exposed under `shoal_flush_`.
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
    /// Series-updates in send attempts.
    pub series_updates_sent: AtomicU64,
    /// Series-updates acknowledged.
    pub series_updates_acknowledged: AtomicU64,
    /// Encoded protobuf bytes sent.
    pub bytes_sent: AtomicU64,
    /// Series waiting to be acknowledged (in flight plus accumulating).
    pub pending_series: AtomicU64,
}

impl FlusherStats {
    pub(crate) fn write(&self, w: &mut TextWriter) {
        let counters: [(&str, &AtomicU64, &str); 7] = [
            ("shoal_flush_batches_sent_total", &self.batches_sent, "Batch send attempts, retries included"),
            ("shoal_flush_batches_acknowledged_total", &self.batches_acknowledged, "Batches acknowledged by the collector"),
            ("shoal_flush_batches_duplicate_total", &self.batches_duplicate, "Acknowledged batches the collector had already merged"),
            ("shoal_flush_batches_failed_total", &self.batches_failed, "Batch send attempts that failed; the batch is kept and resent"),
            ("shoal_flush_series_updates_sent_total", &self.series_updates_sent, "Series-updates in batch send attempts"),
            (
                "shoal_flush_series_updates_acknowledged_total",
                &self.series_updates_acknowledged,
                "Series-updates acknowledged by the collector",
            ),
            ("shoal_flush_bytes_sent_total", &self.bytes_sent, "Encoded protobuf bytes sent"),
        ];
        for (name, value, help) in counters {
            w.family(name, "counter", help);
            w.sample(name, &[], None, &value.load(Relaxed).to_string());
        }
        w.family("shoal_flush_pending_series", "gauge", "Series held for the collector, not yet acknowledged");
        w.sample("shoal_flush_pending_series", &[], None, &self.pending_series.load(Relaxed).to_string());
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
}

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

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
                    let _ = reply.send(self.flush_all());
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
                    let _ = self.flush_all();
                    return;
                }
            }
        }
    }

    fn request_timeout(&self) -> Duration {
        self.config.interval.clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Moves everything recorded since the last take into the accumulating deltas.
    fn collect(&mut self) {
        let fresh = self.inner.take_deltas();
        self.accumulating.absorb(fresh);
        self.update_pending();
    }

    fn update_pending(&self) {
        let pending = self.accumulating.series_updates() + self.in_flight.as_ref().map_or(0, |b| b.deltas.series_updates());
        self.inner.flusher_stats.pending_series.store(pending as u64, Relaxed);
    }

    /// Sends until nothing is pending or the shutdown timeout passes.
    fn flush_all(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        self.collect();
        loop {
            if self.in_flight.is_none() && self.accumulating.is_empty() {
                return Ok(());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(Error::Flush("deadline passed with deltas still unacknowledged".into()));
            }
            if let SendOutcome::Failed(why) = self.send_once(remaining.min(self.request_timeout())) {
                let wait = self.backoff.min(deadline.saturating_duration_since(Instant::now()));
                if wait.is_zero() {
                    return Err(Error::Flush(why));
                }
                std::thread::sleep(wait);
            }
        }
    }

    /// Sends the in-flight batch (numbering the accumulated deltas as a new
    /// batch if none is in flight). One attempt, plus one immediate resend if
    /// the collector asked for definitions.
    fn send_once(&mut self, timeout: Duration) -> SendOutcome {
        if self.in_flight.is_none() {
            if self.accumulating.is_empty() {
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
            let stats = &self.inner.flusher_stats;
            let updates = self.in_flight.as_ref().map_or(0, |b| b.deltas.series_updates()) as u64;
            stats.batches_sent.fetch_add(1, Relaxed);
            stats.series_updates_sent.fetch_add(updates, Relaxed);
            stats.bytes_sent.fetch_add(request.encoded_len() as u64, Relaxed);
            let mut client = self.client.clone();
            let result = self.runtime.block_on(async move { tokio::time::timeout(timeout, client.flush(request)).await });
            let response = match result {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return self.failed(format!("collector answered {:?}: {}", status.code(), status.message())),
                Err(_) => return self.failed(format!("no answer within {timeout:?}")),
            };
            if self.epoch != Some(response.collector_epoch) {
                self.epoch = Some(response.collector_epoch);
                self.known.clear();
            }
            if !response.unknown_refs.is_empty() {
                // The collector forgot our definitions: resend them all.
                self.known.clear();
                continue;
            }
            let sequence = self.in_flight.as_ref().map_or(0, |b| b.sequence);
            if response.acknowledged_sequence != sequence {
                return self.failed(format!("collector acknowledged {} for batch {sequence}", response.acknowledged_sequence));
            }
            self.known.extend(refs_in_batch);
            stats.batches_acknowledged.fetch_add(1, Relaxed);
            stats.series_updates_acknowledged.fetch_add(updates, Relaxed);
            if response.duplicate {
                stats.batches_duplicate.fetch_add(1, Relaxed);
            }
            self.in_flight = None;
            self.backoff = MIN_BACKOFF;
            self.retry_at = None;
            self.update_pending();
            return SendOutcome::Acknowledged;
        }
        self.failed("collector kept asking for series definitions".into())
    }

    fn failed(&mut self, why: String) -> SendOutcome {
        self.inner.flusher_stats.batches_failed.fetch_add(1, Relaxed);
        tracing::debug!(target: "shoal::flusher", "flush failed: {why}");
        // Full jitter on an exponential backoff.
        let jittered = rand::thread_rng().gen_range(self.backoff / 2..=self.backoff);
        self.retry_at = Some(Instant::now() + jittered);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        self.update_pending();
        SendOutcome::Failed(why)
    }

    fn ref_of(&mut self, canonical: &str) -> (u32, bool) {
        if let Some(&r) = self.refs.get(canonical) {
            return (r, false);
        }
        let r = self.refs.len() as u32 + 1;
        self.refs.insert(canonical.to_string(), r);
        (r, true)
    }

    /// The protobuf request of the in-flight batch, and the refs it uses.
    fn encode(&mut self) -> (pb::FlushRequest, Vec<u32>) {
        let batch = self.in_flight.take().expect("encode needs a batch in flight");
        let mut definitions = Vec::new();
        let mut refs = Vec::new();
        let mut define = |state: &mut State, key: &crate::key::SeriesKey| -> u32 {
            let (r, _) = state.ref_of(key.canonical());
            if !state.known.contains(&r) {
                // The wire carries Prometheus-valid names (the collector refuses
                // others); re-keying also drops keys that collide once sanitised.
                let wire_key = crate::key::SeriesKey::new(
                    sanitize_metric_name(key.name()),
                    key.labels().iter().map(|(k, v)| (sanitize_label_name(k), v.clone())),
                );
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

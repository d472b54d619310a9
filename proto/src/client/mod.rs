//! The flush client: the one implementation of the sending side of the
//! protocol, used by the SDK's flusher and (one tier up) by a collector
//! forwarding to upstream collectors.
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
//! Shards: with several collectors, each series goes to exactly one of
//! them ([`route`], rendezvous hashing of its rollup key). Each shard is a
//! *lane* with its own numbering, refs, pending deltas and backoff, and the
//! lanes send concurrently: a shard that is down holds its own deltas (per
//! series, as in any outage) and never delays or receives another's. The
//! shard list can change while running ([`FlushClient::set_endpoints`]):
//! deltas not yet numbered follow the new routes (they were never sent); a
//! numbered batch only ever goes to the shard it was numbered for, so a
//! removed shard keeps its lane until its numbered batches are delivered.
//!
//! Durable sources ([`store`]): with a state file, what the client holds
//! is saved after every take and before a newly numbered batch is first
//! sent, and the source learns which of its takes are safe
//! ([`DeltaSource::taken`], [`DeltaSource::resume`]): exactly once across
//! a crash of the sending process.
//!
//! Parts: [`refs`] (the ref table), [`backoff`], [`batch`] (numbering,
//! splitting, encoding), [`route`] (shards), [`stats`] (the conservation
//! counts), [`store`] (the state file); this module is the run loop.

pub mod backoff;
pub mod batch;
pub mod refs;
pub mod route;
pub mod stats;
pub mod store;

pub use self::batch::{Batch, SplitLimits};
pub use self::route::Router;
pub use self::stats::{DropReason, FlusherStats};
pub use self::store::StateFile;

use self::backoff::{retry_hint, Backoff};
use self::refs::RefTable;
use self::store::{ClientState, LaneState};
use crate::ingest_client::IngestClient;
use crate::v1 as pb;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use prost::Message;
use shoal_core::{Blocklist, CounterDelta, Deltas, GaugeValue, OwnMetrics, OwnValue, SeriesKey};
use std::cell::RefCell;
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
    /// Unique per process start (per sender); a durable client keeps the
    /// one of its state file.
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

    /// Durable sources: a number naming the last [`DeltaSource::take_deltas`]
    /// (increasing, kept across restarts). The client saves it with what
    /// it took. 0 by default.
    fn take_token(&self) -> u64 {
        0
    }

    /// Durable sources: the client holds every take up to `token` safely
    /// (in its state file, or in memory without one); the source may
    /// forget them.
    fn taken(&self, token: u64) {
        let _ = token;
    }

    /// Durable sources: called once when a client with a state file
    /// starts, with the token of the last take its state holds (0: no
    /// state). Takes after it were lost with the previous process and must
    /// be taken again; those up to it must not.
    fn resume(&self, token: u64) {
        let _ = token;
    }
}

/// Settings of a flush client.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// gRPC endpoints of the collectors, e.g. `http://127.0.0.1:7171`;
    /// several are shards (see [`route`]).
    pub endpoints: Vec<String>,
    /// How often deltas are taken and sent.
    pub interval: Duration,
    /// How long `flush` and `shutdown` wait for acknowledgements.
    pub shutdown_timeout: Duration,
    /// How much one batch may carry.
    pub split: SplitLimits,
    /// Where a durable client keeps its state (see [`store`]); `None`:
    /// memory only.
    pub state_file: Option<StateFile>,
    /// TLS trust and the bearer token.
    pub security: ClientSecurity,
}

/// How the client proves who it is and whom it trusts. `https://`
/// endpoints use TLS with the system's roots and the Mozilla roots, plus
/// `tls_ca_file`; `http://` ones are plain.
#[derive(Clone, Debug, Default)]
pub struct ClientSecurity {
    /// A private CA (PEM) trusted beside the public roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Certificate chain and private key (PEM files) presented to a
    /// collector that asks for one (mutual TLS).
    pub tls_client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Sent as `authorization: Bearer <token>` with every batch.
    pub auth_token: Option<AuthToken>,
}

/// A bearer token: checked to fit a header, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// Checks `token` (RFC 6750: letters, digits, `-._~+/`, then optional
    /// `=`). The error does not repeat the token.
    pub fn new(token: impl Into<String>) -> Result<AuthToken, ClientError> {
        let token = token.into();
        let token = token.trim().to_string();
        let body = token.trim_end_matches('=');
        if body.is_empty() || !body.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b)) {
            return Err(ClientError::InvalidConfig("auth token: not a bearer token (letters, digits and -._~+/ then optional =)".into()));
        }
        Ok(AuthToken(token))
    }

    fn header(&self) -> tonic::metadata::AsciiMetadataValue {
        format!("Bearer {}", self.0).parse().expect("checked by AuthToken::new")
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// What every lane's connection uses: TLS settings (for `https://`) and the
/// `authorization` value.
#[derive(Clone)]
struct Transport {
    tls: tonic::transport::ClientTlsConfig,
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
}

impl Transport {
    fn new(security: &ClientSecurity) -> Result<Transport, ClientError> {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_enabled_roots();
        if let Some(path) = &security.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| ClientError::InvalidConfig(format!("TLS CA file {}: {e}", path.display())))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(ClientError::InvalidConfig(format!("TLS CA file {}: no PEM certificate in it", path.display())));
            }
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &security.tls_client_cert {
            let read = |path: &std::path::Path, what: &str| {
                std::fs::read(path).map_err(|e| ClientError::InvalidConfig(format!("TLS client {what} {}: {e}", path.display())))
            };
            tls = tls.identity(tonic::transport::Identity::from_pem(read(cert, "certificate")?, read(key, "key")?));
        }
        Ok(Transport { tls, authorization: security.auth_token.as_ref().map(AuthToken::header) })
    }
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

type Reply = Sender<Result<(), ClientError>>;

enum Command {
    Flush(Reply),
    SetEndpoints(Vec<String>, Reply),
    Shutdown(Reply),
}

/// Checks a shard list: at least one URL, each valid, none twice.
pub fn check_endpoints(endpoints: &[String]) -> Result<(), ClientError> {
    if endpoints.is_empty() {
        return Err(ClientError::InvalidConfig("no collector URL".into()));
    }
    let mut seen = HashSet::new();
    for e in endpoints {
        endpoint(e)?;
        if !seen.insert(e.as_str()) {
            return Err(ClientError::InvalidConfig(format!("collector url {e:?} is listed twice")));
        }
    }
    Ok(())
}

fn endpoint(url: &str) -> Result<Endpoint, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientError::InvalidConfig(format!("collector url {url:?}: {e}")))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    match endpoint.uri().scheme_str() {
        Some("http" | "https") => Ok(endpoint),
        other => Err(ClientError::InvalidConfig(format!("collector url {url:?}: scheme {other:?}, expected http:// or https://"))),
    }
}

/// The channel to `url` (already checked), with TLS for `https://`.
fn connect(url: &str, transport: &Transport) -> Channel {
    let endpoint = endpoint(url).expect("checked by check_endpoints");
    let endpoint = match endpoint.uri().scheme_str() {
        Some("https") => match endpoint.clone().tls_config(transport.tls.clone()) {
            Ok(e) => e,
            // Cannot happen for an https URL; plain, the handshake fails visibly.
            Err(_) => endpoint,
        },
        _ => endpoint,
    };
    endpoint.connect_lazy()
}

/// Handle to a running flush client thread.
pub struct FlushClient {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    timeout: Duration,
}

impl FlushClient {
    /// Starts the client thread. Nothing connects until the first send. A
    /// state file that cannot be read is an error (it may hold
    /// unacknowledged batches).
    pub fn start(
        source: Arc<dyn DeltaSource>,
        identity: Identity,
        stats: Arc<FlusherStats>,
        config: ClientConfig,
    ) -> Result<FlushClient, ClientError> {
        check_endpoints(&config.endpoints)?;
        let transport = Transport::new(&config.security)?;
        let saved = match &config.state_file {
            Some(file) => file.load().map_err(ClientError::InvalidConfig)?,
            None => None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::InvalidConfig(format!("cannot start the flusher runtime: {e}")))?;
        let (commands, receiver) = bounded(16);
        let timeout = config.shutdown_timeout;
        let thread = std::thread::Builder::new()
            .name("shoal-flusher".into())
            .spawn(move || {
                let mut state = State::new(source, identity, stats, runtime, config, transport);
                state.resume(saved);
                state.run(receiver);
            })
            .map_err(|e| ClientError::InvalidConfig(format!("cannot start the flusher thread: {e}")))?;
        Ok(FlushClient { commands, thread: Some(thread), timeout })
    }

    fn call(&self, command: Command, reply: Receiver<Result<(), ClientError>>) -> Result<(), ClientError> {
        self.commands.send(command).map_err(|_| ClientError::ShutDown)?;
        // The client gives up at `timeout`; allow it a moment to answer.
        reply
            .recv_timeout(self.timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err(ClientError::Flush("the flusher did not answer in time".into())))
    }

    /// Takes and sends everything now; waits for the acknowledgements (up
    /// to the shutdown timeout).
    pub fn flush_now(&self) -> Result<(), ClientError> {
        let (tx, rx) = bounded(1);
        self.call(Command::Flush(tx), rx)
    }

    /// Replaces the shard list (see the module docs for what moves). An
    /// invalid list changes nothing.
    pub fn set_endpoints(&self, endpoints: Vec<String>) -> Result<(), ClientError> {
        check_endpoints(&endpoints)?;
        let (tx, rx) = bounded(1);
        self.call(Command::SetEndpoints(endpoints, tx), rx)
    }

    /// Final flush, then stops the thread.
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        let (tx, rx) = bounded(1);
        let result = self.call(Command::Shutdown(tx), rx);
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
    Failed,
}

/// Deltas waiting for one collector: numbered batches in order, and what
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
fn own_deltas(own: impl Iterator<Item = (SeriesKey, OwnValue)>, sent: &mut HashMap<String, u64>) -> Deltas {
    let mut deltas = Deltas::default();
    for (key, value) in own {
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
    fn new() -> RateLimitedWarn {
        RateLimitedWarn { last: None, suppressed: 0 }
    }

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

fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What every lane reads while sending.
struct SendContext<'a> {
    source: &'a dyn DeltaSource,
    identity: &'a Identity,
    stats: &'a FlusherStats,
    /// Own counters: the cumulative value carried by the batches numbered
    /// so far (a batch refused whole gives its part back, to be sent again).
    own_sent: &'a RefCell<HashMap<String, u64>>,
}

/// One collector (one shard): its numbering, refs, pending deltas, backoff
/// and blocklist.
struct Lane {
    endpoint: String,
    client: IngestClient<Channel>,
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
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
    /// No longer in the shard list: takes nothing new, delivers what it
    /// numbered, then goes.
    draining: bool,
}

impl Lane {
    /// A lane for `url` (already checked). Call inside the runtime.
    fn new(url: &str, transport: &Transport) -> Lane {
        let channel = connect(url, transport);
        Lane {
            endpoint: url.to_string(),
            client: IngestClient::new(channel).max_decoding_message_size(crate::limits::MAX_BATCH_BYTES),
            authorization: transport.authorization.clone(),
            sequence: 0,
            pending: Pending { accumulating_since: unix_nanos(), ..Pending::default() },
            refs: RefTable::default(),
            backoff: Backoff::default(),
            retry_at: None,
            blocklist: Blocklist::default(),
            poll_blocklist: false,
            unreachable: RateLimitedWarn::new(),
            draining: false,
        }
    }

    fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.poll_blocklist
    }

    fn due(&self, now: Instant) -> bool {
        !self.pending.sealed.is_empty() && self.retry_at.is_none_or(|r| now >= r)
    }

    /// Adds a routed part of a take, dropping (and counting) what this
    /// collector's blocklist blocks.
    fn accumulate(&mut self, mut part: Deltas, stats: &FlusherStats) {
        let blocked = part.remove_blocked(&self.blocklist);
        stats.drop_deltas(DropReason::Blocked, &blocked);
        self.poll_blocklist |= !blocked.is_empty();
        self.pending.accumulating.absorb(part);
    }

    /// Numbers the accumulated deltas as one or more batches (split to fit
    /// the protocol limits) if none is waiting. Returns whether it did.
    fn seal(&mut self, split: &SplitLimits, identity: &Identity) -> bool {
        if !self.pending.sealed.is_empty() || self.draining || !self.has_work() {
            return false;
        }
        let end = unix_nanos();
        let deltas = std::mem::take(&mut self.pending.accumulating);
        let instance_label_bytes = identity.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        for part in batch::split(deltas, split, instance_label_bytes) {
            self.sequence += 1;
            self.pending.sealed.push_back(Batch {
                sequence: self.sequence,
                start_nanos: self.pending.accumulating_since,
                end_nanos: end,
                deltas: part,
                own: Deltas::default(),
            });
        }
        self.pending.accumulating_since = end;
        true
    }

    fn request_timeout(interval: Duration) -> Duration {
        interval.clamp(Duration::from_millis(500), Duration::from_secs(10))
    }

    /// Sends the numbered batches in order until none is left, one fails,
    /// or a command waits.
    async fn send_sealed(&mut self, cx: &SendContext<'_>, timeout: Duration, commands: &Receiver<Command>) {
        while self.due(Instant::now()) {
            if let SendOutcome::Failed = self.send_once(cx, timeout).await {
                return;
            }
            if !commands.is_empty() {
                return;
            }
        }
    }

    /// Sends the first waiting batch. One attempt, plus one immediate resend
    /// if the collector asked for definitions.
    async fn send_once(&mut self, cx: &SendContext<'_>, timeout: Duration) -> SendOutcome {
        for _attempt in 0..2 {
            let Some(batch) = self.pending.sealed.front() else { return SendOutcome::Acknowledged };
            let (request, refs_in_batch) = batch::encode(batch, &mut self.refs, cx.identity, &|name| cx.source.describe(name));
            let sequence = batch.sequence;
            let updates = batch.deltas.series_updates() as u64;
            let stats = cx.stats;
            stats.batches_sent.fetch_add(1, Relaxed);
            stats.series_updates_sent.fetch_add(updates, Relaxed);
            stats.bytes_sent.fetch_add(request.encoded_len() as u64, Relaxed);
            let mut client = self.client.clone();
            let mut request = tonic::Request::new(request);
            if let Some(value) = &self.authorization {
                request.metadata_mut().insert("authorization", value.clone());
            }
            let response = match tokio::time::timeout(timeout, client.flush(request)).await {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => return self.refused(status, cx),
                Err(_) => return self.failed(format!("no answer from {} within {timeout:?}", self.endpoint), None, stats),
            };
            self.refs.observe_epoch(response.collector_epoch);
            self.poll_blocklist = false;
            self.apply_blocklist(response.blocklist, stats);
            if !response.unknown_refs.is_empty() {
                // The collector forgot our definitions: resend them all.
                self.refs.forget_known();
                continue;
            }
            if response.acknowledged_sequence != sequence {
                return self.failed(
                    format!("collector {} acknowledged {} for batch {sequence}", self.endpoint, response.acknowledged_sequence),
                    None,
                    stats,
                );
            }
            // A duplicate was not bound again: its definitions may not be
            // what the collector holds for these refs (a restarted durable
            // sender numbers refs anew), so they are not marked known.
            if !response.duplicate {
                self.refs.mark_known(refs_in_batch);
            }
            let batch = self.pending.sealed.pop_front().expect("a batch is waiting");
            let (rejected_values, rejected_updates) = self.rejected_in(&batch.deltas, &response.rejected);
            stats.drop_counts(DropReason::Rejected, rejected_values, rejected_updates);
            if let Some(first) = response.rejected.first() {
                tracing::debug!(
                    target: "shoal::flusher",
                    "collector {} rejected {} series (first: {}: {})",
                    self.endpoint,
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
            return SendOutcome::Acknowledged;
        }
        self.failed(format!("collector {} kept asking for series definitions", self.endpoint), None, cx.stats)
    }

    /// Replaces the blocklist if the collector sent a different one; drops
    /// (and counts) the newly blocked series of the accumulating deltas.
    /// Numbered batches are immutable and go as they are (the collector
    /// rejects blocked series itself).
    fn apply_blocklist(&mut self, patterns: Vec<String>, stats: &FlusherStats) {
        if patterns.as_slice() == self.blocklist.patterns() {
            return;
        }
        match Blocklist::new(&patterns) {
            Ok(b) => {
                tracing::info!(target: "shoal::flusher", "blocklist from the collector {}: {patterns:?}", self.endpoint);
                self.blocklist = b;
                *stats.blocklist.lock() = patterns;
                let blocked = self.pending.accumulating.remove_blocked(&self.blocklist);
                stats.drop_deltas(DropReason::Blocked, &blocked);
            }
            Err(e) => tracing::warn!(target: "shoal::flusher", "ignoring the blocklist of {}: {e}", self.endpoint),
        }
    }

    /// Values and series-updates of `deltas` whose refs the collector rejected.
    fn rejected_in(&self, deltas: &Deltas, rejected: &[pb::SeriesRejection]) -> (u64, u64) {
        if rejected.is_empty() {
            return (0, 0);
        }
        let refs: HashSet<u32> = rejected.iter().map(|r| r.r#ref).collect();
        let hit = |key: &SeriesKey| self.refs.get(key).is_some_and(|r| refs.contains(&r));
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
    fn refused(&mut self, status: tonic::Status, cx: &SendContext<'_>) -> SendOutcome {
        let why = format!("collector {} answered {:?}: {}", self.endpoint, status.code(), status.message());
        match status.code() {
            tonic::Code::ResourceExhausted => {
                cx.stats.batches_overloaded.fetch_add(1, Relaxed);
                self.failed(why, retry_hint(&status), cx.stats)
            }
            // A token (or TLS) problem is the operator's to fix, possibly on
            // the collector (a token added back by SIGHUP): the batch is
            // kept and resent with backoff; the warning says what to check.
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                cx.stats.batches_unauthenticated.fetch_add(1, Relaxed);
                self.failed(format!("{why} (check the auth token and the collector's tokens file)"), None, cx.stats)
            }
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => {
                if let Some(batch) = self.pending.sealed.pop_front() {
                    tracing::warn!(target: "shoal::flusher", "batch {} dropped: {why}", batch.sequence);
                    cx.stats.batches_refused.fetch_add(1, Relaxed);
                    cx.stats.drop_deltas(DropReason::Refused, &batch.deltas);
                    let mut own_sent = cx.own_sent.borrow_mut();
                    for c in &batch.own.counters {
                        if let Some(sent) = own_sent.get_mut(c.key.canonical()) {
                            *sent = sent.wrapping_sub(c.delta);
                        }
                    }
                }
                // The collector may have bound some refs before refusing: define them all again.
                self.refs.forget_known();
                SendOutcome::Failed
            }
            // Anything else (UNAVAILABLE included) is a failed attempt,
            // honouring a retry hint if the collector sent one.
            _ => self.failed(why, retry_hint(&status), cx.stats),
        }
    }

    /// A failed attempt: the batch is kept; the next attempt waits an
    /// exponential backoff with jitter, or the collector's hint (jittered
    /// upwards by up to half of it) if that is longer.
    fn failed(&mut self, why: String, hint: Option<Duration>, stats: &FlusherStats) -> SendOutcome {
        stats.batches_failed.fetch_add(1, Relaxed);
        self.unreachable.warn(&format!("flush failed, deltas kept for the next attempt: {why}"));
        let wait = self.backoff.next_wait(hint, &mut rand::thread_rng());
        self.retry_at = Some(Instant::now() + wait);
        SendOutcome::Failed
    }
}

/// Routes above this many cached series hashes are forgotten (the cache
/// only saves recomputing them; series that come and go must not grow it
/// without bound).
const ROUTE_CACHE_MAX: usize = 1 << 20;

struct State {
    source: Arc<dyn DeltaSource>,
    identity: Identity,
    stats: Arc<FlusherStats>,
    runtime: tokio::runtime::Runtime,
    config: ClientConfig,
    transport: Transport,
    router: Router,
    /// The shards' lanes in router order, then draining lanes.
    lanes: Vec<Lane>,
    /// Last sequence numbered for each collector that has no lane now: a
    /// shard removed and added again goes on from there (it dedups this
    /// instance by sequence).
    retired: HashMap<String, u64>,
    /// Series hash per canonical key (only with several shards).
    routes: HashMap<String, u64>,
    own_sent: RefCell<HashMap<String, u64>>,
    /// The source's last take.
    take_token: u64,
    /// Taken or numbered since the state was last saved: nothing is sent
    /// until it is (with a state file) and the source hears of it.
    unsaved: bool,
    /// A failed save is tried again at this time; nothing is sent before.
    save_retry_at: Option<Instant>,
    save_failed: RateLimitedWarn,
}

impl State {
    fn new(
        source: Arc<dyn DeltaSource>,
        identity: Identity,
        stats: Arc<FlusherStats>,
        runtime: tokio::runtime::Runtime,
        config: ClientConfig,
        transport: Transport,
    ) -> State {
        let router = Router::new(&config.endpoints);
        let lanes = {
            let _inside = runtime.enter();
            config.endpoints.iter().map(|e| Lane::new(e, &transport)).collect()
        };
        State {
            source,
            identity,
            stats,
            runtime,
            config,
            transport,
            router,
            lanes,
            retired: HashMap::new(),
            routes: HashMap::new(),
            own_sent: RefCell::new(HashMap::new()),
            take_token: 0,
            unsaved: false,
            save_retry_at: None,
            save_failed: RateLimitedWarn::new(),
        }
    }

    /// Takes over a saved state (a durable client restarting) and tells the
    /// source which takes it holds.
    fn resume(&mut self, saved: Option<ClientState>) {
        if self.config.state_file.is_none() {
            return;
        }
        let Some(saved) = saved else {
            self.source.resume(0);
            return;
        };
        self.identity.instance_id = saved.instance_id;
        self.take_token = saved.take_token;
        let mut unsealed = Deltas::default();
        let mut resumed = 0u64;
        for l in saved.lanes {
            resumed = resumed.wrapping_add(l.accumulating.values());
            unsealed.absorb(l.accumulating);
            if l.sealed.is_empty() && !self.router.shards().any(|s| s == l.endpoint) {
                self.retired.insert(l.endpoint, l.sequence);
                continue;
            }
            let i = self.lane_index(&l.endpoint);
            let lane = &mut self.lanes[i];
            lane.sequence = l.sequence;
            lane.pending.accumulating_since = l.accumulating_since;
            for b in l.sealed {
                resumed = resumed.wrapping_add(b.deltas.values());
                lane.pending.sealed.push_back(b);
            }
        }
        self.stats.values_taken.fetch_add(resumed, Relaxed);
        self.stats.values_resumed.fetch_add(resumed, Relaxed);
        self.distribute(unsealed);
        tracing::info!(
            target: "shoal::flusher",
            instance = %self.identity.instance_id,
            take = self.take_token,
            values = resumed,
            "resumed from {}",
            self.config.state_file.as_ref().map_or(String::new(), |f| f.path().display().to_string())
        );
        self.source.resume(self.take_token);
        self.unsaved = true;
        self.update_pending();
    }

    /// The lane of `url`: an existing one, or a new draining one (a shard
    /// no longer listed that still has numbered batches).
    fn lane_index(&mut self, url: &str) -> usize {
        if let Some(i) = self.lanes.iter().position(|l| l.endpoint == url) {
            return i;
        }
        let _inside = self.runtime.enter();
        let mut lane = Lane::new(url, &self.transport);
        lane.sequence = self.retired.remove(url).unwrap_or(0);
        lane.draining = true;
        self.lanes.push(lane);
        self.lanes.len() - 1
    }

    fn run(&mut self, commands: Receiver<Command>) {
        let mut next_tick = Instant::now() + self.config.interval;
        loop {
            let now = Instant::now();
            let wake = match self.save_retry_at {
                Some(at) => at.min(next_tick),
                None => self.lanes.iter().filter(|l| l.has_work()).map(|l| l.retry_at.unwrap_or(now)).fold(next_tick, Instant::min),
            };
            match commands.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Command::Flush(reply)) => {
                    let _ = reply.send(self.flush_all());
                }
                Ok(Command::SetEndpoints(endpoints, reply)) => {
                    self.set_endpoints(endpoints);
                    let _ = reply.send(Ok(()));
                }
                Ok(Command::Shutdown(reply)) => {
                    let _ = reply.send(self.final_flush());
                    return;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if Instant::now() >= next_tick {
                        // While the state cannot be saved, nothing more is
                        // taken: the source keeps it (per series).
                        if self.save_retry_at.is_none() {
                            self.collect();
                        }
                        while next_tick <= Instant::now() {
                            next_tick += self.config.interval;
                        }
                    }
                    self.send_round(Lane::request_timeout(self.config.interval), &commands);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.final_flush();
                    return;
                }
            }
        }
    }

    fn has_work(&self) -> bool {
        self.unsaved || self.lanes.iter().any(Lane::has_work)
    }

    /// Takes from the source and routes what it took to the lanes.
    fn collect(&mut self) {
        let fresh = self.source.take_deltas();
        self.take_token = self.take_token.max(self.source.take_token());
        self.stats.values_taken.fetch_add(fresh.values(), Relaxed);
        self.stats.series_updates_taken.fetch_add(fresh.series_updates() as u64, Relaxed);
        self.distribute(fresh);
        self.unsaved = true;
    }

    /// Routes deltas nobody has numbered yet to the shards' lanes.
    fn distribute(&mut self, deltas: Deltas) {
        if deltas.is_empty() {
            return;
        }
        if self.router.len() <= 1 {
            self.lanes[0].accumulate(deltas, &self.stats);
        } else {
            let mut parts: Vec<Deltas> = (0..self.router.len()).map(|_| Deltas::default()).collect();
            if self.routes.len() > ROUTE_CACHE_MAX {
                self.routes.clear();
            }
            let (router, routes, labels) = (&self.router, &mut self.routes, &self.identity.labels);
            let mut shard_of = |key: &SeriesKey| {
                let hash = match routes.get(key.canonical()) {
                    Some(&h) => h,
                    None => *routes.entry(key.canonical().to_string()).or_insert_with(|| Router::series_hash(key, labels)),
                };
                router.shard_of(hash)
            };
            for c in deltas.counters {
                parts[shard_of(&c.key)].counters.push(c);
            }
            for g in deltas.gauges {
                parts[shard_of(&g.key)].gauges.push(g);
            }
            for h in deltas.histograms {
                parts[shard_of(&h.key)].histograms.push(h);
            }
            for (lane, part) in self.lanes.iter_mut().zip(parts) {
                lane.accumulate(part, &self.stats);
            }
        }
        self.update_pending();
    }

    /// Replaces the shard list: new shards get a lane, removed ones drain
    /// their numbered batches, and every lane's un-numbered deltas follow
    /// the new routes.
    fn set_endpoints(&mut self, endpoints: Vec<String>) {
        let before: Vec<String> = self.router.shards().map(str::to_string).collect();
        if before == endpoints {
            return;
        }
        let mut old = std::mem::take(&mut self.lanes);
        let mut unsealed = Deltas::default();
        for lane in &mut old {
            unsealed.absorb(std::mem::take(&mut lane.pending.accumulating));
        }
        let mut lanes = Vec::with_capacity(endpoints.len());
        {
            let _inside = self.runtime.enter();
            for e in &endpoints {
                let lane = match old.iter().position(|l| &l.endpoint == e) {
                    Some(i) => {
                        let mut lane = old.swap_remove(i);
                        lane.draining = false;
                        lane
                    }
                    None => {
                        let mut lane = Lane::new(e, &self.transport);
                        lane.sequence = self.retired.remove(e).unwrap_or(0);
                        lane
                    }
                };
                lanes.push(lane);
            }
        }
        for mut lane in old {
            if lane.pending.sealed.is_empty() {
                tracing::info!(target: "shoal::flusher", "shard {} removed", lane.endpoint);
                self.retired.insert(lane.endpoint, lane.sequence);
            } else {
                tracing::info!(
                    target: "shoal::flusher",
                    "shard {} removed; delivering its {} numbered batches first",
                    lane.endpoint,
                    lane.pending.sealed.len()
                );
                lane.draining = true;
                lane.poll_blocklist = false;
                lanes.push(lane);
            }
        }
        self.lanes = lanes;
        self.router = Router::new(&endpoints);
        tracing::info!(target: "shoal::flusher", "shards: {endpoints:?} (were {before:?})");
        self.config.endpoints = endpoints;
        self.distribute(unsealed);
        self.unsaved = true;
    }

    fn update_pending(&self) {
        let pending = |f: fn(&Pending) -> u64| self.lanes.iter().map(|l| f(&l.pending)).fold(0u64, u64::wrapping_add);
        self.stats.pending_series.store(pending(|p| p.series_updates() as u64), Relaxed);
        self.stats.values_pending.store(pending(Pending::values), Relaxed);
    }

    /// Numbers what every idle lane accumulated; the own series ride with
    /// the last batch of each lane that numbered one, routed like any
    /// series (they never make a batch of their own).
    fn seal_all(&mut self) {
        let mut own: Option<OwnMetrics> = None;
        for i in 0..self.lanes.len() {
            if !self.lanes[i].seal(&self.config.split, &self.identity) {
                continue;
            }
            self.unsaved = true;
            let own = own.get_or_insert_with(|| self.source.own_metrics());
            let (router, labels, lanes) = (&self.router, &self.identity.labels, &mut self.lanes);
            let mine = own.series().filter(|(key, _)| router.len() <= 1 || router.shard_of(Router::series_hash(key, labels)) == i);
            let mut part = own_deltas(mine, &mut self.own_sent.borrow_mut());
            let lane = &mut lanes[i];
            // What the collector blocks is not sent (nor counted: no values).
            part.remove_blocked(&lane.blocklist);
            if let Some(last) = lane.pending.sealed.back_mut() {
                last.own = part;
            }
        }
    }

    /// Saves the state (with a state file) and tells the source its takes
    /// are safe. False if the save failed: nothing may be sent then.
    fn persist(&mut self) -> bool {
        if !self.unsaved {
            return true;
        }
        if let Some(file) = &self.config.state_file {
            let state = ClientState {
                instance_id: self.identity.instance_id.clone(),
                take_token: self.take_token,
                lanes: self
                    .lanes
                    .iter()
                    .filter(|l| l.sequence > 0 || !l.pending.is_empty())
                    .map(|l| LaneState {
                        endpoint: l.endpoint.clone(),
                        sequence: l.sequence,
                        sealed: l.pending.sealed.iter().cloned().collect(),
                        accumulating: l.pending.accumulating.clone(),
                        accumulating_since: l.pending.accumulating_since,
                    })
                    .chain(self.retired.iter().map(|(endpoint, &sequence)| LaneState {
                        endpoint: endpoint.clone(),
                        sequence,
                        ..LaneState::default()
                    }))
                    .collect(),
            };
            if let Err(e) = file.save(&state) {
                self.save_failed.warn(&format!("cannot save {}, nothing is sent until it can: {e}", file.path().display()));
                self.save_retry_at = Some(Instant::now() + Duration::from_secs(1));
                return false;
            }
        }
        self.save_retry_at = None;
        self.unsaved = false;
        self.source.taken(self.take_token);
        true
    }

    /// Numbers, saves and sends until no lane has a batch it may send now:
    /// the lanes send concurrently, each in order. False if the state could
    /// not be saved.
    fn send_round(&mut self, timeout: Duration, commands: &Receiver<Command>) -> bool {
        loop {
            self.seal_all();
            if !self.persist() {
                return false;
            }
            let now = Instant::now();
            if !self.lanes.iter().any(|l| l.due(now)) {
                break;
            }
            let sealed_before: usize = self.lanes.iter().map(|l| l.pending.sealed.len()).sum();
            let State { runtime, lanes, source, identity, stats, own_sent, .. } = self;
            let cx = SendContext { source: source.as_ref(), identity, stats, own_sent };
            let sends = lanes.iter_mut().filter(|l| l.due(now)).map(|l| l.send_sealed(&cx, timeout, commands));
            runtime.block_on(futures_util::future::join_all(sends));
            let sealed_after: usize = self.lanes.iter().map(|l| l.pending.sealed.len()).sum();
            // Acknowledged batches leave the state file too (a restart must
            // not resend them to an upstream that may have forgotten us).
            self.unsaved |= sealed_after < sealed_before;
            for lane in std::mem::take(&mut self.lanes) {
                if lane.draining && lane.pending.is_empty() {
                    tracing::info!(target: "shoal::flusher", "removed shard {} received its last batch", lane.endpoint);
                    self.retired.insert(lane.endpoint, lane.sequence);
                } else {
                    self.lanes.push(lane);
                }
            }
            self.update_pending();
            if !commands.is_empty() || self.lanes.iter().all(|l| !l.due(Instant::now())) {
                break;
            }
        }
        self.persist()
    }

    /// Shutdown's flush: what is still unacknowledged when it gives up is
    /// dropped, and counted; with a state file it stays there for the next
    /// start instead.
    fn final_flush(&mut self) -> Result<(), ClientError> {
        let result = self.flush_all();
        if result.is_err() {
            if self.config.state_file.is_some() && self.persist() {
                tracing::info!(
                    target: "shoal::flusher",
                    values = self.stats.values_pending.load(Relaxed),
                    "unacknowledged deltas kept in the state file for the next start"
                );
                return result;
            }
            for lane in &mut self.lanes {
                let pending = std::mem::take(&mut lane.pending);
                for batch in &pending.sealed {
                    self.stats.drop_deltas(DropReason::Shutdown, &batch.deltas);
                }
                self.stats.drop_deltas(DropReason::Shutdown, &pending.accumulating);
            }
            self.update_pending();
        }
        result
    }

    /// Sends until nothing is pending or the shutdown timeout passes.
    fn flush_all(&mut self) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.config.shutdown_timeout;
        if self.save_retry_at.is_none() {
            self.collect();
        }
        let (_keep, never) = bounded::<Command>(1);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ClientError::Flush("deadline passed with deltas still unacknowledged".into()));
            }
            let timeout = deadline.saturating_duration_since(now).min(Lane::request_timeout(self.config.interval));
            let saved = self.send_round(timeout, &never);
            if !self.has_work() {
                return Ok(());
            }
            // Honour the backoff (and an overloaded collector's hint).
            let now = Instant::now();
            let next = match (saved, self.save_retry_at) {
                (false, Some(at)) => at,
                _ => self.lanes.iter().filter(|l| l.has_work()).map(|l| l.retry_at.unwrap_or(now)).min().unwrap_or(now),
            };
            if next > deadline {
                return Err(ClientError::Flush(match saved {
                    true => "the collector asked to retry after the deadline".into(),
                    false => "the state file cannot be saved".into(),
                }));
            }
            std::thread::sleep(next.saturating_duration_since(now));
        }
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
        let first = own_deltas(own(3, 7.0).series(), &mut sent);
        assert_eq!(first.counters.iter().map(|c| c.delta).collect::<Vec<_>>(), [3]);
        assert_eq!(first.gauges.iter().map(|g| g.value).collect::<Vec<_>>(), [7.0]);
        // No growth: no counter delta, the gauge still goes.
        let second = own_deltas(own(3, 0.0).series(), &mut sent);
        assert!(second.counters.is_empty());
        assert_eq!(second.gauges.len(), 1);
        // Growth of 2: a delta of 2.
        let third = own_deltas(own(5, 0.0).series(), &mut sent);
        assert_eq!(third.counters[0].delta, 2);
        assert_eq!(sent.get("shoal_flush_batches_sent_total"), Some(&5));
    }
}

//! The gRPC ingest service: decode (tonic), admit into the bounded ingest
//! queue, validate and merge (one batch at a time: merging takes
//! microseconds), acknowledge.
//!
//! Overload: at most `ingest_queue` batches wait for or are in the merge
//! step. One more is answered `RESOURCE_EXHAUSTED` at once, with the
//! `retry-after-ms` metadata; the SDK keeps the batch and resends it after
//! that long plus jitter. Waiting batches wait asynchronously (no thread is
//! blocked), and what they hold is bounded by the queue size times the
//! largest batch.

use crate::aggregate::{unix_secs, Aggregator, Outcome};
use crate::persist::Durable;
use crate::rejection::Rejection;
use crate::stats::Stats;
use parking_lot::Mutex;
use prost::Message;
use shoal_proto as pb;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Request, Response, Status};

pub use shoal_proto::limits::{MAX_BATCH_BYTES, RETRY_AFTER_METADATA};

/// Faults a test can inject into the ingest path, to check that nothing is
/// lost or counted twice when acknowledgements are late or lost. All off
/// (zero) unless set; checking them costs a few relaxed loads per batch.
#[derive(Debug, Default)]
pub struct Faults {
    /// Probability, per million batches, of failing a batch (`UNAVAILABLE`)
    /// before it is merged.
    pub fail_before_merge_ppm: AtomicU32,
    /// Probability, per million batches, of merging a batch and then
    /// answering `UNAVAILABLE`: the acknowledgement is lost.
    pub fail_after_merge_ppm: AtomicU32,
    /// Each acknowledgement is delayed by a uniform random 0..=this many ms
    /// (after the merge; the merge step is not held).
    pub max_ack_delay_ms: AtomicU64,
}

impl Faults {
    fn roll(ppm: &AtomicU32) -> bool {
        let p = ppm.load(Relaxed);
        p > 0 && rand::random::<u32>() % 1_000_000 < p
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        self.fail_before_merge_ppm.store(0, Relaxed);
        self.fail_after_merge_ppm.store(0, Relaxed);
        self.max_ack_delay_ms.store(0, Relaxed);
    }
}

/// The bounded ingest queue and its knobs, shared by the service, the
/// collector handle (tests) and reloads.
pub struct IngestControl {
    /// One permit per batch waiting for or in the merge step.
    pub queue: Arc<tokio::sync::Semaphore>,
    /// Serialises the merge step; holding it (a test) stalls ingestion so
    /// that the queue fills as it would behind a slow merge.
    pub gate: tokio::sync::Mutex<()>,
    /// The retry hint sent when overloaded, in ms.
    pub retry_after_ms: AtomicU64,
    /// Injected faults (tests).
    pub faults: Faults,
}

impl IngestControl {
    /// A queue of `capacity` batches and a retry hint.
    pub fn new(capacity: usize, retry_after_ms: u64) -> IngestControl {
        IngestControl {
            queue: Arc::new(tokio::sync::Semaphore::new(capacity)),
            gate: tokio::sync::Mutex::new(()),
            retry_after_ms: AtomicU64::new(retry_after_ms),
            faults: Faults::default(),
        }
    }
}

/// Implements `shoal.v1.Ingest`.
pub struct IngestService {
    pub(crate) aggregator: Arc<Mutex<Aggregator>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) control: Arc<IngestControl>,
    pub(crate) durable: Option<Arc<Durable>>,
}

impl IngestService {
    /// A service over shared state.
    pub fn new(aggregator: Arc<Mutex<Aggregator>>, stats: Arc<Stats>, control: Arc<IngestControl>) -> IngestService {
        IngestService { aggregator, stats, control, durable: None }
    }

    /// The same, acknowledging a batch only once it is durable in `durable`.
    pub fn with_durable(mut self, durable: Option<Arc<Durable>>) -> IngestService {
        self.durable = durable;
        self
    }

    /// Handles one decoded batch in memory (no durability wait); shared by
    /// the fuzz target and tests.
    pub fn handle(&self, req: &pb::FlushRequest) -> Result<pb::FlushResponse, Status> {
        self.handle_at(req, unix_secs(), None).0
    }

    /// Handles one batch at `now`. With `durable` (the WAL and the encoded
    /// request), a merged batch is logged inside the same critical section
    /// as its merge; returns the ticket to wait for before acknowledging (a
    /// duplicate: the ticket of its instance's last merge).
    pub(crate) fn handle_at(
        &self,
        req: &pb::FlushRequest,
        now: u64,
        durable: Option<(&Durable, &[u8])>,
    ) -> (Result<pb::FlushResponse, Status>, u64) {
        let stats = &self.stats;
        stats.batches_received.fetch_add(1, Relaxed);
        stats.bytes_received.fetch_add(req.encoded_len() as u64, Relaxed);
        let started = Instant::now();
        let (result, epoch, blocklist, ticket) = {
            let mut agg = self.aggregator.lock();
            let r = agg.apply(req, now);
            let ticket = match (durable, &r) {
                (Some((d, bytes)), Ok(Outcome::Merged(_))) => {
                    let t = d.log_batch(now, bytes);
                    agg.set_instance_ticket(&req.instance_id, t);
                    t
                }
                (Some(_), Ok(Outcome::Duplicate)) => agg.instance_ticket(&req.instance_id),
                _ => 0,
            };
            (r, agg.epoch(), agg.blocklist().patterns().to_vec(), ticket)
        };
        stats.merge_nanos.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        let mut response = pb::FlushResponse {
            acknowledged_sequence: 0,
            duplicate: false,
            unknown_refs: Vec::new(),
            collector_epoch: epoch,
            blocklist,
            rejected: Vec::new(),
        };
        match result {
            Ok(Outcome::Merged(rejected)) => {
                stats.batches_merged.fetch_add(1, Relaxed);
                response.acknowledged_sequence = req.sequence;
                if let Some(first) = rejected.first() {
                    tracing::debug!(
                        instance = %truncate(&req.instance_id),
                        sequence = req.sequence,
                        "{} series rejected, first: {}",
                        rejected.len(),
                        first.message
                    );
                }
                response.rejected = rejected
                    .into_iter()
                    .map(|r| pb::SeriesRejection { r#ref: r.r#ref, reason: r.reason.as_str().to_string(), message: r.message })
                    .collect();
            }
            Ok(Outcome::Duplicate) => {
                stats.batches_duplicate.fetch_add(1, Relaxed);
                response.acknowledged_sequence = req.sequence;
                response.duplicate = true;
            }
            Ok(Outcome::UnknownRefs(refs)) => response.unknown_refs = refs,
            Err(refused) => {
                tracing::warn!(instance = %truncate(&req.instance_id), sequence = req.sequence, "batch refused: {}", refused.message);
                let status = match refused.reason {
                    Rejection::InstanceLimit => Status::failed_precondition(refused.message),
                    _ => Status::invalid_argument(refused.message),
                };
                return (Err(status), ticket);
            }
        }
        (Ok(response), ticket)
    }

    /// The answer while the durable store cannot keep up with memory.
    fn unavailable(&self) -> Status {
        let ms = self.control.retry_after_ms.load(Relaxed);
        let mut status = Status::unavailable(format!("collector storage failing: retry after {ms} ms"));
        if let Ok(v) = ms.to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_METADATA, v);
        }
        status
    }

    /// The answer to a batch that found the queue full.
    fn overloaded(&self) -> Status {
        self.stats.overloaded();
        let ms = self.control.retry_after_ms.load(Relaxed);
        let mut status = Status::resource_exhausted(format!("ingest queue full: retry after {ms} ms"));
        if let Ok(v) = ms.to_string().parse() {
            status.metadata_mut().insert(RETRY_AFTER_METADATA, v);
        }
        status
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Decrements the queue depth when a batch leaves the queue.
struct Queued<'a>(&'a Stats);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.ingest_queue_depth.fetch_sub(1, Relaxed);
    }
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn flush(&self, request: Request<pb::FlushRequest>) -> Result<Response<pb::FlushResponse>, Status> {
        let Ok(_permit) = self.control.queue.clone().try_acquire_owned() else {
            return Err(self.overloaded());
        };
        // The token's tenant (see `security`): applied before anything is
        // logged or merged, so the WAL holds the batch as the tenant's too.
        let tenant = request.extensions().get::<crate::security::Tenant>().cloned();
        let mut request = request.into_inner();
        if let Some(tenant) = tenant {
            crate::security::apply_tenant(&mut request, &tenant.0, &self.stats.security);
        }
        let depth = self.stats.ingest_queue_depth.fetch_add(1, Relaxed) + 1;
        self.stats.ingest_queue_peak.fetch_max(depth, Relaxed);
        let _queued = Queued(&self.stats);
        let faults = &self.control.faults;
        let durable = self.durable.as_deref();
        // Encoded outside the merge step; only logged if it merges.
        let encoded = durable.map(|_| request.encode_to_vec());
        let (result, ticket) = {
            let _merging = self.control.gate.lock().await;
            if Faults::roll(&faults.fail_before_merge_ppm) {
                return Err(Status::unavailable("injected fault: failed before merging"));
            }
            match (durable, &encoded) {
                (Some(d), Some(bytes)) => {
                    if d.degraded() {
                        self.stats.batches_unavailable.fetch_add(1, Relaxed);
                        return Err(self.unavailable());
                    }
                    self.handle_at(&request, unix_secs(), Some((d, bytes)))
                }
                _ => self.handle_at(&request, unix_secs(), None),
            }
        };
        if let Some(d) = durable {
            if result.is_ok() && d.wait(ticket).await.is_err() {
                return Err(self.unavailable());
            }
        }
        let delay = faults.max_ack_delay_ms.load(Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % (delay + 1))).await;
        }
        if result.is_ok() && Faults::roll(&faults.fail_after_merge_ppm) {
            return Err(Status::unavailable("injected fault: merged, acknowledgement lost"));
        }
        result.map(Response::new)
    }
}

/// Counts the messages tonic refuses before they reach [`IngestService`]
/// (larger than [`MAX_BATCH_BYTES`]: `OUT_OF_RANGE`; not a valid protobuf
/// message: `INTERNAL`), which the handler never sees. The handler itself
/// never answers with those two codes, so a trailers-only response carrying
/// one of them is such a refusal.
#[derive(Clone)]
pub struct CountRefusals<S> {
    inner: S,
    stats: Arc<Stats>,
}

/// The [`tower::Layer`] of [`CountRefusals`].
#[derive(Clone)]
pub struct CountRefusalsLayer(pub Arc<Stats>);

impl<S> tower::Layer<S> for CountRefusalsLayer {
    type Service = CountRefusals<S>;

    fn layer(&self, inner: S) -> CountRefusals<S> {
        CountRefusals { inner, stats: self.0.clone() }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for CountRefusals<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let stats = self.stats.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let code = response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
            match code.map(tonic::Code::from_i32) {
                Some(tonic::Code::OutOfRange) => {
                    stats.refused_before_merge(Rejection::TooLarge);
                    tracing::warn!("a batch larger than {MAX_BATCH_BYTES} bytes was refused before decoding");
                }
                Some(tonic::Code::Internal) => {
                    stats.refused_before_merge(Rejection::Undecodable);
                    tracing::warn!("a message that is not a valid FlushRequest was refused");
                }
                _ => {}
            }
            Ok(response)
        })
    }
}

//! The gRPC ingest service: decode (tonic), validate and merge (under one
//! lock: merging a batch takes microseconds), acknowledge.

use crate::aggregate::{unix_secs, Aggregator, Outcome};
use crate::stats::Stats;
use parking_lot::Mutex;
use prost::Message;
use shoal_proto as pb;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

/// Largest encoded batch accepted (tonic refuses larger messages with
/// `ResourceExhausted` before decoding).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Implements `shoal.v1.Ingest`.
pub struct IngestService {
    pub(crate) aggregator: Arc<Mutex<Aggregator>>,
    pub(crate) stats: Arc<Stats>,
}

impl IngestService {
    /// Handles one decoded batch; shared by the gRPC path and tests.
    pub fn handle(&self, req: &pb::FlushRequest) -> Result<pb::FlushResponse, Status> {
        let stats = &self.stats;
        stats.batches_received.fetch_add(1, Relaxed);
        stats.bytes_received.fetch_add(req.encoded_len() as u64, Relaxed);
        let started = Instant::now();
        let (result, epoch) = {
            let mut agg = self.aggregator.lock();
            let r = agg.apply(req, unix_secs());
            (r, agg.epoch())
        };
        stats.merge_nanos.fetch_add(started.elapsed().as_nanos() as u64, Relaxed);
        let mut response = pb::FlushResponse {
            acknowledged_sequence: 0,
            duplicate: false,
            unknown_refs: Vec::new(),
            collector_epoch: epoch,
            blocklist: Vec::new(),
        };
        match result {
            Ok(Outcome::Merged) => {
                stats.batches_merged.fetch_add(1, Relaxed);
                response.acknowledged_sequence = req.sequence;
            }
            Ok(Outcome::Duplicate) => {
                stats.batches_duplicate.fetch_add(1, Relaxed);
                response.acknowledged_sequence = req.sequence;
                response.duplicate = true;
            }
            Ok(Outcome::UnknownRefs(refs)) => response.unknown_refs = refs,
            Err(refused) => {
                let updates = (req.counters.len() + req.gauges.len() + req.histograms.len()) as u64;
                stats.reject(refused.reason, updates);
                tracing::warn!(instance = %truncate(&req.instance_id), sequence = req.sequence, "batch refused: {}", refused.message);
                return Err(Status::invalid_argument(refused.message));
            }
        }
        Ok(response)
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    async fn flush(&self, request: Request<pb::FlushRequest>) -> Result<Response<pb::FlushResponse>, Status> {
        self.handle(request.get_ref()).map(Response::new)
    }
}

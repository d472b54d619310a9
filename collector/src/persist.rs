//! The durable collector (`--data-dir`): the [`durable`](crate::durable)
//! WAL behind the aggregator.
//!
//! - Records: a merged batch (`1`, the receive time `now`, the encoded
//!   `FlushRequest`), a maintenance pass (`2`, `now`), a checkpoint marker
//!   (`3`), a forwarder's take (`4`, its token: see
//!   [`crate::aggregate::forward`]). Replay calls the same [`Aggregator::apply`] and
//!   [`Aggregator::maintain`] with the logged `now`, so the state rebuilt is
//!   the state that was acknowledged (expiry included).
//! - Order: a record is queued inside the aggregator-lock critical section
//!   that changed the state, so log order is merge order. Each record gets a
//!   *ticket*; the tracker task follows the appends in ticket order and
//!   publishes the highest ticket below which everything is durable. A batch
//!   is acknowledged once its ticket (a duplicate: its instance's last
//!   ticket) is durable.
//! - Failure: a failed append leaves memory ahead of disk: the collector is
//!   *degraded*, answers `UNAVAILABLE` with a retry hint, and leaves that
//!   state only when a checkpoint (a snapshot of memory, non-durable merges
//!   included) has been written. Checkpoints are retried every second while
//!   degraded.
//! - Checkpoints: the snapshot is taken and a marker queued under the
//!   aggregator lock; once the marker is durable, the snapshot is exactly
//!   the state after every record up to the marker's LSN.

use crate::aggregate::snapshot::Snapshot;
use crate::aggregate::Aggregator;
use crate::config::Config;
use crate::durable::{Lsn, Wal, WalError, WalOptions};
use crate::stats::Stats;
use parking_lot::Mutex;
use prost::Message;
use shoal_proto as pb;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

const RECORD_BATCH: u8 = 1;
const RECORD_MAINTAIN: u8 = 2;
const RECORD_MARKER: u8 = 3;
const RECORD_FORWARD_TAKE: u8 = 4;

/// When checkpoints are written.
#[derive(Clone, Debug)]
pub struct CheckpointPolicy {
    /// At least this often (if anything was logged).
    pub interval: Duration,
    /// Or once the log has grown this much since the last one.
    pub max_wal_bytes: u64,
    /// While degraded, a checkpoint is tried this often.
    pub retry: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy { interval: Duration::from_secs(60), max_wal_bytes: 256 << 20, retry: Duration::from_secs(1) }
    }
}

/// Where durability stands, published to the waiting batches.
#[derive(Clone, Copy, Debug, Default)]
struct Track {
    /// Every ticket up to this one is durable (in the log or a checkpoint).
    durable: u64,
    /// The highest failed ticket not yet covered by a checkpoint: degraded.
    failed: Option<u64>,
}

type Append = Pin<Box<dyn Future<Output = Result<Lsn, WalError>> + Send>>;

/// What the start found in the data directory.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// LSN of the checkpoint loaded (0: none).
    pub checkpoint_lsn: u64,
    /// Records replayed after it.
    pub replayed: usize,
    /// Records cut off (torn or corrupt tail), counted as corrupt.
    pub cut_records: u64,
    /// The cuts, as logged.
    pub cuts: Vec<String>,
    /// Time the start took (open, load, replay).
    pub took: Duration,
}

/// The WAL, the tickets and the degraded state of a durable collector.
pub struct Durable {
    wal: Wal,
    stats: Arc<Stats>,
    /// Last ticket handed out; only changed under the aggregator lock.
    next_ticket: AtomicU64,
    appends: mpsc::UnboundedSender<(u64, Append)>,
    pending: Mutex<Option<mpsc::UnboundedReceiver<(u64, Append)>>>,
    track: watch::Sender<Track>,
    /// Checkpoint schedule.
    pub policy: CheckpointPolicy,
    /// What the start restored.
    pub restored: Restored,
}

impl Durable {
    /// Opens `dir`, restores the checkpoint and replays the log into a new
    /// aggregator (blocking: call it off the async runtime). A corrupt
    /// checkpoint or an unreadable directory is an error naming the file.
    pub fn open(config: Config, stats: Arc<Stats>, options: WalOptions) -> Result<(Aggregator, Durable), String> {
        let started = Instant::now();
        let dir = config.data_dir.clone().ok_or("no data_dir")?;
        let (wal, recovered) = Wal::open(&dir, options).map_err(|e| format!("cannot open the data dir {}: {e}", dir.display()))?;
        let mut restored = Restored::default();
        for cut in &recovered.cuts {
            tracing::warn!("WAL recovery: {cut}");
            restored.cuts.push(cut.to_string());
        }
        restored.cut_records = recovered.lost_records();
        stats.wal_corrupt_records.fetch_add(restored.cut_records, Relaxed);
        // Replayed batches are not counted as received again.
        let scratch = Arc::new(Stats::default());
        let mut agg = match &recovered.checkpoint {
            Some(c) => {
                let snapshot = Snapshot::decode(c.bytes.as_slice())
                    .map_err(|e| format!("corrupt checkpoint {}: cannot decode: {e}", c.path.display()))?;
                restored.checkpoint_lsn = c.lsn.0;
                Aggregator::restore(config.clone(), scratch.clone(), snapshot)
                    .map_err(|e| format!("cannot restore checkpoint {}: {e}", c.path.display()))?
            }
            None => Aggregator::new(config.clone(), scratch.clone()),
        };
        for r in &recovered.records {
            replay(&mut agg, &r.payload).map_err(|e| format!("WAL record {} in {}: {e}", r.lsn, dir.display()))?;
        }
        restored.replayed = recovered.records.len();
        agg.set_stats(stats.clone());
        let mut track = Track::default();
        if recovered.checkpoint.is_none() {
            // A fresh directory: write the epoch down at once, so it
            // survives a crash before the first periodic checkpoint. A full
            // disk does not stop the start: degraded until one is written.
            let bytes = agg.snapshot().encode_to_vec();
            if let Err(e) = wal.checkpoint(&bytes, wal.durable_lsn()) {
                tracing::error!("cannot write the first checkpoint in {}, degraded until one is written: {e}", dir.display());
                track.failed = Some(0);
                stats.durable_degraded.store(1, Relaxed);
            }
        }
        restored.took = started.elapsed();
        tracing::info!(
            dir = %dir.display(),
            checkpoint_lsn = restored.checkpoint_lsn,
            replayed = restored.replayed,
            cut_records = restored.cut_records,
            series = agg.series_count(),
            took_ms = restored.took.as_millis() as u64,
            "data dir restored"
        );
        let (tx, rx) = mpsc::unbounded_channel();
        let durable = Durable {
            wal,
            stats,
            next_ticket: AtomicU64::new(0),
            appends: tx,
            pending: Mutex::new(Some(rx)),
            track: watch::Sender::new(track),
            policy: CheckpointPolicy::default(),
            restored,
        };
        Ok((agg, durable))
    }

    /// The WAL.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Whether a failed write is not yet covered by a checkpoint.
    pub fn degraded(&self) -> bool {
        self.track.borrow().failed.is_some()
    }

    /// The ticket of the last record queued: once it is durable, so is
    /// every change made before this call (read it under the aggregator
    /// lock to cover exactly what that lock saw).
    pub(crate) fn last_ticket(&self) -> u64 {
        self.next_ticket.load(Relaxed)
    }

    /// Queues a record and returns its ticket. Call under the aggregator
    /// lock, right after the change it records.
    fn log(&self, payload: Vec<u8>) -> u64 {
        let ticket = self.next_ticket.fetch_add(1, Relaxed) + 1;
        let append: Append = Box::pin(self.wal.append(payload));
        // The tracker lives as long as the server; without it (stopped),
        // nothing is acknowledged anyway.
        let _ = self.appends.send((ticket, append));
        ticket
    }

    /// Logs a merged batch (under the aggregator lock).
    pub(crate) fn log_batch(&self, now: u64, request: &[u8]) -> u64 {
        let mut payload = Vec::with_capacity(9 + request.len());
        payload.push(RECORD_BATCH);
        payload.extend_from_slice(&now.to_le_bytes());
        payload.extend_from_slice(request);
        self.log(payload)
    }

    /// Logs a forwarder's take (under the aggregator lock, right after it).
    pub(crate) fn log_forward_take(&self, token: u64) -> u64 {
        let mut payload = vec![RECORD_FORWARD_TAKE];
        payload.extend_from_slice(&token.to_le_bytes());
        self.log(payload)
    }

    /// Runs and logs a maintenance pass.
    pub(crate) fn maintain(&self, agg: &mut Aggregator, now: u64) {
        agg.maintain(now);
        let mut payload = vec![RECORD_MAINTAIN];
        payload.extend_from_slice(&now.to_le_bytes());
        self.log(payload);
    }

    /// Resolves `Ok` once `ticket` is durable, `Err` if the collector is
    /// degraded first (the batch is answered `UNAVAILABLE`).
    pub(crate) async fn wait(&self, ticket: u64) -> Result<(), ()> {
        let mut rx = self.track.subscribe();
        let t = match rx.wait_for(|t| t.durable >= ticket || t.failed.is_some()).await {
            Ok(t) => *t,
            Err(_) => return Err(()),
        };
        if t.durable >= ticket {
            Ok(())
        } else {
            Err(())
        }
    }

    /// Follows the appends in ticket order (spawned once by the server).
    pub(crate) async fn track_appends(self: Arc<Self>) {
        let Some(mut rx) = self.pending.lock().take() else { return };
        while let Some((ticket, append)) = rx.recv().await {
            let result = append.await;
            self.track.send_modify(|t| match &result {
                Ok(_) if t.failed.is_none() => t.durable = t.durable.max(ticket),
                Ok(_) => {}
                Err(_) if ticket <= t.durable => {} // covered by a checkpoint already
                Err(_) => t.failed = Some(t.failed.map_or(ticket, |f| f.max(ticket))),
            });
            if let Err(e) = result {
                self.stats.wal_write_errors.fetch_add(1, Relaxed);
                if self.degraded() {
                    self.stats.durable_degraded.store(1, Relaxed);
                }
                tracing::error!("WAL append failed, answering UNAVAILABLE until a checkpoint succeeds: {e}");
            }
        }
    }

    /// Writes a checkpoint of `aggregator` now. On success the collector is
    /// no longer degraded (the snapshot holds every merge made so far).
    pub async fn checkpoint(&self, aggregator: &Mutex<Aggregator>) -> Result<(), String> {
        let (snapshot, ticket, marker) = {
            let agg = aggregator.lock();
            let snapshot = agg.snapshot();
            let ticket = self.next_ticket.load(Relaxed);
            (snapshot, ticket, self.wal.append(vec![RECORD_MARKER]))
        };
        let bytes = tokio::task::spawn_blocking(move || snapshot.encode_to_vec()).await.map_err(|e| e.to_string())?;
        let lsn = marker.await.map_err(|e| e.to_string())?;
        let wal = self.wal.clone();
        let size = bytes.len();
        let report = tokio::task::spawn_blocking(move || wal.checkpoint(&bytes, lsn)).await.map_err(|e| e.to_string())?;
        let report = report.map_err(|e| e.to_string())?;
        if let Some(e) = &report.cleanup_error {
            tracing::warn!("checkpoint written, cleanup incomplete: {e}");
        }
        self.stats.checkpoints.fetch_add(1, Relaxed);
        let was_degraded = self.degraded();
        self.track.send_modify(|t| {
            t.durable = t.durable.max(ticket);
            if t.failed.is_some_and(|f| f <= ticket) {
                t.failed = None;
            }
        });
        if !self.degraded() {
            self.stats.durable_degraded.store(0, Relaxed);
            if was_degraded {
                tracing::info!("checkpoint written: durable again");
            }
        }
        tracing::debug!(lsn = lsn.0, bytes = size, path = %report.path.display(), "checkpoint written");
        Ok(())
    }

    /// Writes checkpoints on [`Durable::policy`] until `stop` (spawned once
    /// by the server).
    pub(crate) async fn checkpoint_loop(self: Arc<Self>, aggregator: Arc<Mutex<Aggregator>>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.policy.retry.min(Duration::from_secs(1)));
        let mut last = Instant::now();
        let mut bytes_at_last = self.wal.stats().bytes;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let stats = self.wal.stats();
            let due = self.degraded()
                || (stats.bytes > bytes_at_last && last.elapsed() >= self.policy.interval)
                || stats.bytes - bytes_at_last >= self.policy.max_wal_bytes;
            if !due {
                continue;
            }
            match self.checkpoint(&aggregator).await {
                Ok(()) => {
                    last = Instant::now();
                    bytes_at_last = stats.bytes;
                }
                Err(e) => tracing::warn!("checkpoint failed (retried): {e}"),
            }
        }
    }
}

/// Applies one logged record.
fn replay(agg: &mut Aggregator, payload: &[u8]) -> Result<(), String> {
    let now = |p: &[u8]| p.get(1..9).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).ok_or("record too short");
    match payload.first() {
        Some(&RECORD_BATCH) => {
            let at = now(payload)?;
            let req = pb::FlushRequest::decode(&payload[9..]).map_err(|e| format!("undecodable batch: {e}"))?;
            // Refusals cannot happen (it merged when it was logged) unless
            // the limits changed; either way the outcome is what it is.
            let _ = agg.apply(&req, at);
        }
        Some(&RECORD_MAINTAIN) => agg.maintain(now(payload)?),
        Some(&RECORD_MARKER) => {}
        Some(&RECORD_FORWARD_TAKE) => agg.forward_replay_take(now(payload)?),
        other => return Err(format!("unknown record type {other:?}")),
    }
    Ok(())
}

//! What the flush client has done, in batches, series-updates and values:
//! the sender's half of shoal's conservation counts.

use shoal_core::exposition::TextWriter;
use shoal_core::{Deltas, OwnMetrics};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Send attempts the collector answered `UNAUTHENTICATED` or
    /// `PERMISSION_DENIED` (wrong or missing token, or a TLS port spoken to
    /// in plain); the batch is kept and resent after a backoff.
    pub batches_unauthenticated: AtomicU64,
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
    /// Values a durable client found in its state file at start (taken by
    /// the process before a restart, never acknowledged); counted in
    /// `values_taken` too, so that the balance holds per process.
    pub values_resumed: AtomicU64,
    values_dropped: [AtomicU64; 4],
    series_updates_dropped: [AtomicU64; 4],
    pub(crate) blocklist: parking_lot::Mutex<Vec<String>>,
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

    pub(crate) fn drop_deltas(&self, why: DropReason, deltas: &Deltas) {
        self.drop_counts(why, deltas.values(), deltas.series_updates() as u64);
    }

    pub(crate) fn drop_counts(&self, why: DropReason, values: u64, series_updates: u64) {
        self.values_dropped[why as usize].fetch_add(values, Relaxed);
        self.series_updates_dropped[why as usize].fetch_add(series_updates, Relaxed);
    }

    /// Writes the `shoal_flush_*` self-metrics.
    pub fn write(&self, w: &mut TextWriter) {
        self.own_metrics().write(w);
    }

    /// The `shoal_flush_*` self-metrics, as data.
    pub fn own_metrics(&self) -> OwnMetrics {
        let mut own = OwnMetrics::default();
        let counters: [(&'static str, &AtomicU64, &'static str); 14] = [
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
            (
                "shoal_flush_batches_unauthenticated_total",
                &self.batches_unauthenticated,
                "Batch send attempts refused for the auth token (or plain text to a TLS port); the batch is kept and resent",
            ),
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
            (
                "shoal_flush_values_resumed_total",
                &self.values_resumed,
                "Values found unacknowledged in the state file at start (also counted as taken)",
            ),
        ];
        for (name, value, help) in counters {
            own.counter(name, help, &[], value.load(Relaxed));
        }
        for why in DropReason::ALL {
            own.counter(
                "shoal_flush_values_dropped_total",
                "Values taken but never merged, by reason",
                &[("reason", why.as_str())],
                self.values_dropped(why),
            );
        }
        for why in DropReason::ALL {
            own.counter(
                "shoal_flush_series_updates_dropped_total",
                "Series-updates taken but never merged, by reason",
                &[("reason", why.as_str())],
                self.series_updates_dropped(why),
            );
        }
        own.gauge(
            "shoal_flush_pending_series",
            "Series held for the collector, not yet acknowledged",
            &[],
            self.pending_series.load(Relaxed) as f64,
        );
        own.gauge(
            "shoal_flush_pending_values",
            "Values held for the collector, not yet acknowledged",
            &[],
            self.values_pending.load(Relaxed) as f64,
        );
        own.gauge(
            "shoal_flush_blocklist_patterns",
            "Patterns in the blocklist last received from the collector",
            &[],
            self.blocklist.lock().len() as f64,
        );
        own
    }
}

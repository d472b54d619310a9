//! The collector's counts of what it received, merged and refused, exposed
//! under `shoal_collector_` so that loss is visible.
//!
//! Counted in three units at once: batches, series-updates (one per series
//! in a batch) and values (counter increments summed plus histogram samples;
//! a gauge update is 0 values, see `shoal_core::Deltas::values`). Values are the
//! unit in which conservation is exact end to end. For every batch that
//! reaches the merge step exactly one of these holds, in every unit:
//!
//! `received = merged + duplicate + unknown_refs + Σ rejected(reason)`
//!
//! where `duplicate` and `unknown_refs` are not losses (already merged; the
//! SDK resends), and `rejected` splits into whole-batch refusals
//! (`invalid_field`, `instance_limit`: a batch that is malformed as such)
//! and per-series ones (`invalid_series`, `invalid_value`, `invalid_sketch`,
//! `series_limit_*`, `blocked`, `kind_conflict`), whose batch merged the
//! rest. Batches refused as `overloaded` never reach the merge step: they
//! are counted in `batches_rejected{reason="overloaded"}` only, since the
//! SDK keeps and resends them; so are messages refused before they could be
//! decoded (`too_large`, `undecodable`), whose contents are unknown.

pub use crate::rejection::Rejection;
use crate::rejection::REASONS;
use crate::remote_write::{DropReason, TargetStats, TargetStatsSnapshot};
use crate::scrape::MetricWriter;
use shoal_core::exposition::format_value;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// A count in series-updates and in values.
#[derive(Default, Debug)]
pub struct Flow {
    /// Series-updates.
    pub series_updates: AtomicU64,
    /// Values (counter increments summed, histogram samples).
    pub values: AtomicU64,
}

impl Flow {
    /// Adds.
    pub fn add(&self, series_updates: u64, values: u64) {
        self.series_updates.fetch_add(series_updates, Relaxed);
        self.values.fetch_add(values, Relaxed);
    }

    /// Series-updates so far.
    pub fn series_updates(&self) -> u64 {
        self.series_updates.load(Relaxed)
    }

    /// Values so far.
    pub fn values(&self) -> u64 {
        self.values.load(Relaxed)
    }
}

/// Self-metrics of the collector.
#[derive(Default, Debug)]
pub struct Stats {
    /// Batches received (every outcome but `overloaded`).
    pub batches_received: AtomicU64,
    /// Batches merged (some of their series may have been rejected).
    pub batches_merged: AtomicU64,
    /// Batches acknowledged without merging (already merged).
    pub batches_duplicate: AtomicU64,
    /// Batches answered with unknown refs (nothing merged, SDK resends).
    pub batches_unknown_refs: AtomicU64,
    /// Series-updates merged (kept for compatibility: `merged.series_updates`).
    pub series_updates_merged: AtomicU64,
    /// Series-updates refused, any reason (`Σ rejected(reason).series_updates`).
    pub series_updates_rejected: AtomicU64,
    /// Received, in series-updates and values.
    pub received: Flow,
    /// Merged.
    pub merged: Flow,
    /// In duplicate batches (merged before).
    pub duplicate: Flow,
    /// In batches answered with unknown refs (to be resent).
    pub unknown_refs: Flow,
    /// Encoded bytes of received batches.
    pub bytes_received: AtomicU64,
    /// Nanoseconds spent merging.
    pub merge_nanos: AtomicU64,
    /// Batches waiting for or in the merge step now.
    pub ingest_queue_depth: AtomicU64,
    /// Highest `ingest_queue_depth` seen.
    pub ingest_queue_peak: AtomicU64,
    /// Configuration reloads applied.
    pub config_reloads: AtomicU64,
    /// Configuration reloads refused (the old settings stay).
    pub config_reload_errors: AtomicU64,
    /// Rollup series removed after `series_expiry_secs` without an update.
    pub series_expired: AtomicU64,
    /// WAL appends that failed (I/O error, disk full): the batch was answered
    /// `UNAVAILABLE`.
    pub wal_write_errors: AtomicU64,
    /// WAL records cut off at start (torn or corrupt).
    pub wal_corrupt_records: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// Batches answered `UNAVAILABLE` because the collector is degraded
    /// (memory ahead of disk); not merged.
    pub batches_unavailable: AtomicU64,
    /// 1 while degraded: a WAL append failed and no checkpoint has covered it yet.
    pub durable_degraded: AtomicU64,
    batches_rejected: [AtomicU64; REASONS],
    rejected: [Flow; REASONS],
    /// Remote-write targets: URL and live counters.
    remote_write: parking_lot::Mutex<Vec<(String, Arc<TargetStats>)>>,
    /// The forwarder's counts (`upstream`), exposed as `shoal_collector_forward_*`.
    forwarder: parking_lot::Mutex<Option<Arc<shoal_proto::client::FlusherStats>>>,
    /// The StatsD listener's counts (exposed only when it runs).
    pub statsd: Arc<crate::statsd::StatsdStats>,
    /// TLS handshakes, token refusals, reloads.
    pub security: Arc<crate::security::SecurityStats>,
}

impl Stats {
    /// Counts a batch refused as a whole.
    pub fn reject_batch(&self, why: Rejection, series_updates: u64, values: u64) {
        self.batches_rejected[why as usize].fetch_add(1, Relaxed);
        self.reject_series(why, series_updates, values);
    }

    /// Counts series refused one by one.
    pub fn reject_series(&self, why: Rejection, series_updates: u64, values: u64) {
        self.rejected[why as usize].add(series_updates, values);
        self.series_updates_rejected.fetch_add(series_updates, Relaxed);
    }

    /// Counts a batch refused before reaching the merge step (overload,
    /// or a message that could not be decoded).
    pub fn refused_before_merge(&self, why: Rejection) {
        self.batches_rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// Counts a batch refused because the ingest queue was full.
    pub fn overloaded(&self) {
        self.refused_before_merge(Rejection::Overloaded);
    }

    /// Batches refused as a whole for one reason.
    pub fn rejected(&self, why: Rejection) -> u64 {
        self.batches_rejected[why as usize].load(Relaxed)
    }

    /// Series-updates and values refused for one reason.
    pub fn rejected_flow(&self, why: Rejection) -> &Flow {
        &self.rejected[why as usize]
    }

    /// Values refused, every reason.
    pub fn values_rejected(&self) -> u64 {
        self.rejected.iter().map(Flow::values).fold(0, u64::wrapping_add)
    }

    /// Sets the remote-write targets whose counters are exposed.
    pub fn set_remote_write_targets(&self, targets: Vec<(String, Arc<TargetStats>)>) {
        *self.remote_write.lock() = targets;
    }

    /// Sets the forwarder whose counts are exposed.
    pub fn set_forwarder(&self, stats: Arc<shoal_proto::client::FlusherStats>) {
        *self.forwarder.lock() = Some(stats);
    }

    /// The forwarder's counts, if this collector forwards upstream.
    pub fn forwarder(&self) -> Option<Arc<shoal_proto::client::FlusherStats>> {
        self.forwarder.lock().clone()
    }

    /// The forwarder's `shoal_flush_*` counts under `shoal_collector_forward_*`
    /// (the rollups of the SDKs' own `shoal_flush_*` series share this page).
    fn write_forwarder(&self, w: &mut impl MetricWriter) {
        let Some(stats) = self.forwarder() else { return };
        for f in stats.own_metrics().families {
            let name = f.name.replacen("shoal_flush_", "shoal_collector_forward_", 1);
            w.family(&name, f.kind(), f.help);
            for (labels, value) in &f.samples {
                w.sample(&name, labels, None, &value.text());
            }
        }
    }

    /// The counters of every remote-write target.
    pub fn remote_write(&self) -> Vec<TargetStatsSnapshot> {
        self.remote_write.lock().iter().map(|(url, s)| s.snapshot(url)).collect()
    }

    fn write_remote_write(&self, w: &mut impl MetricWriter) {
        let targets = self.remote_write();
        if targets.is_empty() {
            return;
        }
        let url = |t: &TargetStatsSnapshot| vec![("url".to_string(), t.url.clone())];
        type Field = fn(&TargetStatsSnapshot) -> u64;
        let counters: [(&str, Field, &str); 8] = [
            ("samples_sent", |t| t.samples_sent, "Float samples delivered to the target"),
            ("histograms_sent", |t| t.histograms_sent, "Native histogram samples delivered to the target"),
            ("requests_sent", |t| t.requests_sent, "Remote-write requests delivered"),
            ("bytes_sent", |t| t.bytes_sent, "Compressed bytes delivered"),
            ("requests_failed", |t| t.requests_failed, "Attempts that failed (connection error, timeout, non-2xx)"),
            ("retries", |t| t.retries, "Attempts that were retries"),
            ("queue_corrupt_files", |t| t.queue_corrupt_files, "Queue files (data_dir) found torn or corrupt at start, skipped"),
            (
                "queue_disk_errors",
                |t| t.queue_disk_errors,
                "Failed queue file operations (data_dir); an unwritten interval is kept in memory only",
            ),
        ];
        for (what, field, help) in counters {
            let name = format!("shoal_collector_remote_write_{what}_total");
            w.family(&name, "counter", help);
            for t in &targets {
                w.sample(&name, &url(t), None, &field(t).to_string());
            }
        }
        type DroppedField = fn(&crate::remote_write::sender::Dropped) -> u64;
        let dropped: [(&str, DroppedField, &str); 2] = [
            ("samples", |d| d.samples, "Samples (float + native histogram) dropped, by reason"),
            ("batches", |d| d.batches, "Intervals (queue_full, encode) or requests (status_NNN) dropped, by reason"),
        ];
        for (what, field, help) in dropped {
            let name = format!("shoal_collector_remote_write_dropped_{what}_total");
            w.family(&name, "counter", help);
            for t in &targets {
                let mut reasons = t.dropped.clone();
                reasons.entry(DropReason::QueueFull).or_default();
                reasons.entry(DropReason::Encode).or_default();
                for (reason, d) in reasons {
                    let mut labels = url(t);
                    labels.push(("reason".into(), reason.label()));
                    w.sample(&name, &labels, None, &field(&d).to_string());
                }
            }
        }
        w.family("shoal_collector_remote_write_queue_length", "gauge", "Intervals queued for the target (the one being sent included)");
        for t in &targets {
            w.sample("shoal_collector_remote_write_queue_length", &url(t), None, &t.queue_len.to_string());
        }
        let name = "shoal_collector_remote_write_last_success_timestamp_seconds";
        w.family(name, "gauge", "Unix time of the last delivered request (0: none yet)");
        for t in &targets {
            w.sample(name, &url(t), None, &format_value(t.last_success_unix_ms.unwrap_or(0) as f64 / 1e3));
        }
    }

    /// Writes the self-metrics.
    pub fn write(&self, w: &mut impl MetricWriter, series: usize, instances: usize) {
        let counters: [(&str, &AtomicU64, &str); 14] = [
            (
                "shoal_collector_series_expired_total",
                &self.series_expired,
                "Rollup series removed after series_expiry_secs without an update",
            ),
            ("shoal_collector_wal_write_errors_total", &self.wal_write_errors, "WAL appends that failed (I/O error, disk full)"),
            ("shoal_collector_wal_corrupt_records_total", &self.wal_corrupt_records, "WAL records cut off at start (torn or corrupt)"),
            ("shoal_collector_checkpoints_total", &self.checkpoints, "Checkpoints written"),
            (
                "shoal_collector_batches_unavailable_total",
                &self.batches_unavailable,
                "Batches answered UNAVAILABLE while degraded (not merged; the SDK resends)",
            ),
            ("shoal_collector_batches_received_total", &self.batches_received, "Batches received, whatever their outcome"),
            ("shoal_collector_batches_merged_total", &self.batches_merged, "Batches merged into the rollups"),
            (
                "shoal_collector_batches_duplicate_total",
                &self.batches_duplicate,
                "Batches acknowledged but not merged: already merged before",
            ),
            (
                "shoal_collector_batches_unknown_refs_total",
                &self.batches_unknown_refs,
                "Batches not merged because they referred to unknown series; the SDK resends them",
            ),
            ("shoal_collector_series_updates_merged_total", &self.series_updates_merged, "Series-updates merged"),
            ("shoal_collector_series_updates_rejected_total", &self.series_updates_rejected, "Series-updates refused, every reason"),
            ("shoal_collector_bytes_received_total", &self.bytes_received, "Encoded bytes of the batches received"),
            ("shoal_collector_config_reloads_total", &self.config_reloads, "Configuration reloads applied (SIGHUP)"),
            (
                "shoal_collector_config_reload_errors_total",
                &self.config_reload_errors,
                "Configuration reloads refused; the old settings stay",
            ),
        ];
        for (name, value, help) in counters {
            w.family(name, "counter", help);
            w.sample(name, &[], None, &value.load(Relaxed).to_string());
        }
        let flows: [(&str, &Flow, &str); 4] = [
            ("received", &self.received, "received in batches that reached the merge step"),
            ("merged", &self.merged, "merged into the rollups"),
            ("duplicate", &self.duplicate, "in duplicate batches, not merged again"),
            ("unknown_refs", &self.unknown_refs, "in batches with unknown refs, not merged (resent by the SDK)"),
        ];
        for (what, flow, help) in flows {
            let name = format!("shoal_collector_values_{what}_total");
            w.family(&name, "counter", &format!("Values (counter increments summed, histogram samples) {help}"));
            w.sample(&name, &[], None, &flow.values().to_string());
        }
        w.family("shoal_collector_merge_seconds_total", "counter", "Time spent validating and merging batches");
        w.sample("shoal_collector_merge_seconds_total", &[], None, &format_value(self.merge_nanos.load(Relaxed) as f64 / 1e9));
        w.family("shoal_collector_batches_rejected_total", "counter", "Batches refused as a whole, by reason; nothing of them was merged");
        for why in Rejection::ALL {
            w.sample(
                "shoal_collector_batches_rejected_total",
                &[("reason".into(), why.as_str().into())],
                None,
                &self.rejected(why).to_string(),
            );
        }
        w.family("shoal_collector_series_rejected_total", "counter", "Series-updates refused, by reason (whole batches included)");
        for why in Rejection::ALL {
            w.sample(
                "shoal_collector_series_rejected_total",
                &[("reason".into(), why.as_str().into())],
                None,
                &self.rejected_flow(why).series_updates().to_string(),
            );
        }
        w.family("shoal_collector_values_rejected_total", "counter", "Values refused, by reason (whole batches included)");
        for why in Rejection::ALL {
            w.sample(
                "shoal_collector_values_rejected_total",
                &[("reason".into(), why.as_str().into())],
                None,
                &self.rejected_flow(why).values().to_string(),
            );
        }
        w.family("shoal_collector_ingest_queue_depth", "gauge", "Batches waiting for or in the merge step");
        w.sample("shoal_collector_ingest_queue_depth", &[], None, &self.ingest_queue_depth.load(Relaxed).to_string());
        w.family("shoal_collector_ingest_queue_peak", "gauge", "Highest ingest queue depth seen");
        w.sample("shoal_collector_ingest_queue_peak", &[], None, &self.ingest_queue_peak.load(Relaxed).to_string());
        w.family("shoal_collector_durable_degraded", "gauge", "1 while a failed WAL write is not yet covered by a checkpoint");
        w.sample("shoal_collector_durable_degraded", &[], None, &self.durable_degraded.load(Relaxed).to_string());
        w.family("shoal_collector_series", "gauge", "Rollup series held");
        w.sample("shoal_collector_series", &[], None, &series.to_string());
        w.family("shoal_collector_instances", "gauge", "Instances known (seen within the expiry)");
        w.sample("shoal_collector_instances", &[], None, &instances.to_string());
        self.write_remote_write(w);
        self.write_forwarder(w);
        self.statsd.write(w);
        self.security.write(w);
    }
}

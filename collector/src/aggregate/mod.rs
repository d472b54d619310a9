//! The merge engine: batches from every instance into cluster rollups.
//!
//! A rollup series is the SDK series (name + labels) plus the instance labels
//! of the batch, without the instance id, so every instance with the same
//! labels adds into it. Counters keep an exact `u64` total and per-interval
//! sums; histograms keep per-interval merged sketches (their union over a
//! window gives cluster quantiles, never an average of instance quantiles);
//! gauges keep the last value per instance and roll up at read time.
//!
//! Stages of [`Aggregator::apply`]: [`crate::validate`] (a [`ValidBatch`] or
//! a refusal of the whole batch) -> dedup (an instance's batch at or below
//! its last merged sequence is acknowledged and ignored) -> binding the
//! definitions ([`instances`]) -> [`admission`] of every update (blocklist,
//! kinds, series limits) -> commit into the [`rollup`] series. Nothing is
//! changed before the commit, so a refused batch changes nothing.
//!
//! Protecting the collector from its clients: a batch merges with some of
//! its series rejected one by one (the rest is not lost): invalid names,
//! labels, values and sketches, series past the instance's, the metric
//! name's or the collector's series limit, blocked names, and kind
//! conflicts. Each is counted per reason (in series-updates and values, see
//! [`crate::stats`]) and reported back in the response. Every structure
//! grows only with accepted series, which the limits bound, plus refused
//! refs, bounded by [`admission::Limits::refused_refs`].

pub mod admission;
pub mod browse;
pub mod export;
pub mod forward;
pub mod instances;
pub mod rollup;
pub mod snapshot;

pub use self::admission::Limits;
pub use self::browse::{InstanceView, SeriesFilter, SeriesPage};
pub use self::rollup::{merge_bounded, Point, MAX_ROLLUP_SPAN};
pub use shoal_core::Kind;

use self::admission::{Admission, Holdings};
use self::instances::{Instance, RefEntry};
use self::rollup::{series_entry, Series};
use crate::config::Config;
use crate::rejection::{Refused, Rejection};
use crate::stats::Stats;
use crate::validate::{self, Description, ValidBatch, Value};
use shoal_core::{Blocklist, SeriesKey, Sketch};
use shoal_proto as pb;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use crate::validate::request_values;

/// A series of a merged batch that was not merged.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesRejected {
    /// Its ref in the batch.
    pub r#ref: u32,
    /// Why.
    pub reason: Rejection,
    /// Detail.
    pub message: String,
}

/// What happened to a batch.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Merged now, except these series.
    Merged(Vec<SeriesRejected>),
    /// Merged before: acknowledged, not merged again.
    Duplicate,
    /// Refers to series this collector was never told about: nothing merged.
    UnknownRefs(Vec<u32>),
}

/// All rollups of one collector.
pub struct Aggregator {
    config: Config,
    epoch: u64,
    instances: HashMap<String, Instance>,
    series: HashMap<Arc<SeriesKey>, Series>,
    kinds_by_name: HashMap<String, Kind>,
    series_per_name: HashMap<String, usize>,
    /// HELP and unit per metric name, only for names with rollup series
    /// (bounded like them), the latest one sent.
    descriptions: HashMap<String, Description>,
    blocklist: Blocklist,
    stats: Arc<Stats>,
    /// What is forwarded upstream, with `upstream` set.
    forward: Option<forward::Forward>,
}

/// Descriptions of names without series kept at most (see `maintain`).
const DESCRIPTIONS_SLACK: usize = 10_000;

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs()
}

/// A series with its interval points `(interval index, point)`.
pub type SeriesPoints = (Arc<SeriesKey>, Kind, Vec<(u64, Point)>);

/// A rollup series' point-in-time view, for exposition and queries.
#[derive(Clone, Debug)]
pub struct SeriesView {
    /// The rollup key.
    pub key: Arc<SeriesKey>,
    /// Its kind.
    pub kind: Kind,
    /// Counter: cumulative total. Histogram: cumulative sample count.
    pub total: u64,
    /// Histogram: cumulative sum.
    pub sum: f64,
    /// Gauge: rolled-up value over live instances.
    pub gauge: Option<f64>,
    /// Histogram: merged sketch over the summary window.
    pub window: Option<Sketch>,
    /// Histogram: every sample since the series began, merged (filled by
    /// [`Aggregator::export`] only).
    pub cumulative: Option<Sketch>,
}

/// Per-reason tallies of the series rejected in one batch.
#[derive(Default)]
struct RejectedTally {
    list: Vec<SeriesRejected>,
    updates: [u64; Rejection::ALL.len()],
    values: [u64; Rejection::ALL.len()],
}

impl RejectedTally {
    fn add(&mut self, r#ref: u32, refused: Refused, values: u64) {
        let i = refused.reason as usize;
        self.updates[i] += 1;
        self.values[i] = self.values[i].wrapping_add(values);
        self.list.push(SeriesRejected { r#ref, reason: refused.reason, message: refused.message });
    }
}

impl Aggregator {
    /// An empty aggregator with a fresh random epoch.
    pub fn new(config: Config, stats: Arc<Stats>) -> Aggregator {
        // `Config::validate` compiled it already; a bad list blocks nothing.
        let blocklist = config.compiled_blocklist().unwrap_or_default();
        let forward = (!config.upstream.is_empty()).then(forward::Forward::default);
        Aggregator {
            series_per_name: HashMap::new(),
            blocklist,
            epoch: rand::random(),
            instances: HashMap::new(),
            series: HashMap::new(),
            kinds_by_name: HashMap::new(),
            descriptions: HashMap::new(),
            stats,
            forward,
            config,
        }
    }

    /// Random per collector process; SDKs resend definitions when it changes.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The blocklist in force.
    pub fn blocklist(&self) -> &Blocklist {
        &self.blocklist
    }

    /// Applies the reloadable settings of `new` (limits, blocklist, gauge
    /// rules, quantiles, retry hint) and returns the names of the changed
    /// settings that need a restart. A bad `new` changes nothing.
    pub fn reload(&mut self, new: &Config) -> Result<Vec<&'static str>, String> {
        new.validate()?;
        let (config, ignored) = self.config.reloaded(new);
        config.validate()?;
        self.blocklist = config.compiled_blocklist()?;
        self.config = config;
        Ok(ignored)
    }

    /// HELP text and unit of a metric name, when its SDKs described it.
    pub fn description(&self, name: &str) -> Option<&Description> {
        self.descriptions.get(name)
    }

    /// Number of rollup series.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Number of instances known.
    pub fn instance_count(&self) -> usize {
        self.instances.len()
    }

    fn interval_of(&self, end_unix_nanos: u64, now: u64) -> u64 {
        let claimed = end_unix_nanos / 1_000_000_000;
        let oldest = now.saturating_sub(self.config.retention_secs) + self.config.interval_secs;
        // Trust the SDK's clock within the retention window; otherwise use ours.
        let t = if claimed >= oldest && claimed <= now + self.config.interval_secs { claimed } else { now };
        t / self.config.interval_secs
    }

    /// Validates and merges one batch at time `now` (Unix seconds), and
    /// counts what happened to it in the self-metrics.
    pub fn apply(&mut self, req: &pb::FlushRequest, now: u64) -> Result<Outcome, Refused> {
        let updates = (req.counters.len() + req.gauges.len() + req.histograms.len()) as u64;
        let values = request_values(req);
        let stats = self.stats.clone();
        stats.received.add(updates, values);
        let outcome = validate::batch(req).and_then(|batch| self.apply_valid(batch, now));
        match &outcome {
            Ok(Outcome::Merged(_)) => {} // counted while merging
            Ok(Outcome::Duplicate) => stats.duplicate.add(updates, values),
            Ok(Outcome::UnknownRefs(_)) => {
                stats.batches_unknown_refs.fetch_add(1, Relaxed);
                stats.unknown_refs.add(updates, values);
            }
            Err(refused) => stats.reject_batch(refused.reason, updates, values),
        }
        outcome
    }

    fn apply_valid(&mut self, batch: ValidBatch, now: u64) -> Result<Outcome, Refused> {
        if let Some(instance) = self.instances.get_mut(&batch.instance_id) {
            instance.last_seen_secs = now;
            if batch.sequence <= instance.last_sequence {
                return Ok(Outcome::Duplicate);
            }
        }
        let limits = Limits::of(&self.config);
        // Bind the definitions, within the instance's limits; nothing
        // changes before the commit below.
        let known = self.instances.get(&batch.instance_id);
        let mut binding = instances::Binding::new(known, &limits);
        for d in batch.definitions {
            binding.bind(d, &batch.instance_labels)?;
        }
        // Resolve and admit every update; reject per series what breaks a rule.
        let mut unknown = Vec::new();
        let mut rejected = RejectedTally::default();
        let mut admission = Admission::default();
        let mut accepted: Vec<(Arc<SeriesKey>, Value)> = Vec::with_capacity(batch.updates.len());
        {
            let series = &self.series;
            let has_series = |k: &SeriesKey| series.contains_key(k);
            let held = Holdings {
                blocklist: &self.blocklist,
                kinds_by_name: &self.kinds_by_name,
                series_per_name: &self.series_per_name,
                series: &has_series,
                series_count: self.series.len(),
            };
            for update in batch.updates {
                let r = update.r#ref;
                let admitted = match binding.resolve(r) {
                    None => {
                        unknown.push(r);
                        continue;
                    }
                    Some(RefEntry::Refused(reason)) => Err(binding.refusal(r, reason)),
                    Some(RefEntry::Series(key)) => {
                        update.value.and_then(|value| admission.admit(&held, &limits, &key, value.kind()).map(|()| (key, value)))
                    }
                };
                match admitted {
                    Ok(ok) => accepted.push(ok),
                    Err(refused) => rejected.add(r, refused, update.values),
                }
            }
        }
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            return Ok(Outcome::UnknownRefs(unknown));
        }
        // Definitions refused in this batch are reported even without an update.
        for (r, refused) in binding.take_refusals() {
            if !rejected.list.iter().any(|x| x.r#ref == r) {
                rejected.list.push(SeriesRejected { r#ref: r, reason: refused.reason, message: refused.message });
            }
        }

        // Commit.
        let interval = self.interval_of(batch.interval_end_unix_nanos, now);
        let bound = binding.finish();
        let instance = self.instances.entry(batch.instance_id.clone()).or_insert_with(|| Instance::new(now));
        bound.commit(instance, batch.sequence, now, batch.instance_labels);
        for (name, kind) in admission.kinds {
            self.kinds_by_name.entry(name).or_insert(kind);
        }
        for (name, n) in admission.new_per_name {
            *self.series_per_name.entry(name).or_insert(0) += n;
        }
        for (name, d) in batch.descriptions {
            if self.kinds_by_name.contains_key(&name) {
                self.descriptions.insert(name, d);
            }
        }
        let (mut merged_updates, mut merged_values) = (0u64, 0u64);
        for (key, value) in accepted {
            merged_updates += 1;
            match value {
                Value::Counter(delta) => {
                    if let Some(f) = &mut self.forward {
                        f.add_counter(&key, delta);
                    }
                    series_entry(&mut self.series, key, Kind::Counter, now).add_counter(interval, delta);
                    merged_values = merged_values.wrapping_add(delta);
                }
                Value::Histogram(sketch) => {
                    merged_values = merged_values.wrapping_add(sketch.count());
                    if let Some(f) = &mut self.forward {
                        f.add_histogram(&key, &sketch);
                    }
                    series_entry(&mut self.series, key, Kind::Histogram, now).add_histogram(interval, sketch);
                }
                Value::Gauge(v) => {
                    series_entry(&mut self.series, key.clone(), Kind::Gauge, now);
                    instance.gauges.insert(key, v);
                }
            }
        }
        self.stats.series_updates_merged.fetch_add(merged_updates, Relaxed);
        self.stats.merged.add(merged_updates, merged_values);
        for why in Rejection::ALL {
            let i = why as usize;
            if rejected.updates[i] > 0 {
                self.stats.reject_series(why, rejected.updates[i], rejected.values[i]);
            }
        }
        Ok(Outcome::Merged(rejected.list))
    }

    /// Drops points older than the retention, instances silent past
    /// expiry, and series not updated for `series_expiry_secs` (refs to an
    /// expired series stay valid: the next update creates it again). A
    /// function of the state and `now` only, so that a replay of the WAL,
    /// which calls it with the logged `now`, does what it did live.
    pub fn maintain(&mut self, now: u64) {
        let oldest_interval = now.saturating_sub(self.config.retention_secs) / self.config.interval_secs;
        // Every gauge's rolled-up value as the last interval closed (the
        // maintenance tick runs just after each boundary): the gauge's point
        // for that interval. No live instance, no point: a gap, never a zero.
        let closed = (now / self.config.interval_secs).saturating_sub(1);
        let mut gauge_points = Vec::new();
        for (key, values) in self.gauge_values(now) {
            gauge_points.push((key.clone(), self.config.gauge_rule(key.name()).apply(&values)));
        }
        for (key, value) in gauge_points {
            if let Some(s) = self.series.get_mut(&key) {
                s.set_gauge(closed, value);
            }
        }
        for s in self.series.values_mut() {
            s.trim(oldest_interval);
        }
        let expiry = self.config.instance_expiry_secs;
        self.instances.retain(|_, i| now.saturating_sub(i.last_seen_secs) < expiry);
        let series_expiry = self.config.series_expiry_secs;
        if series_expiry > 0 {
            let before = self.series.len();
            let (per_name, kinds) = (&mut self.series_per_name, &mut self.kinds_by_name);
            self.series.retain(|_, s| {
                if now.saturating_sub(s.last_update) < series_expiry {
                    return true;
                }
                let name = s.key.name();
                if let Some(n) = per_name.get_mut(name) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_name.remove(name);
                        kinds.remove(name);
                    }
                }
                false
            });
            let expired = before - self.series.len();
            if expired > 0 {
                self.stats.series_expired.fetch_add(expired as u64, Relaxed);
                // A gauge value of an expired series must not come back if
                // the series is created again.
                let series = &self.series;
                for i in self.instances.values_mut() {
                    i.gauges.retain(|k, _| series.contains_key(k));
                }
                // A description outlives its name's series: an SDK brings
                // an expired series back by ref, without its definition
                // (and HELP) again. Bounded: past the slack, only names
                // with series keep theirs.
                if self.descriptions.len() > self.series_per_name.len() + DESCRIPTIONS_SLACK {
                    let per_name = &self.series_per_name;
                    self.descriptions.retain(|name, _| per_name.contains_key(name));
                }
            }
        }
    }

    /// Durable mode: the WAL ticket of the instance's last merged batch (0:
    /// unknown or restored, hence durable).
    pub fn instance_ticket(&self, instance_id: &str) -> u64 {
        self.instances.get(instance_id).map_or(0, |i| i.ticket)
    }

    /// Durable mode: records the ticket of the batch just merged.
    pub fn set_instance_ticket(&mut self, instance_id: &str, ticket: u64) {
        if let Some(i) = self.instances.get_mut(instance_id) {
            i.ticket = ticket;
        }
    }

    /// Counts into `stats` from now on (a replay counts into scratch stats).
    pub fn set_stats(&mut self, stats: Arc<Stats>) {
        self.stats = stats;
    }

    /// Every rollup series as of `now`, sorted by canonical key.
    pub fn views(&self, now: u64) -> Vec<SeriesView> {
        self.views_with(now, false)
    }

    /// What a closed interval pushes to remote-write targets, as of `now`:
    /// the views with their cumulative sketches and the settings needed to
    /// turn them into an [`crate::remote_write::Interval`] off the lock
    /// ([`export::Export::into_interval`]).
    pub fn export(&self, now: u64) -> export::Export {
        let views = self.views_with(now, true);
        let mut descriptions = HashMap::new();
        for v in &views {
            if let Some(d) = self.descriptions.get(v.key.name()) {
                descriptions.entry(v.key.name().to_string()).or_insert_with(|| d.clone());
            }
        }
        let external_labels = self.config.external_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        export::Export { views, quantiles: self.config.quantiles.clone(), descriptions, external_labels }
    }

    /// Every gauge's value per live instance.
    fn gauge_values(&self, now: u64) -> HashMap<&Arc<SeriesKey>, Vec<f64>> {
        let stale_after = self.config.gauge_stale_intervals * self.config.interval_secs;
        let mut gauge_values: HashMap<&Arc<SeriesKey>, Vec<f64>> = HashMap::new();
        for instance in self.instances.values() {
            if now.saturating_sub(instance.last_seen_secs) > stale_after {
                continue;
            }
            for (key, v) in &instance.gauges {
                gauge_values.entry(key).or_default().push(*v);
            }
        }
        gauge_values
    }

    /// Forwarding (`upstream`): a take of what was merged since the last
    /// one, with every gauge's current rolled-up value, under a new token
    /// (see [`forward`]); `None` without an upstream. With `keep` (durable)
    /// the deltas stay in flight until [`Aggregator::forward_taken`]; log
    /// the take under the same lock.
    pub fn forward_take(&mut self, now: u64, keep: bool) -> Option<(u64, shoal_core::Deltas)> {
        let (token, mut deltas) = self.forward.as_mut()?.take(keep);
        let gauge_values = self.gauge_values(now);
        for (key, values) in gauge_values {
            if self.series.get(key).is_some_and(|s| s.kind == Kind::Gauge) {
                let value = self.config.gauge_rule(key.name()).apply(&values);
                deltas.gauges.push(shoal_core::GaugeValue { key: key.clone(), value });
            }
        }
        deltas.gauges.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        Some((token, deltas))
    }

    /// A take replayed from the WAL.
    pub fn forward_replay_take(&mut self, token: u64) {
        if let Some(f) = &mut self.forward {
            f.replay_take(token);
        }
    }

    /// A take the forwarder never got (its log record did not become durable).
    pub fn forward_untake(&mut self, token: u64) {
        if let Some(f) = &mut self.forward {
            f.untake(token);
        }
    }

    /// The forwarder holds the takes up to `token`.
    pub fn forward_taken(&mut self, token: u64) {
        if let Some(f) = &mut self.forward {
            f.taken(token);
        }
    }

    /// A restarted forwarder holds the takes up to `token`; later ones are
    /// taken again.
    pub fn forward_resume(&mut self, token: u64) {
        if let Some(f) = &mut self.forward {
            f.resume(token);
        }
    }

    /// Values merged but not yet handed to the forwarder safely.
    pub fn forward_values(&self) -> u64 {
        self.forward.as_ref().map_or(0, forward::Forward::values)
    }

    fn views_with(&self, now: u64, cumulative: bool) -> Vec<SeriesView> {
        let window_start = now.saturating_sub(self.config.summary_window_secs) / self.config.interval_secs;
        let gauge_values = self.gauge_values(now);
        let mut views: Vec<SeriesView> = self
            .series
            .values()
            .filter_map(|s| {
                let gauge = match s.kind {
                    Kind::Gauge => Some(self.config.gauge_rule(s.key.name()).apply(gauge_values.get(&s.key)?)),
                    _ => None,
                };
                let window = (s.kind == Kind::Histogram).then(|| {
                    let mut merged: Option<Sketch> = None;
                    for (_, p) in s.points.iter().filter(|(i, _)| *i >= window_start) {
                        if let Point::Histogram(p) = p {
                            match &mut merged {
                                Some(m) => m.merge(p),
                                None => merged = Some(p.clone()),
                            }
                        }
                    }
                    merged.unwrap_or_default()
                });
                let cumulative = if cumulative { s.cumulative.clone() } else { None };
                Some(SeriesView { key: s.key.clone(), kind: s.kind, total: s.total, sum: s.sum, gauge, window, cumulative })
            })
            .collect();
        views.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agg(tweak: impl FnOnce(&mut Config)) -> Aggregator {
        let mut config = Config::default();
        tweak(&mut config);
        config.validate().unwrap();
        Aggregator::new(config, Arc::new(Stats::default()))
    }

    fn def(r: u32, name: &str, labels: &[(&str, &str)]) -> pb::SeriesDefinition {
        pb::SeriesDefinition {
            r#ref: r,
            name: name.into(),
            labels: labels.iter().map(|(k, v)| pb::Label { key: k.to_string(), value: v.to_string() }).collect(),
            ..Default::default()
        }
    }

    fn batch(instance: &str, sequence: u64, definitions: Vec<pb::SeriesDefinition>, counters: &[(u32, u64)]) -> pb::FlushRequest {
        pb::FlushRequest {
            instance_id: instance.into(),
            sequence,
            definitions,
            counters: counters.iter().map(|&(r, delta)| pb::CounterDelta { r#ref: r, delta }).collect(),
            ..Default::default()
        }
    }

    fn rejected(outcome: Outcome) -> Vec<(u32, Rejection)> {
        match outcome {
            Outcome::Merged(r) => r.into_iter().map(|r| (r.r#ref, r.reason)).collect(),
            other => panic!("not merged: {other:?}"),
        }
    }

    #[test]
    fn gauge_points_are_recorded_as_intervals_close_with_gaps_and_survive_a_checkpoint() {
        let mut a = agg(|c| c.interval_secs = 10);
        let gauge = |instance: &str, sequence: u64, defs: Vec<pb::SeriesDefinition>, value: f64| pb::FlushRequest {
            instance_id: instance.into(),
            sequence,
            definitions: defs,
            gauges: vec![pb::GaugeValue { r#ref: 1, value }],
            ..Default::default()
        };
        let d = def(1, "depth", &[]);
        a.apply(&gauge("x", 1, vec![d.clone()], 2.0), 1000).unwrap();
        a.apply(&gauge("y", 1, vec![d], 3.0), 1000).unwrap();
        // Closes interval 100: sum over x and y.
        a.maintain(1010);
        a.apply(&gauge("x", 2, vec![], 5.0), 1015).unwrap();
        // Closes interval 101.
        a.maintain(1020);
        // Both silent past the staleness (3 intervals): no point, a gap.
        a.maintain(1080);
        let points = |a: &Aggregator| -> Vec<(u64, f64)> {
            let depth = SeriesFilter { name: Some("depth"), ..Default::default() };
            a.points_matching(&depth, 0..=u64::MAX, 1080, 1).1[0]
                .2
                .iter()
                .map(|(i, p)| match p {
                    Point::Gauge(v) => (*i, *v),
                    other => panic!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(points(&a), vec![(100, 5.0), (101, 8.0)]);
        let restored = Aggregator::restore(a.config().clone(), Arc::new(Stats::default()), a.snapshot()).unwrap();
        assert_eq!(points(&restored), vec![(100, 5.0), (101, 8.0)]);
    }

    #[test]
    fn a_refused_ref_defined_again_as_a_valid_series_is_accepted() {
        let mut a = agg(|_| {});
        let first = rejected(a.apply(&batch("edge", 1, vec![def(1, "bad name", &[])], &[(1, 5)]), 1).unwrap());
        assert_eq!(first.len(), 1, "{first:?}");
        // A restarted forwarder (same instance id) numbers its refs anew.
        let second = rejected(a.apply(&batch("edge", 2, vec![def(1, "good_total", &[])], &[(1, 7)]), 1).unwrap());
        assert!(second.is_empty(), "{second:?}");
        assert_eq!(a.views(1).iter().find(|v| v.key.name() == "good_total").map(|v| v.total), Some(7));
    }

    /// received = merged + duplicate + unknown_refs + Σ rejected, in values and series-updates.
    fn assert_conserved(stats: &Stats) {
        let rejected_values: u64 = Rejection::ALL.iter().map(|&r| stats.rejected_flow(r).values()).sum();
        let rejected_updates: u64 = Rejection::ALL.iter().map(|&r| stats.rejected_flow(r).series_updates()).sum();
        assert_eq!(
            stats.received.values(),
            stats.merged.values() + stats.duplicate.values() + stats.unknown_refs.values() + rejected_values
        );
        assert_eq!(
            stats.received.series_updates(),
            stats.merged.series_updates() + stats.duplicate.series_updates() + stats.unknown_refs.series_updates() + rejected_updates
        );
    }

    #[test]
    fn series_past_the_instance_limit_are_rejected_alone_and_stay_rejected() {
        let mut a = agg(|c| c.max_series_per_instance = 2);
        let defs = vec![def(1, "a", &[]), def(2, "b", &[]), def(3, "c", &[])];
        let out = a.apply(&batch("i", 1, defs, &[(1, 10), (2, 20), (3, 30)]), unix_secs()).unwrap();
        assert_eq!(rejected(out), vec![(3, Rejection::SeriesLimitInstance)]);
        // By ref only: still rejected, not "unknown" (the SDK would resend definitions forever).
        let out = a.apply(&batch("i", 2, vec![], &[(1, 1), (3, 5)]), unix_secs()).unwrap();
        assert_eq!(rejected(out), vec![(3, Rejection::SeriesLimitInstance)]);
        // Another instance has its own budget.
        let out = a.apply(&batch("j", 1, vec![def(1, "c", &[])], &[(1, 7)]), unix_secs()).unwrap();
        assert!(rejected(out).is_empty());
        assert_eq!(a.stats.merged.values(), 10 + 20 + 1 + 7);
        assert_eq!(a.stats.rejected_flow(Rejection::SeriesLimitInstance).values(), 35);
        assert_eq!(a.stats.rejected_flow(Rejection::SeriesLimitInstance).series_updates(), 2);
        assert_conserved(&a.stats);
    }

    #[test]
    fn an_instance_that_keeps_defining_past_its_limit_is_refused_as_a_whole() {
        let mut a = agg(|c| c.max_series_per_instance = 2);
        // Two accepted, then refused ones up to the bound on refused refs...
        let n = 2 + 2 * admission::REFUSED_REFS_FACTOR as u32;
        let defs: Vec<_> = (0..n).map(|r| def(r, &format!("m{r}"), &[])).collect();
        let counters: Vec<_> = (0..n).map(|r| (r, 1)).collect();
        let out = a.apply(&batch("j", 1, defs, &counters), unix_secs()).unwrap();
        assert_eq!(rejected(out).len(), n as usize - 2, "refused one by one");
        // ...and one more refuses the batch.
        let defs: Vec<_> = (0..=n).map(|r| def(r, &format!("m{r}"), &[])).collect();
        let counters: Vec<_> = (0..=n).map(|r| (r, 1)).collect();
        let refused = a.apply(&batch("i", 1, defs, &counters), unix_secs()).unwrap_err();
        assert_eq!(refused.reason, Rejection::InstanceLimit);
        assert_eq!(a.series_count(), 2, "a refused batch changes nothing (instance j's two remain)");
        assert_eq!(a.stats.rejected(Rejection::InstanceLimit), 1);
        assert_conserved(&a.stats);
    }

    #[test]
    fn metric_and_total_limits_reject_new_series_but_keep_existing_ones() {
        let mut a = agg(|c| {
            c.max_series_per_metric = 2;
            c.max_series_total = 3;
        });
        let defs = vec![def(1, "m", &[("k", "1")]), def(2, "m", &[("k", "2")]), def(3, "m", &[("k", "3")]), def(4, "n", &[])];
        let out = a.apply(&batch("i", 1, defs, &[(1, 1), (2, 1), (3, 1), (4, 1)]), unix_secs()).unwrap();
        assert_eq!(rejected(out), vec![(3, Rejection::SeriesLimitMetric)]);
        assert_eq!(a.series_count(), 3);
        let out = a.apply(&batch("i", 2, vec![def(5, "o", &[])], &[(5, 4), (1, 2)]), unix_secs()).unwrap();
        assert_eq!(rejected(out), vec![(5, Rejection::SeriesLimitTotal)]);
        // Another instance adding to an existing rollup series is fine: it creates nothing.
        let out = a.apply(&batch("j", 1, vec![def(9, "m", &[("k", "1")])], &[(9, 5)]), unix_secs()).unwrap();
        assert!(rejected(out).is_empty());
        let total = a.views(unix_secs()).into_iter().find(|v| v.key.canonical() == r#"m{k="1"}"#).unwrap().total;
        assert_eq!(total, 1 + 2 + 5);
        assert_eq!(a.stats.rejected_flow(Rejection::SeriesLimitTotal).values(), 4);
        assert_conserved(&a.stats);
    }

    #[test]
    fn the_blocklist_rejects_series_until_it_is_reloaded_without_them() {
        let mut a = agg(|c| c.blocklist = vec!["debug_*".into()]);
        let defs = vec![def(1, "debug_x", &[]), def(2, "keep", &[])];
        let out = a.apply(&batch("i", 1, defs, &[(1, 3), (2, 4)]), unix_secs()).unwrap();
        assert_eq!(rejected(out), vec![(1, Rejection::Blocked)]);
        let config = Config { blocklist: vec![], ..a.config().clone() };
        assert!(a.reload(&config).unwrap().is_empty());
        assert!(a.blocklist().is_empty());
        let out = a.apply(&batch("i", 2, vec![], &[(1, 5)]), unix_secs()).unwrap();
        assert!(rejected(out).is_empty(), "unblocked: the ref is still known");
        let bad = Config { blocklist: vec!["[".into()], ..a.config().clone() };
        assert!(a.reload(&bad).is_err());
        assert_eq!(a.stats.rejected_flow(Rejection::Blocked).values(), 3);
        assert_eq!(a.stats.merged.values(), 4 + 5);
        assert_conserved(&a.stats);
    }

    #[test]
    fn a_bad_series_never_stops_its_neighbours() {
        let mut a = agg(|_| {});
        let big = "v".repeat(2000);
        let long = "n".repeat(300);
        let defs =
            vec![def(1, "healthy_total", &[]), def(2, "x", &[("big", &big)]), def(3, &long, &[]), def(4, "healthy_total", &[("k", "g")])];
        let mut b = batch("i", 1, defs, &[(1, 10), (2, 5), (3, 6)]);
        b.gauges = vec![pb::GaugeValue { r#ref: 4, value: 1.0 }];
        let out = rejected(a.apply(&b, unix_secs()).unwrap());
        assert_eq!(
            out,
            vec![(2, Rejection::InvalidSeries), (3, Rejection::InvalidSeries), (4, Rejection::KindConflict)],
            "each bad series refused alone"
        );
        // The next batch, by ref only: the healthy counter still merges, the bad ones stay refused.
        let out = rejected(a.apply(&batch("i", 2, vec![], &[(1, 1), (2, 2)]), unix_secs()).unwrap());
        assert_eq!(out, vec![(2, Rejection::InvalidSeries)]);
        let total = a.views(unix_secs()).into_iter().find(|v| v.key.canonical() == "healthy_total").unwrap().total;
        assert_eq!(total, 11);
        assert_eq!(a.stats.rejected_flow(Rejection::InvalidSeries).values(), 5 + 6 + 2);
        assert_eq!(a.stats.rejected_flow(Rejection::KindConflict).series_updates(), 1);
        assert_conserved(&a.stats);
    }

    #[test]
    fn duplicates_and_unknown_refs_are_counted_in_values() {
        let mut a = agg(|_| {});
        let b = batch("i", 1, vec![def(1, "a", &[])], &[(1, 10)]);
        a.apply(&b, unix_secs()).unwrap();
        assert_eq!(a.apply(&b, unix_secs()).unwrap(), Outcome::Duplicate);
        assert!(matches!(a.apply(&batch("i", 2, vec![], &[(7, 3)]), unix_secs()).unwrap(), Outcome::UnknownRefs(_)));
        assert_eq!((a.stats.merged.values(), a.stats.duplicate.values(), a.stats.unknown_refs.values()), (10, 10, 3));
        assert_conserved(&a.stats);
    }

    #[test]
    fn descriptions_are_kept_per_admitted_name_truncated_and_exposed() {
        let mut a = agg(|c| c.blocklist = vec!["blocked".into()]);
        let described =
            |r, name: &str, help: &str, unit: &str| pb::SeriesDefinition { help: help.into(), unit: unit.into(), ..def(r, name, &[]) };
        let long = "h".repeat(shoal_proto::limits::MAX_HELP + 10);
        let defs = vec![
            described(1, "req_total", "Requests\nserved", "requests"),
            described(2, "blocked", "x", ""),
            described(3, "lat", &long, ""),
        ];
        a.apply(&batch("i", 1, defs, &[(1, 1), (2, 1), (3, 1)]), unix_secs()).unwrap();
        let d = a.description("req_total").unwrap();
        assert_eq!((d.help.as_str(), d.unit.as_deref()), ("Requests\nserved", Some("requests")));
        assert!(a.description("blocked").is_none(), "only names with rollup series");
        assert_eq!(a.description("lat").unwrap().help.len(), shoal_proto::limits::MAX_HELP, "truncated, not refused");
        let text = crate::http::render(&a, &a.stats);
        assert!(text.contains("# HELP req_total Requests\\nserved (unit: requests)\n"), "{text}");
        let interval = a.export(unix_secs()).into_interval(1);
        let s = interval.series.iter().find(|s| s.name == "req_total").unwrap();
        assert_eq!((s.help.as_deref(), s.unit.as_deref()), (Some("Requests\nserved"), Some("requests")));
    }

    #[test]
    fn a_series_back_from_expiry_by_ref_keeps_its_help() {
        let mut a = agg(|c| c.series_expiry_secs = 60);
        let now = unix_secs();
        let defs = vec![pb::SeriesDefinition { help: "Jobs done.".into(), ..def(1, "jobs_total", &[]) }];
        a.apply(&batch("i", 1, defs, &[(1, 1)]), now - 120).unwrap();
        a.maintain(now);
        assert_eq!(a.series_count(), 0, "expired");
        // The SDK knows ref 1 is defined: it sends the update by ref only.
        a.apply(&batch("i", 2, vec![], &[(1, 1)]), now).unwrap();
        assert_eq!(a.series_count(), 1);
        let text = crate::http::render(&a, &a.stats);
        assert!(text.contains("# HELP jobs_total Jobs done.\n"), "{text}");
    }

    #[test]
    fn a_checkpoint_keeps_cumulative_sketches_and_descriptions() {
        // Native histograms and HELP must survive a restart from a checkpoint
        // (the WAL replay covers only what came after it).
        let mut a = agg(|c| c.series_expiry_secs = 0);
        let now = unix_secs();
        let mut sketch = Sketch::default();
        [1.0, 2.0, 40.0].iter().for_each(|v| sketch.record(*v).unwrap());
        let defs = vec![
            pb::SeriesDefinition { help: "Requests.".into(), ..def(1, "req_total", &[]) },
            pb::SeriesDefinition { help: "Latency.".into(), unit: "seconds".into(), ..def(2, "lat_seconds", &[]) },
        ];
        let mut b = batch("i", 1, defs, &[(1, 5)]);
        b.histograms = vec![pb::HistogramDelta { r#ref: 2, sketch: Some(shoal_proto::convert::sketch_to_proto(&sketch)) }];
        a.apply(&b, now - 3600).unwrap();
        a.maintain(now); // the first interval's points leave the retention
        let restored = Aggregator::restore(a.config.clone(), Arc::new(Stats::default()), a.snapshot()).unwrap();
        let summary = |agg: &Aggregator| -> Vec<_> {
            agg.export(now)
                .views
                .iter()
                .map(|v| (v.key.canonical().to_string(), v.total, v.cumulative.as_ref().map(shoal_proto::convert::sketch_to_proto)))
                .collect()
        };
        let before = summary(&a);
        assert!(before.iter().any(|(k, t, c)| k == "lat_seconds" && *t == 3 && c.is_some()), "{before:?}");
        assert_eq!(summary(&restored), before);
        let d = restored.description("lat_seconds").unwrap();
        assert_eq!((d.help.as_str(), d.unit.as_deref()), ("Latency.", Some("seconds")));
        assert_eq!(restored.description("req_total").unwrap().help, "Requests.");
    }

    #[test]
    fn an_export_carries_cumulative_totals_and_native_buckets() {
        use crate::remote_write::ExportValue;
        let mut a = agg(|c| c.quantiles = vec![0.5]);
        let now = unix_secs();
        let sketch = |values: &[f64]| {
            let mut s = Sketch::default();
            values.iter().for_each(|v| s.record(*v).unwrap());
            pb::HistogramDelta { r#ref: 2, sketch: Some(shoal_proto::convert::sketch_to_proto(&s)) }
        };
        let mut b = batch("i", 1, vec![def(1, "req", &[("quantile", "x")]), def(2, "lat", &[])], &[(1, 5)]);
        b.histograms = vec![sketch(&[1.0, 2.0])];
        a.apply(&b, now - 20).unwrap();
        let mut b = batch("i", 2, vec![], &[(1, 7)]);
        b.histograms = vec![sketch(&[3.0])];
        a.apply(&b, now).unwrap();
        let interval = a.export(now).into_interval(1234);
        assert_eq!(interval.end_ms, 1234);
        let req = interval.series.iter().find(|s| s.name == "req").unwrap();
        assert_eq!(req.value, ExportValue::Counter(12));
        assert_eq!(req.labels, vec![("quantile".to_string(), "x".to_string())], "only summaries rename `quantile`");
        let ExportValue::Histogram(h) = &interval.series.iter().find(|s| s.name == "lat").unwrap().value else { panic!() };
        assert_eq!((h.count, h.sum), (3, 6.0));
        let native = h.native.as_ref().unwrap();
        assert_eq!(native.positive.iter().map(|(_, n)| n).sum::<u64>(), 3, "cumulative buckets, every interval");
        assert_eq!(h.quantiles.len(), 1);
    }

    #[test]
    fn merging_sketches_at_both_ends_of_the_range_stays_bounded_and_exact_in_count() {
        let mut lo = Sketch::with_scale(8);
        lo.record(1e-300).unwrap();
        let mut hi = Sketch::with_scale(8);
        hi.record(1e300).unwrap();
        hi.record(-1e300).unwrap();
        let mut point = Sketch::with_scale(8);
        merge_bounded(&mut point, lo);
        merge_bounded(&mut point, hi);
        assert_eq!(point.count(), 3);
        assert!(point.positive().len() <= MAX_ROLLUP_SPAN, "{}", point.positive().len());
        assert!(point.scale() < 8);
        // Ordinary sketches keep their scale.
        let mut a = Sketch::with_scale(6);
        let mut b = Sketch::with_scale(6);
        for v in [0.001, 0.5, 3.0, 1e6] {
            a.record(v).unwrap();
            b.record(v * 2.0).unwrap();
        }
        let mut p = Sketch::with_scale(6);
        merge_bounded(&mut p, a);
        merge_bounded(&mut p, b);
        assert_eq!((p.scale(), p.count()), (6, 8));
    }
}

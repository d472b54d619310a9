//! The merge engine: batches from every instance into cluster rollups.
//!
//! A rollup series is the SDK series (name + labels) plus the instance labels
//! of the batch, without the instance id, so every instance with the same
//! labels adds into it. Counters keep an exact `u64` total and per-interval
//! sums; histograms keep per-interval merged sketches (their union over a
//! window gives cluster quantiles, never an average of instance quantiles);
//! gauges keep the last value per instance and roll up at read time.
//!
//! Exactly once: an instance's batches carry sequence numbers; a batch at or
//! below the last merged sequence of its instance is acknowledged and ignored.
//! A batch is validated completely before anything is merged, so a refused
//! batch changes nothing.
//!
//! Protecting the collector from its clients: a batch can be merged with
//! some of its series rejected one by one (the rest is not lost): series
//! past the instance's, the metric name's or the collector's series limit,
//! blocked names, and kind conflicts. Each is counted per reason (in
//! series-updates and values, see [`crate::stats`]) and reported back in the
//! response. Every structure grows only with accepted series, which the
//! limits bound, plus refused refs, bounded by the per-instance limit too.

use crate::config::Config;
use crate::stats::{Rejection, Stats};
use shoal::delta::Blocklist;
use shoal::{wire, SeriesKey, Sketch};
use shoal_proto as pb;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Kind of a rollup series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// u64 deltas, summed.
    Counter,
    /// f64 last values, rolled up by rule.
    Gauge,
    /// Sketches, merged.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

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

/// Why a batch was refused (nothing of it was merged).
#[derive(Debug)]
pub struct Refused {
    /// Self-metric reason.
    pub reason: Rejection,
    /// Human-readable detail for the gRPC status.
    pub message: String,
}

fn refuse(reason: Rejection, message: impl Into<String>) -> Refused {
    Refused { reason, message: message.into() }
}

/// One interval's worth of a series.
#[derive(Clone, Debug)]
pub enum Point {
    /// Counter increase in the interval.
    Counter(u64),
    /// Histogram samples of the interval.
    Histogram(Sketch),
}

struct Series {
    key: Arc<SeriesKey>,
    kind: Kind,
    total: u64,
    sum: f64,
    /// (interval index, point), ascending.
    points: VecDeque<(u64, Point)>,
}

/// What an instance's ref stands for.
#[derive(Clone)]
enum RefEntry {
    /// A series.
    Series(Arc<SeriesKey>),
    /// A definition refused for good (the instance's series limit): its
    /// updates are rejected, not answered as unknown (which would make the
    /// SDK resend definitions forever).
    Refused(Rejection),
}

struct Instance {
    labels: Vec<(String, String)>,
    last_sequence: u64,
    refs: HashMap<u32, RefEntry>,
    /// `Series` entries of `refs`.
    accepted: usize,
    gauges: HashMap<Arc<SeriesKey>, f64>,
    last_seen_secs: u64,
}

/// All rollups of one collector.
pub struct Aggregator {
    config: Config,
    epoch: u64,
    instances: HashMap<String, Instance>,
    series: HashMap<Arc<SeriesKey>, Series>,
    kinds_by_name: HashMap<String, Kind>,
    series_per_name: HashMap<String, usize>,
    blocklist: Blocklist,
    stats: Arc<Stats>,
}

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
}

impl Aggregator {
    /// An empty aggregator with a fresh random epoch.
    pub fn new(config: Config, stats: Arc<Stats>) -> Aggregator {
        // `Config::validate` compiled it already; a bad list blocks nothing.
        let blocklist = config.compiled_blocklist().unwrap_or_default();
        Aggregator {
            config,
            series_per_name: HashMap::new(),
            blocklist,
            epoch: rand::random(),
            instances: HashMap::new(),
            series: HashMap::new(),
            kinds_by_name: HashMap::new(),
            stats,
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
        let outcome = self.apply_uncounted(req, now);
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

    fn apply_uncounted(&mut self, req: &pb::FlushRequest, now: u64) -> Result<Outcome, Refused> {
        crate::validate::batch(req)?;
        if let Some(instance) = self.instances.get_mut(&req.instance_id) {
            instance.last_seen_secs = now;
            if req.sequence <= instance.last_sequence {
                return Ok(Outcome::Duplicate);
            }
        }
        let mut sketches = Vec::with_capacity(req.histograms.len());
        for h in &req.histograms {
            let sketch =
                h.sketch.as_ref().ok_or_else(|| refuse(Rejection::InvalidSketch, format!("histogram ref {} has no sketch", h.r#ref)))?;
            let sketch =
                wire::sketch_from_proto(sketch).map_err(|e| refuse(Rejection::InvalidSketch, format!("histogram ref {}: {e}", h.r#ref)))?;
            sketches.push(sketch);
        }
        let instance_labels = labels_of(&req.instance_labels);
        let limits = (self.config.max_series_per_instance, self.config.max_series_per_metric, self.config.max_series_total);
        // Bind the definitions, within the instance's series limit; nothing
        // changes before the commit below.
        let known = self.instances.get(&req.instance_id);
        let (mut accepted, mut refused) = known.map_or((0, 0), |i| (i.accepted, i.refs.len() - i.accepted));
        let mut defined: HashMap<u32, RefEntry> = HashMap::with_capacity(req.definitions.len());
        for d in &req.definitions {
            let mut labels = instance_labels.clone();
            // Series labels override instance labels of the same key.
            labels.extend(labels_of(&d.labels));
            let key = Arc::new(SeriesKey::new(d.name.clone(), labels));
            let entry = match known.and_then(|i| i.refs.get(&d.r#ref)) {
                // A ref bound before stays counted as it was.
                Some(RefEntry::Series(_)) => RefEntry::Series(key),
                Some(RefEntry::Refused(r)) => RefEntry::Refused(*r),
                None if accepted < limits.0 => {
                    accepted += 1;
                    RefEntry::Series(key)
                }
                None => {
                    refused += 1;
                    if refused > limits.0 {
                        return Err(refuse(
                            Rejection::InstanceLimit,
                            format!("instance keeps defining series past its limit of {}: batch refused", limits.0),
                        ));
                    }
                    RefEntry::Refused(Rejection::SeriesLimitInstance)
                }
            };
            defined.insert(d.r#ref, entry);
        }
        let resolve = |r: u32| defined.get(&r).or_else(|| known.and_then(|k| k.refs.get(&r))).cloned();
        // Resolve every update; reject per series what breaks a rule.
        let mut unknown = Vec::new();
        let mut rejected: Vec<SeriesRejected> = Vec::new();
        let mut rejected_values = [0u64; Rejection::ALL.len()];
        let mut rejected_updates = [0u64; Rejection::ALL.len()];
        let mut batch_kinds: HashMap<String, Kind> = HashMap::new();
        let mut new_series: HashMap<Arc<SeriesKey>, ()> = HashMap::new();
        let mut new_per_name: HashMap<String, usize> = HashMap::new();
        let mut counters: Vec<(Arc<SeriesKey>, u64)> = Vec::with_capacity(req.counters.len());
        let mut gauges: Vec<(Arc<SeriesKey>, f64)> = Vec::with_capacity(req.gauges.len());
        let mut histograms: Vec<(Arc<SeriesKey>, Sketch)> = Vec::with_capacity(req.histograms.len());
        let updates = req
            .counters
            .iter()
            .map(|c| (c.r#ref, Kind::Counter, c.delta))
            .chain(req.gauges.iter().map(|g| (g.r#ref, Kind::Gauge, 0)))
            .chain(sketches.iter().zip(&req.histograms).map(|(s, h)| (h.r#ref, Kind::Histogram, s.count())));
        let mut keys: Vec<Option<Arc<SeriesKey>>> = Vec::with_capacity(req.counters.len() + req.gauges.len() + req.histograms.len());
        for (r, kind, values) in updates {
            let key = match resolve(r) {
                None => {
                    unknown.push(r);
                    keys.push(None);
                    continue;
                }
                Some(RefEntry::Refused(reason)) => Err((reason, format!("ref {r}: series over the instance's limit of {}", limits.0))),
                Some(RefEntry::Series(key)) => {
                    self.admit(&key, kind, limits, &mut batch_kinds, &mut new_series, &mut new_per_name).map(|()| key)
                }
            };
            match key {
                Ok(key) => keys.push(Some(key)),
                Err((reason, message)) => {
                    rejected_values[reason as usize] = rejected_values[reason as usize].wrapping_add(values);
                    rejected_updates[reason as usize] += 1;
                    rejected.push(SeriesRejected { r#ref: r, reason, message });
                    keys.push(None);
                }
            }
        }
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            return Ok(Outcome::UnknownRefs(unknown));
        }
        let mut keys = keys.into_iter();
        for c in &req.counters {
            if let Some(k) = keys.next().flatten() {
                counters.push((k, c.delta));
            }
        }
        for g in &req.gauges {
            if let Some(k) = keys.next().flatten() {
                gauges.push((k, g.value));
            }
        }
        for sketch in sketches {
            if let Some(k) = keys.next().flatten() {
                histograms.push((k, sketch));
            }
        }

        // Commit.
        let interval = self.interval_of(req.interval_end_unix_nanos, now);
        let instance = self.instances.entry(req.instance_id.clone()).or_insert_with(|| Instance {
            labels: instance_labels.clone(),
            last_sequence: 0,
            refs: HashMap::new(),
            accepted: 0,
            gauges: HashMap::new(),
            last_seen_secs: now,
        });
        instance.last_sequence = req.sequence;
        instance.last_seen_secs = now;
        instance.labels = instance_labels;
        instance.refs.extend(defined);
        instance.accepted = accepted;
        for (name, kind) in batch_kinds {
            self.kinds_by_name.entry(name).or_insert(kind);
        }
        for (name, n) in new_per_name {
            *self.series_per_name.entry(name).or_insert(0) += n;
        }
        let (mut merged_updates, mut merged_values) = (0u64, 0u64);
        for (key, delta) in counters {
            let s = series_entry(&mut self.series, key, Kind::Counter);
            s.total = s.total.wrapping_add(delta);
            match point_at(&mut s.points, interval, || Point::Counter(0)) {
                Point::Counter(v) => *v = v.wrapping_add(delta),
                Point::Histogram(_) => unreachable!("kind checked above"),
            }
            merged_updates += 1;
            merged_values = merged_values.wrapping_add(delta);
        }
        for (key, sketch) in histograms {
            let count = sketch.count();
            let s = series_entry(&mut self.series, key, Kind::Histogram);
            s.total = s.total.saturating_add(count);
            s.sum += sketch.sum();
            let scale = sketch.scale();
            match point_at(&mut s.points, interval, || Point::Histogram(Sketch::with_scale(scale))) {
                Point::Histogram(p) => merge_bounded(p, sketch),
                Point::Counter(_) => unreachable!("kind checked above"),
            }
            merged_updates += 1;
            merged_values = merged_values.wrapping_add(count);
        }
        for (key, value) in gauges {
            series_entry(&mut self.series, key.clone(), Kind::Gauge);
            instance.gauges.insert(key, value);
            merged_updates += 1;
        }
        self.stats.series_updates_merged.fetch_add(merged_updates, Relaxed);
        self.stats.merged.add(merged_updates, merged_values);
        for why in Rejection::ALL {
            if rejected_updates[why as usize] > 0 {
                self.stats.reject_series(why, rejected_updates[why as usize], rejected_values[why as usize]);
            }
        }
        Ok(Outcome::Merged(rejected))
    }

    /// Whether an update of `kind` to `key` may be merged: not blocked, the
    /// kind its name already has, and within the series limits if it would
    /// create a rollup series.
    fn admit(
        &self,
        key: &Arc<SeriesKey>,
        kind: Kind,
        (_, per_metric, total): (usize, usize, usize),
        batch_kinds: &mut HashMap<String, Kind>,
        new_series: &mut HashMap<Arc<SeriesKey>, ()>,
        new_per_name: &mut HashMap<String, usize>,
    ) -> Result<(), (Rejection, String)> {
        let name = key.name();
        if self.blocklist.blocks(name) {
            return Err((Rejection::Blocked, format!("metric {name:?} is on the collector's blocklist")));
        }
        let existing = self.kinds_by_name.get(name).or_else(|| batch_kinds.get(name)).copied();
        if let Some(existing) = existing {
            if existing != kind {
                return Err((
                    Rejection::KindConflict,
                    format!("metric {name:?} is a {} here but was sent as a {}", existing.as_str(), kind.as_str()),
                ));
            }
        }
        if !self.series.contains_key(key) && !new_series.contains_key(key) {
            let for_name = self.series_per_name.get(name).copied().unwrap_or(0) + new_per_name.get(name).copied().unwrap_or(0);
            if for_name >= per_metric {
                return Err((Rejection::SeriesLimitMetric, format!("metric {name:?} has {for_name} series, the limit")));
            }
            if self.series.len() + new_series.len() >= total {
                return Err((Rejection::SeriesLimitTotal, format!("the collector holds {total} series, the limit")));
            }
            new_series.insert(key.clone(), ());
            match new_per_name.get_mut(name) {
                Some(n) => *n += 1,
                None => {
                    new_per_name.insert(name.to_string(), 1);
                }
            }
        }
        if existing.is_none() {
            batch_kinds.insert(name.to_string(), kind);
        }
        Ok(())
    }

    /// Drops points older than the retention and instances silent past expiry.
    pub fn maintain(&mut self, now: u64) {
        let oldest_interval = now.saturating_sub(self.config.retention_secs) / self.config.interval_secs;
        for s in self.series.values_mut() {
            while s.points.front().is_some_and(|(i, _)| *i < oldest_interval) {
                s.points.pop_front();
            }
        }
        let expiry = self.config.instance_expiry_secs;
        self.instances.retain(|_, i| now.saturating_sub(i.last_seen_secs) < expiry);
    }

    /// Every rollup series as of `now`, sorted by canonical key.
    pub fn views(&self, now: u64) -> Vec<SeriesView> {
        let window_start = now.saturating_sub(self.config.summary_window_secs) / self.config.interval_secs;
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
                Some(SeriesView { key: s.key.clone(), kind: s.kind, total: s.total, sum: s.sum, gauge, window })
            })
            .collect();
        views.sort_by(|a, b| a.key.canonical().cmp(b.key.canonical()));
        views
    }

    /// Points of the series matching `name` and `labels` (all given labels
    /// must match), between interval indices.
    pub fn points(&self, name: &str, labels: &[(String, String)]) -> Vec<SeriesPoints> {
        let mut out: Vec<_> = self
            .series
            .values()
            .filter(|s| s.key.name() == name && labels.iter().all(|l| s.key.labels().contains(l)))
            .map(|s| (s.key.clone(), s.kind, s.points.iter().cloned().collect()))
            .collect();
        out.sort_by(|a, b| a.0.canonical().cmp(b.0.canonical()));
        out
    }

    /// Series keys and kinds, optionally filtered by name.
    pub fn series_list(&self, name: Option<&str>) -> BTreeMap<String, (Arc<SeriesKey>, Kind)> {
        self.series
            .values()
            .filter(|s| name.is_none_or(|n| s.key.name() == n))
            .map(|s| (s.key.canonical().to_string(), (s.key.clone(), s.kind)))
            .collect()
    }
}

/// Values a request carries (counter deltas summed, histogram samples), with
/// wrapping arithmetic: a malformed request still gets a number.
pub fn request_values(req: &pb::FlushRequest) -> u64 {
    let mut v = req.counters.iter().fold(0u64, |a, c| a.wrapping_add(c.delta));
    for h in req.histograms.iter().filter_map(|h| h.sketch.as_ref()) {
        v = v.wrapping_add(h.zero_count);
        for b in [&h.positive, &h.negative].into_iter().flatten() {
            v = b.counts.iter().fold(v, |a, c| a.wrapping_add(*c));
        }
    }
    v
}

fn labels_of(labels: &[pb::Label]) -> Vec<(String, String)> {
    labels.iter().map(|l| (l.key.clone(), l.value.clone())).collect()
}

/// Most buckets a side of a rollup sketch may span. A legitimate sketch at
/// the default scale (6) spans 64 buckets per power of two, so 8192 covers
/// 128 powers of two (1e-19 to 1e19) at full resolution; two tiny hostile
/// sketches at opposite ends of the `f64` range would otherwise make a dense
/// store of half a million buckets when merged.
pub const MAX_ROLLUP_SPAN: usize = 8192;

/// Merges `incoming` into `point`, first lowering both scales (an exact,
/// coarser merge) until each side of the result spans at most
/// [`MAX_ROLLUP_SPAN`] buckets: memory per point is bounded whatever is sent.
pub fn merge_bounded(point: &mut Sketch, mut incoming: Sketch) {
    let span = |a: &shoal::sketch::BucketStore, b: &shoal::sketch::BucketStore, shift: u32| -> usize {
        let range = |s: &shoal::sketch::BucketStore| (!s.is_empty()).then(|| (s.offset() as i64, s.offset() as i64 + s.len() as i64 - 1));
        let (lo, hi) = match (range(a), range(b)) {
            (None, None) => return 0,
            (Some(r), None) | (None, Some(r)) => r,
            (Some(x), Some(y)) => (x.0.min(y.0), x.1.max(y.1)),
        };
        ((hi >> shift) - (lo >> shift) + 1) as usize
    };
    let scale = point.scale().min(incoming.scale());
    point.downscale((point.scale() - scale) as u32);
    incoming.downscale((incoming.scale() - scale) as u32);
    let mut by = 0u32;
    while point.scale() - (by as i32) > shoal::sketch::MIN_SCALE
        && (span(point.positive(), incoming.positive(), by) > MAX_ROLLUP_SPAN
            || span(point.negative(), incoming.negative(), by) > MAX_ROLLUP_SPAN)
    {
        by += 1;
    }
    point.downscale(by);
    incoming.downscale(by);
    point.merge(&incoming);
}

fn series_entry(series: &mut HashMap<Arc<SeriesKey>, Series>, key: Arc<SeriesKey>, kind: Kind) -> &mut Series {
    series.entry(key.clone()).or_insert_with(|| Series { key, kind, total: 0, sum: 0.0, points: VecDeque::new() })
}

fn point_at(points: &mut VecDeque<(u64, Point)>, interval: u64, make: impl FnOnce() -> Point) -> &mut Point {
    // Nearly always the last interval: search from the back.
    let pos = points.iter().rposition(|(i, _)| *i <= interval);
    let at = match pos {
        Some(p) if points[p].0 == interval => p,
        Some(p) => {
            points.insert(p + 1, (interval, make()));
            p + 1
        }
        None => {
            points.push_front((interval, make()));
            0
        }
    };
    &mut points[at].1
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
        let defs: Vec<_> = (0..5).map(|r| def(r, &format!("m{r}"), &[])).collect();
        let counters: Vec<_> = (0..5).map(|r| (r, 1)).collect();
        let refused = a.apply(&batch("i", 1, defs, &counters), unix_secs()).unwrap_err();
        assert_eq!(refused.reason, Rejection::InstanceLimit);
        assert_eq!(a.series_count(), 0, "a refused batch changes nothing");
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

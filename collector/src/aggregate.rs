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
//! A batch is validated completely before anything is merged, so a rejected
//! batch changes nothing.

use crate::config::Config;
use crate::stats::{Rejection, Stats};
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

/// What happened to a batch.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Merged now.
    Merged,
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

struct Instance {
    labels: Vec<(String, String)>,
    last_sequence: u64,
    refs: HashMap<u32, Arc<SeriesKey>>,
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
        Aggregator {
            config,
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

    /// Validates and merges one batch at time `now` (Unix seconds).
    pub fn apply(&mut self, req: &pb::FlushRequest, now: u64) -> Result<Outcome, Refused> {
        crate::validate::batch(req)?;
        if let Some(instance) = self.instances.get_mut(&req.instance_id) {
            instance.last_seen_secs = now;
            if req.sequence <= instance.last_sequence {
                return Ok(Outcome::Duplicate);
            }
        }
        let instance_labels = labels_of(&req.instance_labels);
        // Resolve every ref before changing anything.
        let mut defined: HashMap<u32, Arc<SeriesKey>> = HashMap::new();
        for d in &req.definitions {
            let mut labels = instance_labels.clone();
            // Series labels override instance labels of the same key.
            labels.extend(labels_of(&d.labels));
            defined.insert(d.r#ref, Arc::new(SeriesKey::new(d.name.clone(), labels)));
        }
        let known = self.instances.get(&req.instance_id).map(|i| &i.refs);
        let resolve = |r: u32| defined.get(&r).or_else(|| known.and_then(|k| k.get(&r))).cloned();
        let mut unknown = Vec::new();
        let mut counters = Vec::with_capacity(req.counters.len());
        let mut gauges = Vec::with_capacity(req.gauges.len());
        let mut histograms = Vec::with_capacity(req.histograms.len());
        for c in &req.counters {
            match resolve(c.r#ref) {
                Some(k) => counters.push((k, c.delta)),
                None => unknown.push(c.r#ref),
            }
        }
        for g in &req.gauges {
            match resolve(g.r#ref) {
                Some(k) => gauges.push((k, g.value)),
                None => unknown.push(g.r#ref),
            }
        }
        for h in &req.histograms {
            let sketch =
                h.sketch.as_ref().ok_or_else(|| refuse(Rejection::InvalidSketch, format!("histogram ref {} has no sketch", h.r#ref)))?;
            let sketch =
                wire::sketch_from_proto(sketch).map_err(|e| refuse(Rejection::InvalidSketch, format!("histogram ref {}: {e}", h.r#ref)))?;
            match resolve(h.r#ref) {
                Some(k) => histograms.push((k, sketch)),
                None => unknown.push(h.r#ref),
            }
        }
        if !unknown.is_empty() {
            unknown.sort_unstable();
            unknown.dedup();
            self.stats.batches_unknown_refs.fetch_add(1, Relaxed);
            return Ok(Outcome::UnknownRefs(unknown));
        }
        // Kinds must agree with what each name already is (and within the batch).
        let mut batch_kinds: HashMap<&str, Kind> = HashMap::new();
        let checks = counters
            .iter()
            .map(|(k, _)| (k, Kind::Counter))
            .chain(gauges.iter().map(|(k, _)| (k, Kind::Gauge)))
            .chain(histograms.iter().map(|(k, _)| (k, Kind::Histogram)));
        for (key, kind) in checks {
            let existing = self.kinds_by_name.get(key.name()).copied().or_else(|| batch_kinds.get(key.name()).copied());
            if let Some(existing) = existing {
                if existing != kind {
                    return Err(refuse(
                        Rejection::KindConflict,
                        format!("metric {:?} is a {} here but was sent as a {}", key.name(), existing.as_str(), kind.as_str()),
                    ));
                }
            }
            batch_kinds.insert(key.name(), kind);
        }

        // Commit.
        let interval = self.interval_of(req.interval_end_unix_nanos, now);
        let instance = self.instances.entry(req.instance_id.clone()).or_insert_with(|| Instance {
            labels: instance_labels.clone(),
            last_sequence: 0,
            refs: HashMap::new(),
            gauges: HashMap::new(),
            last_seen_secs: now,
        });
        instance.last_sequence = req.sequence;
        instance.last_seen_secs = now;
        instance.labels = instance_labels;
        instance.refs.extend(defined);
        for (name, kind) in batch_kinds {
            self.kinds_by_name.entry(name.to_string()).or_insert(kind);
        }
        let mut updates = 0u64;
        for (key, delta) in counters {
            let s = series_entry(&mut self.series, key, Kind::Counter);
            s.total = s.total.wrapping_add(delta);
            match point_at(&mut s.points, interval, || Point::Counter(0)) {
                Point::Counter(v) => *v = v.wrapping_add(delta),
                Point::Histogram(_) => unreachable!("kind checked above"),
            }
            updates += 1;
        }
        for (key, sketch) in histograms {
            let s = series_entry(&mut self.series, key, Kind::Histogram);
            s.total = s.total.saturating_add(sketch.count());
            s.sum += sketch.sum();
            let scale = sketch.scale();
            match point_at(&mut s.points, interval, || Point::Histogram(Sketch::with_scale(scale))) {
                Point::Histogram(p) => p.merge(&sketch),
                Point::Counter(_) => unreachable!("kind checked above"),
            }
            updates += 1;
        }
        for (key, value) in gauges {
            series_entry(&mut self.series, key.clone(), Kind::Gauge);
            instance.gauges.insert(key, value);
            updates += 1;
        }
        self.stats.series_updates_merged.fetch_add(updates, Relaxed);
        Ok(Outcome::Merged)
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

fn labels_of(labels: &[pb::Label]) -> Vec<(String, String)> {
    labels.iter().map(|l| (l.key.clone(), l.value.clone())).collect()
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

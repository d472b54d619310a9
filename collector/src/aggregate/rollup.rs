//! Rollup series: a counter's exact total and per-interval sums, a
//! histogram's per-interval merged sketches, with memory bounded per point.

use shoal_core::sketch::{BucketStore, MIN_SCALE};
use shoal_core::{Kind, SeriesKey, Sketch};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// One interval's worth of a series.
#[derive(Clone, Debug)]
pub enum Point {
    /// Counter increase in the interval.
    Counter(u64),
    /// Histogram samples of the interval.
    Histogram(Sketch),
    /// Gauge rolled up over the live instances as the interval closed
    /// (recorded by `Aggregator::maintain`; no live instance, no point).
    Gauge(f64),
}

/// A rollup series.
pub(crate) struct Series {
    pub(crate) key: Arc<SeriesKey>,
    pub(crate) kind: Kind,
    /// Counter: cumulative total. Histogram: cumulative sample count.
    pub(crate) total: u64,
    /// Histogram: cumulative sum.
    pub(crate) sum: f64,
    /// (interval index, point), ascending.
    pub(crate) points: VecDeque<(u64, Point)>,
    /// Histogram: every sample since the series began, merged (bounded like
    /// a point): the cumulative buckets that native histograms carry.
    pub(crate) cumulative: Option<Sketch>,
    /// When it was last updated (Unix seconds, the merge's `now`): a series
    /// silent past `series_expiry_secs` is removed.
    pub(crate) last_update: u64,
}

impl Series {
    /// Adds a counter increase in `interval`.
    pub(crate) fn add_counter(&mut self, interval: u64, delta: u64) {
        self.total = self.total.wrapping_add(delta);
        match point_at(&mut self.points, interval, || Point::Counter(0)) {
            Point::Counter(v) => *v = v.wrapping_add(delta),
            Point::Histogram(_) | Point::Gauge(_) => unreachable!("a series has one kind (admission checks it)"),
        }
    }

    /// Merges a histogram delta into `interval`.
    pub(crate) fn add_histogram(&mut self, interval: u64, sketch: Sketch) {
        self.total = self.total.saturating_add(sketch.count());
        self.sum += sketch.sum();
        let scale = sketch.scale();
        merge_bounded(self.cumulative.get_or_insert_with(|| Sketch::with_scale(scale)), sketch.clone());
        match point_at(&mut self.points, interval, || Point::Histogram(Sketch::with_scale(scale))) {
            Point::Histogram(p) => merge_bounded(p, sketch),
            Point::Counter(_) | Point::Gauge(_) => unreachable!("a series has one kind (admission checks it)"),
        }
    }

    /// Sets the gauge's rolled-up value as `interval` closed.
    pub(crate) fn set_gauge(&mut self, interval: u64, value: f64) {
        *point_at(&mut self.points, interval, || Point::Gauge(value)) = Point::Gauge(value);
    }

    /// Drops points before `oldest_interval`.
    pub(crate) fn trim(&mut self, oldest_interval: u64) {
        while self.points.front().is_some_and(|(i, _)| *i < oldest_interval) {
            self.points.pop_front();
        }
    }
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
    let span = |a: &BucketStore, b: &BucketStore, shift: u32| -> usize {
        let range = |s: &BucketStore| (!s.is_empty()).then(|| (s.offset() as i64, s.offset() as i64 + s.len() as i64 - 1));
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
    while point.scale() - (by as i32) > MIN_SCALE
        && (span(point.positive(), incoming.positive(), by) > MAX_ROLLUP_SPAN
            || span(point.negative(), incoming.negative(), by) > MAX_ROLLUP_SPAN)
    {
        by += 1;
    }
    point.downscale(by);
    incoming.downscale(by);
    point.merge(&incoming);
}

/// The series of `key`, created if needed, marked as updated at `now`.
pub(crate) fn series_entry(series: &mut HashMap<Arc<SeriesKey>, Series>, key: Arc<SeriesKey>, kind: Kind, now: u64) -> &mut Series {
    let s = series.entry(key.clone()).or_insert_with(|| Series {
        key,
        kind,
        total: 0,
        sum: 0.0,
        points: VecDeque::new(),
        cumulative: None,
        last_update: now,
    });
    s.last_update = s.last_update.max(now);
    s
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

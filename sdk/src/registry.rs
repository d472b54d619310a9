//! The series registry: from a `metrics::Key` (or a name and labels) to the
//! cells of its series, with the per-name cardinality limit.
//!
//! Registration is off the hot path: handles are resolved once and then
//! recorded through directly. The `metrics` macros resolve on every call, so
//! the lookup is made cheap: first a per-thread cache keyed by the facade's
//! own `Key` (whose hash is precomputed, often at compile time; see
//! [`crate::key_cache`]) — no lock, no shared write but the `Arc` clone;
//! then a read-locked shared map; only a miss canonicalises the labels and
//! takes the write path.

use crate::hot::counter::{CounterArena, CounterCells};
use crate::hot::gauge::GaugeCell;
use crate::hot::histogram::{HistogramCells, Taken};
use crate::key_cache::{self, cached_kind, Cached};
use parking_lot::{Mutex, RwLock};
use shoal_core::sketch::Rejection;
use shoal_core::Kind;
use shoal_core::SeriesKey;
use shoal_proto::limits::{check_series, truncate, SeriesFault};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Label set on the series that collects the updates of a metric past its
/// cardinality limit.
pub const OVERFLOW_LABEL: (&str, &str) = ("shoal_overflow", "true");

/// Pass-through hasher: `metrics::Key` hashes itself as one precomputed `u64`.
#[derive(Default)]
pub(crate) struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Never used by metrics::Key; fold bytes in anyway for safety.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

static NEXT_FAMILY_ID: AtomicU64 = AtomicU64::new(1);

type FastMap<V> = HashMap<metrics::Key, V, BuildHasherDefault<PrehashedKey>>;

/// The series key of a `metrics` facade key.
pub(crate) fn key_from_metrics(key: &metrics::Key) -> SeriesKey {
    SeriesKey::new(key.name(), key.labels().map(|l| (l.key(), l.value())))
}

cached_kind!(CounterSeries);
cached_kind!(GaugeSeries);
cached_kind!(HistogramSeries);

/// A counter series.
pub struct CounterSeries {
    pub(crate) key: Arc<SeriesKey>,
    /// Set on a metric's overflow series: every update is also counted there.
    pub(crate) overflow: Option<Arc<SelfStats>>,
    pub(crate) cells: CounterCells,
    /// Cumulative value at the last delta take.
    pub(crate) last_taken: AtomicU64,
}

/// A gauge series.
pub struct GaugeSeries {
    pub(crate) key: Arc<SeriesKey>,
    pub(crate) stats: Arc<SelfStats>,
    pub(crate) overflow: bool,
    pub(crate) cell: GaugeCell,
}

/// A histogram series.
pub struct HistogramSeries {
    pub(crate) key: Arc<SeriesKey>,
    pub(crate) stats: Arc<SelfStats>,
    pub(crate) overflow: bool,
    pub(crate) cells: HistogramCells,
    /// What the cells held at the last delta take.
    pub(crate) last_taken: Mutex<Taken>,
}

/// Counters the registry keeps about itself (exposed under `shoal_`).
#[derive(Default)]
pub struct SelfStats {
    /// Values rejected by reason (NaN, infinite), all metrics together.
    pub rejected_nan: AtomicU64,
    /// See `rejected_nan`.
    pub rejected_infinite: AtomicU64,
    /// Updates that went to an overflow series.
    pub overflowed_updates: AtomicU64,
    /// Series keys that were refused a series of their own.
    pub overflowed_series: AtomicU64,
    /// Series refused at registration because a collector would refuse
    /// them, by [`Refusal::index`]; never sent.
    refused_series: [AtomicU64; Refusal::COUNT],
    /// Exposed metric name -> the kind it was first registered as.
    kinds: Mutex<HashMap<String, Kind>>,
    /// When a refusal was last logged (refusals are logged at most every
    /// [`REFUSAL_LOG_EVERY`]).
    refusal_logged: Mutex<Option<std::time::Instant>>,
}

/// How often a refused series is logged at most.
const REFUSAL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a series was refused at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its name or labels break a protocol rule.
    Fault(SeriesFault),
    /// Its metric name is registered as another kind.
    KindConflict,
    /// Its metric name starts with `shoal_`, reserved for shoal's own series
    /// (which travel to the collector beside the application's).
    ReservedName,
}

impl Refusal {
    const COUNT: usize = SeriesFault::ALL.len() + 2;

    /// Every reason, in exposition order.
    pub fn all() -> impl Iterator<Item = Refusal> {
        SeriesFault::ALL.into_iter().map(Refusal::Fault).chain([Refusal::KindConflict, Refusal::ReservedName])
    }

    fn index(self) -> usize {
        match self {
            Refusal::Fault(f) => SeriesFault::ALL.iter().position(|&x| x == f).unwrap_or(0),
            Refusal::KindConflict => SeriesFault::ALL.len(),
            Refusal::ReservedName => SeriesFault::ALL.len() + 1,
        }
    }

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Fault(f) => f.as_str(),
            Refusal::KindConflict => "kind_conflict",
            Refusal::ReservedName => "reserved_name",
        }
    }
}

impl SelfStats {
    /// Series refused at registration for one reason.
    pub fn refused_series(&self, why: Refusal) -> u64 {
        self.refused_series[why.index()].load(Relaxed)
    }

    /// Whether a new series may be registered: what a collector would refuse
    /// (name, labels, a second kind under one name) is refused here, so it
    /// never reaches the wire and cannot cost its neighbours anything.
    fn admit(&self, key: &SeriesKey, kind: Kind) -> Result<(), (Refusal, String)> {
        let exposed = key.exposed();
        check_series(exposed.name(), exposed.labels().iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|r| (Refusal::Fault(r.fault), r.message))?;
        if shoal_core::own::is_reserved(exposed.name()) {
            return Err((
                Refusal::ReservedName,
                format!(
                    "metric {:?}: names starting with {:?} are shoal's own",
                    truncate(exposed.name()),
                    shoal_core::own::RESERVED_PREFIX
                ),
            ));
        }
        let mut kinds = self.kinds.lock();
        match kinds.get(exposed.name()) {
            Some(&first) if first != kind => Err((
                Refusal::KindConflict,
                format!("metric {:?} is registered as a {first}; refusing it as a {kind}", truncate(exposed.name())),
            )),
            Some(_) => Ok(()),
            None => {
                kinds.insert(exposed.name().to_string(), kind);
                Ok(())
            }
        }
    }

    fn refused(&self, why: Refusal, message: &str) {
        self.refused_series[why.index()].fetch_add(1, Relaxed);
        let mut logged = self.refusal_logged.lock();
        if logged.is_none_or(|at| at.elapsed() >= REFUSAL_LOG_EVERY) {
            *logged = Some(std::time::Instant::now());
            tracing::warn!(
                target: "shoal::registry",
                reason = why.as_str(),
                "series refused, its updates are counted and never sent: {message} (further refusals within {REFUSAL_LOG_EVERY:?} are only counted, see shoal_rejected_series_total)"
            );
        }
    }

    pub(crate) fn reject(&self, why: Rejection) {
        match why {
            Rejection::Nan => self.rejected_nan.fetch_add(1, Relaxed),
            Rejection::Infinite => self.rejected_infinite.fetch_add(1, Relaxed),
        };
    }
}

/// The series of one kind.
pub(crate) struct Family<S> {
    kind: Kind,
    /// Unique per family for the life of the process (thread caches key on it,
    /// so a dropped family's entries can never be mistaken for a new one's).
    id: u64,
    /// Facade key -> series, for keys that got a series of their own.
    fast: RwLock<FastMap<Arc<S>>>,
    slow: Mutex<FamilyIndex<S>>,
}

struct FamilyIndex<S> {
    by_canonical: HashMap<String, Arc<S>>,
    series_per_name: HashMap<String, usize>,
    overflow: HashMap<String, Arc<S>>,
    /// Where the updates of refused series go: never taken, never sent.
    discard: Option<Arc<S>>,
    /// Registration order, for deterministic iteration.
    all: Vec<Arc<S>>,
}

impl<S> Family<S> {
    fn new(kind: Kind) -> Self {
        Family {
            kind,
            id: NEXT_FAMILY_ID.fetch_add(1, Relaxed),
            fast: RwLock::new(FastMap::default()),
            slow: Mutex::new(FamilyIndex {
                by_canonical: HashMap::new(),
                series_per_name: HashMap::new(),
                overflow: HashMap::new(),
                discard: None,
                all: Vec::new(),
            }),
        }
    }
}

/// Result of resolving a key: its own series, the overflow series of its
/// metric name, or the family's discard series (a refused series).
pub(crate) enum Resolved<S> {
    Own(Arc<S>),
    Overflow(Arc<S>),
    Refused(Arc<S>),
}

impl<S: Cached> Family<S> {
    /// Resolves a facade key. `make` builds a new series for a canonical key.
    /// The thread's cache is looked up inline; the rest is out of line.
    #[inline(always)]
    pub(crate) fn resolve(
        &self,
        key: &metrics::Key,
        limit: usize,
        stats: &SelfStats,
        make: impl FnMut(SeriesKey, bool) -> S,
    ) -> Resolved<S> {
        match key_cache::get::<S>(self.id, key) {
            Some(s) => Resolved::Own(s),
            None => self.resolve_uncached(key, limit, stats, make),
        }
    }

    #[inline(never)]
    fn resolve_uncached(&self, key: &metrics::Key, limit: usize, stats: &SelfStats, make: impl FnMut(SeriesKey, bool) -> S) -> Resolved<S> {
        let shared = self.fast.read().get(key).cloned();
        if let Some(s) = shared {
            key_cache::insert(self.id, key, &s);
            return Resolved::Own(s);
        }
        let resolved = self.resolve_key(key_from_metrics(key), limit, stats, make);
        if let Resolved::Own(s) = &resolved {
            // Only keys with their own series are cached, so hostile label
            // values past the limit never grow this map.
            self.fast.write().insert(key.clone(), s.clone());
            key_cache::insert(self.id, key, s);
        }
        resolved
    }
}

impl<S> Family<S> {
    /// Resolves a canonical key (shoal's own handle API).
    pub(crate) fn resolve_key(
        &self,
        key: SeriesKey,
        limit: usize,
        stats: &SelfStats,
        mut make: impl FnMut(SeriesKey, bool) -> S,
    ) -> Resolved<S> {
        let mut index = self.slow.lock();
        if let Some(s) = index.by_canonical.get(key.canonical()) {
            return Resolved::Own(s.clone());
        }
        if let Err((why, message)) = stats.admit(&key, self.kind) {
            stats.refused(why, &message);
            let discard = index
                .discard
                .get_or_insert_with(|| Arc::new(make(SeriesKey::new("shoal_refused_series", [("kind", self.kind.as_str())]), false)));
            return Resolved::Refused(discard.clone());
        }
        let used = index.series_per_name.get(key.name()).copied().unwrap_or(0);
        if used >= limit {
            stats.overflowed_series.fetch_add(1, Relaxed);
            if let Some(s) = index.overflow.get(key.name()) {
                return Resolved::Overflow(s.clone());
            }
            let overflow = Arc::new(make(SeriesKey::new(key.name(), [OVERFLOW_LABEL]), true));
            index.overflow.insert(key.name().to_string(), overflow.clone());
            index.all.push(overflow.clone());
            return Resolved::Overflow(overflow);
        }
        let name = key.name().to_string();
        let canonical = key.canonical().to_string();
        let series = Arc::new(make(key, false));
        *index.series_per_name.entry(name).or_insert(0) += 1;
        index.by_canonical.insert(canonical, series.clone());
        index.all.push(series.clone());
        Resolved::Own(series)
    }

    /// Every series, in registration order.
    pub(crate) fn all(&self) -> Vec<Arc<S>> {
        self.slow.lock().all.clone()
    }

    /// The series refused series record into, if any was refused.
    pub(crate) fn discarded(&self) -> Option<Arc<S>> {
        self.slow.lock().discard.clone()
    }

    /// Number of series (overflow series included).
    pub(crate) fn len(&self) -> usize {
        self.slow.lock().all.len()
    }
}

/// Unit and description given through `describe_*`.
#[derive(Clone, Debug, Default)]
pub struct Description {
    /// Unit, if any.
    pub unit: Option<metrics::Unit>,
    /// Help text.
    pub text: String,
}

/// All series of one `Shoal`.
pub(crate) struct Registry {
    pub(crate) cardinality_limit: usize,
    pub(crate) scale: i32,
    pub(crate) counters: Family<CounterSeries>,
    pub(crate) gauges: Family<GaugeSeries>,
    pub(crate) histograms: Family<HistogramSeries>,
    pub(crate) descriptions: RwLock<HashMap<String, Description>>,
    pub(crate) stats: Arc<SelfStats>,
    counter_arena: Mutex<CounterArena>,
}

impl Registry {
    pub(crate) fn new(cardinality_limit: usize, scale: i32) -> Registry {
        Registry {
            cardinality_limit,
            scale,
            counters: Family::new(Kind::Counter),
            gauges: Family::new(Kind::Gauge),
            histograms: Family::new(Kind::Histogram),
            descriptions: RwLock::new(HashMap::new()),
            stats: Arc::new(SelfStats::default()),
            counter_arena: Mutex::new(CounterArena::default()),
        }
    }

    pub(crate) fn new_counter(&self, key: SeriesKey, overflow: bool) -> CounterSeries {
        CounterSeries {
            key: Arc::new(key),
            overflow: overflow.then(|| self.stats.clone()),
            cells: self.counter_arena.lock().allocate(),
            last_taken: AtomicU64::new(0),
        }
    }

    pub(crate) fn new_gauge(&self, key: SeriesKey, overflow: bool) -> GaugeSeries {
        GaugeSeries { key: Arc::new(key), stats: self.stats.clone(), overflow, cell: GaugeCell::default() }
    }

    pub(crate) fn new_histogram(&self, key: SeriesKey, overflow: bool) -> HistogramSeries {
        HistogramSeries {
            key: Arc::new(key),
            stats: self.stats.clone(),
            overflow,
            cells: HistogramCells::new(self.scale),
            last_taken: Mutex::new(Taken::default()),
        }
    }

    pub(crate) fn describe(&self, name: &str, unit: Option<metrics::Unit>, text: &str) {
        self.descriptions.write().insert(name.to_string(), Description { unit, text: text.to_string() });
    }

    /// Number of series of each kind.
    pub(crate) fn series_counts(&self) -> [(Kind, usize); 3] {
        [(Kind::Counter, self.counters.len()), (Kind::Gauge, self.gauges.len()), (Kind::Histogram, self.histograms.len())]
    }
}

impl<S> Resolved<S> {
    pub(crate) fn into_series(self) -> Arc<S> {
        match self {
            Resolved::Own(s) | Resolved::Overflow(s) | Resolved::Refused(s) => s,
        }
    }
}

//! Per-source accumulation of StatsD lines into numbered flush batches.
//!
//! Each source (a peer IP address, per transport) is an instance of its
//! own, exactly as an SDK process is: its own `instance_id`
//! (`statsd/<udp|tcp>/<ip>/<run>.<generation>`, never reused, so a
//! restarted collector or a source that comes back never collides with the
//! dedup state of an earlier one), its own sequence numbers, its own refs.
//! Between flushes its lines merge in memory, per series: counters as an
//! integer delta plus a fractional carry, gauges as the last value, timers,
//! histograms and distributions into a [`Sketch`], sets as the hashes of the
//! distinct members of the current interval. A flush turns every touched
//! series into an ordinary [`pb::FlushRequest`], which the collector applies
//! through the gRPC ingest path (validation, dedup, limits, blocklist, WAL).
//!
//! Sample rates: a line with `@r` stands for `1/r` lines. Counters add
//! `value / r`, histograms record the value with weight `1/r`. Since deltas
//! and sketch counts are integers, each series carries the fractional part
//! of its weight to its next line: the integer part is taken now, the rest
//! waits, so a series' total is always within 1 of the exact weighted sum
//! and exact whenever that sum is an integer (a tolerance of 1e-9 absorbs
//! the binary representation of rates such as 0.1). The carry is never
//! flushed on its own and never exposed; the rate itself never appears in
//! any series.
//!
//! Memory is bounded: at most `statsd_max_sources` sources (a line from one
//! more is refused, `source_limit`), each with at most
//! `statsd_max_series_per_source` series (`series_limit`; twice as many raw
//! line keys, since one series may be spelt with its tags in another order),
//! sets with at most `statsd_max_set_size` members (`set_full`), and at most
//! [`MAX_PENDING`] unapplied batches per source. A source silent for
//! [`SOURCE_IDLE_SECS`] with nothing left to flush is forgotten.

use super::parse::{self, GaugeOp, Line, Reason, Type};
use super::StatsdStats;
use shoal_core::names::{sanitize_label_name, sanitize_metric_name};
use shoal_core::sketch::MIN_SCALE;
use shoal_core::Sketch;
use shoal_proto as pb;
use shoal_proto::convert::{sketch_to_proto, MAX_DECODED_SPAN};
use shoal_proto::limits::{check_series, SeriesFault, SEND_BATCH_BUCKETS, SEND_BATCH_SERIES};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// A source silent this long, with nothing to flush, is forgotten (its next
/// line starts a new instance; a gauge delta then starts from 0 again).
pub const SOURCE_IDLE_SECS: u64 = 300;
/// Batches of one source kept while the collector cannot apply them
/// (durable storage failing); past it the oldest is dropped and counted.
pub const MAX_PENDING: usize = 16;
/// Tolerance when taking the integer part of a weighted sum (see the module
/// documentation): `3 / 0.1` is `29.999999999999996` in binary.
const WEIGHT_EPSILON: f64 = 1e-9;
/// Largest counter increment one line may carry (value / rate): 2^53, where
/// `f64` still counts every integer.
const MAX_EXACT_INCREMENT: f64 = 9_007_199_254_740_992.0;
/// Largest counter delta of one series in one flush (a flood of maximal
/// lines is refused past it rather than saturating).
const MAX_FLUSH_DELTA: u64 = 1 << 62;

/// A per-process random seed for the line-key and set-member hashes: keys
/// crafted to collide cannot be precomputed.
fn hash_seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(rand::random)
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<OneShot>>;

/// Hashes each `write` with one xxh3 call: a line key is hashed in one go
/// (the streaming `Xxh3Default` costs more than the lookup it serves).
struct OneShot(u64);

impl Default for OneShot {
    fn default() -> Self {
        OneShot(hash_seed())
    }
}

impl std::hash::Hasher for OneShot {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = self.0.rotate_left(29) ^ n as u64;
    }
}
/// A series as the collector will see it: type, sanitised name, sorted labels.
type Canonical = (Type, String, Vec<(String, String)>);

/// How a source reaches the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP datagrams.
    Udp,
    /// Newline-delimited TCP streams.
    Tcp,
}

/// A source: transport and peer IP address. By IP, not IP and port: many
/// StatsD clients open a socket per send (a new port each time), and a host
/// is what a StatsD daemon stood for (DogStatsD runs one agent per host),
/// so sources are bounded by hosts. Gauges of several processes of one host
/// then share one value per series (last write wins, as in Etsy StatsD).
pub type SourceKey = (Transport, IpAddr);

/// The bounds of an [`Accumulator`].
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Sources at most.
    pub max_sources: usize,
    /// Series per source at most.
    pub max_series_per_source: usize,
    /// Series of all sources together at most.
    pub max_series_total: usize,
    /// Distinct members per set series and interval at most.
    pub max_set_size: usize,
    /// Largest datagram (UDP) or line (TCP), in bytes.
    pub max_datagram_bytes: usize,
    /// Width of the set intervals (the collector's `interval_secs`).
    pub interval_secs: u64,
}

impl Limits {
    /// The StatsD limits of a collector config.
    pub fn of(config: &crate::Config) -> Limits {
        Limits {
            max_sources: config.statsd_max_sources,
            max_series_per_source: config.statsd_max_series_per_source,
            max_series_total: config.max_series_total,
            max_set_size: config.statsd_max_set_size,
            max_datagram_bytes: config.statsd_max_datagram_bytes,
            interval_secs: config.interval_secs.max(1),
        }
    }
}

enum State {
    Counter { delta: u64, carry: f64 },
    Gauge { value: f64, dirty: bool },
    Histogram { sketch: Sketch, carry: f64 },
    Set { members: HashSet<u64, BuildHasherDefault<NoHash>>, interval: u64, dirty: bool },
}

/// Set members are already xxh3 hashes: hashing them again is waste.
#[derive(Default)]
struct NoHash(u64);

impl std::hash::Hasher for NoHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

struct Series {
    name: String,
    labels: Vec<(String, String)>,
    kind: Type,
    /// Sent in a definition that a batch carried.
    defined: bool,
    /// In `Source::touched`.
    touched: bool,
    state: State,
}

struct Source {
    instance_id: String,
    sequence: u64,
    /// Raw line key (name, type, raw tags) -> series index.
    keys: FastMap<Box<[u8]>, u32>,
    /// (type, sanitised name, sorted labels) -> series index: two spellings
    /// of one series (tags in another order) share it.
    canonical: HashMap<Canonical, u32>,
    series: Vec<Series>,
    touched: Vec<u32>,
    last_line_secs: u64,
    last_flush_nanos: u64,
    pending: VecDeque<pb::FlushRequest>,
}

/// A batch to apply, and the source it came from.
pub struct Built {
    /// The source.
    pub source: SourceKey,
    /// The batch.
    pub request: pb::FlushRequest,
}

/// Every StatsD source's state between flushes.
pub struct Accumulator {
    limits: Limits,
    run: String,
    generation: u64,
    sources: FastMap<SourceKey, Source>,
    total_series: usize,
    scratch: Vec<u8>,
    stats: Arc<StatsdStats>,
    log: LogLimiter,
}

impl Accumulator {
    /// An empty accumulator counting into `stats`.
    pub fn new(limits: Limits, stats: Arc<StatsdStats>) -> Accumulator {
        Accumulator {
            limits,
            run: format!("{:08x}", rand::random::<u32>()),
            generation: 0,
            sources: FastMap::default(),
            total_series: 0,
            scratch: Vec::with_capacity(256),
            stats,
            log: LogLimiter::default(),
        }
    }

    /// The counts.
    pub fn stats(&self) -> &Arc<StatsdStats> {
        &self.stats
    }

    /// Sources held now.
    pub fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Takes one UDP datagram (or a run of complete TCP lines) from
    /// `source`, received at `now_secs`: every line is merged or refused
    /// and counted. Never fails, never panics.
    pub fn ingest(&mut self, source: SourceKey, datagram: &[u8], now_secs: u64) {
        self.stats.datagrams.fetch_add(1, Relaxed);
        self.stats.bytes.fetch_add(datagram.len() as u64, Relaxed);
        if source.0 == Transport::Udp && datagram.len() > self.limits.max_datagram_bytes {
            self.refuse(Reason::DatagramTooLarge, &datagram[..64.min(datagram.len())], source);
            return;
        }
        if !self.ensure_source(source, now_secs) {
            for line in datagram.split(|b| *b == b'\n').filter(|l| !trim(l).is_empty()) {
                self.refuse(Reason::SourceLimit, line, source);
            }
            return;
        }
        let Accumulator { limits, sources, total_series, scratch, stats, log, .. } = self;
        let src = sources.get_mut(&source).expect("ensured above");
        let (mut received, mut accepted) = (0u64, 0u64);
        let mut one = |bytes: &[u8], line: Result<&str, Reason>| {
            received += 1;
            let result = if bytes.len() > limits.max_datagram_bytes {
                Err(Reason::LineTooLong)
            } else {
                line.and_then(|line| ingest_line(src, scratch, limits, total_series, line, now_secs))
            };
            match result {
                Ok(()) => accepted += 1,
                Err(reason) => {
                    stats.reject(reason);
                    log.log(reason, bytes, source, now_secs);
                }
            }
        };
        // One UTF-8 check for the whole datagram when it passes (the usual
        // case); line by line only when it does not.
        match std::str::from_utf8(datagram) {
            Ok(text) => {
                for line in text.split('\n') {
                    let line = line.strip_suffix('\r').unwrap_or(line);
                    if !line.is_empty() {
                        one(line.as_bytes(), Ok(line));
                    }
                }
            }
            Err(_) => {
                for line in datagram.split(|b| *b == b'\n') {
                    let line = trim(line);
                    if !line.is_empty() {
                        one(line, std::str::from_utf8(line).map_err(|_| Reason::InvalidUtf8));
                    }
                }
            }
        }
        src.last_line_secs = now_secs;
        stats.lines_received.fetch_add(received, Relaxed);
        stats.lines_accepted.fetch_add(accepted, Relaxed);
    }

    /// Counts a refusal of something that is not a parsed line (a datagram
    /// too large, a TCP line too long), with a rate-limited log line.
    pub fn refuse(&mut self, reason: Reason, sample: &[u8], source: SourceKey) {
        if reason != Reason::DatagramTooLarge {
            self.stats.lines_received.fetch_add(1, Relaxed);
        }
        self.stats.reject(reason);
        self.log.log(reason, sample, source, crate::aggregate::unix_secs());
    }

    /// False if `key` is new and there are as many sources as allowed.
    fn ensure_source(&mut self, key: SourceKey, now_secs: u64) -> bool {
        if !self.sources.contains_key(&key) {
            if self.sources.len() >= self.limits.max_sources {
                return false;
            }
            self.generation += 1;
            let transport = match key.0 {
                Transport::Udp => "udp",
                Transport::Tcp => "tcp",
            };
            let source = Source {
                instance_id: format!("statsd/{transport}/{}/{}.{}", key.1, self.run, self.generation),
                sequence: 0,
                keys: FastMap::default(),
                canonical: HashMap::new(),
                series: Vec::new(),
                touched: Vec::new(),
                last_line_secs: now_secs,
                last_flush_nanos: now_secs.saturating_mul(1_000_000_000),
                pending: VecDeque::new(),
            };
            self.sources.insert(key, source);
            self.stats.sources_created.fetch_add(1, Relaxed);
        }
        true
    }

    /// Every batch due at `now_nanos`: first the batches not applied
    /// before (in order), then one or more new ones per source with
    /// touched series (split to stay within the protocol's `SEND_BATCH_*`
    /// limits). Forgets sources idle past [`SOURCE_IDLE_SECS`].
    pub fn take_batches(&mut self, now_nanos: u64) -> Vec<Built> {
        let now_secs = now_nanos / 1_000_000_000;
        let mut out = Vec::new();
        for (key, src) in self.sources.iter_mut() {
            out.extend(src.pending.drain(..).map(|request| Built { source: *key, request }));
            if src.touched.is_empty() {
                continue;
            }
            let start = src.last_flush_nanos.min(now_nanos);
            src.last_flush_nanos = now_nanos;
            let mut batch = new_batch(src, start, now_nanos);
            let mut buckets = 0usize;
            for i in std::mem::take(&mut src.touched) {
                let series = &mut src.series[i as usize];
                series.touched = false;
                let r = i;
                let update = match &mut series.state {
                    State::Counter { delta, .. } => {
                        let d = std::mem::take(delta);
                        (d > 0).then_some(Update::Counter(pb::CounterDelta { r#ref: r, delta: d }))
                    }
                    State::Gauge { value, dirty } => {
                        std::mem::take(dirty).then_some(Update::Gauge(pb::GaugeValue { r#ref: r, value: *value }))
                    }
                    State::Set { members, dirty, .. } => {
                        std::mem::take(dirty).then_some(Update::Gauge(pb::GaugeValue { r#ref: r, value: members.len() as f64 }))
                    }
                    State::Histogram { sketch, .. } => {
                        if sketch.is_empty() {
                            None
                        } else {
                            let s = std::mem::take(sketch);
                            let proto = sketch_to_proto(&s);
                            Some(Update::Histogram(
                                pb::HistogramDelta { r#ref: r, sketch: Some(proto) },
                                s.positive().len() + s.negative().len(),
                            ))
                        }
                    }
                };
                let Some(update) = update else { continue };
                let size = match &update {
                    Update::Histogram(_, n) => *n,
                    _ => 0,
                };
                let in_batch = batch.counters.len() + batch.gauges.len() + batch.histograms.len();
                if in_batch > 0 && (in_batch >= SEND_BATCH_SERIES || buckets + size > SEND_BATCH_BUCKETS) {
                    out.push(Built { source: *key, request: std::mem::replace(&mut batch, new_batch(src, start, now_nanos)) });
                    buckets = 0;
                }
                let series = &mut src.series[i as usize];
                if !series.defined {
                    series.defined = true;
                    batch.definitions.push(definition(r, series));
                }
                buckets += size;
                match update {
                    Update::Counter(c) => batch.counters.push(c),
                    Update::Gauge(g) => batch.gauges.push(g),
                    Update::Histogram(h, _) => batch.histograms.push(h),
                }
            }
            if batch.counters.len() + batch.gauges.len() + batch.histograms.len() > 0 {
                out.push(Built { source: *key, request: batch });
            } else {
                // Nothing after all (carries only): the number is not used.
                src.sequence -= 1;
            }
        }
        self.sources.retain(|_, s| {
            !(s.touched.is_empty() && s.pending.is_empty() && now_secs.saturating_sub(s.last_line_secs) >= SOURCE_IDLE_SECS)
        });
        self.stats.sources.store(self.sources.len() as u64, Relaxed);
        self.total_series = self.sources.values().map(|s| s.series.len()).sum();
        self.stats.series.store(self.total_series as u64, Relaxed);
        out
    }

    /// The definitions of every series `request` refers to (the collector
    /// answered unknown refs: it forgot the instance, e.g. after a long
    /// silence). `None` if the source is gone.
    pub fn definitions_for(&self, source: SourceKey, request: &pb::FlushRequest) -> Option<Vec<pb::SeriesDefinition>> {
        let src = self.sources.get(&source)?;
        let refs = request
            .counters
            .iter()
            .map(|c| c.r#ref)
            .chain(request.gauges.iter().map(|g| g.r#ref))
            .chain(request.histograms.iter().map(|h| h.r#ref));
        Some(refs.filter_map(|r| src.series.get(r as usize).map(|s| definition(r, s))).collect())
    }

    /// Gives back a batch that could not be applied now (storage failing).
    /// Batches are given back in the order they were taken, and go first at
    /// the next flush, in that order (a later sequence applied first would
    /// make the earlier one a duplicate). Bounded by [`MAX_PENDING`]: past
    /// it the oldest is dropped and counted.
    pub fn give_back(&mut self, source: SourceKey, request: pb::FlushRequest) {
        let Some(src) = self.sources.get_mut(&source) else {
            self.stats.batches_dropped.fetch_add(1, Relaxed);
            return;
        };
        if src.pending.len() >= MAX_PENDING {
            src.pending.pop_front();
            self.stats.batches_dropped.fetch_add(1, Relaxed);
        }
        src.pending.push_back(request);
    }
}

enum Update {
    Counter(pb::CounterDelta),
    Gauge(pb::GaugeValue),
    Histogram(pb::HistogramDelta, usize),
}

fn new_batch(src: &mut Source, start: u64, end: u64) -> pb::FlushRequest {
    src.sequence += 1;
    pb::FlushRequest {
        instance_id: src.instance_id.clone(),
        instance_labels: Vec::new(),
        sequence: src.sequence,
        interval_start_unix_nanos: start,
        interval_end_unix_nanos: end,
        ..Default::default()
    }
}

fn definition(r: u32, s: &Series) -> pb::SeriesDefinition {
    pb::SeriesDefinition {
        r#ref: r,
        name: s.name.clone(),
        labels: s.labels.iter().map(|(k, v)| pb::Label { key: k.clone(), value: v.clone() }).collect(),
        help: String::new(),
        unit: if s.kind == Type::Timer { "seconds".into() } else { String::new() },
    }
}

fn trim(line: &[u8]) -> &[u8] {
    match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    }
}

/// Adds `weight` to a fractional carry and returns the integer part now due.
fn take_whole(carry: &mut f64, weight: f64) -> u64 {
    let total = *carry + weight;
    let whole = (total + WEIGHT_EPSILON).floor();
    *carry = (total - whole).max(0.0);
    if whole >= u64::MAX as f64 {
        u64::MAX
    } else {
        whole as u64
    }
}

fn ingest_line(
    src: &mut Source,
    scratch: &mut Vec<u8>,
    limits: &Limits,
    total: &mut usize,
    line: &str,
    now_secs: u64,
) -> Result<(), Reason> {
    let parsed = parse::parse_line(line)?;
    scratch.clear();
    scratch.extend_from_slice(parsed.name.as_bytes());
    scratch.push(0);
    scratch.push(parsed.kind.tag());
    scratch.push(0);
    scratch.extend_from_slice(parsed.tags.as_bytes());
    // Every value is checked before the line creates a series or counts
    // (a single value of a known series is checked as it is applied).
    let index = match src.keys.get(scratch.as_slice()) {
        Some(i) => {
            if parsed.is_packed() {
                parsed.values().try_for_each(|v| check_value(parsed.kind, v))?;
            }
            *i
        }
        None => {
            parsed.values().try_for_each(|v| check_value(parsed.kind, v))?;
            new_series(src, scratch, limits, total, &parsed)?
        }
    };
    let series = &mut src.series[index as usize];
    let weight = 1.0 / parsed.rate;
    for v in parsed.values() {
        match &mut series.state {
            State::Counter { delta, carry } => {
                let v = parse::number(v)?;
                if v < 0.0 {
                    return Err(Reason::NegativeCounter);
                }
                // Counted exactly or not at all: a rollup shared with SDK
                // series must never saturate or wrap.
                if v * weight > MAX_EXACT_INCREMENT {
                    return Err(Reason::BadValue);
                }
                let add = take_whole(carry, v * weight);
                *delta = delta.checked_add(add).filter(|d| *d <= MAX_FLUSH_DELTA).ok_or(Reason::BadValue)?;
            }
            State::Gauge { value, dirty } => {
                let next = match parse::gauge(v)? {
                    GaugeOp::Set(x) => x,
                    GaugeOp::Add(x) => *value + x,
                };
                // A delta can overflow to infinity: refused, the gauge kept.
                if !next.is_finite() {
                    return Err(Reason::NonFinite);
                }
                *value = next;
                *dirty = true;
            }
            State::Histogram { sketch, carry } => {
                let mut x = parse::number(v)?;
                if series.kind == Type::Timer {
                    x /= 1000.0;
                }
                let n = take_whole(carry, weight);
                // An infinite sum would get the series refused at merge,
                // with every good sample of the flush.
                if n > 0 && !(sketch.sum() + x * n as f64).is_finite() {
                    return Err(Reason::NonFinite);
                }
                if n > 0 {
                    // Finite (checked), so never refused.
                    let _ = sketch.record_many(x, n);
                    // Memory per series stays bounded whatever the values
                    // span: coarsen (an exact downscale) as decoding would.
                    while sketch.positive().len().max(sketch.negative().len()) > MAX_DECODED_SPAN && sketch.scale() > MIN_SCALE {
                        sketch.downscale(1);
                    }
                }
            }
            State::Set { members, interval, dirty } => {
                let now_interval = now_secs / limits.interval_secs;
                if *interval != now_interval {
                    members.clear();
                    *interval = now_interval;
                }
                let h = xxh3_64_with_seed(v.as_bytes(), hash_seed());
                if members.len() >= limits.max_set_size && !members.contains(&h) {
                    return Err(Reason::SetFull);
                }
                members.insert(h);
                *dirty = true;
            }
        }
    }
    if !series.touched {
        series.touched = true;
        src.touched.push(index);
    }
    Ok(())
}

fn check_value(kind: Type, v: &str) -> Result<(), Reason> {
    match kind {
        Type::Set => Ok(()),
        Type::Gauge => parse::gauge(v).map(|_| ()),
        Type::Counter if parse::number(v)? < 0.0 => Err(Reason::NegativeCounter),
        _ => parse::number(v).map(|_| ()),
    }
}

/// Creates the series of a line key seen for the first time: the name is
/// sanitised (StatsD names are dotted, `api.requests` becomes
/// `api_requests`), tag keys too, and the result must pass the protocol's
/// per-series rules, as an SDK series must.
fn new_series(src: &mut Source, key: &[u8], limits: &Limits, total: &mut usize, line: &Line<'_>) -> Result<u32, Reason> {
    if src.keys.len() >= 2 * limits.max_series_per_source {
        return Err(Reason::SeriesLimit);
    }
    let name = sanitize_metric_name(line.name);
    if name.starts_with("shoal_") {
        return Err(Reason::ReservedName);
    }
    let mut labels: Vec<(String, String)> =
        parse::tags(line.tags)?.into_iter().map(|(k, v)| (sanitize_label_name(k), v.to_string())).collect();
    labels.sort();
    check_series(&name, labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(|r| match r.fault {
        SeriesFault::InvalidName | SeriesFault::NameTooLong => Reason::InvalidName,
        SeriesFault::TooManyLabels => Reason::TooManyTags,
        _ => Reason::InvalidLabels,
    })?;
    let canonical = (line.kind, name, labels);
    let index = match src.canonical.get(&canonical) {
        Some(i) => *i,
        None => {
            if src.series.len() >= limits.max_series_per_source || *total >= limits.max_series_total {
                return Err(Reason::SeriesLimit);
            }
            *total += 1;
            let index = src.series.len() as u32;
            let (kind, name, labels) = canonical.clone();
            let state = match kind {
                Type::Counter => State::Counter { delta: 0, carry: 0.0 },
                Type::Gauge => State::Gauge { value: 0.0, dirty: false },
                Type::Set => State::Set { members: HashSet::default(), interval: 0, dirty: false },
                _ => State::Histogram { sketch: Sketch::default(), carry: 0.0 },
            };
            src.series.push(Series { name, labels, kind, defined: false, touched: false, state });
            src.canonical.insert(canonical, index);
            index
        }
    };
    src.keys.insert(key.into(), index);
    Ok(index)
}

/// The first refusals are logged, then at most [`LogLimiter::PER_MINUTE`]
/// a minute, with a count of those not logged.
#[derive(Default)]
struct LogLimiter {
    minute: u64,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    const PER_MINUTE: u32 = 10;

    fn log(&mut self, reason: Reason, line: &[u8], source: SourceKey, now_secs: u64) {
        let minute = now_secs / 60;
        if minute != self.minute {
            if self.suppressed > 0 {
                tracing::warn!("statsd: {} more lines refused in the last minute (not logged)", self.suppressed);
            }
            self.minute = minute;
            self.logged = 0;
            self.suppressed = 0;
        }
        if self.logged >= Self::PER_MINUTE {
            self.suppressed += 1;
            return;
        }
        self.logged += 1;
        let shown = String::from_utf8_lossy(&line[..line.len().min(128)]);
        tracing::warn!(reason = reason.as_str(), source = %source.1, "statsd: line refused: {:?}", shown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_sources: 4,
            max_series_per_source: 8,
            max_series_total: 100,
            max_set_size: 3,
            max_datagram_bytes: 1024,
            interval_secs: 10,
        }
    }

    fn src(port: u16) -> SourceKey {
        (Transport::Udp, IpAddr::from([127, 0, 0, port as u8]))
    }

    fn one_batch(acc: &mut Accumulator, now_secs: u64) -> pb::FlushRequest {
        let mut b = acc.take_batches(now_secs * 1_000_000_000);
        assert_eq!(b.len(), 1);
        b.remove(0).request
    }

    #[test]
    fn carries_make_weighted_totals_exact() {
        let mut carry = 0.0;
        let total: u64 = (0..1000).map(|_| take_whole(&mut carry, 3.0 / 0.1)).sum();
        assert_eq!(total, 30_000);
        let mut carry = 0.0;
        let total: u64 = (0..30).map(|_| take_whole(&mut carry, 1.0 / 0.3)).sum();
        assert_eq!(total, 100, "1/0.3 thirty times is 100: the fraction is carried");
        let mut carry = 0.0;
        let total: u64 = (0..1000).map(|_| take_whole(&mut carry, 0.7 / 0.1)).sum();
        assert_eq!(total, 7000);
    }

    #[test]
    fn lines_become_one_batch_with_definitions_once() {
        let mut acc = Accumulator::new(limits(), Arc::default());
        acc.ingest(src(1), b"a.b:1|c\na.b:2|c|@0.5\ng:5|g\ng:-2|g\nt:250|ms|#k:v\ns:x|s\ns:y|s\ns:x|s\n", 100);
        let b = one_batch(&mut acc, 100);
        assert_eq!(b.sequence, 1);
        assert!(b.instance_id.starts_with("statsd/udp/127.0.0.1/"), "{}", b.instance_id);
        assert_eq!(b.definitions.len(), 4);
        let name = |r: u32| b.definitions.iter().find(|d| d.r#ref == r).unwrap().name.clone();
        assert_eq!(b.counters.len(), 1);
        assert_eq!((name(b.counters[0].r#ref), b.counters[0].delta), ("a_b".to_string(), 5));
        let gauges: HashMap<String, f64> = b.gauges.iter().map(|g| (name(g.r#ref), g.value)).collect();
        assert_eq!(gauges, HashMap::from([("g".to_string(), 3.0), ("s".to_string(), 2.0)]));
        let h = &b.histograms[0];
        let d = b.definitions.iter().find(|d| d.r#ref == h.r#ref).unwrap();
        assert_eq!((d.name.as_str(), d.unit.as_str(), d.labels[0].key.as_str()), ("t", "seconds", "k"));
        let sketch = Sketch::try_from(h.sketch.as_ref().unwrap()).unwrap();
        assert_eq!(sketch.count(), 1);
        assert!((sketch.sum() - 0.25).abs() < 1e-12);
        // Next flush: refs only, and only what changed; the gauge delta
        // applies to the value kept across flushes.
        acc.ingest(src(1), b"a.b:1|c\ng:+1|g", 101);
        let b = one_batch(&mut acc, 101);
        assert_eq!((b.sequence, b.definitions.len(), b.counters.len(), b.gauges.len()), (2, 0, 1, 1));
        assert_eq!(b.gauges[0].value, 4.0);
        assert!(acc.take_batches(102_000_000_000).is_empty());
    }

    #[test]
    fn one_series_spelt_two_ways_is_one_series() {
        let mut acc = Accumulator::new(limits(), Arc::default());
        acc.ingest(src(1), b"x:1|c|#a:1,b:2\nx:1|c|#b:2,a:1\nx.y:1|c\nx_y:1|c", 0);
        let b = one_batch(&mut acc, 0);
        assert_eq!(b.definitions.len(), 2);
        assert_eq!(b.counters.iter().map(|c| c.delta).collect::<Vec<_>>(), vec![2, 2]);
    }

    #[test]
    fn limits_refuse_and_count() {
        let stats = Arc::new(StatsdStats::default());
        let mut acc = Accumulator::new(limits(), stats.clone());
        let lines: String = (0..20).map(|i| format!("m{i}:1|c\n")).collect();
        acc.ingest(src(1), lines.as_bytes(), 0);
        assert_eq!(stats.rejected(Reason::SeriesLimit), 12);
        acc.ingest(src(2), b"s:1|s\ns:2|s\ns:3|s\ns:4|s\ns:1|s", 0);
        assert_eq!(stats.rejected(Reason::SetFull), 1);
        for port in 3..=4 {
            acc.ingest(src(port), b"x:1|c", 0);
        }
        acc.ingest(src(5), b"x:1|c\nx:2|c", 0);
        assert_eq!(stats.rejected(Reason::SourceLimit), 2);
        acc.ingest(src(1), &[b'x'; 1025], 0);
        assert_eq!(stats.rejected(Reason::DatagramTooLarge), 1);
        acc.ingest(src(3), b"shoal.x:1|c\nx:1|c|#__a:1\nx:-1|c\nx:nan|g\nx:1|c|#a\nx:1:b|c\n\xff:1|c", 0);
        for r in [
            Reason::ReservedName,
            Reason::InvalidLabels,
            Reason::NegativeCounter,
            Reason::NonFinite,
            Reason::TagWithoutValue,
            Reason::BadValue,
            Reason::InvalidUtf8,
        ] {
            assert_eq!(stats.rejected(r), 1, "{r:?}");
        }
        // Idle sources are forgotten once flushed.
        acc.take_batches(0);
        acc.take_batches((SOURCE_IDLE_SECS + 1) * 1_000_000_000);
        assert_eq!(acc.source_count(), 0);
    }

    #[test]
    fn values_that_cannot_be_counted_exactly_are_refused_and_the_rest_merges() {
        let stats = Arc::new(StatsdStats::default());
        let mut acc = Accumulator::new(limits(), stats.clone());
        // A huge increment, a huge weight, a sum that would overflow: each
        // refused alone, never saturating a rollup shared with SDK series.
        acc.ingest(
            src(1),
            b"c:1e20|c
c:5|c
c:1|c|@1e-300
h:1e308|h
h:1e308|h
h:2|h
u:user:42|s
u:user:43|s",
            0,
        );
        assert_eq!(stats.rejected(Reason::BadValue), 1);
        assert_eq!(stats.rejected(Reason::BadRate), 1);
        assert_eq!(stats.rejected(Reason::NonFinite), 1);
        let b = one_batch(&mut acc, 0);
        assert_eq!(b.counters.iter().map(|c| c.delta).collect::<Vec<_>>(), vec![5]);
        let sketch = Sketch::try_from(b.histograms[0].sketch.as_ref().unwrap()).unwrap();
        assert_eq!((sketch.count(), sketch.sum().is_finite()), (2, true));
        // A set member is the whole value, colons included.
        assert_eq!(b.gauges.iter().map(|g| g.value).collect::<Vec<_>>(), vec![2.0]);
    }

    #[test]
    fn a_sketch_spanning_every_decade_stays_bounded() {
        let mut acc = Accumulator::new(limits(), Arc::default());
        for e in -300..300 {
            acc.ingest(src(1), format!("wide:1e{e}|h").as_bytes(), 0);
        }
        let b = one_batch(&mut acc, 0);
        let sketch = Sketch::try_from(b.histograms[0].sketch.as_ref().unwrap()).unwrap();
        assert_eq!(sketch.count(), 600);
        assert!(sketch.positive().len() <= MAX_DECODED_SPAN, "{}", sketch.positive().len());
    }

    #[test]
    fn batches_given_back_come_again_in_order() {
        let mut acc = Accumulator::new(limits(), Arc::default());
        acc.ingest(src(1), b"a:1|c", 0);
        let first = one_batch(&mut acc, 0);
        acc.ingest(src(1), b"a:2|c", 0);
        let second = one_batch(&mut acc, 0);
        acc.give_back(src(1), first);
        acc.give_back(src(1), second);
        acc.ingest(src(1), b"a:4|c", 0);
        let again: Vec<(u64, u64)> = acc.take_batches(0).into_iter().map(|b| (b.request.sequence, b.request.counters[0].delta)).collect();
        assert_eq!(again, vec![(1, 1), (2, 2), (3, 4)]);
    }

    #[test]
    fn sets_count_distinct_members_per_interval() {
        let mut acc = Accumulator::new(limits(), Arc::default());
        acc.ingest(src(1), b"u:a|s\nu:b|s\nu:a|s", 5);
        assert_eq!(one_batch(&mut acc, 5).gauges[0].value, 2.0);
        acc.ingest(src(1), b"u:a|s", 9);
        assert_eq!(one_batch(&mut acc, 9).gauges[0].value, 2.0, "same interval: still two members");
        acc.ingest(src(1), b"u:c|s", 10);
        assert_eq!(one_batch(&mut acc, 10).gauges[0].value, 1.0, "a new interval starts empty");
    }
}

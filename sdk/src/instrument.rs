//! Runtime support for shoal's instrumentation macros: `#[derive(Metrics)]`,
//! `#[derive(LabelSet)]` and `#[timed]` (re-exported at the crate root).
//!
//! # Structs of handles: `#[derive(Metrics)]`
//!
//! Each field is registered once by the generated constructor, so the hot
//! path is a plain handle call. A field can be a shoal handle
//! ([`Counter`](crate::Counter), [`Gauge`](crate::Gauge),
//! [`Histogram`](crate::Histogram)), a `metrics` handle, or a [`Family`] of
//! either: one handle per value of a [`LabelSet`], picked by an array index
//! instead of a hash lookup.
//!
//! ```
//! use shoal::instrument::Family;
//! use shoal::{LabelSet, Metrics};
//!
//! #[derive(Clone, Copy, LabelSet)]
//! enum Method {
//!     Get,
//!     Post,
//! }
//!
//! #[derive(Metrics)]
//! #[metrics(prefix = "http")]
//! struct HttpMetrics {
//!     /// Requests served, by method.
//!     requests_total: Family<Method, shoal::Counter>,
//!     #[metric(unit = "seconds", description = "Time to serve a request")]
//!     request_duration: shoal::Histogram,
//! }
//!
//! let shoal = shoal::Shoal::builder().build()?;
//! let m = HttpMetrics::register(&shoal);
//! m.requests_total.get(Method::Get).increment(1);
//! m.request_duration.record(0.012);
//!
//! let text = shoal.render_prometheus();
//! assert!(text.contains("# HELP http_requests_total Requests served, by method."));
//! assert!(text.contains("http_requests_total{method=\"get\"} 1"));
//! assert!(text.contains("http_requests_total{method=\"post\"} 0"));
//! assert!(text.contains("# HELP http_request_duration Time to serve a request (unit: seconds)"));
//! # Ok::<(), shoal::Error>(())
//! ```
//!
//! # Timed functions: `#[timed]`
//!
//! `#[timed]` counts the calls of a function by outcome and records their
//! duration, through a [`Callsite`] the macro puts in a `static` inside the
//! function. See [`Callsite`] for how handles are cached.

use crate::handles::{Counter, Gauge, Histogram};
use crate::Shoal;
use metrics::{Key, KeyName, Label, Recorder, SharedString, Unit};
use quanta::Instant;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use std::task::{Context, Poll};

// ---------------------------------------------------------------------------
// #[derive(Metrics)]: field types
// ---------------------------------------------------------------------------

/// What kind of metric a handle records (decides which `describe_*` is used).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic counter.
    Counter,
    /// A gauge.
    Gauge,
    /// A histogram.
    Histogram,
}

/// A field type that `#[derive(Metrics)]` can register with a [`Shoal`].
///
/// Implemented for shoal's and `metrics`' counter, gauge and histogram
/// handles, and for [`Family`] of any of them.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a metric handle that #[derive(Metrics)] can register",
    label = "not a metric handle",
    note = "fields of a #[derive(Metrics)] struct must be `shoal::Counter`, `shoal::Gauge`, `shoal::Histogram`, \
            `metrics::Counter`, `metrics::Gauge`, `metrics::Histogram` or a `shoal::instrument::Family` of one of them"
)]
pub trait Metric: Sized {
    /// The kind of metric.
    const KIND: MetricKind;

    /// Registers the series `name{labels}` with `shoal`.
    fn register(shoal: &Shoal, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self;
}

/// A field type that can also be registered through any `metrics` recorder
/// (the global one, or a local one): what `register_global` and
/// `register_with` of a `#[derive(Metrics)]` struct need.
///
/// shoal's own handles are not: they can only come from a [`Shoal`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be registered through a `metrics` recorder",
    label = "`register_global` and `register_with` need every field to be a `metrics` handle",
    note = "shoal's own handles (`shoal::Counter`, ...) can only be registered with `register(&shoal)`; \
            use `metrics::Counter`, `metrics::Gauge` or `metrics::Histogram` fields to register through the global recorder"
)]
pub trait RecorderMetric: Metric {
    /// Registers the series `name{labels}` with `recorder`.
    fn register_with(recorder: &dyn Recorder, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self;
}

fn facade_key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    Key::from_parts(name, labels.iter().map(|&(k, v)| Label::from_static_parts(k, v)).collect::<Vec<_>>())
}

fn static_metadata() -> metrics::Metadata<'static> {
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, None)
}

macro_rules! handle_metric {
    ($shoal_ty:ty, $facade_ty:ty, $kind:ident, $shoal_fn:ident, $register:ident) => {
        impl Metric for $shoal_ty {
            const KIND: MetricKind = MetricKind::$kind;
            fn register(shoal: &Shoal, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
                shoal.$shoal_fn(name, labels)
            }
        }

        impl Metric for $facade_ty {
            const KIND: MetricKind = MetricKind::$kind;
            fn register(shoal: &Shoal, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
                <Self as RecorderMetric>::register_with(shoal, name, labels)
            }
        }

        impl RecorderMetric for $facade_ty {
            fn register_with(recorder: &dyn Recorder, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
                recorder.$register(&facade_key(name, labels), &static_metadata())
            }
        }
    };
}

handle_metric!(Counter, metrics::Counter, Counter, counter, register_counter);
handle_metric!(Gauge, metrics::Gauge, Gauge, gauge, register_gauge);
handle_metric!(Histogram, metrics::Histogram, Histogram, histogram, register_histogram);

/// Describes a metric (unit and help text) to a recorder, as the `metrics`
/// `describe_*!` macros do. Used by the generated constructors.
pub fn describe(recorder: &dyn Recorder, kind: MetricKind, name: &'static str, unit: Option<&'static str>, description: &'static str) {
    let unit = unit.and_then(Unit::from_string);
    let text = SharedString::const_str(description);
    let key = KeyName::from_const_str(name);
    match kind {
        MetricKind::Counter => recorder.describe_counter(key, unit, text),
        MetricKind::Gauge => recorder.describe_gauge(key, unit, text),
        MetricKind::Histogram => recorder.describe_histogram(key, unit, text),
    }
}

// ---------------------------------------------------------------------------
// Label sets and families
// ---------------------------------------------------------------------------

/// A label set of fixed cardinality: every value maps to an index in
/// `0..CARDINALITY`, so a [`Family`] finds its handle with an array index.
///
/// Derive it (`#[derive(LabelSet)]`) for a fieldless enum (one label; the key
/// is the enum's name in snake case unless `#[label(key = "...")]` says
/// otherwise, the values are the variants' names in snake case unless
/// `#[label(value = "...")]` or `#[label(rename_all = "...")]` says
/// otherwise) or for a struct whose fields are label sets (their labels
/// together; the cardinality is the product).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a label set",
    label = "not a label set",
    note = "derive `shoal::LabelSet` for a fieldless enum, or for a struct whose fields are label sets"
)]
pub trait LabelSet {
    /// Number of distinct values.
    const CARDINALITY: usize;

    /// Index of this value, in `0..CARDINALITY`.
    fn index(&self) -> usize;

    /// Appends the labels of the value with index `index` to `out`.
    fn labels_at(index: usize, out: &mut Vec<(&'static str, &'static str)>);
}

/// One handle per value of the label set `L`, registered up front:
/// `family.get(Method::Get)` (or `family[Method::Get]`) is an array index,
/// with no hashing and no lock.
///
/// Label values only known at run time still work through the `metrics`
/// facade (`metrics::counter!("name", "key" => value)`).
pub struct Family<L, H> {
    handles: Box<[H]>,
    _labels: PhantomData<fn(L)>,
}

impl<L: LabelSet, H> Family<L, H> {
    /// Builds a family by calling `make` with the labels of every value.
    pub fn from_fn(mut make: impl FnMut(&[(&'static str, &'static str)]) -> H) -> Self {
        let mut labels = Vec::new();
        let handles = (0..L::CARDINALITY)
            .map(|i| {
                labels.clear();
                L::labels_at(i, &mut labels);
                make(&labels)
            })
            .collect();
        Family { handles, _labels: PhantomData }
    }

    /// The handle of `labels`.
    #[inline]
    pub fn get(&self, labels: L) -> &H {
        &self.handles[labels.index()]
    }

    /// Every handle with its labels, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Vec<(&'static str, &'static str)>, &H)> + '_ {
        self.handles.iter().enumerate().map(|(i, h)| {
            let mut labels = Vec::new();
            L::labels_at(i, &mut labels);
            (labels, h)
        })
    }

    /// Number of handles (`L::CARDINALITY`).
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True if `L` has no value.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl<L: LabelSet, H> std::ops::Index<L> for Family<L, H> {
    type Output = H;

    #[inline]
    fn index(&self, labels: L) -> &H {
        self.get(labels)
    }
}

impl<L, H: Clone> Clone for Family<L, H> {
    fn clone(&self) -> Self {
        Family { handles: self.handles.clone(), _labels: PhantomData }
    }
}

fn with_labels<R>(
    fixed: &[(&'static str, &'static str)],
    varying: &[(&'static str, &'static str)],
    f: impl FnOnce(&[(&'static str, &'static str)]) -> R,
) -> R {
    let mut all = Vec::with_capacity(fixed.len() + varying.len());
    all.extend_from_slice(fixed);
    all.extend_from_slice(varying);
    f(&all)
}

impl<L: LabelSet, H: Metric> Metric for Family<L, H> {
    const KIND: MetricKind = H::KIND;

    fn register(shoal: &Shoal, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        Family::from_fn(|varying| with_labels(labels, varying, |all| H::register(shoal, name, all)))
    }
}

impl<L: LabelSet, H: RecorderMetric> RecorderMetric for Family<L, H> {
    fn register_with(recorder: &dyn Recorder, name: &'static str, labels: &[(&'static str, &'static str)]) -> Self {
        Family::from_fn(|varying| with_labels(labels, varying, |all| H::register_with(recorder, name, all)))
    }
}

/// Cardinality of a product of label sets, checked at compile time by the
/// derive (an overflow fails the build).
#[doc(hidden)]
pub const fn checked_product(a: usize, b: usize) -> usize {
    match a.checked_mul(b) {
        Some(p) => p,
        None => panic!("LabelSet cardinality overflows usize"),
    }
}

// ---------------------------------------------------------------------------
// #[timed]
// ---------------------------------------------------------------------------

/// How a timed call ended: the `result` label of its call counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Outcome {
    /// Returned (for a `Result`, returned `Ok`).
    Ok = 0,
    /// Returned `Err`.
    Error = 1,
    /// Unwound with a panic.
    Panic = 2,
    /// An `async fn` whose future was dropped before it completed.
    Cancelled = 3,
}

impl Outcome {
    /// Every outcome, in index order.
    pub const ALL: [Outcome; 4] = [Outcome::Ok, Outcome::Error, Outcome::Panic, Outcome::Cancelled];

    /// The `result` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Panic => "panic",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The handles one timed call records into.
struct Handles {
    calls: [metrics::Counter; 4],
    duration: metrics::Histogram,
    in_flight: Option<metrics::Gauge>,
}

/// The labels of a callsite's call counter, by [`Outcome`] index:
/// `function`, `module`, `result`.
pub const fn call_labels(function: &'static str, module: &'static str) -> [[Label; 3]; 4] {
    const fn labels(function: &'static str, module: &'static str, result: Outcome) -> [Label; 3] {
        [
            Label::from_static_parts("function", function),
            Label::from_static_parts("module", module),
            Label::from_static_parts("result", result.as_str()),
        ]
    }
    [
        labels(function, module, Outcome::Ok),
        labels(function, module, Outcome::Error),
        labels(function, module, Outcome::Panic),
        labels(function, module, Outcome::Cancelled),
    ]
}

/// The labels of a callsite's duration histogram and in-flight gauge:
/// `function`, `module`.
pub const fn base_labels(function: &'static str, module: &'static str) -> [Label; 2] {
    [Label::from_static_parts("function", function), Label::from_static_parts("module", module)]
}

/// The static state of one `#[timed]` function: its series keys, and its
/// handles once registered with the global recorder.
///
/// On each call, [`Callsite::start`] asks the `metrics` facade for the
/// current recorder. When it is the installed global recorder, the handles
/// registered on the first call are reused (the global recorder never
/// changes or goes away), so a call costs two clock reads and three handle
/// updates, with no lookup. Under a local recorder
/// (`metrics::with_local_recorder`, as in tests) the handles are registered
/// on every call instead: slower, but a recorder dropped and replaced by
/// another at the same address can never be confused with it.
///
/// Outcomes that cannot happen are not registered: `error` only for
/// functions returning a `Result`, `cancelled` only for `async fn`.
pub struct Callsite {
    calls_name: &'static str,
    duration_name: &'static str,
    in_flight_name: Option<&'static str>,
    calls: [Key; 4],
    duration: Key,
    in_flight: Option<Key>,
    is_async: bool,
    global: OnceLock<Handles>,
}

impl Callsite {
    /// A callsite: the call counter `calls` with `call_labels`, by
    /// [`Outcome`] index (see [`call_labels`]); the duration histogram
    /// `duration` and, if named, the in-flight gauge `in_flight`, both with
    /// `labels` (see [`base_labels`]).
    pub const fn new(
        calls: &'static str,
        duration: &'static str,
        in_flight: Option<&'static str>,
        call_labels: &'static [[Label; 3]; 4],
        labels: &'static [Label; 2],
        is_async: bool,
    ) -> Callsite {
        Callsite {
            calls_name: calls,
            duration_name: duration,
            in_flight_name: in_flight,
            calls: [
                Key::from_static_parts(calls, &call_labels[0]),
                Key::from_static_parts(calls, &call_labels[1]),
                Key::from_static_parts(calls, &call_labels[2]),
                Key::from_static_parts(calls, &call_labels[3]),
            ],
            duration: Key::from_static_parts(duration, labels),
            in_flight: match in_flight {
                Some(name) => Some(Key::from_static_parts(name, labels)),
                None => None,
            },
            is_async,
            global: OnceLock::new(),
        }
    }

    /// Name of the call counter.
    pub fn calls_name(&self) -> &'static str {
        self.calls_name
    }

    /// Name of the duration histogram.
    pub fn duration_name(&self) -> &'static str {
        self.duration_name
    }

    /// Name of the in-flight gauge, if any.
    pub fn in_flight_name(&self) -> Option<&'static str> {
        self.in_flight_name
    }

    fn register(&self, recorder: &dyn Recorder, can_fail: bool) -> Handles {
        let meta = static_metadata();
        let possible = |o: Outcome| match o {
            Outcome::Ok | Outcome::Panic => true,
            Outcome::Error => can_fail,
            Outcome::Cancelled => self.is_async,
        };
        let calls = Outcome::ALL.map(|o| {
            if possible(o) {
                recorder.register_counter(&self.calls[o as usize], &meta)
            } else {
                metrics::Counter::noop()
            }
        });
        Handles {
            calls,
            duration: recorder.register_histogram(&self.duration, &meta),
            in_flight: self.in_flight.as_ref().map(|k| recorder.register_gauge(k, &meta)),
        }
    }

    fn describe(&self, recorder: &dyn Recorder) {
        recorder.describe_counter(
            KeyName::from_const_str(self.calls_name),
            None,
            SharedString::const_str(
                "Calls of functions instrumented with #[timed], by function, module and result (ok, error, panic, cancelled)",
            ),
        );
        recorder.describe_histogram(
            KeyName::from_const_str(self.duration_name),
            Some(Unit::Seconds),
            SharedString::const_str("Duration of calls of functions instrumented with #[timed], by function and module"),
        );
        if let Some(name) = self.in_flight_name {
            recorder.describe_gauge(
                KeyName::from_const_str(name),
                None,
                SharedString::const_str("Calls in progress of functions instrumented with #[timed(concurrency)], by function and module"),
            );
        }
    }

    /// Starts timing a call. `can_fail`: whether the function returns a
    /// `Result` (so that an `error` counter is registered).
    #[inline]
    pub fn start(&'static self, can_fail: bool) -> TimedGuard {
        let handles = metrics::with_recorder(|recorder| {
            let addr = data_address(recorder);
            if is_global_recorder(recorder, addr) {
                HandlesRef::Global(self.global.get_or_init(|| {
                    self.describe(recorder);
                    self.register(recorder, can_fail)
                }))
            } else {
                // A local recorder (tests): describe every time. Remembering
                // the last address described to is not enough: another
                // recorder can take the same address, or another thread can
                // describe to its own recorder in between.
                self.describe(recorder);
                HandlesRef::Local(self.register(recorder, can_fail))
            }
        });
        if let Some(g) = &handles.get().in_flight {
            g.increment(1.0);
        }
        TimedGuard { handles, start: Instant::now(), is_async: self.is_async, done: false }
    }
}

enum HandlesRef {
    Global(&'static Handles),
    Local(Handles),
}

impl HandlesRef {
    #[inline]
    fn get(&self) -> &Handles {
        match self {
            HandlesRef::Global(h) => h,
            HandlesRef::Local(h) => h,
        }
    }
}

/// Records one timed call when finished or dropped: its duration, its
/// outcome, and the in-flight gauge back down.
#[must_use = "a timed guard records when finished or dropped"]
pub struct TimedGuard {
    handles: HandlesRef,
    start: Instant,
    is_async: bool,
    done: bool,
}

impl TimedGuard {
    /// Records the call as returned: `error` if `is_error`, else `ok`.
    #[inline]
    pub fn finish(mut self, is_error: bool) {
        self.record(if is_error { Outcome::Error } else { Outcome::Ok });
    }

    /// Records the call with `outcome`.
    #[inline]
    pub fn finish_with(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    #[inline]
    fn record(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed().as_secs_f64();
        let h = self.handles.get();
        h.duration.record(elapsed);
        h.calls[outcome as usize].increment(1);
        if let Some(g) = &h.in_flight {
            g.decrement(1.0);
        }
    }
}

impl Drop for TimedGuard {
    #[inline]
    fn drop(&mut self) {
        if !self.done {
            // A sync call drops its guard unfinished only while unwinding. An
            // async call's guard is dropped unfinished with its future
            // (cancelled); a panic inside its poll is recorded by
            // `TimedFuture` while it unwinds.
            let outcome = if !self.is_async && std::thread::panicking() { Outcome::Panic } else { Outcome::Cancelled };
            self.record(outcome);
        }
    }
}

fn data_address(recorder: &dyn Recorder) -> usize {
    recorder as *const dyn Recorder as *const () as usize
}

/// Data address of the installed global recorder, once seen (0: not yet).
static GLOBAL_RECORDER: AtomicUsize = AtomicUsize::new(0);
/// Earliest time (ms since `probe_epoch`) of the next probe.
static NEXT_PROBE_MS: AtomicU64 = AtomicU64::new(0);

fn probe_epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// Whether `recorder` is the installed global recorder.
///
/// `metrics` does not tell whether the recorder it hands out is the global
/// one or a thread's local one. The global one is set once and never freed,
/// so once its address is known, comparing addresses answers for good. It is
/// learned by asking for the current recorder on a fresh thread, which has no
/// local recorder: at most once a second, and only while no global recorder
/// has been seen and the current one is not the no-op recorder (zero-sized).
#[inline]
fn is_global_recorder(recorder: &dyn Recorder, addr: usize) -> bool {
    let global = GLOBAL_RECORDER.load(Relaxed);
    if global != 0 {
        return global == addr;
    }
    if std::mem::size_of_val(recorder) == 0 {
        return false;
    }
    probe_global_recorder() == addr
}

#[cold]
fn probe_global_recorder() -> usize {
    let now = probe_epoch().elapsed().as_millis() as u64;
    let next = NEXT_PROBE_MS.load(Relaxed);
    if now < next || NEXT_PROBE_MS.compare_exchange(next, now + 1000, Relaxed, Relaxed).is_err() {
        return GLOBAL_RECORDER.load(Relaxed);
    }
    let found = std::thread::Builder::new()
        .name("shoal-recorder-probe".into())
        .spawn(|| metrics::with_recorder(|r| if std::mem::size_of_val(r) == 0 { 0 } else { data_address(r) }))
        .ok()
        .and_then(|t| t.join().ok())
        .unwrap_or(0);
    if found != 0 {
        GLOBAL_RECORDER.store(found, Relaxed);
    }
    found
}

/// Calls `f` once: the body of a timed sync function, so that its `return`s
/// and `?`s come back here.
#[inline(always)]
pub fn call_once<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// The body of a timed `async fn`: times it until it completes, records
/// `panic` if a poll unwinds and `cancelled` if it is dropped unfinished.
#[must_use = "futures do nothing unless polled"]
pub struct TimedFuture<F, C> {
    inner: F,
    guard: Option<TimedGuard>,
    classify: C,
}

impl<F: Future, C: Fn(&F::Output) -> bool> TimedFuture<F, C> {
    /// Starts timing now; `classify` tells whether an output is an error.
    #[inline]
    pub fn new(callsite: &'static Callsite, can_fail: bool, inner: F, classify: C) -> Self {
        TimedFuture { guard: Some(callsite.start(can_fail)), inner, classify }
    }
}

/// Builds a [`TimedFuture`] whose output type is named (so that `?` in the
/// body infers its error type from the function's return type).
#[inline]
pub fn timed_future<R, F: Future<Output = R>, C: Fn(&R) -> bool>(
    callsite: &'static Callsite,
    can_fail: bool,
    inner: F,
    classify: C,
) -> TimedFuture<F, C> {
    TimedFuture::new(callsite, can_fail, inner, classify)
}

impl<F: Future, C: Fn(&F::Output) -> bool> Future for TimedFuture<F, C> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `inner` is structurally pinned: it is never moved out of
        // `self`, and `Drop` does not move it. `guard` and `classify` are not
        // pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let inner = unsafe { Pin::new_unchecked(&mut this.inner) };

        // If the poll unwinds, record `panic` now: executors that catch the
        // panic drop the future later, when nothing is unwinding any more.
        struct OnUnwind<'a>(&'a mut Option<TimedGuard>);
        impl Drop for OnUnwind<'_> {
            fn drop(&mut self) {
                if let Some(g) = self.0.take() {
                    g.finish_with(Outcome::Panic);
                }
            }
        }
        let bomb = OnUnwind(&mut this.guard);
        let polled = inner.poll(cx);
        let guard = bomb.0.take();
        std::mem::forget(bomb);
        match polled {
            Poll::Ready(out) => {
                if let Some(g) = guard {
                    g.finish((this.classify)(&out));
                }
                Poll::Ready(out)
            }
            Poll::Pending => {
                this.guard = guard;
                Poll::Pending
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Telling a `Result` from anything else, without specialization
// ---------------------------------------------------------------------------

/// Type-level probe: `(&Probe::<T>::new()).is_error(&value)` resolves to
/// [`ResultOutcome`] when `T` is a `Result` and to [`PlainOutcome`]
/// otherwise (autoref specialization; type aliases of `Result` count).
pub struct Probe<T: ?Sized>(PhantomData<fn(&T)>);

impl<T: ?Sized> Probe<T> {
    /// A probe.
    #[inline(always)]
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T: ?Sized> Default for Probe<T> {
    fn default() -> Self {
        Probe::new()
    }
}

/// Outcome of a `Result`-returning function: see [`Probe`].
pub trait ResultOutcome {
    /// The value type.
    type Value;
    /// A `Result` can be an error.
    #[inline(always)]
    fn can_fail(&self) -> bool {
        true
    }
    /// `Err` is an error.
    fn is_error(&self, value: &Self::Value) -> bool;
}

impl<T, E> ResultOutcome for Probe<Result<T, E>> {
    type Value = Result<T, E>;
    #[inline(always)]
    fn is_error(&self, value: &Result<T, E>) -> bool {
        value.is_err()
    }
}

/// Outcome of any other function: always `ok`. See [`Probe`].
pub trait PlainOutcome {
    /// The value type.
    type Value: ?Sized;
    /// Never an error.
    #[inline(always)]
    fn can_fail(&self) -> bool {
        false
    }
    /// Never an error.
    #[inline(always)]
    fn is_error(&self, _value: &Self::Value) -> bool {
        false
    }
}

impl<T: ?Sized> PlainOutcome for &Probe<T> {
    type Value = T;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Method {
        Get,
        Post,
        Put,
    }

    impl LabelSet for Method {
        const CARDINALITY: usize = 3;
        fn index(&self) -> usize {
            *self as usize
        }
        fn labels_at(index: usize, out: &mut Vec<(&'static str, &'static str)>) {
            out.push(("method", ["get", "post", "put"][index]));
        }
    }

    #[test]
    fn family_registers_every_value_and_indexes_directly() {
        let shoal = Shoal::builder().build().unwrap();
        let family: Family<Method, Counter> = Metric::register(&shoal, "req_total", &[("svc", "api")]);
        assert_eq!(family.len(), 3);
        family.get(Method::Get).increment(2);
        family[Method::Put].increment(5);
        let d = shoal.take_deltas();
        assert_eq!(d.counter(r#"req_total{method="get",svc="api"}"#), Some(2));
        assert_eq!(d.counter(r#"req_total{method="put",svc="api"}"#), Some(5));
        assert_eq!(d.counter(r#"req_total{method="post",svc="api"}"#), None);
        let text = shoal.render_prometheus();
        assert!(text.contains(r#"req_total{method="post",svc="api"} 0"#), "{text}");
        let labels: Vec<_> = family.iter().map(|(l, _)| l).collect();
        assert_eq!(labels[1], vec![("method", "post")]);
    }

    #[test]
    fn family_of_facade_handles_through_a_recorder() {
        let shoal = Shoal::builder().build().unwrap();
        let family: Family<Method, metrics::Histogram> = RecorderMetric::register_with(&shoal, "lat", &[]);
        family.get(Method::Post).record(0.5);
        let d = shoal.take_deltas();
        assert_eq!(d.histogram(r#"lat{method="post"}"#).map(|s| s.count()), Some(1));
    }

    #[test]
    fn describe_reaches_help() {
        let shoal = Shoal::builder().build().unwrap();
        describe(&shoal, MetricKind::Gauge, "queue_depth", Some("count"), "Jobs waiting");
        shoal.gauge("queue_depth", &[]).set(3.0);
        assert!(shoal.render_prometheus().contains("# HELP queue_depth Jobs waiting (unit: count)"));
    }

    static LABELS: [[Label; 3]; 4] = call_labels("work", "tests");
    static BASE: [Label; 2] = base_labels("work", "tests");
    static CALLSITE: Callsite = Callsite::new("t_calls_total", "t_duration_seconds", Some("t_in_flight"), &LABELS, &BASE, true);

    #[test]
    fn guard_records_outcomes_under_a_local_recorder() {
        let shoal = Shoal::builder().build().unwrap();
        metrics::with_local_recorder(&shoal, || {
            CALLSITE.start(true).finish(false);
            CALLSITE.start(true).finish(true);
            let g = CALLSITE.start(true);
            assert_eq!(shoal.take_deltas().gauge(r#"t_in_flight{function="work",module="tests"}"#), Some(1.0));
            drop(g);
        });
        let calls = |r: &str| shoal.counter_value(&format!(r#"t_calls_total{{function="work",module="tests",result="{r}"}}"#));
        // `panic` is registered (at 0), `error` and `cancelled` counted once.
        assert_eq!((calls("ok"), calls("error"), calls("cancelled"), calls("panic")), (Some(1), Some(1), Some(1), Some(0)));
        let d = shoal.take_deltas();
        assert_eq!(d.histogram(r#"t_duration_seconds{function="work",module="tests"}"#).map(|s| s.count()), Some(1));
        assert_eq!(shoal.histogram_snapshot(r#"t_duration_seconds{function="work",module="tests"}"#).map(|s| s.count()), Some(3));
        assert_eq!(d.gauge(r#"t_in_flight{function="work",module="tests"}"#), Some(0.0));
        let text = shoal.render_prometheus();
        assert!(text.contains("# HELP t_duration_seconds Duration of calls"), "{text}");
    }

    #[test]
    fn a_panicking_poll_records_panic() {
        struct Boom;
        impl Future for Boom {
            type Output = ();
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
                panic!("boom")
            }
        }
        let shoal = Shoal::builder().build().unwrap();
        metrics::with_local_recorder(&shoal, || {
            let mut fut = Box::pin(timed_future::<(), _, _>(&CALLSITE, false, Boom, |_| false));
            let waker = std::task::Waker::from(std::sync::Arc::new(NoWake));
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = fut.as_mut().poll(&mut Context::from_waker(&waker));
            }));
            assert!(r.is_err());
            drop(fut); // after the panic was caught: must not count as cancelled
        });
        let d = shoal.take_deltas();
        assert_eq!(d.counter(r#"t_calls_total{function="work",module="tests",result="panic"}"#), Some(1));
        assert_eq!(d.counter(r#"t_calls_total{function="work",module="tests",result="cancelled"}"#), None);
    }

    struct NoWake;
    impl std::task::Wake for NoWake {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    #[test]
    #[allow(clippy::needless_borrow)] // the borrow is what picks the impl
    fn probe_tells_results_apart() {
        #[allow(unused_imports)]
        use super::{PlainOutcome as _, ResultOutcome as _};
        type IoResult = std::io::Result<u8>;
        assert!((&Probe::<IoResult>::new()).can_fail());
        assert!((&Probe::<Result<(), ()>>::new()).is_error(&Err(())));
        assert!(!(&Probe::<Option<u8>>::new()).can_fail());
        assert!(!(&Probe::<u8>::new()).is_error(&3));
    }

    #[test]
    fn the_noop_recorder_is_never_taken_for_the_global_one() {
        metrics::with_local_recorder(&metrics::NoopRecorder, || CALLSITE.start(false).finish(false));
        assert!(!is_global_recorder(&metrics::NoopRecorder, data_address(&metrics::NoopRecorder)));
    }
}

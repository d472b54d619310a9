//! `#[timed]` under a local recorder: every function shape, every outcome,
//! read back from the recorder.

use shoal::{timed, Shoal};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

const MODULE: &str = module_path!();

fn calls(shoal: &Shoal, prefix: &str, function: &str, result: &str) -> Option<u64> {
    shoal.counter_value(&format!(r#"{prefix}_calls_total{{function="{function}",module="{MODULE}",result="{result}"}}"#))
}

fn durations(shoal: &Shoal, prefix: &str, function: &str) -> u64 {
    shoal
        .histogram_snapshot(&format!(r#"{prefix}_duration_seconds{{function="{function}",module="{MODULE}"}}"#))
        .map(|s| s.count())
        .unwrap_or(0)
}

fn local<T>(f: impl FnOnce() -> T) -> (Shoal, T) {
    let shoal = Shoal::builder().build().unwrap();
    let out = metrics::with_local_recorder(&shoal, f);
    (shoal, out)
}

#[timed]
fn add(a: u32, b: u32) -> u32 {
    a + b
}

#[test]
fn free_function_counts_calls_and_durations() {
    let (shoal, sum) = local(|| (0..5).map(|i| add(i, 1)).sum::<u32>());
    assert_eq!(sum, 15);
    assert_eq!(calls(&shoal, "function", "add", "ok"), Some(5));
    assert_eq!(calls(&shoal, "function", "add", "panic"), Some(0));
    // Outcomes that cannot happen are not registered.
    assert_eq!(calls(&shoal, "function", "add", "error"), None);
    assert_eq!(calls(&shoal, "function", "add", "cancelled"), None);
    assert_eq!(durations(&shoal, "function", "add"), 5);
    let deltas = shoal.take_deltas();
    assert_eq!(deltas.counter(&format!(r#"function_calls_total{{function="add",module="{MODULE}",result="ok"}}"#)), Some(5));
}

#[derive(Debug, PartialEq)]
struct ParseError;

fn parse(s: &str) -> Result<u32, ParseError> {
    s.parse().map_err(|_| ParseError)
}

#[timed]
fn double(s: &str) -> Result<u32, ParseError> {
    if s.is_empty() {
        return Ok(0); // early return
    }
    let n = parse(s)?; // `?` returns the error
    Ok(n * 2)
}

type MyResult<T> = std::result::Result<T, ParseError>;

#[timed]
fn via_alias(fail: bool) -> MyResult<()> {
    if fail {
        Err(ParseError)
    } else {
        Ok(())
    }
}

#[test]
fn results_early_returns_and_question_mark() {
    let (shoal, ()) = local(|| {
        assert_eq!(double("21"), Ok(42));
        assert_eq!(double(""), Ok(0));
        assert_eq!(double("x"), Err(ParseError));
        assert_eq!(double("y"), Err(ParseError));
        assert_eq!(double("z"), Err(ParseError));
        assert!(via_alias(true).is_err());
        assert!(via_alias(false).is_ok());
    });
    assert_eq!(calls(&shoal, "function", "double", "ok"), Some(2));
    assert_eq!(calls(&shoal, "function", "double", "error"), Some(3));
    assert_eq!(durations(&shoal, "function", "double"), 5);
    assert_eq!(calls(&shoal, "function", "via_alias", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "via_alias", "error"), Some(1));
}

#[timed]
fn explode(n: u32) -> u32 {
    if n > 0 {
        panic!("boom");
    }
    n
}

#[test]
fn unwinding_panics_are_recorded() {
    let (shoal, ()) = local(|| {
        let r = std::panic::catch_unwind(|| explode(1));
        assert!(r.is_err());
        assert_eq!(explode(0), 0);
    });
    assert_eq!(calls(&shoal, "function", "explode", "panic"), Some(1));
    assert_eq!(calls(&shoal, "function", "explode", "ok"), Some(1));
    assert_eq!(durations(&shoal, "function", "explode"), 2);
}

struct Store {
    items: Vec<String>,
}

impl Store {
    #[timed]
    fn push(&mut self, item: &str) -> usize {
        self.items.push(item.to_string());
        self.items.len()
    }

    #[timed(name = "store")]
    fn first(&self) -> Option<&str> {
        self.items.first().map(|s| s.as_str())
    }

    #[timed]
    fn items_mut(&mut self) -> &mut Vec<String> {
        &mut self.items
    }

    #[timed]
    fn into_items(self) -> Vec<String> {
        self.items
    }
}

trait Greeter {
    fn greet(&self) -> String;
}

impl Greeter for Store {
    #[timed]
    fn greet(&self) -> String {
        format!("{} items", self.items.len())
    }
}

#[test]
fn methods_and_trait_methods() {
    let (shoal, ()) = local(|| {
        let mut s = Store { items: vec![] };
        assert_eq!(s.push("a"), 1);
        assert_eq!(s.push("b"), 2);
        assert_eq!(s.first(), Some("a"));
        s.items_mut().push("c".into());
        assert_eq!(s.greet(), "3 items");
        assert_eq!(s.into_items().len(), 3);
    });
    assert_eq!(calls(&shoal, "function", "push", "ok"), Some(2));
    assert_eq!(calls(&shoal, "store", "first", "ok"), Some(1));
    assert_eq!(durations(&shoal, "store", "first"), 1);
    assert_eq!(calls(&shoal, "function", "items_mut", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "greet", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "into_items", "ok"), Some(1));
}

#[timed]
fn largest<T: PartialOrd + Copy>(items: &[T]) -> Option<T> {
    let mut best = *items.first()?;
    for &x in items {
        if x > best {
            best = x;
        }
    }
    Some(best)
}

#[timed]
fn evens(n: u32) -> impl Iterator<Item = u32> {
    (0..n).filter(|x| x % 2 == 0)
}

#[test]
fn generic_and_impl_trait_functions() {
    let (shoal, ()) = local(|| {
        assert_eq!(largest(&[1, 5, 3]), Some(5));
        assert_eq!(largest(&[1.5, 0.5]), Some(1.5));
        assert_eq!(largest::<u8>(&[]), None);
        assert_eq!(evens(5).count(), 3);
    });
    // All monomorphizations share one series.
    assert_eq!(calls(&shoal, "function", "largest", "ok"), Some(3));
    assert_eq!(calls(&shoal, "function", "evens", "ok"), Some(1));
}

#[timed(concurrency)]
fn in_flight(shoal: &Shoal) -> f64 {
    shoal.take_deltas().gauge(&format!(r#"function_calls_in_flight{{function="in_flight",module="{MODULE}"}}"#)).unwrap()
}

#[timed(name = "jobs", concurrency)]
async fn job(shoal: &Shoal) -> f64 {
    YieldOnce(false).await;
    shoal.take_deltas().gauge(&format!(r#"jobs_calls_in_flight{{function="job",module="{MODULE}"}}"#)).unwrap()
}

#[test]
fn concurrency_gauge_counts_calls_in_progress() {
    let shoal = Shoal::builder().build().unwrap();
    metrics::with_local_recorder(&shoal, || {
        assert_eq!(in_flight(&shoal), 1.0);
        assert_eq!(block_on(job(&shoal)), 1.0);
    });
    let d = shoal.take_deltas();
    assert_eq!(d.gauge(&format!(r#"function_calls_in_flight{{function="in_flight",module="{MODULE}"}}"#)), Some(0.0));
    assert_eq!(d.gauge(&format!(r#"jobs_calls_in_flight{{function="job",module="{MODULE}"}}"#)), Some(0.0));
    let text = shoal.render_prometheus();
    assert!(text.contains("# HELP jobs_calls_in_flight Calls in progress"), "{text}");
}

// --- async ---------------------------------------------------------------

/// Pending once (waking itself), then ready.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            Poll::Ready(())
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

struct Sleep(std::time::Instant);

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if std::time::Instant::now() >= self.0 {
            Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(NoopWake));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[timed]
async fn fetch(id: u32) -> Result<String, ParseError> {
    YieldOnce(false).await;
    if id == 0 {
        return Err(ParseError);
    }
    let n = parse(&id.to_string())?;
    Ok(format!("item {n}"))
}

#[timed]
async fn slow(ms: u64) {
    Sleep(std::time::Instant::now() + std::time::Duration::from_millis(ms)).await;
}

struct Client {
    name: String,
}

impl Client {
    #[timed]
    async fn name(&self) -> &str {
        YieldOnce(false).await;
        &self.name
    }

    #[timed]
    async fn rename(&mut self, to: &str) -> &mut String {
        self.name = to.to_string();
        &mut self.name
    }
}

#[test]
fn async_functions_are_timed_until_they_complete() {
    let (shoal, ()) = local(|| {
        assert_eq!(block_on(fetch(7)).unwrap(), "item 7");
        assert_eq!(block_on(fetch(0)), Err(ParseError));
        block_on(slow(30));
        let mut c = Client { name: "a".into() };
        assert_eq!(block_on(c.name()), "a");
        block_on(c.rename("b")).push('!');
        assert_eq!(c.name, "b!");
    });
    assert_eq!(calls(&shoal, "function", "fetch", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "fetch", "error"), Some(1));
    assert_eq!(calls(&shoal, "function", "fetch", "cancelled"), Some(0));
    assert_eq!(calls(&shoal, "function", "name", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "rename", "ok"), Some(1));
    let sketch = shoal.histogram_snapshot(&format!(r#"function_duration_seconds{{function="slow",module="{MODULE}"}}"#)).unwrap();
    assert_eq!(sketch.count(), 1);
    // The time spans the awaits, not just the first poll.
    assert!(sketch.sum() >= 0.029, "recorded {}", sketch.sum());
}

#[test]
fn a_future_dropped_unfinished_is_cancelled() {
    let (shoal, ()) = local(|| {
        let waker = Waker::from(Arc::new(NoopWake));
        let mut fut = Box::pin(fetch(3));
        assert!(fut.as_mut().poll(&mut Context::from_waker(&waker)).is_pending());
        drop(fut);
        // Never polled: the function never started, nothing to record.
        drop(fetch(4));
    });
    assert_eq!(calls(&shoal, "function", "fetch", "cancelled"), Some(1));
    assert_eq!(calls(&shoal, "function", "fetch", "ok"), Some(0));
    assert_eq!(durations(&shoal, "function", "fetch"), 1);
}

#[timed]
async fn async_explode() -> u32 {
    YieldOnce(false).await;
    panic!("async boom")
}

#[test]
fn a_panicking_async_function_is_recorded_as_panic() {
    let (shoal, ()) = local(|| {
        let mut fut = Box::pin(async_explode());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let waker = Waker::from(Arc::new(NoopWake));
            let mut cx = Context::from_waker(&waker);
            loop {
                if fut.as_mut().poll(&mut cx).is_ready() {
                    break;
                }
            }
        }));
        assert!(r.is_err());
        // Dropped after the panic was caught, as executors do: still `panic`.
        drop(fut);
    });
    assert_eq!(calls(&shoal, "function", "async_explode", "panic"), Some(1));
    assert_eq!(calls(&shoal, "function", "async_explode", "cancelled"), Some(0));
}

#[test]
fn each_local_recorder_gets_its_own_series() {
    // Same thread, same stack slot: the second Shoal may well sit at the
    // first one's address. Nothing recorded under the first may leak into it.
    for round in 1..=3u32 {
        let shoal = Shoal::builder().build().unwrap();
        metrics::with_local_recorder(&shoal, || {
            for i in 0..round {
                add(i, i);
            }
        });
        assert_eq!(calls(&shoal, "function", "add", "ok"), Some(round as u64));
    }
}

#[test]
fn help_text_describes_the_metrics() {
    let (shoal, _) = local(|| add(1, 2));
    let text = shoal.render_prometheus();
    assert!(
        text.contains("# HELP function_duration_seconds Duration of calls of functions instrumented with #[timed], by function and module (unit: seconds)"),
        "{text}"
    );
    assert!(text.contains("# HELP function_calls_total Calls of functions instrumented with #[timed]"), "{text}");
}

#[test]
fn no_recorder_at_all_is_fine() {
    assert_eq!(add(2, 2), 4);
    assert_eq!(block_on(fetch(1)).unwrap(), "item 1");
}

struct Named {
    name: String,
}

impl Named {
    #[timed]
    fn name(&self) -> &str {
        if self.name.is_empty() {
            return &self.name; // coerced from &String, as without #[timed]
        }
        &self.name
    }

    #[timed]
    fn boxed(&self) -> Box<dyn std::fmt::Display + '_> {
        Box::new(&self.name)
    }
}

#[test]
fn return_values_coerce_to_the_declared_type() {
    let (shoal, ()) = local(|| {
        let n = Named { name: "x".into() };
        assert_eq!(n.name(), "x");
        assert_eq!(n.boxed().to_string(), "x");
    });
    assert_eq!(calls(&shoal, "function", "boxed", "ok"), Some(1));
}

#[derive(Debug, PartialEq)]
struct Point(i32, i32);

impl Point {
    #[timed]
    fn new(x: i32, y: i32) -> Self {
        Point(x, y)
    }

    /// # Safety
    /// `p` must be valid for reads.
    #[timed]
    unsafe fn read(p: *const i32) -> i32 {
        *p
    }
}

#[timed]
fn sum_all(items: impl IntoIterator<Item = i32>) -> i32 {
    items.into_iter().sum()
}

#[test]
fn self_returns_unsafe_fns_and_impl_trait_arguments() {
    let (shoal, ()) = local(|| {
        assert_eq!(Point::new(1, 2), Point(1, 2));
        let v = 7;
        assert_eq!(unsafe { Point::read(&v) }, 7);
        assert_eq!(sum_all(vec![1, 2, 3]), 6);
    });
    assert_eq!(calls(&shoal, "function", "new", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "read", "ok"), Some(1));
    assert_eq!(calls(&shoal, "function", "sum_all", "ok"), Some(1));
}

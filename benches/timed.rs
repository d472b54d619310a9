//! `#[timed]` on an empty function against the same function with a
//! hand-written `shoal::timer!` guard, both recording into the global
//! recorder (shoal installed, as in a service).
//!
//! `cargo bench --bench timed`; goal: `timed` <= 1.2x `timer_guard`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::OnceLock;
use std::time::Duration;

#[inline(never)]
fn bare(x: u64) -> u64 {
    black_box(x)
}

#[inline(never)]
fn timer_guard(x: u64) -> u64 {
    let _t = shoal::timer!("manual_duration_seconds", "function" => "timer_guard", "module" => module_path!());
    black_box(x)
}

/// The floor for a guard: the histogram handle registered once, only the
/// two clock reads and the record left (plus an `Arc` clone for `Timer`).
#[inline(never)]
fn timer_cached_handle(x: u64) -> u64 {
    static HISTOGRAM: OnceLock<metrics::Histogram> = OnceLock::new();
    let h = HISTOGRAM.get_or_init(|| metrics::histogram!("cached_duration_seconds", "function" => "timer_cached_handle"));
    let _t = shoal::Timer::new(h.clone());
    black_box(x)
}

#[inline(never)]
#[shoal::timed]
fn timed(x: u64) -> u64 {
    black_box(x)
}

#[inline(never)]
#[shoal::timed]
fn timed_result(x: u64) -> Result<u64, ()> {
    Ok(black_box(x))
}

#[inline(never)]
#[shoal::timed(concurrency)]
fn timed_concurrency(x: u64) -> u64 {
    black_box(x)
}

fn bench(c: &mut Criterion) {
    let shoal = shoal::Shoal::builder().install().expect("install the global recorder");
    let mut g = c.benchmark_group("timed");
    g.warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    g.bench_function("bare", |b| b.iter(|| bare(black_box(1))));
    g.bench_function("timer_guard", |b| b.iter(|| timer_guard(black_box(1))));
    g.bench_function("timer_cached_handle", |b| b.iter(|| timer_cached_handle(black_box(1))));
    g.bench_function("timed", |b| b.iter(|| timed(black_box(1))));
    g.bench_function("timed_result", |b| b.iter(|| timed_result(black_box(1))));
    g.bench_function("timed_concurrency", |b| b.iter(|| timed_concurrency(black_box(1))));
    // Under a local recorder (tests): handles are looked up on every call.
    let local = shoal::Shoal::builder().build().unwrap();
    g.bench_function("timed_local_recorder", |b| metrics::with_local_recorder(&local, || b.iter(|| timed(black_box(1)))));
    g.finish();
    // Both really recorded.
    let text = shoal.render_prometheus();
    assert!(text.contains("manual_duration_seconds_count{function=\"timer_guard\""));
    assert!(text.contains("function_calls_total{function=\"timed\""));
}

criterion_group!(benches, bench);
criterion_main!(benches);

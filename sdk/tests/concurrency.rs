//! Deltas taken while threads record: nothing lost, nothing counted twice;
//! and short-lived threads do not leak memory.

use shoal::Shoal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn deltas_taken_during_recording_sum_to_the_exact_total() {
    let shoal = Arc::new(Shoal::builder().build().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let threads = 4;
    let per_thread = 300_000u64;
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let shoal = shoal.clone();
            std::thread::spawn(move || {
                let c = shoal.counter("ops_total", &[]);
                let h = shoal.histogram("op_seconds", &[]);
                let facade = metrics::with_local_recorder(&*shoal, || metrics::counter!("facade_total"));
                for i in 0..per_thread {
                    c.increment(1);
                    facade.increment(2);
                    h.record(((i % 1000) + 1) as f64 * 1e-6 * (t + 1) as f64);
                }
            })
        })
        .collect();
    let taker = {
        let shoal = shoal.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut counted, mut facade, mut samples, mut takes) = (0u64, 0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let d = shoal.take_deltas();
                counted += d.counter("ops_total").unwrap_or(0);
                facade += d.counter("facade_total").unwrap_or(0);
                samples += d.histogram("op_seconds").map_or(0, |s| s.count());
                takes += 1;
                std::thread::yield_now();
            }
            (counted, facade, samples, takes)
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(10));
    stop.store(true, Ordering::Relaxed);
    let (mut counted, mut facade, mut samples, takes) = taker.join().unwrap();
    let last = shoal.take_deltas();
    counted += last.counter("ops_total").unwrap_or(0);
    facade += last.counter("facade_total").unwrap_or(0);
    samples += last.histogram("op_seconds").map_or(0, |s| s.count());
    assert!(takes > 10, "only {takes} takes raced the recorders");
    assert_eq!(counted, threads * per_thread);
    assert_eq!(facade, 2 * threads * per_thread);
    assert_eq!(samples, threads * per_thread);
    // And a take after everything is quiet is empty.
    assert!(shoal.take_deltas().counters.is_empty());
}

#[test]
fn ten_thousand_short_lived_threads_keep_totals_exact_and_memory_bounded() {
    let shoal = Arc::new(Shoal::builder().build().unwrap());
    let c = shoal.counter("spawned_total", &[]);
    let h = shoal.histogram("spawned_seconds", &[]);
    let memory_after = |n: usize| {
        for batch in 0..n / 100 {
            let handles: Vec<_> = (0..100)
                .map(|i| {
                    let (c, h) = (c.clone(), h.clone());
                    std::thread::spawn(move || {
                        c.increment(1);
                        // Different magnitudes per thread so pages get touched.
                        h.record(1e-6 * 10f64.powi(((batch * 100 + i) % 9) as i32));
                    })
                })
                .collect();
            for t in handles {
                t.join().unwrap();
            }
        }
        shoal::__private::slot::free_slots()
    };
    let _ = memory_after(10_000);
    let hist_bytes_after_10k = histogram_bytes(&shoal);
    assert_eq!(shoal.counter_value("spawned_total"), Some(10_000));
    let sketch = shoal.histogram_snapshot("spawned_seconds").unwrap();
    assert_eq!(sketch.count(), 10_000);
    // Slots are recycled, so the cells are bounded by stripes x touched
    // ranges: per stripe the two directory tables (2 x 32 pointers), at most
    // 9 pages (one per magnitude recorded) and 2 directories, 512 bytes each.
    let stripes = shoal::__private::slot::stripes();
    let bound = stripes * (2 * 32 * 8 + 9 * 512 + 2 * 512 + 128) + 4096;
    assert!(hist_bytes_after_10k <= bound, "{hist_bytes_after_10k} bytes > bound {bound} for {stripes} stripes");
    // All owned slots go back to the pool (the other test of this binary may
    // briefly hold some: wait, bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while shoal::__private::slot::free_slots() != shoal::__private::slot::owned_slots() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(shoal::__private::slot::free_slots(), shoal::__private::slot::owned_slots());
}

fn histogram_bytes(shoal: &Shoal) -> usize {
    shoal.histogram_memory_bytes("spawned_seconds").unwrap()
}

//! The hot path allocates nothing in the steady state: checked with a
//! counting global allocator (its own test binary, one test, so no other test
//! allocates concurrently).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn recording_through_handles_does_not_allocate() {
    let shoal = shoal::Shoal::builder().build().unwrap();
    let c = shoal.counter("c", &[("k", "v")]);
    let g = shoal.gauge("g", &[]);
    let h = shoal.histogram("h", &[]);
    let (fc, fh) = metrics::with_local_recorder(&shoal, || (metrics::counter!("fc"), metrics::histogram!("fh")));
    let values: Vec<f64> = (0..1000).map(|i| 1e-3 * 1.01f64.powi(i)).collect();
    // Warm-up: the thread takes its slot and its histogram pages.
    for &v in &values {
        c.increment(1);
        g.set(v);
        h.record(v);
        fc.increment(1);
        fh.record(v);
    }
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..100 {
        for &v in &values {
            c.increment(1);
            g.set(v);
            g.increment(1.0);
            h.record(v);
            h.record(-v);
            h.record(0.0);
            h.record_many(v, 3);
            fc.increment(1);
            fh.record(v);
        }
    }
    let during = ALLOCATIONS.load(Relaxed) - before;
    // Negative values touched new pages once; the second pass is free.
    let before = ALLOCATIONS.load(Relaxed);
    for &v in &values {
        h.record(-v);
        h.record(v);
        c.increment(1);
    }
    assert_eq!(ALLOCATIONS.load(Relaxed) - before, 0);
    assert!(during <= 40, "{during} allocations while recording (first touches of negative pages only)");
    assert_eq!(shoal.counter_value(r#"c{k="v"}"#), Some(1000 + 100_000 + 1000));
}

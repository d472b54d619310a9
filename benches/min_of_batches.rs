//! Histogram record against hdrhistogram's, timed as the fastest of many
//! short batches instead of criterion's median: on a VM that loses the CPU
//! to other guests (steal), preemption only ever adds time, so the minimum
//! is the steadier figure of what a record costs. Both run in the same
//! process, alternating batch by batch, over the same 1,024 values as
//! `hot_path` (4 decades), each in a loop whose index stays in a register.
//!
//! Run: `cargo bench --bench min_of_batches` (about 30 s; `SHUFFLE=1` in
//! front visits the values in a fixed random order instead of ascending). Prints ns per
//! record for each (minimum over the batches) and the ratio, plus the
//! median of the per-batch ratios.

use rand::{rngs::StdRng, seq::SliceRandom, SeedableRng};
use std::hint::black_box;
use std::time::Instant;

const BATCH: usize = 200_000;
const BATCHES: usize = 300;

fn main() {
    let mut values: Vec<f64> = (0..1024).map(|i| 1e-5 * 1.009f64.powi(i)).collect();
    // `SHUFFLE=1`: the same values in a fixed random order, so consecutive
    // records rarely share a bucket page (for shortcuts that bet they do).
    if std::env::var_os("SHUFFLE").is_some() {
        values.shuffle(&mut StdRng::seed_from_u64(7));
    }
    let ints: Vec<u64> = values.iter().map(|v| (v * 1e9) as u64).collect();
    let shoal = shoal::Shoal::builder().build().unwrap();
    let histogram = shoal.histogram("h", &[]);
    let mut hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
    let (mut best_shoal, mut best_hdr) = (f64::MAX, f64::MAX);
    let mut ratios = Vec::with_capacity(BATCHES);
    for _ in 0..BATCHES {
        let start = Instant::now();
        for k in 0..BATCH {
            histogram.record(black_box(values[k & 1023]));
        }
        let shoal_ns = start.elapsed().as_nanos() as f64 / BATCH as f64;
        let start = Instant::now();
        for k in 0..BATCH {
            hdr.record(black_box(ints[k & 1023])).unwrap();
        }
        let hdr_ns = start.elapsed().as_nanos() as f64 / BATCH as f64;
        best_shoal = best_shoal.min(shoal_ns);
        best_hdr = best_hdr.min(hdr_ns);
        ratios.push(shoal_ns / hdr_ns);
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "histogram record, minimum of {BATCHES} batches of {BATCH}: shoal {best_shoal:.3} ns, hdrhistogram {best_hdr:.3} ns, \
         ratio {:.3} (median of per-batch ratios {:.3})",
        best_shoal / best_hdr,
        ratios[BATCHES / 2]
    );
}

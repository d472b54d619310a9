//! Histogram cells: per stripe, a sparse two-level table of bucket pages at the
//! sketch's scale, folded into a [`Sketch`] by readers.
//!
//! Bucket index `i` is shifted to a non-negative position `p = i - lowest`;
//! `p >> 12` picks a directory, `(p >> 6) & 63` a page in it and `p & 63` the
//! cell. Directories and pages are allocated the first time a slot touches
//! them (see the invariant in [`crate::hot`]) and installed with a
//! compare-exchange, so the shared stripe's concurrent writers agree on one.

use super::{add_f64, bump, slot};
use shoal_core::sketch::{mapping, mapping_for, BucketStore, Mapping, Rejection, Sketch};
use std::ptr;
use std::sync::atomic::{
    AtomicPtr, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

const PAGE: usize = 64;
const DIRECTORY: usize = 64;

struct Page([AtomicU64; PAGE]);
struct Directory([AtomicPtr<Page>; DIRECTORY]);

/// One slot's cells of one histogram series.
#[repr(align(64))]
struct Stripe {
    sum: AtomicU64,
    zero: AtomicU64,
    /// Smallest and largest value recorded since the last take (`f64`
    /// bits; +inf / -inf when none). Written only when a record is a new
    /// extreme, so the common record only loads them.
    min: AtomicU64,
    max: AtomicU64,
    positive: Box<[AtomicPtr<Directory>]>,
    negative: Box<[AtomicPtr<Directory>]>,
}

/// What a series' cells held at the previous take, kept by the taker:
/// cumulative counts in the dense, adaptive-width stores a sketch uses
/// (about a byte per bucket of the range seen so far).
#[derive(Debug, Default)]
pub struct Taken {
    positive: BucketStore,
    negative: BucketStore,
    zero: u64,
    sum: f64,
}

/// Buffers one take reuses across series (no allocation per series once
/// they have grown).
#[derive(Default)]
pub struct TakeScratch {
    rose: Vec<(i32, u64)>,
    directories: Vec<*const Directory>,
}

/// Cells of one histogram series.
pub struct HistogramCells {
    mapping: &'static Mapping,
    /// `lowest` index plus the exponent bias folded into `index_of_bits`.
    position_base: i32,
    lowest: i32,
    stripes: Box<[Stripe]>,
    /// Extremes of every interval taken so far (`f64` bits), for
    /// [`HistogramCells::read`]; written by takes only.
    taken_min: AtomicU64,
    taken_max: AtomicU64,
    /// Per sign (positive, negative), bit `directory_bit(d)` set once some
    /// stripe installed directory `d`: a take visits only those.
    directories_installed: [AtomicU64; 2],
}

/// The bit of directory `d` in `directories_installed` (all directories
/// from 63 up share the last bit: a scale above 6 has more than 64).
fn directory_bit(d: usize) -> u64 {
    1 << d.min(63)
}

const POS_INF_BITS: u64 = 0x7ff0_0000_0000_0000;
const NEG_INF_BITS: u64 = 0xfff0_0000_0000_0000;

/// Bits of `f64::MIN_POSITIVE` (the smallest normal) and of infinity: a
/// magnitude whose bits are in `[MIN_NORMAL_BITS, INFINITY_BITS)` is finite,
/// normal and non-zero, which one unsigned comparison checks.
const MIN_NORMAL_BITS: u64 = 0x0010_0000_0000_0000;
const INFINITY_BITS: u64 = 0x7ff0_0000_0000_0000;
const SIGN_BIT: u64 = 1 << 63;

fn new_page() -> *mut Page {
    Box::into_raw(Box::new(Page(std::array::from_fn(|_| AtomicU64::new(0)))))
}

fn new_directory() -> *mut Directory {
    Box::into_raw(Box::new(Directory(std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())))))
}

/// Loads a pointer, installing a fresh allocation if it is null.
#[inline(always)]
fn get_or_install<T>(cell: &AtomicPtr<T>, make: fn() -> *mut T) -> &T {
    let p = cell.load(Acquire);
    if !p.is_null() {
        // SAFETY: non-null pointers in the table come from Box::into_raw and
        // are only freed when the whole HistogramCells is dropped.
        return unsafe { &*p };
    }
    install(cell, make)
}

#[cold]
#[inline(never)]
fn install<T>(cell: &AtomicPtr<T>, make: fn() -> *mut T) -> &T {
    let fresh = make();
    match cell.compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire) {
        // SAFETY: as above; `fresh` now belongs to the table.
        Ok(_) => unsafe { &*fresh },
        Err(existing) => {
            // SAFETY: `fresh` was never shared; `existing` belongs to the table.
            unsafe {
                drop(Box::from_raw(fresh));
                &*existing
            }
        }
    }
}

impl HistogramCells {
    /// Empty cells at `scale` (0..=MAX_SCALE).
    pub fn new(scale: i32) -> HistogramCells {
        let (lowest, highest) = mapping::index_range(scale);
        let positions = (highest - lowest) as usize + 1;
        let directories = positions.div_ceil(PAGE * DIRECTORY);
        let table = || (0..directories).map(|_| AtomicPtr::new(ptr::null_mut())).collect::<Box<[_]>>();
        let stripes = (0..slot::stripes())
            .map(|_| Stripe {
                sum: AtomicU64::new(0),
                zero: AtomicU64::new(0),
                min: AtomicU64::new(POS_INF_BITS),
                max: AtomicU64::new(NEG_INF_BITS),
                positive: table(),
                negative: table(),
            })
            .collect();
        let position_base = lowest + (1023 << scale.max(0));
        HistogramCells {
            mapping: mapping_for(scale),
            position_base,
            lowest,
            stripes,
            taken_min: AtomicU64::new(POS_INF_BITS),
            taken_max: AtomicU64::new(NEG_INF_BITS),
            directories_installed: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Records `n` samples of `value`; NaN and infinities are refused
    /// (nothing recorded). Hot path: see [`crate::hot`].
    #[inline(always)]
    pub fn record(&self, value: f64, n: u64) -> Result<(), Rejection> {
        // Zero samples record nothing, extremes included (`record_many(v,
        // 0)`); with the usual constant `n = 1` this folds away.
        if n == 0 {
            return Ok(());
        }
        let slot = slot::current();
        let owned = slot.is_owned();
        let stripe = &self.stripes[slot.index()];
        let bits = value.to_bits();
        let magnitude = bits & !SIGN_BIT;
        if magnitude.wrapping_sub(MIN_NORMAL_BITS) < INFINITY_BITS - MIN_NORMAL_BITS {
            let position = (self.mapping.index_of_bits(magnitude) - self.position_base) as usize;
            let negative = bits & SIGN_BIT != 0;
            let table = if negative { &stripe.negative } else { &stripe.positive };
            let d = position / (PAGE * DIRECTORY);
            let directory = match table[d].load(Acquire) {
                // SAFETY: see get_or_install.
                dir if !dir.is_null() => unsafe { &*dir },
                _ => self.install_directory(&table[d], negative, d),
            };
            let page = get_or_install(&directory.0[(position / PAGE) % DIRECTORY], new_page);
            bump(&page.0[position % PAGE], n, owned);
        } else if magnitude < MIN_NORMAL_BITS {
            // Zero and subnormals (below the zero threshold).
            bump(&stripe.zero, n, owned);
        } else {
            return Err(if value.is_nan() { Rejection::Nan } else { Rejection::Infinite });
        }
        add_f64(&stripe.sum, value * n as f64, owned);
        // Exact extremes: two loads and two predictable branches; a store
        // only on a new extreme (rare once a distribution is seen).
        if value < f64::from_bits(stripe.min.load(Relaxed)) {
            lower_to(&stripe.min, value, owned);
        }
        if value > f64::from_bits(stripe.max.load(Relaxed)) {
            raise_to(&stripe.max, value, owned);
        }
        Ok(())
    }

    /// Installs a directory (the cold path of a record) and notes its
    /// index for takes, which visit only directories some stripe has.
    #[cold]
    #[inline(never)]
    fn install_directory<'a>(&self, cell: &'a AtomicPtr<Directory>, negative: bool, d: usize) -> &'a Directory {
        let directory = install(cell, new_directory);
        // After the install: a take that sees the bit finds the directory;
        // one that races ahead of it reads these cells at its next take
        // (they are cumulative), as with any record racing a take.
        self.directories_installed[usize::from(negative)].fetch_or(directory_bit(d), Release);
        directory
    }

    /// The exact minimum and maximum recorded since the previous call
    /// (+inf / -inf if nothing), resetting them: the extremes of the delta
    /// a take is about to send. The caller serialises takes. A record
    /// racing the take may put its count in one delta and its extreme in
    /// the other; [`Sketch::set_extremes_within_buckets`] settles that.
    pub fn take_extremes(&self) -> (f64, f64) {
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        for stripe in self.stripes.iter() {
            min = min.min(f64::from_bits(stripe.min.swap(POS_INF_BITS, Relaxed)));
            max = max.max(f64::from_bits(stripe.max.swap(NEG_INF_BITS, Relaxed)));
        }
        let taken_min = f64::from_bits(self.taken_min.load(Relaxed)).min(min);
        let taken_max = f64::from_bits(self.taken_max.load(Relaxed)).max(max);
        self.taken_min.store(taken_min.to_bits(), Relaxed);
        self.taken_max.store(taken_max.to_bits(), Relaxed);
        (min, max)
    }

    /// The samples recorded since the previous take, as a sketch with the
    /// interval's exact extremes, or `None` if nothing was recorded;
    /// advances `taken` to now. The caller serialises takes.
    ///
    /// One pass over the cells: each page (summed over the stripes that
    /// have it) is compared with `taken`'s run of the same buckets, and only
    /// the buckets that rose go into the delta, which is built once at its
    /// final size. No cumulative sketch is built and no store subtracted.
    pub fn take_delta(&self, taken: &mut Taken, scratch: &mut TakeScratch) -> Option<Sketch> {
        let (mut zero, mut sum) = (0u64, 0.0f64);
        for stripe in self.stripes.iter() {
            zero = zero.saturating_add(stripe.zero.load(Relaxed));
            sum += f64::from_bits(stripe.sum.load(Relaxed));
        }
        let mut delta = Sketch::with_scale(self.mapping.scale());
        delta.add_zero(zero.wrapping_sub(taken.zero));
        taken.zero = zero;
        for sign in [1i8, -1] {
            scratch.rose.clear();
            self.advance_side(sign, taken, scratch);
            if !scratch.rose.is_empty() {
                delta.add_buckets(sign, BucketStore::from_sparse(&scratch.rose));
            }
        }
        if delta.count() == 0 && sum == taken.sum {
            return None;
        }
        delta.add_sum(sum - taken.sum);
        taken.sum = sum;
        // Exact extremes of the interval, kept only where they agree with
        // the delta's buckets (see `take_extremes`).
        let (min, max) = self.take_extremes();
        delta.set_extremes_within_buckets(min, max);
        Some(delta)
    }

    /// One sign's half of [`HistogramCells::take_delta`]: appends the
    /// buckets that rose to `scratch.rose`, ascending.
    fn advance_side(&self, sign: i8, taken: &mut Taken, scratch: &mut TakeScratch) {
        let store = if sign > 0 { &mut taken.positive } else { &mut taken.negative };
        fn table(stripe: &Stripe, sign: i8) -> &[AtomicPtr<Directory>] {
            if sign > 0 {
                &stripe.positive
            } else {
                &stripe.negative
            }
        }
        let directories = table(&self.stripes[0], sign).len();
        let installed = self.directories_installed[usize::from(sign < 0)].load(Acquire);
        let mut page_sum = [0u64; PAGE];
        for d in 0..directories {
            if installed & directory_bit(d) == 0 {
                continue;
            }
            scratch.directories.clear();
            scratch
                .directories
                .extend(self.stripes.iter().map(|stripe| table(stripe, sign)[d].load(Acquire).cast_const()).filter(|dir| !dir.is_null()));
            if scratch.directories.is_empty() {
                continue;
            }
            for p in 0..DIRECTORY {
                let first = self.lowest + ((d * DIRECTORY + p) * PAGE) as i32;
                let mut rose = |index, by| scratch.rose.push((index, by));
                if let [only] = scratch.directories[..] {
                    // One stripe holds this directory (one recording
                    // thread): compare its cells in place.
                    // SAFETY: see get_or_install.
                    let pages = &unsafe { &*only }.0;
                    let page = pages[p].load(Acquire);
                    if !page.is_null() {
                        // SAFETY: see get_or_install.
                        let cells = &unsafe { &*page }.0;
                        store.advance(first, PAGE, |k| cells[k].load(Relaxed), &mut rose);
                    }
                    continue;
                }
                let mut any = false;
                for &dir in &scratch.directories {
                    // SAFETY: see get_or_install.
                    let page = unsafe { &*dir }.0[p].load(Acquire);
                    if page.is_null() {
                        continue;
                    }
                    // SAFETY: see get_or_install.
                    let cells = &unsafe { &*page }.0;
                    if any {
                        for (total, cell) in page_sum.iter_mut().zip(cells) {
                            *total = total.wrapping_add(cell.load(Relaxed));
                        }
                    } else {
                        for (total, cell) in page_sum.iter_mut().zip(cells) {
                            *total = cell.load(Relaxed);
                        }
                        any = true;
                    }
                }
                if any {
                    store.advance(first, PAGE, |k| page_sum[k], &mut rose);
                }
            }
        }
    }

    /// The cumulative sketch of everything recorded so far, with its exact
    /// minimum and maximum (see [`HistogramCells::take_extremes`]).
    pub fn read(&self) -> Sketch {
        let scale = self.mapping.scale();
        let mut sketch = Sketch::with_scale(scale);
        for stripe in self.stripes.iter() {
            sketch.add_zero(stripe.zero.load(Relaxed));
            sketch.add_sum(f64::from_bits(stripe.sum.load(Relaxed)));
            for (sign, table) in [(1i8, &stripe.positive), (-1i8, &stripe.negative)] {
                for (d, dir) in table.iter().enumerate() {
                    let dir = dir.load(Acquire);
                    if dir.is_null() {
                        continue;
                    }
                    // SAFETY: see get_or_install.
                    let dir = unsafe { &*dir };
                    for (p, page) in dir.0.iter().enumerate() {
                        let page = page.load(Acquire);
                        if page.is_null() {
                            continue;
                        }
                        // SAFETY: see get_or_install.
                        let page = unsafe { &*page };
                        for (c, cell) in page.0.iter().enumerate() {
                            let n = cell.load(Relaxed);
                            if n > 0 {
                                let position = (d * DIRECTORY + p) * PAGE + c;
                                sketch.add_bucket(sign, self.lowest + position as i32, n);
                            }
                        }
                    }
                }
            }
        }
        let (mut min, mut max) = (f64::from_bits(self.taken_min.load(Relaxed)), f64::from_bits(self.taken_max.load(Relaxed)));
        for stripe in self.stripes.iter() {
            min = min.min(f64::from_bits(stripe.min.load(Relaxed)));
            max = max.max(f64::from_bits(stripe.max.load(Relaxed)));
        }
        sketch.set_extremes_within_buckets(min, max);
        sketch
    }

    /// Bytes held by the cells (tables, directories and pages).
    pub fn memory_bytes(&self) -> usize {
        let mut bytes = std::mem::size_of::<Self>() + self.stripes.len() * std::mem::size_of::<Stripe>();
        for stripe in self.stripes.iter() {
            for table in [&stripe.positive, &stripe.negative] {
                bytes += table.len() * std::mem::size_of::<AtomicPtr<Directory>>();
                for dir in table.iter() {
                    let dir = dir.load(Acquire);
                    if dir.is_null() {
                        continue;
                    }
                    bytes += std::mem::size_of::<Directory>();
                    // SAFETY: see get_or_install.
                    let dir = unsafe { &*dir };
                    bytes += dir.0.iter().filter(|p| !p.load(Acquire).is_null()).count() * std::mem::size_of::<Page>();
                }
            }
        }
        bytes
    }
}

/// Lowers an `f64`-bits cell to `value` if it is smaller (the owner's
/// plain store, or a compare-exchange loop on a shared stripe).
#[cold]
#[inline(never)]
fn lower_to(cell: &AtomicU64, value: f64, owned: bool) {
    if owned {
        cell.store(value.to_bits(), Relaxed);
    } else {
        let _ = cell.fetch_update(Relaxed, Relaxed, |bits| (value < f64::from_bits(bits)).then_some(value.to_bits()));
    }
}

/// Raises an `f64`-bits cell to `value` if it is larger (as [`lower_to`]).
#[cold]
#[inline(never)]
fn raise_to(cell: &AtomicU64, value: f64, owned: bool) {
    if owned {
        cell.store(value.to_bits(), Relaxed);
    } else {
        let _ = cell.fetch_update(Relaxed, Relaxed, |bits| (value > f64::from_bits(bits)).then_some(value.to_bits()));
    }
}

impl Drop for HistogramCells {
    fn drop(&mut self) {
        for stripe in self.stripes.iter() {
            for table in [&stripe.positive, &stripe.negative] {
                for dir in table.iter() {
                    let dir = dir.swap(ptr::null_mut(), Acquire);
                    if dir.is_null() {
                        continue;
                    }
                    // SAFETY: we have &mut self; nobody else can reach the table.
                    let dir = unsafe { Box::from_raw(dir) };
                    for page in dir.0.iter() {
                        let page = page.swap(ptr::null_mut(), Acquire);
                        if !page.is_null() {
                            // SAFETY: as above.
                            drop(unsafe { Box::from_raw(page) });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_cells_equal_a_sketch_of_the_same_values() {
        let cells = HistogramCells::new(6);
        let mut reference = Sketch::with_scale(6);
        let values = [0.0, 1e-9, 3.5, -2.25, 1e300, -1e-300, 42.0, 42.0, 1e-7];
        for v in values {
            cells.record(v, 3).unwrap();
            reference.record_many(v, 3).unwrap();
        }
        let folded = cells.read();
        assert_eq!(folded.positive(), reference.positive());
        assert_eq!(folded.negative(), reference.negative());
        assert_eq!(folded.zero_count(), reference.zero_count());
        assert_eq!(folded.count(), reference.count());
        assert!((folded.sum() - reference.sum()).abs() <= 1e-12 * reference.sum().abs());
        assert_eq!(cells.record(f64::NAN, 1), Err(Rejection::Nan));
        assert_eq!(cells.record(f64::NEG_INFINITY, 1), Err(Rejection::Infinite));
        assert_eq!(cells.read().count(), reference.count());
    }

    #[test]
    fn deltas_taken_from_the_cells_are_the_differences_of_reads() {
        let cells = std::sync::Arc::new(HistogramCells::new(6));
        let mut taken = Taken::default();
        let mut scratch = TakeScratch::default();
        assert!(cells.take_delta(&mut taken, &mut scratch).is_none(), "nothing recorded");
        let mut sent = Sketch::with_scale(6);
        let mut previous = cells.read();
        for round in 0..4u32 {
            // Several threads, so several stripes hold the same buckets.
            std::thread::scope(|s| {
                for t in 0..3u32 {
                    let cells = &cells;
                    s.spawn(move || {
                        for i in 0..500u32 {
                            let v = f64::from(i * (t + 1) + round) * 1e-3 - 0.1;
                            cells.record(if i % 50 == 0 { 0.0 } else { v }, u64::from(i % 3 + 1)).unwrap();
                        }
                    });
                }
            });
            let delta = cells.take_delta(&mut taken, &mut scratch).expect("samples were recorded");
            let now = cells.read();
            let expected = now.checked_sub(&previous).unwrap();
            assert_eq!(delta.positive(), expected.positive(), "round {round}");
            assert_eq!(delta.negative(), expected.negative(), "round {round}");
            assert_eq!((delta.zero_count(), delta.count()), (expected.zero_count(), expected.count()));
            assert!((delta.sum() - expected.sum()).abs() <= 1e-9 * expected.sum().abs().max(1.0));
            assert_eq!(
                (delta.min(), delta.max()),
                (Some(f64::from(1 + round) * 1e-3 - 0.1), Some(f64::from(499 * 3 + round) * 1e-3 - 0.1))
            );
            assert!(cells.take_delta(&mut taken, &mut scratch).is_none(), "nothing new since");
            sent.merge(&delta);
            previous = now;
        }
        // Every sample went out exactly once.
        let all = cells.read();
        assert_eq!((sent.positive(), sent.negative(), sent.zero_count()), (all.positive(), all.negative(), all.zero_count()));
    }

    #[test]
    fn takes_racing_records_send_every_sample_once() {
        // Takes run while three threads record into fresh directories,
        // pages and wider counts; whatever a take misses the next one sends.
        let cells = HistogramCells::new(6);
        let (mut taken, mut scratch) = (Taken::default(), TakeScratch::default());
        let mut sent = Sketch::with_scale(6);
        let done = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..3u32 {
                let (cells, done) = (&cells, &done);
                s.spawn(move || {
                    for i in 0..60_000u32 {
                        // Spread over 12 decades and both signs, then
                        // hammer one bucket past the u8 width (45,000 in all).
                        let v = if i % 4 == 0 { 0.5 } else { 10f64.powi((i % 12) as i32 - 6) * f64::from(1 + t) };
                        cells.record(if i % 7 == 0 { -v } else { v }, 1).unwrap();
                    }
                    done.fetch_add(1, Relaxed);
                });
            }
            let mut takes = 0;
            while done.load(Relaxed) < 3 || takes < 5 {
                if let Some(delta) = cells.take_delta(&mut taken, &mut scratch) {
                    sent.merge(&delta);
                }
                takes += 1;
            }
        });
        if let Some(delta) = cells.take_delta(&mut taken, &mut scratch) {
            sent.merge(&delta);
        }
        let all = cells.read();
        assert_eq!(all.count(), 180_000);
        assert_eq!(
            (sent.positive(), sent.negative(), sent.zero_count(), sent.count()),
            (all.positive(), all.negative(), all.zero_count(), all.count())
        );
    }

    #[test]
    fn deltas_reach_every_directory_at_every_scale() {
        // At the finest scale there are more directories than bits in the
        // take's mask; the last bit stands for all the high ones.
        for scale in [0, 6, shoal_core::sketch::MAX_SCALE] {
            let cells = HistogramCells::new(scale);
            let (mut taken, mut scratch) = (Taken::default(), TakeScratch::default());
            let values = [1e-300, 3e-200, 1e-9, 0.5, 7.0, 1e12, 1e200, 1.7e308, -1e-300, -2.5, -1e300];
            for round in 1..=3u64 {
                for v in values {
                    cells.record(v, round).unwrap();
                }
                let delta = cells.take_delta(&mut taken, &mut scratch).unwrap();
                let mut expected = Sketch::with_scale(scale);
                for v in values {
                    expected.record_many(v, round).unwrap();
                }
                assert_eq!((delta.positive(), delta.negative()), (expected.positive(), expected.negative()), "scale {scale}");
                assert_eq!((delta.min(), delta.max()), (Some(-1e300), Some(1.7e308)));
            }
        }
    }

    #[test]
    fn extremes_are_exact_per_take_and_cumulatively() {
        let cells = HistogramCells::new(6);
        for _ in 0..1000 {
            cells.record(0.25, 1).unwrap();
        }
        // A constant histogram: every quantile is the value, exactly (the
        // bucket's representative would be 0.24865).
        let read = cells.read();
        assert_eq!((read.min(), read.max()), (Some(0.25), Some(0.25)));
        for q in [0.0, 0.5, 0.99, 1.0] {
            assert_eq!(read.quantile(q), Some(0.25), "q{q}");
        }
        assert_eq!(cells.take_extremes(), (0.25, 0.25));
        assert_eq!(cells.take_extremes(), (f64::INFINITY, f64::NEG_INFINITY), "reset by the take");
        cells.record(-3.0, 2).unwrap();
        cells.record(7.5, 1).unwrap();
        assert_eq!(cells.take_extremes(), (-3.0, 7.5));
        // Cumulative: every interval taken so far.
        let read = cells.read();
        assert_eq!((read.min(), read.max()), (Some(-3.0), Some(7.5)));
        assert_eq!((read.quantile(0.0), read.quantile(1.0)), (Some(-3.0), Some(7.5)));
        // No samples, no extreme.
        cells.record(-50.0, 0).unwrap();
        assert_eq!(cells.take_extremes(), (f64::INFINITY, f64::NEG_INFINITY));
    }
}

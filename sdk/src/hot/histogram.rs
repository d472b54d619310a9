//! Histogram cells: per stripe, a sparse two-level table of bucket pages at the
//! sketch's scale, folded into a [`Sketch`] by readers.
//!
//! Bucket index `i` is shifted to a non-negative position `p = i - lowest`;
//! `p >> 12` picks a directory, `(p >> 6) & 63` a page in it and `p & 63` the
//! cell. Directories and pages are allocated the first time a slot touches
//! them (see the invariant in [`crate::hot`]) and installed with a
//! compare-exchange, so the shared stripe's concurrent writers agree on one.

use super::{add_f64, bump, slot};
use shoal_core::sketch::{mapping, mapping_for, Mapping, Rejection, Sketch};
use std::ptr;
use std::sync::atomic::{
    AtomicPtr, AtomicU64,
    Ordering::{AcqRel, Acquire, Relaxed},
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
            let table = if bits & SIGN_BIT != 0 { &stripe.negative } else { &stripe.positive };
            let directory = get_or_install(&table[position / (PAGE * DIRECTORY)], new_directory);
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

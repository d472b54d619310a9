//! The hot path: the memory that recording threads write.
//!
//! # Invariant
//!
//! Recording through a handle (`Counter::increment`, `Gauge::set`,
//! `Histogram::record`, ...) never takes a lock, never makes a syscall, never
//! hashes, and never allocates in the steady state. It reads the thread's slot
//! from a const thread-local ([`slot`]), indexes that slot's stripe of the
//! series, and updates one or two cells:
//!
//! - in a stripe the thread owns: a relaxed load and a relaxed store (no lock
//!   prefix, ~1 ns);
//! - in the shared stripe (only when more threads record at once than there
//!   are owned slots): an atomic read-modify-write.
//!
//! Stripes of different slots live on different cache lines, so two threads
//! updating the same series never write the same line.
//!
//! The one exception to "never allocates": the first time a slot records a
//! histogram value in a power-of-two range it has not seen before, it allocates
//! that range's 512-byte bucket page (and, rarely, a 512-byte directory). Pages
//! stay with the slot and are reused by every later thread that takes the
//! slot, so memory is bounded by `slots x touched ranges`, never by the number
//! of samples or threads.
//!
//! Cells only ever grow (cumulative per stripe). Readers ([`crate::delta`])
//! sum the stripes and subtract what they saw last time, so a reader never
//! writes a cell and no update racing a read is lost or counted twice.

pub mod counter;
pub mod gauge;
pub mod histogram;
pub mod slot;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Adds `n` to a cell: plain load + store for an owned slot, `fetch_add` for
/// the shared one.
#[inline(always)]
pub(crate) fn bump(cell: &AtomicU64, n: u64, owned: bool) {
    if owned {
        cell.store(cell.load(Relaxed).wrapping_add(n), Relaxed);
    } else {
        cell.fetch_add(n, Relaxed);
    }
}

/// Adds `x` to a cell holding `f64` bits, with the same ownership rule.
#[inline(always)]
pub(crate) fn add_f64(cell: &AtomicU64, x: f64, owned: bool) {
    if owned {
        let cur = f64::from_bits(cell.load(Relaxed));
        cell.store((cur + x).to_bits(), Relaxed);
    } else {
        let _ = cell.fetch_update(Relaxed, Relaxed, |bits| Some((f64::from_bits(bits) + x).to_bits()));
    }
}

//! Counter cells: one `u64` per (stripe, series), laid out stripe-major in
//! blocks of [`BLOCK`] series so that each stripe's cells of a block form their
//! own cache lines.

use super::{bump, slot};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Series per block.
pub const BLOCK: usize = 64;

/// One stripe's cells of a block: 512 bytes, cache-line aligned.
#[repr(align(64))]
struct Row([AtomicU64; BLOCK]);

/// Cells of [`BLOCK`] counter series, one row per stripe.
pub struct CounterBlock {
    rows: Box<[Row]>,
}

impl CounterBlock {
    fn new() -> CounterBlock {
        let rows = (0..slot::stripes()).map(|_| Row(std::array::from_fn(|_| AtomicU64::new(0)))).collect();
        CounterBlock { rows }
    }
}

/// Hands out counter cells, a block at a time. Not on the hot path.
#[derive(Default)]
pub struct CounterArena {
    current: Option<Arc<CounterBlock>>,
    next: usize,
}

impl CounterArena {
    /// Cells for a new series.
    pub fn allocate(&mut self) -> CounterCells {
        let block = match &self.current {
            Some(b) if self.next < BLOCK => b.clone(),
            _ => {
                let b = Arc::new(CounterBlock::new());
                self.current = Some(b.clone());
                self.next = 0;
                b
            }
        };
        let index = self.next;
        self.next += 1;
        CounterCells { block, index, absolute: AtomicU64::new(0) }
    }
}

/// The cells of one counter series.
pub struct CounterCells {
    block: Arc<CounterBlock>,
    index: usize,
    /// Largest value passed to `absolute` (counters set from an external
    /// monotonic source); added to the striped increments.
    absolute: AtomicU64,
}

impl CounterCells {
    /// Adds `n`. Hot path: see the module invariant in [`crate::hot`].
    #[inline(always)]
    pub fn increment(&self, n: u64) {
        let slot = slot::current();
        let cell = &self.block.rows[slot.index()].0[self.index];
        bump(cell, n, slot.is_owned());
    }

    /// Raises the counter's absolute part to `value` if it is larger.
    #[inline]
    pub fn absolute(&self, value: u64) {
        self.absolute.fetch_max(value, Relaxed);
    }

    /// Current cumulative value (sum of the stripes plus the absolute part).
    pub fn read(&self) -> u64 {
        let striped = self.block.rows.iter().fold(0u64, |acc, row| acc.wrapping_add(row.0[self.index].load(Relaxed)));
        striped.wrapping_add(self.absolute.load(Relaxed))
    }
}

//! Thread slots: which stripe of every series the current thread writes.
//!
//! The process has a fixed pool of [`owned_slots()`] slots. A thread takes one
//! the first time it records and gives it back when it exits. While a thread
//! holds a slot it is the only writer of that stripe in every series, so it can
//! update its cells with a plain load + store (no lock prefix). The pool's
//! mutex orders the hand-over: everything the previous owner stored happens
//! before the next owner's first load, so cumulative cell values carry over
//! and nothing is lost when threads come and go. Memory is bounded by the pool
//! size, however many threads a process starts over its lifetime.
//!
//! When every owned slot is taken, further threads share the last stripe,
//! whose cells are updated with atomic read-modify-write operations: correct,
//! a little slower, and still no lock.

use parking_lot::Mutex;
use std::cell::Cell;
use std::sync::OnceLock;

/// Marker for "this thread has no slot yet".
const UNASSIGNED: u32 = u32::MAX;

thread_local! {
    // Const-initialised and without a destructor: reading it is a single TLS
    // load, no lazy-initialisation check.
    static SLOT: Cell<u32> = const { Cell::new(UNASSIGNED) };
    // Gives the slot back when the thread exits.
    static RELEASE_ON_EXIT: SlotRelease = const { SlotRelease };
}

struct SlotRelease;

impl Drop for SlotRelease {
    fn drop(&mut self) {
        // Anything recorded by later thread-local destructors goes to the
        // shared stripe.
        let raw = SLOT.with(|s| s.replace(shared_raw()));
        if raw != UNASSIGNED && Slot(raw).is_owned() {
            pool().lock().push(raw);
        }
    }
}

struct Pool {
    owned: usize,
    free: Mutex<Vec<u32>>,
}

fn pool_info() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(4);
        let owned = (cores * 2).clamp(4, 64);
        // Reverse so that slot 0 is handed out first.
        let free = (0..owned as u32).rev().collect();
        Pool { owned, free: Mutex::new(free) }
    })
}

fn pool() -> &'static Mutex<Vec<u32>> {
    &pool_info().free
}

/// Number of slots a thread can own exclusively: twice the cores, 4 to 64.
pub fn owned_slots() -> usize {
    pool_info().owned
}

/// Index of the slot shared by threads that found the pool empty.
pub fn shared_slot() -> usize {
    owned_slots()
}

/// Total stripes every series keeps: the owned slots plus the shared one.
pub fn stripes() -> usize {
    owned_slots() + 1
}

/// The slot a thread writes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

impl Slot {
    /// Stripe index in `0..stripes()`.
    #[inline(always)]
    pub fn index(self) -> usize {
        (self.0 & !SHARED_FLAG) as usize
    }

    /// True if exactly one thread writes this stripe (plain stores are safe).
    #[inline(always)]
    pub fn is_owned(self) -> bool {
        self.0 & SHARED_FLAG == 0
    }
}

const SHARED_FLAG: u32 = 1 << 31;

fn shared_raw() -> u32 {
    shared_slot() as u32 | SHARED_FLAG
}

/// The current thread's slot. Hot path: one TLS load and a compare.
#[inline(always)]
pub fn current() -> Slot {
    let raw = SLOT.with(Cell::get);
    if raw != UNASSIGNED {
        Slot(raw)
    } else {
        assign()
    }
}

#[cold]
#[inline(never)]
fn assign() -> Slot {
    // Register the exit hook first; if the thread is already tearing down its
    // thread-locals, use the shared slot rather than leak an owned one.
    if RELEASE_ON_EXIT.try_with(|_| ()).is_err() {
        return Slot(shared_raw());
    }
    let raw = pool().lock().pop().unwrap_or_else(shared_raw);
    SLOT.with(|s| s.set(raw));
    Slot(raw)
}

/// Slots currently free in the pool (for tests and self-metrics).
pub fn free_slots() -> usize {
    pool().lock().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_give_their_slot_back_on_exit() {
        let before = free_slots();
        let handles: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    let s = current();
                    assert!(s.index() < stripes());
                    s.index()
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        // Other tests run threads concurrently; wait until the pool settles.
        for _ in 0..200 {
            if free_slots() >= before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(free_slots() >= before.min(owned_slots()));
    }
}

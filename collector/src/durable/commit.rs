//! Group commit: one committer thread takes every append waiting, writes
//! their frames with one write per segment, calls `fdatasync` once, then
//! completes them all. Appenders wait on a oneshot channel, so an async
//! caller never blocks its runtime.
//!
//! Failure rule: a record is acknowledged `Ok` only after the fsync that
//! covers it succeeded; a record answered `Err` is removed from the log
//! before the answer when possible (the file is cut back to the last durable
//! length), or superseded by a fresh segment that restarts at its LSN. Until
//! one of the two succeeds the WAL stays broken and every append fails, so
//! nothing is ever written after a failed record. Recovery drops a
//! superseded tail (see `recovery`).

use super::error::WalError;
use super::fault::{Io, IoOp};
use super::record::{encode_frame, encode_segment_header, FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::segment::segment_name;
use super::Lsn;
use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// One live segment (the last one is the one being appended to).
#[derive(Clone, Debug)]
pub struct SegmentInfo {
    /// The LSN of its first record.
    pub first_lsn: u64,
    /// Its path.
    pub path: PathBuf,
}

/// An append waiting for the committer.
pub struct Pending {
    pub payload: Vec<u8>,
    pub done: oneshot::Sender<Result<Lsn, WalError>>,
}

/// The queue of appends waiting for the committer.
#[derive(Default)]
pub struct Queue {
    pub items: VecDeque<Pending>,
    pub bytes: usize,
    pub closed: bool,
}

/// Counters of the committer (see [`WalStats`](super::WalStats)).
#[derive(Default, Debug)]
pub struct Counters {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub commits: AtomicU64,
    pub fsyncs: AtomicU64,
    pub failed_records: AtomicU64,
    pub repairs: AtomicU64,
}

/// What the committer shares with the handles.
#[derive(Default)]
pub struct Shared {
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    pub segments: Mutex<Vec<SegmentInfo>>,
    /// The LSN of the last acknowledged (durable) record.
    pub durable_lsn: AtomicU64,
    pub counters: Counters,
}

/// Locks, ignoring poisoning (nothing here can be left half-updated by a panic).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Active {
    path: PathBuf,
    file: File,
    /// Bytes known durable; the next write goes here.
    len: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repair {
    /// Healthy.
    None,
    /// A write failed: cut the active segment back to its durable length
    /// (or, failing that, rotate).
    Truncate,
    /// A fsync or a rotation failed: start a fresh segment at the next LSN
    /// (after a best-effort cut of the old one). Sticky: once a fresh
    /// segment may exist on disk, no record may go to the old one.
    Rotate,
}

/// The committer thread's state.
pub struct Committer {
    shared: std::sync::Arc<Shared>,
    io: Io,
    wal_dir: PathBuf,
    active: Option<Active>,
    next_lsn: u64,
    next_number: u64,
    segment_bytes: u64,
    max_group_bytes: usize,
    repair: Repair,
}

impl Committer {
    /// A committer that will continue at `next_lsn`, in segments numbered
    /// from `next_number`. Call [`Committer::rotate`] before [`Committer::run`]
    /// (if it fails, the first append tries again).
    pub fn new(
        shared: std::sync::Arc<Shared>,
        io: Io,
        wal_dir: PathBuf,
        next_lsn: u64,
        next_number: u64,
        segment_bytes: u64,
        max_group_bytes: usize,
    ) -> Committer {
        shared.durable_lsn.store(next_lsn - 1, Relaxed);
        Committer { shared, io, wal_dir, active: None, next_lsn, next_number, segment_bytes, max_group_bytes, repair: Repair::None }
    }

    /// Serves the queue until it is closed and drained.
    pub fn run(mut self) {
        // However this thread ends, later appends must fail, not wait forever.
        struct CloseOnExit<'a>(&'a Shared);
        impl Drop for CloseOnExit<'_> {
            fn drop(&mut self) {
                let mut q = lock(&self.0.queue);
                q.closed = true;
                q.bytes = 0;
                for p in q.items.drain(..) {
                    let _ = p.done.send(Err(WalError::Closed));
                }
            }
        }
        let shared = self.shared.clone();
        let _close = CloseOnExit(&shared);
        loop {
            let batch = {
                let mut q = lock(&self.shared.queue);
                while q.items.is_empty() && !q.closed {
                    q = self.shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.items.is_empty() {
                    return;
                }
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                while let Some(p) = q.items.front() {
                    if !batch.is_empty() && bytes + p.payload.len() > self.max_group_bytes {
                        break;
                    }
                    bytes += p.payload.len();
                    batch.extend(q.items.pop_front());
                }
                q.bytes -= bytes;
                batch
            };
            self.commit(batch);
        }
    }

    /// Writes, syncs and answers one group.
    fn commit(&mut self, batch: Vec<Pending>) {
        let mut results: Vec<Result<Lsn, WalError>> = Vec::with_capacity(batch.len());
        if let Err(e) = self.repair_now() {
            self.answer_failed(batch, &mut results, e);
            return;
        }
        let mut chunk =
            Vec::with_capacity(batch.iter().map(|p| FRAME_HEADER_LEN + p.payload.len()).sum::<usize>().min(self.max_group_bytes));
        let mut in_chunk = 0u64;
        let mut failure = None;
        for p in &batch {
            let frame = (FRAME_HEADER_LEN + p.payload.len()) as u64;
            let used = self.active_len() + chunk.len() as u64;
            if used > SEGMENT_HEADER_LEN as u64 && used + frame > self.segment_bytes {
                // The segment is full: make what it got durable, then go on in a fresh one.
                if let Err(e) = self.write_chunk(&chunk, in_chunk, &mut results).and_then(|()| self.rotate()) {
                    failure = Some(e);
                    break;
                }
                chunk.clear();
                in_chunk = 0;
            }
            encode_frame(&mut chunk, self.next_lsn + in_chunk, &p.payload);
            in_chunk += 1;
        }
        if failure.is_none() {
            failure = self.write_chunk(&chunk, in_chunk, &mut results).err();
        }
        match failure {
            Some(e) => self.answer_failed(batch, &mut results, e),
            None => {
                for (p, r) in batch.into_iter().zip(results) {
                    let _ = p.done.send(r);
                }
            }
        }
    }

    /// Answers the records with a result already, and `error` to the rest.
    fn answer_failed(&mut self, batch: Vec<Pending>, results: &mut Vec<Result<Lsn, WalError>>, error: WalError) {
        self.shared.counters.failed_records.fetch_add((batch.len() - results.len()) as u64, Relaxed);
        results.resize(batch.len(), Err(error));
        for (p, r) in batch.into_iter().zip(results.drain(..)) {
            let _ = p.done.send(r);
        }
    }

    fn active_len(&self) -> u64 {
        self.active.as_ref().map_or(0, |a| a.len)
    }

    /// Appends `chunk` (`count` frames) to the active segment and syncs it;
    /// on success pushes their `Ok(lsn)` to `results`.
    fn write_chunk(&mut self, chunk: &[u8], count: u64, results: &mut Vec<Result<Lsn, WalError>>) -> Result<(), WalError> {
        if count == 0 {
            return Ok(());
        }
        let Some(a) = self.active.as_mut() else { return Err(WalError::Closed) };
        if let Err(e) = self.io.write_at(&a.file, &a.path, a.len, chunk) {
            let err = WalError::io(IoOp::Write, &a.path, e);
            self.repair = Repair::Truncate;
            let _ = self.repair_now();
            return Err(err);
        }
        self.shared.counters.fsyncs.fetch_add(1, Relaxed);
        if let Err(e) = self.io.sync(&a.file, &a.path) {
            let err = WalError::io(IoOp::Sync, &a.path, e);
            self.repair = Repair::Rotate;
            let _ = self.repair_now();
            return Err(err);
        }
        a.len += chunk.len() as u64;
        results.extend((self.next_lsn..self.next_lsn + count).map(|l| Ok(Lsn(l))));
        self.next_lsn += count;
        self.shared.durable_lsn.store(self.next_lsn - 1, Relaxed);
        let c = &self.shared.counters;
        c.records.fetch_add(count, Relaxed);
        c.bytes.fetch_add(chunk.len() as u64, Relaxed);
        c.commits.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Makes the log consistent again after a failure, if needed.
    fn repair_now(&mut self) -> Result<(), WalError> {
        match self.repair {
            Repair::None => Ok(()),
            Repair::Truncate => {
                self.shared.counters.repairs.fetch_add(1, Relaxed);
                match self.truncate_active() {
                    Ok(()) => {
                        self.repair = Repair::None;
                        Ok(())
                    }
                    Err(_) => {
                        self.repair = Repair::Rotate;
                        self.rotate()
                    }
                }
            }
            Repair::Rotate => {
                self.shared.counters.repairs.fetch_add(1, Relaxed);
                let _ = self.truncate_active();
                self.rotate()
            }
        }
    }

    /// Cuts the active segment back to its durable length, durably.
    fn truncate_active(&mut self) -> Result<(), WalError> {
        let Some(a) = self.active.as_ref() else { return Ok(()) };
        self.io.truncate(&a.file, &a.path, a.len).map_err(|e| WalError::io(IoOp::Truncate, &a.path, e))?;
        self.shared.counters.fsyncs.fetch_add(1, Relaxed);
        self.io.sync(&a.file, &a.path).map_err(|e| WalError::io(IoOp::Sync, &a.path, e))
    }

    /// Starts a fresh segment whose first record will be `next_lsn`: created,
    /// header written and synced, directory synced, before any record goes
    /// in. On failure the committer stays in [`Repair::Rotate`].
    pub fn rotate(&mut self) -> Result<(), WalError> {
        self.repair = Repair::Rotate;
        let path = self.wal_dir.join(segment_name(self.next_number));
        let file = self.io.create(&path).map_err(|e| WalError::io(IoOp::Create, &path, e))?;
        self.io.write_at(&file, &path, 0, &encode_segment_header(self.next_lsn)).map_err(|e| WalError::io(IoOp::Write, &path, e))?;
        self.shared.counters.fsyncs.fetch_add(2, Relaxed);
        self.io.sync(&file, &path).map_err(|e| WalError::io(IoOp::Sync, &path, e))?;
        self.io.sync_dir(&self.wal_dir).map_err(|e| WalError::io(IoOp::SyncDir, &self.wal_dir, e))?;
        lock(&self.shared.segments).push(SegmentInfo { first_lsn: self.next_lsn, path: path.clone() });
        self.next_number += 1;
        self.active = Some(Active { path, file, len: SEGMENT_HEADER_LEN as u64 });
        self.repair = Repair::None;
        Ok(())
    }
}

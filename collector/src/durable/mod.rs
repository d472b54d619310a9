//! Durable storage for the collector: a write-ahead log of opaque records
//! with group commit, checkpoints and crash recovery.
//!
//! # Contract
//!
//! - [`Wal::append`] resolves `Ok(lsn)` only once the record is on disk and
//!   `fdatasync` returned: it survives `kill -9` and a power cut. Records get
//!   consecutive LSNs (1, 2, ...) in the order they were appended.
//! - `Err` means the record is not in the log (the failed bytes are cut back
//!   before the answer; see [`Wal::append`] for the one corner case). The WAL
//!   repairs itself and later appends succeed once the disk does.
//! - [`Wal::open`] returns the newest checkpoint and every record after it,
//!   exactly as acknowledged. A torn or corrupt tail is cut off and reported
//!   in [`Recovered::cuts`]; a corrupt checkpoint is an error naming the file.
//!
//! The caller writes one batch and its dedup key (instance, sequence) as ONE
//! record, so after any crash either both are in the log or neither, and
//! replays the records through the same merge code that applied them live.
//!
//! # On disk
//!
//! ```text
//! DIR/checkpoint.<lsn, 20 digits>   header (magic, version, lsn, length, CRC-32) + snapshot
//! DIR/wal/00000001.seg, ...         header (magic, version, first lsn, CRC-32) + frames
//! frame                             len u32 | crc u32 | lsn u64 | payload   (crc covers len, lsn, payload)
//! ```
//!
//! Segments rotate at [`WalOptions::segment_bytes`] (64 MiB). A group commit
//! (`commit.rs`) writes every waiting record with one write and one
//! `fdatasync`, so the disk's sync latency is paid per group, not per record.
//! A checkpoint is written as `.tmp`, fsynced, renamed and the directory
//! fsynced; then the segments it wholly covers and older checkpoints go, so
//! the log stays bounded. Byte layouts are in `record.rs`, the recovery rules
//! in `recovery.rs`.
//!
//! # Why a segment log rather than an embedded store (redb)
//!
//! What must be durable per acknowledgement is the batch itself: a few KiB,
//! written once, read back only after a crash. Appending it to a log is one
//! sequential write and one `fdatasync` per group of batches, with no
//! read-modify-write of pages, no B-tree write amplification and no second
//! encoding of the state: the state is rebuilt by replaying batches through
//! the same merge code that applied them, so there is one source of truth
//! for what a batch does. A store such as `redb` would make us encode the
//! rollups as keys and values and rewrite pages on every commit (its commit
//! is also an fsync); its strengths, random reads and updates in place, are
//! what the collector does not need from disk, since the rollups live in
//! memory and a checkpoint snapshots them whole. The format is the
//! Prometheus TSDB WAL's idea (numbered segments, a CRC per record,
//! checkpoints written tmp + fsync + rename) with two differences: we fsync
//! before acknowledging (Prometheus does not), and records are not split
//! into 32 KiB pages (a record is one frame, up to
//! [`WalOptions::max_record_bytes`]).
//!
//! # Limits
//!
//! - One process per directory (no lock file): the caller must not open the
//!   same `--data-dir` twice.
//! - [`Recovered::records`] holds every record after the checkpoint in
//!   memory: checkpoint often enough (e.g. when [`WalStats::bytes`] since the
//!   last checkpoint passes a few segments) to bound restart time and memory.
//! - Checkpoints hold the whole snapshot in memory (write and read).

mod checkpoint;
mod commit;
mod error;
pub mod fault;
mod record;
mod recovery;
mod segment;
mod wal;

#[cfg(test)]
mod tests;

pub use error::WalError;
pub use fault::{Fault, FaultInjector, FaultPlan, IoOp, EIO, ENOSPC};
pub use recovery::{Checkpoint, Cut, CutReason, Record, Recovered};
pub use wal::{CheckpointReport, Wal, WalOptions, WalStats, MAX_RECORD_BYTES_LIMIT};

use std::fmt;

/// Log sequence number: the position of a record in the log, 1 for the
/// first record ever, consecutive. `Lsn(0)` means "before any record".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

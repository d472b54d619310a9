//! The [`Wal`] handle: open (recover), append (group-committed), checkpoint.

use super::checkpoint::{list_checkpoints, write_checkpoint};
use super::commit::{lock, Committer, Pending, Shared};
use super::error::WalError;
use super::fault::{FaultInjector, Io, IoOp};
use super::recovery::{recover, Recovered};
use super::segment::WAL_DIR;
use super::Lsn;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tokio::sync::oneshot;

/// The largest `max_record_bytes` accepted (frames store a u32 length).
pub const MAX_RECORD_BYTES_LIMIT: usize = 1 << 30;

/// Settings of a [`Wal`].
#[derive(Clone)]
pub struct WalOptions {
    /// A segment is closed and a new one started once the next record would
    /// take it past this size (a single larger record gets a segment of its
    /// own). Default 64 MiB.
    pub segment_bytes: u64,
    /// Appends of larger payloads fail with [`WalError::RecordTooLarge`].
    /// Default 32 MiB, at most [`MAX_RECORD_BYTES_LIMIT`].
    pub max_record_bytes: usize,
    /// The most payload bytes one group commit writes (at least one record).
    /// Default 16 MiB.
    pub max_group_bytes: usize,
    /// Appends fail with [`WalError::Overloaded`] while this many payload
    /// bytes already wait for the committer. Default 256 MiB.
    pub max_pending_bytes: usize,
    /// Fails chosen file operations (tests); `None` in production.
    pub faults: Option<Arc<dyn FaultInjector>>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            max_record_bytes: 32 << 20,
            max_group_bytes: 16 << 20,
            max_pending_bytes: 256 << 20,
            faults: None,
        }
    }
}

impl fmt::Debug for WalOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalOptions")
            .field("segment_bytes", &self.segment_bytes)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("max_group_bytes", &self.max_group_bytes)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("faults", &self.faults.is_some())
            .finish()
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        if self.segment_bytes < 64 {
            return Err(WalError::InvalidOptions(format!("segment_bytes {} is below 64", self.segment_bytes)));
        }
        if self.max_record_bytes > MAX_RECORD_BYTES_LIMIT {
            return Err(WalError::InvalidOptions(format!("max_record_bytes {} is above {MAX_RECORD_BYTES_LIMIT}", self.max_record_bytes)));
        }
        Ok(())
    }
}

/// Counters since [`Wal::open`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records made durable.
    pub records: u64,
    /// Frame bytes written for them.
    pub bytes: u64,
    /// Group commits (each one write + one `fdatasync` of a segment).
    pub commits: u64,
    /// All file syncs (commits, segment creation, repairs).
    pub fsyncs: u64,
    /// Appends answered with an I/O error.
    pub failed_records: u64,
    /// Repairs after an I/O error (cut back or fresh segment).
    pub repairs: u64,
    /// Live segment files.
    pub segments: u64,
}

/// What [`Wal::checkpoint`] did.
#[derive(Clone, Debug)]
pub struct CheckpointReport {
    /// The new checkpoint file.
    pub path: PathBuf,
    /// Segments removed (wholly covered by it).
    pub segments_removed: usize,
    /// Older checkpoints removed.
    pub checkpoints_removed: usize,
    /// A failure while removing covered files after the checkpoint was
    /// durable: harmless (retried by the next checkpoint, or at open), but
    /// worth a log line.
    pub cleanup_error: Option<WalError>,
}

struct Inner {
    shared: Arc<Shared>,
    dir: PathBuf,
    io: Io,
    options: WalOptions,
    committer: Mutex<Option<JoinHandle<()>>>,
    /// The newest checkpoint's LSN; also serialises checkpoints.
    checkpoint: Mutex<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_all();
        if let Some(t) = lock(&self.committer).take() {
            let _ = t.join();
        }
    }
}

/// A durable write-ahead log in a directory. Cheap to clone (one committer
/// thread behind all clones). Dropping the last clone waits until the
/// committer has finished the queued appends (a short block).
#[derive(Clone)]
pub struct Wal {
    inner: Arc<Inner>,
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("dir", &self.inner.dir).field("durable", &self.durable_lsn()).finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the log in `dir`: recovers the newest
    /// checkpoint and the records after it, cuts a torn or corrupt tail (see
    /// [`Recovered::cuts`]), and starts a fresh segment for new appends.
    /// Blocking (file I/O): from async code call it in `spawn_blocking`.
    ///
    /// Errors: [`WalError::CorruptCheckpoint`] naming the file if the newest
    /// checkpoint does not verify; [`WalError::Io`] if the directory cannot
    /// be read or repaired. If only the new segment cannot be created (disk
    /// full), the open succeeds and appends fail until it can. One process
    /// at a time per directory.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Recovered), WalError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let io = Io::new(options.faults.clone());
        let outcome = recover(&dir, &io)?;
        let shared = Arc::new(Shared::default());
        *lock(&shared.segments) = outcome.live;
        let mut committer = Committer::new(
            shared.clone(),
            io.clone(),
            dir.join(WAL_DIR),
            outcome.next_lsn,
            outcome.next_number,
            options.segment_bytes,
            options.max_group_bytes,
        );
        if let Err(e) = committer.rotate() {
            // A full disk must not stop the start (the caller still serves
            // what it recovered): appends fail until a segment can be made.
            tracing::warn!("WAL: cannot start a new segment, appends fail until it can: {e}");
        }
        let thread = std::thread::Builder::new()
            .name("shoal-wal-commit".into())
            .spawn(move || committer.run())
            .map_err(|e| WalError::io(IoOp::Create, "shoal-wal-commit thread", e))?;
        let newest = outcome.recovered.checkpoint.as_ref().map_or(0, |c| c.lsn.0);
        let inner = Inner { shared, dir, io, options, committer: Mutex::new(Some(thread)), checkpoint: Mutex::new(newest) };
        Ok((Wal { inner: Arc::new(inner) }, outcome.recovered))
    }

    /// Queues `payload` as one record and resolves once it is durable (on
    /// disk, fdatasync'ed) with its LSN. The record is queued when this is
    /// called, not when the future is first polled, so calls made one after
    /// the other get increasing LSNs.
    ///
    /// `Err` means the record is not in the log, and will not be replayed —
    /// with one exception: if the process dies while the WAL could not yet
    /// cut a failed record back (the disk refusing even that), recovery may
    /// find it. A caller whose resend carries the same dedup key (as the
    /// shoal SDK does) is unaffected: the replay and the resend are one batch.
    pub fn append(&self, payload: Vec<u8>) -> impl Future<Output = Result<Lsn, WalError>> + Send + 'static {
        let queued = self.enqueue(payload);
        async move {
            match queued {
                Ok(rx) => rx.await.unwrap_or(Err(WalError::Closed)),
                Err(e) => Err(e),
            }
        }
    }

    /// [`Wal::append`] for a thread that may block (not inside an async
    /// task: it would stall the runtime, and tokio panics on it).
    pub fn append_blocking(&self, payload: Vec<u8>) -> Result<Lsn, WalError> {
        self.enqueue(payload)?.blocking_recv().unwrap_or(Err(WalError::Closed))
    }

    fn enqueue(&self, payload: Vec<u8>) -> Result<oneshot::Receiver<Result<Lsn, WalError>>, WalError> {
        let max = self.inner.options.max_record_bytes;
        if payload.len() > max {
            return Err(WalError::RecordTooLarge { len: payload.len(), max });
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.inner.shared.queue);
            if q.closed {
                return Err(WalError::Closed);
            }
            if !q.items.is_empty() && q.bytes + payload.len() > self.inner.options.max_pending_bytes {
                return Err(WalError::Overloaded { pending_bytes: q.bytes });
            }
            q.bytes += payload.len();
            q.items.push_back(Pending { payload, done: tx });
        }
        self.inner.shared.wake.notify_one();
        Ok(rx)
    }

    /// The LSN of the last durable record (`Lsn(0)`: none yet).
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.inner.shared.durable_lsn.load(Relaxed))
    }

    /// The LSN the newest checkpoint covers (`Lsn(0)`: none).
    pub fn checkpoint_lsn(&self) -> Lsn {
        Lsn(*lock(&self.inner.checkpoint))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        let c = &self.inner.shared.counters;
        WalStats {
            records: c.records.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            commits: c.commits.load(Relaxed),
            fsyncs: c.fsyncs.load(Relaxed),
            failed_records: c.failed_records.load(Relaxed),
            repairs: c.repairs.load(Relaxed),
            segments: lock(&self.inner.shared.segments).len() as u64,
        }
    }

    /// Makes `snapshot` — the state after applying every record up to
    /// `covers_up_to` and none after — the new starting point, then removes
    /// the segments and older checkpoints it makes unnecessary.
    ///
    /// Written as `checkpoint.<lsn>.tmp`, fsynced, renamed to
    /// `checkpoint.<lsn>`, directory fsynced. `covers_up_to` must lie between
    /// the newest checkpoint and [`Wal::durable_lsn`]. Blocking (file I/O,
    /// the whole snapshot): from async code call it in `spawn_blocking`.
    /// Appends go on meanwhile.
    pub fn checkpoint(&self, snapshot: &[u8], covers_up_to: Lsn) -> Result<CheckpointReport, WalError> {
        let mut newest = lock(&self.inner.checkpoint);
        let durable = self.durable_lsn();
        if covers_up_to.0 < *newest || covers_up_to > durable {
            return Err(WalError::CheckpointOutOfRange { requested: covers_up_to, newest_checkpoint: Lsn(*newest), durable });
        }
        let io = &self.inner.io;
        let path = write_checkpoint(io, &self.inner.dir, covers_up_to.0, snapshot)?;
        *newest = covers_up_to.0;
        let mut report = CheckpointReport { path, segments_removed: 0, checkpoints_removed: 0, cleanup_error: None };

        // Segments whose successor starts at or before covers_up_to + 1 hold
        // nothing after the checkpoint. The last (active) one always stays.
        {
            let mut segments = lock(&self.inner.shared.segments);
            while segments.len() > 1 && segments[1].first_lsn <= covers_up_to.0 + 1 {
                if let Err(e) = io.remove(&segments[0].path) {
                    report.cleanup_error = Some(WalError::io(IoOp::Remove, &segments[0].path, e));
                    break;
                }
                segments.remove(0);
                report.segments_removed += 1;
            }
        }
        match list_checkpoints(&self.inner.dir) {
            Ok((old, _)) => {
                for (_, p) in old.iter().filter(|(lsn, _)| *lsn < covers_up_to.0) {
                    match io.remove(p) {
                        Ok(()) => report.checkpoints_removed += 1,
                        Err(e) => report.cleanup_error = Some(WalError::io(IoOp::Remove, p, e)),
                    }
                }
            }
            Err(e) => report.cleanup_error = Some(WalError::io(IoOp::Read, &self.inner.dir, e)),
        }
        let wal_dir = self.inner.dir.join(WAL_DIR);
        for d in [&wal_dir, &self.inner.dir] {
            if let Err(e) = io.sync_dir(d) {
                report.cleanup_error = Some(WalError::io(IoOp::SyncDir, d, e));
            }
        }
        Ok(report)
    }
}

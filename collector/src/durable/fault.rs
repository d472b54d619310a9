//! Injectable I/O faults, without root or mounts: every file operation that
//! changes state goes through [`Io`], which asks the configured
//! [`FaultInjector`] first. [`FaultPlan`] is a ready-made injector for tests
//! ("the 3rd fsync fails with EIO", "disk full until further notice").

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// `ENOSPC` (no space left on device) on Linux and macOS.
pub const ENOSPC: i32 = 28;
/// `EIO` (input/output error) on Linux and macOS.
pub const EIO: i32 = 5;

/// The file operations that can be made to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoOp {
    /// Creating (or re-creating) a segment or checkpoint file.
    Create,
    /// Writing bytes.
    Write,
    /// `fdatasync` / `fsync` of a file.
    Sync,
    /// Truncating a file.
    Truncate,
    /// `fsync` of a directory (makes creations, renames and removals durable).
    SyncDir,
    /// Renaming a file.
    Rename,
    /// Removing a file.
    Remove,
    /// Reading (named in errors; not injected).
    Read,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::Create => "create",
            IoOp::Write => "write",
            IoOp::Sync => "fsync",
            IoOp::Truncate => "truncate",
            IoOp::SyncDir => "fsync directory",
            IoOp::Rename => "rename",
            IoOp::Remove => "remove",
            IoOp::Read => "read",
        })
    }
}

/// A fault to inject in place of an operation.
#[derive(Debug)]
pub struct Fault {
    /// The error the operation returns.
    pub error: io::Error,
    /// For [`IoOp::Write`]: the first half of the bytes is written before
    /// the error (a short write, as a full disk produces). Ignored for other
    /// operations.
    pub short_write: bool,
}

/// Decides, before each file operation, whether it fails.
pub trait FaultInjector: Send + Sync + 'static {
    /// `Some(fault)`: the operation on `path` is not performed (or, for a
    /// short write, only half of it) and returns `fault.error`.
    fn before(&self, op: IoOp, path: &Path) -> Option<Fault>;
}

#[derive(Debug, Default)]
struct Rules {
    /// op -> (calls still to pass, failures still to inject, errno).
    next: HashMap<IoOp, (u64, u64, i32)>,
    /// op -> errno: fails every call until cleared.
    always: HashMap<IoOp, i32>,
}

/// A scriptable [`FaultInjector`]: counts operations and fails the ones it
/// was told to. Cheap to share (`Arc<FaultPlan>`) between a test and the WAL.
#[derive(Debug, Default)]
pub struct FaultPlan {
    rules: Mutex<Rules>,
    counts: [AtomicU64; 8],
    short_writes: std::sync::atomic::AtomicBool,
}

impl FaultPlan {
    /// A plan that injects nothing yet.
    pub fn new() -> Arc<FaultPlan> {
        Arc::new(FaultPlan::default())
    }

    /// The `nth` next call of `op` (1 = the very next) fails with `errno`.
    pub fn fail_nth(&self, op: IoOp, nth: u64, errno: i32) {
        self.lock().next.insert(op, (nth.saturating_sub(1), 1, errno));
    }

    /// The next `count` calls of `op` fail with `errno`.
    pub fn fail_next(&self, op: IoOp, count: u64, errno: i32) {
        self.lock().next.insert(op, (0, count, errno));
    }

    /// Every call of `op` fails with `errno` (e.g. a full disk) until
    /// [`FaultPlan::heal`].
    pub fn fail_always(&self, op: IoOp, errno: i32) {
        self.lock().always.insert(op, errno);
    }

    /// Stops injecting anything.
    pub fn heal(&self) {
        let mut r = self.lock();
        r.next.clear();
        r.always.clear();
    }

    /// Failing writes write half their bytes first (a torn write).
    pub fn short_writes(&self, on: bool) {
        self.short_writes.store(on, Relaxed);
    }

    /// How many times `op` was attempted so far (failed ones included).
    pub fn count(&self, op: IoOp) -> u64 {
        self.counts[op as usize].load(Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl FaultInjector for FaultPlan {
    fn before(&self, op: IoOp, _path: &Path) -> Option<Fault> {
        self.counts[op as usize].fetch_add(1, Relaxed);
        let mut r = self.lock();
        let mut errno = r.always.get(&op).copied();
        if errno.is_none() {
            if let Some((skip, fail, e)) = r.next.get_mut(&op) {
                if *skip > 0 {
                    *skip -= 1;
                } else if *fail > 0 {
                    *fail -= 1;
                    errno = Some(*e);
                }
            }
        }
        let error = io::Error::from_raw_os_error(errno?);
        Some(Fault { error, short_write: self.short_writes.load(Relaxed) })
    }
}

/// File operations with optional fault injection.
#[derive(Clone, Default)]
pub struct Io {
    faults: Option<Arc<dyn FaultInjector>>,
}

impl fmt::Debug for Io {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Io").field("faults", &self.faults.is_some()).finish()
    }
}

impl Io {
    /// Real I/O, failing where `faults` says.
    pub fn new(faults: Option<Arc<dyn FaultInjector>>) -> Io {
        Io { faults }
    }

    fn check(&self, op: IoOp, path: &Path) -> Result<(), Fault> {
        match self.faults.as_ref().and_then(|f| f.before(op, path)) {
            Some(fault) => Err(fault),
            None => Ok(()),
        }
    }

    fn simple(&self, op: IoOp, path: &Path) -> io::Result<()> {
        self.check(op, path).map_err(|f| f.error)
    }

    /// Creates `path` (emptying it if it exists) for reading and writing.
    pub fn create(&self, path: &Path) -> io::Result<File> {
        self.simple(IoOp::Create, path)?;
        OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, mut file: &File, path: &Path, offset: u64, buf: &[u8]) -> io::Result<()> {
        let (buf, fault) = match self.check(IoOp::Write, path) {
            Ok(()) => (buf, None),
            Err(f) => (if f.short_write { &buf[..buf.len() / 2] } else { &[][..] }, Some(f.error)),
        };
        file.seek(SeekFrom::Start(offset))?;
        file.write_all(buf)?;
        fault.map_or(Ok(()), Err)
    }

    /// `fdatasync`: the data and the size of `file` are on disk.
    pub fn sync(&self, file: &File, path: &Path) -> io::Result<()> {
        self.simple(IoOp::Sync, path)?;
        file.sync_data()
    }

    /// Cuts (or extends) `file` to `len` bytes.
    pub fn truncate(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        self.simple(IoOp::Truncate, path)?;
        file.set_len(len)
    }

    /// Makes entries created, renamed or removed in `dir` durable.
    pub fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.simple(IoOp::SyncDir, dir)?;
        #[cfg(unix)]
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Renames `from` to `to` (atomically replacing `to`).
    pub fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.simple(IoOp::Rename, from)?;
        std::fs::rename(from, to)
    }

    /// Removes the file `path`.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        self.simple(IoOp::Remove, path)?;
        std::fs::remove_file(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fails_exactly_what_it_was_told() {
        let plan = FaultPlan::new();
        let p = Path::new("x");
        plan.fail_nth(IoOp::Sync, 2, EIO);
        assert!(plan.before(IoOp::Sync, p).is_none());
        let f = plan.before(IoOp::Sync, p).expect("2nd sync fails");
        assert_eq!(f.error.raw_os_error(), Some(EIO));
        assert!(plan.before(IoOp::Sync, p).is_none());
        assert!(plan.before(IoOp::Write, p).is_none());
        plan.fail_always(IoOp::Write, ENOSPC);
        assert!(plan.before(IoOp::Write, p).is_some());
        assert!(plan.before(IoOp::Write, p).is_some());
        plan.heal();
        assert!(plan.before(IoOp::Write, p).is_none());
        assert_eq!(plan.count(IoOp::Sync), 3);
        assert_eq!(plan.count(IoOp::Write), 4);
    }

    #[test]
    fn short_write_leaves_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let plan = FaultPlan::new();
        plan.short_writes(true);
        plan.fail_next(IoOp::Write, 1, ENOSPC);
        let io = Io::new(Some(plan.clone()));
        let file = io.create(&path).unwrap();
        let err = io.write_at(&file, &path, 0, &[7u8; 100]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(ENOSPC));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 50);
        io.write_at(&file, &path, 0, &[7u8; 100]).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100);
    }
}

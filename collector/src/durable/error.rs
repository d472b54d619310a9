//! The WAL's typed errors.

use super::fault::IoOp;
use super::Lsn;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// What went wrong in the write-ahead log.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WalError {
    /// A file operation failed (disk full, I/O error, ...). For an append:
    /// the record is not durable and was not kept; retry later (the WAL
    /// repairs itself on the next append).
    Io {
        /// The operation.
        op: IoOp,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: Arc<io::Error>,
    },
    /// A record larger than [`WalOptions::max_record_bytes`](super::WalOptions::max_record_bytes).
    RecordTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`WalOptions::max_pending_bytes`](super::WalOptions::max_pending_bytes)
    /// wait for the disk: shed load and retry later.
    Overloaded {
        /// Bytes waiting.
        pending_bytes: usize,
    },
    /// A checkpoint file is damaged: the start stops here rather than
    /// continue from an empty or partial state.
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint was asked for records that are not durable yet, or for
    /// fewer records than the newest checkpoint already covers.
    CheckpointOutOfRange {
        /// What the checkpoint was to cover.
        requested: Lsn,
        /// The newest checkpoint's LSN (the lower bound).
        newest_checkpoint: Lsn,
        /// The last durable record (the upper bound).
        durable: Lsn,
    },
    /// Options that cannot work (e.g. a zero segment size).
    InvalidOptions(String),
    /// The WAL was closed (its committer is gone).
    Closed,
}

impl WalError {
    pub(crate) fn io(op: IoOp, path: impl Into<PathBuf>, source: io::Error) -> WalError {
        WalError::Io { op, path: path.into(), source: Arc::new(source) }
    }

    /// Whether the same request may succeed later (disk full, I/O error,
    /// overload): answer `UNAVAILABLE` with a retry hint.
    pub fn is_retryable(&self) -> bool {
        matches!(self, WalError::Io { .. } | WalError::Overloaded { .. })
    }
}

impl fmt::Display for WalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalError::Io { op, path, source } => write!(f, "WAL {op} of {} failed: {source}", path.display()),
            WalError::RecordTooLarge { len, max } => write!(f, "WAL record of {len} bytes exceeds the {max}-byte limit"),
            WalError::Overloaded { pending_bytes } => write!(f, "WAL overloaded: {pending_bytes} bytes wait for the disk"),
            WalError::CorruptCheckpoint { path, reason } => write!(f, "corrupt checkpoint {}: {reason}", path.display()),
            WalError::CheckpointOutOfRange { requested, newest_checkpoint, durable } => write!(
                f,
                "checkpoint up to lsn {requested} refused: it must lie between the newest checkpoint ({newest_checkpoint}) \
                 and the last durable record ({durable})"
            ),
            WalError::InvalidOptions(why) => write!(f, "invalid WAL options: {why}"),
            WalError::Closed => f.write_str("WAL closed"),
        }
    }
}

impl std::error::Error for WalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            WalError::Io { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

//! Checkpoint files: `DIR/checkpoint.<lsn>` (20 digits), written as
//! `.tmp`, fsynced, renamed into place and made durable by an fsync of the
//! directory. A damaged checkpoint is an error naming the file.

use super::error::WalError;
use super::fault::{Io, IoOp};
use super::record::{checkpoint_crc, decode_checkpoint_header, encode_checkpoint_header, CHECKPOINT_HEADER_LEN};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

const PREFIX: &str = "checkpoint.";
const TMP_SUFFIX: &str = ".tmp";

/// `checkpoint.00000000000000000042`.
pub fn checkpoint_name(lsn: u64) -> String {
    format!("{PREFIX}{lsn:020}")
}

/// The LSN of a checkpoint file name and whether it is a leftover `.tmp`.
pub fn parse_checkpoint_name(name: &str) -> Option<(u64, bool)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (digits, tmp) = match rest.strip_suffix(TMP_SUFFIX) {
        Some(d) => (d, true),
        None => (rest, false),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, tmp))
}

/// Checkpoint files by LSN.
pub type Checkpoints = Vec<(u64, PathBuf)>;

/// The checkpoints in `dir` by LSN, and the leftover temporary files.
pub fn list_checkpoints(dir: &Path) -> io::Result<(Checkpoints, Vec<PathBuf>)> {
    let (mut done, mut tmp) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        match entry.file_name().to_str().and_then(parse_checkpoint_name) {
            Some((_, true)) => tmp.push(entry.path()),
            Some((lsn, false)) => done.push((lsn, entry.path())),
            None => {}
        }
    }
    done.sort_unstable_by_key(|(lsn, _)| *lsn);
    Ok((done, tmp))
}

/// Writes the checkpoint of `snapshot` covering records up to `lsn`
/// durably; returns its path. On error the temporary file is removed (best
/// effort) and no checkpoint replaces the previous one.
pub fn write_checkpoint(io: &Io, dir: &Path, lsn: u64, snapshot: &[u8]) -> Result<PathBuf, WalError> {
    let path = dir.join(checkpoint_name(lsn));
    let tmp = dir.join(format!("{}{TMP_SUFFIX}", checkpoint_name(lsn)));
    let result = (|| {
        let file = io.create(&tmp).map_err(|e| WalError::io(IoOp::Create, &tmp, e))?;
        io.write_at(&file, &tmp, 0, &encode_checkpoint_header(lsn, snapshot)).map_err(|e| WalError::io(IoOp::Write, &tmp, e))?;
        io.write_at(&file, &tmp, CHECKPOINT_HEADER_LEN as u64, snapshot).map_err(|e| WalError::io(IoOp::Write, &tmp, e))?;
        io.sync(&file, &tmp).map_err(|e| WalError::io(IoOp::Sync, &tmp, e))?;
        drop(file);
        io.rename(&tmp, &path).map_err(|e| WalError::io(IoOp::Rename, &tmp, e))?;
        io.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))
    })();
    if result.is_err() && tmp.exists() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Reads and verifies the checkpoint at `path`, named for `lsn`.
pub fn read_checkpoint(path: &Path, lsn: u64) -> Result<Vec<u8>, WalError> {
    let corrupt = |reason: String| WalError::CorruptCheckpoint { path: path.to_path_buf(), reason };
    let mut file = File::open(path).map_err(|e| corrupt(format!("cannot open: {e}")))?;
    let file_len = file.metadata().map_err(|e| corrupt(format!("cannot stat: {e}")))?.len();
    let mut header = Vec::with_capacity(CHECKPOINT_HEADER_LEN);
    (&mut file).take(CHECKPOINT_HEADER_LEN as u64).read_to_end(&mut header).map_err(|e| corrupt(format!("cannot read: {e}")))?;
    let (stored_lsn, len, crc) = decode_checkpoint_header(&header).map_err(corrupt)?;
    if stored_lsn != lsn {
        return Err(corrupt(format!("named for lsn {lsn} but its header says {stored_lsn}")));
    }
    let held = file_len - CHECKPOINT_HEADER_LEN as u64;
    if len != held {
        return Err(corrupt(format!("header declares {len} snapshot bytes, the file holds {held} (truncated or damaged)")));
    }
    let mut snapshot = vec![0u8; len as usize];
    file.read_exact(&mut snapshot).map_err(|e| corrupt(format!("cannot read: {e}")))?;
    if checkpoint_crc(&header, &snapshot) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_checkpoint_name(&checkpoint_name(42)), Some((42, false)));
        assert_eq!(parse_checkpoint_name("checkpoint.00000000000000000042.tmp"), Some((42, true)));
        for bad in ["checkpoint.", "checkpoint.x", "checkpoint..tmp", "checkpoint.1.bak", "wal"] {
            assert_eq!(parse_checkpoint_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn write_then_read_and_every_damage_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::default();
        let path = write_checkpoint(&io, dir.path(), 7, b"the state").unwrap();
        assert_eq!(read_checkpoint(&path, 7).unwrap(), b"the state");
        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(&path, &bad).unwrap();
            let err = read_checkpoint(&path, 7).unwrap_err();
            assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        }
        for cut in 0..good.len() {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(matches!(read_checkpoint(&path, 7), Err(WalError::CorruptCheckpoint { .. })), "cut at {cut}");
        }
        std::fs::write(&path, &good).unwrap();
        assert!(read_checkpoint(&path, 8).is_err(), "a renamed checkpoint is caught");
    }
}

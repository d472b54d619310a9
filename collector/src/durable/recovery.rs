//! Recovery: the newest checkpoint, then every intact record after it, in
//! LSN order; whatever cannot be trusted is cut off and reported.
//!
//! Rules, in the order they apply:
//! - Leftover `checkpoint.*.tmp` files are removed. The newest checkpoint
//!   must verify, or the open fails naming it.
//! - Segments wholly covered by the checkpoint (a later segment starts at or
//!   before `checkpoint + 1`) are removed: a truncation interrupted by a crash.
//! - Segment `k+1` starting at LSN `F` supersedes the records of segment `k`
//!   from `F` on: they were written by an append that failed (and was
//!   answered `Err`) and could not be cut back. They are removed and reported
//!   as [`CutReason::Superseded`], which is not a loss.
//! - A torn or corrupt frame (short, bad checksum, unexpected LSN) ends the
//!   log: the file is truncated there, every later segment is removed, and
//!   the cut is reported with its segment, offset, bytes and records.
//! - A segment whose first LSN leaves a hole after the previous one (a lost
//!   segment, or a corrupt tail before it) ends the log the same way.

use super::checkpoint::{list_checkpoints, read_checkpoint};
use super::commit::SegmentInfo;
use super::error::WalError;
use super::fault::{Io, IoOp};
use super::segment::{list_segments, read_segment_header, Frame, FrameReader, WAL_DIR};
use super::Lsn;
use std::fmt;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its LSN.
    pub lsn: Lsn,
    /// Its payload, exactly as appended.
    pub payload: Vec<u8>,
}

/// The newest checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last LSN it covers: replay the records after it.
    pub lsn: Lsn,
    /// The snapshot bytes, exactly as written.
    pub bytes: Vec<u8>,
    /// Its file.
    pub path: PathBuf,
}

/// Why recovery cut part of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// A torn or corrupt record: the file was truncated at it.
    Corrupt,
    /// A segment whose header is damaged (or torn while it was created).
    BadHeader,
    /// A segment that does not follow the end of the log (records missing).
    Gap,
    /// A segment after the end of the log (after a cut or a gap).
    AfterEnd,
    /// Records of appends that failed and were answered `Err`: never
    /// acknowledged, so not a loss.
    Superseded,
}

/// A part of the log that recovery removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// The segment file.
    pub segment: PathBuf,
    /// Where it was cut (0: the whole file was removed).
    pub offset: u64,
    /// Bytes removed.
    pub bytes: u64,
    /// Records removed: those that still verified, plus one for a torn or
    /// corrupt frame (so a lower bound when the damage spans several).
    pub records: u64,
    /// Why.
    pub reason: CutReason,
    /// What exactly was found.
    pub detail: String,
}

impl Cut {
    /// Whether acknowledged data may have been lost (everything but
    /// [`CutReason::Superseded`]).
    pub fn is_loss(&self) -> bool {
        self.reason != CutReason::Superseded
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.offset == 0 { "removed".to_string() } else { format!("cut at offset {}", self.offset) };
        write!(f, "{} {what}: {} bytes, {} records, {:?}: {}", self.segment.display(), self.bytes, self.records, self.reason, self.detail)
    }
}

/// What [`Wal::open`](super::Wal::open) found.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The newest checkpoint, if any.
    pub checkpoint: Option<Checkpoint>,
    /// The records after the checkpoint, in LSN order, consecutive.
    pub records: Vec<Record>,
    /// What was cut off, in log order: log each, and count
    /// [`Recovered::lost_records`] as corrupt.
    pub cuts: Vec<Cut>,
    /// Leftover temporary checkpoint files that were removed.
    pub removed_tmp: Vec<PathBuf>,
}

impl Recovered {
    /// Records cut off that may have been acknowledged (for
    /// `shoal_collector_wal_corrupt_records_total`).
    pub fn lost_records(&self) -> u64 {
        self.cuts.iter().filter(|c| c.is_loss()).map(|c| c.records).sum()
    }

    /// Bytes cut off that may have held acknowledged records.
    pub fn lost_bytes(&self) -> u64 {
        self.cuts.iter().filter(|c| c.is_loss()).map(|c| c.bytes).sum()
    }
}

/// Recovery's result, with what the committer needs to continue.
pub struct Outcome {
    pub recovered: Recovered,
    pub next_lsn: u64,
    pub next_number: u64,
    pub live: Vec<SegmentInfo>,
}

fn read_err(path: &Path) -> impl Fn(std::io::Error) -> WalError + '_ {
    move |e| WalError::io(IoOp::Read, path, e)
}

/// Recovers the log in `dir` (creating the directories if needed).
pub fn recover(dir: &Path, io: &Io) -> Result<Outcome, WalError> {
    let wal_dir = dir.join(WAL_DIR);
    let fresh = !wal_dir.is_dir();
    std::fs::create_dir_all(&wal_dir).map_err(|e| WalError::io(IoOp::Create, &wal_dir, e))?;
    if fresh {
        // Make the new directories' entries durable (the parent's only where it can be opened).
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            let _ = io.sync_dir(parent);
        }
        io.sync_dir(dir).map_err(|e| WalError::io(IoOp::SyncDir, dir, e))?;
    }
    let mut recovered = Recovered::default();

    let (checkpoints, tmps) = list_checkpoints(dir).map_err(read_err(dir))?;
    for tmp in tmps {
        io.remove(&tmp).map_err(|e| WalError::io(IoOp::Remove, &tmp, e))?;
        recovered.removed_tmp.push(tmp);
    }
    if let Some((lsn, path)) = checkpoints.last() {
        let bytes = read_checkpoint(path, *lsn)?;
        recovered.checkpoint = Some(Checkpoint { lsn: Lsn(*lsn), bytes, path: path.clone() });
    }
    let base = recovered.checkpoint.as_ref().map_or(0, |c| c.lsn.0);

    let segments = list_segments(&wal_dir).map_err(read_err(&wal_dir))?;
    let next_number = segments.last().map_or(1, |(n, _)| n + 1);
    let mut headers = Vec::with_capacity(segments.len());
    for (_, path) in &segments {
        headers.push(read_segment_header(path).map_err(read_err(path))?);
    }
    // Segments before the last one starting at or before base + 1 are covered.
    let start = headers.iter().rposition(|h| matches!(h, Ok(f) if *f <= base + 1)).unwrap_or(0);
    for (_, path) in &segments[..start] {
        io.remove(path).map_err(|e| WalError::io(IoOp::Remove, path, e))?;
    }
    // The chain of readable headers with non-decreasing first LSNs.
    let mut end_ok = start;
    while end_ok < segments.len() {
        match (&headers[end_ok], end_ok.checked_sub(1).filter(|p| *p >= start).map(|p| &headers[p])) {
            (Ok(f), Some(Ok(prev))) if f < prev => break,
            (Ok(_), _) => end_ok += 1,
            (Err(_), _) => break,
        }
    }

    let mut expected: Option<u64> = None;
    let mut ended: Option<String> = None;
    let mut live = Vec::new();
    for i in start..segments.len() {
        let (_, path) = &segments[i];
        let readable = match &headers[i] {
            Ok(first) if ended.is_none() && i < end_ok => Some(*first),
            _ => None,
        };
        if let Some(first) = readable {
            // The first record this segment must start with (a hole wholly
            // covered by the checkpoint is no loss).
            let e = expected.unwrap_or(first.min(base + 1));
            if first != e && first > base + 1 {
                let detail = format!("starts at lsn {first}, but the log ends before lsn {}", e.max(base + 1));
                recovered.cuts.push(remove_segment(io, path, Some(first), CutReason::Gap, detail.clone())?);
                ended = Some(detail);
                continue;
            }
            if first < e {
                // Only possible if headers lie about their order; trust nothing after.
                let detail = format!("starts at lsn {first}, before the end of the previous segment (lsn {e})");
                recovered.cuts.push(remove_segment(io, path, Some(first), CutReason::Gap, detail.clone())?);
                ended = Some(detail);
                continue;
            }
            let limit = (i + 1 < end_ok).then(|| headers[i + 1].clone().ok()).flatten();
            let (next, cut) = scan_segment(io, path, first, base, limit, &mut recovered.records)?;
            expected = Some(next);
            if let Some(cut) = cut {
                if cut.is_loss() {
                    ended = Some(format!("{} was cut at offset {}", path.display(), cut.offset));
                }
                recovered.cuts.push(cut);
            }
            live.push(SegmentInfo { first_lsn: first, path: path.clone() });
        } else {
            let (reason, first, detail) = match (&headers[i], &ended) {
                (Err(why), _) => (CutReason::BadHeader, None, why.clone()),
                (Ok(f), Some(why)) => (CutReason::AfterEnd, Some(*f), format!("after the end of the log ({why})")),
                (Ok(f), None) => (CutReason::AfterEnd, Some(*f), "after a damaged segment".to_string()),
            };
            let cut = remove_segment(io, path, first, reason, detail)?;
            ended.get_or_insert_with(|| format!("{} was removed", path.display()));
            recovered.cuts.push(cut);
        }
    }
    io.sync_dir(&wal_dir).map_err(|e| WalError::io(IoOp::SyncDir, &wal_dir, e))?;
    let next_lsn = expected.unwrap_or(base + 1).max(base + 1);
    Ok(Outcome { recovered, next_lsn, next_number, live })
}

/// Reads the records of one segment (pushing those after `base`); stops at
/// `limit` (superseded from there) or at damage. Returns the next expected
/// LSN and the cut made, if any.
fn scan_segment(
    io: &Io,
    path: &Path,
    first: u64,
    base: u64,
    limit: Option<u64>,
    records: &mut Vec<Record>,
) -> Result<(u64, Option<Cut>), WalError> {
    let mut reader = FrameReader::open(path).map_err(read_err(path))?;
    let mut next = first;
    let (reason, detail) = loop {
        if limit == Some(next) {
            if reader.offset() == reader.file_len() {
                return Ok((next, None));
            }
            break (CutReason::Superseded, format!("records from lsn {next} on were rewritten in the next segment"));
        }
        match reader.next(next).map_err(read_err(path))? {
            Frame::Record { lsn, payload } => {
                if lsn > base {
                    records.push(Record { lsn: Lsn(lsn), payload });
                }
                next += 1;
            }
            Frame::End => return Ok((next, None)),
            Frame::Bad(why) => break (CutReason::Corrupt, why),
        }
    };
    let offset = reader.offset();
    let bytes = reader.file_len() - offset;
    // Count what still verifies after the cut point (one frame in memory at
    // a time). After a bad frame whose length held, the reader stands at the
    // next frame, which would carry the LSN after the bad one's.
    let skipped = u64::from(reason == CutReason::Corrupt);
    let mut counted = skipped;
    while let Ok(Frame::Record { .. }) = reader.next(next + counted) {
        counted += 1;
    }
    let records_cut = counted;
    let file = OpenOptions::new().write(true).open(path).map_err(|e| WalError::io(IoOp::Truncate, path, e))?;
    io.truncate(&file, path, offset).map_err(|e| WalError::io(IoOp::Truncate, path, e))?;
    io.sync(&file, path).map_err(|e| WalError::io(IoOp::Sync, path, e))?;
    Ok((next, Some(Cut { segment: path.to_path_buf(), offset, bytes, records: records_cut, reason, detail })))
}

/// Removes a whole segment, counting the records that still verify in it.
/// With a damaged header the first frame's own LSN is trusted for counting.
fn remove_segment(io: &Io, path: &Path, first: Option<u64>, reason: CutReason, detail: String) -> Result<Cut, WalError> {
    let bytes = std::fs::metadata(path).map_err(read_err(path))?.len();
    let mut records = 0u64;
    if let Ok(mut reader) = FrameReader::open(path) {
        let first = first.or_else(|| reader.peek_lsn());
        while let Some(Ok(Frame::Record { .. })) = first.map(|f| reader.next(f + records)) {
            records += 1;
        }
    }
    io.remove(path).map_err(|e| WalError::io(IoOp::Remove, path, e))?;
    Ok(Cut { segment: path.to_path_buf(), offset: 0, bytes, records, reason, detail })
}

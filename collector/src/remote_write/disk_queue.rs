//! The durable remote-write queue (`--data-dir`): a [`QueueStorage`] that
//! keeps every queued interval of a target in a file, so a restart (a clean
//! stop or `kill -9`) sends what was queued before it, in order.
//!
//! # On disk
//!
//! ```text
//! DATA_DIR/remote_write/<target id>/<seq, 20 digits>.interval   one queued interval
//! DATA_DIR/remote_write/<target id>/<seq, 20 digits>.parts      its requests already delivered (absent: none)
//! file        magic (8 bytes) | body length u64 LE | CRC-32 u32 LE (of length and body) | body
//! body        protobuf: QueueFile (version, seq, the whole Interval) or PartsFile (version, seq, parts_done)
//! ```
//!
//! The target id ([`target_id`]) is a readable prefix of the URL and a
//! stable hash (XXH3) of the URL and the extra headers: two tenants of one
//! endpoint (`X-Scope-OrgID`) get two queues. Changing a target's URL or
//! headers starts a new queue; the old directory is reported at start and
//! left alone (restore the target to send it, or delete it).
//!
//! Every file is written as `<name>.tmp`, fsynced, renamed into place and
//! made durable by an fsync of the directory, so a crash leaves either the
//! old file or the new one, never a torn one under the real name (a leftover
//! `.tmp` is removed at start). [`QueueStorage::remove`] unlinks the files
//! (the interval first, so a crash in between leaves an orphan `.parts`,
//! removed at start) and fsyncs the directory.
//!
//! # At start
//!
//! [`DiskQueue::open`] loads every `.interval` in `seq` order with its
//! `.parts`; new intervals continue after the highest `seq` seen. A file that
//! fails its checks (magic, length, CRC, version, decoding, a `seq` that
//! does not match its name) is skipped, logged with its path, counted in
//! `shoal_collector_remote_write_queue_corrupt_files_total` and renamed to
//! `<name>.corrupt` (kept for inspection, not counted again). A corrupt
//! `.parts` is counted the same way and its interval is sent from its first
//! request again. Nothing here panics on what it reads. More intervals than
//! the target's `queue_size` (lowered since) are trimmed, oldest first, at
//! the next push and counted as `queue_full`.
//!
//! # Disk errors
//!
//! A failed write, rename, fsync or unlink is logged (at most one line per
//! 10 s per target, with the number of errors in between) and counted in
//! `shoal_collector_remote_write_queue_disk_errors_total`; delivery goes on
//! from memory, under the same queue bound. What a restart then costs:
//!
//! - an interval whose file could not be written lives in memory only: a
//!   restart before it is delivered loses it (it is not written again later);
//! - a `.parts` that could not be written: the interval's delivered requests
//!   are sent again after a restart;
//! - a file that could not be unlinked: its interval (or request) is sent
//!   again after a restart.
//!
//! Requests sent twice carry identical samples (same series, timestamps and
//! values), which remote-write receivers ingest as once.

use super::sender::{QueueStorage, QueuedInterval, RemoteWriteTarget, TargetStats};
use super::{ExportHistogram, ExportSeries, ExportValue, Interval, NativeBuckets};
use crate::durable::fault::{Io, IoOp};
use prost::Message;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The format version written; others are refused (counted as corrupt).
pub const QUEUE_FORMAT_VERSION: u32 = 1;
/// The subdirectory of the data dir that holds one directory per target.
pub const REMOTE_WRITE_DIR: &str = "remote_write";

const INTERVAL_MAGIC: &[u8; 8] = b"SHOALRWI";
const PARTS_MAGIC: &[u8; 8] = b"SHOALRWP";
const HEADER_LEN: usize = 8 + 8 + 4;
const INTERVAL_SUFFIX: &str = ".interval";
const PARTS_SUFFIX: &str = ".parts";
const TMP_SUFFIX: &str = ".tmp";
const CORRUPT_SUFFIX: &str = ".corrupt";
/// At most one disk-error line per this long (per target).
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Longest readable prefix of the URL in a target id.
const READABLE_PREFIX: usize = 48;

/// A queued interval, whole.
#[derive(Clone, PartialEq, prost::Message)]
struct QueueFile {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(int64, tag = "3")]
    end_ms: i64,
    #[prost(message, repeated, tag = "4")]
    series: Vec<QueuedSeries>,
}

/// One [`ExportSeries`].
#[derive(Clone, PartialEq, prost::Message)]
struct QueuedSeries {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    labels: Vec<QueuedLabel>,
    #[prost(string, optional, tag = "3")]
    help: Option<String>,
    #[prost(string, optional, tag = "4")]
    unit: Option<String>,
    #[prost(oneof = "QueuedValue", tags = "5, 6, 7")]
    value: Option<QueuedValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct QueuedLabel {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// One [`ExportValue`].
#[derive(Clone, PartialEq, prost::Oneof)]
enum QueuedValue {
    #[prost(uint64, tag = "5")]
    Counter(u64),
    #[prost(double, tag = "6")]
    Gauge(f64),
    #[prost(message, tag = "7")]
    Histogram(QueuedHistogram),
}

/// One [`ExportHistogram`]; quantiles as two parallel arrays.
#[derive(Clone, PartialEq, prost::Message)]
struct QueuedHistogram {
    #[prost(double, repeated, tag = "1")]
    quantile_q: Vec<f64>,
    #[prost(double, repeated, tag = "2")]
    quantile_value: Vec<f64>,
    #[prost(double, tag = "3")]
    sum: f64,
    #[prost(uint64, tag = "4")]
    count: u64,
    #[prost(message, optional, tag = "5")]
    native: Option<QueuedNative>,
}

/// [`NativeBuckets`]; each side as parallel (index, count) arrays.
#[derive(Clone, PartialEq, prost::Message)]
struct QueuedNative {
    #[prost(sint32, tag = "1")]
    schema: i32,
    #[prost(double, tag = "2")]
    zero_threshold: f64,
    #[prost(uint64, tag = "3")]
    zero_count: u64,
    #[prost(sint32, repeated, tag = "4")]
    positive_index: Vec<i32>,
    #[prost(uint64, repeated, tag = "5")]
    positive_count: Vec<u64>,
    #[prost(sint32, repeated, tag = "6")]
    negative_index: Vec<i32>,
    #[prost(uint64, repeated, tag = "7")]
    negative_count: Vec<u64>,
}

/// The requests of an interval already delivered.
#[derive(Clone, PartialEq, prost::Message)]
struct PartsFile {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    seq: u64,
    #[prost(uint64, tag = "3")]
    parts_done: u64,
}

fn series_to_file(s: &ExportSeries) -> QueuedSeries {
    let value = match &s.value {
        ExportValue::Counter(v) => QueuedValue::Counter(*v),
        ExportValue::Gauge(v) => QueuedValue::Gauge(*v),
        ExportValue::Histogram(h) => QueuedValue::Histogram(QueuedHistogram {
            quantile_q: h.quantiles.iter().map(|(q, _)| *q).collect(),
            quantile_value: h.quantiles.iter().map(|(_, v)| *v).collect(),
            sum: h.sum,
            count: h.count,
            native: h.native.as_ref().map(|n| QueuedNative {
                schema: n.schema,
                zero_threshold: n.zero_threshold,
                zero_count: n.zero_count,
                positive_index: n.positive.iter().map(|(i, _)| *i).collect(),
                positive_count: n.positive.iter().map(|(_, c)| *c).collect(),
                negative_index: n.negative.iter().map(|(i, _)| *i).collect(),
                negative_count: n.negative.iter().map(|(_, c)| *c).collect(),
            }),
        }),
    };
    QueuedSeries {
        name: s.name.clone(),
        labels: s.labels.iter().map(|(name, value)| QueuedLabel { name: name.clone(), value: value.clone() }).collect(),
        help: s.help.clone(),
        unit: s.unit.clone(),
        value: Some(value),
    }
}

fn zip<A: Copy, B: Copy>(a: &[A], b: &[B], what: &str) -> Result<Vec<(A, B)>, String> {
    if a.len() != b.len() {
        return Err(format!("{what}: {} indices but {} values", a.len(), b.len()));
    }
    Ok(a.iter().copied().zip(b.iter().copied()).collect())
}

fn series_from_file(s: QueuedSeries) -> Result<ExportSeries, String> {
    let value = match s.value {
        None => return Err(format!("series {:?} has no value", s.name)),
        Some(QueuedValue::Counter(v)) => ExportValue::Counter(v),
        Some(QueuedValue::Gauge(v)) => ExportValue::Gauge(v),
        Some(QueuedValue::Histogram(h)) => ExportValue::Histogram(ExportHistogram {
            quantiles: zip(&h.quantile_q, &h.quantile_value, "quantiles")?,
            sum: h.sum,
            count: h.count,
            native: match h.native {
                None => None,
                Some(n) => Some(NativeBuckets {
                    schema: n.schema,
                    zero_threshold: n.zero_threshold,
                    zero_count: n.zero_count,
                    positive: zip(&n.positive_index, &n.positive_count, "positive buckets")?,
                    negative: zip(&n.negative_index, &n.negative_count, "negative buckets")?,
                }),
            },
        }),
    };
    Ok(ExportSeries { name: s.name, labels: s.labels.into_iter().map(|l| (l.name, l.value)).collect(), help: s.help, unit: s.unit, value })
}

/// The file bytes of interval `seq`.
fn encode_interval_file(seq: u64, interval: &Interval) -> Vec<u8> {
    let body = QueueFile {
        version: QUEUE_FORMAT_VERSION,
        seq,
        end_ms: interval.end_ms,
        series: interval.series.iter().map(series_to_file).collect(),
    };
    frame(INTERVAL_MAGIC, &body.encode_to_vec())
}

/// The interval in the file bytes of `seq`, or why they are not one.
fn decode_interval_file(seq: u64, bytes: &[u8]) -> Result<Interval, String> {
    let file = QueueFile::decode(unframe(INTERVAL_MAGIC, bytes)?).map_err(|e| format!("cannot decode: {e}"))?;
    if file.version != QUEUE_FORMAT_VERSION {
        return Err(format!("format version {} (this build reads {QUEUE_FORMAT_VERSION})", file.version));
    }
    if file.seq != seq {
        return Err(format!("holds seq {} under the name of seq {seq}", file.seq));
    }
    let series = file.series.into_iter().map(series_from_file).collect::<Result<_, _>>()?;
    Ok(Interval { end_ms: file.end_ms, series })
}

fn encode_parts_file(seq: u64, parts_done: usize) -> Vec<u8> {
    let body = PartsFile { version: QUEUE_FORMAT_VERSION, seq, parts_done: parts_done as u64 };
    frame(PARTS_MAGIC, &body.encode_to_vec())
}

fn decode_parts_file(seq: u64, bytes: &[u8]) -> Result<usize, String> {
    let file = PartsFile::decode(unframe(PARTS_MAGIC, bytes)?).map_err(|e| format!("cannot decode: {e}"))?;
    if file.version != QUEUE_FORMAT_VERSION {
        return Err(format!("format version {} (this build reads {QUEUE_FORMAT_VERSION})", file.version));
    }
    if file.seq != seq {
        return Err(format!("holds seq {} under the name of seq {seq}", file.seq));
    }
    usize::try_from(file.parts_done).map_err(|_| format!("parts_done {} out of range", file.parts_done))
}

fn crc(len: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(body);
    h.finalize()
}

fn frame(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let len = (body.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc(&len, body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn unframe<'a>(magic: &[u8; 8], bytes: &'a [u8]) -> Result<&'a [u8], String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("{} bytes, shorter than the {HEADER_LEN}-byte header (torn)", bytes.len()));
    }
    if &bytes[..8] != magic {
        return Err("bad magic".into());
    }
    let len_bytes = &bytes[8..16];
    let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
    let body = &bytes[HEADER_LEN..];
    if len != body.len() as u64 {
        return Err(format!("header says {len} body bytes, the file has {} (torn)", body.len()));
    }
    let stored = u32::from_le_bytes(bytes[16..20].try_into().unwrap_or_default());
    let actual = crc(len_bytes, body);
    if stored != actual {
        return Err(format!("CRC mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    Ok(body)
}

fn interval_name(seq: u64) -> String {
    format!("{seq:020}{INTERVAL_SUFFIX}")
}

fn parts_name(seq: u64) -> String {
    format!("{seq:020}{PARTS_SUFFIX}")
}

/// What a file name in a queue directory is.
#[derive(Debug, PartialEq, Eq)]
enum FileName {
    Interval(u64),
    Parts(u64),
    /// A leftover of an interrupted write.
    Tmp,
    /// Set aside at an earlier start (its `seq`, if readable).
    Corrupt(Option<u64>),
}

fn parse_seq(digits: &str) -> Option<u64> {
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn parse_name(name: &str) -> Option<FileName> {
    if name.ends_with(TMP_SUFFIX) {
        return Some(FileName::Tmp);
    }
    if let Some(rest) = name.strip_suffix(CORRUPT_SUFFIX) {
        let seq = rest.strip_suffix(INTERVAL_SUFFIX).or_else(|| rest.strip_suffix(PARTS_SUFFIX)).and_then(parse_seq);
        return Some(FileName::Corrupt(seq));
    }
    if let Some(seq) = name.strip_suffix(INTERVAL_SUFFIX).and_then(parse_seq) {
        return Some(FileName::Interval(seq));
    }
    name.strip_suffix(PARTS_SUFFIX).and_then(parse_seq).map(FileName::Parts)
}

/// The stable, filesystem-safe directory name of `target`'s queue: a
/// readable prefix of the URL (letters, digits, `.` and `-`; anything else
/// `_`) and the XXH3 hash of the URL and the headers (names lowercased).
pub fn target_id(target: &RemoteWriteTarget) -> String {
    let url = target.url.as_str();
    let mut identity = url.to_string();
    let mut headers: Vec<(String, &str)> = target.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.as_str())).collect();
    headers.sort();
    for (k, v) in headers {
        identity.push('\n');
        identity.push_str(&k);
        identity.push_str(": ");
        identity.push_str(v);
    }
    let hash = xxhash_rust::xxh3::xxh3_64(identity.as_bytes());
    let readable: String = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .chars()
        .take(READABLE_PREFIX)
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    format!("{readable}-{hash:016x}")
}

/// `DATA_DIR/remote_write/<target id>`.
pub fn queue_dir(data_dir: &Path, target: &RemoteWriteTarget) -> PathBuf {
    data_dir.join(REMOTE_WRITE_DIR).join(target_id(target))
}

/// Opens the queue of every target under `data_dir` (blocking: call it off
/// the async runtime). A target that repeats an earlier one exactly (same
/// URL and headers) would share its directory: it gets an in-memory queue
/// instead (logged). Directories of targets no longer configured that
/// still hold intervals are logged and left alone.
pub fn open_all(data_dir: &Path, targets: Vec<RemoteWriteTarget>) -> Vec<(RemoteWriteTarget, Box<dyn QueueStorage>)> {
    let mut used = HashSet::new();
    let mut out: Vec<(RemoteWriteTarget, Box<dyn QueueStorage>)> = Vec::with_capacity(targets.len());
    for target in targets {
        let id = target_id(&target);
        if !used.insert(id.clone()) {
            tracing::warn!(url = %target.url, "remote-write: this target repeats an earlier one (same url and headers); its queue stays in memory");
            out.push((target, Box::<super::MemoryQueue>::default()));
            continue;
        }
        let mut queue = DiskQueue::open(data_dir.join(REMOTE_WRITE_DIR).join(&id));
        queue.keep_parts_only_for(&split_of(&target));
        out.push((target, Box::new(queue)));
    }
    if let Ok(entries) = std::fs::read_dir(data_dir.join(REMOTE_WRITE_DIR)) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if used.contains(&name) {
                continue;
            }
            let queued = std::fs::read_dir(entry.path()).map(|d| d.flatten().filter(is_interval).count()).unwrap_or(0);
            if queued > 0 {
                tracing::warn!(
                    dir = %entry.path().display(),
                    queued,
                    "remote-write: intervals queued for a target no longer configured (url or headers changed); left alone: restore the target to send them, or delete the directory"
                );
            }
        }
    }
    out
}

/// How a target splits an interval into requests: `parts_done` counts
/// requests of that split, so it means nothing under another one.
fn split_of(target: &RemoteWriteTarget) -> String {
    format!("histograms={:?} max_samples_per_request={}\n", target.histograms, target.max_samples_per_request)
}

/// The file holding [`split_of`] of the intervals' `parts_done`.
const SPLIT_FILE: &str = "split";

fn is_interval(e: &std::fs::DirEntry) -> bool {
    matches!(e.file_name().to_str().and_then(parse_name), Some(FileName::Interval(_)))
}

struct Entry {
    item: QueuedInterval,
    /// Its `.interval` file exists (false: the write failed, memory only).
    on_disk: bool,
    /// Its `.parts` file exists.
    parts_file: bool,
}

/// A [`QueueStorage`] with one file per queued interval (see the module
/// doc). Also kept in memory: the writer reads intervals from here, the
/// files are only read at start.
pub struct DiskQueue {
    dir: PathBuf,
    io: Io,
    items: VecDeque<Entry>,
    next_seq: u64,
    stats: Arc<TargetStats>,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl fmt::Debug for DiskQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskQueue").field("dir", &self.dir).field("len", &self.items.len()).finish_non_exhaustive()
    }
}

impl DiskQueue {
    /// Opens (creating it if needed) the queue in `dir` and loads what it
    /// holds (blocking). Never fails: an unusable directory is logged and
    /// counted, and the queue then works from memory.
    pub fn open(dir: impl Into<PathBuf>) -> DiskQueue {
        DiskQueue::open_with(dir, Io::default())
    }

    /// Keeps the loaded `parts_done` only if they were counted under `split`
    /// (the target's histogram mode and request size at the previous run);
    /// otherwise those intervals are sent again from their first request
    /// (at least once: receivers drop samples they already hold), never
    /// with requests skipped. Records `split` for the next start.
    pub fn keep_parts_only_for(&mut self, split: &str) {
        let previous = std::fs::read_to_string(self.dir.join(SPLIT_FILE)).ok();
        if previous.as_deref() == Some(split) {
            return;
        }
        let mut reset = 0;
        let resets: Vec<u64> = self.items.iter().filter(|e| e.item.parts_done > 0).map(|e| e.item.seq).collect();
        for seq in resets {
            reset += 1;
            if let Some(e) = self.items.iter_mut().find(|e| e.item.seq == seq) {
                e.item.parts_done = 0;
                if e.parts_file {
                    e.parts_file = false;
                    if let Err(err) = self.remove_file(&parts_name(seq)) {
                        tracing::warn!(dir = %self.dir.display(), "remote-write queue: {err}");
                    }
                }
            }
        }
        if reset > 0 {
            tracing::info!(dir = %self.dir.display(), reset, "remote-write queue: the target's split changed; partly sent intervals start again from their first request");
        }
        if let Err(err) = self.write_file(SPLIT_FILE, split.as_bytes()) {
            tracing::warn!(dir = %self.dir.display(), "remote-write queue: {err}");
        }
    }

    /// [`DiskQueue::open`] with its file operations going through `io`
    /// (tests inject faults this way).
    pub fn open_with(dir: impl Into<PathBuf>, io: Io) -> DiskQueue {
        let mut q =
            DiskQueue { dir: dir.into(), io, items: VecDeque::new(), next_seq: 0, stats: Arc::default(), last_log: None, unlogged: 0 };
        q.load();
        q
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters so far (corrupt files found at start, disk errors).
    pub fn stats(&self) -> &Arc<TargetStats> {
        &self.stats
    }

    fn load(&mut self) {
        let started = Instant::now();
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            self.disk_error("cannot create the queue directory; queueing in memory only", &e);
            return;
        }
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                self.disk_error("cannot list the queue directory; queueing in memory only", &e);
                return;
            }
        };
        let (mut intervals, mut parts, mut tmp) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
        let mut max_seq: Option<u64> = None;
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.disk_error("cannot list the queue directory", &e);
                    continue;
                }
            };
            let Some(name) = entry.file_name().to_str().and_then(parse_name) else { continue };
            let seq = match name {
                FileName::Interval(seq) => {
                    intervals.insert(seq, entry.path());
                    Some(seq)
                }
                FileName::Parts(seq) => {
                    parts.insert(seq, entry.path());
                    Some(seq)
                }
                FileName::Tmp => {
                    tmp.push(entry.path());
                    None
                }
                FileName::Corrupt(seq) => seq,
            };
            max_seq = max_seq.max(seq);
        }
        let mut changed = false;
        for path in tmp {
            changed = true;
            if let Err(e) = self.io.remove(&path) {
                self.disk_error_at("cannot remove a leftover temporary file", &path, &e);
            }
        }
        let mut corrupt = 0;
        for (seq, path) in intervals {
            let interval = std::fs::read(&path).map_err(|e| format!("cannot read: {e}")).and_then(|b| decode_interval_file(seq, &b));
            let interval = match interval {
                Ok(i) => i,
                Err(reason) => {
                    corrupt += 1;
                    changed = true;
                    self.set_aside(&path, &reason);
                    continue;
                }
            };
            let (mut parts_done, mut parts_file) = (0, false);
            if let Some(p) = parts.remove(&seq) {
                match std::fs::read(&p).map_err(|e| format!("cannot read: {e}")).and_then(|b| decode_parts_file(seq, &b)) {
                    Ok(n) => (parts_done, parts_file) = (n, true),
                    Err(reason) => {
                        corrupt += 1;
                        changed = true;
                        self.set_aside(&p, &format!("{reason}; the interval is sent from its first request again"));
                    }
                }
            }
            self.items.push_back(Entry {
                item: QueuedInterval { seq, interval: Arc::new(interval), parts_done },
                on_disk: true,
                parts_file,
            });
        }
        for (_, orphan) in parts {
            // The interval was delivered (or set aside): its parts file outlived it.
            changed = true;
            if let Err(e) = self.io.remove(&orphan) {
                self.disk_error_at("cannot remove an orphan parts file", &orphan, &e);
            }
        }
        if changed {
            if let Err(e) = self.io.sync_dir(&self.dir) {
                self.disk_error("cannot fsync the queue directory", &e);
            }
        }
        self.next_seq = max_seq.map_or(0, |s| s.saturating_add(1));
        if !self.items.is_empty() || corrupt > 0 {
            tracing::info!(
                dir = %self.dir.display(),
                queued = self.items.len(),
                corrupt,
                took_ms = started.elapsed().as_millis() as u64,
                "remote-write queue loaded: sending what was queued before the restart"
            );
        }
    }

    /// Logs and counts a corrupt file and renames it to `<name>.corrupt`.
    fn set_aside(&mut self, path: &Path, reason: &str) {
        self.stats.count_queue_corrupt_file();
        let mut aside = path.as_os_str().to_owned();
        aside.push(CORRUPT_SUFFIX);
        let aside = PathBuf::from(aside);
        tracing::error!(
            path = %path.display(),
            reason,
            kept_as = %aside.display(),
            "remote-write queue: corrupt file skipped (its interval is not sent)"
        );
        if let Err(e) = self.io.rename(path, &aside) {
            self.disk_error_at("cannot set a corrupt file aside (it is counted again at the next start)", path, &e);
        }
    }

    fn disk_error_at(&mut self, what: &str, path: &Path, error: &io::Error) {
        self.disk_error(&format!("{what}: {}", path.display()), error);
    }

    /// Counts a disk error; logs at most one line per [`LOG_EVERY`].
    fn disk_error(&mut self, what: &str, error: &dyn fmt::Display) {
        self.stats.count_queue_disk_error();
        let now = Instant::now();
        if self.last_log.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.unlogged += 1;
            return;
        }
        tracing::error!(dir = %self.dir.display(), error = %error, unlogged_before = self.unlogged, "remote-write queue: {what}");
        self.last_log = Some(now);
        self.unlogged = 0;
    }

    /// Writes `bytes` as `name` durably: `.tmp`, fsync, rename, fsync of
    /// the directory. On error the `.tmp` is removed (best effort).
    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<(), String> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let io = &self.io;
        let result = (|| {
            let file = io.create(&tmp).map_err(|e| (IoOp::Create, e))?;
            io.write_at(&file, &tmp, 0, bytes).map_err(|e| (IoOp::Write, e))?;
            io.sync(&file, &tmp).map_err(|e| (IoOp::Sync, e))?;
            drop(file);
            io.rename(&tmp, &path).map_err(|e| (IoOp::Rename, e))?;
            io.sync_dir(&self.dir).map_err(|e| (IoOp::SyncDir, e))
        })();
        result.map_err(|(op, e)| {
            let _ = std::fs::remove_file(&tmp);
            format!("{op} {}: {e}", tmp.display())
        })
    }

    fn remove_file(&self, name: &str) -> Result<(), String> {
        let path = self.dir.join(name);
        match self.io.remove(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("{} {}: {e}", IoOp::Remove, path.display())),
        }
    }
}

impl QueueStorage for DiskQueue {
    fn attach_stats(&mut self, stats: Arc<TargetStats>) {
        stats.add_queue_counts(&self.stats);
        self.stats = stats;
    }

    fn next_seq(&self) -> u64 {
        self.items.back().map_or(0, |e| e.item.seq + 1).max(self.next_seq)
    }

    fn push_back(&mut self, item: QueuedInterval) {
        let seq = item.seq;
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
        let mut result = self.write_file(&interval_name(seq), &encode_interval_file(seq, &item.interval));
        let on_disk = result.is_ok();
        let mut parts_file = false;
        if on_disk && item.parts_done > 0 {
            result = self.write_file(&parts_name(seq), &encode_parts_file(seq, item.parts_done));
            parts_file = result.is_ok();
        }
        if let Err(e) = result {
            let what = if on_disk {
                "cannot persist the requests already delivered (sent again after a restart)"
            } else {
                "cannot persist a queued interval: kept in memory only (lost if the collector restarts before delivering it)"
            };
            self.disk_error(what, &e);
        }
        self.items.push_back(Entry { item, on_disk, parts_file });
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &QueuedInterval> + '_> {
        Box::new(self.items.iter().map(|e| &e.item))
    }

    fn remove(&mut self, seq: u64) -> Option<QueuedInterval> {
        let at = self.items.iter().position(|e| e.item.seq == seq)?;
        let entry = self.items.remove(at)?;
        if entry.on_disk {
            // The interval first: a crash before the parts file goes leaves an orphan, removed at start.
            let mut result = self.remove_file(&interval_name(seq));
            if result.is_ok() && entry.parts_file {
                result = self.remove_file(&parts_name(seq));
            }
            let result =
                result.and_then(|()| self.io.sync_dir(&self.dir).map_err(|e| format!("{} {}: {e}", IoOp::SyncDir, self.dir.display())));
            if let Err(e) = result {
                self.disk_error("cannot remove a finished interval (sent again after a restart)", &e);
            }
        }
        Some(entry.item)
    }

    fn set_parts_done(&mut self, seq: u64, parts_done: usize) {
        let Some(at) = self.items.iter().position(|e| e.item.seq == seq) else { return };
        self.items[at].item.parts_done = parts_done;
        if !self.items[at].on_disk {
            return;
        }
        match self.write_file(&parts_name(seq), &encode_parts_file(seq, parts_done)) {
            Ok(()) => self.items[at].parts_file = true,
            Err(e) => self.disk_error("cannot persist the requests already delivered (sent again after a restart)", &e),
        }
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::fault::{FaultPlan, ENOSPC};
    use crate::remote_write::sender::{DropReason, RemoteWriter};
    use shoal_core::Sketch;

    fn rich_interval(end_ms: i64) -> Interval {
        let mut sketch = Sketch::default();
        for v in [-3.5, -0.25, 0.0, 0.0, 1e-3, 0.5, 2.0, 2.0, 1234.5, 9e9] {
            sketch.record(v).unwrap();
        }
        let native = ExportHistogram::from_sketch(&sketch, &[0.5, 0.9, 0.99]);
        assert!(native.native.as_ref().is_some_and(|n| !n.positive.is_empty() && !n.negative.is_empty() && n.zero_count == 2));
        let labels = vec![("cluster".to_string(), "eu".to_string()), ("route".to_string(), "/a b\"c".to_string())];
        let series = |name: &str, help: Option<&str>, unit: Option<&str>, value| ExportSeries {
            name: name.into(),
            labels: labels.clone(),
            help: help.map(Into::into),
            unit: unit.map(Into::into),
            value,
        };
        Interval {
            end_ms,
            series: vec![
                series("jobs", Some("Jobs done."), None, ExportValue::Counter(u64::MAX - 7)),
                series("queue_depth", Some(""), None, ExportValue::Gauge(-0.5)),
                series("latency_seconds", Some("Latency."), Some("seconds"), ExportValue::Histogram(native)),
                series(
                    "sizes",
                    None,
                    Some("bytes"),
                    ExportValue::Histogram(ExportHistogram { quantiles: vec![], sum: 0.0, count: 0, native: None }),
                ),
            ],
        }
    }

    fn small(end_ms: i64) -> Arc<Interval> {
        Arc::new(Interval {
            end_ms,
            series: vec![ExportSeries { name: "c".into(), labels: vec![], help: None, unit: None, value: ExportValue::Counter(1) }],
        })
    }

    fn item(seq: u64, interval: Arc<Interval>) -> QueuedInterval {
        QueuedInterval { seq, interval, parts_done: 0 }
    }

    fn open(dir: &Path) -> DiskQueue {
        DiskQueue::open(dir)
    }

    fn seqs(q: &DiskQueue) -> Vec<(u64, i64, usize)> {
        q.iter().map(|i| (i.seq, i.interval.end_ms, i.parts_done)).collect()
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    }

    fn stats_of(q: &mut DiskQueue) -> Arc<TargetStats> {
        let stats = Arc::<TargetStats>::default();
        q.attach_stats(stats.clone());
        stats
    }

    #[test]
    fn an_interval_with_histograms_and_native_buckets_round_trips() {
        let interval = rich_interval(1_700_000_000_000);
        let bytes = encode_interval_file(7, &interval);
        assert_eq!(decode_interval_file(7, &bytes).unwrap(), interval);
        assert!(decode_interval_file(8, &bytes).unwrap_err().contains("seq 7"), "a renamed file is caught");

        let dir = tempfile::tempdir().unwrap();
        let mut q = open(dir.path());
        q.push_back(item(0, Arc::new(interval.clone())));
        assert_eq!(files(dir.path()), vec![interval_name(0)]);
        drop(q);
        let q = open(dir.path());
        assert_eq!(q.len(), 1);
        assert_eq!(*q.iter().next().unwrap().interval, interval);
    }

    #[test]
    fn parts_done_counted_under_another_split_start_again_from_the_first_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = open(dir.path());
        q.keep_parts_only_for("histograms=Summary max_samples_per_request=2000\n");
        q.push_back(item(0, small(1000)));
        q.set_parts_done(0, 2);
        drop(q);
        // Same split: kept.
        let mut q = open(dir.path());
        q.keep_parts_only_for("histograms=Summary max_samples_per_request=2000\n");
        assert_eq!(seqs(&q), vec![(0, 1000, 2)]);
        drop(q);
        // Another request size: the count means other requests, so none is skipped.
        let mut q = open(dir.path());
        q.keep_parts_only_for("histograms=Summary max_samples_per_request=500\n");
        assert_eq!(seqs(&q), vec![(0, 1000, 0)]);
        assert!(!files(dir.path()).contains(&parts_name(0)), "its parts file is gone");
        drop(q);
        let q = open(dir.path());
        assert_eq!(seqs(&q), vec![(0, 1000, 0)], "and stays gone after a restart");
    }

    #[test]
    fn a_reopened_queue_keeps_its_order_and_parts_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = open(dir.path());
        assert_eq!((q.len(), q.next_seq()), (0, 0));
        for seq in 0..4 {
            q.push_back(item(seq, small(1000 * seq as i64)));
        }
        q.set_parts_done(1, 2);
        q.set_parts_done(2, 1);
        assert_eq!(q.remove(0).map(|i| i.seq), Some(0));
        assert_eq!(q.remove(2).map(|i| i.seq), Some(2));
        assert!(q.remove(2).is_none());
        assert_eq!(files(dir.path()), vec![interval_name(1), parts_name(1), interval_name(3)]);
        drop(q);

        let mut q = open(dir.path());
        assert_eq!(seqs(&q), vec![(1, 1000, 2), (3, 3000, 0)]);
        assert_eq!(q.next_seq(), 4, "seqs continue after the highest");
        assert_eq!(q.remove(1).map(|i| i.parts_done), Some(2));
        assert_eq!(files(dir.path()), vec![interval_name(3)], "the parts file goes with its interval");
        // A parts file whose interval is gone (a crash between the two unlinks).
        std::fs::write(dir.path().join(parts_name(9)), encode_parts_file(9, 1)).unwrap();
        drop(q);
        let q = open(dir.path());
        assert_eq!(seqs(&q), vec![(3, 3000, 0)]);
        assert_eq!(files(dir.path()), vec![interval_name(3)], "orphan parts file removed");
        assert_eq!(q.next_seq(), 10);
    }

    #[test]
    fn torn_and_corrupt_files_are_skipped_counted_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: String| dir.path().join(name);
        let mut q = open(dir.path());
        for seq in 0..6 {
            q.push_back(item(seq, Arc::new(rich_interval(1000 * seq as i64))));
        }
        q.set_parts_done(4, 1);
        drop(q);
        // 1: torn (cut in the middle); 2: a flipped bit; 3: another seq's
        // (valid) file under its name; 4: garbage parts file; 5: empty.
        let bytes = std::fs::read(path(interval_name(1))).unwrap();
        std::fs::write(path(interval_name(1)), &bytes[..bytes.len() / 2]).unwrap();
        let mut bytes = std::fs::read(path(interval_name(2))).unwrap();
        let at = bytes.len() - 10;
        bytes[at] ^= 0x10;
        std::fs::write(path(interval_name(2)), &bytes).unwrap();
        std::fs::copy(path(interval_name(0)), path(interval_name(3))).unwrap();
        std::fs::write(path(parts_name(4)), b"not a parts file at all").unwrap();
        std::fs::write(path(interval_name(5)), b"").unwrap();
        // A write interrupted before its rename, and a stranger.
        std::fs::write(path(format!("{}{TMP_SUFFIX}", interval_name(6))), b"half").unwrap();
        std::fs::write(path("NOTES".into()), b"mine").unwrap();

        let mut q = open(dir.path());
        let stats = stats_of(&mut q);
        assert_eq!(stats.snapshot("u").queue_corrupt_files, 5);
        assert_eq!(stats.snapshot("u").queue_disk_errors, 0);
        assert_eq!(seqs(&q), vec![(0, 0, 0), (4, 4000, 0)], "4 is sent from its first request again");
        assert_eq!(*q.iter().nth(1).unwrap().interval, rich_interval(4000));
        assert_eq!(q.next_seq(), 6, "after the highest seq, corrupt files included");
        let corrupt = |name: String| format!("{name}{CORRUPT_SUFFIX}");
        assert_eq!(
            files(dir.path()),
            vec![
                "00000000000000000000.interval".to_string(),
                corrupt(interval_name(1)),
                corrupt(interval_name(2)),
                corrupt(interval_name(3)),
                interval_name(4),
                corrupt(parts_name(4)),
                corrupt(interval_name(5)),
                "NOTES".to_string(),
            ]
        );
        drop(q);
        // Set aside: not counted again.
        let mut q = open(dir.path());
        let stats = stats_of(&mut q);
        assert_eq!(stats.snapshot("u").queue_corrupt_files, 0);
        assert_eq!(seqs(&q), vec![(0, 0, 0), (4, 4000, 0)]);
        assert_eq!(q.next_seq(), 6);
        // Every check refuses something: nothing panics on garbage.
        for garbage in [&b""[..], b"SHOALRWI", &frame(PARTS_MAGIC, b"x"), &frame(INTERVAL_MAGIC, b"\xff\xff\xff")] {
            assert!(decode_interval_file(0, garbage).is_err());
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_interval_and_its_file() {
        let dir = tempfile::tempdir().unwrap();
        // A listener that accepts nothing: requests hang until their timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut target = RemoteWriteTarget::new(format!("http://{}/api/v1/write", silent.local_addr().unwrap()));
        target.queue_capacity = 2;
        let storage = Box::new(open(dir.path()));
        let writer = RemoteWriter::with_storage(target, storage, &tokio::runtime::Handle::current()).unwrap();
        for end_ms in 0..5 {
            writer.push(small(end_ms));
        }
        let s = writer.stats();
        assert_eq!(s.queue_len, 2);
        assert_eq!(s.dropped.get(&DropReason::QueueFull).map(|d| d.batches), Some(3));
        assert_eq!(files(dir.path()), vec![interval_name(3), interval_name(4)]);
        drop(writer);
        let q = open(dir.path());
        assert_eq!(seqs(&q), vec![(3, 3, 0), (4, 4, 0)]);
    }

    #[test]
    fn disk_errors_are_counted_and_the_interval_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let plan = FaultPlan::new();
        let mut q = DiskQueue::open_with(dir.path(), Io::new(Some(plan.clone())));
        let stats = stats_of(&mut q);
        plan.fail_always(IoOp::Create, ENOSPC);
        q.push_back(item(0, small(0)));
        q.push_back(item(1, small(1)));
        assert_eq!((q.len(), stats.snapshot("u").queue_disk_errors), (2, 2), "kept in memory, counted");
        assert!(files(dir.path()).is_empty());
        plan.heal();
        // A failing fsync leaves no file under the real name (and no .tmp).
        plan.fail_next(IoOp::Sync, 1, ENOSPC);
        q.push_back(item(2, small(2)));
        assert!(files(dir.path()).is_empty());
        q.push_back(item(3, small(3)));
        assert_eq!(files(dir.path()), vec![interval_name(3)]);
        q.set_parts_done(0, 1); // memory only: nothing to write
        assert_eq!(q.remove(0).map(|i| i.parts_done), Some(1));
        assert_eq!(stats.snapshot("u").queue_disk_errors, 3);
        // An unlink that fails: counted, and the interval comes back after a restart.
        plan.fail_next(IoOp::Remove, 1, ENOSPC);
        assert!(q.remove(3).is_some());
        assert_eq!(stats.snapshot("u").queue_disk_errors, 4);
        assert_eq!(seqs(&q), vec![(1, 1, 0), (2, 2, 0)]);
        drop(q);
        // What a restart loses: the intervals that were in memory only.
        let q = open(dir.path());
        assert_eq!(seqs(&q), vec![(3, 3, 0)]);
    }

    #[test]
    fn target_ids_are_stable_safe_and_tell_tenants_apart() {
        let t = RemoteWriteTarget::new("http://127.0.0.1:9090/api/v1/write");
        let id = target_id(&t);
        assert_eq!(id, "127.0.0.1_9090_api_v1_write-ee774b5d25c0aa10");
        let mut tenant = t.clone();
        tenant.headers.insert("X-Scope-OrgID".into(), "team-a".into());
        let mut same = t.clone();
        same.headers.insert("x-scope-orgid".into(), "team-a".into());
        let mut other = t.clone();
        other.headers.insert("X-Scope-OrgID".into(), "team-b".into());
        assert_ne!(target_id(&tenant), id);
        assert_eq!(target_id(&tenant), target_id(&same), "header names are case-insensitive");
        assert_ne!(target_id(&tenant), target_id(&other));
        let mut mode = t.clone();
        mode.histograms = crate::remote_write::HistogramMode::Native;
        mode.queue_capacity = 3;
        assert_eq!(target_id(&mode), id, "settings other than where and as whom keep the queue");
        let long = RemoteWriteTarget::new(format!("http://h/{}?a=../../b&c=é", "x/".repeat(200)));
        let long_id = target_id(&long);
        assert!(long_id.len() <= READABLE_PREFIX + 17, "{long_id}");
        for id in [id, long_id] {
            assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)), "{id}");
        }
    }

    #[test]
    fn open_all_gives_each_target_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let a = RemoteWriteTarget::new("http://127.0.0.1:1/api/v1/write");
        let mut b = a.clone();
        b.headers.insert("X-Scope-OrgID".into(), "b".into());
        let queues = open_all(dir.path(), vec![a.clone(), b.clone(), a.clone()]);
        assert_eq!(queues.len(), 3);
        let mut expected = vec![target_id(&a), target_id(&b)];
        expected.sort();
        assert_eq!(files(&dir.path().join(REMOTE_WRITE_DIR)), expected, "the repeated target shares no directory");
    }
}

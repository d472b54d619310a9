//! End-to-end tests of the WAL: round trip, group commit, rotation,
//! checkpoints, torn and corrupt logs, injected I/O faults.

use super::record::SEGMENT_HEADER_LEN;
use super::segment::{list_segments, read_segment_header, Frame, FrameReader, WAL_DIR};
use super::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A scratch directory, on tmpfs where there is one (the exhaustive damage
/// tests open the log thousands of times; fsync there is free).
fn scratch() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        if let Ok(d) = tempfile::tempdir_in("/dev/shm") {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

fn payload(i: u64) -> Vec<u8> {
    let len = (i * 37 % 61) as usize;
    (0..len).map(|j| (i as usize * 131 + j) as u8).collect()
}

fn small(segment_bytes: u64) -> WalOptions {
    WalOptions { segment_bytes, ..WalOptions::default() }
}

fn with_faults(segment_bytes: u64, plan: &Arc<FaultPlan>) -> WalOptions {
    WalOptions { segment_bytes, faults: Some(plan.clone()), ..WalOptions::default() }
}

fn payloads(r: &Recovered) -> Vec<Vec<u8>> {
    r.records.iter().map(|r| r.payload.clone()).collect()
}

/// Records must be consecutive from the checkpoint on.
fn assert_consecutive(r: &Recovered) {
    let base = r.checkpoint.as_ref().map_or(0, |c| c.lsn.0);
    for (i, rec) in r.records.iter().enumerate() {
        assert_eq!(rec.lsn, Lsn(base + 1 + i as u64));
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.join(WAL_DIR)).unwrap();
    for sub in [PathBuf::new(), PathBuf::from(WAL_DIR)] {
        for e in std::fs::read_dir(src.join(&sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), dst.join(&sub).join(e.file_name())).unwrap();
            }
        }
    }
}

/// Each segment of the log with its frames' [start, end) offsets.
type Layout = Vec<(PathBuf, Vec<(u64, u64)>)>;

fn layout(dir: &Path) -> Layout {
    let mut out = Vec::new();
    for (_, path) in list_segments(&dir.join(WAL_DIR)).unwrap() {
        let first = read_segment_header(&path).unwrap().unwrap();
        let mut reader = FrameReader::open(&path).unwrap();
        let mut frames = Vec::new();
        loop {
            let start = reader.offset();
            match reader.next(first + frames.len() as u64).unwrap() {
                Frame::Record { .. } => frames.push((start, reader.offset())),
                Frame::End => break,
                Frame::Bad(why) => panic!("the reference log is damaged: {why}"),
            }
        }
        out.push((path, frames));
    }
    out
}

#[test]
fn round_trip_and_lsns_continue_after_reopen() {
    let dir = scratch();
    let (wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert!(rec.checkpoint.is_none() && rec.records.is_empty() && rec.cuts.is_empty());
    for i in 0..100 {
        assert_eq!(wal.append_blocking(payload(i)).unwrap(), Lsn(i + 1));
    }
    assert_eq!(wal.durable_lsn(), Lsn(100));
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&rec), (0..100).map(payload).collect::<Vec<_>>());
    assert_consecutive(&rec);
    assert!(rec.cuts.is_empty());
    assert_eq!(wal.append_blocking(b"next".to_vec()).unwrap(), Lsn(101));
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.records.len(), 101);
    assert_eq!(rec.records[100].payload, b"next");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_completes_concurrent_appends_with_fewer_fsyncs() {
    // On the real disk (tmpfs syncs for free, so groups would stay small).
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (tasks, each) = (64u64, 40u64);
    let mut handles = Vec::new();
    for t in 0..tasks {
        let wal = wal.clone();
        handles.push(tokio::spawn(async move {
            let mut lsns = Vec::new();
            for i in 0..each {
                lsns.push(wal.append(payload(t * 1000 + i)).await.unwrap());
            }
            lsns
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let lsns = h.await.unwrap();
        assert!(lsns.windows(2).all(|w| w[0] < w[1]), "one appender's records keep their order");
        all.extend(lsns);
    }
    all.sort();
    assert_eq!(all, (1..=tasks * each).map(Lsn).collect::<Vec<_>>());
    let stats = wal.stats();
    assert_eq!(stats.records, tasks * each);
    assert!(stats.commits < stats.records / 2, "group commit: {stats:?}");
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.records.len() as u64, tasks * each);
    assert_consecutive(&rec);
}

#[test]
fn segments_rotate_at_the_size_and_a_large_record_gets_its_own() {
    let dir = scratch();
    let (wal, _) = Wal::open(dir.path(), small(1024)).unwrap();
    for i in 0..200 {
        wal.append_blocking(payload(i)).unwrap();
    }
    wal.append_blocking(vec![9u8; 5000]).unwrap();
    wal.append_blocking(payload(7)).unwrap();
    let segs = list_segments(&dir.path().join(WAL_DIR)).unwrap();
    assert!(segs.len() >= 8, "{} segments", segs.len());
    for (_, p) in &segs {
        let len = std::fs::metadata(p).unwrap().len();
        assert!(len <= 1024 || len == (SEGMENT_HEADER_LEN + 16 + 5000) as u64, "{} is {len} bytes", p.display());
    }
    assert_eq!(wal.stats().segments, segs.len() as u64);
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), small(1024)).unwrap();
    let mut want: Vec<_> = (0..200).map(payload).collect();
    want.push(vec![9u8; 5000]);
    want.push(payload(7));
    assert_eq!(payloads(&rec), want);
    assert!(rec.cuts.is_empty());
}

#[test]
fn record_size_is_capped_with_a_typed_error() {
    let dir = scratch();
    let (wal, _) = Wal::open(dir.path(), WalOptions { max_record_bytes: 1000, ..WalOptions::default() }).unwrap();
    assert!(matches!(wal.append_blocking(vec![0; 1001]), Err(WalError::RecordTooLarge { len: 1001, max: 1000 })));
    assert_eq!(wal.append_blocking(vec![0; 1000]).unwrap(), Lsn(1));
    assert!(Wal::open(scratch().path(), WalOptions { max_record_bytes: usize::MAX, ..WalOptions::default() }).is_err());
    assert!(Wal::open(scratch().path(), small(10)).is_err());
}

#[test]
fn checkpoints_keep_the_log_bounded_and_recovery_starts_from_the_newest() {
    let dir = scratch();
    let (wal, _) = Wal::open(dir.path(), small(1024)).unwrap();
    let mut n = 0u64;
    for round in 0..30u64 {
        for _ in 0..40 {
            wal.append_blocking(payload(n)).unwrap();
            n += 1;
        }
        let report = wal.checkpoint(format!("state after {n}").as_bytes(), wal.durable_lsn()).unwrap();
        assert!(report.cleanup_error.is_none());
        assert_eq!(report.checkpoints_removed, usize::from(round > 0));
        let segs = list_segments(&dir.path().join(WAL_DIR)).unwrap().len();
        assert!(segs <= 2, "round {round}: {segs} segments");
    }
    assert_eq!(wal.checkpoint_lsn(), Lsn(n));
    // Out of range: beyond the durable end, or before the newest checkpoint.
    assert!(matches!(wal.checkpoint(b"x", Lsn(n + 1)), Err(WalError::CheckpointOutOfRange { .. })));
    assert!(matches!(wal.checkpoint(b"x", Lsn(n - 1)), Err(WalError::CheckpointOutOfRange { .. })));
    for i in 0..5 {
        wal.append_blocking(payload(10_000 + i)).unwrap();
    }
    drop(wal);
    let ckpts: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
    assert_eq!(ckpts.iter().filter(|n| n.starts_with("checkpoint.")).count(), 1, "{ckpts:?}");
    let (_wal, rec) = Wal::open(dir.path(), small(1024)).unwrap();
    let ck = rec.checkpoint.clone().unwrap();
    assert_eq!((ck.lsn, ck.bytes), (Lsn(n), format!("state after {n}").into_bytes()));
    assert_eq!(payloads(&rec), (0..5).map(|i| payload(10_000 + i)).collect::<Vec<_>>());
    assert_consecutive(&rec);
}

#[test]
fn interrupted_truncation_is_finished_at_open() {
    let dir = scratch();
    let plan = FaultPlan::new();
    let (wal, _) = Wal::open(dir.path(), with_faults(512, &plan)).unwrap();
    for i in 0..100 {
        wal.append_blocking(payload(i)).unwrap();
    }
    plan.fail_always(IoOp::Remove, EIO);
    let report = wal.checkpoint(b"s", Lsn(60)).unwrap();
    assert!(report.cleanup_error.is_some() && report.segments_removed == 0);
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), small(512)).unwrap();
    assert_eq!(rec.checkpoint.as_ref().unwrap().lsn, Lsn(60));
    assert_eq!(payloads(&rec), (60..100).map(payload).collect::<Vec<_>>());
    assert!(rec.cuts.is_empty());
    let first = read_segment_header(&list_segments(&dir.path().join(WAL_DIR)).unwrap()[0].1).unwrap().unwrap();
    assert!(first <= 61, "covered segments were removed at open");
}

/// A reference log of ~50 records over several segments; returns the
/// payloads and the frame layout.
fn reference_log(dir: &Path) -> (Vec<Vec<u8>>, Layout) {
    let (wal, _) = Wal::open(dir, small(400)).unwrap();
    let want: Vec<_> = (0..50).map(payload).collect();
    for p in &want {
        wal.append_blocking(p.clone()).unwrap();
    }
    drop(wal);
    let layout = layout(dir);
    assert!(layout.len() >= 4, "several segments");
    (want, layout)
}

/// Opens a damaged copy and checks that it yields exactly `keep` records of
/// `want`, reports a loss iff `lossy`, is stable, and goes on appending.
fn check_damaged(dir: &Path, want: &[Vec<u8>], keep: usize, lossy: bool, what: &str) {
    let (wal, rec) = Wal::open(dir, small(400)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(payloads(&rec), want[..keep].to_vec(), "{what}: {:?}", rec.cuts);
    assert_consecutive(&rec);
    assert_eq!(rec.lost_records() > 0, lossy, "{what}: {:?}", rec.cuts);
    for c in &rec.cuts {
        assert!(c.segment.file_name().is_some() && (c.bytes > 0 || c.reason == CutReason::BadHeader), "{what}: {c}");
    }
    assert_eq!(wal.append_blocking(b"after".to_vec()).unwrap(), Lsn(keep as u64 + 1), "{what}");
    drop(wal);
    let (_wal, again) = Wal::open(dir, small(400)).unwrap();
    assert!(again.cuts.is_empty(), "{what}: second open cut again: {:?}", again.cuts);
    assert_eq!(again.records.len(), keep + 1, "{what}");
}

/// How many records survive when segment `s` is damaged at `offset`: all
/// before the frame holding it (all before the segment for its header).
fn survivors(layout: &Layout, s: usize, offset: u64) -> usize {
    let before: usize = layout[..s].iter().map(|(_, f)| f.len()).sum();
    before + layout[s].1.iter().filter(|(_, end)| *end <= offset).count()
}

#[test]
fn torn_log_truncated_at_every_offset_yields_exactly_the_intact_prefix() {
    let base = scratch();
    let (want, layout) = reference_log(&base.path().join("ref"));
    let last = layout.len() - 1;
    for s in [1, last] {
        let len = std::fs::metadata(&layout[s].0).unwrap().len();
        for offset in 0..len {
            let dir = base.path().join(format!("t{s}-{offset}"));
            copy_dir(&base.path().join("ref"), &dir);
            let seg = dir.join(WAL_DIR).join(layout[s].0.file_name().unwrap());
            std::fs::OpenOptions::new().write(true).open(&seg).unwrap().set_len(offset).unwrap();
            let keep = survivors(&layout, s, offset);
            // A tail cut at a frame boundary of the last segment looks like a
            // log that ended there, and a torn header like a crash while the
            // segment was created: no record can be counted lost. A cut in an
            // earlier segment always leaves a hole before the next one.
            let at_boundary = offset <= SEGMENT_HEADER_LEN as u64 || layout[s].1.iter().any(|(_, e)| *e == offset);
            let lossy = s != last || !at_boundary;
            check_damaged(&dir, &want, keep, lossy, &format!("segment {s} cut at {offset}"));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}

#[test]
fn flipped_bytes_anywhere_never_yield_a_damaged_record() {
    let base = scratch();
    let (want, layout) = reference_log(&base.path().join("ref"));
    let last = layout.len() - 1;
    for s in [0, 2, last] {
        let len = std::fs::metadata(&layout[s].0).unwrap().len();
        for offset in 0..len {
            for mask in [0x01u8, 0x80] {
                let dir = base.path().join(format!("f{s}-{offset}-{mask}"));
                copy_dir(&base.path().join("ref"), &dir);
                let seg = dir.join(WAL_DIR).join(layout[s].0.file_name().unwrap());
                let mut bytes = std::fs::read(&seg).unwrap();
                bytes[offset as usize] ^= mask;
                std::fs::write(&seg, &bytes).unwrap();
                check_damaged(&dir, &want, survivors(&layout, s, offset), true, &format!("segment {s} flip {mask:#x} at {offset}"));
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}

#[test]
fn a_missing_segment_ends_the_log_at_the_gap() {
    let base = scratch();
    let (want, layout) = reference_log(base.path());
    std::fs::remove_file(&layout[2].0).unwrap();
    let keep = layout[0].1.len() + layout[1].1.len();
    let (_wal, rec) = Wal::open(base.path(), small(400)).unwrap();
    assert_eq!(payloads(&rec), want[..keep].to_vec());
    assert_eq!(rec.cuts[0].reason, CutReason::Gap);
    assert_eq!(rec.lost_records(), (keep + layout[2].1.len()..want.len()).len() as u64);
}

#[test]
fn a_corrupt_checkpoint_stops_the_open_naming_the_file() {
    let dir = scratch();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    for i in 0..10 {
        wal.append_blocking(payload(i)).unwrap();
    }
    let path = wal.checkpoint(b"snapshot of ten", Lsn(10)).unwrap().path;
    drop(wal);
    let good = std::fs::read(&path).unwrap();
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("flipped", {
            let mut b = good.clone();
            b[good.len() - 3] ^= 4;
            b
        }),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("bad magic", {
            let mut b = good.clone();
            b[0] = b'X';
            b
        }),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in damages {
        std::fs::write(&path, bytes).unwrap();
        match Wal::open(dir.path(), WalOptions::default()) {
            Err(e @ WalError::CorruptCheckpoint { .. }) => {
                assert!(e.to_string().contains(&*path.to_string_lossy()), "{what}: {e}")
            }
            other => panic!("{what}: {:?}", other.map(|(_, r)| r)),
        }
    }
    std::fs::write(&path, &good).unwrap();
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.checkpoint.unwrap().bytes, b"snapshot of ten");
}

#[test]
fn stale_tmp_checkpoints_are_removed() {
    let dir = scratch();
    let tmp = dir.path().join("checkpoint.00000000000000000005.tmp");
    std::fs::write(&tmp, b"half written").unwrap();
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(rec.removed_tmp, vec![tmp.clone()]);
    assert!(!tmp.exists() && rec.checkpoint.is_none());
}

/// Appends `n` records one by one; returns the acknowledged payloads.
fn append_n(wal: &Wal, from: u64, n: u64, acked: &mut Vec<Vec<u8>>, errors: &mut Vec<WalError>) {
    for i in from..from + n {
        match wal.append_blocking(payload(i)) {
            Ok(_) => acked.push(payload(i)),
            Err(e) => errors.push(e),
        }
    }
}

#[test]
fn disk_full_on_write_fails_the_append_and_the_log_recovers_by_itself() {
    let dir = scratch();
    let plan = FaultPlan::new();
    plan.short_writes(true);
    let (wal, _) = Wal::open(dir.path(), with_faults(1 << 20, &plan)).unwrap();
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    append_n(&wal, 0, 5, &mut acked, &mut errors);
    plan.fail_next(IoOp::Write, 1, ENOSPC);
    let err = wal.append_blocking(b"lost".to_vec()).unwrap_err();
    assert!(err.is_retryable());
    assert!(matches!(&err, WalError::Io { op: IoOp::Write, source, .. } if source.raw_os_error() == Some(ENOSPC)), "{err}");
    append_n(&wal, 5, 5, &mut acked, &mut errors);
    assert!(errors.is_empty());
    assert_eq!(wal.stats().failed_records, 1);
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&rec), acked);
    assert!(rec.cuts.is_empty(), "the failed bytes were cut back before the answer: {:?}", rec.cuts);
}

#[test]
fn fsync_error_fails_the_append_and_a_fresh_segment_carries_on() {
    let dir = scratch();
    let plan = FaultPlan::new();
    let (wal, _) = Wal::open(dir.path(), with_faults(1 << 20, &plan)).unwrap();
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    append_n(&wal, 0, 5, &mut acked, &mut errors);
    plan.fail_next(IoOp::Sync, 1, EIO);
    assert!(matches!(wal.append_blocking(b"lost".to_vec()), Err(WalError::Io { op: IoOp::Sync, .. })));
    append_n(&wal, 5, 5, &mut acked, &mut errors);
    assert!(errors.is_empty());
    assert_eq!(wal.stats().segments, 2, "after a failed fsync the old file is left");
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&rec), acked);
    assert_consecutive(&rec);
}

#[test]
fn failed_bytes_that_cannot_be_cut_back_are_superseded_not_replayed() {
    let dir = scratch();
    let plan = FaultPlan::new();
    let (wal, _) = Wal::open(dir.path(), with_faults(1 << 20, &plan)).unwrap();
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    append_n(&wal, 0, 5, &mut acked, &mut errors);
    // The write lands whole but fsync fails, and the cut back fails too.
    plan.fail_next(IoOp::Sync, 1, EIO);
    plan.fail_next(IoOp::Truncate, 1, EIO);
    assert!(wal.append_blocking(b"failed but on disk".to_vec()).is_err());
    append_n(&wal, 5, 5, &mut acked, &mut errors);
    assert!(errors.is_empty());
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&rec), acked);
    assert_eq!(rec.cuts.len(), 1);
    assert_eq!((rec.cuts[0].reason, rec.cuts[0].records), (CutReason::Superseded, 1));
    assert_eq!(rec.lost_records(), 0);
}

#[test]
fn a_full_disk_refuses_appends_until_it_has_room_again() {
    let dir = scratch();
    let plan = FaultPlan::new();
    plan.short_writes(true);
    let (wal, _) = Wal::open(dir.path(), with_faults(600, &plan)).unwrap();
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    append_n(&wal, 0, 20, &mut acked, &mut errors);
    plan.fail_always(IoOp::Write, ENOSPC);
    plan.fail_always(IoOp::Create, ENOSPC);
    append_n(&wal, 20, 30, &mut acked, &mut errors);
    assert_eq!(errors.len(), 30);
    assert!(errors.iter().all(WalError::is_retryable));
    plan.heal();
    append_n(&wal, 50, 30, &mut acked, &mut errors);
    assert_eq!(acked.len(), 50);
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&rec), acked);
    assert_eq!(rec.lost_records(), 0);
}

/// Every single failure of every operation, at every point of a workload
/// with rotations: recovery returns exactly the acknowledged records.
#[test]
fn any_single_io_failure_keeps_exactly_the_acknowledged_records() {
    let base = scratch();
    for short in [false, true] {
        for op in [IoOp::Write, IoOp::Sync, IoOp::Truncate, IoOp::Create, IoOp::SyncDir] {
            for nth in 1..=40 {
                let dir = base.path().join(format!("{op:?}-{nth}-{short}"));
                let plan = FaultPlan::new();
                plan.short_writes(short);
                let (wal, _) = Wal::open(&dir, with_faults(300, &plan)).unwrap();
                plan.fail_nth(op, nth, if nth % 2 == 0 { EIO } else { ENOSPC });
                let (mut acked, mut errors) = (Vec::new(), Vec::new());
                append_n(&wal, 0, 40, &mut acked, &mut errors);
                assert!(acked.len() + errors.len() == 40 && errors.len() <= 2, "{op:?} #{nth}: {errors:?}");
                drop(wal);
                let (_wal, rec) = Wal::open(&dir, small(300)).unwrap();
                assert_eq!(payloads(&rec), acked, "{op:?} #{nth} short={short}: {:?}", rec.cuts);
                assert_consecutive(&rec);
                assert_eq!(rec.lost_records(), 0, "{op:?} #{nth}: {:?}", rec.cuts);
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_through_intermittent_faults_keep_exactly_the_acknowledged() {
    let dir = scratch();
    let plan = FaultPlan::new();
    plan.short_writes(true);
    let (wal, _) = Wal::open(dir.path(), with_faults(2000, &plan)).unwrap();
    let mut handles = Vec::new();
    for t in 0..16u64 {
        let (wal, plan) = (wal.clone(), plan.clone());
        handles.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..50 {
                if t == 0 && i % 10 == 5 {
                    plan.fail_next([IoOp::Write, IoOp::Sync, IoOp::Create][i as usize % 3], 1, ENOSPC);
                }
                let p = payload(t * 1000 + i);
                if let Ok(lsn) = wal.append(p.clone()).await {
                    acked.push((lsn, p));
                }
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.await.unwrap());
    }
    acked.sort();
    assert!(acked.len() < 800 && acked.len() > 600, "{}", acked.len());
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let got: Vec<_> = rec.records.iter().map(|r| (r.lsn, r.payload.clone())).collect();
    assert_eq!(got, acked);
}

/// The group-commit figures on this disk: 64 concurrent appenders of 1 KiB.
/// `cargo test -p shoal-collector --lib durable::tests::group_commit_throughput -- --ignored --nocapture`
/// (`SHOAL_WAL_BENCH_DIR` picks the disk; default: the system temp dir).
#[test]
#[ignore = "measurement"]
fn group_commit_throughput() {
    let dir = match std::env::var_os("SHOAL_WAL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let secs = 5.0;
    let start = std::time::Instant::now();
    let before = wal.stats();
    rt.block_on(async {
        let mut handles = Vec::new();
        for _ in 0..64 {
            let wal = wal.clone();
            handles.push(tokio::spawn(async move {
                while start.elapsed().as_secs_f64() < secs {
                    wal.append(vec![0xA5; 1024]).await.unwrap();
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let s = wal.stats();
    let (records, commits) = (s.records - before.records, s.commits - before.commits);
    println!(
        "64 appenders x 1 KiB on {}: {:.0} records/s, {:.0} group fsyncs/s, {:.1} records per fsync, {:.1} MiB/s",
        dir.path().display(),
        records as f64 / elapsed,
        commits as f64 / elapsed,
        records as f64 / commits as f64,
        s.bytes as f64 / elapsed / (1 << 20) as f64
    );
}

#[test]
fn a_full_disk_at_open_still_recovers_and_appends_resume_later() {
    let dir = scratch();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    wal.append_blocking(b"one".to_vec()).unwrap();
    drop(wal);
    let plan = FaultPlan::new();
    plan.fail_always(IoOp::Create, ENOSPC);
    let (wal, rec) = Wal::open(dir.path(), with_faults(1 << 20, &plan)).unwrap();
    assert_eq!(payloads(&rec), vec![b"one".to_vec()]);
    assert!(wal.append_blocking(b"refused".to_vec()).unwrap_err().is_retryable());
    plan.heal();
    assert_eq!(wal.append_blocking(b"two".to_vec()).unwrap(), Lsn(2));
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(payloads(&rec), vec![b"one".to_vec(), b"two".to_vec()]);
}

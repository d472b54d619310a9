//! The durable collector in process: restart restores everything (epoch and
//! definitions included), a torn log is cut and reported and never
//! double-counts, a failing disk answers UNAVAILABLE and heals by itself,
//! expired series stay expired after a restart, and churn plateaus.

use shoal_collector::durable::{FaultPlan, IoOp, WalOptions, ENOSPC};
use shoal_collector::{Collector, Config};
use shoal_proto as pb;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("shoal-durable-{tag}-{}-{}", std::process::id(), rand_suffix()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn config(dir: &Path) -> Config {
    Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_path_buf()),
        overload_retry_after_ms: 20,
        shutdown_grace_ms: 100,
        ..Config::default()
    }
}

fn batch(instance: &str, sequence: u64, define: bool, delta: u64) -> pb::FlushRequest {
    let mut sketch = shoal_core::Sketch::default();
    for i in 0..delta {
        sketch.record(1.0 + i as f64).unwrap();
    }
    pb::FlushRequest {
        instance_id: instance.into(),
        sequence,
        definitions: if define {
            vec![
                pb::SeriesDefinition { r#ref: 1, name: "jobs_total".into(), help: "Jobs done.".into(), ..Default::default() },
                pb::SeriesDefinition { r#ref: 2, name: "job_seconds".into(), ..Default::default() },
            ]
        } else {
            vec![]
        },
        counters: vec![pb::CounterDelta { r#ref: 1, delta }],
        histograms: vec![pb::HistogramDelta { r#ref: 2, sketch: Some(shoal_proto::convert::sketch_to_proto(&sketch)) }],
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

async fn client(c: &Collector) -> pb::ingest_client::IngestClient<tonic::transport::Channel> {
    pb::ingest_client::IngestClient::connect(c.grpc_url()).await.unwrap()
}

fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse::<f64>().ok().map(|v| v as u64))
}

#[test]
fn a_restart_restores_totals_epoch_definitions_and_dedup() {
    let dir = TempDir::new("restart");
    let rt = runtime();
    let first = Collector::start(config(&dir.0)).unwrap();
    let epoch = rt.block_on(async {
        let mut c = client(&first).await;
        let r = c.flush(batch("a", 1, true, 5)).await.unwrap().into_inner();
        c.flush(batch("a", 2, false, 7)).await.unwrap();
        r.collector_epoch
    });
    // A clean stop (final checkpoint); crashes are the kill -9 test's.
    first.shutdown().unwrap();
    let second = Collector::start(config(&dir.0)).unwrap();
    rt.block_on(async {
        let mut c = client(&second).await;
        // A resend of an acknowledged batch is a duplicate.
        let r = c.flush(batch("a", 2, false, 7)).await.unwrap().into_inner();
        assert!(r.duplicate);
        assert_eq!(r.collector_epoch, epoch, "the epoch survives");
        // By ref only: the definitions survived.
        let r = c.flush(batch("a", 3, false, 1)).await.unwrap().into_inner();
        assert!(r.unknown_refs.is_empty() && r.rejected.is_empty(), "{r:?}");
    });
    let text = second.render_metrics();
    assert_eq!(sample(&text, "jobs_total"), Some(13), "{text}");
    assert_eq!(sample(&text, "job_seconds_count"), Some(13), "{text}");
    assert!(text.contains("# HELP jobs_total Jobs done.\n"), "HELP survives the restart: {text}");
}

fn newest_segment(dir: &Path) -> Option<PathBuf> {
    let mut segs: Vec<_> = std::fs::read_dir(dir.join("wal")).ok()?.map(|e| e.unwrap().path()).collect();
    segs.sort();
    segs.into_iter().rev().find(|p| std::fs::metadata(p).map(|m| m.len() > 64).unwrap_or(false))
}

#[test]
fn a_torn_or_corrupt_log_is_cut_reported_and_never_double_counts() {
    let rt = runtime();
    let (mut cases, mut reported) = (0, 0);
    for damage in 0..24u64 {
        let dir = TempDir::new("torn");
        let c = Collector::start(config(&dir.0)).unwrap();
        let acked = rt.block_on(async {
            let mut cl = client(&c).await;
            for s in 1..=20 {
                cl.flush(batch("t", s, s == 1, 1)).await.unwrap();
            }
            20u64
        });
        // Copy the log aside while running (everything acknowledged is in it).
        let seg = newest_segment(&dir.0).expect("a segment with records");
        let bytes = std::fs::read(&seg).unwrap();
        drop(c);
        // The clean stop wrote a checkpoint covering everything; remove the
        // checkpoints and put the damaged log back: the start replays it.
        for e in std::fs::read_dir(&dir.0).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("checkpoint.") {
                std::fs::remove_file(&p).unwrap();
            }
        }
        for e in std::fs::read_dir(dir.0.join("wal")).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let mut damaged = bytes.clone();
        let at = 32 + (damage * 997) % (bytes.len() as u64 - 32);
        if damage % 2 == 0 {
            damaged.truncate(at as usize);
        } else {
            damaged[at as usize] ^= 0x5a;
        }
        std::fs::write(&seg, &damaged).unwrap();
        let c = Collector::start(config(&dir.0)).unwrap();
        let text = c.render_metrics();
        let total = sample(&text, "jobs_total").unwrap_or(0);
        let corrupt = sample(&text, "shoal_collector_wal_corrupt_records_total").unwrap();
        let restored = &c.shared().durable.as_ref().unwrap().restored;
        assert!(total <= acked, "never double-counted: {total} > {acked}");
        assert_eq!(corrupt, restored.cut_records);
        if total < acked && !restored.cuts.is_empty() {
            reported += 1;
        } else if total < acked {
            // Only a truncation exactly at a record boundary looks like a
            // log that simply ended there (it is what fsync rules out).
            assert!(damage % 2 == 0, "a flipped byte that lost data must be reported: {restored:?}");
        }
        // The SDK resends what was not acknowledged after the restart: here, everything again.
        rt.block_on(async {
            let mut cl = client(&c).await;
            for s in 1..=20 {
                let r = cl.flush(batch("t", s, true, 1)).await.unwrap().into_inner();
                assert!(r.unknown_refs.is_empty());
            }
        });
        let text = c.render_metrics();
        assert_eq!(sample(&text, "jobs_total"), Some(acked), "resends fill the gap exactly: {text}");
        cases += 1;
    }
    assert_eq!(cases, 24);
    assert!(reported > 10, "most damage cuts records: {reported}");
}

#[test]
fn a_failing_disk_answers_unavailable_and_heals_by_itself_with_exact_totals() {
    let dir = TempDir::new("fault");
    let rt = runtime();
    let plan = FaultPlan::new();
    let options = WalOptions { faults: Some(plan.clone()), ..WalOptions::default() };
    let c = Collector::start_with(config(&dir.0), options).unwrap();
    rt.block_on(async {
        let mut cl = client(&c).await;
        cl.flush(batch("f", 1, true, 1)).await.unwrap();
        plan.fail_always(IoOp::Write, ENOSPC);
        plan.fail_always(IoOp::Create, ENOSPC);
        let mut sequence = 2;
        let mut sent_ok = 1u64;
        let mut unavailable = 0;
        let started = Instant::now();
        // Like the SDK: keep the batch and resend it until acknowledged.
        while sequence <= 10 {
            if started.elapsed() > Duration::from_millis(500) {
                plan.heal();
            }
            match cl.flush(batch("f", sequence, false, 1)).await {
                Ok(_) => {
                    sent_ok += 1;
                    sequence += 1;
                }
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                    assert!(status.metadata().get(shoal_proto::limits::RETRY_AFTER_METADATA).is_some());
                    unavailable += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "did not heal");
        }
        assert!(unavailable > 0);
        assert_eq!(sent_ok, 10);
    });
    let text = c.render_metrics();
    assert_eq!(sample(&text, "jobs_total"), Some(10), "{text}");
    assert!(sample(&text, "shoal_collector_wal_write_errors_total").unwrap() > 0);
    assert_eq!(sample(&text, "shoal_collector_durable_degraded"), Some(0));
    drop(c);
    // And what was acknowledged is durable.
    let c = Collector::start(config(&dir.0)).unwrap();
    assert_eq!(sample(&c.render_metrics(), "jobs_total"), Some(10));
}

#[test]
fn with_churn_the_series_count_plateaus_at_the_expiry_window() {
    let dir = TempDir::new("expiry");
    let stats = Arc::new(shoal_collector::stats::Stats::default());
    let mut cfg = config(&dir.0);
    cfg.series_expiry_secs = 30;
    cfg.data_dir = None;
    let mut agg = shoal_collector::Aggregator::new(cfg.clone(), stats.clone());
    let t0 = 1_000_000u64;
    let mut peak = 0;
    let rss_kib = || -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4
    };
    let mut rss_at = Vec::new();
    // 10,000 short-lived instances, each with its own series, one per second.
    for i in 0..10_000u64 {
        let now = t0 + i;
        let req = pb::FlushRequest {
            instance_id: format!("pod-{i}"),
            sequence: 1,
            definitions: vec![pb::SeriesDefinition {
                r#ref: 1,
                name: "requests_total".into(),
                labels: vec![pb::Label { key: "pod".into(), value: format!("pod-{i}") }],
                ..Default::default()
            }],
            counters: vec![pb::CounterDelta { r#ref: 1, delta: 1 }],
            ..Default::default()
        };
        agg.apply(&req, now).unwrap();
        if i % 10 == 0 {
            agg.maintain(now);
        }
        peak = peak.max(agg.series_count());
        if (i + 1) % 2_500 == 0 {
            rss_at.push((i + 1, agg.series_count(), agg.instance_count(), rss_kib()));
        }
    }
    eprintln!("churn (instances seen, series, instances held, RSS KiB): {rss_at:?}");
    let (mid, last) = (rss_at[1].3, rss_at[3].3);
    assert!(last <= mid + 4096, "RSS plateaus once instances expire too: {mid} -> {last} KiB");
    assert!(peak <= 41, "series plateau at the expiry window: {peak}");
    assert!(stats.series_expired.load(std::sync::atomic::Ordering::Relaxed) >= 9_950);
}

#[test]
fn an_expired_series_does_not_come_back_after_a_restart() {
    let dir = TempDir::new("expiry-restart");
    let mut cfg = config(&dir.0);
    cfg.series_expiry_secs = 2;
    cfg.interval_secs = 1;
    cfg.summary_window_secs = 1;
    let rt = runtime();
    let c = Collector::start(cfg.clone()).unwrap();
    rt.block_on(async { client(&c).await.flush(batch("e", 1, true, 3)).await.unwrap() });
    assert_eq!(sample(&c.render_metrics(), "jobs_total"), Some(3));
    std::thread::sleep(Duration::from_millis(3500));
    let text = c.render_metrics();
    assert_eq!(sample(&text, "jobs_total"), None, "{text}");
    assert_eq!(sample(&text, "shoal_collector_series_expired_total"), Some(2));
    drop(c);
    let c = Collector::start(cfg).unwrap();
    assert_eq!(sample(&c.render_metrics(), "jobs_total"), None);
    // The instance's refs stay valid: an update creates the series again, from zero.
    rt.block_on(async { client(&c).await.flush(batch("e", 2, false, 1)).await.unwrap() });
    assert_eq!(sample(&c.render_metrics(), "jobs_total"), Some(1));
}

#[test]
fn a_restart_with_another_interval_is_refused_with_the_reason() {
    // Points are indexed by interval; read with another one they would land
    // in the wrong place (or the future, where retention never trims them).
    let dir = TempDir::new("interval");
    let rt = runtime();
    let first = Collector::start(config(&dir.0)).unwrap();
    rt.block_on(async {
        client(&first).await.flush(batch("a", 1, true, 5)).await.unwrap();
    });
    first.shutdown().unwrap();
    let other = Config { interval_secs: 5, ..config(&dir.0) };
    let err = Collector::start(other).err().expect("a checkpoint of 10 s intervals is not read as 5 s ones");
    assert!(err.contains("interval_secs = 10") && err.contains("checkpoint"), "{err}");
    // The data is untouched: the right interval still restores it.
    let again = Collector::start(config(&dir.0)).unwrap();
    assert_eq!(sample(&again.render_metrics(), "jobs_total"), Some(5));
}

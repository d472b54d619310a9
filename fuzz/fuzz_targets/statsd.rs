//! Raw bytes -> the StatsD path: line grammar, per-source accumulation,
//! batches applied through the ingest service's handler, render.
//!
//! The first byte picks the source (transport and one of four IPs, so the
//! source limit is reached); the rest is one datagram (or TCP read). Every
//! 8th input flushes: the batches must all be valid protocol batches (never
//! refused whole) and merge. Small limits so that every limit is reached;
//! renewed every 512 inputs so memory stays flat. Checked after each input:
//! every line received is accepted or refused by reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parking_lot::Mutex;
use shoal_collector::ingest::{IngestControl, IngestService};
use shoal_collector::statsd::{parse, Accumulator, Limits, Reason, Transport};
use shoal_collector::{render, Aggregator, Config};
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

struct Harness {
    accumulator: Accumulator,
    service: IngestService,
    aggregator: Arc<Mutex<Aggregator>>,
    stats: Arc<shoal_collector::stats::Stats>,
    runs: u32,
}

fn harness() -> Harness {
    let config = Config { max_series_per_instance: 64, max_series_per_metric: 32, max_series_total: 256, ..Config::default() };
    let stats = Arc::new(shoal_collector::stats::Stats::default());
    let aggregator = Arc::new(Mutex::new(Aggregator::new(config.clone(), stats.clone())));
    let control = Arc::new(IngestControl::new(1, 1));
    let limits = Limits { max_sources: 3, max_series_per_source: 16, max_series_total: 40, max_set_size: 8, max_datagram_bytes: 512, interval_secs: 10 };
    Harness {
        accumulator: Accumulator::new(limits, stats.statsd.clone()),
        service: IngestService::new(aggregator.clone(), stats.clone(), control),
        aggregator,
        stats,
        runs: 0,
    }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(harness());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, datagram)) = data.split_first() else { return };
    // The grammar alone, on whatever is text.
    if let Ok(text) = std::str::from_utf8(datagram) {
        for line in text.lines() {
            if let Ok(l) = parse::parse_line(line) {
                assert!(l.rate > 0.0 && l.rate <= 1.0 && !l.name.is_empty());
                let _ = parse::tags(l.tags);
            }
        }
    }
    HARNESS.with(|cell| {
        let mut h = cell.borrow_mut();
        h.runs += 1;
        if h.runs % 512 == 0 {
            *h = harness();
        }
        let transport = if mode & 1 == 0 { Transport::Udp } else { Transport::Tcp };
        let ip = IpAddr::from([127, 0, 0, (mode >> 1) % 4]);
        let now = 1_700_000_000 + u64::from(h.runs / 16);
        h.accumulator.ingest((transport, ip), datagram, now);
        if h.runs % 8 == 0 {
            for built in h.accumulator.take_batches(now * 1_000_000_000) {
                let response = h.service.handle(&built.request).expect("a StatsD batch is never refused whole");
                assert!(response.unknown_refs.is_empty(), "definitions travel with first use");
            }
            let text = render(&h.aggregator.lock(), &h.stats);
            assert!(text.contains("shoal_collector_batches_received_total"));
        }
        let s = &h.stats.statsd;
        let rejected: u64 = Reason::ALL.iter().filter(|r| **r != Reason::DatagramTooLarge).map(|&r| s.rejected(r)).sum();
        let received = s.lines_received.load(std::sync::atomic::Ordering::Relaxed);
        let accepted = s.lines_accepted.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(received, accepted + rejected);
    });
});

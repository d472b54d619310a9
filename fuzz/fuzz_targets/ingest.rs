//! Raw bytes -> prost decode -> validate -> Aggregator::apply (through the
//! ingest service's handler, which also builds the response) -> render.
//!
//! The first byte picks the mode: even = the rest is one FlushRequest; odd =
//! the rest is a sequence of length-delimited FlushRequests applied in order
//! to one aggregator (duplicates, refs bound by earlier batches, limits
//! reached across batches). The aggregator has small limits so that they are
//! reached, and is renewed every 512 inputs so memory stays flat.
#![no_main]

use libfuzzer_sys::fuzz_target;
use parking_lot::Mutex;
use prost::Message;
use shoal_collector::ingest::{IngestControl, IngestService};
use shoal_collector::{render, Aggregator, Config};
use shoal_proto as pb;
use std::cell::RefCell;
use std::sync::Arc;

struct Harness {
    service: IngestService,
    aggregator: Arc<Mutex<Aggregator>>,
    stats: Arc<shoal_collector::stats::Stats>,
    runs: u32,
}

fn harness() -> Harness {
    let config = Config {
        max_series_per_instance: 64,
        max_series_per_metric: 32,
        max_series_total: 256,
        blocklist: vec!["blocked_*".into(), "x{a,b}".into()],
        ..Config::default()
    };
    let stats = Arc::new(shoal_collector::stats::Stats::default());
    let aggregator = Arc::new(Mutex::new(Aggregator::new(config.clone(), stats.clone())));
    let control = Arc::new(IngestControl::new(1, 1));
    Harness { service: IngestService::new(aggregator.clone(), stats.clone(), control), aggregator, stats, runs: 0 }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(harness());
}

fn apply(h: &Harness, req: &pb::FlushRequest) {
    let _ = h.service.handle(req);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    HARNESS.with(|cell| {
        let mut h = cell.borrow_mut();
        h.runs += 1;
        if h.runs % 512 == 0 {
            *h = harness();
        }
        if mode % 2 == 0 {
            if let Ok(req) = pb::FlushRequest::decode(rest) {
                apply(&h, &req);
            }
        } else {
            let mut buf = rest;
            while !buf.is_empty() {
                match pb::FlushRequest::decode_length_delimited(&mut buf) {
                    Ok(req) => apply(&h, &req),
                    Err(_) => break,
                }
            }
        }
        let text = render(&h.aggregator.lock(), &h.stats);
        assert!(text.contains("shoal_collector_batches_received_total"));
        // Conservation holds whatever was sent.
        let s = &h.stats;
        let rejected: u64 = shoal_collector::stats::Rejection::ALL.iter().map(|&r| s.rejected_flow(r).values()).fold(0, u64::wrapping_add);
        let accounted = s.merged.values().wrapping_add(s.duplicate.values()).wrapping_add(s.unknown_refs.values()).wrapping_add(rejected);
        assert_eq!(s.received.values(), accounted);
    });
});

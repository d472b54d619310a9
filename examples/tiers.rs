//! Tiers and shards in one process: service instances -> 2 edge collectors
//! -> 2 global shards.
//!
//! `cargo run --release --example tiers` starts two global collectors (the
//! shards), two edge collectors that forward to both (`upstream`, with
//! `upstream_labels` `tier = "edge"`), and `--instances` service instances
//! per edge recording a counter per route and a latency histogram. At the
//! end it flushes every tier and prints, per tier, what was recorded,
//! merged and forwarded, the conservation balance of each collector and
//! forwarder, how the series split between the shards, and the shards'
//! totals against the exact ones.

use clap::Parser;
use rand::{rngs::StdRng, Rng, SeedableRng};
use shoal_collector::{Collector, Config};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Service instances -> 2 edge collectors -> 2 global shards, all in process")]
struct Args {
    /// Service instances per edge.
    #[arg(long, default_value_t = 10)]
    instances: usize,
    /// Counter series (routes) per instance.
    #[arg(long, default_value_t = 100)]
    routes: usize,
    /// Seconds to record.
    #[arg(long, default_value_t = 5)]
    duration: u64,
}

fn collector(upstream: &[String]) -> Collector {
    let mut config = Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        interval_secs: 1,
        summary_window_secs: 3600,
        upstream: upstream.to_vec(),
        ..Config::default()
    };
    if !upstream.is_empty() {
        config.upstream_labels.insert("tier".into(), "edge".into());
    }
    Collector::start(config).expect("collector starts")
}

fn sum(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
}

fn main() {
    let args = Args::parse();
    let shards = [collector(&[]), collector(&[])];
    let upstream: Vec<String> = shards.iter().map(Collector::grpc_url).collect();
    let edges = [collector(&upstream), collector(&upstream)];
    println!("shards: {}  {}", shards[0].grpc_url(), shards[1].grpc_url());
    println!("edges:  {}  {}  (forwarding to both shards)", edges[0].grpc_url(), edges[1].grpc_url());
    let instances: Vec<shoal::Shoal> = (0..2 * args.instances)
        .map(|i| {
            shoal::Shoal::builder()
                .service("checkout")
                .collector(edges[i % 2].grpc_url())
                .flush_interval(Duration::from_millis(500))
                .send_own_metrics(false)
                .build()
                .expect("instance starts")
        })
        .collect();
    println!(
        "{} service instances, {} per edge, {} routes each; recording for {} s",
        instances.len(),
        args.instances,
        args.routes,
        args.duration
    );

    let mut rng = StdRng::seed_from_u64(7);
    let mut recorded: BTreeMap<usize, u64> = BTreeMap::new();
    let mut samples = 0u64;
    let end = Instant::now() + Duration::from_secs(args.duration);
    while Instant::now() < end {
        for s in &instances {
            for r in 0..args.routes {
                let n = rng.gen_range(1..4);
                s.counter("orders_total", &[("route", &r.to_string())]).increment(n);
                *recorded.entry(r).or_default() += n;
            }
            s.histogram("order_latency_seconds", &[]).record(0.002 * (1.0 + rng.gen::<f64>() * 20.0));
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Flush tier by tier: instances -> edges, then edges -> shards.
    for s in &instances {
        s.shutdown().expect("instance flushed to its edge");
    }
    for e in &edges {
        e.forward_now().expect("edge forwarded to the shards");
    }
    let total: u64 = recorded.values().sum();

    println!();
    println!("tier 0, service instances: {total} order increments + {samples} latency samples = {} values", total + samples);
    for (i, e) in edges.iter().enumerate() {
        let s = &e.shared().stats;
        let f = s.forwarder().expect("an edge forwards");
        let (received, merged) = (s.received.values(), s.merged.values());
        let accounted = merged + s.duplicate.values() + s.unknown_refs.values() + s.values_rejected();
        let (taken, acked, dropped, pending) =
            (f.values_taken.load(Relaxed), f.values_acknowledged.load(Relaxed), f.values_dropped_total(), f.values_pending.load(Relaxed));
        println!(
            "tier 1, edge {i}: received {received} = merged {merged} + duplicate/unknown/rejected {} [{}]; \
             forwarded: taken {taken} = acknowledged {acked} + dropped {dropped} + pending {pending} [{}]",
            accounted - merged,
            if received == accounted { "balanced" } else { "UNBALANCED" },
            if taken == acked + dropped + pending { "balanced" } else { "UNBALANCED" },
        );
    }
    let forwarded: u64 = edges.iter().map(|e| e.shared().stats.forwarder().map_or(0, |f| f.values_acknowledged.load(Relaxed))).sum();
    let mut shard_total = 0.0;
    let mut shard_merged = 0;
    for (i, sh) in shards.iter().enumerate() {
        let s = &sh.shared().stats;
        let page = sh.render_metrics();
        let series = page.lines().filter(|l| l.starts_with("orders_total{")).count();
        let orders = sum(&page, "orders_total{");
        shard_total += orders;
        shard_merged += s.merged.values();
        let accounted = s.merged.values() + s.duplicate.values() + s.unknown_refs.values() + s.values_rejected();
        println!(
            "tier 2, shard {i}: {series} of {} order series, {orders} orders; received {} = merged {} + other {} [{}]",
            args.routes,
            s.received.values(),
            s.merged.values(),
            accounted - s.merged.values(),
            if s.received.values() == accounted { "balanced" } else { "UNBALANCED" },
        );
    }
    println!(
        "shards merged {shard_merged} values: the {forwarded} the edges forwarded + {} of the edges' own \
         shoal_flush_* health counters (they travel as ordinary series of each edge)",
        shard_merged - forwarded
    );
    println!(
        "orders across the shards: {shard_total} (exact: {total}) {}",
        if shard_total as u64 == total { "- exact, each series on one shard" } else { "- MISMATCH" }
    );
    for c in edges.into_iter().chain(shards) {
        let _ = c.shutdown();
    }
}

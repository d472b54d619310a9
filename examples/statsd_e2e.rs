//! One side of the end-to-end comparison in `benches/statsd_vs_etsy.py
//! --e2e`: records N events (4 in 5 a counter increment over 100 names, 1
//! in 5 a latency over 20 names, a name given at every call) through
//!
//! - `sdk URL N`: the shoal SDK (`metrics` macros), flushing to a collector;
//! - `cadence ADDR N`: the `cadence` StatsD client over UDP (buffered sink,
//!   1,432-byte datagrams) to a StatsD port (shoal's or Etsy's);
//!
//! and prints the CPU seconds this process spent (recording, encoding,
//! sending), which the script adds to the aggregator's own CPU seconds.

use cadence::prelude::*;
use cadence::{BufferedUdpMetricSink, StatsdClient};
use std::net::UdpSocket;
use std::time::{Duration, Instant};

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime + stime, in clock ticks of 1/100 s (Linux's USER_HZ).
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: statsd_e2e sdk|cadence TARGET EVENTS";
    let (mode, target, n) = match args.as_slice() {
        [_, mode, target, n] => (mode.as_str(), target.as_str(), n.parse::<u64>()?),
        _ => return Err(usage.into()),
    };
    let counters: Vec<&'static str> = (0..100).map(|i| &*Box::leak(format!("app_requests_n{i}").into_boxed_str())).collect();
    let latencies: Vec<&'static str> = (0..20).map(|i| &*Box::leak(format!("app_latency_n{i}").into_boxed_str())).collect();
    let (cpu0, wall0) = (cpu_secs(), Instant::now());
    match mode {
        "sdk" => {
            // Without the SDK's own health series: they count the recorded
            // values again, and only the application's events are compared.
            let shoal = shoal::Shoal::builder()
                .service("e2e")
                .collector(target)
                .flush_interval(Duration::from_secs(1))
                .send_own_metrics(false)
                .build()?;
            metrics::with_local_recorder(&shoal, || {
                for i in 0..n {
                    if i % 5 == 4 {
                        metrics::histogram!(latencies[(i % 20) as usize]).record(((i % 2000) + 1) as f64 / 1000.0);
                    } else {
                        metrics::counter!(counters[(i % 100) as usize]).increment(1);
                    }
                }
            });
            shoal.shutdown()?;
        }
        "cadence" => {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            let sink = BufferedUdpMetricSink::with_capacity(target, socket, 1432)?;
            let client = StatsdClient::from_sink("", sink);
            for i in 0..n {
                // Errors (a full socket buffer) are what a StatsD app ignores too.
                if i % 5 == 4 {
                    let _ = client.time(latencies[(i % 20) as usize], (i % 2000) + 1);
                } else {
                    let _ = client.count(counters[(i % 100) as usize], 1);
                }
            }
            client.flush()?;
        }
        _ => return Err(usage.into()),
    }
    println!("events={n} cpu_s={:.3} wall_s={:.3}", cpu_secs() - cpu0, wall0.elapsed().as_secs_f64());
    Ok(())
}

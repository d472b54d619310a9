//! StatsD / DogStatsD ingest, end to end over real loopback sockets: a real
//! client (`cadence`) sends a known stream to a collector started with
//! `Collector::start`, and the results are read back over HTTP `/metrics`.
//! Every wait is a bounded poll.

use cadence::prelude::*;
use cadence::{MetricSink, StatsdClient, UdpMetricSink};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_collector::{Collector, Config};
use std::io::{BufWriter, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn start(extra: impl FnOnce(&mut Config)) -> Collector {
    let mut config = Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        statsd_listen: Some("127.0.0.1:0".parse().unwrap()),
        statsd_flush_ms: 100,
        quantiles: vec![0.5, 0.9, 0.99],
        ..Config::default()
    };
    extra(&mut config);
    Collector::start(config).expect("collector starts")
}

fn metrics(c: &Collector) -> String {
    ureq::get(format!("http://{}/metrics", c.http_addr())).call().unwrap().body_mut().read_to_string().unwrap()
}

/// The value of the sample spelt exactly `series` (name and labels as
/// exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).map(|v| v.trim().parse().unwrap()))
}

/// Polls `/metrics` until `done` holds (at most 20 s); returns the last text.
fn wait_for(c: &Collector, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = metrics(c);
        if done(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A cadence sink writing newline-delimited lines to a TCP stream.
#[derive(Clone)]
struct TcpSink(Arc<Mutex<BufWriter<TcpStream>>>);

impl MetricSink for TcpSink {
    fn emit(&self, metric: &str) -> std::io::Result<usize> {
        let mut w = self.0.lock().unwrap();
        w.write_all(metric.as_bytes())?;
        w.write_all(b"\n")?;
        Ok(metric.len() + 1)
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.lock().unwrap().flush()
    }
}

/// Exact quantile with the sketch's rank rule: the `ceil(q n)`-th smallest.
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn unix_secs_f64() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_cadence_stream_over_tcp_is_merged_exactly() {
    let c = start(|_| {});
    let addr = c.statsd_addr().expect("statsd listening");
    let sink = TcpSink(Arc::new(Mutex::new(BufWriter::new(TcpStream::connect(addr).unwrap()))));
    let client = StatsdClient::from_sink("", sink.clone());
    let mut rng = StdRng::seed_from_u64(15);

    // Counters with DogStatsD tags; dotted names are sanitised.
    let mut get_total = 0u64;
    let mut post_total = 0u64;
    for _ in 0..10_000 {
        let v: i64 = rng.gen_range(1..=5);
        if rng.gen_bool(0.7) {
            get_total += v as u64;
            client.count_with_tags("api.requests", v).with_tag("method", "GET").with_tag("env", "prod").send();
        } else {
            post_total += v as u64;
            client.count_with_tags("api.requests", v).with_tag("env", "prod").with_tag("method", "POST").send();
        }
    }
    // Sample-rated counters: the weighted expectation, exactly.
    let mut sampled = Vec::new();
    for (name, rate, factor) in [("sampled.half", 0.5, 2u64), ("sampled.quarter", 0.25, 4), ("sampled.tenth", 0.1, 10)] {
        let mut sum = 0u64;
        for _ in 0..3_000 {
            let v: i64 = rng.gen_range(1..=3);
            sum += v as u64;
            client.count_with_tags(name, v).with_sampling_rate(rate).send();
        }
        sampled.push((name.replace('.', "_"), sum * factor));
    }
    // Timers in ms, log-uniform over 1 ms .. 10 s; become seconds.
    let mut timer_values = Vec::new();
    for _ in 0..20_000 {
        let ms = 10f64.powf(rng.gen_range(0.0..4.0)).round() as u64;
        timer_values.push(ms as f64 / 1000.0);
        client.time_with_tags("db.query", ms).with_tag("table", "users").send();
    }
    // A sampled timer: each line counts 1/rate samples.
    for _ in 0..1_000 {
        client.time_with_tags("sampled.timer", 5u64).with_sampling_rate(0.25).send();
    }
    // Histograms and packed distributions (cadence sends `v1:v2:...|d`).
    let mut hist_values = Vec::new();
    for _ in 0..5_000 {
        let v: f64 = rng.gen_range(1.0..1_000_000.0);
        hist_values.push(v);
        client.histogram("payload.bytes", v).unwrap();
    }
    let mut dist_values = Vec::new();
    for _ in 0..1_000 {
        let pack: Vec<f64> = (0..5).map(|_| rng.gen_range(0.001..2.0)).collect();
        dist_values.extend(&pack);
        client.distribution("render.seconds", pack).unwrap();
    }
    // Gauges: absolute, then +/- deltas (raw lines: cadence has no delta API).
    client.gauge("queue.depth", 10u64).unwrap();
    sink.emit("queue.depth:+5|g").unwrap();
    sink.emit("queue.depth:-3|g").unwrap();
    sink.emit("queue.depth:+0.5|g").unwrap();
    // Sets: distinct members per interval. Not within a second of an
    // interval boundary (the set restarts there).
    while unix_secs_f64() % 10.0 > 8.5 {
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..2_000 {
        client.set("users.unique", (i % 500) as i64).unwrap();
    }
    client.count("stream.end", 1).unwrap();
    sink.flush().unwrap();

    let text = wait_for(&c, "the end marker", |t| sample(t, "stream_end").is_some());
    assert_eq!(sample(&text, r#"api_requests{env="prod",method="GET"}"#), Some(get_total as f64));
    assert_eq!(sample(&text, r#"api_requests{env="prod",method="POST"}"#), Some(post_total as f64));
    for (name, expected) in &sampled {
        assert_eq!(sample(&text, name), Some(*expected as f64), "{name}: value / rate summed");
    }
    timer_values.sort_by(f64::total_cmp);
    hist_values.sort_by(f64::total_cmp);
    dist_values.sort_by(f64::total_cmp);
    for (name, labels, values) in
        [("db_query", r#"table="users""#, &timer_values), ("payload_bytes", "", &hist_values), ("render_seconds", "", &dist_values)]
    {
        let braces = |extra: &str| {
            let all: Vec<&str> = [labels, extra].into_iter().filter(|s| !s.is_empty()).collect();
            if all.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", all.join(","))
            }
        };
        assert_eq!(sample(&text, &format!("{name}_count{}", braces(""))), Some(values.len() as f64), "{name}");
        for q in [0.5, 0.9, 0.99] {
            let series = format!("{name}{}", braces(&format!("quantile=\"{q}\"")));
            let got = sample(&text, &series).unwrap_or_else(|| panic!("{series}:\n{text}"));
            let exact = exact_quantile(values, q);
            assert!((got - exact).abs() <= 0.01 * exact, "{series}: {got} vs exact {exact}");
        }
    }
    let sum = sample(&text, r#"db_query_sum{table="users"}"#).unwrap();
    assert!((sum - timer_values.iter().sum::<f64>()).abs() < 1e-6 * sum, "timers are in seconds: {sum}");
    assert_eq!(sample(&text, "sampled_timer_count"), Some(4_000.0), "a timer at @0.25 counts 4 samples per line");
    assert_eq!(sample(&text, "queue_depth"), Some(12.5));
    assert_eq!(sample(&text, "users_unique"), Some(500.0));
    assert!(!text.contains('@') && !text.contains("rate="), "the sample rate never shows");
    let sent = 10_000.0 + 9_000.0 + 20_000.0 + 1_000.0 + 5_000.0 + 1_000.0 + 4.0 + 2_000.0 + 1.0;
    assert_eq!(sample(&text, "shoal_collector_statsd_lines_accepted_total"), Some(sent));
    assert_eq!(sample(&text, "shoal_collector_statsd_lines_received_total"), Some(sent));
    // The lines went through the ingest path: one instance, batches merged.
    assert!(sample(&text, "shoal_collector_batches_merged_total").unwrap() >= 1.0);
    assert_eq!(sample(&text, "shoal_collector_instances"), Some(1.0));
    c.shutdown().unwrap();
}

#[test]
fn a_cadence_stream_over_udp_is_merged_and_drops_are_visible() {
    let c = start(|c| c.statsd_recv_buffer = 1 << 20);
    let addr = c.statsd_addr().unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = StatsdClient::from_sink("svc", UdpMetricSink::from(addr, socket).unwrap());
    for i in 0..2_000u64 {
        client.count_with_tags("udp.hits", 1).with_tag("shard", if i % 2 == 0 { "a" } else { "b" }).send();
        if i % 100 == 0 {
            // Do not outrun a receiver on a loaded 2-core machine.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    client.gauge("udp.temp", 21.5).unwrap();
    // Several lines in one datagram.
    let raw = UdpSocket::bind("127.0.0.1:0").unwrap();
    raw.send_to(b"svc.multi:1|c\nsvc.multi:2|c\r\nsvc.multi:3|c|@1\n", addr).unwrap();
    let text = wait_for(&c, "the gauge and the datagram", |t| sample(t, "svc_udp_temp").is_some() && sample(t, "svc_multi").is_some());
    let drops = sample(&text, "shoal_collector_statsd_udp_kernel_drops_total").unwrap();
    let hits = sample(&text, r#"svc_udp_hits{shard="a"}"#).unwrap() + sample(&text, r#"svc_udp_hits{shard="b"}"#).unwrap();
    assert_eq!(hits + drops, 2_000.0, "every increment merged, or dropped by the kernel and counted");
    assert_eq!(sample(&text, "svc_multi"), Some(6.0));
    assert_eq!(sample(&text, "svc_udp_temp"), Some(21.5));
    assert!(sample(&text, "shoal_collector_statsd_udp_recv_buffer_bytes").unwrap() > 0.0);
    c.shutdown().unwrap();
}

fn send_udp(from: &str, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let socket = UdpSocket::bind(from).unwrap();
    for d in datagrams {
        socket.send_to(d, to).unwrap();
    }
}

#[test]
fn hostile_lines_are_refused_counted_by_reason_and_harmless() {
    let c = start(|c| {
        c.statsd_max_sources = 3;
        c.statsd_max_series_per_source = 20;
        c.statsd_max_set_size = 5;
        c.statsd_max_datagram_bytes = 512;
    });
    let addr = c.statsd_addr().unwrap();
    let many_tags: String = (0..40).map(|i| format!("k{i}:v")).collect::<Vec<_>>().join(",");
    // Three of each, so a reason counted once per line is told apart.
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("invalid_utf8", b"bad\xff\xfe:1|c".to_vec()),
        ("missing_type", b"x:1".to_vec()),
        ("missing_value", b"x|c".to_vec()),
        ("unknown_type", b"x:1|zz".to_vec()),
        ("bad_value", b"x:abc|c".to_vec()),
        ("non_finite", b"x:nan|ms".to_vec()),
        ("non_finite", b"x:inf|h".to_vec()),
        ("non_finite", b"x:1e999|g".to_vec()),
        ("negative_counter", b"x:-4|c".to_vec()),
        ("bad_rate", b"x:1|c|@0".to_vec()),
        ("bad_rate", b"x:1|c|@2".to_vec()),
        ("bad_rate", b"x:1|c|@x".to_vec()),
        ("bad_field", b"x:1|c|?what".to_vec()),
        ("bad_timestamp", b"x:1|c|Tsoon".to_vec()),
        ("too_many_tags", format!("x:1|c|#{many_tags}").into_bytes()),
        ("tag_without_value", b"x:1|c|#canary".to_vec()),
        ("bad_tags", b"x:1|c|#:v".to_vec()),
        ("invalid_name", "n".repeat(300).into_bytes().into_iter().chain(*b":1|c").collect()),
        ("invalid_labels", b"x:1|c|#__reserved:1".to_vec()),
        ("reserved_name", b"shoal.fake:1|c".to_vec()),
        ("unsupported", b"_e{5,4}:title|text".to_vec()),
    ];
    let mut expected: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut datagrams = Vec::new();
    for (reason, line) in &corpus {
        *expected.entry(reason).or_default() += 3;
        for _ in 0..3 {
            datagrams.push(line.clone());
        }
    }
    datagrams.push(vec![b'x'; 600]);
    expected.insert("datagram_too_large", 1);
    send_udp("127.0.0.1:0", addr, &datagrams);
    // Series and set limits from a second host.
    let mut limited: Vec<Vec<u8>> = (0..25).map(|i| format!("m{i}:1|c").into_bytes()).collect();
    limited.extend((0..8).map(|i| format!("m0set:{i}|s").into_bytes()));
    send_udp("127.0.0.2:0", addr, &limited);
    // 20 series allowed: 5 counters past it, and each of the 8 lines of the
    // set series (a refused series is not remembered: each line is refused).
    expected.insert("series_limit", 13);
    // TCP is a third source; a line longer than 512 bytes is skipped to its newline.
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(&[b'y'; 2_000]).unwrap();
    tcp.write_all(b"\ntcp.ok:1|c\n").unwrap();
    tcp.flush().unwrap();
    expected.insert("line_too_long", 1);
    wait_for(&c, "the TCP source", |t| sample(t, "tcp_ok").is_some());
    // A fourth source is one too many.
    send_udp("127.0.0.3:0", addr, &[b"x:1|c\nx:2|c".to_vec()]);
    expected.insert("source_limit", 2);
    expected.insert("set_full", 0);

    let reason_count = |t: &str, r: &str| sample(t, &format!("shoal_collector_statsd_lines_rejected_total{{reason=\"{r}\"}}")).unwrap();
    let text = wait_for(&c, "every rejection", |t| {
        sample(t, "tcp_ok").is_some()
            && expected.iter().all(|(r, n)| reason_count(t, r) >= *n as f64)
            && sample(t, "shoal_collector_statsd_udp_kernel_drops_total") == Some(0.0)
    });
    for (reason, n) in &expected {
        assert_eq!(reason_count(&text, reason), *n as f64, "{reason}");
    }
    // The set series itself is past the series limit, so set_full is
    // covered by a source with room: the first one.
    send_udp("127.0.0.1:0", addr, &(0..8).map(|i| format!("s:{i}|s").into_bytes()).collect::<Vec<_>>());
    let text = wait_for(&c, "set_full", |t| reason_count(t, "set_full") == 3.0 && sample(t, "s") == Some(5.0));
    assert_eq!(sample(&text, "s"), Some(5.0), "a full set keeps its exact count of the cap");

    // Random bytes: never a crash, and every line accounted for.
    let mut rng = StdRng::seed_from_u64(1515);
    let alphabet = b"ab.:|@#,c gmshdT0123456789-+e\n\xff";
    let junk: Vec<Vec<u8>> =
        (0..2_000).map(|_| (0..rng.gen_range(0..200)).map(|_| alphabet[rng.gen_range(0..alphabet.len())]).collect()).collect();
    let junk_datagrams = junk.len() as f64;
    let before = sample(&text, "shoal_collector_statsd_datagrams_total").unwrap();
    send_udp("127.0.0.1:0", addr, &junk);
    let text = wait_for(&c, "the junk", |t| {
        let drops = sample(t, "shoal_collector_statsd_udp_kernel_drops_total").unwrap();
        sample(t, "shoal_collector_statsd_datagrams_total").unwrap() + drops >= before + junk_datagrams
    });
    let rejected: f64 = text
        .lines()
        .filter(|l| l.starts_with("shoal_collector_statsd_lines_rejected_total{") && !l.contains("datagram_too_large"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let received = sample(&text, "shoal_collector_statsd_lines_received_total").unwrap();
    let accepted = sample(&text, "shoal_collector_statsd_lines_accepted_total").unwrap();
    assert_eq!(received, accepted + rejected, "every line received is accepted or refused by reason");
    // Still healthy, still merging.
    assert_eq!(ureq::get(format!("http://{}/healthz", c.http_addr())).call().unwrap().status(), 200);
    send_udp("127.0.0.1:0", addr, &[b"after.junk:7|c".to_vec()]);
    wait_for(&c, "a line after the junk", |t| sample(t, "after_junk") == Some(7.0));
    c.shutdown().unwrap();
}

#[test]
fn the_listener_stops_with_the_collector_and_merges_what_it_read() {
    let c = start(|c| c.statsd_flush_ms = 3_600_000);
    let addr = c.statsd_addr().unwrap();
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.write_all(b"late:3|c\n").unwrap();
    tcp.flush().unwrap();
    // Nothing is flushed for an hour, except at shutdown.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(&metrics(&c), "shoal_collector_statsd_lines_accepted_total") != Some(1.0) {
        assert!(Instant::now() < deadline, "the line never arrived");
        std::thread::sleep(Duration::from_millis(20));
    }
    let shared = c.shared().clone();
    drop(tcp);
    c.shutdown().unwrap();
    let text = shoal_collector::render(&shared.aggregator.lock(), &shared.stats);
    assert_eq!(sample(&text, "late"), Some(3.0), "the final flush merged it:\n{text}");
    // The port is free again: both sockets were closed.
    assert!(std::net::TcpListener::bind(addr).is_ok());
    assert!(UdpSocket::bind(addr).is_ok());
}

#[test]
fn with_a_data_dir_statsd_values_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let with_dir = |c: &mut Config| c.data_dir = Some(dir.path().to_path_buf());
    let c = start(with_dir);
    let addr = c.statsd_addr().unwrap();
    send_udp("127.0.0.1:0", addr, &[b"kept.total:41|c\nkept.total:1|c|#x:y".to_vec()]);
    wait_for(&c, "the merge", |t| sample(t, "kept_total") == Some(41.0));
    c.shutdown().unwrap();
    let c = start(with_dir);
    let text = metrics(&c);
    assert_eq!(sample(&text, "kept_total"), Some(41.0), "restored from the data dir:\n{text}");
    assert_eq!(sample(&text, r#"kept_total{x="y"}"#), Some(1.0));
    c.shutdown().unwrap();
}

//! A real Prometheus 2.42, started here on 127.0.0.1 with
//! `--enable-feature=native-histograms` (so it asks for the protobuf
//! exposition) and a 1 s scrape interval, scrapes an in-process collector
//! that holds a histogram merged from four instances (fed over gRPC). The
//! native buckets Prometheus stored must be exactly the collector's
//! cumulative sketch buckets. Text scrapes and gzip are checked by hand.
//!
//! The real Prometheus is required: a missing binary fails the test.

use rand::SeedableRng;
use shoal_collector::remote_write::NativeBuckets;
use shoal_collector::scrape::{self, proto::MetricType};
use shoal_collector::{Collector, Config};
use shoal_core::Sketch;
use shoal_proto as pb;
use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

const HISTOGRAM: &str = "scrape_latency_seconds";
const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[path = "../../tests/support/real_servers.rs"]
mod real_servers;
use real_servers::{lognormal, ServerProcess};

/// Prometheus with native histograms on, scraping `target` every second.
fn prometheus_scraping(target: std::net::SocketAddr) -> ServerProcess {
    ServerProcess::start(
        "prometheus",
        |dir, addr| {
            let config = dir.join("prometheus.yml");
            let yaml = format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: shoal\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
            );
            std::fs::write(&config, yaml).unwrap();
            vec![
                format!("--config.file={}", config.display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address={addr}"),
                "--enable-feature=native-histograms".into(),
            ]
        },
        "/-/ready",
    )
}

fn definition(r#ref: u32, name: &str, help: &str) -> pb::SeriesDefinition {
    pb::SeriesDefinition {
        r#ref,
        name: name.into(),
        labels: vec![pb::Label { key: "route".into(), value: "/pay".into() }],
        help: help.into(),
        unit: if name == HISTOGRAM { "seconds".into() } else { String::new() },
    }
}

/// Four instances with different latency profiles, two batches each (the
/// second by refs only), into one rollup series per metric. Returns the
/// number of samples recorded.
fn feed(collector: &Collector) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut samples = 0;
    rt.block_on(async {
        let mut client = pb::ingest_client::IngestClient::connect(collector.grpc_url()).await.unwrap();
        for (i, mu) in [-4.0, -3.2, -2.5, -1.0].into_iter().enumerate() {
            for sequence in 1..=2u64 {
                let mut sketch = Sketch::default();
                for _ in 0..3000 + 500 * i {
                    sketch.record(lognormal(&mut rng, mu, 0.7)).unwrap();
                    samples += 1;
                }
                let definitions = if sequence == 1 {
                    vec![
                        definition(1, HISTOGRAM, "Payment latency."),
                        definition(2, "scrape_payments_total", "Payments."),
                        definition(3, "scrape_queue_depth", ""),
                    ]
                } else {
                    vec![]
                };
                let request = pb::FlushRequest {
                    instance_id: format!("instance-{i}"),
                    instance_labels: vec![pb::Label { key: "service".into(), value: "checkout".into() }],
                    sequence,
                    definitions,
                    counters: vec![pb::CounterDelta { r#ref: 2, delta: 1000 + i as u64 }],
                    gauges: vec![pb::GaugeValue { r#ref: 3, value: 2.5 }],
                    histograms: vec![pb::HistogramDelta { r#ref: 1, sketch: Some(shoal_proto::convert::sketch_to_proto(&sketch)) }],
                    ..Default::default()
                };
                let reply = client.flush(request).await.unwrap().into_inner();
                assert!(reply.rejected.is_empty() && reply.unknown_refs.is_empty(), "{reply:?}");
            }
        }
    });
    samples
}

/// The collector's cumulative sketch of the histogram and its sum.
fn collector_histogram(collector: &Collector) -> (Sketch, f64) {
    let agg = collector.shared().aggregator.lock();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let view = agg.export(now).views.into_iter().find(|v| v.key.name() == HISTOGRAM).unwrap();
    (view.cumulative.unwrap(), view.sum)
}

/// `(boundary rule, lower, upper, count)` of every non-empty bucket, in the
/// order and with the boundary rules of Prometheus' query API (negative
/// buckets from the most negative, the zero bucket, positive buckets).
fn expected_buckets(native: &NativeBuckets) -> Vec<(u64, f64, f64, u64)> {
    let base = 2f64.powf(2f64.powi(-native.schema));
    // Prometheus bucket p = sketch index + 1 covers (base^(p-1), base^p].
    let bound = |p: i32| base.powi(p);
    let mut out = Vec::new();
    let mut negative: Vec<_> = native.negative.iter().filter(|b| b.1 > 0).collect();
    negative.sort_by_key(|b| std::cmp::Reverse(b.0));
    for &&(i, n) in &negative {
        out.push((1, -bound(i + 1), -bound(i), n));
    }
    if native.zero_count > 0 {
        out.push((3, -native.zero_threshold, native.zero_threshold, native.zero_count));
    }
    let mut positive: Vec<_> = native.positive.iter().filter(|b| b.1 > 0).collect();
    positive.sort_by_key(|b| b.0);
    for &&(i, n) in &positive {
        out.push((0, bound(i), bound(i + 1), n));
    }
    out
}

fn number(v: &serde_json::Value) -> f64 {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}")).parse().unwrap()
}

fn get(url: &str, headers: &[(&str, &str)]) -> (Option<String>, Option<String>, Vec<u8>) {
    let mut request = ureq::get(url);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let mut response = request.call().unwrap();
    let header = |name: &str| response.headers().get(name).map(|v| v.to_str().unwrap().to_string());
    let (content_type, encoding) = (header("content-type"), header("content-encoding"));
    let mut body = Vec::new();
    response.body_mut().as_reader().read_to_end(&mut body).unwrap();
    (content_type, encoding, body)
}

fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn prometheus_scrapes_native_histograms_equal_to_the_merged_sketch() {
    let collector = Collector::start(Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace_ms: 100,
        ..Config::default()
    })
    .unwrap();
    let samples = feed(&collector);
    let (cumulative, sum) = collector_histogram(&collector);
    assert_eq!(cumulative.count(), samples);
    let native = NativeBuckets::from_sketch(&cumulative);
    assert!((-4..=8).contains(&native.schema), "schema {}", native.schema);
    let own_p99 = cumulative.quantile(0.99).unwrap();
    let metrics = format!("http://{}/metrics", collector.http_addr());

    // By hand, before Prometheus: text by default, protobuf when asked, gzip when allowed.
    let (content_type, encoding, text) = get(&metrics, &[]);
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!(encoding, None);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains(&format!("# TYPE {HISTOGRAM} summary\n")), "{text}");
    assert!(text.contains(&format!("{HISTOGRAM}{{route=\"/pay\",service=\"checkout\",quantile=\"0.99\"}} ")), "{text}");
    assert!(text.contains(&format!("{HISTOGRAM}_count{{route=\"/pay\",service=\"checkout\"}} {samples}\n")), "{text}");
    let (_, encoding, zipped) = get(&metrics, &[("Accept-Encoding", "gzip")]);
    assert_eq!(encoding.as_deref(), Some("gzip"));
    let unzipped = String::from_utf8(gunzip(&zipped)).unwrap();
    // Self-metrics (merge time) move between renders; the rollups do not.
    let rollups = |t: &str| t.lines().filter(|l| !l.contains("shoal_collector_")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(rollups(&unzipped), rollups(&text));
    let (content_type, encoding, protobuf) = get(&metrics, &[("Accept", PROTOBUF_ACCEPT)]);
    assert_eq!(content_type.as_deref(), Some(scrape::PROTOBUF_CONTENT_TYPE));
    assert_eq!(encoding, None);
    let (_, encoding, protobuf_zipped) = get(&metrics, &[("Accept", PROTOBUF_ACCEPT), ("Accept-Encoding", "gzip, deflate")]);
    assert_eq!(encoding.as_deref(), Some("gzip"));
    let families = scrape::decode_delimited(&gunzip(&protobuf_zipped)).unwrap();
    let family = families.iter().find(|f| f.name() == HISTOGRAM).unwrap();
    assert_eq!(family.r#type(), MetricType::Histogram);
    assert_eq!(family.help(), "Payment latency. (unit: seconds)");
    let h = family.metric[0].histogram.as_ref().unwrap();
    assert_eq!((h.sample_count(), h.sample_sum(), h.schema()), (samples, sum, native.schema));
    eprintln!(
        "/metrics bytes: text {} (gzip {}), protobuf {} (gzip {}); {} buckets",
        text.len(),
        zipped.len(),
        protobuf.len(),
        protobuf_zipped.len(),
        expected_buckets(&native).len()
    );

    let prom = prometheus_scraping(collector.http_addr());
    let count = samples as f64;
    let result = prom.query_until(HISTOGRAM, |r| r["histogram"][1]["count"].as_str().map(|c| c.parse::<f64>().unwrap()) == Some(count));
    assert_eq!(result["metric"]["service"], "checkout");
    assert_eq!(result["metric"]["route"], "/pay");
    assert_eq!(result["metric"]["job"], "shoal");
    let stored = &result["histogram"][1];
    assert_eq!(number(&stored["sum"]), sum, "sum exact");
    let got: Vec<(u64, f64, f64, f64)> = stored["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b[0].as_u64().unwrap(), number(&b[1]), number(&b[2]), number(&b[3])))
        .collect();
    let want = expected_buckets(&native);
    assert_eq!(got.len(), want.len(), "buckets: prometheus {got:?}\nsketch {want:?}");
    let mut worst_bound = 0f64;
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.0, g.3), (w.0, w.3 as f64), "boundary rule and count: prometheus {g:?}, sketch {w:?}");
        // Prometheus computes bounds from its own table (Go), these with powi:
        // the same bucket index, within a few ulps.
        for (a, b) in [(g.1, w.1), (g.2, w.2)] {
            let off = if a == b { 0.0 } else { ((a - b) / b).abs() };
            worst_bound = worst_bound.max(off);
            assert!(off < 1e-12, "bound {a} vs {b}: prometheus {g:?}, sketch {w:?}");
        }
    }
    assert_eq!(got.iter().map(|b| b.3).sum::<f64>(), count, "every sample in a bucket");
    let p99 = prom.query_until(&format!("histogram_quantile(0.99, {HISTOGRAM})"), |_| true)["value"][1].clone();
    let p99 = number(&p99);
    let error = p99 / own_p99 - 1.0;
    eprintln!(
        "{} buckets equal (bounds within {worst_bound:.1e}); histogram_quantile(0.99) = {p99}, collector p99 = {own_p99}, {:+.3}%",
        got.len(),
        error * 100.0
    );
    assert!(error.abs() <= 0.01, "prometheus p99 {p99} vs collector {own_p99}");

    // Counters and gauges arrive typed, with their values.
    let total = prom.query_until("scrape_payments_total", |_| true);
    assert_eq!(number(&total["value"][1]), 2.0 * (1000 + 1001 + 1002 + 1003) as f64);
    let depth = prom.query_until("scrape_queue_depth", |_| true);
    assert_eq!(number(&depth["value"][1]), 4.0 * 2.5);
    // No summary series were ingested: the protobuf answer has no quantiles.
    assert!(prom.query(&format!("{{__name__=~\"{HISTOGRAM}_.*\"}}"), None).is_empty());
    assert!(prom.query(&format!("{HISTOGRAM}{{quantile!=\"\"}}"), None).is_empty());
    // The scrape itself is healthy.
    let up = prom.query_until("up{job=\"shoal\"}", |_| true);
    assert_eq!(number(&up["value"][1]), 1.0);
    let metadata =
        ureq::get(format!("{}/api/v1/metadata", prom.base)).query("metric", HISTOGRAM).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(metadata.contains("\"type\":\"histogram\""), "{metadata}");
    drop(prom);
    collector.shutdown().unwrap();
}

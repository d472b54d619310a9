//! One bad series must never stop the others of its process, and a big
//! process must degrade series by series, never to zero.
//!
//! Real collectors on 127.0.0.1 (ephemeral ports), real SDK instances and a
//! raw protocol client (what a non-Rust or older client could send).

mod common;

use common::{sample, scrape, start_collector, wait_for};
use prost::Message;
use shoal_proto as pb;
use std::time::Duration;

fn shoal_to(url: &str) -> shoal::Shoal {
    shoal::Shoal::builder()
        .service("poison")
        .collector(url)
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[test]
fn the_sdk_refuses_bad_series_locally_and_the_healthy_counter_arrives_exactly() {
    let collector = start_collector(None, |_| {});
    let shoal = shoal_to(&collector.grpc_url());
    let big = "v".repeat(2000);
    let long_name = "n".repeat(300);
    metrics::with_local_recorder(&shoal, || {
        for i in 0..67_000u64 {
            metrics::counter!("healthy_total").increment(1);
            if i % 1000 == 0 {
                metrics::gauge!("x", "big" => big.clone()).set(1.0);
                metrics::counter!(long_name.clone()).increment(1);
                metrics::counter!("conflict").increment(1);
                metrics::gauge!("conflict").set(2.0);
                metrics::histogram!("bad_key", "__reserved" => "1").record(1.0);
                // The very key of one of the SDK's own series.
                metrics::gauge!("shoal_series", "kind" => "gauge").set(1e9);
            }
        }
    });
    shoal.flush().unwrap();
    let text = scrape(&collector);
    assert_eq!(sample(&text, r#"healthy_total{service="poison"}"#), Some(67_000.0), "{text}");
    assert_eq!(sample(&text, r#"conflict{service="poison"}"#), Some(67.0), "the first kind registered wins");
    assert!(!text.contains("big=") && !text.contains(&long_name) && !text.contains("bad_key"), "refused series never sent");
    // The SDK counts each refusal with its reason...
    let local = shoal.render_prometheus();
    for reason in ["label_value_too_long", "name_too_long", "kind_conflict", "invalid_label_key", "reserved_name"] {
        let n = sample(&local, &format!(r#"shoal_rejected_series_total{{reason="{reason}"}}"#)).unwrap();
        assert!(n >= 1.0, "{reason}: {n}\n{local}");
    }
    assert_eq!(sample(&local, r#"shoal_rejected_updates_total{kind="counter"}"#), Some(67.0), "the long name's increments");
    assert_eq!(sample(&local, r#"shoal_rejected_updates_total{kind="histogram"}"#), Some(67.0));
    // ...and nothing was dropped or refused on the way.
    assert_eq!(sample(&local, r#"shoal_flush_values_dropped_total{reason="refused"}"#), Some(0.0));
    assert_eq!(sample(&local, r#"shoal_flush_values_dropped_total{reason="rejected"}"#), Some(0.0));
    assert_eq!(sample(&text, r#"shoal_collector_batches_rejected_total{reason="invalid_field"}"#), Some(0.0));
    // ...and the collector shows the SDK's own counts too: they arrive as
    // ordinary series of the instance, so a fleet's own losses are visible.
    for reason in ["label_value_too_long", "name_too_long", "kind_conflict", "invalid_label_key", "reserved_name"] {
        let series = format!(r#"shoal_rejected_series_total{{reason="{reason}"}}"#);
        let at_collector = format!(r#"shoal_rejected_series_total{{reason="{reason}",service="poison"}}"#);
        assert_eq!(sample(&text, &at_collector), sample(&local, &series), "{reason}: {text}");
    }
    assert_eq!(sample(&text, r#"shoal_rejected_updates_total{kind="counter",service="poison"}"#), Some(67.0), "{text}");
    // The application's "shoal_series" was refused: the collector holds the SDK's own count.
    let own_gauges = sample(&local, r#"shoal_series{kind="gauge"}"#);
    assert!(own_gauges.is_some_and(|n| n < 1e9), "{local}");
    assert_eq!(sample(&text, r#"shoal_series{kind="gauge",service="poison"}"#), own_gauges, "{text}");
    shoal.shutdown().unwrap();
    collector.shutdown().unwrap();
}

fn label(k: &str, v: &str) -> pb::Label {
    pb::Label { key: k.into(), value: v.into() }
}

#[test]
fn the_collector_refuses_bad_series_one_by_one_and_merges_the_rest() {
    let collector = start_collector(None, |_| {});
    let url = collector.grpc_url();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut client = runtime.block_on(pb::ingest_client::IngestClient::connect(url)).unwrap();
    let definitions = vec![
        pb::SeriesDefinition { r#ref: 1, name: "healthy_total".into(), labels: vec![], ..Default::default() },
        pb::SeriesDefinition { r#ref: 2, name: "x".into(), labels: vec![label("big", &"v".repeat(2000))], ..Default::default() },
        pb::SeriesDefinition { r#ref: 3, name: "n".repeat(300), labels: vec![], ..Default::default() },
        pb::SeriesDefinition { r#ref: 4, name: "healthy_total".into(), labels: vec![label("as", "gauge")], ..Default::default() },
        pb::SeriesDefinition { r#ref: 5, name: "h".into(), labels: vec![], ..Default::default() },
        pb::SeriesDefinition { r#ref: 6, name: "g".into(), labels: vec![], ..Default::default() },
    ];
    let request = |sequence: u64, definitions: Vec<pb::SeriesDefinition>| pb::FlushRequest {
        instance_id: "raw-client".into(),
        sequence,
        definitions,
        counters: vec![
            pb::CounterDelta { r#ref: 1, delta: 1000 },
            pb::CounterDelta { r#ref: 2, delta: 7 },
            pb::CounterDelta { r#ref: 3, delta: 5 },
        ],
        gauges: vec![pb::GaugeValue { r#ref: 4, value: 1.0 }, pb::GaugeValue { r#ref: 6, value: f64::INFINITY }],
        histograms: vec![pb::HistogramDelta { r#ref: 5, sketch: Some(pb::Sketch { scale: 99, zero_count: 4, ..Default::default() }) }],
        ..Default::default()
    };
    let response = runtime.block_on(client.flush(request(1, definitions))).expect("merged, not refused whole").into_inner();
    assert_eq!(response.acknowledged_sequence, 1);
    let mut reasons: Vec<(u32, String)> = response.rejected.iter().map(|r| (r.r#ref, r.reason.clone())).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            (2, "invalid_series".to_string()),
            (3, "invalid_series".to_string()),
            (4, "kind_conflict".to_string()),
            (5, "invalid_sketch".to_string()),
            (6, "invalid_value".to_string()),
        ]
    );
    // The same refs again, without definitions: still refused one by one, never "unknown".
    let response = runtime.block_on(client.flush(request(2, vec![]))).unwrap().into_inner();
    assert!(response.unknown_refs.is_empty());
    assert_eq!(response.rejected.len(), 5);
    let text = scrape(&collector);
    assert_eq!(sample(&text, "healthy_total"), Some(2000.0), "{text}");
    for (reason, series) in [("invalid_series", 4.0), ("kind_conflict", 2.0), ("invalid_sketch", 2.0), ("invalid_value", 2.0)] {
        assert_eq!(sample(&text, &format!(r#"shoal_collector_series_rejected_total{{reason="{reason}"}}"#)), Some(series), "{reason}");
    }
    assert_eq!(sample(&text, r#"shoal_collector_values_rejected_total{reason="invalid_series"}"#), Some(24.0));
    assert_eq!(sample(&text, r#"shoal_collector_values_rejected_total{reason="invalid_sketch"}"#), Some(8.0));
    assert_eq!(sample(&text, r#"shoal_collector_batches_rejected_total{reason="invalid_field"}"#), Some(0.0));

    // Messages refused before the handler are counted too: one too large, one undecodable.
    let huge = pb::FlushRequest {
        instance_id: "raw-client".into(),
        sequence: 3,
        definitions: (0..300_000)
            .map(|r| pb::SeriesDefinition { r#ref: r, name: format!("series_{r:060}"), labels: vec![], ..Default::default() })
            .collect(),
        ..Default::default()
    };
    assert!(huge.encoded_len() > shoal_proto::limits::MAX_BATCH_BYTES);
    let status = runtime.block_on(client.flush(huge)).unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    let text = wait_for(Duration::from_secs(5), || {
        let t = scrape(&collector);
        (sample(&t, r#"shoal_collector_batches_rejected_total{reason="too_large"}"#) == Some(1.0)).then_some(t)
    });
    assert!(text.is_some(), "too_large counted");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(collector.grpc_url()).unwrap().connect().await.unwrap();
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.unwrap();
        let path = http_path("/shoal.v1.Ingest/Flush");
        // A field 1 claiming a 100-byte string in a 3-byte message.
        let garbage = bytes_message(vec![0x0a, 100, 1]);
        let r = grpc.unary::<_, pb::FlushResponse, _>(tonic::Request::new(garbage), path, RawCodec).await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Internal);
    });
    let counted = wait_for(Duration::from_secs(5), || {
        (sample(&scrape(&collector), r#"shoal_collector_batches_rejected_total{reason="undecodable"}"#) == Some(1.0)).then_some(())
    });
    assert!(counted.is_some(), "undecodable counted");
    collector.shutdown().unwrap();
}

fn http_path(p: &'static str) -> tonic::codegen::http::uri::PathAndQuery {
    tonic::codegen::http::uri::PathAndQuery::from_static(p)
}

/// Raw bytes sent as a gRPC message body, bypassing prost's encoder.
struct RawBytes(Vec<u8>);

fn bytes_message(b: Vec<u8>) -> RawBytes {
    RawBytes(b)
}

/// Encodes [`RawBytes`] as they are, decodes a `FlushResponse` with prost.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = RawBytes;
    type Decode = pb::FlushResponse;
    type Encoder = RawEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::FlushResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = RawBytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: RawBytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item.0);
        Ok(())
    }
}

/// One process with `names * per_name` counter series (40-byte label values).
fn big_process(url: &str, names: usize, per_name: usize) -> (shoal::Shoal, u64) {
    let shoal = shoal::Shoal::builder()
        .service("big")
        .collector(url)
        .flush_interval(Duration::from_secs(3600))
        .shutdown_timeout(Duration::from_secs(300))
        // Exactly the process's million series (the own series would count
        // against the limits and the merged totals).
        .send_own_metrics(false)
        .build()
        .unwrap();
    let mut total = 0u64;
    for n in 0..names {
        let name = format!("big_{n}_total");
        for i in 0..per_name {
            let value = format!("{i:040}");
            let c = shoal.counter(&name, &[("id", value.as_str())]);
            c.increment(i as u64 % 7 + 1);
            total += i as u64 % 7 + 1;
        }
    }
    (shoal, total)
}

#[test]
fn a_million_series_arrive_exactly_in_several_batches() {
    let collector = start_collector(None, |c| {
        c.max_series_per_instance = 2_000_000;
        c.max_series_per_metric = 2_000_000;
        c.max_series_total = 4_000_000;
    });
    let (shoal, total) = big_process(&collector.grpc_url(), 100, 10_000);
    let started = std::time::Instant::now();
    shoal.flush().unwrap();
    let elapsed = started.elapsed();
    let stats = shoal.flusher_stats();
    let batches = stats.batches_acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("1,000,000 series: {batches} batches acknowledged in {elapsed:?}");
    assert!(batches >= 10, "split into several batches, each acknowledged: {batches}");
    assert_eq!(stats.values_acknowledged.load(std::sync::atomic::Ordering::Relaxed), total);
    let s = collector.shared().stats.clone();
    assert_eq!(s.merged.values(), total, "every increment merged, exactly");
    assert_eq!(s.merged.series_updates(), 1_000_000);
    assert_eq!(collector.shared().aggregator.lock().series_count(), 1_000_000);
    shoal.shutdown().unwrap();
    collector.shutdown().unwrap();
}

#[test]
fn with_default_limits_the_limits_worth_arrives_and_the_rest_is_refused_per_series() {
    let collector = start_collector(None, |_| {});
    let limit = collector.shared().aggregator.lock().config().max_series_per_instance;
    let (shoal, total) = big_process(&collector.grpc_url(), 100, 10_000);
    shoal.flush().unwrap();
    let s = collector.shared().stats.clone();
    assert_eq!(s.merged.series_updates() as usize, limit, "the limit's worth arrives");
    let refused = s.rejected_flow(shoal_collector::stats::Rejection::SeriesLimitInstance);
    assert_eq!(refused.series_updates() as usize, 1_000_000 - limit, "the rest refused one by one");
    assert_eq!(s.merged.values() + refused.values(), total, "every value merged or counted as refused");
    let stats = shoal.flusher_stats();
    assert_eq!(stats.values_dropped(shoal::DropReason::Rejected), refused.values(), "the SDK counts the same refusals");
    assert_eq!(stats.values_dropped(shoal::DropReason::Refused), 0, "no batch refused whole");
    shoal.shutdown().unwrap();
    collector.shutdown().unwrap();
}

//! What TLS and tokens cost on ingest, in the same run: series-updates per
//! second merged by an embedded collector over loopback gRPC, 16 senders on
//! kept connections (a fleet's steady state), plain vs TLS vs TLS + bearer
//! token; and new connections per second (TCP vs TCP + TLS handshake, one
//! small batch each: what a fleet restarting at once costs).
//!
//! Run: `cargo bench --bench tls_ingest`. Criterion prints elements/s (one
//! element is one series-update, or one connection); compare the lines of
//! one run as ratios.

// The bench uses the CA and server certificate; the tests use the rest.
#[allow(dead_code)]
#[path = "../tests/support/pki.rs"]
mod pki;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shoal_collector::{Collector, Config};
use shoal_proto as pb;
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const SERIES: u32 = 1000;
const SENDERS: usize = 16;
const TOKEN: &str = "bench-token-0123456789";

fn batch(instance: &str) -> pb::FlushRequest {
    pb::FlushRequest {
        instance_id: instance.into(),
        instance_labels: vec![pb::Label { key: "service".into(), value: "bench".into() }],
        sequence: 1,
        definitions: (1..=SERIES)
            .map(|r| pb::SeriesDefinition {
                r#ref: r,
                name: "http_requests_total".into(),
                labels: vec![pb::Label { key: "route".into(), value: format!("/r/{r}") }],
                ..Default::default()
            })
            .collect(),
        counters: (1..=SERIES).map(|r| pb::CounterDelta { r#ref: r, delta: 3 }).collect(),
        ..Default::default()
    }
}

struct Setup {
    name: &'static str,
    tls: bool,
    token: bool,
}

const SETUPS: [Setup; 3] = [
    Setup { name: "plain", tls: false, token: false },
    Setup { name: "tls", tls: true, token: false },
    Setup { name: "tls_token", tls: true, token: true },
];

fn collector(setup: &Setup, pki: &pki::Pki, dir: &std::path::Path) -> Collector {
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    Collector::start(Config {
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: setup.tls.then(|| pki.server_cert.clone()),
        tls_key: setup.tls.then(|| pki.server_key.clone()),
        auth_tokens_file: setup.token.then_some(tokens),
        ..Config::default()
    })
    .unwrap()
}

async fn channel(collector: &Collector, ca: &[u8]) -> Channel {
    let endpoint = Endpoint::from_shared(collector.grpc_url()).unwrap();
    let endpoint = if collector.grpc_url().starts_with("https") {
        endpoint.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost")).unwrap()
    } else {
        endpoint
    };
    endpoint.connect().await.unwrap()
}

fn request(batch: pb::FlushRequest, token: bool) -> tonic::Request<pb::FlushRequest> {
    let mut r = tonic::Request::new(batch);
    if token {
        r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    }
    r
}

fn steady_state(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("shoal-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = pki::Pki::generate(&dir);
    let ca = std::fs::read(&pki.ca).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut g = c.benchmark_group("tls_ingest_kept_connections");
    g.throughput(Throughput::Elements(SERIES as u64));
    for setup in &SETUPS {
        let collector = collector(setup, &pki, &dir);
        let mut clients = Vec::new();
        let mut batches = Vec::new();
        for i in 0..SENDERS {
            let mut client = pb::ingest_client::IngestClient::new(runtime.block_on(channel(&collector, &ca)));
            let mut b = batch(&format!("{}-{i}", setup.name));
            runtime.block_on(client.flush(request(b.clone(), setup.token))).unwrap();
            b.definitions.clear();
            clients.push(client);
            batches.push(b);
        }
        g.bench_function(setup.name, |bench| {
            bench.iter_custom(|iters| {
                let start = Instant::now();
                runtime.block_on(async {
                    let mut remaining = iters;
                    while remaining > 0 {
                        let n = remaining.min(SENDERS as u64) as usize;
                        let mut sends = tokio::task::JoinSet::new();
                        for (c, b) in clients.iter().zip(batches.iter_mut()).take(n) {
                            b.sequence += 1;
                            let (mut c, r) = (c.clone(), request(b.clone(), setup.token));
                            sends.spawn(async move { c.flush(r).await.unwrap() });
                        }
                        while let Some(r) = sends.join_next().await {
                            r.unwrap();
                        }
                        remaining -= n as u64;
                    }
                });
                start.elapsed()
            })
        });
        drop(clients);
        collector.shutdown().unwrap();
    }
    g.finish();

    // New connections: connect (and handshake), send one 1-series batch.
    let mut g = c.benchmark_group("tls_ingest_new_connections");
    g.throughput(Throughput::Elements(1));
    for setup in &SETUPS[..2] {
        let collector = collector(setup, &pki, &dir);
        let mut n = 0u64;
        g.bench_function(setup.name, |bench| {
            bench.iter(|| {
                n += 1;
                runtime.block_on(async {
                    let mut client = pb::ingest_client::IngestClient::new(channel(&collector, &ca).await);
                    let mut b = batch(&format!("conn-{n}"));
                    b.definitions.truncate(1);
                    b.counters.truncate(1);
                    client.flush(request(b, setup.token)).await.unwrap();
                })
            })
        });
        collector.shutdown().unwrap();
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3)).sample_size(20)
}

criterion_group! { name = benches; config = config(); targets = steady_state }
criterion_main!(benches);

//! TLS, bearer tokens and tenants, end to end on 127.0.0.1 with real SDK
//! instances, certificates generated at test time (rcgen), and for the
//! SIGHUP case the daemon itself in a child process.
//!
//! Every refusal must be clear (a status the SDK shows), counted by reason
//! on the collector, merge nothing, and leave the collector healthy.

mod common;

use common::pki::Pki;
use common::*;
use shoal_collector::security::tokens::AuthRefusal;
use shoal_collector::Collector;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN_A: &str = "tok-A.0123456789abcdef";
const TOKEN_B: &str = "tok-B.fedcba9876543210";
const TOKEN_EDGE: &str = "tok-edge+forward/1==";

fn tokens_file(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    path
}

/// A collector with TLS (and optionally mutual TLS) and ingest tokens.
fn secure_collector(pki: &Pki, tokens: Option<&Path>, client_ca: bool, http_tokens: Option<&Path>) -> Collector {
    start_collector(None, |c| {
        c.tls_cert = Some(pki.server_cert.clone());
        c.tls_key = Some(pki.server_key.clone());
        c.tls_client_ca = client_ca.then(|| pki.ca.clone());
        c.auth_tokens_file = tokens.map(Path::to_path_buf);
        c.http_auth_tokens_file = http_tokens.map(Path::to_path_buf);
    })
}

/// An HTTPS agent trusting `ca`.
fn agent(ca: &Path) -> ureq::Agent {
    let pem = std::fs::read(ca).unwrap();
    let cert = ureq::tls::Certificate::from_pem(&pem).unwrap().to_owned();
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert]))).build();
    ureq::Agent::config_builder().tls_config(tls).http_status_as_error(false).build().into()
}

/// GET over HTTPS: status and body.
fn get(agent: &ureq::Agent, url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = agent.get(url);
    if let Some(t) = token {
        request = request.header("authorization", &format!("Bearer {t}"));
    }
    let mut response = request.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
}

/// `/metrics` of a TLS collector (with the HTTP token when it needs one).
fn scrape_tls(collector: &Collector, pki: &Pki, token: Option<&str>) -> String {
    let (status, body) = get(&agent(&pki.ca), &format!("{}/metrics", collector.http_url()), token);
    assert_eq!(status, 200, "{body}");
    body
}

fn sdk(url: &str, configure: impl FnOnce(shoal::ShoalBuilder) -> shoal::ShoalBuilder) -> shoal::Shoal {
    configure(
        shoal::Shoal::builder()
            .service("secure")
            .collector(url)
            .flush_interval(Duration::from_secs(3600))
            .shutdown_timeout(Duration::from_secs(3))
            .send_own_metrics(false),
    )
    .build()
    .unwrap()
}

fn refused_count(collector: &Collector, reason: AuthRefusal) -> u64 {
    collector.shared().stats.security.ingest_refused(reason)
}

fn handshake_failures(collector: &Collector, reason: &str) -> u64 {
    collector.shared().stats.security.handshake_failures(reason)
}

#[test]
fn right_ca_and_token_deliver_exact_totals_over_tls() {
    let dir = TempDir::new("tls-ok");
    let pki = Pki::generate(&dir.0);
    let tokens = tokens_file(&dir.0, &format!("# services\n{TOKEN_A}\n"));
    let http_tokens = dir.0.join("http-tokens");
    std::fs::write(&http_tokens, "scrape-token\n").unwrap();
    let collector = secure_collector(&pki, Some(&tokens), false, Some(&http_tokens));
    assert!(collector.grpc_url().starts_with("https://127.0.0.1:"), "{}", collector.grpc_url());

    let shoal = sdk(&collector.grpc_url(), |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_A));
    let counter = shoal.counter("tls_requests_total", &[("route", "/a")]);
    let histogram = shoal.histogram("tls_latency_seconds", &[]);
    for i in 0..10_000u64 {
        counter.increment(1 + i % 3);
        histogram.record(0.001 * (1 + i % 100) as f64);
    }
    shoal.flush().unwrap();
    let expected: u64 = (0..10_000u64).map(|i| 1 + i % 3).sum();

    // The environment route: SHOAL_* variables only.
    let env = [
        ("SHOAL_COLLECTOR", collector.grpc_url()),
        ("SHOAL_AUTH_TOKEN", TOKEN_A.to_string()),
        ("SHOAL_SERVICE", "from-env".to_string()),
        ("SHOAL_TLS_CA_FILE", pki.ca.display().to_string()),
        ("SHOAL_FLUSH_INTERVAL", "1h".to_string()),
    ];
    let from_env = shoal::Shoal::builder()
        .send_own_metrics(false)
        .from_env_with(|name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
        .build()
        .unwrap();
    from_env.counter("tls_env_total", &[]).increment(7);
    from_env.flush().unwrap();

    let text = scrape_tls(&collector, &pki, Some("scrape-token"));
    assert_eq!(sample(&text, r#"tls_requests_total{route="/a",service="secure"}"#), Some(expected as f64), "{text}");
    assert_eq!(sample(&text, r#"tls_latency_seconds_count{service="secure"}"#), Some(10_000.0));
    assert_eq!(sample(&text, r#"tls_env_total{service="from-env"}"#), Some(7.0));
    assert_eq!(shoal.flusher_stats().batches_unauthenticated.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(sample(&text, "shoal_collector_tls_handshakes_total").unwrap() >= 3.0, "{text}");

    // HTTP tokens: /metrics and the API need one, the probes never do.
    let a = agent(&pki.ca);
    let (status, body) = get(&a, &format!("{}/metrics", collector.http_url()), None);
    assert_eq!(status, 401, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].as_str().unwrap().contains("bearer"), "{body}");
    assert_eq!(get(&a, &format!("{}/api/v1/series", collector.http_url()), Some("wrong")).0, 401);
    assert_eq!(get(&a, &format!("{}/healthz", collector.http_url()), None).0, 200);
    assert_eq!(get(&a, &format!("{}/readyz", collector.http_url()), None).0, 200);
    // The page's files hold no data: open; what it reads needs the token.
    let (status, page) = get(&a, &format!("{}/", collector.http_url()), None);
    assert_eq!(status, 200);
    assert!(page.contains("app.js"));
    assert_eq!(get(&a, &format!("{}/api/v1/instances", collector.http_url()), Some("scrape-token")).0, 200);
    assert_eq!(collector.shared().stats.security.http_refused(AuthRefusal::MissingToken), 1);
    assert_eq!(collector.shared().stats.security.http_refused(AuthRefusal::UnknownToken), 1);
    // Plain HTTP to the TLS port: a 400 that says https, counted.
    let (status, body) = {
        let mut response = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .get(&format!("http://{}/metrics", collector.http_addr()))
            .call()
            .unwrap();
        (response.status().as_u16(), response.body_mut().read_to_string().unwrap())
    };
    assert_eq!(status, 400);
    assert!(body.contains("https://"), "{body}");
    assert!(wait_for(Duration::from_secs(5), || (handshake_failures(&collector, "plaintext") >= 1).then_some(())).is_some());
    drop((shoal, from_env));
    collector.shutdown().unwrap();
}

/// Sends one counter increment from a fresh SDK configured by `configure`
/// and checks the flush is refused and the SDK keeps the value.
fn refused_flush(url: &str, configure: impl FnOnce(shoal::ShoalBuilder) -> shoal::ShoalBuilder) -> shoal::Shoal {
    let shoal = sdk(url, configure);
    shoal.counter("tls_refused_total", &[]).increment(5);
    assert!(shoal.flush().is_err(), "the flush must fail");
    let stats = shoal.flusher_stats();
    assert_eq!(stats.values_acknowledged.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(stats.batches_failed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    shoal
}

#[test]
fn every_wrong_credential_is_refused_clearly_counted_and_merges_nothing() {
    let dir = TempDir::new("tls-refusals");
    let pki = Pki::generate(&dir.0);
    let tokens = tokens_file(&dir.0, &format!("{TOKEN_A}\n"));
    let collector = secure_collector(&pki, Some(&tokens), false, None);
    let https = collector.grpc_url();
    let plain = format!("http://{}", collector.grpc_addr());
    let unauthenticated = |s: &shoal::Shoal| s.flusher_stats().batches_unauthenticated.load(std::sync::atomic::Ordering::Relaxed);

    // Plaintext client to the TLS port: told UNAUTHENTICATED "requires TLS".
    let s = refused_flush(&plain, |b| b.auth_token(TOKEN_A));
    assert!(unauthenticated(&s) >= 1);
    assert!(handshake_failures(&collector, "plaintext") >= 1);
    // A client that trusts another CA refuses our certificate.
    let _s = refused_flush(&https, |b| b.tls_ca_file(&pki.other_ca).auth_token(TOKEN_A));
    assert!(
        wait_for(Duration::from_secs(5), || (handshake_failures(&collector, "refused_by_client") >= 1).then_some(())).is_some(),
        "the client's alert is counted"
    );
    // No token, and a wrong one: UNAUTHENTICATED before decoding, by reason.
    let s = refused_flush(&https, |b| b.tls_ca_file(&pki.ca));
    assert!(unauthenticated(&s) >= 1);
    assert!(refused_count(&collector, AuthRefusal::MissingToken) >= 1);
    let s = refused_flush(&https, |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_B));
    assert!(unauthenticated(&s) >= 1);
    assert!(refused_count(&collector, AuthRefusal::UnknownToken) >= 1);

    // Nothing of them merged; the collector is healthy and serves the right client.
    let text = scrape_tls(&collector, &pki, None);
    assert_eq!(sample(&text, r#"shoal_collector_batches_received_total"#), Some(0.0), "{text}");
    assert!(!text.contains("tls_refused_total{"), "{text}");
    assert!(sample(&text, r#"shoal_collector_auth_refused_total{listener="grpc",reason="missing_token"}"#).unwrap() >= 1.0);
    assert!(sample(&text, r#"shoal_collector_tls_handshake_failures_total{reason="plaintext"}"#).unwrap() >= 1.0);
    let good = sdk(&https, |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_A));
    good.counter("tls_good_total", &[]).increment(3);
    good.flush().unwrap();
    assert_eq!(sample(&scrape_tls(&collector, &pki, None), r#"tls_good_total{service="secure"}"#), Some(3.0));
    collector.shutdown().unwrap();

    // An expired server certificate: the client refuses it.
    let expired = start_collector(None, |c| {
        c.tls_cert = Some(pki.expired_server_cert.clone());
        c.tls_key = Some(pki.expired_server_key.clone());
    });
    let _s = refused_flush(&expired.grpc_url(), |b| b.tls_ca_file(&pki.ca));
    assert!(
        wait_for(Duration::from_secs(5), || (handshake_failures(&expired, "refused_by_client") >= 1).then_some(())).is_some(),
        "the client refuses an expired certificate"
    );
    assert_eq!(expired.shared().stats.batches_received.load(std::sync::atomic::Ordering::Relaxed), 0);
    expired.shutdown().unwrap();
}

#[test]
fn mutual_tls_takes_only_certificates_from_its_client_ca() {
    let dir = TempDir::new("mtls");
    let pki = Pki::generate(&dir.0);
    let collector = secure_collector(&pki, None, true, None);
    let url = collector.grpc_url();

    let good = sdk(&url, |b| b.tls_ca_file(&pki.ca).tls_client_cert(&pki.client_cert, &pki.client_key));
    good.counter("mtls_total", &[]).increment(11);
    good.flush().unwrap();

    let _none = refused_flush(&url, |b| b.tls_ca_file(&pki.ca));
    let _expired = refused_flush(&url, |b| b.tls_ca_file(&pki.ca).tls_client_cert(&pki.expired_client_cert, &pki.expired_client_key));
    let _stranger = refused_flush(&url, |b| b.tls_ca_file(&pki.ca).tls_client_cert(&pki.stranger_cert, &pki.stranger_key));
    let counted = |reason: &str| handshake_failures(&collector, reason);
    assert!(
        wait_for(Duration::from_secs(5), || {
            (counted("no_client_certificate") >= 1 && counted("client_certificate_expired") >= 1 && counted("bad_client_certificate") >= 1)
                .then_some(())
        })
        .is_some(),
        "each refusal counted by reason: none {}, expired {}, unknown issuer {}",
        counted("no_client_certificate"),
        counted("client_certificate_expired"),
        counted("bad_client_certificate")
    );
    let text = scrape_tls(&collector, &pki, None);
    assert_eq!(sample(&text, r#"mtls_total{service="secure"}"#), Some(11.0), "{text}");
    assert!(!text.contains("tls_refused_total{"), "{text}");
    assert_eq!(sample(&text, "shoal_collector_batches_received_total"), Some(1.0));
    collector.shutdown().unwrap();
}

#[test]
fn two_tenants_writing_the_same_metric_stay_apart() {
    let dir = TempDir::new("tenants");
    let pki = Pki::generate(&dir.0);
    let tokens = tokens_file(&dir.0, &format!("{TOKEN_A} team-a\n{TOKEN_B} team-b\n{TOKEN_EDGE}\n"));
    let collector = secure_collector(&pki, Some(&tokens), false, None);
    let url = collector.grpc_url();
    let a = sdk(&url, |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_A));
    let b = sdk(&url, |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_B));
    for _ in 0..1000 {
        a.counter("orders_total", &[("region", "eu")]).increment(1);
    }
    b.counter("orders_total", &[("region", "eu")]).increment(250);
    // Team B claims to be team A: its series stays team B's (override counted).
    b.counter("orders_total", &[("region", "us"), ("tenant", "team-a")]).increment(9);
    // A token without a tenant keeps the labels it sends (an edge collector).
    let edge = sdk(&url, |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_EDGE));
    edge.counter("orders_total", &[("region", "eu"), ("tenant", "team-c")]).increment(4);
    for s in [&a, &b, &edge] {
        s.flush().unwrap();
    }
    let text = scrape_tls(&collector, &pki, None);
    assert_eq!(sample(&text, r#"orders_total{region="eu",service="secure",tenant="team-a"}"#), Some(1000.0), "{text}");
    assert_eq!(sample(&text, r#"orders_total{region="eu",service="secure",tenant="team-b"}"#), Some(250.0), "{text}");
    assert_eq!(sample(&text, r#"orders_total{region="us",service="secure",tenant="team-b"}"#), Some(9.0), "{text}");
    assert_eq!(sample(&text, r#"orders_total{region="eu",service="secure",tenant="team-c"}"#), Some(4.0), "{text}");
    assert!(!text.contains(r#"orders_total{region="us",service="secure",tenant="team-a"}"#), "{text}");
    assert_eq!(sample(&text, "shoal_collector_tenant_label_overrides_total"), Some(1.0));
    // Two tenants' instances never share an identity.
    assert_eq!(sample(&text, "shoal_collector_instances"), Some(3.0));
    collector.shutdown().unwrap();
}

#[test]
fn hostile_input_over_tls_changes_nothing_and_the_collector_keeps_serving() {
    use rand::{Rng, SeedableRng};
    use std::io::Write;
    let dir = TempDir::new("tls-hostile");
    let pki = Pki::generate(&dir.0);
    let tokens = tokens_file(&dir.0, &format!("{TOKEN_A}\n"));
    let collector = secure_collector(&pki, Some(&tokens), false, None);
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);

    // Garbage before any handshake, and truncated handshakes.
    for i in 0..40 {
        let mut tcp = std::net::TcpStream::connect(collector.grpc_addr()).unwrap();
        let mut junk: Vec<u8> = (0..rng.gen_range(1..2000)).map(|_| rng.gen()).collect();
        if i % 2 == 0 {
            junk[0] = 0x16; // looks like a TLS record, is not one
        }
        let _ = tcp.write_all(&junk);
    }
    // Raw TLS connections sending random bytes instead of HTTP/2, and
    // random gRPC messages with the right token.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&pki.ca).unwrap()))
            .domain_name("localhost");
        let channel =
            tonic::transport::Endpoint::from_shared(collector.grpc_url()).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
        let mut client = shoal_proto::ingest_client::IngestClient::new(channel);
        for _ in 0..200 {
            // Valid framing, random fields: refused or merged per series, never a crash.
            let request = shoal_proto::FlushRequest {
                instance_id: format!("hostile-{}", rng.gen_range(0..5)),
                sequence: rng.gen_range(0..4),
                definitions: vec![shoal_proto::SeriesDefinition {
                    r#ref: rng.gen_range(0..3),
                    name: ["ok_total", "bad name", "", "x{y}"][rng.gen_range(0..4)].into(),
                    ..Default::default()
                }],
                counters: vec![shoal_proto::CounterDelta { r#ref: rng.gen_range(0..3), delta: rng.gen() }],
                gauges: vec![shoal_proto::GaugeValue {
                    r#ref: rng.gen_range(0..3),
                    value: [f64::NAN, 1.0, f64::INFINITY][rng.gen_range(0..3)],
                }],
                ..Default::default()
            };
            let mut r = tonic::Request::new(request);
            if rng.gen_bool(0.7) {
                r.metadata_mut().insert("authorization", format!("Bearer {TOKEN_A}").parse().unwrap());
            }
            let _ = client.flush(r).await;
        }
    });
    // The collector is healthy: a real client's counter arrives exactly.
    let good = sdk(&collector.grpc_url(), |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_A));
    good.counter("after_hostile_total", &[]).increment(42);
    good.flush().unwrap();
    let text = scrape_tls(&collector, &pki, None);
    assert_eq!(sample(&text, r#"after_hostile_total{service="secure"}"#), Some(42.0), "{text}");
    assert!(sample(&text, r#"shoal_collector_auth_refused_total{listener="grpc",reason="missing_token"}"#).unwrap() >= 1.0);
    let failed: f64 = text
        .lines()
        .filter(|l| l.starts_with("shoal_collector_tls_handshake_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failed >= 40.0, "every junk connection counted: {failed}\n{text}");
    collector.shutdown().unwrap();
}

#[test]
fn an_edge_forwards_over_tls_with_its_token() {
    let dir = TempDir::new("tls-tiers");
    let pki = Pki::generate(&dir.0);
    let tokens = tokens_file(&dir.0, &format!("{TOKEN_EDGE}\n"));
    let global = secure_collector(&pki, Some(&tokens), false, None);
    let token_file = dir.0.join("edge-token");
    std::fs::write(&token_file, format!("{TOKEN_EDGE}\n")).unwrap();
    let edge = start_collector(None, |c| {
        c.upstream = vec![global.grpc_url()];
        c.upstream_tls_ca_file = Some(pki.ca.clone());
        c.upstream_auth_token_file = Some(token_file.clone());
        c.upstream_labels.insert("region".into(), "eu".into());
    });
    let s = sdk(&edge.grpc_url(), |b| b);
    s.counter("tiered_total", &[]).increment(123);
    s.flush().unwrap();
    edge.forward_now().unwrap();
    let text = scrape_tls(&global, &pki, None);
    assert_eq!(sample(&text, r#"tiered_total{region="eu",service="secure"}"#), Some(123.0), "{text}");
    drop(s);
    edge.shutdown().unwrap();
    global.shutdown().unwrap();
}

// ---- SIGHUP: the real daemon in a child process ----

const DAEMON_ENV: &str = "SHOAL_SECURITY_DAEMON";

/// Daemon mode: runs the collector daemon with the arguments in
/// `DAEMON_ENV` (separated by `\x1f`) until it is signalled.
#[test]
fn daemon_process_entry() {
    let Ok(args) = std::env::var(DAEMON_ENV) else { return };
    let argv = std::iter::once("shoal-collector".to_string()).chain(args.split('\x1f').map(str::to_string));
    let code = shoal_collector::daemon::run(argv);
    std::process::exit(if code == std::process::ExitCode::SUCCESS { 0 } else { 1 });
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill").args([signal, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[test]
fn a_token_removed_by_sighup_is_refused_and_its_data_waits_until_it_is_back() {
    let dir = TempDir::new("tls-sighup");
    let pki = Pki::generate(&dir.0);
    let tokens = tokens_file(&dir.0, &format!("{TOKEN_A}\n{TOKEN_B}\n"));
    let (grpc, http) = (free_addr(), free_addr());
    let args = [
        "--grpc-listen".to_string(),
        grpc.to_string(),
        "--http-listen".into(),
        http.to_string(),
        "--tls-cert".into(),
        pki.server_cert.display().to_string(),
        "--tls-key".into(),
        pki.server_key.display().to_string(),
        "--auth-tokens-file".into(),
        tokens.display().to_string(),
    ];
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "daemon_process_entry", "--nocapture", "--test-threads=1"])
        .env(DAEMON_ENV, args.join("\x1f"))
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.0.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon(child);
    let a = agent(&pki.ca);
    let metrics = || {
        let (status, body) = get(&a, &format!("https://{http}/metrics"), None);
        assert_eq!(status, 200);
        body
    };
    let up = wait_for(Duration::from_secs(20), || {
        a.get(&format!("https://{http}/healthz")).call().ok().filter(|r| r.status() == 200).map(|_| ())
    });
    assert!(up.is_some(), "daemon did not start: {}", std::fs::read_to_string(dir.0.join("daemon.log")).unwrap_or_default());

    let url = format!("https://{grpc}");
    let s = sdk(&url, |b| b.tls_ca_file(&pki.ca).auth_token(TOKEN_B));
    let counter = s.counter("sighup_total", &[]);
    counter.increment(10);
    s.flush().unwrap();
    assert_eq!(sample(&metrics(), r#"sighup_total{service="secure"}"#), Some(10.0));

    // Token B removed, SIGHUP: the next flush is refused, the data is kept.
    std::fs::write(&tokens, format!("{TOKEN_A}\n")).unwrap();
    signal(&daemon.0, "-HUP");
    let reloaded =
        wait_for(Duration::from_secs(10), || (sample(&metrics(), "shoal_collector_security_reloads_total")? >= 1.0).then_some(()));
    assert!(reloaded.is_some(), "reload not seen");
    counter.increment(5);
    assert!(s.flush().is_err());
    assert!(s.flusher_stats().batches_unauthenticated.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let text = metrics();
    assert_eq!(sample(&text, r#"sighup_total{service="secure"}"#), Some(10.0), "nothing merged while refused");
    assert!(sample(&text, r#"shoal_collector_auth_refused_total{listener="grpc",reason="unknown_token"}"#).unwrap() >= 1.0);
    let log = std::fs::read_to_string(dir.0.join("daemon.log")).unwrap();
    assert!(!log.contains(TOKEN_B) && !log.contains(TOKEN_A), "a token reached the log:\n{log}");

    // Back again: the kept increments arrive, exactly once.
    std::fs::write(&tokens, format!("{TOKEN_A}\n{TOKEN_B}\n")).unwrap();
    signal(&daemon.0, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if s.flush().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the token never worked again");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sample(&metrics(), r#"sighup_total{service="secure"}"#), Some(15.0));
    drop(s);
    signal(&daemon.0, "-TERM");
}

#[test]
fn remote_write_reaches_an_https_target_trusting_a_private_ca() {
    let dir = TempDir::new("tls-remote-write");
    let pki = Pki::generate(&dir.0);
    let a = agent(&pki.ca);
    let vm = common::ServerProcess::start_checked(
        "victoria-metrics",
        |data, addr| {
            vec![
                format!("-httpListenAddr={addr}"),
                format!("-storageDataPath={}", data.join("data").display()),
                "-search.latencyOffset=1s".into(),
                "-tls".into(),
                format!("-tlsCertFile={}", pki.server_cert.display()),
                format!("-tlsKeyFile={}", pki.server_key.display()),
            ]
        },
        "https",
        |base| a.get(&format!("{base}/health")).call().is_ok_and(|r| r.status() == 200),
    );
    let base = vm.base.clone();

    let collector = start_collector(None, |c| {
        c.interval_secs = 1;
        let mut target = shoal_collector::config::RemoteWriteConfig::new(format!("{base}/api/v1/write"));
        target.tls_ca_file = Some(pki.ca.clone());
        c.remote_write = vec![target];
    });
    let s = sdk(&collector.grpc_url(), |b| b);
    s.counter("https_pushed_total", &[]).increment(77);
    s.flush().unwrap();
    let seen = wait_for(Duration::from_secs(30), || {
        let _ = a.get(&format!("{base}/internal/force_flush")).call();
        let (_, body) = get(&a, &format!("{base}/api/v1/query?query=https_pushed_total"), None);
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok().filter(|v| *v == 77.0)
    });
    assert_eq!(seen, Some(77.0), "the counter reached VictoriaMetrics over https");
    let text = scrape(&collector);
    assert!(
        sample(&text, &format!(r#"shoal_collector_remote_write_requests_sent_total{{url="{base}/api/v1/write"}}"#)).unwrap() >= 1.0,
        "{text}"
    );
    drop(s);
    collector.shutdown().unwrap();
}

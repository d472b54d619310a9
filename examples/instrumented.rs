//! Instrumentation macros end to end: a struct of handles registered in one
//! call (`#[derive(Metrics)]`), a label family indexed by an enum
//! (`#[derive(LabelSet)]`), and timed functions (`#[timed]`), sync and async,
//! with every outcome. Prints what Prometheus would scrape.
//!
//! `cargo run --example instrumented`

use shoal::instrument::Family;
use shoal::{timed, LabelSet, Metrics};
use std::time::Duration;

#[derive(Clone, Copy, Debug, LabelSet)]
#[label(rename_all = "UPPERCASE")]
enum Method {
    Get,
    Post,
}

#[derive(Clone, Copy, Debug, LabelSet)]
#[label(key = "status")]
enum Status {
    #[label(value = "2xx")]
    Success,
    #[label(value = "4xx")]
    ClientError,
    #[label(value = "5xx")]
    ServerError,
}

#[derive(Clone, Copy, Debug, LabelSet)]
struct Route {
    method: Method,
    status: Status,
}

#[derive(Metrics)]
#[metrics(prefix = "http")]
struct HttpMetrics {
    /// Requests served, by method and status class.
    requests_total: Family<Route, shoal::Counter>,
    #[metric(unit = "seconds", description = "Time to serve a request")]
    request_duration_seconds: Family<Method, shoal::Histogram>,
    #[metric(unit = "bytes", labels(direction = "out"))]
    body_bytes_total: shoal::Counter,
}

#[derive(Debug)]
struct NotFound;

#[timed]
fn lookup(id: u32) -> Result<String, NotFound> {
    if id == 0 {
        return Err(NotFound);
    }
    Ok(format!("user-{id}"))
}

#[timed(name = "db", concurrency)]
async fn query(sql: &str) -> Result<usize, NotFound> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    if sql.is_empty() {
        return Err(NotFound);
    }
    Ok(sql.len())
}

#[timed]
fn risky(n: u32) -> u32 {
    assert!(n < 10, "too big");
    n * 2
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shoal = shoal::Shoal::builder().service("example").install()?;
    let http = HttpMetrics::register(&shoal);

    // Hot path: array index, no hash, no lock.
    http.requests_total.get(Route { method: Method::Get, status: Status::Success }).increment(3);
    http.requests_total[Route { method: Method::Post, status: Status::ServerError }].increment(1);
    http.request_duration_seconds.get(Method::Get).record(0.012);
    http.requests_total[Route { method: Method::Get, status: Status::ClientError }].increment(1);
    http.body_bytes_total.increment(1500);
    // Label values known only at run time still go through the facade.
    metrics::counter!("http_requests_by_path_total", "path" => format!("/users/{}", 7)).increment(1);

    for id in 0..4 {
        let _ = lookup(id);
    }
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {})); // the panic below is expected
    let _ = std::panic::catch_unwind(|| risky(99)); // recorded as `panic`
    std::panic::set_hook(hook);
    risky(1);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let _ = query("select 1").await;
        let _ = query("").await;
        // Dropped before it completes: recorded as `cancelled`.
        let _ = tokio::time::timeout(Duration::from_millis(1), query("select slow")).await;
    });

    for line in shoal.render_prometheus().lines() {
        let interesting = ["http_", "function_", "db_"].iter().any(|p| line.contains(p));
        if interesting && !line.contains("quantile=") {
            println!("{line}");
        }
    }
    shoal.shutdown()?;
    Ok(())
}

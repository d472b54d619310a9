//! `let _ = Shoal::builder().collector(url).install()?;` is what a user of
//! other `metrics` exporters writes: the global recorder, and its flusher,
//! must live for the rest of the process even though the handle is dropped.
//! (Its own test binary: a process has one global recorder.)

mod common;

use common::{sample, scrape, start_collector, wait_for};
use std::time::Duration;

#[test]
fn dropping_the_installed_handle_keeps_flushing() {
    let collector = start_collector(None, |_| {});
    let _ = shoal::Shoal::builder()
        .service("installed")
        .collector(collector.grpc_url())
        .flush_interval(Duration::from_millis(100))
        .install()
        .unwrap();
    for _ in 0..1000 {
        metrics::counter!("after_drop_total").increment(1);
    }
    let arrived = wait_for(Duration::from_secs(20), || {
        (sample(&scrape(&collector), r#"after_drop_total{service="installed"}"#) == Some(1000.0)).then_some(())
    });
    assert!(arrived.is_some(), "the flusher of an installed Shoal outlives its handle:\n{}", scrape(&collector));
    collector.shutdown().unwrap();
}

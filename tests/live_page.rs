//! The live page in a real browser: Debian's chromium, headless, driven over
//! the DevTools protocol (`headless_chrome`, its download feature off),
//! against a collector fed by real SDK instances. Fails, never skips, when
//! chromium is missing.
//!
//! Screenshots land in `target/live-page/` (`overview.png`,
//! `histogram.png`): look at them.

mod common;

use common::*;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The collector's interval in these tests: an instance is silent after
/// more than an interval and a half without a batch.
const INTERVAL_SECS: u64 = 5;

fn browser() -> Browser {
    let chromium = find_binary("chromium");
    let options = LaunchOptions::default_builder()
        .path(Some(chromium))
        .headless(true)
        // Containers and CI runners often lack the user namespaces the
        // sandbox needs; the page is our own, served from loopback.
        .sandbox(false)
        .window_size(Some((1400, 1100)))
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    Browser::new(options).expect("chromium starts headless")
}

/// Console errors, uncaught exceptions and failed loads the page caused.
fn watch_errors(tab: &Tab) -> Arc<Mutex<Vec<String>>> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    tab.enable_log().unwrap();
    tab.enable_runtime().unwrap();
    let sink = errors.clone();
    tab.add_event_listener(Arc::new(move |event: &Event| {
        let seen = match event {
            Event::LogEntryAdded(e) => {
                let text = format!("{:?}", e.params.entry);
                text.contains("level: Error").then_some(text)
            }
            Event::RuntimeExceptionThrown(e) => Some(format!("{:?}", e.params.exception_details)),
            Event::RuntimeConsoleAPICalled(e) => {
                let text = format!("{:?}", e.params);
                text.contains("Type: Error").then_some(text)
            }
            _ => None,
        };
        if let Some(s) = seen {
            sink.lock().unwrap().push(s);
        }
    }))
    .unwrap();
    errors
}

/// Evaluates `expression` in the page, as JSON.
fn eval(tab: &Tab, expression: &str) -> Value {
    let wrapped = format!("JSON.stringify((() => {{ {expression} }})())");
    let result = tab.evaluate(&wrapped, false).unwrap_or_else(|e| panic!("evaluating {expression}: {e}"));
    let text = result.value.and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| "null".into());
    serde_json::from_str(&text).unwrap()
}

/// Polls `expression` (a JS function body returning JSON) until `done`.
fn wait_in_page(tab: &Tab, timeout: Duration, expression: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let v = eval(tab, expression);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "page never got there: {expression} is {v}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The page of `base` in a headless chromium.
struct Page {
    _browser: Browser,
    tab: Arc<Tab>,
    /// Console errors, uncaught exceptions and failed loads so far.
    errors: Arc<Mutex<Vec<String>>>,
    /// `after_refresh` (a JS expression) once the first refresh had drawn.
    first: Value,
    /// From navigation to that first drawing.
    first_drawn_in: Duration,
}

fn open_page(base: &str, timeout: Duration, after_refresh: &str) -> Page {
    let browser = browser();
    let tab = browser.new_tab().unwrap();
    let errors = watch_errors(&tab);
    let started = Instant::now();
    tab.navigate_to(&format!("{base}/")).unwrap().wait_until_navigated().unwrap();
    let first = wait_in_page(&tab, timeout, &format!("return document.body.dataset.refreshed ? {after_refresh} : null"), |v| !v.is_null());
    Page { _browser: browser, tab, errors, first, first_drawn_in: started.elapsed() }
}

fn screenshots_dir() -> PathBuf {
    // target/<profile>/deps/live_page-<hash> -> target/live-page
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let dir = target.join("live-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn get_json(url: &str) -> Value {
    serde_json::from_str(&http_get(url)).unwrap()
}

fn sdk(collector: &shoal_collector::Collector, service: &str, instance: &str) -> shoal::Shoal {
    shoal::Shoal::builder()
        .service(service)
        .label("instance", instance)
        .collector(collector.grpc_url())
        .flush_interval(Duration::from_millis(500))
        .build()
        .unwrap()
}

#[test]
fn the_live_page_shows_the_fleet_silent_instances_and_exact_histogram_charts() {
    let collector = start_collector(None, |c| c.interval_secs = INTERVAL_SECS);
    let base = format!("http://{}", collector.http_addr());
    // Nothing yet: the page says so, with the snippet to start.
    let page = open_page(&base, Duration::from_secs(10), "!document.getElementById('empty').hidden");
    let (tab, errors, empty) = (page.tab.clone(), page.errors.clone(), page.first.clone());
    assert_eq!(empty, true, "the empty state shows before anything reports");
    let text = eval(&tab, "return document.getElementById('empty').innerText");
    assert!(text.as_str().unwrap().contains("Nothing has reported yet") && text.as_str().unwrap().contains("Shoal::builder()"));

    // Three instances of two services.
    let checkout_a = sdk(&collector, "checkout", "a");
    let checkout_b = sdk(&collector, "checkout", "b");
    let billing = sdk(&collector, "billing", "a");
    let latency = checkout_a.histogram("request_seconds", &[("route", "/pay")]);
    for i in 1..=2000 {
        latency.record(0.001 * i as f64);
    }
    for (n, s) in [&checkout_a, &checkout_b, &billing].into_iter().enumerate() {
        s.counter("requests_total", &[("route", "/pay")]).increment(10 * (n as u64 + 1));
        s.gauge("queue_depth", &[]).set(n as f64);
        s.flush().unwrap();
    }
    let rows = wait_in_page(
        &tab,
        Duration::from_secs(10),
        "return [...document.querySelectorAll('#instances tbody tr')].map(r => [r.cells[0].innerText, r.dataset.silent])",
        |v| v.as_array().unwrap().len() == 3,
    );
    assert_eq!(rows, serde_json::json!([["billing", "false"], ["checkout", "false"], ["checkout", "false"]]));
    assert_eq!(eval(&tab, "return document.getElementById('empty').hidden"), true);
    std::fs::write(
        screenshots_dir().join("overview-reporting.png"),
        tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap(),
    )
    .unwrap();

    // billing stops: shown as silent within two intervals of its last batch.
    billing.shutdown().unwrap();
    let stopped = Instant::now();
    drop(billing);
    wait_in_page(
        &tab,
        Duration::from_secs(4 * INTERVAL_SECS),
        "const r = [...document.querySelectorAll('#instances tbody tr')].find(r => r.cells[0].innerText === 'billing'); return r ? r.dataset.silent : null",
        |v| v == "true",
    );
    let took = stopped.elapsed();
    assert!(
        took <= Duration::from_millis(2 * INTERVAL_SECS * 1000 + 500),
        "silent shown {took:?} after the last batch (interval {INTERVAL_SECS}s)"
    );
    let still = eval(&tab, "return [...document.querySelectorAll('#instances tbody tr')].filter(r => r.dataset.silent === 'false').length");
    assert_eq!(still, 2, "the instances still flushing are not silent");
    assert!(eval(&tab, "return document.getElementById('fleet-summary').innerText").as_str().unwrap().contains("1 silent"));
    std::fs::write(
        screenshots_dir().join("overview.png"),
        tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap(),
    )
    .unwrap();

    // The health section: conservation balanced, no rejections.
    let balance = eval(&tab, "return document.querySelector('[data-figure=\"conservation balance\"] dd').innerText");
    assert_eq!(balance, "0");

    // Search, then open the histogram's chart.
    tab.wait_for_element("#search").unwrap().click().unwrap();
    tab.type_str("request_seconds").unwrap();
    let listed = wait_in_page(
        &tab,
        Duration::from_secs(5),
        "return [...document.querySelectorAll('#series-list li')].map(li => li.dataset.series)",
        |v| v.as_array().unwrap().len() == 1,
    );
    let series = listed[0].as_str().unwrap().to_string();
    assert!(series.starts_with("request_seconds{"), "{series}");
    eval(&tab, "document.querySelector('#series-list li').click(); return true");
    let drawn = wait_in_page(
        &tab,
        Duration::from_secs(5),
        "return [document.querySelectorAll('#chart path.quantile-line').length, document.querySelectorAll('#heatmap rect.bucket').length]",
        |v| v[0] == 4 && v[1].as_u64().unwrap() > 0,
    );
    assert_eq!(drawn[0], 4, "p50, p90, p99, p99.9 lines");

    // What is drawn is what /api/v1/query says.
    let api = get_json(&format!("{base}/api/v1/query?name=request_seconds&buckets=true&quantiles=0.5,0.9,0.99,0.999"));
    let api_points: Vec<&Value> = api["series"][0]["points"].as_array().unwrap().iter().filter(|p| p["count"].as_u64() > Some(0)).collect();
    assert!(!api_points.is_empty());
    let dots = eval(
        &tab,
        "return [...document.querySelectorAll('#chart circle')].map(c => [c.dataset.quantile, +c.dataset.start, +c.dataset.value])",
    );
    let mut compared = 0;
    for dot in dots.as_array().unwrap() {
        let (q, start, value) = (dot[0].as_str().unwrap(), dot[1].as_u64().unwrap(), dot[2].as_f64().unwrap());
        let point = api_points.iter().find(|p| p["start"].as_u64() == Some(start)).expect("a dot per API point");
        assert_eq!(point["quantiles"][q].as_f64(), Some(value), "p{q} at {start}");
        compared += 1;
    }
    assert_eq!(compared, 4 * api_points.len());
    let cells = eval(&tab, "return [...document.querySelectorAll('#heatmap rect.bucket')].map(r => [+r.dataset.start, +r.dataset.lower, +r.dataset.upper, +r.dataset.count])");
    let mut drawn_cells: Vec<(u64, f64, f64, u64)> = cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_u64().unwrap(), c[1].as_f64().unwrap(), c[2].as_f64().unwrap(), c[3].as_u64().unwrap()))
        .collect();
    let mut api_cells: Vec<(u64, f64, f64, u64)> = api_points
        .iter()
        .flat_map(|p| {
            let start = p["start"].as_u64().unwrap();
            p["buckets"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |b| (start, b[0].as_f64().unwrap(), b[1].as_f64().unwrap(), b[2].as_u64().unwrap()))
        })
        .collect();
    drawn_cells.sort_by(|a, b| a.partial_cmp(b).unwrap());
    api_cells.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(drawn_cells, api_cells, "the heatmap draws exactly the merged buckets");
    assert_eq!(drawn_cells.iter().map(|c| c.3).sum::<u64>(), 2000, "every sample in a cell");
    let chart = tab.wait_for_element(".chart-panel").unwrap();
    std::fs::write(screenshots_dir().join("histogram.png"), chart.capture_screenshot(CaptureScreenshotFormatOption::Png).unwrap()).unwrap();

    // A counter's chart is a rate; a gauge's names its rule.
    tab.wait_for_element("#search").unwrap().click().unwrap();
    eval(&tab, "const s = document.getElementById('search'); s.value = 'queue_depth{instance=\"b\"'; s.dispatchEvent(new Event('input')); return true");
    // The list shows the new search's result (not the previous one's).
    wait_in_page(
        &tab,
        Duration::from_secs(5),
        "return [...document.querySelectorAll('#series-list li')].map(li => li.dataset.series)",
        |v| v.as_array().is_some_and(|a| a.len() == 1 && a[0].as_str().is_some_and(|s| s.starts_with("queue_depth{"))),
    );
    eval(&tab, "document.querySelector('#series-list li').click(); return true");
    let note = wait_in_page(
        &tab,
        Duration::from_secs(5),
        "return document.getElementById('chart').dataset.kind === 'gauge' ? document.getElementById('chart-note').innerText : null",
        |v| !v.is_null(),
    );
    assert!(note.as_str().unwrap().contains("sum"), "{note}");

    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    drop(checkout_b);
}

#[test]
fn with_100k_series_the_page_pages_and_searches_on_the_server() {
    let collector = start_collector(None, |c| {
        c.interval_secs = INTERVAL_SECS;
        c.max_series_per_instance = 200_000;
        c.max_series_per_metric = 200_000;
        c.max_series_total = 200_000;
    });
    let base = format!("http://{}", collector.http_addr());
    let shoal = shoal::Shoal::builder()
        .service("wide")
        .collector(collector.grpc_url())
        .cardinality_limit(200_000)
        .flush_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    for i in 0..99_999u32 {
        shoal.counter("requests_total", &[("user", &format!("u{i:05}"))]).increment(1);
    }
    let latency = shoal.histogram("request_seconds", &[("user", "u00042")]);
    for i in 1..=1000 {
        latency.record(0.001 * i as f64);
    }
    // A flush sends a bounded batch: as many as it takes.
    let series = wait_for(Duration::from_secs(60), || {
        shoal.flush().unwrap();
        let n = get_json(&format!("{base}/api/v1/health"))["series"].as_u64().unwrap();
        (n >= 100_000).then_some(n)
    });
    assert!(series.is_some(), "100k series reached the collector");

    let page = open_page(&base, Duration::from_secs(30), "document.getElementById('series-count').innerText");
    let (tab, errors, count, overview) = (page.tab.clone(), page.errors.clone(), page.first.clone(), page.first_drawn_in);
    assert!(count.as_str().unwrap().contains("of 100"), "paged: {count}");
    assert_eq!(eval(&tab, "return document.querySelectorAll('#series-list li').length"), 50, "one page in the DOM, not 100k rows");

    let started = Instant::now();
    eval(&tab, "const s = document.getElementById('search'); s.value = 'u00042'; s.dispatchEvent(new Event('input')); return true");
    wait_in_page(&tab, Duration::from_secs(10), "return [...document.querySelectorAll('#series-list li')].map(li => li.dataset.series).filter(s => s.startsWith('request_seconds')).length", |v| v == 1);
    eval(&tab, "[...document.querySelectorAll('#series-list li')].find(li => li.dataset.series.startsWith('request_seconds')).click(); return true");
    wait_in_page(&tab, Duration::from_secs(10), "return document.querySelectorAll('#heatmap rect.bucket').length", |v| {
        v.as_u64() > Some(0)
    });
    let chart = started.elapsed();
    eprintln!("100k series: overview rendered in {overview:?}; search + histogram chart in {chart:?}");
    std::fs::write(
        screenshots_dir().join("overview-100k.png"),
        tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap(),
    )
    .unwrap();
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
}

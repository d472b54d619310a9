//! `#[timed]` with shoal installed as the global recorder: the handles are
//! registered on the first call and reused, across threads.

use shoal::{timed, Shoal};
use std::sync::OnceLock;

const MODULE: &str = module_path!();

fn shoal() -> &'static Shoal {
    static SHOAL: OnceLock<Shoal> = OnceLock::new();
    SHOAL.get_or_init(|| Shoal::builder().install().expect("first install"))
}

fn calls(function: &str, result: &str) -> Option<u64> {
    shoal().counter_value(&format!(r#"function_calls_total{{function="{function}",module="{MODULE}",result="{result}"}}"#))
}

#[timed]
fn work(n: u64) -> Result<u64, String> {
    if n == 0 {
        return Err("zero".into());
    }
    Ok(n)
}

#[test]
fn global_recorder_fast_path_counts_every_call_from_every_thread() {
    shoal();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for i in 0..1000 {
                    let _ = work(i % 10);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(calls("work", "ok"), Some(3600));
    assert_eq!(calls("work", "error"), Some(400));
    let sketch = shoal().histogram_snapshot(&format!(r#"function_duration_seconds{{function="work",module="{MODULE}"}}"#)).unwrap();
    assert_eq!(sketch.count(), 4000);
    assert!(shoal().render_prometheus().contains("# HELP function_calls_total Calls of functions"));
}

#[timed(name = "scoped")]
fn scoped() {}

#[test]
fn a_local_recorder_still_wins_over_the_global_one() {
    shoal();
    scoped(); // global: cached
    let local = Shoal::builder().build().unwrap();
    metrics::with_local_recorder(&local, || {
        scoped();
        scoped();
    });
    scoped();
    let key = format!(r#"scoped_calls_total{{function="scoped",module="{MODULE}",result="ok"}}"#);
    assert_eq!(local.counter_value(&key), Some(2));
    assert_eq!(shoal().counter_value(&key), Some(2));
}

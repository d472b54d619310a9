#[derive(shoal::Metrics)]
#[metrics(prefix = "9http")]
struct M {
    requests: shoal::Counter,
}

fn main() {}

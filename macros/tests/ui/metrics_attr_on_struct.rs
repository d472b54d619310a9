#[derive(shoal::Metrics)]
#[metric(name = "x")]
struct M {
    requests: shoal::Counter,
}

fn main() {}

#[derive(shoal::Metrics)]
struct M {
    #[metric(unit = "secs")]
    latency: shoal::Histogram,
}

fn main() {}

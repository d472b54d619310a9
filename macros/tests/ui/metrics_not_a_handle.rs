#[derive(shoal::Metrics)]
struct M {
    requests: shoal::Counter,
    count: u64,
}

fn main() {}

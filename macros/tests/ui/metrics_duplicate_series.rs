#[derive(shoal::Metrics)]
struct M {
    requests_total: shoal::Counter,
    #[metric(name = "requests_total")]
    again: shoal::Counter,
}

fn main() {}

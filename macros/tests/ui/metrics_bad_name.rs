#[derive(shoal::Metrics)]
struct M {
    #[metric(name = "http-requests")]
    requests: shoal::Counter,
}

fn main() {}

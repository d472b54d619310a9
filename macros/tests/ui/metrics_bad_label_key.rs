#[derive(shoal::Metrics)]
struct M {
    #[metric(labels(__name = "x"))]
    requests: shoal::Counter,
}

fn main() {}

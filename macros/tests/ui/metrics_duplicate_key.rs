#[derive(shoal::Metrics)]
struct M {
    #[metric(name = "a", name = "b")]
    requests: shoal::Counter,
}

fn main() {}

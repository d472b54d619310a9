#[derive(shoal::Metrics)]
struct M {
    #[metric(nme = "requests_total")]
    requests: shoal::Counter,
}

fn main() {}

#[derive(shoal::Metrics)]
#[metrics(prefx = "http")]
struct M {
    requests: shoal::Counter,
}

fn main() {}

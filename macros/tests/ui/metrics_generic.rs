#[derive(shoal::Metrics)]
struct Generic<T> {
    requests: shoal::Counter,
    other: T,
}

fn main() {}

#[derive(shoal::Metrics)]
struct M {
    requests: shoal::Counter,
}

fn main() {
    let _m = M::register_global();
}

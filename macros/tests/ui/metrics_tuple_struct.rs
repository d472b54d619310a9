#[derive(shoal::Metrics)]
struct Tuple(shoal::Counter);

fn main() {}

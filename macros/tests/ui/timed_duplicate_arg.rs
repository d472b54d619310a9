#[shoal::timed(concurrency, concurrency)]
fn work() {}

fn main() {}

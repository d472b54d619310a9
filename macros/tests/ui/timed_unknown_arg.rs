#[shoal::timed(labels = "x")]
fn work() {}

fn main() {}

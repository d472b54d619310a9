#[shoal::timed(name = "db-queries")]
fn query() {}

fn main() {}

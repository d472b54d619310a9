#[shoal::timed(name = db)]
fn query() {}

fn main() {}

#[shoal::timed]
struct NotAFunction;

fn main() {}

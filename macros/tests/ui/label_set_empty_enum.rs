#[derive(shoal::LabelSet)]
enum Never {}

fn main() {}

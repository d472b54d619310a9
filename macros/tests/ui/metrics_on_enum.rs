#[derive(shoal::Metrics)]
enum NotAStruct {
    A,
}

fn main() {}

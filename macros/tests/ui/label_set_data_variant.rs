#[derive(shoal::LabelSet)]
enum Method {
    Get,
    Custom(String),
}

fn main() {}

#[derive(shoal::LabelSet)]
#[label(name = "method")]
enum Method {
    Get,
}

fn main() {}

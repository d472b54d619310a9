#[derive(shoal::LabelSet)]
#[label(key = "http-method")]
enum Method {
    Get,
}

fn main() {}

#[derive(shoal::LabelSet)]
enum Method {
    Get,
    #[label(value = "get")]
    Head,
}

fn main() {}

#[derive(Clone, Copy, shoal::LabelSet)]
enum Method {
    Get,
}

#[derive(shoal::LabelSet)]
struct Route {
    #[label(key = "verb")]
    method: Method,
}

fn main() {}

#[derive(Clone, Copy, shoal::LabelSet)]
enum Method {
    Get,
}

#[derive(shoal::LabelSet)]
struct Route {
    method: Method,
    status: u16,
}

fn main() {}

#[derive(shoal::LabelSet)]
#[label(rename_all = "camelCase")]
enum Method {
    Get,
}

fn main() {}

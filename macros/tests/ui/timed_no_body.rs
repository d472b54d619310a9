trait Store {
    #[shoal::timed]
    fn get(&self, key: &str) -> Option<String>;
}

fn main() {}

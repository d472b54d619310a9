#[shoal::timed]
fn forever() -> ! {
    loop {}
}

fn main() {}

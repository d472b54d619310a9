//! Compile-fail tests: each misuse gives a clear error at the offending span.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

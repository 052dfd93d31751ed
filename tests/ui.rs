//! Compile-fail tests: each file under `tests/ui/<category>/` makes one
//! mistake and its `.stderr` holds the message graphex must give for it.
//! Regenerate with `TRYBUILD=overwrite cargo test -p graphex --test ui`,
//! then read the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/**/*.rs");
}

#[graphex::hooks]
fn after_save() {}

fn main() {}

#[derive(graphex::ModelSubscription)]
#[graphex(stream = "users")]
pub struct Model(i32, String);

fn main() {}

#[derive(graphex::ModelSubscription)]
#[graphex(stream = "users")]
pub struct Model;

fn main() {}

#[derive(graphex::ModelSubscription)]
#[graphex(stream = "users")]
pub union Model {
    id: i32,
    score: f32,
}

fn main() {}

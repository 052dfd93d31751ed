#[derive(graphex::ModelSubscription)]
#[graphex(stream = "users")]
pub enum Model {
    Active { id: i32 },
    Banned { id: i32 },
}

fn main() {}

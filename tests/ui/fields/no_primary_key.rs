// Without DeriveEntityModel, which reports a missing primary key itself.
#[derive(graphex::ModelSubscription)]
#[graphex(stream = "users", name = "User")]
pub struct Model {
    pub id: i32,
    pub username: String,
}

fn main() {}

// Three mistakes darling finds while reading the attributes (two unknown keys
// and a value of the wrong type); all three are reported at once.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
#[sea_orm(table_name = "users")]
#[graphex(stream = "users", serialise_data = true, authenticated = "yes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[graphex(skipp)]
    pub username: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

fn main() {}

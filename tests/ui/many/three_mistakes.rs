// Three mistakes in three places; all three are reported at once.
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
#[sea_orm(table_name = "users")]
#[graphex(stream = "my users", index_fields(tenant_id))]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[graphex(rename = "user name")]
    pub username: String,
    pub tenant: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

fn main() {}

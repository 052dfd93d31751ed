use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
#[sea_orm(table_name = "users")]
#[graphex(stream = "users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub username: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

#[graphex::hooks]
impl ActiveModelBehavior for ActiveModel {
    async fn after_delete<C>(self) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }
}

fn main() {}

// The malformed hook is reported alone: the rest of the impl is kept, with
// the announce hooks, so the entity still has its ActiveModelBehavior.
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
    async fn after_save<C>(model: Model, _db: &C) -> Result<Model, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(model)
    }

    async fn after_delete<C>(self, _db: &C) -> Result<Self, DbErr>
    where
        C: ConnectionTrait,
    {
        Ok(self)
    }
}

fn main() {}

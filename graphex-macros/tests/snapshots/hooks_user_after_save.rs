// #[graphex::hooks] on an impl with its own after_save:
//
// #[async_trait::async_trait]
// impl ActiveModelBehavior for ActiveModel {
//     async fn after_save<C>(model: Model, db: &C, insert: bool) -> Result<Model, DbErr>
//     where
//         C: ConnectionTrait,
//     {
//         audit::record(db, &model, insert).await?;
//         Ok(model)
//     }
// }
//
// Regenerate with `GRAPHEX_BLESS=1 cargo test -p graphex-macros snapshots`.

#[async_trait::async_trait]
impl ActiveModelBehavior for ActiveModel {
    async fn after_save<C>(model: Model, db: &C, insert: bool) -> Result<Model, DbErr>
    where
        C: ConnectionTrait,
    {
        let returned: Result<Model, DbErr> = async move {
            let model = model;
            let db = db;
            let insert = insert;
            {
                audit::record(db, &model, insert).await?;
                Ok(model)
            }
        }
            .await;
        let saved = returned?;
        ::graphex::__private::announce_saved(&saved, db, insert).await?;
        ::core::result::Result::Ok(saved)
    }
    /// Announces the deleted row to its subscribers (added by `#[graphex::hooks]`).
    async fn after_delete<C>(
        self,
        db: &C,
    ) -> ::core::result::Result<Self, ::graphex::__private::sea_orm::DbErr>
    where
        C: ::graphex::__private::sea_orm::ConnectionTrait,
    {
        ::graphex::__private::announce_deleted(&self, db).await?;
        ::core::result::Result::Ok(self)
    }
}

// #[graphex::hooks] on:
//
// impl ActiveModelBehavior for ActiveModel {}
//
// Regenerate with `GRAPHEX_BLESS=1 cargo test -p graphex-macros snapshots`.

#[::graphex::__private::async_trait::async_trait]
impl ActiveModelBehavior for ActiveModel {
    /// Announces the saved row to its subscribers (added by `#[graphex::hooks]`).
    async fn after_save<C>(
        model: <<Self as ::graphex::__private::sea_orm::ActiveModelTrait>::Entity as ::graphex::__private::sea_orm::EntityTrait>::Model,
        db: &C,
        insert: bool,
    ) -> ::core::result::Result<
        <<Self as ::graphex::__private::sea_orm::ActiveModelTrait>::Entity as ::graphex::__private::sea_orm::EntityTrait>::Model,
        ::graphex::__private::sea_orm::DbErr,
    >
    where
        C: ::graphex::__private::sea_orm::ConnectionTrait,
    {
        ::graphex::__private::announce_saved(&model, db, insert).await?;
        ::core::result::Result::Ok(model)
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

//! Entities shared by the integration tests.
#![allow(dead_code)]

pub mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "users")]
    #[graphex(stream = "users", serialize_data = true, index_fields(tenant))]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub username: String,
        pub email: Option<String>,
        pub tenant: String,
        pub score: f64,
        pub active: bool,
        pub joined: DateTimeUtc,
        #[graphex(skip)]
        pub password_hash: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod comment {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "comments")]
    #[graphex(stream = "comments", serialize_data = false)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub post: i32,
        pub text: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod tag {
    use sea_orm::entity::prelude::*;

    /// String primary key, renamed field, authenticated.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "tags")]
    #[graphex(stream = "tags", name = "Label", serialize_data = true, authenticated)]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub slug: String,
        #[graphex(rename = "title")]
        pub name: String,
        pub created: Option<DateTime>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

//! The derive and `#[graphex::hooks]` inside `#![no_implicit_prelude]`,
//! beside look-alike `String` and `Vec` types: graphex's generated code
//! names everything by absolute path.
//!
//! What this cannot check here, and why:
//! - sea-orm's derives (`DeriveEntityModel`, `EnumIter`, ...) name `Option`,
//!   `Result`, `Some`, `Ok`, `Iterator`, `Clone`, `ToOwned`, `format!`,
//!   `sea_orm`, ... without a path, and async-trait's expansion (which
//!   `#[graphex::hooks]` must use, as `ActiveModelBehavior` is an
//!   `#[async_trait]` trait) names `Box`. Those names are imported below,
//!   so the compile test does not catch a bare use of them by graphex, and
//!   look-alike `Option` / `Result` types cannot sit beside sea-orm's
//!   derives at all.
//! - graphex-macros' `snapshots::no_bare_prelude_paths` unit test covers
//!   that gap: it scans the derive's and the hooks' expansions for any path
//!   that starts with a prelude name.
mod entities {
    #![no_implicit_prelude]

    // Look-alikes that a bare `String` or `Vec` in the generated code would
    // pick up instead of the standard types.
    #[allow(dead_code)]
    pub struct String;
    #[allow(dead_code)]
    pub struct Vec;

    // Named without a path by sea-orm's derives and async-trait, not by graphex.
    use ::sea_orm;
    use ::sea_orm::entity::prelude::*;
    use ::std;
    use ::std::borrow::ToOwned;
    use ::std::boxed::Box;
    use ::std::clone::Clone;
    use ::std::convert::{Into, TryInto};
    use ::std::iter::{DoubleEndedIterator, ExactSizeIterator, Iterator};
    use ::std::option::Option::{self, None, Some};
    use ::std::result::Result::{self, Err, Ok};
    use ::std::string::ToString;
    use ::std::{format, matches};

    /// Full payload, an index field, a scope, an authorization function and
    /// a skipped field.
    pub mod note {
        use super::*;

        #[derive(
            ::core::clone::Clone,
            ::core::fmt::Debug,
            ::core::cmp::PartialEq,
            DeriveEntityModel,
            ::graphex::ModelSubscription,
        )]
        #[sea_orm(table_name = "notes")]
        #[graphex(
            stream = "notes",
            serialize_data = true,
            index_fields(tenant),
            scope = "tenant_scope",
            authorize = "members_only"
        )]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
            pub tenant: ::std::string::String,
            pub body: ::core::option::Option<::std::string::String>,
            #[graphex(skip)]
            pub secret: ::std::string::String,
        }

        #[derive(::core::marker::Copy, ::core::clone::Clone, ::core::fmt::Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        #[::graphex::hooks]
        impl ActiveModelBehavior for ActiveModel {}

        fn tenant_scope(
            request: &::graphex::SubscribeRequest<'_>,
        ) -> ::core::result::Result<::graphex::Scope<Entity>, ::graphex::Denied> {
            let principal = request.require_principal()?;
            let tenant = ::std::string::ToString::to_string(&principal.id);
            ::core::result::Result::Ok(::graphex::Scope::new().eq(Column::Tenant, tenant))
        }

        fn members_only(request: &::graphex::SubscribeRequest<'_>) -> ::core::result::Result<(), ::graphex::Denied> {
            ::core::result::Result::map(request.require_principal(), |_| ())
        }
    }

    /// Id-only payload, `authenticated`, a user-written `after_save`.
    pub mod pin {
        use super::*;

        #[derive(
            ::core::clone::Clone,
            ::core::fmt::Debug,
            ::core::cmp::PartialEq,
            DeriveEntityModel,
            ::graphex::ModelSubscription,
        )]
        #[sea_orm(table_name = "pins")]
        #[graphex(stream = "pins", serialize_data = false, authenticated)]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub code: ::std::string::String,
            pub note: i32,
        }

        #[derive(::core::marker::Copy, ::core::clone::Clone, ::core::fmt::Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        #[::graphex::hooks]
        impl ActiveModelBehavior for ActiveModel {
            async fn after_save<C>(model: Model, _db: &C, _insert: bool) -> ::core::result::Result<Model, DbErr>
            where
                C: ConnectionTrait,
            {
                ::core::result::Result::Ok(model)
            }
        }
    }
}

use async_graphql::{EmptyMutation, MergedSubscription, Object, Schema};
use entities::{note, pin};
use graphex::ModelSubscription;

struct Query;

#[Object]
impl Query {
    async fn ping(&self) -> bool {
        true
    }
}

#[derive(MergedSubscription, Default)]
struct Subscription(note::NoteSubscriptionRoot, pin::PinSubscriptionRoot);

#[test]
fn derived_inside_no_implicit_prelude() {
    let sdl = Schema::build(Query, EmptyMutation, Subscription::default()).finish().sdl();
    assert!(sdl.contains("noteSubscription("), "{sdl}");
    assert!(sdl.contains("pinSubscription("), "{sdl}");
    assert!(sdl.contains("enum NoteFields"), "{sdl}");
    assert!(!sdl.contains("SECRET"), "skipped fields stay out of the schema: {sdl}");
    assert_eq!(note::Model::INDEX_FIELDS, &["tenant"]);
    let names: Vec<&str> = note::Model::FIELDS.iter().map(|field| field.name).collect();
    assert_eq!(names, ["id", "tenant", "body"]);
    assert_eq!(pin::Model::FIELDS[pin::Model::PRIMARY_KEY].name, "code");
}

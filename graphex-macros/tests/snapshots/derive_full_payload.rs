// #[derive(ModelSubscription)] with a full payload, an index field, a rename, a skipped field, scope and authorize:
//
// #[sea_orm(table_name = "users")]
// #[graphex(
//     stream = "users",
//     serialize_data = true,
//     index_fields(tenant),
//     scope = "by_tenant",
//     authorize = "members_only"
// )]
// pub struct Model {
//     #[sea_orm(primary_key)]
//     pub id: i32,
//     #[graphex(rename = "login")]
//     pub username: ::std::string::String,
//     pub email: ::core::option::Option<::std::string::String>,
//     pub tenant: ::std::string::String,
//     #[graphex(skip)]
//     pub password_hash: ::std::string::String,
// }
//
// Regenerate with `GRAPHEX_BLESS=1 cargo test -p graphex-macros snapshots`.

/// The payload fields of the `users` stream (GraphQL enum `UserFields`), for the subscription's `data` argument.
#[derive(
    ::graphex::__private::async_graphql::Enum,
    ::core::clone::Clone,
    ::core::marker::Copy,
    ::core::fmt::Debug,
    ::core::cmp::PartialEq,
    ::core::cmp::Eq
)]
#[graphql(crate = "::graphex::__private::async_graphql", name = "UserFields")]
pub enum UserFields {
    /// The `id` field.
    #[graphql(name = "ID")]
    Id,
    /// The `login` field.
    #[graphql(name = "LOGIN")]
    Login,
    /// The `email` field.
    #[graphql(name = "EMAIL")]
    Email,
    /// The `tenant` field.
    #[graphql(name = "TENANT")]
    Tenant,
}
/// The payload key each item selects.
#[automatically_derived]
impl ::graphex::FieldsEnum for UserFields {
    fn field_name(self) -> &'static str {
        match self {
            UserFields::Id => "id",
            UserFields::Login => "login",
            UserFields::Email => "email",
            UserFields::Tenant => "tenant",
        }
    }
}
/// The answer to a subscribe or unsubscribe on the `users` stream (GraphQL type `UserSubscription`).
#[derive(
    ::graphex::__private::async_graphql::SimpleObject,
    ::core::clone::Clone,
    ::core::fmt::Debug
)]
#[graphql(crate = "::graphex::__private::async_graphql", name = "UserSubscription")]
pub struct UserSubscription {
    /// Whether the operation took effect.
    pub ok: bool,
    /// Why it did not, when `ok` is false.
    pub error: ::core::option::Option<::std::string::String>,
    /// The stream operated on.
    pub stream: ::std::string::String,
    /// The operation performed.
    pub operation: ::graphex::OperationSubscription,
    /// The action subscribed to.
    pub action: ::graphex::ActionSubscription,
}
/// Copies the runtime's confirmation into this GraphQL type.
#[automatically_derived]
impl ::core::convert::From<::graphex::Confirmation> for UserSubscription {
    fn from(confirmation: ::graphex::Confirmation) -> Self {
        UserSubscription {
            ok: confirmation.ok,
            error: confirmation.error,
            stream: confirmation.stream,
            operation: confirmation.operation,
            action: confirmation.action,
        }
    }
}
/// The `userSubscription` subscription field (GraphQL type `UserSubscriptionRoot`): merge it into the schema's subscription root.
#[derive(
    ::core::default::Default,
    ::core::clone::Clone,
    ::core::marker::Copy,
    ::core::fmt::Debug
)]
pub struct UserSubscriptionRoot;
#[::graphex::__private::async_graphql::Subscription(
    crate = "::graphex::__private::async_graphql",
    name = "UserSubscriptionRoot"
)]
impl UserSubscriptionRoot {
    /// Live changes of User (stream `users`).
    #[graphql(name = "userSubscription")]
    #[allow(clippy::too_many_arguments)]
    async fn user_subscription(
        &self,
        ctx: &::graphex::__private::async_graphql::Context<'_>,
        #[graphql(
            name = "channelId",
            desc = "The channel id the WebSocket handshake returned."
        )]
        channel_id: ::std::string::String,
        #[graphql(desc = "Which changes to receive.")]
        action: ::graphex::ActionSubscription,
        #[graphql(desc = "Subscribe or unsubscribe.")]
        operation: ::graphex::OperationSubscription,
        #[graphql(desc = "Only changes of the row with this primary key.")]
        id: ::core::option::Option<::graphex::__private::async_graphql::ID>,
        #[graphql(desc = "Field lookups, e.g. {post: 7, text__icontains: \"urgent\"}.")]
        filters: ::core::option::Option<
            ::graphex::__private::async_graphql::Json<
                ::graphex::__private::serde_json::Value,
            >,
        >,
        #[graphql(
            desc = "Project notifications to these fields (all fields when omitted)."
        )]
        data: ::core::option::Option<::std::vec::Vec<UserFields>>,
        #[graphql(
            desc = "Frames carry each change's cursor (`\"cursor\"`), to resume from after a reconnect."
        )]
        cursors: ::core::option::Option<bool>,
        #[graphql(
            desc = "Resume: first the changes after this cursor that this subscription would have received, then live ones (implies `cursors`)."
        )]
        after: ::core::option::Option<::std::string::String>,
    ) -> impl ::graphex::__private::Stream<Item = UserSubscription> {
        let request = ::graphex::SubscribeArgs::new(
                channel_id,
                action,
                operation,
                id,
                filters,
                ::graphex::__private::projection(data),
            )
            .resume(cursors.unwrap_or(false), after);
        ::graphex::__private::confirm(::graphex::subscribe::<Model>(ctx, request).await)
    }
    /// Live changes of User (stream `users`). One `ModelChange` event per change (standard GraphQL protocols).
    #[graphql(name = "userChanges")]
    async fn user_changes(
        &self,
        ctx: &::graphex::__private::async_graphql::Context<'_>,
        #[graphql(
            desc = "Which changes to receive.",
            default_with = "::graphex::ActionSubscription::AllActions"
        )]
        action: ::graphex::ActionSubscription,
        #[graphql(desc = "Only changes of the row with this primary key.")]
        id: ::core::option::Option<::graphex::__private::async_graphql::ID>,
        #[graphql(desc = "Field lookups, e.g. {post: 7, text__icontains: \"urgent\"}.")]
        filters: ::core::option::Option<
            ::graphex::__private::async_graphql::Json<
                ::graphex::__private::serde_json::Value,
            >,
        >,
        #[graphql(
            desc = "Project notifications to these fields (all fields when omitted)."
        )]
        data: ::core::option::Option<::std::vec::Vec<UserFields>>,
        #[graphql(
            desc = "Resume: first the changes after this cursor (`ModelChange.cursor`) that this subscription would have received, in order, then live ones."
        )]
        after: ::core::option::Option<::std::string::String>,
    ) -> ::graphex::__private::async_graphql::Result<::graphex::ChangeStream> {
        let args = ::graphex::ChangesArgs::new(
                action,
                id,
                filters,
                ::graphex::__private::projection(data),
            )
            .after(after)
            .shareable();
        ::graphex::changes::<Model>(ctx, args).await
    }
}
/// Binds this model to its live subscription: stream, fields, keys,
/// scope and authorization, as read by the graphex runtime.
#[automatically_derived]
impl ::graphex::ModelSubscription for Model {
    type Entity = Entity;
    const STREAM: &'static str = "users";
    const LABEL: &'static str = "user";
    const FULL_PAYLOAD: bool = true;
    const PRIMARY_KEY: usize = 0;
    const FIELDS: &'static [::graphex::Field<Entity>] = &[
        ::graphex::Field {
            name: "id",
            column: Column::Id,
            parse: ::graphex::__private::parse_value::<i32>,
            canonical: ::graphex::__private::canonical_value::<i32>,
        },
        ::graphex::Field {
            name: "login",
            column: Column::Username,
            parse: ::graphex::__private::parse_value::<::std::string::String>,
            canonical: ::graphex::__private::canonical_value::<::std::string::String>,
        },
        ::graphex::Field {
            name: "email",
            column: Column::Email,
            parse: ::graphex::__private::parse_value::<
                ::core::option::Option<::std::string::String>,
            >,
            canonical: ::graphex::__private::canonical_value::<
                ::core::option::Option<::std::string::String>,
            >,
        },
        ::graphex::Field {
            name: "tenant",
            column: Column::Tenant,
            parse: ::graphex::__private::parse_value::<::std::string::String>,
            canonical: ::graphex::__private::canonical_value::<::std::string::String>,
        },
    ];
    const INDEX_FIELDS: &'static [&'static str] = &["tenant"];
    fn primary_key(&self) -> ::graphex::__private::serde_json::Value {
        ::graphex::__private::field_value("id", &self.id)
    }
    fn values(
        &self,
    ) -> ::graphex::__private::serde_json::Map<
        ::std::string::String,
        ::graphex::__private::serde_json::Value,
    > {
        let mut values = ::graphex::__private::serde_json::Map::with_capacity(4);
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("id"),
                ::graphex::__private::field_value("id", &self.id),
            );
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("login"),
                ::graphex::__private::field_value("login", &self.username),
            );
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("email"),
                ::graphex::__private::field_value("email", &self.email),
            );
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("tenant"),
                ::graphex::__private::field_value("tenant", &self.tenant),
            );
        values
    }
    fn index_values(
        &self,
    ) -> ::std::vec::Vec<(&'static str, ::graphex::__private::serde_json::Value)> {
        ::std::vec![
            ("tenant", ::graphex::__private::field_value("tenant", & self.tenant))
        ]
    }
    fn authorize(
        request: &::graphex::SubscribeRequest<'_>,
    ) -> ::core::result::Result<(), ::graphex::Denied> {
        let authorize: fn(
            &::graphex::SubscribeRequest<'_>,
        ) -> ::core::result::Result<(), ::graphex::Denied> = members_only;
        authorize(request)
    }
    fn scope(
        request: &::graphex::SubscribeRequest<'_>,
    ) -> ::core::result::Result<::graphex::Scope<Entity>, ::graphex::Denied> {
        let scope: fn(
            &::graphex::SubscribeRequest<'_>,
        ) -> ::core::result::Result<::graphex::Scope<Entity>, ::graphex::Denied> = by_tenant;
        scope(request)
    }
}

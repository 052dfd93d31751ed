// #[derive(ModelSubscription)] with an id-only payload, authenticated:
//
// #[sea_orm(table_name = "comments")]
// #[graphex(stream = "comments", serialize_data = false, authenticated)]
// pub struct Model {
//     #[sea_orm(primary_key)]
//     pub id: i64,
//     pub post: i32,
//     pub text: ::std::string::String,
// }
//
// Regenerate with `GRAPHEX_BLESS=1 cargo test -p graphex-macros snapshots`.

/// The answer to a subscribe or unsubscribe on the `comments` stream (GraphQL type `CommentSubscription`).
#[derive(
    ::graphex::__private::async_graphql::SimpleObject,
    ::core::clone::Clone,
    ::core::fmt::Debug
)]
#[graphql(crate = "::graphex::__private::async_graphql", name = "CommentSubscription")]
pub struct CommentSubscription {
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
impl ::core::convert::From<::graphex::Confirmation> for CommentSubscription {
    fn from(confirmation: ::graphex::Confirmation) -> Self {
        CommentSubscription {
            ok: confirmation.ok,
            error: confirmation.error,
            stream: confirmation.stream,
            operation: confirmation.operation,
            action: confirmation.action,
        }
    }
}
/// The `commentSubscription` subscription field (GraphQL type `CommentSubscriptionRoot`): merge it into the schema's subscription root.
#[derive(
    ::core::default::Default,
    ::core::clone::Clone,
    ::core::marker::Copy,
    ::core::fmt::Debug
)]
pub struct CommentSubscriptionRoot;
#[::graphex::__private::async_graphql::Subscription(
    crate = "::graphex::__private::async_graphql",
    name = "CommentSubscriptionRoot"
)]
impl CommentSubscriptionRoot {
    /// Live changes of Comment (stream `comments`).
    #[graphql(name = "commentSubscription")]
    #[allow(clippy::too_many_arguments)]
    async fn comment_subscription(
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
            desc = "Frames carry each change's cursor (`\"cursor\"`), to resume from after a reconnect."
        )]
        cursors: ::core::option::Option<bool>,
        #[graphql(
            desc = "Resume: first the changes after this cursor that this subscription would have received, then live ones (implies `cursors`)."
        )]
        after: ::core::option::Option<::std::string::String>,
    ) -> impl ::graphex::__private::Stream<Item = CommentSubscription> {
        let request = ::graphex::SubscribeArgs::new(
                channel_id,
                action,
                operation,
                id,
                filters,
                ::core::option::Option::None,
            )
            .resume(cursors.unwrap_or(false), after);
        ::graphex::__private::confirm(::graphex::subscribe::<Model>(ctx, request).await)
    }
    /// Live changes of Comment (stream `comments`). One `ModelChange` event per change (standard GraphQL protocols).
    #[graphql(name = "commentChanges")]
    async fn comment_changes(
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
            desc = "Resume: first the changes after this cursor (`ModelChange.cursor`) that this subscription would have received, in order, then live ones."
        )]
        after: ::core::option::Option<::std::string::String>,
    ) -> ::graphex::__private::async_graphql::Result<::graphex::ChangeStream> {
        let args = ::graphex::ChangesArgs::new(
                action,
                id,
                filters,
                ::core::option::Option::None,
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
    const STREAM: &'static str = "comments";
    const LABEL: &'static str = "comment";
    const FULL_PAYLOAD: bool = false;
    const PRIMARY_KEY: usize = 0;
    const FIELDS: &'static [::graphex::Field<Entity>] = &[
        ::graphex::Field {
            name: "id",
            column: Column::Id,
            parse: ::graphex::__private::parse_value::<i64>,
            canonical: ::graphex::__private::canonical_value::<i64>,
        },
        ::graphex::Field {
            name: "post",
            column: Column::Post,
            parse: ::graphex::__private::parse_value::<i32>,
            canonical: ::graphex::__private::canonical_value::<i32>,
        },
        ::graphex::Field {
            name: "text",
            column: Column::Text,
            parse: ::graphex::__private::parse_value::<::std::string::String>,
            canonical: ::graphex::__private::canonical_value::<::std::string::String>,
        },
    ];
    const INDEX_FIELDS: &'static [&'static str] = &[];
    fn primary_key(&self) -> ::graphex::__private::serde_json::Value {
        ::graphex::__private::field_value("id", &self.id)
    }
    fn values(
        &self,
    ) -> ::graphex::__private::serde_json::Map<
        ::std::string::String,
        ::graphex::__private::serde_json::Value,
    > {
        let mut values = ::graphex::__private::serde_json::Map::with_capacity(3);
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("id"),
                ::graphex::__private::field_value("id", &self.id),
            );
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("post"),
                ::graphex::__private::field_value("post", &self.post),
            );
        values
            .insert(
                ::std::borrow::ToOwned::to_owned("text"),
                ::graphex::__private::field_value("text", &self.text),
            );
        values
    }
    fn index_values(
        &self,
    ) -> ::std::vec::Vec<(&'static str, ::graphex::__private::serde_json::Value)> {
        ::std::vec![]
    }
    fn authorize(
        request: &::graphex::SubscribeRequest<'_>,
    ) -> ::core::result::Result<(), ::graphex::Denied> {
        ::graphex::__private::allow_authenticated(request)
    }
    fn scope(
        request: &::graphex::SubscribeRequest<'_>,
    ) -> ::core::result::Result<::graphex::Scope<Entity>, ::graphex::Denied> {
        ::graphex::__private::no_scope::<Entity>(request)
    }
}

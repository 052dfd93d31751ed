//! The chat API of the Ariadne tutorial (`createUser`, `createMessage`,
//! `messages(userId)` delivering only to the recipient) on SeaORM entities
//! with the graphex derive, plus a `typing` indicator on a custom group.
//! `main.rs` serves it; the tests start it on port 0.

use async_graphql::{Context, ID, Object, Result, Schema, SimpleObject, Subscription};
use axum::Router;
use futures_util::{Stream, StreamExt};
use graphex::{ActionSubscription, ChangesArgs, Hub};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    EntityTrait, QueryFilter, QueryOrder, Schema as DbSchema,
};
use serde::{Deserialize, Serialize};

pub mod user {
    use sea_orm::entity::prelude::*;

    /// A chat user.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "chat_users")]
    #[graphex(stream = "chat_users", name = "ChatUser", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        pub username: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

pub mod message {
    use sea_orm::entity::prelude::*;

    /// A direct message; changes are routed by recipient (index field).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "chat_messages")]
    #[graphex(stream = "chat_messages", name = "ChatMessage", serialize_data = true, index_fields(recipient_id))]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub content: String,
        pub sender_id: i32,
        pub recipient_id: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// `User` of the tutorial's schema.
#[derive(SimpleObject, Clone, Debug)]
pub struct User {
    username: String,
    user_id: String,
}

impl From<user::Model> for User {
    fn from(row: user::Model) -> Self {
        User { username: row.username, user_id: row.id.to_string() }
    }
}

/// `Message` of the tutorial's schema.
#[derive(SimpleObject, Clone, Debug)]
pub struct Message {
    content: String,
    sender_id: String,
    recipient_id: String,
}

impl From<message::Model> for Message {
    fn from(row: message::Model) -> Self {
        Message {
            content: row.content,
            sender_id: row.sender_id.to_string(),
            recipient_id: row.recipient_id.to_string(),
        }
    }
}

impl Message {
    /// From the row a change carries (full payload).
    fn from_row(row: &serde_json::Value) -> Option<Message> {
        Some(Message {
            content: row.get("content")?.as_str()?.to_owned(),
            sender_id: row.get("sender_id")?.to_string(),
            recipient_id: row.get("recipient_id")?.to_string(),
        })
    }
}

/// `createUserResult`.
#[derive(SimpleObject, Default)]
#[graphql(name = "createUserResult")]
pub struct CreateUserResult {
    user: Option<User>,
    success: bool,
    errors: Option<Vec<String>>,
}

/// `createMessageResult`.
#[derive(SimpleObject, Default)]
#[graphql(name = "createMessageResult")]
pub struct CreateMessageResult {
    message: Option<Message>,
    success: bool,
    errors: Option<Vec<String>>,
}

/// `messagesResult`.
#[derive(SimpleObject, Default)]
#[graphql(name = "messagesResult")]
pub struct MessagesResult {
    messages: Option<Vec<Message>>,
    success: bool,
    errors: Option<Vec<String>>,
}

/// Someone is typing to a user (a custom group payload, not a row).
#[derive(SimpleObject, Clone, Debug, Serialize, Deserialize)]
pub struct Typing {
    sender_id: String,
}

fn db<'a>(ctx: &Context<'a>) -> &'a DatabaseConnection {
    ctx.data_unchecked::<DatabaseConnection>()
}

fn parse_id(id: &str) -> Result<i32> {
    id.parse().map_err(|_| format!("`{id}` is not a user id").into())
}

/// Queries.
pub struct Query;

#[Object]
impl Query {
    async fn hello(&self) -> &'static str {
        "Hello world!"
    }

    /// Messages sent or received by a user.
    async fn messages(&self, ctx: &Context<'_>, user_id: String) -> Result<MessagesResult> {
        let id = parse_id(&user_id)?;
        let rows = message::Entity::find()
            .filter(
                sea_orm::Condition::any()
                    .add(message::Column::SenderId.eq(id))
                    .add(message::Column::RecipientId.eq(id)),
            )
            .order_by_asc(message::Column::Id)
            .all(db(ctx))
            .await?;
        Ok(MessagesResult {
            messages: Some(rows.into_iter().map(Message::from).collect()),
            success: true,
            errors: None,
        })
    }

    /// The id of a username.
    async fn user_id(&self, ctx: &Context<'_>, username: String) -> Result<Option<String>> {
        let row = user::Entity::find().filter(user::Column::Username.eq(username)).one(db(ctx)).await?;
        Ok(row.map(|row| row.id.to_string()))
    }
}

/// Mutations: rows go through SeaORM's ActiveModel, so the hooks announce them.
pub struct Mutation;

#[Object]
impl Mutation {
    async fn create_user(&self, ctx: &Context<'_>, username: String) -> Result<CreateUserResult> {
        if user::Entity::find().filter(user::Column::Username.eq(&username)).one(db(ctx)).await?.is_some() {
            return Ok(CreateUserResult { errors: Some(vec!["Username is taken".into()]), ..Default::default() });
        }
        let row = user::ActiveModel { username: Set(username), ..Default::default() }.insert(db(ctx)).await?;
        Ok(CreateUserResult { user: Some(row.into()), success: true, errors: None })
    }

    async fn create_message(
        &self,
        ctx: &Context<'_>,
        sender_id: String,
        recipient_id: String,
        content: String,
    ) -> Result<CreateMessageResult> {
        let (sender_id, recipient_id) = (parse_id(&sender_id)?, parse_id(&recipient_id)?);
        for id in [sender_id, recipient_id] {
            if user::Entity::find_by_id(id).one(db(ctx)).await?.is_none() {
                return Ok(CreateMessageResult { errors: Some(vec![format!("no user {id}")]), ..Default::default() });
            }
        }
        let row = message::ActiveModel {
            content: Set(content),
            sender_id: Set(sender_id),
            recipient_id: Set(recipient_id),
            ..Default::default()
        }
        .insert(db(ctx))
        .await?;
        Ok(CreateMessageResult { message: Some(row.into()), success: true, errors: None })
    }

    /// Tells `recipientId` that `senderId` is typing (a custom group broadcast).
    async fn typing(&self, ctx: &Context<'_>, sender_id: String, recipient_id: String) -> Result<bool> {
        let hub = ctx.data::<Hub>()?;
        hub.broadcast(&format!("typing.{}", parse_id(&recipient_id)?), Typing { sender_id }).await?;
        Ok(true)
    }
}

/// Subscriptions.
pub struct ChatSubscription;

#[Subscription]
impl ChatSubscription {
    /// New messages to `userId`, and only to them: the recipient is an
    /// index field, so the subscription joins the recipient's group.
    async fn messages(&self, ctx: &Context<'_>, user_id: String) -> Result<impl Stream<Item = Message>> {
        let filters = serde_json::json!({ "recipient_id": parse_id(&user_id)? });
        let args = ChangesArgs::new(ActionSubscription::Create, None::<ID>, Some(async_graphql::Json(filters)), None);
        let changes = graphex::changes::<message::Model>(ctx, args).await?;
        Ok(changes.filter_map(|change| {
            let message = change.ok().and_then(|change| change.data).and_then(|data| Message::from_row(&data.0));
            std::future::ready(message)
        }))
    }

    /// Someone is typing to `userId`.
    async fn typing(&self, ctx: &Context<'_>, user_id: String) -> Result<impl Stream<Item = Typing>> {
        Ok(graphex::subscribe_groups::<Typing, _, _>(ctx, [format!("typing.{}", parse_id(&user_id)?)]).await?)
    }
}

/// The GraphQL schema over `db`.
pub fn schema(db: DatabaseConnection) -> Schema<Query, Mutation, ChatSubscription> {
    Schema::build(Query, Mutation, ChatSubscription).data(db).limit_depth(32).limit_complexity(1_000).finish()
}

/// Connects and creates the tables.
pub async fn connect(url: &str) -> DatabaseConnection {
    let mut options = ConnectOptions::new(url);
    if url.starts_with("sqlite::memory:") {
        // One connection: every pooled connection would get its own empty
        // memory database. It must never be reaped either (that would drop
        // the database), so no idle timeout or lifetime.
        options.max_connections(1).idle_timeout(None).max_lifetime(None);
    }
    let db = Database::connect(options).await.expect("database reachable");
    let builder = DbSchema::new(db.get_database_backend());
    for statement in [
        builder.create_table_from_entity(user::Entity).if_not_exists().to_owned(),
        builder.create_table_from_entity(message::Entity).if_not_exists().to_owned(),
    ] {
        db.execute(&statement).await.expect("table created");
    }
    db
}

/// The whole app: GraphQL over HTTP and the standard WebSocket protocols at `/graphql`.
pub fn app(db: DatabaseConnection, hub: Hub) -> Router {
    graphex::router(schema(db), hub, graphex::Anonymous)
}

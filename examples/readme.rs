//! The README's code, compiled: every Rust snippet of README.md appears
//! here as written (the fragments inside functions that give them their
//! context), so a change that breaks the README breaks the build.
//! `cargo run --example readme` serves it on `PORT` (default 8000) with
//! SQLite in memory.

#![allow(unreachable_pub, missing_docs)]

use std::time::Duration;

use async_graphql::{Context, Object, SimpleObject, Subscription};
use futures_util::{Stream, StreamExt};
use graphex::Principal;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr, Schema};
use serde::{Deserialize, Serialize};

/// "An annotated entity".
mod note {
    use graphex::{Denied, Scope, SubscribeRequest};
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "notes")]
    #[graphex(
        stream = "notes",          // required: stream name, prefix of every group
        name = "Note",             // GraphQL prefix (default: table name, singular, PascalCase)
        serialize_data = true,     // full payload; false = {"id": pk}; absent = global default
        authenticated,             // or `authorize = "path::to::fn"`; default: public
        scope = "my_notes",        // server-forced filter, typed over Column
        index_fields(owner),       // value-indexed groups for high fan-out
    )]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub owner: String,
        #[graphex(rename = "body")]
        pub text: String,
        #[graphex(skip)] // never in payloads, the Fields enum or filters
        pub secret: String,
    }

    /// Only the subscriber's own notes. A column the model lacks does not compile.
    pub fn my_notes(request: &SubscribeRequest<'_>) -> Result<Scope<Entity>, Denied> {
        Ok(Scope::new().eq(Column::Owner, request.require_principal()?.id.clone()))
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    // Announces every save and delete. Your own after_save / after_delete bodies
    // are kept: the announce runs on what they return.
    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// The second model of "Mounting".
mod user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "users")]
    #[graphex(stream = "users", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub username: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

struct Query;

#[Object]
impl Query {
    async fn version(&self) -> &'static str {
        "readme"
    }
}

/// What the room broadcasts carry ("Custom groups").
#[derive(SimpleObject, Serialize, Deserialize, Clone, Debug)]
struct Said {
    author: String,
    text: String,
}

struct Mutation;

#[Object]
impl Mutation {
    async fn say(&self, ctx: &Context<'_>, author: String, text: String) -> async_graphql::Result<bool> {
        // In a mutation (the router puts the hub in every request and connection):
        ctx.data::<graphex::Hub>()?.broadcast("room.lobby", Said { author, text }).await?;
        Ok(true)
    }
}

#[derive(Default)]
struct Rooms;

#[Subscription]
impl Rooms {
    async fn room(
        &self,
        ctx: &Context<'_>,
        name: String,
        muted: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = Said>> {
        let said = graphex::subscribe_groups::<Said, _, _>(ctx, [format!("room.{name}")]).await?;
        Ok(said.filter(move |said| std::future::ready(muted.as_deref() != Some(&said.author))))
    }
}

// "Mounting".
#[derive(async_graphql::MergedSubscription, Default)]
pub struct Subscription(user::UserSubscriptionRoot, note::NoteSubscriptionRoot, Rooms); // one entry per model

/// Every token is the user of that name.
struct MyAuthenticator;

#[async_trait::async_trait]
impl graphex::Authenticator for MyAuthenticator {
    async fn authenticate(&self, token: &str) -> Option<Principal> {
        Some(Principal::new(token))
    }
}

/// "Standard protocols": hooks and settings on the router builder.
struct Hooks;

#[async_trait::async_trait]
impl graphex::ConnectionHooks for Hooks {
    // The `connection_init` payload -> the principal (authorization, scope), or a refusal.
    async fn on_connect(
        &self,
        connection: &graphex::Connection,
        payload: &serde_json::Value,
    ) -> Result<Option<graphex::Principal>, graphex::Denied> {
        match payload.get("token").and_then(|token| token.as_str()) {
            Some(token) => connection.authenticate(token).await.map(Some).ok_or(graphex::Denied::new("bad token")),
            None => Ok(connection.upgrade_principal().cloned()),
        }
    }
    async fn on_disconnect(&self, _connection: &graphex::Connection) { /* ... */
    }
    async fn on_operation(
        &self,
        _connection: &graphex::Connection,
        _id: &str,
        _request: &async_graphql::Request,
    ) -> Result<(), graphex::Denied> {
        Ok(())
    }
    async fn on_complete(&self, _connection: &graphex::Connection, _id: &str) {}
}

type AppSchema = async_graphql::Schema<Query, Mutation, Subscription>;

fn schema(db: &DatabaseConnection) -> AppSchema {
    async_graphql::Schema::build(Query, Mutation, Subscription::default())
        .data(db.clone()) // used by filters that need a row check (id-only mode)
        .limit_depth(32) // async-graphql's own bounds, after graphex's
        .limit_complexity(1_000) // (see "Limits")
        .finish()
}

/// "Mounting": the router with an authenticator, and the client page beside it.
fn mounted(schema: AppSchema, hub: graphex::Hub) -> axum::Router {
    graphex::router(schema, hub.clone(), MyAuthenticator)
        .merge(graphex::client_page(graphex::ClientPage::from_config(hub.config()))) // GET /graphql/client/
}

/// "Standard protocols": the builder form.
fn built(schema: AppSchema, hub: graphex::Hub) -> axum::Router {
    graphex::RouterBuilder::new(schema, hub)
        .authenticator(MyAuthenticator)
        .hooks(Hooks)
        .protocol(
            graphex::ProtocolConfig::default() // defaults shown
                .with_init_timeout(Duration::from_secs(10))
                .with_keep_alive(Some(Duration::from_secs(15)))
                .with_max_operations(100),
        )
        .build()
}

/// "Running several processes".
#[allow(dead_code)]
async fn on_redis() -> Result<graphex::Hub, graphex::layer::LayerError> {
    let layer = graphex::layer::connect("redis://127.0.0.1:6379/0", "myapp:").await?; // or "memory://"
    let hub = graphex::Hub::with_layer(graphex::Config::default(), layer);
    Ok(hub)
}

/// "Transactions": hooks inside `graphex::transaction` announce after the
/// commit; a savepoint's changes go with its own outcome.
#[allow(dead_code)]
async fn transactions(db: &DatabaseConnection) -> Result<(), sea_orm::TransactionError<DbErr>> {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    graphex::transaction(db, |txn| {
        Box::pin(async move {
            user::ActiveModel { username: Set("ann".into()), ..Default::default() }.insert(txn).await?;
            let _ = graphex::savepoint(txn, |txn| {
                Box::pin(async move {
                    user::ActiveModel { username: Set("bob".into()), ..Default::default() }.insert(txn).await?;
                    Err::<(), DbErr>(DbErr::Custom("bob changed his mind".into()))
                })
            })
            .await;
            Ok::<_, DbErr>(())
        })
    })
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = Database::connect("sqlite::memory:").await?;
    let backend = db.get_database_backend();
    let tables = Schema::new(backend);
    db.execute(&tables.create_table_from_entity(user::Entity)).await?;
    db.execute(&tables.create_table_from_entity(note::Entity)).await?;
    let hub = graphex::Hub::default(); // in-memory channel layer
    let app = if std::env::var_os("GRAPHEX_README_BUILDER").is_some() {
        built(schema(&db), hub.clone())
    } else {
        mounted(schema(&db), hub.clone())
    };
    let port: u16 = std::env::var("PORT").ok().and_then(|port| port.parse().ok()).unwrap_or(8000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("graphex README example on http://{}", listener.local_addr()?);
    // TCP_NODELAY: a frame leaves at once, not after the client's delayed ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Connect info lets graphex count anonymous clients by address. A graceful
    // stop adds `.with_graceful_shutdown(..)` and `hub.stopped()`: "Shutting down".
    axum::serve(listener, app.into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown({
            let hub = hub.clone();
            async move {
                graphex::shutdown_signal().await; // Ctrl-C or SIGTERM
                hub.shutdown(); // refuse new connections, tell the open ones
            }
        })
        .await?;
    let stopped = hub.stopped().await; // the hub's own tasks have ended
    println!("stopped: {stopped:?}");
    Ok(())
}

//! Transactions: changes are announced after the commit only, over real
//! sockets on the reference app (SQLite and PostgreSQL); and the edges of
//! issue 13 on the hub directly: savepoints begun with `graphex::savepoint`
//! keep or drop their changes with their own outcome, a nested transaction
//! graphex cannot see is refused, a write on the plain connection inside a
//! transaction is announced at once, and a committed transaction's changes
//! are all sent even if the caller's future is dropped while publishing.

use graphex::__internals::HubInternals;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use graphex::__internals::{Channel, Delivery, Subscription, SubscriptionKey};
use graphex::layer::{ChannelLayer, Inbound, LayerError};
use graphex::{Action, Config, Hub};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbErr, EntityTrait, ModelTrait, QueryFilter, Schema, TransactionTrait,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::app::{comment, user};
use crate::support::{Server, USERS_CREATE, comment_frame, each_database, new_user, user_frame, user_json};

/// A model with the hooks `#[graphex::hooks]` adds.
mod note {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "notes")]
    #[graphex(stream = "notes", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// A model whose own hooks `#[graphex::hooks]` wraps.
mod tag {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "tags")]
    #[graphex(stream = "tags", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    #[async_trait::async_trait]
    impl ActiveModelBehavior for ActiveModel {
        async fn after_save<C>(model: Model, db: &C, _insert: bool) -> Result<Model, DbErr>
        where
            C: ConnectionTrait,
        {
            let _ = db.get_database_backend();
            Ok(model)
        }

        async fn after_delete<C>(self, _db: &C) -> Result<Self, DbErr>
        where
            C: ConnectionTrait,
        {
            Ok(self)
        }
    }
}

async fn create_tables(db: &DatabaseConnection) {
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(note::Entity)).await.unwrap();
    db.execute(&schema.create_table_from_entity(tag::Entity)).await.unwrap();
}

/// In-memory SQLite: one connection (SeaORM's default for `sqlite::memory:`).
async fn memory_db() -> DatabaseConnection {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    create_tables(&db).await;
    db
}

/// A subscriber to every action of both models.
struct Listener {
    channel: Arc<Channel>,
    rx: mpsc::Receiver<Delivery>,
}

impl Listener {
    async fn new(hub: &Hub) -> Listener {
        let (channel, rx) = hub.open_channel(None).unwrap();
        for stream in ["notes", "tags"] {
            for action in Action::ALL {
                let subscription = Subscription {
                    key: SubscriptionKey { stream, action, id: None, filters: None, projection: None, cursors: false },
                    group: graphex::__internals::group::coarse(stream, action).into(),
                    filter: Default::default(),
                    row: None,
                    resume: None,
                    implied: None,
                };
                hub.add_subscription(&channel, subscription).await.unwrap();
            }
        }
        Listener { channel, rx }
    }

    /// The next change, as `"<stream> <action> <name>"`.
    async fn next(&mut self) -> String {
        let delivery = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
            .await
            .expect("a change arrives")
            .expect("channel open");
        self.describe(&delivery).await
    }

    async fn describe(&self, delivery: &Delivery) -> String {
        let mut frames = Vec::new();
        self.channel.frames(delivery, &mut frames).await;
        assert_eq!(frames.len(), 1);
        let frame: Value = serde_json::from_slice(&frames[0]).unwrap();
        let payload = &frame["payload"];
        format!(
            "{} {} {}",
            frame["stream"].as_str().unwrap(),
            payload["action"].as_str().unwrap(),
            payload["data"]["name"]
        )
    }

    /// Every change already queued (the in-memory layer delivers inline,
    /// so a publish that returned has queued its deliveries).
    async fn queued(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        while let Ok(delivery) = self.rx.try_recv() {
            seen.push(self.describe(&delivery).await);
        }
        seen
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_announce_after_commit_only() {
    each_database(|db| async move {
        let server = Server::start(db.clone(), Hub::default()).await;
        let mut ws = server.ws().await;
        ws.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        ws.arm_comment_sentinel(&server).await;

        let hub = server.hub.clone();
        let (mut ws, rows) = server
            .hub
            .scope(graphex::transaction(&db, move |txn| {
                Box::pin(async move {
                    let a = new_user("in-txn-a", "a@example.com", "acme").insert(txn).await?;
                    let b = new_user("in-txn-b", "b@example.com", "acme").insert(txn).await?;
                    // Not yet: a change published now, outside the transaction,
                    // is the first frame (the database is not touched, so this
                    // works with SQLite's single connection held by `txn`).
                    let sentinel = comment::Model { id: 999_999, post: 0, text: "sentinel".into() };
                    let prepared = graphex::__internals::prepare(&sentinel, Action::Create);
                    hub.publish(&prepared.groups, prepared.message).await;
                    ws.expect(&comment_frame("create", &json!(999_999))).await;
                    Ok::<_, DbErr>((ws, [a, b]))
                })
            }))
            .await
            .expect("transaction committed");
        for row in &rows {
            ws.expect(&user_frame("create", &user_json(row))).await;
        }
        server.comment_sentinel(&mut [&mut ws]).await;

        // Rolled back: nothing is announced, ever.
        let result = server
            .hub
            .scope(graphex::transaction(&db, |txn| {
                Box::pin(async move {
                    new_user("rolled-back", "r@example.com", "acme").insert(txn).await.map_err(|e| e.to_string())?;
                    Err::<(), String>("changed my mind".into())
                })
            }))
            .await;
        match result {
            Err(sea_orm::TransactionError::Transaction(error)) => assert_eq!(error, "changed my mind"),
            other => panic!("expected the callback's error, got {other:?}"),
        }
        let found = user::Entity::find().filter(user::Column::Username.eq("rolled-back")).one(&db).await.unwrap();
        assert!(found.is_none(), "the insert was rolled back");
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

fn note(name: &str) -> note::ActiveModel {
    note::ActiveModel { name: Set(name.into()), ..Default::default() }
}

fn tag(name: &str) -> tag::ActiveModel {
    tag::ActiveModel { name: Set(name.into()), ..Default::default() }
}

async fn note_names(db: &DatabaseConnection) -> Vec<String> {
    note::Entity::find().all(db).await.unwrap().into_iter().map(|row| row.name).collect()
}

fn published(hub: &Hub) -> u64 {
    hub.stats().published
}

#[tokio::test]
async fn a_rolled_back_savepoint_is_not_announced() {
    let db = memory_db().await;
    let hub = Hub::default();
    let mut listener = Listener::new(&hub).await;

    let inner = hub.clone();
    hub.scope(graphex::transaction(&db, move |txn| {
        Box::pin(async move {
            note("a").insert(txn).await?;
            let undone = graphex::savepoint(txn, |txn| {
                Box::pin(async move {
                    note("b").insert(txn).await?;
                    tag("b-tag").insert(txn).await?;
                    Err::<(), DbErr>(DbErr::Custom("changed my mind".into()))
                })
            })
            .await;
            assert!(matches!(undone, Err(sea_orm::TransactionError::Transaction(_))), "{undone:?}");
            note("c").insert(txn).await?;
            assert_eq!(published(&inner), 0, "nothing is sent before the commit");
            Ok::<_, DbErr>(())
        })
    }))
    .await
    .unwrap();

    assert_eq!(listener.queued().await, ["notes create \"a\"", "notes create \"c\""]);
    assert_eq!(note_names(&db).await, ["a", "c"]);
    assert!(tag::Entity::find().all(&db).await.unwrap().is_empty());
}

#[tokio::test]
async fn committed_savepoints_are_sent_after_the_outer_commit() {
    let db = memory_db().await;
    let hub = Hub::default();
    let mut listener = Listener::new(&hub).await;

    let inner = hub.clone();
    hub.scope(graphex::transaction(&db, move |txn| {
        Box::pin(async move {
            note("a").insert(txn).await?;
            graphex::savepoint(txn, |txn| {
                Box::pin(async move {
                    note("b").insert(txn).await?;
                    // Only the innermost savepoint rolls back.
                    let undone = graphex::savepoint(txn, |txn| {
                        Box::pin(async move {
                            note("c").insert(txn).await?;
                            Err::<(), DbErr>(DbErr::Custom("inner only".into()))
                        })
                    })
                    .await;
                    assert!(undone.is_err());
                    graphex::savepoint(txn, |txn| {
                        Box::pin(async move {
                            let row = note("d").insert(txn).await?;
                            row.delete(txn).await?;
                            Ok::<_, DbErr>(())
                        })
                    })
                    .await
                    .map_err(|error| DbErr::Custom(error.to_string()))?;
                    tag("e").insert(txn).await?;
                    Ok::<_, DbErr>(())
                })
            })
            .await
            .map_err(|error| DbErr::Custom(error.to_string()))?;
            note("f").insert(txn).await?;
            assert_eq!(published(&inner), 0, "a committed savepoint waits for the outer commit");
            Ok::<_, DbErr>(())
        })
    }))
    .await
    .unwrap();

    assert_eq!(
        listener.queued().await,
        [
            "notes create \"a\"",
            "notes create \"b\"",
            "notes create \"d\"",
            "notes delete \"d\"",
            "tags create \"e\"",
            "notes create \"f\"",
        ]
    );
    assert_eq!(note_names(&db).await, ["a", "b", "f"]);
}

#[tokio::test]
async fn an_outer_rollback_drops_everything() {
    let db = memory_db().await;
    let hub = Hub::default();
    let mut listener = Listener::new(&hub).await;

    let result = hub
        .scope(graphex::transaction(&db, |txn| {
            Box::pin(async move {
                note("a").insert(txn).await?;
                graphex::savepoint(txn, |txn| {
                    Box::pin(async move {
                        note("b").insert(txn).await?;
                        Ok::<_, DbErr>(())
                    })
                })
                .await
                .map_err(|error| DbErr::Custom(error.to_string()))?;
                Err::<(), DbErr>(DbErr::Custom("all of it".into()))
            })
        }))
        .await;
    assert!(matches!(result, Err(sea_orm::TransactionError::Transaction(_))), "{result:?}");
    assert_eq!(listener.queued().await, Vec::<String>::new());
    assert_eq!(published(&hub), 0);
    assert!(note_names(&db).await.is_empty());

    // Outside graphex::transaction a savepoint is a plain nested transaction.
    let txn = db.begin().await.unwrap();
    hub.scope(graphex::savepoint(&txn, |txn| {
        Box::pin(async move {
            note("outside").insert(txn).await?;
            Ok::<_, DbErr>(())
        })
    }))
    .await
    .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(listener.queued().await, ["notes create \"outside\""]);
}

fn assert_refused(error: &DbErr) {
    match error {
        DbErr::Custom(message) => assert!(message.contains("graphex::savepoint"), "{message}"),
        other => panic!("expected graphex's refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_nested_transaction_graphex_cannot_see_is_refused() {
    let db = memory_db().await;
    let hub = Hub::default();
    let mut listener = Listener::new(&hub).await;

    hub.scope(graphex::transaction(&db, |txn| {
        Box::pin(async move {
            let kept = tag("kept").insert(txn).await?;
            let nested = txn.begin().await?;
            // Default hooks, and the user's wrapped hooks.
            assert_refused(&note("raw").insert(&nested).await.unwrap_err());
            assert_refused(&tag("raw").insert(&nested).await.unwrap_err());
            assert_refused(&kept.clone().delete(&nested).await.unwrap_err());
            match graphex::savepoint(&nested, |txn| {
                Box::pin(async move {
                    note("never").insert(txn).await?;
                    Ok::<_, DbErr>(())
                })
            })
            .await
            {
                Err(sea_orm::TransactionError::Connection(DbErr::Custom(message))) => {
                    assert!(message.contains("graphex::savepoint"), "{message}");
                }
                other => panic!("expected a refused savepoint, got {other:?}"),
            }
            drop(nested); // rolls back what the refused hooks' statements did

            // SeaORM's own nested `transaction()`: the refusal rolls it back.
            let result = txn
                .transaction::<_, (), DbErr>(|nested| {
                    Box::pin(async move {
                        note("raw-2").insert(nested).await?;
                        Ok(())
                    })
                })
                .await;
            match result {
                Err(sea_orm::TransactionError::Transaction(error)) => assert_refused(&error),
                other => panic!("expected the refusal, got {other:?}"),
            }
            Ok::<_, DbErr>(())
        })
    }))
    .await
    .unwrap();

    assert_eq!(listener.queued().await, ["tags create \"kept\""]);
    assert!(note_names(&db).await.is_empty(), "every refused write was rolled back");
    assert_eq!(tag::Entity::find().all(&db).await.unwrap().len(), 1);
}

/// A temporary SQLite file, removed on drop.
struct TempDb(std::path::PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

#[tokio::test]
async fn a_write_on_the_connection_inside_a_transaction_is_announced_at_once() {
    // Two connections: the transaction holds one, the plain write takes the other.
    let file = TempDb(std::env::temp_dir().join(format!("graphex-transactions-{}.db", std::process::id())));
    let mut options = ConnectOptions::new(format!("sqlite://{}?mode=rwc", file.0.display()));
    options.max_connections(2).min_connections(1);
    let db = Database::connect(options).await.unwrap();
    create_tables(&db).await;
    let hub = Hub::default();
    let mut listener = Listener::new(&hub).await;

    let (outside, inner) = (db.clone(), hub.clone());
    let result = hub
        .scope(graphex::transaction(&db, move |txn| {
            Box::pin(async move {
                // Before the transaction writes: SQLite has one writer at a time.
                note("autocommit").insert(&outside).await?;
                assert_eq!(published(&inner), 1, "announced at once, not at the commit");
                note("in-txn").insert(txn).await?;
                Err::<(), DbErr>(DbErr::Custom("rolled back".into()))
            })
        }))
        .await;
    assert!(matches!(result, Err(sea_orm::TransactionError::Transaction(_))), "{result:?}");
    assert_eq!(listener.queued().await, ["notes create \"autocommit\""]);
    assert_eq!(note_names(&db).await, ["autocommit"]);
    db.close().await.unwrap();
}

/// A layer that delivers like the in-memory one, but only once a permit
/// is given for each publish; it says when a publish starts waiting.
struct GateLayer {
    inbound: std::sync::Mutex<Option<Inbound>>,
    permits: Arc<Semaphore>,
    waiting: Arc<Notify>,
}

#[async_trait::async_trait]
impl ChannelLayer for GateLayer {
    fn start(&self, inbound: Inbound) {
        *self.inbound.lock().unwrap() = Some(inbound);
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        self.publish_all(&[group.to_owned()], message).await
    }

    async fn publish_all(&self, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.waiting.notify_one();
        self.permits.acquire().await.expect("semaphore open").forget();
        let inbound = self.inbound.lock().unwrap().clone().expect("started");
        for group in groups {
            inbound.deliver(group, message.clone());
        }
        Ok(())
    }

    fn listen(&self, _group: &str) {}

    fn unlisten(&self, _group: &str) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_changes_are_sent_even_if_the_caller_goes_away() {
    let db = memory_db().await;
    let permits = Arc::new(Semaphore::new(0));
    let waiting = Arc::new(Notify::new());
    let layer = GateLayer { inbound: std::sync::Mutex::default(), permits: permits.clone(), waiting: waiting.clone() };
    let hub = Hub::with_layer(Config::default(), Arc::new(layer));
    let mut listener = Listener::new(&hub).await;

    let caller = tokio::spawn({
        let (hub, db) = (hub.clone(), db.clone());
        async move {
            hub.scope(graphex::transaction(&db, |txn| {
                Box::pin(async move {
                    for name in ["one", "two", "three"] {
                        note(name).insert(txn).await?;
                    }
                    Ok::<_, DbErr>(())
                })
            }))
            .await
        }
    });
    // The first publish waits: the transaction has committed.
    tokio::time::timeout(Duration::from_secs(5), waiting.notified()).await.expect("a publish starts");
    assert_eq!(note_names(&db).await, ["one", "two", "three"]);
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled(), "the caller went away");

    permits.add_permits(3);
    for name in ["one", "two", "three"] {
        assert_eq!(listener.next().await, format!("notes create \"{name}\""));
    }
}

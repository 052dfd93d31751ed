//! How changes are announced: `#[graphex::hooks]` keeps the user's own hook
//! bodies and announces what they return (saves and deletes through
//! ActiveModel reach the hub); bulk inserts run no hooks and are announced by
//! hand with `announce_many`, over real sockets on the reference app.

use graphex::__internals::HubInternals;
use std::sync::atomic::{AtomicUsize, Ordering};

use graphex::__internals::{Subscription, SubscriptionKey};
use graphex::{Action, Hub};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, Database, EntityTrait, ModelTrait, QueryFilter,
    QueryOrder, Schema,
};
use serde_json::{Value, json};

use crate::app::user;
use crate::support::{Server, USERS_CREATE, each_database, new_user, user_frame, user_json};

static USER_HOOK_RUNS: AtomicUsize = AtomicUsize::new(0);

mod item {
    use super::USER_HOOK_RUNS;
    use sea_orm::entity::prelude::*;
    use std::sync::atomic::Ordering;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "items")]
    #[graphex(stream = "items", serialize_data = true)]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
        pub created: Option<DateTime>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    #[async_trait::async_trait]
    impl ActiveModelBehavior for ActiveModel {
        /// The user's own hook: upper-cases the name in what it returns.
        async fn after_save<C>(mut model: Model, _db: &C, _insert: bool) -> Result<Model, DbErr>
        where
            C: ConnectionTrait,
        {
            USER_HOOK_RUNS.fetch_add(1, Ordering::SeqCst);
            model.name = model.name.to_uppercase();
            Ok(model)
        }
    }
}

async fn frame(
    rx: &mut tokio::sync::mpsc::Receiver<graphex::__internals::Delivery>,
    channel: &graphex::__internals::Channel,
) -> Value {
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("a change arrives")
        .expect("channel open");
    let mut frames = Vec::new();
    channel.frames(&delivery, &mut frames).await;
    assert_eq!(frames.len(), 1);
    serde_json::from_slice(&frames[0]).unwrap()
}

#[tokio::test]
async fn user_hooks_run_and_changes_are_announced() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(item::Entity)).await.unwrap();

    let hub = Hub::default();
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    for action in Action::ALL {
        let subscription = Subscription {
            key: SubscriptionKey { stream: "items", action, id: None, filters: None, projection: None, cursors: false },
            group: graphex::__internals::group::coarse("items", action).into(),
            filter: Default::default(),
            row: None,
            resume: None,
            implied: None,
        };
        hub.add_subscription(&channel, subscription).await.unwrap();
    }

    let created = chrono::NaiveDate::from_ymd_opt(2024, 5, 1).unwrap().and_hms_opt(8, 0, 0).unwrap();
    let before = USER_HOOK_RUNS.load(Ordering::SeqCst);
    let row = hub
        .scope(
            item::ActiveModel { name: Set("widget".into()), created: Set(Some(created)), ..Default::default() }
                .insert(&db),
        )
        .await
        .unwrap();
    assert_eq!(row.name, "WIDGET", "the user's after_save still shapes the result");
    assert_eq!(USER_HOOK_RUNS.load(Ordering::SeqCst), before + 1);
    assert_eq!(
        frame(&mut rx, &channel).await,
        json!({"stream": "items", "payload": {"action": "create", "model": "item",
            "data": {"id": 1, "name": "WIDGET", "created": "2024-05-01T08:00:00"}}})
    );

    let mut active: item::ActiveModel = row.clone().into();
    active.name = Set("gadget".into());
    hub.scope(active.update(&db)).await.unwrap();
    assert_eq!(frame(&mut rx, &channel).await["payload"]["action"], "update");

    hub.scope(row.delete(&db)).await.unwrap();
    let deleted = frame(&mut rx, &channel).await;
    assert_eq!(deleted["payload"]["action"], "delete");
    assert_eq!(deleted["payload"]["data"]["id"], 1);

    // Deleting through an ActiveModel holding only the key: the id is still announced.
    let again = item::ActiveModel { name: Set("x".into()), ..Default::default() }.insert(&db).await.unwrap();
    while rx.try_recv().is_ok() {} // announced outside any scope: no hub, nothing queued
    let key_only = item::ActiveModel { id: Set(again.id), ..Default::default() };
    hub.scope(key_only.delete(&db)).await.unwrap();
    let deleted = frame(&mut rx, &channel).await;
    assert_eq!(deleted["payload"]["data"], json!({"id": again.id}));
    assert_eq!(item::Entity::find().all(&db).await.unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_inserts_are_announced_by_hand() {
    // Under capture (the last variant) they need no announcing.
    each_database(|db| async move {
        let server = Server::start(db.clone(), Hub::default()).await;
        let mut ws = server.ws().await;
        ws.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        ws.arm_comment_sentinel(&server).await;

        let names = ["bulk-1", "bulk-2", "bulk-3"];
        server
            .hub
            .scope(
                user::Entity::insert_many(names.map(|name| new_user(name, &format!("{name}@example.com"), "acme")))
                    .exec(&db),
            )
            .await
            .expect("inserted");
        let rows = user::Entity::find()
            .filter(user::Column::Username.is_in(names))
            .order_by_asc(user::Column::Id)
            .all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        if crate::support::databases::capturing() {
            // Captured from the log: no announcing by hand (it would be a
            // second copy).
            for row in &rows {
                ws.expect(&user_frame("create", &user_json(row))).await;
            }
            server.comment_sentinel(&mut [&mut ws]).await;
            return;
        }
        // insert_many runs no hooks.
        server.comment_sentinel(&mut [&mut ws]).await;
        server.hub.scope(graphex::announce_many(&rows, Action::Create)).await;
        for row in &rows {
            ws.expect(&user_frame("create", &user_json(row))).await;
        }
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

//! Change capture from PostgreSQL's log (issue 17, in progress): writes
//! that never pass through SeaORM's hooks (raw SQL, a bulk statement)
//! reach subscribers after their commit, in commit order (a 1 000-row
//! statement as 1 000 changes), each row as the
//! hooks would have announced it; a rolled-back transaction sends nothing;
//! the slot's position is confirmed once published, so a new capture
//! session starts after it. On a cluster of the test's own with
//! `wal_level=logical` (`support::logical`).

use std::time::Duration;

use graphex::__internals::{Delivery, HubInternals, PostgresCapture, ReplicationTarget, Subscription, SubscriptionKey};
use graphex::{Action, Hub};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Schema, Statement, TransactionTrait};
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::TIMEOUT;
use crate::support::logical::Cluster;
use crate::support::standard::{Client, Proto};

mod item {
    use sea_orm::entity::prelude::*;

    /// Full payload with an index field: its table gets REPLICA IDENTITY FULL.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "items")]
    #[graphex(stream = "items", serialize_data = true, index_fields(tenant))]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i32,
        pub name: String,
        pub big: String,
        pub tenant: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    #[graphex::hooks]
    impl ActiveModelBehavior for ActiveModel {}
}

/// A subscriber to every action of `items`, through the coarse groups.
async fn watch(hub: &Hub) -> mpsc::Receiver<Delivery> {
    let (channel, rx) = hub.open_channel(None).expect("channel");
    for action in Action::ALL {
        let key =
            SubscriptionKey { stream: "items", action, id: None, filters: None, projection: None, cursors: false };
        let group = graphex::__internals::group::coarse("items", action);
        let subscription = Subscription { key, group, filter: Default::default(), row: None, resume: None };
        hub.add_subscription(&channel, subscription).await.expect("subscribed");
    }
    std::mem::forget(channel); // kept open for the test's length
    rx
}

/// The next change: (action, id, values).
async fn next(rx: &mut mpsc::Receiver<Delivery>) -> (Action, Json, Json) {
    let delivery = tokio::time::timeout(TIMEOUT * 2, rx.recv()).await.expect("a change in time").expect("open");
    let event = delivery.event().expect("a change").clone();
    let values = event.change.values.clone().map(Json::Object).unwrap_or(Json::Null);
    (event.change.action, event.change.pk.clone(), values)
}

fn target(cluster: &Cluster) -> ReplicationTarget {
    ReplicationTarget {
        host: "127.0.0.1".into(),
        port: cluster.port,
        user: "postgres".into(),
        password: String::new(),
        database: "postgres".into(),
    }
}

fn start(hub: &Hub, cluster: &Cluster) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let capture = PostgresCapture::new(hub.clone(), target(cluster)).table::<item::Model>();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { capture.run(stop).await.expect("capture runs") }
    });
    (stop, task)
}

async fn sql(db: &DatabaseConnection, statement: &str) {
    db.execute_unprepared(statement).await.unwrap_or_else(|error| panic!("{statement}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_from_anywhere_reach_subscribers_in_commit_order() {
    let Some(cluster) = Cluster::start("change capture") else { return };
    let db = Database::connect(cluster.url()).await.expect("the test's cluster answers");
    let builder = Schema::new(db.get_database_backend());
    db.execute(&builder.create_table_from_entity(item::Entity)).await.expect("table created");
    // Room for the 1 000-row statement's changes, read after it.
    let hub = Hub::new(graphex::Config::default().with_queue_capacity(4096));
    let mut rx = watch(&hub).await;
    PostgresCapture::new(hub.clone(), target(&cluster)).table::<item::Model>().prepare(&db).await.expect("prepared");
    let (stop, task) = start(&hub, &cluster);

    // No hooks anywhere: raw SQL, as another service or a migration writes.
    sql(&db, "INSERT INTO items VALUES (1, 'one', repeat('x', 100000), 't1'), (2, 'two', '', 't2')").await;
    sql(&db, "BEGIN; INSERT INTO items VALUES (3, 'rolled back', '', 't1'); ROLLBACK").await;
    // Leaves the TOASTed `big` alone: pgoutput sends it only in the old row.
    sql(&db, "UPDATE items SET name = 'uno' WHERE id = 1").await;
    sql(&db, "DELETE FROM items WHERE id = 2").await;
    sql(&db, "INSERT INTO items SELECT g, 'bulk', '', 't3' FROM generate_series(100, 1099) g").await;

    let big = "x".repeat(100_000);
    let (action, id, values) = next(&mut rx).await;
    assert_eq!((action, id), (Action::Create, json!(1)));
    assert_eq!(values, json!({"id": 1, "name": "one", "big": big, "tenant": "t1"}));
    assert_eq!(next(&mut rx).await.1, json!(2));
    let (action, _, values) = next(&mut rx).await;
    assert_eq!(action, Action::Update, "the rolled-back insert sent nothing");
    assert_eq!(values, json!({"id": 1, "name": "uno", "big": big, "tenant": "t1"}), "a whole row");
    let (action, id, values) = next(&mut rx).await;
    assert_eq!((action, id), (Action::Delete, json!(2)));
    assert_eq!(values["name"], json!("two"), "a delete carries the whole old row");
    for expected in 100..1100 {
        let (action, id, _) = next(&mut rx).await;
        assert_eq!((action, id), (Action::Create, json!(expected)), "one statement, 1 000 changes, in order");
    }

    // Saved through SeaORM with hooks, in the hub's scope: the hooks do not
    // announce a captured model, the log brings it once.
    let saved = item::ActiveModel {
        id: sea_orm::Set(2450),
        name: sea_orm::Set("hooked".into()),
        big: sea_orm::Set(String::new()),
        tenant: sea_orm::Set("t1".into()),
    };
    hub.scope(async { sea_orm::ActiveModelTrait::insert(saved, &db).await.expect("saved") }).await;
    sql(&db, "INSERT INTO items VALUES (2451, 'sentinel', '', 't1')").await;
    assert_eq!(next(&mut rx).await.1, json!(2450));
    assert_eq!(next(&mut rx).await.1, json!(2451), "the hooks announced nothing more");
    let before_commit = committed(&db, "INSERT INTO items VALUES (2452, 'last', '', 't1')").await;
    assert_eq!(next(&mut rx).await.1, json!(2452));

    // Confirmed once published: a new session starts after the last insert.
    confirmed_past(&db, &before_commit).await;
    stop.cancel();
    task.await.expect("capture stopped");
    sql(&db, "INSERT INTO items VALUES (2500, 'after', '', 't1')").await;
    let (_stop, _task) = start(&hub, &cluster);
    assert_eq!(next(&mut rx).await.1, json!(2500), "nothing confirmed is sent again");
}

/// Runs `statement` in a transaction; returns a log position before its
/// commit (its commit ends after it).
async fn committed(db: &DatabaseConnection, statement: &str) -> String {
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared(statement).await.unwrap_or_else(|error| panic!("{statement}: {error}"));
    let lsn = txn
        .query_one_raw(Statement::from_string(
            txn.get_database_backend(),
            "SELECT pg_current_wal_insert_lsn()::text AS lsn",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "lsn")
        .unwrap();
    txn.commit().await.unwrap();
    lsn
}

/// Waits until the slot's confirmed position is past `lsn`.
async fn confirmed_past(db: &DatabaseConnection, lsn: &str) {
    let confirmed = format!(
        "SELECT confirmed_flush_lsn > '{lsn}'::pg_lsn AS done FROM pg_replication_slots WHERE slot_name = 'graphex_capture'"
    );
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    loop {
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), confirmed.clone())).await;
        if row.unwrap().unwrap().try_get::<bool>("", "done").unwrap() {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot's position was not confirmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two processes capture (each its own hub and in-memory layer): one reads
/// the slot, the other stands by; when the reader stops, the other takes
/// over from the confirmed position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_reads_the_slot_and_another_takes_over() {
    let Some(cluster) = Cluster::start("capture leader election") else { return };
    let db = Database::connect(cluster.url()).await.expect("the test's cluster answers");
    let builder = Schema::new(db.get_database_backend());
    db.execute(&builder.create_table_from_entity(item::Entity)).await.expect("table created");
    let (hub_a, hub_b) = (Hub::default(), Hub::default());
    let (mut on_a, mut on_b) = (watch(&hub_a).await, watch(&hub_b).await);
    PostgresCapture::new(hub_a.clone(), target(&cluster)).table::<item::Model>().prepare(&db).await.unwrap();
    let (stop_a, task_a) = start(&hub_a, &cluster);
    sql(&db, "INSERT INTO items VALUES (1, 'one', '', 't1')").await;
    assert_eq!(next(&mut on_a).await.1, json!(1), "A reads the slot");
    let (_stop_b, _task_b) = start(&hub_b, &cluster);
    let lsn = committed(&db, "INSERT INTO items VALUES (2, 'two', '', 't1')").await;
    assert_eq!(next(&mut on_a).await.1, json!(2));
    confirmed_past(&db, &lsn).await;
    stop_a.cancel();
    task_a.await.expect("A stopped");
    sql(&db, "INSERT INTO items VALUES (3, 'three', '', 't1')").await;
    // B never read while A did: its first change is the first after A's last.
    assert_eq!(next(&mut on_b).await.1, json!(3), "B took over from the confirmed position");
}

/// The reference app on the test's cluster, users and comments captured:
/// one transaction of raw SQL on two models reaches a two-channel client
/// (and a native graphql-transport-ws subscriber) through its filters (a full-payload user by tenant, an id-only comment
/// by post, decided on the row read back), in commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sql_on_two_models_reaches_a_socket_through_its_filters() {
    let Some(cluster) = Cluster::start("capture over a socket") else { return };
    let db = crate::app::connect(&cluster.url(), None).await;
    let hub = Hub::default();
    let capture = PostgresCapture::new(hub.clone(), target(&cluster))
        .table::<crate::app::user::Model>()
        .table::<crate::app::comment::Model>();
    capture.prepare(&db).await.expect("prepared");
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { capture.run(stop).await.expect("capture runs") }
    });
    let server = crate::support::Server::start(db.clone(), hub.clone()).await;
    let mut ws = server.ws().await;
    let create = "action: CREATE, operation: SUBSCRIBE";
    ws.subscribe_ok(&server.http, "userSubscription", create, Some(json!({"tenant": "t1"}))).await;
    ws.subscribe_ok(&server.http, "commentSubscription", create, Some(json!({"post": 7}))).await;
    // And a native subscriber over graphql-transport-ws.
    let mut native = Client::connected(server.http.addr, Proto::Transport, json!({})).await;
    native.start("1", r#"subscription { userChanges(action: CREATE, filters: {tenant: "t1"}) { id data } }"#).await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while hub.channel_count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the native subscription in time");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    sql(
        &db,
        "BEGIN; \
         INSERT INTO users (id, username, email, tenant) VALUES (1, 'ann', 'a@example.com', 't1'), \
             (2, 'bob', 'b@example.com', 't2'); \
         INSERT INTO comments (id, post, text) VALUES (10, 7, 'hi'), (11, 8, 'elsewhere'); \
         COMMIT",
    )
    .await;
    let ann = json!({"id": 1, "username": "ann", "email": "a@example.com", "tenant": "t1"});
    ws.expect(&crate::support::user_frame("create", &ann)).await;
    ws.expect(&crate::support::comment_frame("create", &json!(10))).await;
    // Bob (t2) and comment 11 (post 8) are filtered out: the next frame is this one.
    sql(&db, "INSERT INTO users (id, username, email, tenant) VALUES (3, 'cy', 'c@example.com', 't1')").await;
    let cy = json!({"id": 3, "username": "cy", "email": "c@example.com", "tenant": "t1"});
    ws.expect(&crate::support::user_frame("create", &cy)).await;
    for (id, user) in [(1, ann), (3, cy)] {
        let message = native.json().await;
        assert_eq!(message["id"], "1", "{message}");
        assert_eq!(message["payload"]["data"]["userChanges"], json!({"id": id, "data": user}), "{message}");
    }
    stop.cancel();
}

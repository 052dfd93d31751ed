//! Change capture from PostgreSQL's log (issue 17, in progress): writes
//! that never pass through SeaORM's hooks (raw SQL, a bulk statement)
//! reach subscribers after their commit, in commit order (a 1 000-row
//! insert, and an update of them, as 1 000 changes each), each row as the
//! hooks would have announced it; a rolled-back transaction sends nothing;
//! the slot's position is confirmed once published, so a new capture
//! session starts after it. On a cluster of the test's own with
//! `wal_level=logical` (`support::logical`).

use std::time::Duration;

use graphex::__internals::{Delivery, HubInternals, Subscription, SubscriptionKey};
use graphex::capture::{PostgresCapture, ReplicationTarget, TlsMode};
use graphex::{Action, Hub};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Schema, Statement};
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
        let subscription = Subscription {
            key,
            group: group.into(),
            filter: Default::default(),
            row: None,
            resume: None,
            implied: None,
        };
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
        tls: TlsMode::Disable,
        root_cert: None,
    }
}

/// Runs `capture` in a task until the token is cancelled; the task panics
/// (and so its join fails) if capture stopped with an error.
fn spawn_run(capture: PostgresCapture) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { capture.run(stop).await.expect("capture runs") }
    });
    (stop, task)
}

/// Captures `items` into `hub` with the default slot.
fn start(hub: &Hub, cluster: &Cluster) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    spawn_run(PostgresCapture::new(hub.clone(), target(cluster)).table::<item::Model>())
}

/// The test cluster's `postgres` database, with the `items` table.
async fn items_db(cluster: &Cluster) -> DatabaseConnection {
    let db = Database::connect(cluster.url()).await.expect("the test's cluster answers");
    db.execute(&Schema::new(db.get_database_backend()).create_table_from_entity(item::Entity))
        .await
        .expect("table created");
    db
}

async fn sql(db: &DatabaseConnection, statement: &str) {
    db.execute_unprepared(statement).await.unwrap_or_else(|error| panic!("{statement}: {error}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_writes_from_anywhere_reach_subscribers_in_commit_order() {
    let Some(cluster) = Cluster::start("change capture") else { return };
    let db = items_db(&cluster).await;
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
    // UPDATE ... WHERE on the 1 000: 1 000 updates, in the statement's
    // (sequential scan's) order, each with its whole row.
    sql(&db, "UPDATE items SET name = 'bulk updated' WHERE id BETWEEN 100 AND 1099").await;
    for expected in 100..1100 {
        let (action, id, values) = next(&mut rx).await;
        assert_eq!((action, id), (Action::Update, json!(expected)), "one statement, 1 000 updates, in order");
        assert_eq!(values["name"], json!("bulk updated"));
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
    let after_commit = committed(&db, "INSERT INTO items VALUES (2452, 'last', '', 't1')").await;
    assert_eq!(next(&mut rx).await.1, json!(2452));

    // Confirmed once published: a new session starts after the last insert.
    confirmed_past(&db, &after_commit).await;
    stop.cancel();
    task.await.expect("capture stopped");
    sql(&db, "INSERT INTO items VALUES (2500, 'after', '', 't1')").await;
    let (_stop, _task) = start(&hub, &cluster);
    assert_eq!(next(&mut rx).await.1, json!(2500), "nothing confirmed is sent again");
}

/// Runs `statement`; returns the log's end just after its commit.
async fn committed(db: &DatabaseConnection, statement: &str) -> String {
    sql(db, statement).await;
    db.query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT pg_current_wal_lsn()::text AS lsn"))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "lsn")
        .unwrap()
}

/// Waits until the slot's confirmed position is at `lsn` or past it.
async fn confirmed_past(db: &DatabaseConnection, lsn: &str) {
    let confirmed = format!(
        "SELECT confirmed_flush_lsn >= '{lsn}'::pg_lsn AS done FROM pg_replication_slots WHERE slot_name = 'graphex_capture'"
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
    let db = items_db(&cluster).await;
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
    let (stop, _task) = spawn_run(capture);
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

/// One write of the parity scenario, as the hooks see it (SeaORM, in the
/// hub's scope) and as capture sees it (raw SQL).
enum Write {
    Note(i32, &'static str, &'static str),
    Message(i32, &'static str, i32, &'static str),
    MessageText(i32, &'static str),
    MessageRoom(i32, i32),
    DeleteMessage(i32),
}

impl Write {
    fn sql(&self) -> String {
        match self {
            Write::Note(id, owner, text) => {
                format!("INSERT INTO notes (id, owner, text) VALUES ({id}, '{owner}', '{text}')")
            }
            Write::Message(id, tenant, room, text) => {
                format!("INSERT INTO messages (id, tenant, room, text) VALUES ({id}, '{tenant}', {room}, '{text}')")
            }
            Write::MessageText(id, text) => format!("UPDATE messages SET text = '{text}' WHERE id = {id}"),
            Write::MessageRoom(id, room) => format!("UPDATE messages SET room = {room} WHERE id = {id}"),
            Write::DeleteMessage(id) => format!("DELETE FROM messages WHERE id = {id}"),
        }
    }

    async fn save(&self, db: &DatabaseConnection) {
        use crate::app::{message, note};
        use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel, ModelTrait, Set};
        let message = |id: i32| async move { message::Entity::find_by_id(id).one(db).await.unwrap().expect("row") };
        match *self {
            Write::Note(id, owner, text) => {
                let row = note::ActiveModel { id: Set(id), owner: Set(owner.into()), text: Set(text.into()) };
                row.insert(db).await.expect("saved");
            }
            Write::Message(id, tenant, room, text) => {
                let row = message::ActiveModel {
                    id: Set(id),
                    tenant: Set(tenant.into()),
                    room: Set(room),
                    text: Set(text.into()),
                };
                row.insert(db).await.expect("saved");
            }
            Write::MessageText(id, text) => {
                let mut row = message(id).await.into_active_model();
                row.text = Set(text.into());
                row.update(db).await.expect("saved");
            }
            Write::MessageRoom(id, room) => {
                let mut row = message(id).await.into_active_model();
                row.room = Set(room);
                row.update(db).await.expect("saved");
            }
            Write::DeleteMessage(id) => {
                message(id).await.delete(db).await.expect("deleted");
            }
        }
    }
}

/// What each subscriber of the parity scenario receives, up to its frame
/// carrying the text "last": alice's notes (scoped to their owner), alice's
/// messages of room 1 (indexed by tenant and room, every action), bob's
/// messages without a room (the coarse group, scoped to his tenant), eve's
/// room 1 (another tenant).
async fn parity_scenario(cluster: &Cluster, database: &str, capture: bool) -> Vec<Vec<Json>> {
    let admin = Database::connect(cluster.url()).await.expect("the test's cluster answers");
    sql(&admin, &format!("CREATE DATABASE {database}")).await;
    let url = format!("{}/{database}", cluster.url().rsplit_once('/').expect("a path").0);
    let db = crate::app::connect(&url, None).await;
    sql(
        &db,
        "INSERT INTO users (id, username, email, tenant) VALUES (1, 'alice', 'a@x', 'acme'), (2, 'bob', 'b@x', 'acme'), \
         (3, 'eve', 'e@x', 'globex')",
    )
    .await;
    let hub = Hub::default();
    let mut running = None;
    if capture {
        let target = ReplicationTarget::from_url(&url).expect("a target");
        let capture = PostgresCapture::new(hub.clone(), target)
            .slot(database)
            .publication(database)
            .table::<crate::app::note::Model>()
            .table::<crate::app::message::Model>();
        capture.prepare(&db).await.expect("prepared");
        running = Some(spawn_run(capture));
    }
    let server = crate::support::Server::start(db.clone(), hub.clone()).await;
    let all = ["CREATE", "UPDATE", "DELETE"].map(|action| format!("action: {action}, operation: SUBSCRIBE"));
    let alice_notes = server.ws_as("alice").await;
    alice_notes.subscribe_ok(&server, "noteSubscription", &all[0], None).await;
    let alice_room = server.ws_as("alice").await;
    let bob_all = server.ws_as("bob").await;
    let eve_room = server.ws_as("eve").await;
    for args in &all {
        alice_room.subscribe_ok(&server, "messageSubscription", args, Some(json!({"room": 1}))).await;
        bob_all.subscribe_ok(&server, "messageSubscription", args, None).await;
        eve_room.subscribe_ok(&server, "messageSubscription", args, Some(json!({"room": 1}))).await;
    }
    let writes = [
        Write::Note(1, "alice", "a1"),
        Write::Note(2, "bob", "b1"),
        Write::Message(1, "acme", 1, "m1"),
        Write::Message(2, "acme", 2, "m2"),
        Write::Message(3, "globex", 1, "g1"),
        Write::MessageText(1, "m1 edited"),
        Write::MessageRoom(2, 1),
        Write::DeleteMessage(1),
        Write::Note(3, "alice", "last"),
        Write::Message(4, "acme", 1, "last"),
        Write::Message(5, "globex", 1, "last"),
    ];
    for write in &writes {
        if capture {
            sql(&db, &write.sql()).await;
        } else {
            hub.scope(write.save(&db)).await;
        }
    }
    let mut received = Vec::new();
    for mut ws in [alice_notes, alice_room, bob_all, eve_room] {
        let mut frames = Vec::new();
        loop {
            let frame = ws.next_json().await;
            let last = frame.to_string().contains("\"last\"");
            frames.push(frame);
            if last {
                break;
            }
        }
        received.push(frames);
    }
    if let Some((stop, _task)) = running {
        stop.cancel();
    }
    received
}

/// Exactly the changes the hooks would have produced: the same writes made
/// through SeaORM's hooks and made as raw SQL under capture reach each
/// subscriber as the same frames, through scopes, indexed groups (a row
/// moving into a room, a delete reaching its room's group from the whole
/// old row) and the coarse group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_raw_sql_gives_the_frames_hooked_saves_give() {
    let Some(cluster) = Cluster::start("capture parity with hooks") else { return };
    let hooked = parity_scenario(&cluster, "hooked", false).await;
    let captured = parity_scenario(&cluster, "captured", true).await;
    let texts = |frames: &Vec<Json>| -> Vec<String> {
        frames
            .iter()
            .map(|frame| format!("{} {}", frame["payload"]["action"], frame["payload"]["data"]["text"]))
            .collect()
    };
    // The hooks' own behaviour, so that two equal wrong answers fail too.
    assert_eq!(texts(&hooked[0]), ["\"create\" \"a1\"", "\"create\" \"last\""], "{:?}", hooked[0]);
    assert_eq!(hooked[3].len(), 2, "eve: globex room 1 only: {:?}", hooked[3]);
    for (who, (hooked, captured)) in
        ["alice's notes", "alice's room 1", "bob's tenant", "eve's room 1"].iter().zip(hooked.iter().zip(&captured))
    {
        assert_eq!(captured, hooked, "{who}");
    }
}

/// A server or role that cannot be captured is refused at once with what
/// to do, never retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfit_server_or_role_is_refused_with_what_to_do() {
    let Some(replica) = Cluster::start_with("capture refusals", "replica") else { return };
    let db = Database::connect(replica.url()).await.expect("the test's cluster answers");
    let hub = Hub::default();
    let error = PostgresCapture::new(hub.clone(), target(&replica)).prepare(&db).await.expect_err("refused");
    assert!(
        matches!(error, graphex::capture::CaptureRunError::WalLevel { ref found } if found == "replica"),
        "{error}"
    );
    assert!(error.to_string().contains("ALTER SYSTEM SET wal_level = logical"), "{error}");
    drop(replica);

    let Some(cluster) = Cluster::start("capture refusals") else { return };
    let db = Database::connect(cluster.url()).await.expect("the test's cluster answers");
    sql(&db, "CREATE ROLE plain LOGIN").await;
    let plain = ReplicationTarget { user: "plain".into(), ..target(&cluster) };
    let capture = PostgresCapture::new(hub.clone(), plain.clone()).table::<item::Model>();
    let error = capture.prepare(&db).await.expect_err("refused");
    assert!(matches!(error, graphex::capture::CaptureRunError::Privilege { ref role } if role == "plain"), "{error}");
    assert!(error.to_string().contains("ALTER ROLE plain REPLICATION"), "{error}");
    // Run without the check: the server's refusal stops it.
    let run = |capture: PostgresCapture| async move {
        tokio::time::timeout(TIMEOUT, capture.run(CancellationToken::new())).await.expect("stopped in time")
    };
    let error = run(capture).await.expect_err("refused");
    assert!(error.to_string().contains("replication"), "{error}");
    // A slot nobody prepared.
    let error = run(PostgresCapture::new(hub.clone(), target(&cluster)).slot("never_made")).await.expect_err("refused");
    assert!(error.to_string().contains("never_made"), "{error}");
    // A role with the REPLICATION attribute passes the check.
    sql(&db, "ALTER ROLE plain REPLICATION").await;
    db.execute(&Schema::new(db.get_database_backend()).create_table_from_entity(item::Entity)).await.unwrap();
    PostgresCapture::new(hub, plain).table::<item::Model>().prepare(&db).await.expect("a replication role may");
}

/// The monitor counts what capture did; a slot whose tables are quiet
/// still follows the log other tables fill (confirmed on keep-alives), so
/// it holds no WAL back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_counted_and_a_quiet_slot_follows_the_log() {
    let Some(cluster) = Cluster::start("capture progress") else { return };
    let db = items_db(&cluster).await;
    let hub = Hub::default();
    let mut rx = watch(&hub).await;
    let capture = PostgresCapture::new(hub.clone(), target(&cluster)).table::<item::Model>();
    capture.prepare(&db).await.expect("prepared");
    let monitor = capture.monitor();
    assert_eq!(monitor.stats(), graphex::capture::CaptureStats::default());
    let (stop, task) = spawn_run(capture);
    sql(&db, "INSERT INTO items VALUES (1, 'one', '', 't1'), (2, 'two', '', 't1')").await;
    sql(&db, "UPDATE items SET name = 'uno' WHERE id = 1").await;
    for _ in 0..3 {
        next(&mut rx).await;
    }
    // Counted once published and confirmed, just after the delivery.
    crate::support::standard::wait_for("the second transaction counted", || monitor.stats().transactions == 2).await;
    let stats = monitor.stats();
    assert!(stats.leader, "{stats:?}");
    assert_eq!((stats.sessions, stats.transactions, stats.changes, stats.refused), (1, 2, 3, 0), "{stats:?}");
    assert!(stats.confirmed_lsn > 0 && stats.server_lsn >= stats.confirmed_lsn, "{stats:?}");

    sql(&db, "CREATE TABLE noise (n int); INSERT INTO noise SELECT generate_series(1, 1000)").await;
    let lsn = committed(&db, "INSERT INTO noise VALUES (0)").await;
    confirmed_past(&db, &lsn).await;
    assert_eq!(monitor.stats().transactions, 2, "the other table's writes are not changes");

    // The hub's metrics report the running capture's lag, by slot, until it stops.
    let lag = |text: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix("graphex_capture_lag_bytes{slot=\"graphex_capture\"} "))
            .map(|value| value.parse::<u64>().expect("a whole number of bytes"))
    };
    let metrics = graphex::render_metrics(&hub);
    assert!(lag(&metrics).is_some(), "{metrics}");
    stop.cancel();
    task.await.expect("capture stopped cleanly");
    let metrics = graphex::render_metrics(&hub);
    assert_eq!(lag(&metrics), None, "{metrics}");
}

/// TLS as libpq does it: `verify-full` against the cluster's own
/// certificate and `require` capture; `verify-full` against the public
/// roots (which never signed that certificate) is refused at once, not
/// retried, and never falls back to plain TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_speaks_tls_and_refuses_a_certificate_it_cannot_trust() {
    let Some(cluster) = Cluster::start_tls("capture over TLS") else { return };
    let db = items_db(&cluster).await;
    let cert = cluster.certificate().display().to_string();
    let url = |query: &str| format!("{}?{query}", cluster.url());
    for (n, query) in
        [format!("sslmode=verify-full&sslrootcert={cert}"), "sslmode=require".to_owned()].iter().enumerate()
    {
        let hub = Hub::default();
        let mut rx = watch(&hub).await;
        let target = ReplicationTarget::from_url(&url(query)).expect("a target");
        // A slot each: a stopped session's last confirmation may not have
        // reached the server, and a new hub would get its row again.
        let slot = format!("tls_{n}");
        let capture = PostgresCapture::new(hub.clone(), target).slot(&slot).publication(&slot).table::<item::Model>();
        capture.prepare(&db).await.expect("prepared");
        let (stop, task) = spawn_run(capture);
        let id = n as i32 + 1;
        sql(&db, &format!("INSERT INTO items VALUES ({id}, 'tls', '', 't1')")).await;
        assert_eq!(next(&mut rx).await.1, json!(id), "{query}");
        let encrypted = "SELECT bool_and(ssl) AS tls FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) \
                         WHERE backend_type = 'walsender'";
        let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), encrypted)).await.unwrap();
        assert_eq!(row.unwrap().try_get::<Option<bool>>("", "tls").unwrap(), Some(true), "{query}: over TLS");
        stop.cancel();
        task.await.expect("stopped cleanly");
    }
    let untrusted = ReplicationTarget::from_url(&url("sslmode=verify-full")).expect("a target");
    let capture = PostgresCapture::new(Hub::default(), untrusted).table::<item::Model>();
    let error = tokio::time::timeout(TIMEOUT, capture.run(CancellationToken::new()))
        .await
        .expect("refused in time")
        .expect_err("an untrusted certificate is refused");
    assert!(matches!(error, graphex::capture::CaptureRunError::Refused(_)), "{error}");
}

/// Processes starting together all prepare (every process calls it at
/// start): they race to create the publication and the slot, and all
/// succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_all_prepare() {
    let Some(cluster) = Cluster::start("capture prepared by many at once") else { return };
    let db = items_db(&cluster).await;
    let prepares = (0..6).map(|_| {
        let (db, target) = (db.clone(), target(&cluster));
        tokio::spawn(async move {
            let capture = PostgresCapture::new(Hub::default(), target).table::<item::Model>();
            capture.prepare(&db).await
        })
    });
    for prepared in futures_util::future::join_all(prepares).await {
        prepared.expect("no panic").expect("prepared");
    }
}

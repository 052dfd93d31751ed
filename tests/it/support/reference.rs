//! The reference app (examples/reference/app.rs) served on port 0, its
//! GraphQL helpers over HTTP, and the notification frames it sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::DatabaseConnection;
use serde_json::{Value as Json, json};

use super::TIMEOUT;
use super::http::post_json;
use super::standard::{Served, serve};
use super::two_channel::{TokenIn, Ws};
use crate::app;

/// The reference app, served on `127.0.0.1:0` until dropped. Its HTTP and
/// WebSocket helpers are those of [`Http`] (`Deref`).
pub struct Server {
    /// Where it listens, and the client helpers.
    pub http: Http,
    /// Its hub.
    pub hub: graphex::Hub,
    _served: Served,
    sentinels: AtomicU64,
    /// Stops its capture, in capture mode.
    _capture: Option<tokio_util::sync::DropGuard>,
}

/// A table of the test's own, captured beside the app's, that makes capture
/// mode as synchronous as the hooks: after each GraphQL request the test
/// commits a row to it and waits until capture has published it (or a
/// later transaction); capture publishes in commit order, so every change
/// the request committed has been published by then (with the hooks,
/// before the response). No subscriber of the hub's is involved: the
/// tests count channels and groups.
mod barrier {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "capture_barrier")]
    #[graphex(stream = "capture_barrier")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One capturing server's barrier: its database and its capture's monitor.
#[derive(Debug)]
pub struct Barrier {
    db: DatabaseConnection,
    monitor: graphex::capture::CaptureMonitor,
}

impl Barrier {
    async fn new(db: &DatabaseConnection, monitor: graphex::capture::CaptureMonitor) -> Barrier {
        use sea_orm::ConnectionTrait;
        let table = sea_orm::Schema::new(db.get_database_backend()).create_table_from_entity(barrier::Entity);
        db.execute(&table).await.expect("barrier table created");
        Barrier { db: db.clone(), monitor }
    }

    /// Takes a log position, then commits a barrier row after it; waits
    /// until capture has published a transaction that committed after that
    /// position (the barrier's, or a later one): every transaction that
    /// committed before it, such as the request's, has been published.
    async fn pass(&mut self) {
        use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
        static ROWS: AtomicU64 = AtomicU64::new(0);
        let txn = self.db.begin().await.expect("barrier transaction");
        let position = Statement::from_string(
            txn.get_database_backend(),
            "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::bigint AS lsn",
        );
        let before: i64 = txn.query_one_raw(position).await.unwrap().unwrap().try_get("", "lsn").unwrap();
        let row = ROWS.fetch_add(1, Ordering::Relaxed);
        txn.execute_unprepared(&format!("INSERT INTO capture_barrier (id) VALUES ({row})")).await.unwrap();
        txn.commit().await.expect("barrier row committed");
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while self.monitor.stats().published_lsn <= before as u64 {
            assert!(tokio::time::Instant::now() < deadline, "capture published the barrier row in time");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// In capture mode, waits until every change committed so far by the
/// server at `addr` has been published.
async fn capture_barrier(addr: SocketAddr) {
    let Ok(barriers) = super::databases::CAPTURE_MODE.try_with(|mode| mode.barriers.clone()) else { return };
    let Some(mut barrier) = barriers.lock().unwrap().remove(&addr) else { return };
    barrier.pass().await;
    barriers.lock().unwrap().insert(addr, barrier);
}

/// Captures the reference app's tables (and the barrier's) into `hub`
/// until the guard drops, with a slot and publication of its own.
async fn capture(
    db: &DatabaseConnection,
    hub: &graphex::Hub,
    mode: &super::databases::CaptureMode,
) -> (tokio_util::sync::DropGuard, Barrier) {
    use graphex::capture::{PostgresCapture, ReplicationTarget};
    static SERVERS: AtomicU64 = AtomicU64::new(0);
    let name = format!("{}_{}", mode.slot, SERVERS.fetch_add(1, Ordering::Relaxed));
    let target = ReplicationTarget::from_url(&mode.url).expect("a capture target");
    let capture = PostgresCapture::new(hub.clone(), target)
        .slot(&name)
        .publication(&name)
        .table::<app::user::Model>()
        .table::<app::note::Model>()
        .table::<app::message::Model>()
        .table::<app::comment::Model>()
        .table::<barrier::Model>();
    let barrier = Barrier::new(db, capture.monitor()).await;
    capture.prepare(db).await.expect("capture prepared");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move { capture.run(stop).await.expect("capture runs") }
    });
    (stop.drop_guard(), barrier)
}

impl std::ops::Deref for Server {
    type Target = Http;

    fn deref(&self) -> &Http {
        &self.http
    }
}

/// A reference-app server at `addr`, in this process or another: GraphQL
/// over HTTP and WebSocket clients.
pub struct Http {
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Server {
    /// Serves the reference app over `db` with `hub`.
    ///
    /// In capture mode (`each_database`'s last variant) it first captures
    /// the app's four tables from the log into `hub`, until it is dropped.
    pub async fn start(db: DatabaseConnection, hub: graphex::Hub) -> Server {
        let capture = match super::databases::CAPTURE_MODE.try_with(Clone::clone) {
            Ok(mode) => Some((capture(&db, &hub, &mode).await, mode)),
            Err(_) => None,
        };
        let served = serve(app::app(db, hub.clone())).await;
        let capture = capture.map(|((guard, barrier), mode)| {
            mode.barriers.lock().unwrap().insert(served.addr, barrier);
            guard
        });
        Server {
            http: Http { addr: served.addr },
            hub,
            _served: served,
            sentinels: AtomicU64::new(0),
            _capture: capture,
        }
    }

    /// Proves that nothing else is queued for `sockets` (each armed with
    /// [`Ws::arm_comment_sentinel`]): creates a comment and asserts it is the
    /// next frame each socket receives. Changes are delivered to a channel in
    /// the order they were announced, so anything announced earlier that
    /// reached the socket would come first.
    pub async fn comment_sentinel(&self, sockets: &mut [&mut Ws]) {
        let id = self.create_comment(0, "sentinel").await;
        for ws in sockets.iter_mut() {
            ws.expect_in("comment sentinel", &comment_frame("create", &id)).await;
        }
    }

    /// Like [`Server::comment_sentinel`], with a user creation, for sockets
    /// armed with [`Ws::arm_user_sentinel`].
    pub async fn user_sentinel(&self, sockets: &mut [&mut Ws]) {
        let n = self.sentinels.fetch_add(1, Ordering::Relaxed);
        let row = self.create_user(&format!("sentinel-{n}"), "sentinel@example.com", "sentinel").await;
        for ws in sockets.iter_mut() {
            ws.expect_in("user sentinel", &user_frame("create", &row)).await;
        }
    }

    /// Polls `condition` until it holds, for at most [`TIMEOUT`].
    pub async fn wait_for(&self, what: &str, mut condition: impl FnMut(&graphex::Hub) -> bool) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while !condition(&self.hub) {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Http {
    /// POSTs a GraphQL request and returns the whole JSON response.
    pub async fn graphql(&self, token: Option<&str>, query: &str, variables: Json) -> Json {
        let body = json!({"query": query, "variables": variables});
        let (status, response) = post_json(self.addr, "/graphql", token, &body).await;
        assert_eq!(status, 200, "HTTP status of {query}: {response}");
        // Capture mode: what the request committed is published, as the
        // hooks would have done before the response.
        capture_barrier(self.addr).await;
        response
    }

    /// Runs a query or mutation that must succeed; returns its `data`.
    pub async fn execute(&self, token: Option<&str>, query: &str, variables: Json) -> Json {
        let response = self.graphql(token, query, variables).await;
        assert!(response.get("errors").is_none(), "GraphQL errors for {query}: {response}");
        response["data"].clone()
    }

    /// Subscribes or unsubscribes (the operation is in `args`) and returns
    /// the confirmation `{ok, error, stream, operation, action}`.
    ///
    /// `args` are the literal GraphQL arguments besides `channelId` and
    /// `filters`, e.g. `"action: CREATE, operation: SUBSCRIBE, data: [USERNAME]"`.
    pub async fn subscribe(
        &self,
        token: Option<&str>,
        channel: &str,
        field: &str,
        args: &str,
        filters: Option<Json>,
    ) -> Json {
        let query = format!(
            "subscription ($channelId: String!, $filters: JSON) {{ \
               {field}(channelId: $channelId, {args}, filters: $filters) {{ ok error stream operation action }} \
             }}"
        );
        let variables = json!({"channelId": channel, "filters": filters});
        let data = self.execute(token, &query, variables).await;
        data[field].clone()
    }

    /// Creates a user through the `createUser` mutation.
    pub async fn create_user(&self, username: &str, email: &str, tenant: &str) -> Json {
        let data = self
            .execute(
                None,
                "mutation ($u: String!, $e: String!, $t: String!) { \
                   createUser(username: $u, email: $e, tenant: $t) { id username email tenant } }",
                json!({"u": username, "e": email, "t": tenant}),
            )
            .await;
        data["createUser"].clone()
    }

    /// Changes a user's email through the `updateUser` mutation.
    pub async fn update_user(&self, id: &Json, email: &str) -> Json {
        let data = self
            .execute(
                None,
                "mutation ($id: Int!, $e: String!) { updateUser(id: $id, email: $e) { id username email tenant } }",
                json!({"id": id, "e": email}),
            )
            .await;
        data["updateUser"].clone()
    }

    /// Deletes a user through the `deleteUser` mutation.
    pub async fn delete_user(&self, id: &Json) {
        let data = self.execute(None, "mutation ($id: Int!) { deleteUser(id: $id) }", json!({"id": id})).await;
        assert_eq!(data["deleteUser"], json!(true));
    }

    /// Creates a comment; returns its id.
    pub async fn create_comment(&self, post: i32, text: &str) -> Json {
        let data = self
            .execute(
                None,
                "mutation ($p: Int!, $t: String!) { createComment(post: $p, text: $t) { id } }",
                json!({"p": post, "t": text}),
            )
            .await;
        data["createComment"]["id"].clone()
    }

    /// Changes a comment's text.
    pub async fn update_comment(&self, id: &Json, text: &str) {
        let data = self
            .execute(
                None,
                "mutation ($id: Int!, $t: String!) { updateComment(id: $id, text: $t) { id } }",
                json!({"id": id, "t": text}),
            )
            .await;
        assert_eq!(&data["updateComment"]["id"], id);
    }

    /// Deletes a comment.
    pub async fn delete_comment(&self, id: &Json) {
        let data = self.execute(None, "mutation ($id: Int!) { deleteComment(id: $id) }", json!({"id": id})).await;
        assert_eq!(data["deleteComment"], json!(true));
    }

    /// Creates a note owned by `owner`.
    pub async fn create_note(&self, owner: &str, text: &str) -> Json {
        let data = self
            .execute(
                Some(owner),
                "mutation ($t: String!) { createNote(text: $t) { id owner text } }",
                json!({"t": text}),
            )
            .await;
        data["createNote"].clone()
    }

    /// Posts a message in `room` of the author's tenant.
    pub async fn create_message(&self, author: &str, room: i32, text: &str) -> Json {
        let data = self
            .execute(
                Some(author),
                "mutation ($r: Int!, $t: String!) { createMessage(room: $r, text: $t) { id tenant room text } }",
                json!({"r": room, "t": text}),
            )
            .await;
        data["createMessage"].clone()
    }

    /// Opens an anonymous WebSocket.
    pub async fn ws(&self) -> Ws {
        Ws::connect(self, None, TokenIn::Query).await
    }

    /// Opens a WebSocket authenticated with `?token=`.
    pub async fn ws_as(&self, token: &str) -> Ws {
        Ws::connect(self, Some(token), TokenIn::Query).await
    }

    /// Opens a WebSocket authenticated with an `Authorization` header on the upgrade.
    pub async fn ws_with_header(&self, token: &str) -> Ws {
        Ws::connect(self, Some(token), TokenIn::Header).await
    }
}

// ---------------------------------------------------------------------------
// Expected values

/// The arguments of a subscription to every user creation.
pub const USERS_CREATE: &str = "action: CREATE, operation: SUBSCRIBE";

/// A user row as the mutations return it and its notifications carry it.
pub fn user_json(row: &app::user::Model) -> Json {
    json!({"id": row.id, "username": row.username, "email": row.email, "tenant": row.tenant})
}

/// A user to insert through SeaORM.
pub fn new_user(username: &str, email: &str, tenant: &str) -> app::user::ActiveModel {
    use sea_orm::ActiveValue::Set;
    app::user::ActiveModel {
        username: Set(username.to_owned()),
        email: Set(email.to_owned()),
        tenant: Set(tenant.to_owned()),
        ..Default::default()
    }
}

/// A successful confirmation.
pub fn confirmed(stream: &str, operation: &str, action: &str) -> Json {
    json!({"ok": true, "error": null, "stream": stream, "operation": operation, "action": action})
}

/// A refused confirmation with its error.
pub fn refused(stream: &str, operation: &str, action: &str, error: &str) -> Json {
    json!({"ok": false, "error": error, "stream": stream, "operation": operation, "action": action})
}

/// A notification frame.
pub fn frame(stream: &str, action: &str, model: &str, data: Json) -> Json {
    json!({"stream": stream, "payload": {"action": action, "model": model, "data": data}})
}

/// A user notification with the full row.
pub fn user_frame(action: &str, row: &Json) -> Json {
    frame("users", action, "user", row.clone())
}

/// An id-only comment notification.
pub fn comment_frame(action: &str, id: &Json) -> Json {
    frame("comments", action, "comment", json!({"id": id}))
}

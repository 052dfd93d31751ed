//! Support for the end-to-end tests: the reference app served on port 0,
//! a WebSocket client, a minimal HTTP/1.1 JSON client, and a runner that
//! executes a test body on SQLite and, when configured, on PostgreSQL.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::app;

/// How long an expected frame or response may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The environment variable naming the PostgreSQL server of the second variant.
pub const POSTGRES_ENV: &str = "GRAPHEX_TEST_POSTGRES_URL";

// ---------------------------------------------------------------------------
// Databases

/// Runs `body` on a fresh in-memory SQLite database, then, when
/// `GRAPHEX_TEST_POSTGRES_URL` is set, on a fresh PostgreSQL schema
/// (dropped afterwards, even if the body panics).
pub async fn each_database<F, Fut>(body: F)
where
    F: Fn(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = app::connect("sqlite::memory:", None).await;
    run_variant("sqlite", body(db)).await;

    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        println!("skipped: PostgreSQL variant (set {POSTGRES_ENV})");
        return;
    };
    let schema = unique_schema();
    let db = app::connect(&url, Some(&schema)).await;
    let outcome = tokio::spawn(body(db)).await;
    drop_schema(&url, &schema).await;
    if let Err(error) = outcome {
        eprintln!("failed on the postgres variant (schema {schema})");
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn run_variant(name: &str, body: impl Future<Output = ()> + Send + 'static) {
    if let Err(error) = tokio::spawn(body).await {
        eprintln!("failed on the {name} variant");
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A schema name no other test (of this or another process) uses.
fn unique_schema() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("graphex_e2e_{}_{counter}_{random:016x}", std::process::id())
}

async fn drop_schema(url: &str, schema: &str) {
    let Ok(admin) = Database::connect(url).await else { return };
    if let Err(error) = admin.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        eprintln!("could not drop schema {schema}: {error}");
    }
    let _ = admin.close().await;
}

// ---------------------------------------------------------------------------
// The server

/// The reference app, served on `127.0.0.1:0` until dropped. Its HTTP and
/// WebSocket helpers are those of [`Http`] (`Deref`).
pub struct Server {
    /// Where it listens, and the client helpers.
    pub http: Http,
    /// Its hub.
    pub hub: graphex::Hub,
    task: JoinHandle<()>,
    sentinels: AtomicU64,
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

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Serves the reference app over `db` with `hub`.
    pub async fn start(db: DatabaseConnection, hub: graphex::Hub) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound address");
        let router = app::app(db.clone(), hub.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("server runs");
        });
        Server { http: Http { addr }, hub, task, sentinels: AtomicU64::new(0) }
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

// ---------------------------------------------------------------------------
// WebSocket client

enum TokenIn {
    Query,
    Header,
}

/// A two-channel WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The channel id from the handshake.
    pub channel_id: String,
    token: Option<String>,
}

impl Ws {
    async fn connect(server: &Http, token: Option<&str>, token_in: TokenIn) -> Ws {
        let mut url = format!("ws://{}/ws/graphql/", server.addr);
        if let (Some(token), TokenIn::Query) = (token, &token_in) {
            url.push_str(&format!("?token={token}"));
        }
        let mut request = url.into_client_request().expect("valid ws url");
        if let (Some(token), TokenIn::Header) = (token, &token_in) {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
        }
        let (stream, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        let mut ws = Ws { stream, channel_id: String::new(), token: token.map(str::to_owned) };
        let handshake = ws.next_json().await;
        let id = handshake["channel_id"].as_str().unwrap_or_else(|| panic!("bad handshake {handshake}")).to_owned();
        assert_eq!(handshake, json!({"channel_id": id, "connect": "success"}));
        ws.channel_id = id;
        ws
    }

    /// The token the socket was opened with.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Subscribes this channel (with its own token) and asserts it was accepted.
    pub async fn subscribe_ok(&self, server: &Http, field: &str, args: &str, filters: Option<Json>) {
        let confirmation = server.subscribe(self.token(), &self.channel_id, field, args, filters).await;
        assert_eq!(confirmation["ok"], json!(true), "subscribe {field}({args}) refused: {confirmation}");
    }

    /// Subscribes to every comment creation, for [`Server::comment_sentinel`].
    pub async fn arm_comment_sentinel(&self, server: &Http) {
        self.subscribe_ok(server, "commentSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    }

    /// Subscribes to every user creation, for [`Server::user_sentinel`].
    pub async fn arm_user_sentinel(&self, server: &Http) {
        self.subscribe_ok(server, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    }

    /// The next message, or `None` at end of stream; panics after [`TIMEOUT`].
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("timed out waiting for a WebSocket message");
            match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next text frame as JSON; panics on timeout, close or binary.
    pub async fn next_json(&mut self) -> Json {
        match self.next_message().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).expect("frames are JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts the next frame is `expected`.
    pub async fn expect(&mut self, expected: &Json) {
        self.expect_in("", expected).await;
    }

    /// Asserts the next frame is `expected`; `label` names the case in failures.
    pub async fn expect_in(&mut self, label: &str, expected: &Json) {
        let got = self.next_json().await;
        assert_eq!(&got, expected, "unexpected frame on channel {} {label}", self.channel_id);
    }

    /// Asserts the next frames are `expected`, in any order.
    pub async fn expect_unordered(&mut self, expected: &[Json]) {
        let mut got = Vec::new();
        for _ in expected {
            got.push(self.next_json().await);
        }
        let key = |frame: &Json| frame.to_string();
        let mut got_keys: Vec<String> = got.iter().map(key).collect();
        let mut expected_keys: Vec<String> = expected.iter().map(key).collect();
        got_keys.sort();
        expected_keys.sort();
        assert_eq!(got_keys, expected_keys, "unexpected frames on channel {}", self.channel_id);
    }

    /// Sends a close frame and waits for the server's reply.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(TIMEOUT, async { while self.stream.next().await.is_some() {} }).await;
    }

    /// The underlying stream (e.g. to leave it unread).
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }
}

// ---------------------------------------------------------------------------
// HTTP client

/// POSTs `body` as JSON over a fresh HTTP/1.1 connection (`Connection:
/// close`), reads to EOF, and returns the status and the JSON body.
pub async fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &Json) -> (u16, Json) {
    let body = serde_json::to_vec(body).expect("serializable body");
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");

    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect to server");
        stream.write_all(head.as_bytes()).await.expect("write head");
        stream.write_all(&body).await.expect("write body");
        stream.flush().await.expect("flush");
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read response");
        response
    };
    let response = tokio::time::timeout(TIMEOUT * 2, exchange).await.expect("HTTP request timed out");
    parse_response(&response)
}

fn parse_response(response: &[u8]) -> (u16, Json) {
    let split = response.windows(4).position(|window| window == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&response[..split]).expect("ASCII headers");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status code");
    let chunked = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let raw = &response[split + 4..];
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|error| panic!("response body is not JSON ({error}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|window| window == b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&raw[..line_end]).expect("chunk size");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("hex size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

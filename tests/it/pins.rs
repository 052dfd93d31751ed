//! Pins what a client sees of the reference app (examples/reference/app.rs),
//! byte for byte: its GraphQL SDL (`tests/pins/reference.graphql`) and every
//! frame of one scripted session over real sockets (`tests/pins/session.txt`),
//! so that a refactor provably changes nothing on the wire. Run with
//! `GRAPHEX_BLESS=1` to rewrite the files, then read the diff: a changed pin
//! is a changed protocol, which existing clients may depend on.
//!
//! The session is deterministic: the database is a fresh SQLite in memory
//! (row ids 1, 2, ...), every action waits for what it causes before the
//! next one, and the transcript is written in the script's order, one frame
//! read at a time from a named socket or stream. Random values are replaced
//! before comparing: channel ids by `<channel-N>` (N in order of first
//! appearance), the hub's node id by `<node>`, other long hex ids by
//! `<hex-N>`, RFC 3339 timestamps by `<timestamp>`. Keep-alives sent on a
//! timer (`ka` after the first one, server `ping`, SSE comments, multipart
//! heartbeats) are timing, not content, and are left out.
//!
//! Transcript lines: `== <step>`; `<socket> > <text>` sent by the client;
//! `<socket> < <text>` sent by the server (`close <code> <reason>` for a
//! close frame); `http > <body>` a request to `/graphql` (`http(<token>)`
//! when authenticated) and `http < <status> <body>` its response. Line
//! breaks inside a frame are written `\n` and `\r`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use graphex::Hub;
use serde_json::{Value as Json, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::app;
use crate::support::TIMEOUT;
use crate::support::http::{self, Streamed};
use crate::support::standard::{serve, wait_for};

// ---------------------------------------------------------------------------
// Pins

/// Compares `actual` with `tests/pins/<name>` (or rewrites it with `GRAPHEX_BLESS=1`).
fn assert_pin(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/pins").join(name);
    if std::env::var_os("GRAPHEX_BLESS").is_some_and(|value| value == "1") {
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("tests/pins created");
        std::fs::write(&path, actual).expect("pin written");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}; run with GRAPHEX_BLESS=1 to create it", path.display()));
    if expected != actual {
        let first = expected.lines().zip(actual.lines()).position(|(old, new)| old != new);
        let line = first.map_or_else(|| expected.lines().count().min(actual.lines().count()) + 1, |line| line + 1);
        panic!(
            "{} differs from what the server produced (first difference at line {line}):\n\
             expected: {:?}\n     got: {:?}\n\
             If the change is intended, run with GRAPHEX_BLESS=1 and review the diff.\n\n{actual}",
            path.display(),
            expected.lines().nth(line - 1).unwrap_or("<end>"),
            actual.lines().nth(line - 1).unwrap_or("<end>"),
        );
    }
}

#[test]
fn reference_sdl_is_pinned() {
    let sdl = app::schema(sea_orm::DatabaseConnection::default()).sdl();
    assert_pin("reference.graphql", &sdl);
}

// ---------------------------------------------------------------------------
// The transcript

/// The session's lines, normalised as they are written.
#[derive(Clone)]
struct Log(Arc<Mutex<Transcript>>);

struct Transcript {
    node: String,
    lines: Vec<String>,
    placeholders: HashMap<String, String>,
    channels: usize,
    others: usize,
}

impl Log {
    fn new(node: &str) -> Log {
        Log(Arc::new(Mutex::new(Transcript {
            node: node.to_owned(),
            lines: Vec::new(),
            placeholders: HashMap::new(),
            channels: 0,
            others: 0,
        })))
    }

    fn step(&self, what: &str) {
        self.0.lock().unwrap().lines.push(format!("== {what}"));
    }

    fn line(&self, who: &str, direction: char, text: &str) {
        let mut transcript = self.0.lock().unwrap();
        let text = transcript.normalise(text);
        transcript.lines.push(format!("{who} {direction} {text}"));
    }

    fn text(&self) -> String {
        let mut text = self.0.lock().unwrap().lines.join("\n");
        text.push('\n');
        text
    }
}

impl Transcript {
    fn normalise(&mut self, text: &str) -> String {
        let text = text.replace('\r', "\\r").replace('\n', "\\n");
        let text = cursors(&text);
        let text = self.hex_ids(&text);
        let text = text.replace(&self.node, "<node>");
        timestamps(&text)
    }

    /// Replaces runs of 16 or more lower-case hex digits (with a letter
    /// among them) by a placeholder, the same one for the same value.
    fn hex_ids(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find(|c: char| c.is_ascii_hexdigit()) {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let end = rest.find(|c: char| !(c.is_ascii_digit() || ('a'..='f').contains(&c))).unwrap_or(rest.len());
            let end = end.max(1);
            let run = &rest[..end];
            let boundary = rest[end..].chars().next().is_none_or(|c| !c.is_ascii_alphanumeric());
            if run.len() >= 16 && boundary && run.bytes().any(|c| c.is_ascii_alphabetic()) {
                let placeholder = match self.placeholders.get(run) {
                    Some(placeholder) => placeholder.clone(),
                    None => {
                        let placeholder = if run.len() == 40 {
                            self.channels += 1;
                            format!("<channel-{}>", self.channels)
                        } else {
                            self.others += 1;
                            format!("<hex-{}>", self.others)
                        };
                        self.placeholders.insert(run.to_owned(), placeholder.clone());
                        placeholder
                    }
                };
                out.push_str(&placeholder);
            } else {
                out.push_str(run);
            }
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    }
}

/// Replaces cursors (`<16 hex digits>-<offset>`: the epoch is random) by `<cursor>`.
fn cursors(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |byte: &u8| byte.is_ascii_digit() || (b'a'..=b'f').contains(byte);
    let mut out = String::with_capacity(text.len());
    let (mut at, mut copied) = (0, 0);
    while at + 18 <= bytes.len() {
        let starts = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let digits = bytes[at + 17..].iter().take_while(|byte| byte.is_ascii_digit()).count();
        if starts && bytes[at..at + 16].iter().all(hex) && bytes[at + 16] == b'-' && digits > 0 {
            out.push_str(&text[copied..at]);
            out.push_str("<cursor>");
            at += 17 + digits;
            copied = at;
        } else {
            at += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces RFC 3339 timestamps (`2024-05-01T12:30:00`, optional fraction
/// and offset) by `<timestamp>`.
fn timestamps(text: &str) -> String {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd";
    let bytes = text.as_bytes();
    let matches_at = |at: usize| {
        at + SHAPE.len() <= bytes.len()
            && SHAPE.iter().zip(&bytes[at..]).all(|(&shape, &byte)| match shape {
                b'd' => byte.is_ascii_digit(),
                other => other == byte,
            })
    };
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut copied = 0;
    while at < bytes.len() {
        if !matches_at(at) {
            at += 1;
            continue;
        }
        out.push_str(&text[copied..at]);
        let mut end = at + SHAPE.len();
        if bytes.get(end) == Some(&b'.') {
            end += 1;
            while bytes.get(end).is_some_and(u8::is_ascii_digit) {
                end += 1;
            }
        }
        if bytes.get(end) == Some(&b'Z') {
            end += 1;
        } else if matches!(bytes.get(end), Some(b'+' | b'-'))
            && bytes.get(end + 1..end + 6).is_some_and(|zone| {
                zone[0].is_ascii_digit() && zone[1].is_ascii_digit() && zone[2] == b':' && zone[3].is_ascii_digit()
            })
        {
            end += 6;
        }
        out.push_str("<timestamp>");
        at = end;
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[test]
fn normalisation_replaces_random_values_only() {
    let log = Log::new("0badcafe");
    let channel = "0badcafe0123456789abcdef0123456789abcdef";
    let other = "ffffffff0123456789abcdef0123456789abcdef";
    log.line("ws", '<', &format!(r#"{{"channel_id":"{channel}","again":"{channel}","other":"{other}"}}"#));
    log.line("ws", '<', r#"{"node":"0badcafe","id":12345678901234567890,"word":"deadbeefdeadbeefx"}"#);
    log.line("sse", '<', "event: next\ndata: {\"at\":\"2024-05-01T12:30:00.250Z\",\"on\":\"2024-05-01T08:00:00\"}");
    log.line("x", '<', "0123456789abcdef0123 and 2024-05-01T12:30:00+02:00.");
    log.line("c", '<', r#"{"cursor":"00000000deadbeef-42","after":"0123456789abcdef-7x"}"#);
    assert_eq!(
        log.text(),
        "ws < {\"channel_id\":\"<channel-1>\",\"again\":\"<channel-1>\",\"other\":\"<channel-2>\"}\n\
         ws < {\"node\":\"<node>\",\"id\":12345678901234567890,\"word\":\"deadbeefdeadbeefx\"}\n\
         sse < event: next\\ndata: {\"at\":\"<timestamp>\",\"on\":\"<timestamp>\"}\n\
         x < <hex-1> and <timestamp>.\n\
         c < {\"cursor\":\"<cursor>\",\"after\":\"<cursor>x\"}\n"
    );
}

// ---------------------------------------------------------------------------
// Clients

/// A WebSocket whose every frame goes to the transcript.
struct Socket {
    name: &'static str,
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    log: Log,
    /// Leave out keep-alives sent on a timer (`ka`, server `ping`).
    skip_keep_alives: bool,
}

impl Socket {
    async fn open(name: &'static str, url: String, protocol: Option<&'static str>, log: &Log) -> Socket {
        let mut request = url.into_client_request().expect("valid ws url");
        if let Some(protocol) = protocol {
            request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
        }
        let (stream, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("ws connect in time")
            .expect("ws upgrade");
        Socket { name, stream, log: log.clone(), skip_keep_alives: true }
    }

    async fn send(&mut self, message: Json) {
        let text = message.to_string();
        self.log.line(self.name, '>', &text);
        self.stream.send(Message::Text(text.into())).await.expect("send");
    }

    /// The next text frame, recorded; panics on anything else.
    async fn recv(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for a frame", self.name));
            match message {
                Some(Ok(Message::Text(text))) => {
                    if self.skip_keep_alives && (text.as_str() == r#"{"type":"ka"}"# || is_ping(&text)) {
                        continue;
                    }
                    self.log.line(self.name, '<', &text);
                    return text.to_string();
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a text frame, got {other:?}", self.name),
            }
        }
    }

    /// The next frame must be a close frame; records its code and reason.
    async fn recv_close(&mut self) {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting for a close frame", self.name));
            match message {
                Some(Ok(Message::Close(Some(frame)))) => {
                    let line = format!("close {} {}", u16::from(frame.code), frame.reason);
                    return self.log.line(self.name, '<', &line);
                }
                Some(Ok(Message::Close(None))) => return self.log.line(self.name, '<', "close"),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("{}: expected a close frame, got {other:?}", self.name),
            }
        }
    }

    /// Closes without recording what follows (who sends the last frame of a
    /// client-initiated close is a race the pin does not decide).
    async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(TIMEOUT, async { while self.stream.next().await.is_some() {} }).await;
    }
}

fn is_ping(text: &str) -> bool {
    serde_json::from_str::<Json>(text).is_ok_and(|message| message["type"] == "ping")
}

/// GraphQL over HTTP (`POST /graphql`), recorded.
struct Http {
    addr: SocketAddr,
    log: Log,
}

impl Http {
    fn who(token: Option<&str>) -> String {
        token.map_or_else(|| "http".to_owned(), |token| format!("http({token})"))
    }

    /// Posts `query` and records the request and the whole response.
    async fn graphql(&self, token: Option<&str>, query: &str, variables: Json) -> Json {
        let body = json!({"query": query, "variables": variables});
        let who = Http::who(token);
        self.log.line(&who, '>', &body.to_string());
        let response = http::post(self.addr, "/graphql", token, "application/json", &body).await;
        let text = response.text();
        self.log.line(&who, '<', &format!("{} {text}", response.status.as_u16()));
        serde_json::from_str(&text).expect("a JSON response")
    }

    /// Posts `query` asking for a stream (`accept`): records the status and
    /// content type, and returns the open response.
    async fn stream(&self, name: &str, query: &str, accept: &str) -> Streamed {
        self.log.line(name, '>', &format!("Accept: {accept} {}", json!({"query": query})));
        let mut streamed = Streamed::post(self.addr, accept, query).await;
        let (status_line, _) = streamed.head().await;
        let code = status_line.split(' ').nth(1).expect("a status code").to_owned();
        let content_type = streamed.content_type().await;
        self.log.line(name, '<', &format!("{code} {content_type}"));
        streamed
    }
}

/// Reads `stream` until `complete` finds a whole item at the start of what
/// arrived, and takes it; `None` at the end of the stream.
async fn read_item(stream: &mut Streamed, complete: impl Fn(&str) -> Option<usize>) -> Option<String> {
    loop {
        if let Some(end) = complete(&stream.text()) {
            return Some(stream.take(end));
        }
        if !stream.read_more().await {
            return None;
        }
    }
}

/// The next server-sent event that is not a keep-alive comment.
async fn next_event(stream: &mut Streamed) -> String {
    loop {
        let event = read_item(stream, |text| text.find("\n\n").map(|at| at + 2)).await.expect("an event");
        if !event.lines().all(|line| line.is_empty() || line.starts_with(':')) {
            return event;
        }
    }
}

/// The next `multipart/mixed` part (`--graphql` up to the next part), or the
/// closing delimiter, leaving out heartbeats.
async fn next_part(stream: &mut Streamed) -> Option<String> {
    const HEADER: &str = "--graphql\r\nContent-Type: application/json\r\n\r\n";
    loop {
        let part = read_item(stream, |text| {
            if text.starts_with("--graphql--\r\n") {
                return Some("--graphql--\r\n".len());
            }
            let json = text.strip_prefix(HEADER)?;
            json.find("\r\n").map(|at| HEADER.len() + at + 2)
        })
        .await?;
        if part != format!("{HEADER}{{}}\r\n") {
            return Some(part);
        }
    }
}

// ---------------------------------------------------------------------------
// The session

/// Waits until the hub holds `channels` channels.
async fn channels(hub: &Hub, channels: usize) {
    wait_for(&format!("{channels} channels"), || hub.channel_count() == channels).await;
}

const SUBSCRIBE: &str = "subscription ($channelId: String!, $filters: JSON) { \
    FIELD(channelId: $channelId, ARGS, filters: $filters) { ok error stream operation action } }";

impl Http {
    /// A two-channel subscribe or unsubscribe: `args` besides `channelId` and `filters`.
    async fn subscribe(&self, token: Option<&str>, channel: &str, field: &str, args: &str, filters: Json) -> Json {
        let query = SUBSCRIBE.replace("FIELD", field).replace("ARGS", args);
        self.graphql(token, &query, json!({"channelId": channel, "filters": filters})).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_session_is_pinned() {
    let hub = Hub::default();
    let db = app::connect("sqlite::memory:", None).await;
    let server = serve(app::app(db, hub.clone())).await;
    let log = Log::new(hub.node());
    let http = Http { addr: server.addr, log: log.clone() };

    two_channel(&http, &hub, &log).await;
    transport_ws(&http, &hub, &log).await;
    legacy_ws(&http, &hub, &log).await;
    http_streams(&http, &hub, &log).await;
    channels(&hub, 0).await;
    drop(server);

    assert_pin("session.txt", &log.text());
}

/// Cursors on the wire (issue 16), their values masked: a two-channel
/// frame asked for with `cursors: true` (its last key), a resumed subscribe
/// and its replayed frame, and a native event's `cursor`. Frames of a
/// subscribe without `cursors` / `after` are the session's, unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_on_the_wire_are_pinned() {
    let hub = Hub::default();
    let db = app::connect("sqlite::memory:", None).await;
    let server = serve(app::app(db, hub.clone())).await;
    let log = Log::new(hub.node());
    let http = Http { addr: server.addr, log: log.clone() };
    let url = format!("ws://{}/ws/graphql/", http.addr);

    log.step("two-channel: cursors: true");
    let mut ws1 = Socket::open("ws1", url.clone(), None, &log).await;
    let handshake: Json = serde_json::from_str(&ws1.recv().await).expect("JSON handshake");
    let channel = handshake["channel_id"].as_str().expect("a channel id").to_owned();
    let args = "action: CREATE, operation: SUBSCRIBE, data: [USERNAME], cursors: true";
    http.subscribe(None, &channel, "userSubscription", args, Json::Null).await;
    let create = |name: &str| {
        format!(
            r#"mutation {{ createUser(username: "{name}", email: "{name}@example.com", tenant: "acme") {{ id }} }}"#
        )
    };
    http.graphql(None, &create("neo"), Json::Null).await;
    let frame: Json = serde_json::from_str(&ws1.recv().await).expect("a JSON frame");
    let cursor = frame["cursor"].as_str().expect("a cursor").to_owned();
    http.graphql(None, &create("trinity"), Json::Null).await;
    ws1.recv().await;

    log.step("two-channel: resume after the first cursor");
    let mut ws2 = Socket::open("ws2", url, None, &log).await;
    let handshake: Json = serde_json::from_str(&ws2.recv().await).expect("JSON handshake");
    let channel = handshake["channel_id"].as_str().expect("a channel id").to_owned();
    let args = format!("action: CREATE, operation: SUBSCRIBE, after: \"{cursor}\"");
    http.subscribe(None, &channel, "userSubscription", &args, Json::Null).await;
    ws2.recv().await;

    log.step("graphql-transport-ws: ModelChange.cursor");
    let mut gql = Socket::open("gql", format!("ws://{}/graphql", http.addr), Some("graphql-transport-ws"), &log).await;
    gql.send(json!({"type": "connection_init"})).await;
    gql.recv().await;
    let query = "subscription { userChanges(action: CREATE) { action id cursor } }";
    gql.send(json!({"id": "1", "type": "subscribe", "payload": {"query": query}})).await;
    channels(&hub, 3).await;
    wait_for("the native subscription", || hub.group_size("users-create") == 3).await;
    http.graphql(None, &create("morpheus"), Json::Null).await;
    ws1.recv().await;
    ws2.recv().await;
    gql.recv().await;

    for socket in [ws1, ws2, gql] {
        socket.close().await;
    }
    channels(&hub, 0).await;
    drop(server);
    assert_pin("cursors.txt", &log.text());
}

/// The two-channel protocol: handshakes, confirmations, notifications.
async fn two_channel(http: &Http, hub: &Hub, log: &Log) {
    log.step("two-channel WebSocket: handshake");
    let url = format!("ws://{}/ws/graphql/", http.addr);
    let mut users = Socket::open("ws1", url.clone(), None, log).await;
    let handshake: Json = serde_json::from_str(&users.recv().await).expect("JSON handshake");
    let users_channel = handshake["channel_id"].as_str().expect("a channel id").to_owned();
    let mut comments = Socket::open("ws2", url, None, log).await;
    let handshake: Json = serde_json::from_str(&comments.recv().await).expect("JSON handshake");
    let comments_channel = handshake["channel_id"].as_str().expect("a channel id").to_owned();
    http.graphql(
        None,
        "mutation { createUser(username: \"alice\", email: \"alice@example.com\", tenant: \"acme\") { id } }",
        Json::Null,
    )
    .await;
    let mut owned = Socket::open("ws3", format!("ws://{}/ws/graphql/?token=alice", http.addr), None, log).await;
    let handshake: Json = serde_json::from_str(&owned.recv().await).expect("JSON handshake");
    let owned_channel = handshake["channel_id"].as_str().expect("a channel id").to_owned();

    log.step("two-channel: subscribe (full payload, projection, id-only)");
    let users_ch = users_channel.as_str();
    http.subscribe(None, users_ch, "userSubscription", "action: CREATE, operation: SUBSCRIBE", Json::Null).await;
    let projected = "action: UPDATE, operation: SUBSCRIBE, data: [USERNAME, EMAIL]";
    http.subscribe(None, users_ch, "userSubscription", projected, Json::Null).await;
    http.subscribe(
        None,
        users_ch,
        "userSubscription",
        "action: DELETE, operation: SUBSCRIBE",
        json!({"tenant": "acme"}),
    )
    .await;
    let all = "action: ALL_ACTIONS, operation: SUBSCRIBE";
    http.subscribe(None, &comments_channel, "commentSubscription", all, Json::Null).await;

    log.step("two-channel: refusals");
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    http.subscribe(None, unknown, "userSubscription", "action: CREATE, operation: SUBSCRIBE", Json::Null).await;
    let create = "action: CREATE, operation: SUBSCRIBE";
    http.subscribe(None, users_ch, "userSubscription", create, json!({"nickname": "neo"})).await;
    http.subscribe(None, users_ch, "userSubscription", create, json!({"username__regex": "^n"})).await;
    http.subscribe(None, users_ch, "userSubscription", create, json!(["tenant", "acme"])).await;
    http.subscribe(None, users_ch, "userSubscription", "action: CREATE, operation: SUBSCRIBE, id: \"abc\"", Json::Null)
        .await;
    http.subscribe(None, users_ch, "noteSubscription", create, Json::Null).await;
    http.subscribe(Some("nobody"), &owned_channel, "userSubscription", create, Json::Null).await;
    http.subscribe(None, &owned_channel, "userSubscription", create, Json::Null).await;
    http.subscribe(Some("alice"), &owned_channel, "messageSubscription", create, json!({"room": 1})).await;
    http.subscribe(Some("alice"), &owned_channel, "messageSubscription", create, json!({"room": "one"})).await;
    http.subscribe(None, users_ch, "commentSubscription", "action: CREATE, operation: UNSUBSCRIBE", Json::Null).await;

    log.step("two-channel: create, update, delete of a full-payload model");
    let neo = http
        .graphql(
            None,
            "mutation { createUser(username: \"neo\", email: \"neo@example.com\", tenant: \"acme\") { id username email tenant } }",
            Json::Null,
        )
        .await;
    users.recv().await;
    let id = neo["data"]["createUser"]["id"].clone();
    http.graphql(
        None,
        "mutation ($id: Int!) { updateUser(id: $id, email: \"neo@matrix.org\") { id email } }",
        json!({"id": id}),
    )
    .await;
    users.recv().await;
    http.graphql(None, "mutation ($id: Int!) { deleteUser(id: $id) }", json!({"id": id})).await;
    users.recv().await;

    log.step("two-channel: create, update, delete of an id-only model");
    let comment =
        http.graphql(None, "mutation { createComment(post: 7, text: \"first\") { id post text } }", Json::Null).await;
    comments.recv().await;
    let id = comment["data"]["createComment"]["id"].clone();
    http.graphql(None, "mutation ($id: Int!) { updateComment(id: $id, text: \"edited\") { id } }", json!({"id": id}))
        .await;
    comments.recv().await;
    http.graphql(None, "mutation ($id: Int!) { deleteComment(id: $id) }", json!({"id": id})).await;
    comments.recv().await;

    log.step("two-channel: a scoped, indexed model on an authenticated channel");
    http.graphql(Some("alice"), "mutation { createMessage(room: 2, text: \"elsewhere\") { id } }", Json::Null).await;
    http.graphql(Some("alice"), "mutation { createMessage(room: 1, text: \"hello\") { id room text } }", Json::Null)
        .await;
    owned.recv().await;

    log.step("two-channel: unsubscribe, then only the remaining subscriptions deliver");
    http.subscribe(None, users_ch, "userSubscription", "action: CREATE, operation: UNSUBSCRIBE", Json::Null).await;
    let trinity = http
        .graphql(
            None,
            "mutation { createUser(username: \"trinity\", email: \"trinity@example.com\", tenant: \"globex\") { id } }",
            Json::Null,
        )
        .await;
    let id = trinity["data"]["createUser"]["id"].clone();
    http.graphql(
        None,
        "mutation ($id: Int!) { updateUser(id: $id, email: \"trinity@matrix.org\") { id } }",
        json!({"id": id}),
    )
    .await;
    // The creation came first: had it been delivered, it would be this frame.
    users.recv().await;
    // A delete outside the DELETE subscription's tenant filter, then one inside it:
    // the second is the next frame.
    http.graphql(None, "mutation ($id: Int!) { deleteUser(id: $id) }", json!({"id": id})).await;
    let niobe = http
        .graphql(
            None,
            "mutation { createUser(username: \"niobe\", email: \"niobe@example.com\", tenant: \"acme\") { id } }",
            Json::Null,
        )
        .await;
    let id = niobe["data"]["createUser"]["id"].clone();
    http.graphql(None, "mutation ($id: Int!) { deleteUser(id: $id) }", json!({"id": id})).await;
    users.recv().await;

    log.step("two-channel: the server disconnects every socket");
    hub.disconnect_all();
    users.recv_close().await;
    comments.recv_close().await;
    owned.recv_close().await;
    channels(hub, 0).await;
}

/// graphql-transport-ws on `/graphql`.
async fn transport_ws(http: &Http, hub: &Hub, log: &Log) {
    log.step("graphql-transport-ws: init, subscribe with a projection, next, complete");
    let url = format!("ws://{}/graphql", http.addr);
    let mut socket = Socket::open("gql", url, Some("graphql-transport-ws"), log).await;
    socket.send(json!({"type": "connection_init", "payload": {}})).await;
    socket.recv().await;
    let query =
        "subscription { userChanges(action: CREATE, data: [USERNAME, TENANT]) { action model stream id data } }";
    socket.send(json!({"type": "subscribe", "id": "1", "payload": {"query": query}})).await;
    channels(hub, 1).await;
    http.graphql(
        None,
        "mutation { createUser(username: \"smith\", email: \"smith@example.com\", tenant: \"acme\") { id } }",
        Json::Null,
    )
    .await;
    socket.recv().await;
    http.graphql(
        None,
        "mutation { createUser(username: \"oracle\", email: \"oracle@example.com\", tenant: \"acme\") { id } }",
        Json::Null,
    )
    .await;
    socket.recv().await;
    socket.send(json!({"type": "complete", "id": "1"})).await;
    channels(hub, 0).await;

    log.step("graphql-transport-ws: an invalid query, a refused subscription, a query");
    socket.send(json!({"type": "subscribe", "id": "2", "payload": {"query": "subscription { nope }"}})).await;
    socket.recv().await;
    socket
        .send(json!({"type": "subscribe", "id": "3", "payload": {"query": "subscription { noteChanges { id } }"}}))
        .await;
    socket.recv().await;
    socket.recv().await;
    socket.send(json!({"type": "subscribe", "id": "4", "payload": {"query": "{ users { id username } }"}})).await;
    socket.recv().await;
    socket.recv().await;
    socket.close().await;
    channels(hub, 0).await;
}

/// The legacy graphql-ws (subscriptions-transport-ws) protocol on `/graphql`.
async fn legacy_ws(http: &Http, hub: &Hub, log: &Log) {
    log.step("graphql-ws (legacy): init, start, data, stop");
    let url = format!("ws://{}/graphql", http.addr);
    let mut socket = Socket::open("legacy", url, Some("graphql-ws"), log).await;
    socket.send(json!({"type": "connection_init", "payload": {}})).await;
    socket.recv().await;
    // The first keep-alive follows the ack at once; later ones come on a timer.
    socket.skip_keep_alives = false;
    socket.recv().await;
    socket.skip_keep_alives = true;
    let query = "subscription { commentChanges { action model id data } }";
    socket.send(json!({"type": "start", "id": "a", "payload": {"query": query}})).await;
    channels(hub, 1).await;
    http.graphql(None, "mutation { createComment(post: 9, text: \"legacy\") { id } }", Json::Null).await;
    socket.recv().await;
    socket.send(json!({"type": "stop", "id": "a"})).await;
    socket.recv().await;
    channels(hub, 0).await;
    socket.close().await;
}

/// Subscriptions over plain HTTP: server-sent events and multipart/mixed.
async fn http_streams(http: &Http, hub: &Hub, log: &Log) {
    log.step("POST /graphql as server-sent events");
    let query = "subscription { userChanges(action: CREATE, data: [USERNAME]) { action model id data } }";
    let mut stream = http.stream("sse", query, "text/event-stream").await;
    channels(hub, 1).await;
    for name in ["morpheus", "tank"] {
        let mutation = format!(
            "mutation {{ createUser(username: \"{name}\", email: \"{name}@example.com\", tenant: \"acme\") {{ id }} }}"
        );
        http.graphql(None, &mutation, Json::Null).await;
        let event = next_event(&mut stream).await;
        log.line("sse", '<', &event);
    }
    drop(stream);
    channels(hub, 0).await;

    log.step("POST /graphql as multipart/mixed");
    let accept = r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0", application/json"#;
    let mut stream = http.stream("multipart", query, accept).await;
    channels(hub, 1).await;
    http.graphql(
        None,
        "mutation { createUser(username: \"dozer\", email: \"dozer@example.com\", tenant: \"acme\") { id } }",
        Json::Null,
    )
    .await;
    let part = next_part(&mut stream).await.expect("a part");
    log.line("multipart", '<', &part);
    drop(stream);
    channels(hub, 0).await;

    log.step("POST /graphql as multipart/mixed, refused: one part, then the end");
    let mut stream = http.stream("multipart", "subscription { noteChanges { id } }", accept).await;
    while let Some(part) = next_part(&mut stream).await {
        log.line("multipart", '<', &part);
    }
    assert_eq!(stream.text(), "", "nothing after the closing delimiter");
}

//! Resuming after a cursor (issue 16, "nothing lost"), on the reference app
//! (SQLite in memory, the memory layer): every change carries a cursor, and
//! a subscription given `after: <cursor>` gets exactly the changes it
//! missed, in order and once, then the live ones, over every protocol
//! (two-channel, graphql-transport-ws, legacy graphql-ws, SSE).
//!
//! "No duplicate" is never asserted by waiting: changes reach a
//! subscription in order, so a live change made afterwards must be the
//! next one received; a duplicate would come before it.

use std::sync::Arc;

use graphex::__internals::HubInternals;
use graphex::layer::MemoryLayer;
use graphex::{Config, Hub};
use sea_orm::ActiveModelTrait;
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite::Message;

use crate::app;
use crate::support::http::Streamed;
use crate::support::standard::{Client, Proto};
use crate::support::{Server, Ws, comment_frame, frame, new_user, user_frame};

// ---------------------------------------------------------------------------
// Helpers

async fn server(hub: Hub) -> Server {
    Server::start(app::connect("sqlite::memory:", None).await, hub).await
}

/// A hub whose memory layer keeps the last `history` changes per stream.
fn hub_with_history(history: usize) -> Hub {
    Hub::with_layer(Config::default(), Arc::new(MemoryLayer::with_history(history)))
}

/// A cursor's offset in its stream.
fn offset(cursor: &str) -> u64 {
    let (_, offset) = cursor.split_once('-').unwrap_or_else(|| panic!("not a cursor: {cursor:?}"));
    offset.parse().unwrap_or_else(|_| panic!("not a cursor: {cursor:?}"))
}

/// The same position in another epoch.
fn foreign_epoch(cursor: &str) -> String {
    let (epoch, offset) = cursor.split_once('-').expect("a cursor");
    let epoch = u64::from_str_radix(epoch, 16).expect("a hex epoch") ^ 1;
    format!("{epoch:016x}-{offset}")
}

/// A cursor `ahead` changes past `cursor`.
fn ahead_of(cursor: &str, ahead: u64) -> String {
    let (epoch, offset) = cursor.split_once('-').expect("a cursor");
    format!("{epoch}-{}", offset.parse::<u64>().expect("an offset") + ahead)
}

/// Takes the `cursor` key out of a frame or event.
fn split_cursor(mut value: Json) -> (Json, String) {
    let cursor = value.as_object_mut().and_then(|object| object.remove("cursor"));
    match cursor {
        Some(Json::String(cursor)) if !cursor.is_empty() => (value, cursor),
        other => panic!("no cursor ({other:?}) in {value}"),
    }
}

/// The `after` argument, literally, if any.
fn after_arg(after: Option<&str>) -> String {
    after.map(|cursor| format!(", after: \"{cursor}\"")).unwrap_or_default()
}

/// A native subscription to user creations, projected to the username.
fn user_changes(extra: &str, after: Option<&str>) -> String {
    format!(
        "subscription {{ userChanges(action: CREATE, data: [USERNAME]{extra}{}) {{ action id data cursor }} }}",
        after_arg(after)
    )
}

/// The next result of native operation `id` (no errors).
async fn next_change(client: &mut Client, id: &str) -> Json {
    let message = client.json().await;
    assert_eq!(message["type"], client.proto.next(), "{message}");
    assert_eq!(message["id"], id, "{message}");
    assert!(message["payload"].get("errors").is_none(), "{message}");
    message["payload"]["data"]["userChanges"].clone()
}

/// The next `next` event of a server-sent event stream (comments skipped).
async fn next_sse(stream: &mut Streamed) -> Json {
    loop {
        if let Some(end) = stream.text().find("\n\n") {
            let event = stream.take(end + 2);
            let kind = event.lines().find_map(|line| line.strip_prefix("event: "));
            let data = event.lines().find_map(|line| line.strip_prefix("data: "));
            match (kind, data) {
                (Some("next"), Some(data)) => return serde_json::from_str(data).expect("JSON data"),
                (None, None) => continue, // a keep-alive comment
                _ => panic!("unexpected event {event:?}"),
            }
        }
        assert!(stream.read_more().await, "the stream ended: {}", stream.text());
    }
}

/// The next part of a `multipart/mixed` response that carries a result
/// (heartbeat parts, `{}`, skipped).
async fn next_part(stream: &mut Streamed) -> Json {
    const PART: &str = "Content-Type: application/json\r\n\r\n";
    loop {
        let text = stream.text();
        if let Some(start) = text.find(PART) {
            // A part ends where its JSON does (the next delimiter comes
            // with the next part).
            let body = start + PART.len();
            let mut values = serde_json::Deserializer::from_str(&text[body..]).into_iter::<Json>();
            if let Some(Ok(value)) = values.next() {
                stream.take(body + values.byte_offset());
                if value.as_object().is_some_and(|object| object.is_empty()) {
                    continue;
                }
                return value;
            }
        }
        assert!(stream.read_more().await, "the stream ended: {}", stream.text());
    }
}

/// `Accept` of a multipart subscription (Apollo's HTTP subscriptions).
const MULTIPART: &str = r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0", application/json"#;

/// The protocols a user-creation subscription runs over here.
#[derive(Clone, Copy, Debug)]
enum Kind {
    TwoChannel,
    Native(Proto),
    Sse,
    Multipart,
}

/// One open subscription to user creations (native ones projected to the
/// username), on any protocol.
enum Sub {
    TwoChannel(Ws),
    Native(Client),
    Sse(Streamed),
    Multipart(Streamed),
}

/// What every protocol tells of a user creation.
#[derive(Debug)]
struct Seen {
    id: Json,
    username: Json,
    cursor: String,
}

impl Sub {
    /// Subscribes (resuming after `after`, if given) and waits until the
    /// subscription is registered.
    async fn open(server: &Server, kind: Kind, after: Option<&str>) -> Sub {
        let sub = match kind {
            Kind::TwoChannel => {
                let ws = server.ws().await;
                let args = format!("action: CREATE, operation: SUBSCRIBE, cursors: true{}", after_arg(after));
                ws.subscribe_ok(server, "userSubscription", &args, None).await;
                Sub::TwoChannel(ws)
            }
            Kind::Native(proto) => {
                let mut client = Client::connected(server.addr, proto, json!({})).await;
                client.start("1", &user_changes("", after)).await;
                Sub::Native(client)
            }
            Kind::Sse => Sub::Sse(Streamed::post(server.addr, "text/event-stream", &user_changes("", after)).await),
            Kind::Multipart => Sub::Multipart(Streamed::post(server.addr, MULTIPART, &user_changes("", after)).await),
        };
        server.wait_for("the subscription", |hub| hub.group_size("users-create") == 1).await;
        sub
    }

    async fn next(&mut self) -> Seen {
        let (value, cursor) = match self {
            Sub::TwoChannel(ws) => {
                let (frame, cursor) = split_cursor(ws.next_json().await);
                let data = &frame["payload"]["data"];
                assert_eq!(frame, user_frame("create", data), "a whole user frame");
                (json!({"id": data["id"], "username": data["username"]}), cursor)
            }
            Sub::Native(client) => {
                let (change, cursor) = split_cursor(next_change(client, "1").await);
                assert_eq!(change["action"], "CREATE");
                (json!({"id": change["id"], "username": change["data"]["username"]}), cursor)
            }
            Sub::Sse(stream) => {
                let (change, cursor) = split_cursor(next_sse(stream).await["data"]["userChanges"].clone());
                (json!({"id": change["id"], "username": change["data"]["username"]}), cursor)
            }
            Sub::Multipart(stream) => {
                let (change, cursor) = split_cursor(next_part(stream).await["data"]["userChanges"].clone());
                (json!({"id": change["id"], "username": change["data"]["username"]}), cursor)
            }
        };
        Seen { id: value["id"].clone(), username: value["username"].clone(), cursor }
    }

    /// Drops the connection (a client going away without unsubscribing).
    async fn drop_connection(self, server: &Server) {
        match self {
            Sub::TwoChannel(ws) => drop(ws.into_inner()),
            Sub::Native(client) => drop(client),
            Sub::Sse(stream) | Sub::Multipart(stream) => drop(stream),
        }
        server.wait_for("the connection's channel freed", |hub| hub.channel_count() == 0).await;
    }
}

/// The user `row` was seen, after `previous` (its cursor is further on).
fn assert_seen(seen: &Seen, row: &Json, previous: Option<&Seen>) {
    assert_eq!((&seen.id, &seen.username), (&row["id"], &row["username"]), "{seen:?}");
    if let Some(previous) = previous {
        assert!(offset(&seen.cursor) > offset(&previous.cursor), "{seen:?} after {previous:?}");
    }
}

async fn user(server: &Server, name: &str) -> Json {
    server.create_user(name, &format!("{name}@example.com"), "acme").await
}

/// Subscribe, see two changes, drop the connection, miss two, resume after
/// the last cursor seen: the two missed, in order, then live ones, once.
async fn resume_over(kind: Kind) {
    let server = server(Hub::default()).await;
    let mut sub = Sub::open(&server, kind, None).await;
    let a = user(&server, "a").await;
    let b = user(&server, "b").await;
    let seen_a = sub.next().await;
    assert_seen(&seen_a, &a, None);
    let seen_b = sub.next().await;
    assert_seen(&seen_b, &b, Some(&seen_a));
    sub.drop_connection(&server).await;

    let c = user(&server, "c").await;
    let d = user(&server, "d").await;
    let mut sub = Sub::open(&server, kind, Some(&seen_b.cursor)).await;
    let seen_c = sub.next().await;
    assert_seen(&seen_c, &c, Some(&seen_b));
    let seen_d = sub.next().await;
    assert_seen(&seen_d, &d, Some(&seen_c));
    let e = user(&server, "e").await;
    let seen_e = sub.next().await;
    assert_seen(&seen_e, &e, Some(&seen_d));
    let f = user(&server, "f").await;
    assert_seen(&sub.next().await, &f, Some(&seen_e));
    assert_eq!(server.hub.stats().slow_consumers, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_channel_resumes_after_a_dropped_socket() {
    resume_over(Kind::TwoChannel).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_transport_ws_resumes_after_a_dropped_connection() {
    resume_over(Kind::Native(Proto::Transport)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_graphql_ws_resumes_after_a_dropped_connection() {
    resume_over(Kind::Native(Proto::Legacy)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_resume_after_a_dropped_stream() {
    resume_over(Kind::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_responses_resume_after_a_dropped_stream() {
    resume_over(Kind::Multipart).await;
}

// ---------------------------------------------------------------------------
// Slow consumers

/// Publishes `names` back to back: one transaction, whose changes a
/// spawned task publishes after the commit without yielding (memory layer,
/// no backpressure wait), so on this single-threaded runtime no socket or
/// stream runs in between and a queue of 2 overflows.
async fn burst(server: &Server, db: &sea_orm::DatabaseConnection, names: &[String]) {
    let names = names.to_vec();
    server
        .hub
        .scope(graphex::transaction(db, move |txn| {
            Box::pin(async move {
                for name in names {
                    new_user(&name, &format!("{name}@example.com"), "acme").insert(txn).await?;
                }
                Ok::<_, sea_orm::DbErr>(())
            })
        }))
        .await
        .expect("the burst commits");
}

fn slow_hub() -> Hub {
    Hub::new(Config::default().with_queue_capacity(2).with_publish_backpressure(None))
}

fn burst_names() -> Vec<String> {
    (0..8).map(|n| format!("burst{n}")).collect()
}

#[tokio::test]
async fn two_channel_resumes_after_a_slow_consumer_close() {
    let db = app::connect("sqlite::memory:", None).await;
    let server = Server::start(db.clone(), slow_hub()).await;
    let mut ws = server.ws().await;
    ws.subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE, cursors: true", None).await;
    let first = user(&server, "first").await;
    let (frame, mut last) = split_cursor(ws.next_json().await);
    assert_eq!(frame, user_frame("create", &first));

    let names = burst_names();
    burst(&server, &db, &names).await;
    // Whatever the socket sent before the close, then 4008.
    let mut received = Vec::new();
    loop {
        match ws.next_message().await {
            Some(Message::Text(text)) => {
                let (frame, cursor) = split_cursor(serde_json::from_str(&text).expect("JSON"));
                assert!(offset(&cursor) > offset(&last));
                received.push(frame["payload"]["data"]["username"].as_str().expect("a username").to_owned());
                last = cursor;
            }
            Some(Message::Close(Some(close))) => {
                assert_eq!(u16::from(close.code), 4008, "{close:?}");
                break;
            }
            other => panic!("expected frames then close 4008, got {other:?}"),
        }
    }
    assert_eq!(server.hub.stats().slow_consumers, 1);
    assert!(received.len() < names.len(), "the queue overflowed: {received:?}");
    assert_eq!(received, names[..received.len()], "in order, a prefix of the burst");
    server.wait_for("the slow channel freed", |hub| hub.channel_count() == 0).await;

    let mut ws = server.ws().await;
    let args = format!("action: CREATE, operation: SUBSCRIBE, after: \"{last}\"");
    ws.subscribe_ok(&server, "userSubscription", &args, None).await;
    for name in &names[received.len()..] {
        let (frame, cursor) = split_cursor(ws.next_json().await);
        assert_eq!(&frame["payload"]["data"]["username"], name, "{frame}");
        assert!(offset(&cursor) > offset(&last));
        last = cursor;
    }
    let live = user(&server, "live").await;
    let (frame, cursor) = split_cursor(ws.next_json().await);
    assert_eq!(frame, user_frame("create", &live));
    assert!(offset(&cursor) > offset(&last));
}

#[tokio::test]
async fn a_native_stream_resumes_after_a_slow_consumer_error() {
    let db = app::connect("sqlite::memory:", None).await;
    let server = Server::start(db.clone(), slow_hub()).await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("1", &user_changes("", None)).await;
    server.wait_for("the subscription", |hub| hub.group_size("users-create") == 1).await;
    let first = user(&server, "first").await;
    let (change, mut last) = split_cursor(next_change(&mut client, "1").await);
    assert_eq!(change["id"], first["id"]);

    let names = burst_names();
    burst(&server, &db, &names).await;
    let mut received = Vec::new();
    loop {
        let message = client.json().await;
        assert_eq!(message["id"], "1", "{message}");
        if let Some(errors) = message["payload"].get("errors") {
            assert_eq!(errors[0]["message"], "slow consumer: outgoing queue full", "{message}");
            break;
        }
        let (change, cursor) = split_cursor(message["payload"]["data"]["userChanges"].clone());
        assert!(offset(&cursor) > offset(&last));
        received.push(change["data"]["username"].as_str().expect("a username").to_owned());
        last = cursor;
    }
    assert_eq!(client.json().await, json!({"type": "complete", "id": "1"}));
    assert_eq!(server.hub.stats().slow_consumers, 1);
    assert!(received.len() < names.len(), "the queue overflowed: {received:?}");
    assert_eq!(received, names[..received.len()], "in order, a prefix of the burst");

    // Same connection, a new operation resuming after the last cursor.
    client.start("2", &user_changes("", Some(&last))).await;
    for name in &names[received.len()..] {
        let (change, cursor) = split_cursor(next_change(&mut client, "2").await);
        assert_eq!(&change["data"]["username"], name, "{change}");
        assert!(offset(&cursor) > offset(&last));
        last = cursor;
    }
    server.wait_for("the resumed subscription", |hub| hub.group_size("users-create") == 1).await;
    let live = user(&server, "live").await;
    let (change, cursor) = split_cursor(next_change(&mut client, "2").await);
    assert_eq!(change["id"], live["id"]);
    assert!(offset(&cursor) > offset(&last));
}

// ---------------------------------------------------------------------------
// Cursors that cannot resume

/// Cursors of `count` user creations, read from a two-channel socket (closed after).
async fn cursors(server: &Server, count: usize) -> Vec<String> {
    let mut ws = server.ws().await;
    ws.subscribe_ok(server, "userSubscription", "action: CREATE, operation: SUBSCRIBE, cursors: true", None).await;
    let mut cursors = Vec::new();
    for n in 0..count {
        let row = user(server, &format!("u{}-{n}", server.hub.stats().published)).await;
        let (frame, cursor) = split_cursor(ws.next_json().await);
        assert_eq!(frame, user_frame("create", &row));
        cursors.push(cursor);
    }
    ws.close().await;
    server.wait_for("the socket's channel freed", |hub| hub.channel_count() == 0).await;
    cursors
}

/// The `extensions.code` a native subscription resuming after `after` fails with.
async fn native_refusal(server: &Server, after: &str) -> Json {
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("r", &user_changes("", Some(after))).await;
    let errors = client.expect_failure("r").await;
    client.close().await;
    errors[0]["extensions"]["code"].clone()
}

/// The two-channel confirmation's error for a subscribe resuming after `after`.
async fn two_channel_refusal(server: &Server, after: &str) -> String {
    let ws = server.ws().await;
    let args = format!("action: CREATE, operation: SUBSCRIBE, after: \"{after}\"");
    let confirmation = server.subscribe(None, &ws.channel_id, "userSubscription", &args, None).await;
    assert_eq!(confirmation["ok"], json!(false), "{confirmation}");
    let channel = server.hub.channel(&ws.channel_id).expect("the channel stays open");
    assert_eq!(channel.subscription_count(), 0, "a refused resume adds nothing");
    ws.close().await;
    confirmation["error"].as_str().expect("an error").to_owned()
}

async fn assert_expired(server: &Server, after: &str) {
    assert_eq!(native_refusal(server, after).await, "CURSOR_EXPIRED", "native, after {after}");
    let error = two_channel_refusal(server, after).await;
    assert!(error.starts_with("cursor expired"), "two-channel, after {after}: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_foreign_and_future_cursors_are_refused() {
    let server = server(Hub::default()).await;
    let head = cursors(&server, 2).await.pop().expect("a cursor");
    for malformed in ["", "nope", "0000000000000001", "0000000000000001-x", &format!("{head}0-")] {
        assert_eq!(native_refusal(&server, malformed).await, "BAD_USER_INPUT", "{malformed:?}");
        assert_eq!(two_channel_refusal(&server, malformed).await, "`after` is not a cursor", "{malformed:?}");
    }
    assert_expired(&server, &foreign_epoch(&head)).await;
    assert_expired(&server, &ahead_of(&head, 1)).await;
    assert_expired(&server, &ahead_of(&head, 1000)).await;
    server
        .wait_for("refused resumes leave no channel or group behind", |hub| {
            hub.channel_count() == 0 && hub.group_count() == 0
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_cursor_expires_and_a_kept_one_resumes() {
    let server = server(hub_with_history(2)).await;
    let cursors = cursors(&server, 5).await;
    // Kept: the changes after cursors[2] (offsets 4 and 5 of 5).
    assert_expired(&server, &cursors[0]).await;
    assert_expired(&server, &cursors[1]).await;

    let mut sub = Sub::open(&server, Kind::TwoChannel, Some(&cursors[2])).await;
    assert_eq!(sub.next().await.cursor, cursors[3]);
    assert_eq!(sub.next().await.cursor, cursors[4]);
    let live = user(&server, "live").await;
    let seen = sub.next().await;
    assert_eq!(seen.id, live["id"]);
    assert!(offset(&seen.cursor) > offset(&cursors[4]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_history_only_the_head_resumes() {
    let server = server(hub_with_history(0)).await;
    let cursors = cursors(&server, 3).await;
    assert_expired(&server, &cursors[0]).await;
    assert_expired(&server, &cursors[1]).await;

    let mut head = cursors[2].clone();
    for kind in [Kind::TwoChannel, Kind::Native(Proto::Transport)] {
        let mut sub = Sub::open(&server, kind, Some(&head)).await;
        let live = user(&server, &format!("live-{kind:?}")).await;
        let seen = sub.next().await;
        assert_eq!(seen.id, live["id"], "{kind:?}: nothing replayed, then live");
        assert_eq!(offset(&seen.cursor), offset(&head) + 1);
        sub.drop_connection(&server).await;
        assert_expired(&server, &head).await;
        head = seen.cursor;
    }
}

// ---------------------------------------------------------------------------
// The replay follows the subscription's own rules

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_projected_native_subscription_replays_only_its_matches() {
    let server = server(Hub::default()).await;
    let acme = r#", filters: {tenant: "acme"}"#;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("1", &user_changes(acme, None)).await;
    server.wait_for("the subscription", |hub| hub.group_size("users-create") == 1).await;
    server.create_user("globex0", "g0@example.com", "globex").await;
    let a1 = server.create_user("acme1", "a1@example.com", "acme").await;
    let (change, last) = split_cursor(next_change(&mut client, "1").await);
    assert_eq!(change, json!({"action": "CREATE", "id": a1["id"], "data": {"username": "acme1"}}));
    drop(client);
    server.wait_for("the connection's channel freed", |hub| hub.channel_count() == 0).await;

    server.create_user("globex1", "g1@example.com", "globex").await;
    let a2 = server.create_user("acme2", "a2@example.com", "acme").await;
    server.create_user("globex2", "g2@example.com", "globex").await;
    let a3 = server.create_user("acme3", "a3@example.com", "acme").await;

    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("2", &user_changes(acme, Some(&last))).await;
    for row in [&a2, &a3] {
        let (change, _) = split_cursor(next_change(&mut client, "2").await);
        assert_eq!(change, json!({"action": "CREATE", "id": row["id"], "data": {"username": row["username"]}}));
    }
    server.wait_for("the resumed subscription", |hub| hub.group_size("users-create") == 1).await;
    server.create_user("globex3", "g3@example.com", "globex").await;
    let a4 = server.create_user("acme4", "a4@example.com", "acme").await;
    let (change, _) = split_cursor(next_change(&mut client, "2").await);
    assert_eq!(change["id"], a4["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_projected_two_channel_subscription_replays_only_its_matches() {
    let server = server(Hub::default()).await;
    let acme = Some(json!({"tenant": "acme"}));
    let args = "action: CREATE, operation: SUBSCRIBE, data: [USERNAME], cursors: true";
    let mut ws = server.ws().await;
    ws.subscribe_ok(&server, "userSubscription", args, acme.clone()).await;
    server.create_user("globex0", "g0@example.com", "globex").await;
    server.create_user("acme1", "a1@example.com", "acme").await;
    let (got, last) = split_cursor(ws.next_json().await);
    assert_eq!(got, user_frame("create", &json!({"username": "acme1"})));
    drop(ws.into_inner());
    server.wait_for("the socket's channel freed", |hub| hub.channel_count() == 0).await;

    server.create_user("globex1", "g1@example.com", "globex").await;
    server.create_user("acme2", "a2@example.com", "acme").await;
    server.create_user("globex2", "g2@example.com", "globex").await;
    server.create_user("acme3", "a3@example.com", "acme").await;

    let mut ws = server.ws().await;
    let args = format!("action: CREATE, operation: SUBSCRIBE, data: [USERNAME], after: \"{last}\"");
    ws.subscribe_ok(&server, "userSubscription", &args, acme).await;
    for name in ["acme2", "acme3"] {
        let (got, _) = split_cursor(ws.next_json().await);
        assert_eq!(got, user_frame("create", &json!({"username": name})));
    }
    server.create_user("globex3", "g3@example.com", "globex").await;
    server.create_user("acme4", "a4@example.com", "acme").await;
    let (got, _) = split_cursor(ws.next_json().await);
    assert_eq!(got, user_frame("create", &json!({"username": "acme4"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_subscription_replays_only_what_its_scope_allows() {
    let server = server(Hub::default()).await;
    server.create_user("alice", "alice@example.com", "acme").await;
    server.create_user("bob", "bob@example.com", "acme").await;
    let args = "action: CREATE, operation: SUBSCRIBE, cursors: true";
    let mut ws = server.ws_as("alice").await;
    ws.subscribe_ok(&server, "noteSubscription", args, None).await;
    let note = server.create_note("alice", "one").await;
    let (got, last) = split_cursor(ws.next_json().await);
    assert_eq!(got, frame("notes", "create", "note", note));
    drop(ws.into_inner());
    server.wait_for("the socket's channel freed", |hub| hub.channel_count() == 0).await;

    server.create_note("bob", "bob's").await;
    let two = server.create_note("alice", "two").await;
    server.create_note("bob", "bob's again").await;

    let mut ws = server.ws_as("alice").await;
    let args = format!("action: CREATE, operation: SUBSCRIBE, after: \"{last}\"");
    ws.subscribe_ok(&server, "noteSubscription", &args, None).await;
    let (got, _) = split_cursor(ws.next_json().await);
    assert_eq!(got, frame("notes", "create", "note", two));
    server.create_note("bob", "live bob").await;
    let three = server.create_note("alice", "three").await;
    let (got, _) = split_cursor(ws.next_json().await);
    assert_eq!(got, frame("notes", "create", "note", three));
}

/// Comments are id-only: a filter on `post` is decided on the row read
/// back, and during a replay that is the row as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_row_checks_during_a_replay_read_the_current_row() {
    let server = server(Hub::default()).await;
    let post1 = Some(json!({"post": 1}));
    let args = "action: CREATE, operation: SUBSCRIBE, cursors: true";
    let mut ws = server.ws().await;
    ws.subscribe_ok(&server, "commentSubscription", args, post1.clone()).await;
    let first = server.create_comment(1, "first").await;
    let (got, last) = split_cursor(ws.next_json().await);
    assert_eq!(got, comment_frame("create", &first));
    drop(ws.into_inner());
    server.wait_for("the socket's channel freed", |hub| hub.channel_count() == 0).await;

    // Created on post 1, then deleted: live, its creation was delivered;
    // replayed, the row is gone and the creation no longer matches.
    let gone = server.create_comment(1, "gone").await;
    server.delete_comment(&gone).await;
    let kept = server.create_comment(1, "kept").await;
    server.create_comment(2, "other post").await;

    let mut ws = server.ws().await;
    let args = format!("action: CREATE, operation: SUBSCRIBE, after: \"{last}\"");
    ws.subscribe_ok(&server, "commentSubscription", &args, post1).await;
    let (got, _) = split_cursor(ws.next_json().await);
    assert_eq!(got, comment_frame("create", &kept));
    let live = server.create_comment(1, "live").await;
    let (got, _) = split_cursor(ws.next_json().await);
    assert_eq!(got, comment_frame("create", &live));
}

/// Without `cursors` or `after`, frames carry no cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_carry_a_cursor_only_when_asked() {
    let server = server(Hub::default()).await;
    let mut plain = server.ws().await;
    plain.subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    let mut asked = server.ws().await;
    let args = "action: CREATE, operation: SUBSCRIBE, cursors: true";
    asked.subscribe_ok(&server, "userSubscription", args, None).await;
    let row = user(&server, "neo").await;
    plain.expect(&user_frame("create", &row)).await;
    let (got, _) = split_cursor(asked.next_json().await);
    assert_eq!(got, user_frame("create", &row));
}

//! The standard GraphQL WebSocket protocols on `/graphql`, over real
//! sockets: `graphql-transport-ws` and the legacy `graphql-ws`, served by
//! the reference app (SQLite in memory).
//!
//! "Nothing else arrives" is never asserted by waiting: another operation
//! is run afterwards and its messages must be the next ones.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::app;
use crate::support::standard::{Client, Frame, Proto, Served, serve, wait_for};
use async_graphql::Request;
use graphex::{Connection, ConnectionHooks, Denied, Hub, Principal, ProtocolConfig, RouterBuilder};
use serde_json::{Value as Json, json};

/// The reference app with these protocol settings and hooks.
async fn start(config: ProtocolConfig, hooks: Option<Recorder>) -> (Served, Hub) {
    let db = app::connect("sqlite::memory:", None).await;
    let hub = Hub::default();
    let mut builder =
        RouterBuilder::new(app::schema(db.clone()), hub.clone()).authenticator(app::UsernameAuth(db)).protocol(config);
    if let Some(hooks) = hooks {
        builder = builder.hooks(hooks);
    }
    (serve(builder.build()).await, hub)
}

async fn start_default() -> (Served, Hub) {
    start(ProtocolConfig::default(), None).await
}

const CREATE_NEO: &str = r#"mutation { createUser(username: "neo", email: "neo@example.com", tenant: "acme") { id } }"#;

fn create_user(name: &str) -> String {
    format!(r#"mutation {{ createUser(username: "{name}", email: "{name}@example.com", tenant: "acme") {{ id }} }}"#)
}

const USER_CREATES: &str =
    "subscription { userChanges(action: CREATE, data: [USERNAME, TENANT]) { action model stream id data } }";

/// Waits until the hub holds `channels` channels (a subscribe is registered
/// when its resolver ran, after the message was sent).
async fn channels(hub: &Hub, channels: usize) {
    wait_for(&format!("{channels} hub channels"), || hub.channel_count() == channels).await;
}

#[tokio::test]
async fn transport_ws_subscribe_next_complete_frees_the_channel() {
    let (server, hub) = start_default().await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("1", USER_CREATES).await;
    channels(&hub, 1).await;
    assert!(hub.group_count() >= 1);

    let (created, others) = client.execute("2", CREATE_NEO).await;
    let id = created["createUser"]["id"].clone();
    let mut events = others;
    if events.is_empty() {
        events.push(client.json().await);
    }
    assert_eq!(
        events,
        vec![json!({"type": "next", "id": "1", "payload": {"data": {"userChanges": {
            "action": "CREATE", "model": "user", "stream": "users", "id": id,
            "data": {"username": "neo", "tenant": "acme"}}}}})]
    );

    client.stop("1").await;
    channels(&hub, 0).await;
    wait_for("no groups", || hub.group_count() == 0).await;
    // Nothing for "1" any more, and no `complete` echoed for a client complete:
    // the next messages are operation 3's.
    let (_, others) = client.execute("3", &create_user("trinity")).await;
    assert_eq!(others, Vec::<Json>::new());
    client.close().await;
}

#[tokio::test]
async fn legacy_graphql_ws_start_data_stop() {
    let (server, hub) = start_default().await;
    let mut client = Client::open(server.addr, Proto::Legacy).await;
    client.skip_keep_alives = false;
    client.send(json!({"type": "connection_init", "payload": {}})).await;
    client.expect_type("connection_ack").await;
    client.expect_type("ka").await;
    client.skip_keep_alives = true;

    client.start("a", "subscription { commentChanges { action model id data } }").await;
    channels(&hub, 1).await;
    let (created, others) = client.execute("b", r#"mutation { createComment(post: 1, text: "first") { id } }"#).await;
    let id = created["createComment"]["id"].clone();
    let mut events = others;
    if events.is_empty() {
        events.push(client.json().await);
    }
    // Comments are id-only: `data` is null.
    assert_eq!(
        events,
        vec![json!({"type": "data", "id": "a", "payload": {"data": {"commentChanges": {
            "action": "CREATE", "model": "comment", "id": id, "data": null}}}})]
    );
    client.stop("a").await;
    assert_eq!(client.json().await, json!({"type": "complete", "id": "a"}));
    channels(&hub, 0).await;
    assert_eq!(hub.group_count(), 0);
    client.send(json!({"type": "connection_terminate"})).await;
    assert!(matches!(client.frame().await, Frame::Close(..) | Frame::Gone));
}

#[tokio::test]
async fn filters_ids_and_projection_follow_the_two_channel_rules() {
    let (server, hub) = start_default().await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    let (created, _) = client.execute("u1", CREATE_NEO).await;
    let neo = created["createUser"]["id"].clone();
    client
        .start(
            "updates",
            &format!(
                "subscription {{ userChanges(action: UPDATE, id: \"{neo}\", data: [EMAIL]) {{ action id data }} }}"
            ),
        )
        .await;
    client.start("globex", r#"subscription { userChanges(filters: {tenant: "globex"}) { action id } }"#).await;
    channels(&hub, 2).await;

    // Another row, another tenant: only "globex" sees it.
    let (other, mut seen) = client.execute("u2", &create_user("trinity")).await;
    assert_eq!(other["createUser"]["id"], json!(2));
    let (_, more) = client
        .execute("u3", &format!(r#"mutation {{ updateUser(id: {neo}, email: "neo@matrix.org") {{ id }} }}"#))
        .await;
    seen.extend(more);
    if seen.is_empty() {
        seen.push(client.json().await);
    }
    assert_eq!(
        seen,
        vec![json!({"type": "next", "id": "updates", "payload": {"data": {"userChanges": {
            "action": "UPDATE", "id": neo, "data": {"email": "neo@matrix.org"}}}}})],
        "trinity is in tenant acme: no event for the globex filter"
    );
    client.close().await;
    channels(&hub, 0).await;
}

#[tokio::test]
async fn refused_operations_get_an_error_message() {
    let (server, hub) = start_default().await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    // Validation error.
    client.start("1", "subscription { nope }").await;
    let error = client.expect_type("error").await;
    assert_eq!(error["id"], "1");
    assert!(error["payload"][0]["message"].as_str().unwrap().contains("nope"), "{error}");
    // Refusals at subscribe time are execution errors: a result with the
    // error (and its stable code), then complete.
    client.start("2", "subscription { noteChanges { id } }").await;
    let errors = client.expect_failure("2").await;
    assert_eq!(errors[0]["message"], "not authorized: authentication required");
    assert_eq!(errors[0]["extensions"]["code"], "FORBIDDEN");
    assert_eq!(errors[0]["path"], json!(["noteChanges"]));
    client.start("3", r#"subscription { userChanges(filters: {nope: 1}) { id } }"#).await;
    let errors = client.expect_failure("3").await;
    assert_eq!(errors[0]["extensions"]["code"], "BAD_FILTER");
    client.start("4", r#"subscription { userChanges(id: "not a number") { id } }"#).await;
    let errors = client.expect_failure("4").await;
    assert_eq!(errors[0]["message"], "invalid id `not a number`");
    // No `complete` follows an `error`, the ids can be reused, nothing is left behind.
    let (_, others) = client.execute("1", CREATE_NEO).await;
    assert_eq!(others, Vec::<Json>::new());
    assert_eq!(hub.channel_count(), 0);
    assert_eq!(hub.group_count(), 0);

    // Legacy: the errors arrive as a result, then complete.
    let mut legacy = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    legacy.start("x", "subscription { noteChanges { id } }").await;
    let errors = legacy.expect_failure("x").await;
    assert_eq!(errors[0]["message"], "not authorized: authentication required");
}

#[tokio::test]
async fn the_connection_init_payload_names_the_principal() {
    let (server, hub) = start_default().await;
    let mut anonymous = Client::connected(server.addr, Proto::Transport, json!({})).await;
    anonymous.execute("1", CREATE_NEO).await;
    anonymous.execute("2", &create_user("smith")).await;

    let mut neo = Client::connected(server.addr, Proto::Transport, json!({"Authorization": "Bearer neo"})).await;
    neo.start("notes", "subscription { noteChanges { action data } }").await;
    channels(&hub, 1).await;
    // smith's note is out of neo's scope; neo's own note arrives.
    let mut smith = Client::connected(server.addr, Proto::Legacy, json!({"authToken": "smith"})).await;
    smith.execute("s", r#"mutation { createNote(text: "smith's") { id } }"#).await;
    let (note, others) = neo.execute("n", r#"mutation { createNote(text: "mine") { id } }"#).await;
    let mut events = others;
    if events.is_empty() {
        events.push(neo.json().await);
    }
    assert_eq!(note["createNote"]["id"], json!(2));
    assert_eq!(
        events,
        vec![json!({"type": "next", "id": "notes", "payload": {"data": {"noteChanges": {
            "action": "CREATE", "data": {"id": 2, "owner": "neo", "text": "mine"}}}}})]
    );

    // The upgrade's Authorization header is used when the payload has no token.
    let mut header = Client::open_with(server.addr, Proto::Transport, Some("smith")).await;
    header.send(json!({"type": "connection_init"})).await;
    header.expect_type("connection_ack").await;
    let (me, _) = header.execute("m", r#"mutation { createNote(text: "via header") { owner } }"#).await;
    assert_eq!(me["createNote"]["owner"], "smith");
}

#[tokio::test]
async fn close_codes_of_the_transport_protocol() {
    let (server, _hub) = start(ProtocolConfig::default().with_init_timeout(Duration::from_millis(300)), None).await;

    // Subscribe before the ack: 4401.
    let mut client = Client::open(server.addr, Proto::Transport).await;
    client.start("1", USER_CREATES).await;
    assert_eq!(client.expect_close(4401).await, "Unauthorized");

    // A token the authenticator does not know: 4403.
    let mut client = Client::open(server.addr, Proto::Transport).await;
    client.send(json!({"type": "connection_init", "payload": {"Authorization": "Bearer nobody"}})).await;
    assert_eq!(client.expect_close(4403).await, "Forbidden: invalid token");

    // No init in time: 4408.
    let mut client = Client::open(server.addr, Proto::Transport).await;
    assert_eq!(client.expect_close(4408).await, "Connection initialisation timeout");

    // Two inits: 4429.
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.send(json!({"type": "connection_init"})).await;
    client.expect_close(4429).await;

    // A running operation's id reused: 4409.
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("same", USER_CREATES).await;
    client.start("same", USER_CREATES).await;
    assert_eq!(client.expect_close(4409).await, "Subscriber for same already exists");

    // Not a protocol message: 4400.
    for bad in [
        r#"{"type": "bogus"}"#,
        "not json",
        r#"{"type": "subscribe", "id": 1, "payload": {"query": "{ users { id } }"}}"#,
        r#"{"type": "start", "id": "1", "payload": {"query": "{ users { id } }"}}"#,
    ] {
        let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
        client.send_text(bad).await;
        let reason = client.expect_close(4400).await;
        assert!(reason.starts_with("Invalid message received"), "{bad}: {reason}");
    }
}

#[tokio::test]
async fn legacy_refusals_and_bad_messages() {
    let (server, _hub) = start_default().await;
    let mut client = Client::open(server.addr, Proto::Legacy).await;
    client.send(json!({"type": "connection_init", "payload": {"token": "nobody"}})).await;
    let error = client.expect_type("connection_error").await;
    assert_eq!(error["payload"]["message"], "Forbidden: invalid token");
    client.expect_close(4403).await;

    // A bad message is answered with an error; the connection stays.
    let mut client = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    client.send_text(r#"{"type": "bogus"}"#).await;
    let error = client.expect_type("error").await;
    assert!(error["payload"]["message"].as_str().unwrap().starts_with("Invalid message received"));
    let (data, _) = client.execute("1", "{ users { username } }").await;
    assert_eq!(data, json!({"users": []}));
}

#[tokio::test]
async fn ping_pong_and_server_keep_alives() {
    let config = ProtocolConfig::default().with_keep_alive(Some(Duration::from_millis(50)));
    let (server, _hub) = start(config, None).await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.skip_keep_alives = false;
    // Server pings arrive on their own...
    assert_eq!(client.json().await, json!({"type": "ping"}));
    // ...and a client ping is answered with a pong (server pings may come between).
    client.send(json!({"type": "ping", "payload": {"n": 1}})).await;
    loop {
        let message = client.json().await;
        if message["type"] == "ping" {
            continue;
        }
        assert_eq!(message["type"], "pong", "{message}");
        break;
    }
    client.send(json!({"type": "pong"})).await;

    let mut legacy = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    legacy.skip_keep_alives = false;
    assert_eq!(legacy.json().await, json!({"type": "ka"}));
    assert_eq!(legacy.json().await, json!({"type": "ka"}));
}

#[tokio::test]
async fn the_operation_cap_answers_with_an_error_and_frees_on_complete() {
    let (server, hub) = start(ProtocolConfig::default().with_max_operations(2), None).await;
    // Different documents: equal ones would share one execution and channel.
    let creates = |n: u32| format!("subscription {{ userChanges(action: CREATE) {{ action n{n}: id }} }}");
    for proto in [Proto::Transport, Proto::Legacy] {
        let mut client = Client::connected(server.addr, proto, json!({})).await;
        client.start("1", &creates(1)).await;
        client.start("2", &creates(2)).await;
        client.start("3", &creates(3)).await;
        let error = client.expect_type("error").await;
        assert_eq!(error["id"], "3");
        let payload = if proto == Proto::Transport { &error["payload"][0] } else { &error["payload"] };
        assert_eq!(payload["message"], "too many operations on this connection (limit 2)");
        assert_eq!(payload["extensions"]["code"], "TOO_MANY_OPERATIONS");
        channels(&hub, 2).await;
        client.stop("1").await;
        if proto == Proto::Legacy {
            assert_eq!(client.json().await, json!({"type": "complete", "id": "1"}));
        }
        channels(&hub, 1).await;
        client.start("4", &creates(4)).await;
        channels(&hub, 2).await;
        client.close().await;
        channels(&hub, 0).await;
        assert_eq!(hub.group_count(), 0);
    }
}

/// Hooks that record what happened and refuse operations named `Forbidden`.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl ConnectionHooks for Recorder {
    async fn on_connect(&self, connection: &Connection, payload: &Json) -> Result<Option<Principal>, Denied> {
        self.push(format!("connect {} {payload}", connection.protocol()));
        match payload.get("user").and_then(Json::as_str) {
            Some("mallory") => Err(Denied::new("no mallory")),
            Some(user) => Ok(Some(Principal::new(user).with_claim("tenant", "acme"))),
            None => Ok(None),
        }
    }

    async fn on_disconnect(&self, connection: &Connection) {
        let who = connection.principal().map_or("anonymous", |principal| principal.id.as_str());
        self.push(format!("disconnect {who}"));
    }

    async fn on_operation(&self, _connection: &Connection, id: &str, request: &Request) -> Result<(), Denied> {
        self.push(format!("start {id}"));
        if request.operation_name.as_deref() == Some("Forbidden") {
            return Err(Denied::new("not this one"));
        }
        Ok(())
    }

    async fn on_complete(&self, _connection: &Connection, id: &str) {
        self.push(format!("complete {id}"));
    }
}

#[tokio::test]
async fn connection_hooks_see_the_whole_lifecycle() {
    let recorder = Recorder::default();
    let (server, hub) = start(ProtocolConfig::default(), Some(recorder.clone())).await;

    let mut refused = Client::open(server.addr, Proto::Transport).await;
    refused.send(json!({"type": "connection_init", "payload": {"user": "mallory"}})).await;
    assert_eq!(refused.expect_close(4403).await, "Forbidden: no mallory");

    let mut client = Client::connected(server.addr, Proto::Transport, json!({"user": "neo"})).await;
    client.start("sub", "subscription { noteChanges { action } }").await;
    channels(&hub, 1).await;
    client.execute("q", "{ users { id } }").await;
    client.send(json!({"type": "subscribe", "id": "no", "payload": {"query": "{ users { id } }", "operationName": "Forbidden"}})).await;
    let error = client.expect_type("error").await;
    assert_eq!(error["payload"][0]["message"], "not this one");
    assert_eq!(error["payload"][0]["extensions"]["code"], "FORBIDDEN");
    client.stop("sub").await;
    channels(&hub, 0).await;
    client.start("left", USER_CREATES).await;
    channels(&hub, 1).await;
    client.close().await;
    channels(&hub, 0).await;
    wait_for("disconnect hook", || recorder.lines().iter().any(|line| line.starts_with("disconnect"))).await;

    assert_eq!(
        recorder.lines(),
        vec![
            r#"connect graphql-transport-ws {"user":"mallory"}"#,
            r#"connect graphql-transport-ws {"user":"neo"}"#,
            "start sub",
            "start q",
            "complete q",
            "start no",
            "complete sub",
            "start left",
            "complete left",
            "disconnect neo",
        ]
    );
}

#[tokio::test]
async fn upgrades_without_a_standard_subprotocol_are_refused() {
    // The reference app as `cargo run --example reference` serves it.
    let db = app::connect("sqlite::memory:", None).await;
    let server = serve(app::app(db, Hub::default())).await;
    let request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/graphql",
        server.addr
    ))
    .unwrap();
    let error = tokio_tungstenite::connect_async(request).await.expect_err("no subprotocol offered");
    match error {
        tokio_tungstenite::tungstenite::Error::Http(response) => assert_eq!(response.status(), 400),
        other => panic!("expected an HTTP 400, got {other}"),
    }
}

#[tokio::test]
async fn hub_shutdown_closes_standard_connections() {
    let (server, hub) = start_default().await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("1", USER_CREATES).await;
    channels(&hub, 1).await;
    hub.shutdown();
    // The socket closes with 1001; the operation's error result may or may
    // not get out first (both are triggered by the same shutdown).
    loop {
        match client.frame().await {
            Frame::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
                break;
            }
            Frame::Json(message) => assert!(
                message["id"] == "1"
                    && (message["type"] == "complete"
                        || message["payload"]["errors"][0]["message"] == "server shutting down"),
                "{message}"
            ),
            Frame::Gone => panic!("no close frame"),
        }
    }
    channels(&hub, 0).await;
}

/// The schema's SDL without descriptions, whitespace collapsed.
fn sdl() -> String {
    crate::support::compact_sdl(&app::schema(sea_orm::DatabaseConnection::default()).sdl())
}

#[test]
fn native_fields_sit_beside_the_two_channel_fields() {
    let sdl = sdl();
    for expected in [
        "enum Action { CREATE UPDATE DELETE }",
        "type ModelChange { action: Action! model: String! stream: String! id: JSON! data: JSON cursor: String! }",
        "userSubscription( channelId: String!, action: ActionSubscriptionEnum!, operation: OperationSubscriptionEnum!, \
         id: ID, filters: JSON, data: [UserFields!], cursors: Boolean, after: String ): UserSubscription! \
         userChanges( action: ActionSubscriptionEnum! = ALL_ACTIONS, id: ID, filters: JSON, data: [UserFields!], \
         after: String ): ModelChange!",
        // Id-only models have no `data` argument.
        "commentChanges( action: ActionSubscriptionEnum! = ALL_ACTIONS, id: ID, filters: JSON, after: String ): ModelChange!",
    ] {
        assert!(sdl.contains(expected), "missing {expected}\nin {sdl}");
    }
}

/// Id-only filters on another field than the id are decided on the row,
/// read back by primary key once per change; deletes cannot be decided and are
/// dropped, as on the two-channel path.
async fn row_checks(db: sea_orm::DatabaseConnection) {
    let hub = Hub::default();
    let server = serve(app::app(db, hub.clone())).await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client
        .start("urgent", r#"subscription { commentChanges(filters: {text__icontains: "urgent"}) { action id data } }"#)
        .await;
    channels(&hub, 1).await;
    let comment = |text: &str| format!(r#"mutation {{ createComment(post: 1, text: "{text}") {{ id }} }}"#);
    let mut seen = client.execute("c1", &comment("routine")).await.1;
    seen.extend(client.execute("c2", &comment("URGENT: fix")).await.1);
    seen.extend(client.execute("u1", r#"mutation { updateComment(id: 1, text: "now urgent") { id } }"#).await.1);
    seen.extend(client.execute("d2", "mutation { deleteComment(id: 2) }").await.1);
    seen.extend(client.execute("c3", &comment("urgent again")).await.1);
    while seen.len() < 3 {
        seen.push(client.json().await);
    }
    let event = |action: &str, id: i32| json!({"type": "next", "id": "urgent", "payload": {"data": {"commentChanges": {"action": action, "id": id, "data": null}}}});
    assert_eq!(seen, vec![event("CREATE", 2), event("UPDATE", 1), event("CREATE", 3)]);
    client.stop("urgent").await;
    channels(&hub, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_row_checks_on_every_database() {
    row_checks(app::connect("sqlite::memory:", None).await).await;
    crate::support::databases::on_postgres("PostgreSQL variant", row_checks).await;
    crate::support::databases::on_mysql("MySQL variant", row_checks).await;
}

#[tokio::test]
async fn close_codes_of_the_legacy_protocol() {
    let config = ProtocolConfig::default().with_init_timeout(Duration::from_millis(300));
    let (server, hub) = start(config, None).await;
    let mut client = Client::open(server.addr, Proto::Legacy).await;
    assert_eq!(client.expect_close(4408).await, "Connection initialisation timeout");

    let mut client = Client::open(server.addr, Proto::Legacy).await;
    client.start("1", USER_CREATES).await;
    assert_eq!(client.expect_close(4401).await, "Unauthorized");

    // Operations sent right behind `connection_init` (as
    // subscriptions-transport-ws does) wait for the init and then run.
    let mut client = Client::open(server.addr, Proto::Legacy).await;
    client.send(json!({"type": "connection_init", "payload": {}})).await;
    client.start("q", "{ users { id } }").await;
    client.expect_type("connection_ack").await;
    assert_eq!(client.json().await, json!({"type": "data", "id": "q", "payload": {"data": {"users": []}}}));
    assert_eq!(client.json().await, json!({"type": "complete", "id": "q"}));

    // A second init: async-graphql answers connection_error and ends the connection.
    let mut client = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    client.send(json!({"type": "connection_init"})).await;
    let error = client.expect_type("connection_error").await;
    assert_eq!(error["payload"]["message"], "Too many initialisation requests.");
    assert!(matches!(client.frame().await, Frame::Close(..) | Frame::Gone));

    // A reused id replaces the running operation (subscriptions-transport-ws semantics).
    let mut client = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    client.start("same", "subscription { userChanges(action: UPDATE) { model } }").await;
    wait_for("the first operation", || hub.group_size("users-update") == 1).await;
    client.start("same", "subscription { userChanges(action: CREATE) { model } }").await;
    wait_for("the replacement", || hub.group_size("users-create") == 1 && hub.group_count() == 1).await;
    assert_eq!(hub.channel_count(), 1);
    let (_, mut seen) = client.execute("m", CREATE_NEO).await;
    if seen.is_empty() {
        seen.push(client.json().await);
    }
    assert_eq!(
        seen,
        vec![json!({"type": "data", "id": "same", "payload": {"data": {"userChanges": {"model": "user"}}}})]
    );
}

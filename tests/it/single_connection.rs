//! graphql-sse's single connection mode on the reference app: `PUT`
//! reserves a stream, `GET` with the token opens it, `POST` with the token
//! and `extensions.operationId` runs an operation onto it, `DELETE
//! ?operationId=` stops one. (The npm client in both modes:
//! `node_clients.rs`; across two processes: `tests/redis.rs`.)

use std::net::SocketAddr;

use crate::app;
use crate::support::http::{self, Streamed};
use crate::support::standard::{serve, wait_for};
use graphex::Hub;
use serde_json::{Value as Json, json};

const TOKEN: &str = "x-graphql-event-stream-token";
const SUBSCRIPTION: &str = "subscription { userChanges(action: CREATE, data: [USERNAME]) { id data } }";

fn create_user(name: &str) -> String {
    format!(r#"mutation {{ createUser(username: "{name}", email: "{name}@example.com", tenant: "t") {{ id }} }}"#)
}

/// Headers with the reservation token and, if any, a bearer token.
fn headers<'a>(token: &'a str, bearer: &'a Option<String>) -> Vec<(&'a str, &'a str)> {
    let mut headers = vec![(TOKEN, token)];
    if let Some(bearer) = bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    headers
}

fn bearer(user: Option<&str>) -> Option<String> {
    user.map(|user| format!("Bearer {user}"))
}

/// `PUT`: the status and the body (the token when `201`).
async fn reserve(addr: SocketAddr, user: Option<&str>, presented: Option<&str>) -> (u16, String) {
    let bearer = bearer(user);
    let mut headers: Vec<(&str, &str)> = bearer.iter().map(|bearer| ("authorization", bearer.as_str())).collect();
    if let Some(presented) = presented {
        headers.push((TOKEN, presented));
    }
    let response = http::request(addr, "PUT", "/graphql", &headers, None).await;
    (response.status.as_u16(), response.text())
}

async fn open(addr: SocketAddr, token: &str, user: Option<&str>) -> Streamed {
    let bearer = bearer(user);
    let mut headers = headers(token, &bearer);
    headers.push(("accept", "text/event-stream"));
    Streamed::get(addr, "/graphql", &headers).await
}

/// `POST` of an operation with its id: the status and the body.
async fn post(addr: SocketAddr, token: &str, user: Option<&str>, id: Option<&str>, query: &str) -> (u16, String) {
    let bearer = bearer(user);
    let mut body = json!({ "query": query });
    if let Some(id) = id {
        body["extensions"] = json!({ "operationId": id });
    }
    let response = http::request(addr, "POST", "/graphql", &headers(token, &bearer), Some(&body)).await;
    (response.status.as_u16(), response.text())
}

async fn delete(addr: SocketAddr, token: &str, user: Option<&str>, id: &str) -> u16 {
    let bearer = bearer(user);
    let path = format!("/graphql?operationId={id}");
    http::request(addr, "DELETE", &path, &headers(token, &bearer), None).await.status.as_u16()
}

/// The data of the stream's frames so far, in order, as `(event, data)`.
fn frames(stream: &Streamed) -> Vec<(String, Json)> {
    stream
        .text()
        .split("\n\n")
        .filter_map(|frame| {
            let mut lines = frame.lines();
            let event = lines.next()?.strip_prefix("event: ")?.to_owned();
            let data = lines.next()?.strip_prefix("data: ")?;
            Some((event, serde_json::from_str(data).expect("JSON data")))
        })
        .collect()
}

#[tokio::test]
async fn operations_run_on_the_reserved_stream_until_deleted() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let addr = server.addr;

    let (status, token) = reserve(addr, None, None).await;
    assert_eq!(status, 201);
    assert!(token.starts_with(hub.node()) && token.len() == hub.node().len() + 32, "{token}");
    // graphql-sse's server answers a PUT naming a live reservation with 409.
    assert_eq!(reserve(addr, None, Some(&token)).await.0, 409);

    let unknown = format!("{}{}", hub.node(), "0".repeat(32));
    let mut missing = open(addr, &unknown, None).await;
    assert_eq!(missing.head().await.0, "HTTP/1.1 404 Not Found");
    let mut stream = open(addr, &token, None).await;
    assert!(stream.content_type().await.starts_with("text/event-stream"));
    let mut second = open(addr, &token, None).await;
    assert_eq!(second.head().await.0, "HTTP/1.1 409 Conflict", "one stream per reservation");

    assert_eq!(post(addr, &token, None, Some("sub"), SUBSCRIPTION).await.0, 202);
    wait_for("the subscription", || hub.channel_count() == 1).await;
    assert_eq!(post(addr, &token, None, Some("sub"), SUBSCRIPTION).await.0, 409, "an id in use");
    let (status, body) = post(addr, &token, None, None, SUBSCRIPTION).await;
    assert_eq!((status, body.contains("operation id is missing")), (400, true), "{body}");
    assert_eq!(post(addr, &unknown, None, Some("x"), SUBSCRIPTION).await.0, 404);
    // A POST's `?token=` is not a reservation token: the usual JSON answer.
    let path = format!("/graphql?token={token}");
    let plain = json!({"query": "{ __typename }", "extensions": {"operationId": "q"}});
    let response = http::request(addr, "POST", &path, &[("accept", "application/json")], Some(&plain)).await;
    assert_eq!((response.status.as_u16(), response.text()), (200, r#"{"data":{"__typename":"Query"}}"#.to_owned()));

    // A mutation: its result, then its complete, on the stream.
    assert_eq!(post(addr, &token, None, Some("m1"), &create_user("neo")).await.0, 202);
    stream
        .read_until(
            r#"event: complete
data: {"id":"m1"}"#,
        )
        .await;
    stream.read_until("neo").await;
    let received = frames(&stream);
    let mutation = received.iter().position(|frame| frame.1["id"] == "m1").expect("the mutation's result");
    assert_eq!(
        received[mutation],
        ("next".to_owned(), json!({"id": "m1", "payload": {"data": {"createUser": {"id": 1}}}}))
    );
    assert!(received.contains(&("complete".to_owned(), json!({"id": "m1"}))));
    assert!(received.contains(&(
        "next".to_owned(),
        json!({"id": "sub", "payload": {"data": {"userChanges": {"id": 1, "data": {"username": "neo"}}}}})
    )));
    assert!(!received.iter().any(|frame| frame == &("complete".to_owned(), json!({"id": "sub"}))));

    // DELETE stops the subscription: its complete follows, its channel goes.
    assert_eq!(delete(addr, &unknown, None, "sub").await, 404);
    let response = http::request(addr, "DELETE", "/graphql", &[(TOKEN, token.as_str())], None).await;
    assert_eq!(response.status.as_u16(), 400, "no operation id");
    assert_eq!(delete(addr, &token, None, "sub").await, 200);
    stream.read_until(r#"data: {"id":"sub"}"#).await;
    wait_for("the subscription's channel freed", || hub.channel_count() == 0).await;

    // The stream's end ends the reservation.
    drop(stream);
    let mut gone = false;
    for _ in 0..100 {
        if post(addr, &token, None, Some("late"), SUBSCRIPTION).await.0 == 404 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the reservation ended with its stream");
    wait_for("the late operation's channel freed", || hub.channel_count() == 0).await;
    let mut reopened = open(addr, &token, None).await;
    assert_eq!(reopened.head().await.0, "HTTP/1.1 404 Not Found");
}

#[tokio::test]
async fn a_reservation_serves_only_its_client() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let addr = server.addr;
    for name in ["alice", "mallory"] {
        let (status, body) = http::post_json(addr, "/graphql", None, &json!({"query": create_user(name)})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, token) = reserve(addr, Some("alice"), None).await;
    assert_eq!(status, 201);
    // Presented by another client, the token is unknown: a new reservation.
    let (status, other) = reserve(addr, Some("mallory"), Some(&token)).await;
    assert_eq!(status, 201);
    assert_ne!(other, token);

    for intruder in [Some("mallory"), None] {
        let mut stream = open(addr, &token, intruder).await;
        assert_eq!(stream.head().await.0, "HTTP/1.1 404 Not Found", "{intruder:?}");
    }
    let mut stream = open(addr, &token, Some("alice")).await;
    assert!(stream.content_type().await.starts_with("text/event-stream"));
    for intruder in [Some("mallory"), None] {
        assert_eq!(post(addr, &token, intruder, Some("s"), SUBSCRIPTION).await.0, 404, "{intruder:?}");
    }
    assert_eq!(post(addr, &token, Some("alice"), Some("s"), SUBSCRIPTION).await.0, 202);
    wait_for("alice's subscription", || hub.channel_count() == 1).await;
    for intruder in [Some("mallory"), None] {
        assert_eq!(delete(addr, &token, intruder, "s").await, 404, "{intruder:?}");
    }
    assert_eq!(hub.channel_count(), 1, "still running");
    assert_eq!(delete(addr, &token, Some("alice"), "s").await, 200);
    wait_for("alice's subscription stopped", || hub.channel_count() == 0).await;
}

#[tokio::test]
async fn reservations_operations_and_ids_are_bounded() {
    let hub = Hub::new(graphex::Config::default().with_max_streams_per_client(1));
    let db = app::connect("sqlite::memory:", None).await;
    let protocol = graphex::ProtocolConfig::default().with_max_operations(1).with_max_operation_id_bytes(8);
    let router = graphex::RouterBuilder::new(app::schema(db.clone()), hub.clone())
        .authenticator(app::UsernameAuth(db))
        .protocol(protocol)
        .build();
    let server = serve(router).await;
    let addr = server.addr;

    let (status, token) = reserve(addr, None, None).await;
    assert_eq!(status, 201);
    let (status, body) = reserve(addr, None, None).await;
    assert_eq!(status, 429, "one streaming response per client: {body}");
    let mut stream = open(addr, &token, None).await;
    assert!(stream.content_type().await.starts_with("text/event-stream"));
    // A streaming response counts against the same cap.
    let mut sse = Streamed::post(addr, "text/event-stream", SUBSCRIPTION).await;
    sse.read_until("LIMIT_REACHED").await;

    let (status, body) = post(addr, &token, None, Some("123456789"), SUBSCRIPTION).await;
    assert_eq!((status, body.contains("longer than 8 bytes")), (400, true), "{body}");
    assert_eq!(post(addr, &token, None, Some("a"), SUBSCRIPTION).await.0, 202);
    let (status, body) = post(addr, &token, None, Some("b"), SUBSCRIPTION).await;
    assert_eq!((status, body.contains("too many operations")), (429, true), "{body}");
    // Request limits hold as on every endpoint.
    let deep = format!("{{ {}__typename{} }}", "a { ".repeat(40), " }".repeat(40));
    assert_eq!(post(addr, &token, None, Some("c"), &deep).await.0, 400);

    drop(stream);
    wait_for("the reservation's slot back", || hub.channel_count() == 0).await;
    let mut slot_back = false;
    for _ in 0..100 {
        let (status, _) = reserve(addr, None, None).await;
        if status == 201 {
            slot_back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(slot_back, "the ended stream gave its slot back");
}

#[tokio::test]
async fn shutdown_ends_the_stream() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let (_, token) = reserve(server.addr, None, None).await;
    let mut stream = open(server.addr, &token, None).await;
    assert_eq!(post(server.addr, &token, None, Some("s"), SUBSCRIPTION).await.0, 202);
    wait_for("the subscription", || hub.channel_count() == 1).await;
    hub.shutdown();
    while stream.read_more().await {}
    wait_for("the subscription freed", || hub.channel_count() == 0).await;
}

/// Equal subscriptions on single-connection streams share one execution
/// (`subscribe/shared.rs`), each frame tagged with its own operation id.
#[tokio::test]
async fn equal_subscriptions_share_one_execution() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let addr = server.addr;
    let mut streams = Vec::new();
    for id in ["first", "second"] {
        let (_, token) = reserve(addr, None, None).await;
        let stream = open(addr, &token, None).await;
        assert_eq!(post(addr, &token, None, Some(id), SUBSCRIPTION).await.0, 202);
        streams.push((id, stream));
    }
    wait_for("one execution for both", || hub.shared_execution_count() == 1 && hub.shared_subscriber_count() == 2)
        .await;
    assert_eq!(hub.channel_count(), 1);
    let (status, body) = http::post_json(addr, "/graphql", None, &json!({"query": create_user("neo")})).await;
    assert_eq!(status, 200, "{body}");
    for (id, stream) in &mut streams {
        let frame = format!(
            r#"data: {{"id":"{id}","payload":{{"data":{{"userChanges":{{"id":1,"data":{{"username":"neo"}}}}}}}}}}"#
        );
        stream.read_until(&frame).await;
    }
    drop(streams);
    wait_for("the execution ended", || hub.shared_execution_count() == 0 && hub.channel_count() == 0).await;
}

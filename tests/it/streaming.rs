//! Native subscriptions over plain HTTP streaming, for clients without
//! WebSockets: `multipart/mixed` (Apollo's HTTP subscriptions) and
//! `text/event-stream` (GraphQL over SSE), on the reference app.

use std::net::SocketAddr;

use crate::app;
use crate::support::http::{Streamed, post};
use crate::support::standard::{Client, Proto, serve, wait_for};
use graphex::Hub;
use serde_json::{Value as Json, json};

const SUBSCRIPTION: &str = "subscription { userChanges(action: CREATE, data: [USERNAME]) { action model id data } }";

async fn create_user(addr: SocketAddr, name: &str) {
    let mut client = Client::connected(addr, Proto::Transport, json!({})).await;
    let mutation =
        format!(r#"mutation {{ createUser(username: "{name}", email: "{name}@example.com", tenant: "t") {{ id }} }}"#);
    client.execute("m", &mutation).await;
    client.close().await;
}

#[tokio::test]
async fn a_mutation_for_a_client_that_takes_only_event_streams_is_answered_as_one() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let mut stream = Streamed::post(server.addr, "text/event-stream", SUBSCRIPTION).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    let mutation = r#"mutation { createUser(username: "neo", email: "neo@example.com", tenant: "t") { id } }"#;
    let body = json!({"query": mutation});
    let answered = post(server.addr, "/graphql", None, "text/event-stream", &body).await;
    assert_eq!(answered.header("content-type"), Some("text/event-stream"));
    assert_eq!(answered.text(), "event: next\ndata: {\"data\":{\"createUser\":{\"id\":1}}}\n\nevent: complete\n\n");
    // Executed like any mutation: its change is announced.
    stream.read_until("neo").await;
    // A client that also takes JSON gets JSON, as before.
    let mutation = r#"mutation { createUser(username: "ann", email: "ann@example.com", tenant: "t") { id } }"#;
    let answered =
        post(server.addr, "/graphql", None, "text/event-stream, application/json", &json!({"query": mutation})).await;
    assert_eq!(answered.text(), r#"{"data":{"createUser":{"id":2}}}"#);
}

#[tokio::test]
async fn server_sent_events_stream_changes_until_the_client_leaves() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let mut stream = Streamed::post(server.addr, "text/event-stream", SUBSCRIPTION).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    create_user(server.addr, "neo").await;
    let content_type = stream.read_until("\n\n").await;
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let text = stream.text();
    let event = text.split("\n\n").next().unwrap();
    let mut lines = event.lines();
    assert_eq!(lines.next(), Some("event: next"), "{event}");
    let data: Json = serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"data": {"userChanges": {"action": "CREATE", "model": "user", "id": 1, "data": {"username": "neo"}}}})
    );
    drop(stream);
    wait_for("the channel freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
}

#[tokio::test]
async fn multipart_mixed_streams_changes_and_refusals_end_the_stream() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let accept = r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0", application/json"#;
    let mut stream = Streamed::post(server.addr, accept, SUBSCRIPTION).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    create_user(server.addr, "trinity").await;
    let content_type = stream.read_until("trinity").await;
    assert!(content_type.starts_with("multipart/mixed; boundary=graphql"), "{content_type}");
    let text = stream.text();
    let part = text.split("--graphql\r\nContent-Type: application/json\r\n\r\n").nth(1).expect("a part");
    let part: Json = serde_json::from_str(part.trim_end()).unwrap();
    assert_eq!(part["data"]["userChanges"]["data"], json!({"username": "trinity"}));
    drop(stream);
    wait_for("the channel freed", || hub.channel_count() == 0).await;

    // A refused subscription: one part with the error, then the end.
    let mut refused = Streamed::post(server.addr, accept, "subscription { noteChanges { id } }").await;
    refused.read_until("--graphql--").await;
    assert!(refused.text().contains("not authorized: authentication required"), "{}", refused.text());

    // Without a streaming Accept, a subscription still runs once (two-channel confirmations).
    let mut once = Streamed::post(server.addr, "application/json", "subscription { noteChanges { id } }").await;
    once.read_until("authentication required").await;
}

#[tokio::test]
async fn a_lone_named_subscription_streams_without_an_operation_name() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let named = "subscription Mine { userChanges(action: CREATE, data: [USERNAME]) { data } }";
    let mut stream = Streamed::post(server.addr, "text/event-stream", named).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    create_user(server.addr, "morpheus").await;
    let content_type = stream.read_until("morpheus").await;
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
}

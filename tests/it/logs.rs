//! graphex's tracing spans and events (issue 19): connections, subscribes,
//! operations and disconnects carry their protocol, stream, action,
//! channel and principal id, so a log line says who did what where.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::support::reference::Server;
use crate::support::standard::{Client, Proto, wait_for};
use graphex::Hub;
use serde_json::json;
use tracing_subscriber::util::SubscriberInitExt;

/// What the formatter writes, kept for the test to read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn line_with(&self, needles: &[&str]) -> String {
        let text = self.text();
        text.lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
            .unwrap_or_else(|| panic!("no log line with all of {needles:?} in:\n{text}"))
            .to_owned()
    }
}

// Single-threaded: the subscriber set for this thread sees the server's
// tasks too, and no other test's.
#[tokio::test]
async fn connections_and_subscribes_are_logged_with_who_and_where() {
    let captured = Captured::default();
    let writer = captured.clone();
    // tracing caches each callsite's interest for the whole process, and
    // while at most one dispatcher exists it asks only the registering
    // thread's: a test on another thread (no subscriber) that reaches a
    // callsite first would disable it for this one too (2 runs in 10 of the
    // suite lost every line but one). A second live dispatcher makes the
    // interest the union of all of them; the rebuild repairs what was
    // cached before.
    let _anchor = tracing::Dispatch::new(tracing_subscriber::registry());
    let _logging = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .with_env_filter(tracing_subscriber::EnvFilter::new("graphex_runtime=debug"))
        .finish()
        .set_default();
    tracing::callsite::rebuild_interest_cache();

    let db = crate::app::connect("sqlite::memory:", None).await;
    let hub = Hub::default();
    let server = Server::start(db, hub.clone()).await;
    server.create_user("neo", "neo@example.com", "acme").await;

    // Two-channel: the socket, its subscribe, its end.
    let socket = server.ws_as("neo").await;
    socket.subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    let channel = socket.channel_id.clone();
    socket.close().await;
    wait_for("the socket's end", || hub.channel_count() == 0).await;
    let opened = captured.line_with(&["connection{", r#"protocol="two-channel""#, r#"principal="neo""#, "connected"]);
    assert!(opened.contains(&channel), "{opened}");
    captured.line_with(&[
        "subscribe{",
        r#"protocol="two-channel""#,
        r#"stream="users""#,
        &channel,
        "action=Create",
        r#"principal="neo""#,
        "confirmed",
    ]);
    captured.line_with(&[&channel, "disconnected"]);

    // graphql-transport-ws: the connection, its operation, its end.
    let mut client = Client::connected(server.addr, Proto::Transport, json!({"token": "neo"})).await;
    client.start("op-1", "subscription { userChanges(action: CREATE) { id } }").await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    client.stop("op-1").await;
    client.close().await;
    wait_for("the connection's end", || hub.channel_count() == 0).await;
    let connected = captured.line_with(&[r#"protocol="graphql-transport-ws""#, r#"principal="neo""#, "connected"]);
    assert!(connected.contains("connection{"), "{connected}");
    captured.line_with(&[r#"protocol="graphql-transport-ws""#, "operation=op-1", "operation started"]);
    captured.line_with(&["subscribe{", r#"stream="users""#, "action=Create", r#"principal="neo""#, "subscribed"]);
    captured.line_with(&[r#"protocol="graphql-transport-ws""#, "operation=op-1", "operation stopped by the client"]);
    captured.line_with(&[r#"protocol="graphql-transport-ws""#, "disconnected"]);
}

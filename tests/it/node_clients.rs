//! Independent client implementations of both WebSocket protocols and of
//! GraphQL over SSE against the examples: the `graphql-ws` npm package
//! (graphql-transport-ws), `subscriptions-transport-ws` (legacy
//! graphql-ws) and `graphql-sse` (distinct connections and single
//! connection modes), under Node.js, from `tests/node/` (`npm ci` there
//! installs them).
//!
//! Without Node.js or the packages the tests print `skipped: ...`, unless
//! `GRAPHEX_TEST_NODE=1` (set by `.ci/run`), which makes that a failure.

use std::path::PathBuf;
use std::time::Duration;

use crate::support::standard::{serve, wait_for};
use crate::{app, blog_app, chat_app};
use graphex::Hub;

fn node_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/node")
}

/// Whether the Node clients can run; panics when they must and cannot.
fn node_ready() -> bool {
    let required = std::env::var("GRAPHEX_TEST_NODE").is_ok_and(|value| value == "1");
    let node = std::process::Command::new("node").arg("--version").output().is_ok_and(|out| out.status.success());
    let why = if !node {
        "node is not installed"
    } else if !node_dir().join("node_modules/graphql-ws").is_dir()
        || !node_dir().join("node_modules/subscriptions-transport-ws").is_dir()
        || !node_dir().join("node_modules/graphql-sse").is_dir()
    {
        "the npm packages are not installed (run `npm ci` in tests/node)"
    } else {
        return true;
    };
    assert!(!required, "GRAPHEX_TEST_NODE=1 but {why}");
    println!("skipped: Node.js clients ({why})");
    false
}

async fn run(scenario: &str, protocol: &str, url: &str) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg("clients.mjs")
            .args([scenario, protocol, url])
            .current_dir(node_dir())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the node client finished in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{scenario} over {protocol} failed:\n{stdout}\n{stderr}");
    assert!(stdout.lines().any(|line| line == "done"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_ws_and_subscriptions_transport_ws_drive_the_chat() {
    if !node_ready() {
        return;
    }
    for protocol in ["transport", "legacy"] {
        let hub = Hub::default();
        let db = chat_app::connect("sqlite::memory:").await;
        let server = serve(chat_app::app(db, hub.clone())).await;
        run("chat", protocol, &format!("ws://{}/graphql", server.addr)).await;
        wait_for("the client's subscriptions freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_ws_and_subscriptions_transport_ws_read_the_blog() {
    if !node_ready() {
        return;
    }
    for protocol in ["transport", "legacy"] {
        let hub = Hub::default();
        let db = blog_app::connect("sqlite::memory:").await;
        let server = serve(blog_app::app(db, hub.clone())).await;
        run("blog", protocol, &format!("ws://{}/graphql", server.addr)).await;
        wait_for("the client's subscriptions freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
    }
}

/// Each client disconnects, then resubscribes with `after` set to the last
/// cursor it saw: the missed changes arrive exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_ws_and_subscriptions_transport_ws_resume_after_their_last_cursor() {
    if !node_ready() {
        return;
    }
    for protocol in ["transport", "legacy"] {
        let hub = Hub::default();
        let db = app::connect("sqlite::memory:", None).await;
        let server = serve(app::app(db, hub.clone())).await;
        run("resume", protocol, &format!("ws://{}/graphql", server.addr)).await;
        wait_for("the client's subscriptions freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
    }
}

/// graphql-sse in both modes: distinct connections (one event stream per
/// subscription, today's SSE responses) and single connection (a reserved
/// stream carrying every operation, stopped with `DELETE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_sse_drives_the_chat_in_both_modes() {
    if !node_ready() {
        return;
    }
    for protocol in ["sse-distinct", "sse-single"] {
        let hub = Hub::default();
        let db = chat_app::connect("sqlite::memory:").await;
        let server = serve(chat_app::app(db, hub.clone())).await;
        run("chat", protocol, &format!("http://{}/graphql", server.addr)).await;
        wait_for("the client's subscriptions freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_sse_reads_the_blog_in_both_modes() {
    if !node_ready() {
        return;
    }
    for protocol in ["sse-distinct", "sse-single"] {
        let hub = Hub::default();
        let db = blog_app::connect("sqlite::memory:").await;
        let server = serve(blog_app::app(db, hub.clone())).await;
        run("blog", protocol, &format!("http://{}/graphql", server.addr)).await;
        wait_for("the client's subscriptions freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
    }
}

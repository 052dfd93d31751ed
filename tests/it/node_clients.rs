//! Independent client implementations of both protocols against the
//! examples: the `graphql-ws` npm package (graphql-transport-ws) and
//! `subscriptions-transport-ws` (legacy graphql-ws), under Node.js, from
//! `tests/node/` (`npm ci` there installs them).
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

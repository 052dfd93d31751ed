//! Graceful shutdown (issue 19): what connections hold at `Hub::shutdown`
//! is written before their close, and `Hub::stopped` returns once every
//! task of the hub has ended.

use std::net::SocketAddr;
use std::time::Duration;

use crate::app;
use crate::support::http::Streamed;
use crate::support::standard::{Client, Frame, Proto, serve, wait_for};
use futures_util::StreamExt;
use graphex::__internals::{HubInternals, prepare};
use graphex::{Action, Config, Hub};
use serde_json::json;

const USER_CREATES: &str =
    "subscription { userChanges(action: CREATE, data: [USERNAME, TENANT]) { action model stream id data } }";

fn user(id: i32) -> app::user::Model {
    app::user::Model { id, username: format!("u{id}"), email: format!("u{id}@example.com"), tenant: "acme".into() }
}

/// Publishes three user creates and shuts the hub down without yielding
/// in between: on this single-threaded runtime the connections have not
/// run since, so the three changes are still in their queues.
async fn publish_then_shut_down(hub: &Hub) {
    for id in 1..=3 {
        let change = prepare(&user(id), Action::Create);
        hub.publish(&change.groups, change.message).await;
    }
    hub.shutdown();
}

#[tokio::test]
async fn standard_connections_write_what_they_hold_then_close_1001_without_complete() {
    for proto in [Proto::Transport, Proto::Legacy] {
        let db = app::connect("sqlite::memory:", None).await;
        let hub = Hub::default();
        let server = serve(app::app(db, hub.clone())).await;
        let mut client = Client::connected(server.addr, proto, json!({})).await;
        client.start("1", USER_CREATES).await;
        wait_for("the subscription", || hub.channel_count() == 1).await;
        publish_then_shut_down(&hub).await;
        let mut ids = Vec::new();
        loop {
            match client.frame().await {
                Frame::Json(message) => {
                    // Only results: no error and no complete, which would end
                    // the client's subscription instead of letting it resume.
                    assert_eq!(message["type"], proto.next(), "{proto:?}: {message}");
                    assert_eq!(message["id"], "1");
                    ids.push(message["payload"]["data"]["userChanges"]["id"].clone());
                }
                Frame::Close(code, reason) => {
                    assert_eq!((code, reason.as_str()), (1001, "server shutting down"), "{proto:?}");
                    break;
                }
                Frame::Gone => panic!("{proto:?}: no close frame"),
            }
        }
        assert_eq!(ids, [json!(1), json!(2), json!(3)], "{proto:?}: the queued changes, in order");
        let stopped = tokio::time::timeout(Duration::from_secs(10), hub.stopped()).await.expect("stopped in time");
        assert!(stopped.is_clean(), "{proto:?}: {stopped:?}");
    }
}

#[tokio::test]
async fn http_streams_write_what_they_hold_then_end_as_before() {
    let db = app::connect("sqlite::memory:", None).await;
    let hub = Hub::default();
    let server = serve(app::app(db, hub.clone())).await;
    let mut stream = Streamed::post(server.addr, "text/event-stream", USER_CREATES).await;
    stream.head().await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    publish_then_shut_down(&hub).await;
    while stream.read_more().await {}
    let text = stream.text();
    let events: Vec<&str> = text.split("\n\n").filter(|event| event.starts_with("event:")).collect();
    assert_eq!(events.len(), 5, "three changes, the shutdown error, complete: {text}");
    for (event, id) in events.iter().zip(1..=3) {
        assert!(event.contains(&format!(r#""id":{id}"#)), "{event}");
    }
    assert!(events[3].contains("server shutting down"), "{}", events[3]);
    assert!(events[4].starts_with("event: complete"), "{}", events[4]);
}

/// Serves the reference app on a runtime of its own with `axum::serve`'s
/// graceful shutdown, as the examples do; after `stop` fires, returns what
/// `Hub::stopped` answered and the tasks still alive on that runtime once
/// the server's state is dropped.
fn serve_on_own_runtime(
    addr_tx: std::sync::mpsc::Sender<(SocketAddr, Hub, tokio::runtime::Handle)>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (graphex::Stopped, usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let db = app::connect("sqlite::memory:", None).await;
        let hub = Hub::new(Config::default().with_stop_timeout(Duration::from_secs(5)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addr_tx.send((listener.local_addr().unwrap(), hub.clone(), tokio::runtime::Handle::current())).unwrap();
        let shutdown = {
            let hub = hub.clone();
            async move {
                let _ = stop.await;
                hub.shutdown();
            }
        };
        axum::serve(listener, app::app(db, hub.clone()).into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(shutdown)
            .await
            .unwrap();
        let stopped = hub.stopped().await;
        drop(hub);
        // What is left once the server's own state is gone (the database
        // pool's tasks end with it, a moment later).
        let metrics = tokio::runtime::Handle::current().metrics();
        for _ in 0..200 {
            if metrics.num_alive_tasks() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (stopped, metrics.num_alive_tasks())
    })
}

/// The reference app served on a thread and runtime of its own
/// (`serve_on_own_runtime`).
struct OwnServer {
    addr: SocketAddr,
    hub: Hub,
    /// The server's runtime, for its task count.
    runtime: tokio::runtime::Handle,
    /// Starts the shutdown.
    stop: tokio::sync::oneshot::Sender<()>,
    /// Joined: what `Hub::stopped` answered and the tasks left.
    server: std::thread::JoinHandle<(graphex::Stopped, usize)>,
}

impl OwnServer {
    async fn start() -> OwnServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let server = std::thread::spawn(move || serve_on_own_runtime(addr_tx, stop_rx));
        let (addr, hub, runtime) = tokio::task::spawn_blocking(move || addr_rx.recv().unwrap()).await.unwrap();
        OwnServer { addr, hub, runtime, stop, server }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_returns_once_every_task_of_the_hub_has_ended() {
    let OwnServer { addr, hub, stop: stop_tx, server, .. } = OwnServer::start().await;

    // A connection of each kind: two-channel, both standard protocols (one
    // of them sharing an execution with the SSE stream's twin), SSE.
    let (mut two_channel, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/graphql/")).await.unwrap();
    assert!(two_channel.next().await.unwrap().unwrap().to_text().unwrap().contains("channel_id"));
    let mut transport = Client::connected(addr, Proto::Transport, json!({})).await;
    transport.start("1", USER_CREATES).await;
    let mut shared = Client::connected(addr, Proto::Transport, json!({})).await;
    shared.start("1", USER_CREATES).await;
    let mut legacy = Client::connected(addr, Proto::Legacy, json!({})).await;
    legacy.start("1", USER_CREATES).await;
    let mut sse = Streamed::post(addr, "text/event-stream", USER_CREATES).await;
    sse.head().await;
    // Channels: the two-channel socket's, the WebSocket subscribers' shared
    // execution's, the SSE stream's (its own execution: HTTP streams and
    // WebSocket connections never share one).
    wait_for("every connection", || hub.channel_count() == 3 && hub.shared_subscriber_count() == 4).await;
    drop(hub);

    stop_tx.send(()).unwrap();
    for client in [&mut transport, &mut shared, &mut legacy] {
        assert_eq!(client.expect_close(1001).await, "server shutting down");
    }
    while sse.read_more().await {}
    let (stopped, alive) = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
    assert!(stopped.is_clean(), "{stopped:?}");
    assert_eq!(alive, 0, "tasks alive on the server's runtime after Hub::stopped");
}

/// Standard-protocol connections run inside the hub's shard tasks, as
/// two-channel sockets do: a shared frame for many connections wakes a few
/// shards, not a task per connection. Sixteen more connections leave the
/// server's runtime with (about) as many live tasks as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_connections_run_in_the_hub_s_shards_not_a_task_each() {
    let OwnServer { addr, hub, runtime, stop: stop_tx, server } = OwnServer::start().await;
    let alive = || runtime.metrics().num_alive_tasks();

    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut client = Client::connected(addr, Proto::Transport, json!({})).await;
        client.start("1", USER_CREATES).await;
        clients.push(client);
    }
    wait_for("two subscribers", || hub.shared_subscriber_count() == 2).await;
    // The upgrade tasks end once they handed their connection over.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = alive();
    for _ in 0..16 {
        let mut client = Client::connected(addr, Proto::Transport, json!({})).await;
        client.start("1", USER_CREATES).await;
        clients.push(client);
    }
    wait_for("eighteen subscribers", || hub.shared_subscriber_count() == 18).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while alive() > before + 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = alive();
    assert!(after <= before + 2, "live tasks: {before} with 2 connections, {after} with 18");
    // Every connection still gets its frames.
    let change = prepare(&user(1), Action::Create);
    hub.publish(&change.groups, change.message).await;
    for client in &mut clients {
        assert_eq!(client.expect_type("next").await["payload"]["data"]["userChanges"]["id"], json!(1));
    }
    drop(hub);
    stop_tx.send(()).unwrap();
    for client in &mut clients {
        assert_eq!(client.expect_close(1001).await, "server shutting down");
    }
    let (stopped, alive) = tokio::task::spawn_blocking(move || server.join().unwrap()).await.unwrap();
    assert!(stopped.is_clean(), "{stopped:?}");
    assert_eq!(alive, 0, "tasks alive on the server's runtime after Hub::stopped");
}

//! The Redis channel layer, across real processes and through a Redis restart.
//!
//! A plain test binary (`harness = false`) because it also serves as the
//! server processes: started with `GRAPHEX_REDIS_TEST_CHILD=1`, it runs the
//! reference example's own `serve` (examples/reference/serve.rs) with the
//! settings in its environment, exactly as `cargo run --example reference`
//! does. Otherwise it runs the cases below one after the other.
//!
//! Needs `GRAPHEX_TEST_REDIS_URL` (set by `.ci/run`) for the two-process
//! cases and a `redis-server` binary for the restart case; without them it
//! prints what it skipped. With `GRAPHEX_TEST_REDIS_URL` set, a missing
//! `redis-server` is a failure. The last line of its output is the summary
//! CI reads: `N passed, M failed`, with `, K skipped` when cases were skipped.
#![allow(unreachable_pub)]

#[path = "../examples/reference/app.rs"]
#[allow(dead_code)]
mod app;
#[path = "../examples/common/mod.rs"]
#[allow(dead_code)]
mod common;
#[path = "../examples/reference/serve.rs"]
mod serve;
// The integration tests' support module; this binary uses part of it.
#[path = "it/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;
// The Redis trust model (issue 15): forwarded requests, signing, TLS and ACL URLs.
#[path = "redis/trust.rs"]
mod trust;
// Positions, history, repair and the outbox (issue 16).
#[path = "redis/positions.rs"]
mod positions;
// Change capture from PostgreSQL's log across processes (issue 17).
#[path = "redis/capture.rs"]
mod capture;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use graphex::layer::{ChannelLayer, LayerError, RedisLayer, RedisOptions};
use graphex::{Config, Hub};
use redis::AsyncCommands;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use support::reference::Http;
use support::standard::{Client, Frame, Proto};
use support::{Server, TIMEOUT, comment_frame, user_frame};

const CHILD_ENV: &str = "GRAPHEX_REDIS_TEST_CHILD";
const REDIS_ENV: &str = "GRAPHEX_TEST_REDIS_URL";

/// A case; `None` when it was skipped (it printed why).
type Case = fn() -> Pin<Box<dyn Future<Output = Option<()>>>>;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    if std::env::var_os(CHILD_ENV).is_some() {
        runtime.block_on(serve::serve(serve::Settings::from_env()));
        return;
    }
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let cases: [(&str, Case); 33] = [
        ("sigterm_closes_sockets_and_exits", || Box::pin(sigterm_closes_sockets_and_exits())),
        ("layer_urls_are_checked", || Box::pin(layer_urls_are_checked())),
        ("two_processes_coarse_group", || Box::pin(two_processes_coarse_group())),
        ("two_processes_indexed_group", || Box::pin(two_processes_indexed_group())),
        ("two_processes_unsubscribe", || Box::pin(two_processes_unsubscribe())),
        ("subscribe_through_another_process", || Box::pin(subscribe_through_another_process())),
        ("single_connection_through_another_process", || Box::pin(single_connection_through_another_process())),
        ("forwarded_requests_run_only_local_subscribes", || {
            Box::pin(trust::forwarded_requests_run_only_local_subscribes())
        }),
        ("forwarding_with_a_signing_key", || Box::pin(trust::forwarding_with_a_signing_key())),
        ("acl_credentials_in_the_url", || Box::pin(trust::acl_credentials_in_the_url())),
        ("tls_urls_are_supported", || Box::pin(trust::tls_urls_are_supported())),
        ("tls_connections_carry_messages", || Box::pin(trust::tls_connections_carry_messages())),
        ("node_requests_are_signed_bounded_and_run_once", || {
            Box::pin(trust::node_requests_are_signed_bounded_and_run_once())
        }),
        ("custom_groups_cross_processes", || Box::pin(custom_groups_cross_processes())),
        ("revocation_reaches_every_process", || Box::pin(revocation_reaches_every_process())),
        ("health_pings_keep_a_healthy_connection", || Box::pin(health_pings_keep_a_healthy_connection())),
        ("redis_restart_resumes_delivery", || Box::pin(redis_restart_resumes_delivery())),
        ("leave_and_rejoin_over_graphql_transport_ws", || Box::pin(leave_and_rejoin_over_graphql_transport_ws())),
        ("leave_and_rejoin_over_two_channel", || Box::pin(leave_and_rejoin_over_two_channel())),
        ("stopping_sends_the_outbox_first", || Box::pin(positions::stopping_sends_the_outbox_first())),
        ("outbox_and_history_bridge_a_redis_restart", || {
            Box::pin(positions::outbox_and_history_bridge_a_redis_restart())
        }),
        ("redis_restarted_empty_expires_subscribers", || {
            Box::pin(positions::redis_restarted_empty_expires_subscribers())
        }),
        ("redis_restored_from_an_older_snapshot", || Box::pin(positions::redis_restored_from_an_older_snapshot())),
        ("a_change_published_during_an_outage_arrives", || {
            Box::pin(positions::a_change_published_during_an_outage_arrives())
        }),
        ("outbox_overflow_moves_the_epoch", || Box::pin(positions::outbox_overflow_moves_the_epoch())),
        ("history_across_processes", || Box::pin(positions::history_across_processes())),
        ("two_processes_across_redis_restarts", || Box::pin(positions::two_processes_across_redis_restarts())),
        ("captured_changes_sent_again_are_published_once", || {
            Box::pin(positions::captured_changes_sent_again_are_published_once())
        }),
        ("reused_offsets_after_a_restore_are_noticed", || {
            Box::pin(positions::reused_offsets_after_a_restore_are_noticed())
        }),
        ("a_publish_that_timed_out_but_ran_is_not_published_twice", || {
            Box::pin(positions::a_publish_that_timed_out_but_ran_is_not_published_twice())
        }),
        ("a_cursor_from_one_process_resumes_on_another", || {
            Box::pin(positions::a_cursor_from_one_process_resumes_on_another())
        }),
        ("capture_survives_its_reader_dying_mid_stream", || {
            Box::pin(capture::capture_survives_its_reader_dying_mid_stream())
        }),
        ("a_client_resumes_across_a_capturing_server_restart", || {
            Box::pin(capture::a_client_resumes_across_a_capturing_server_restart())
        }),
    ];
    let (mut passed, mut skipped, mut failed) = (0, 0, Vec::new());
    for (name, case) in cases {
        if filter.as_deref().is_some_and(|filter| !name.contains(filter)) {
            continue;
        }
        println!("test {name} ...");
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(case())));
        match outcome {
            Ok(Some(())) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Ok(None) => {
                println!("test {name} ... skipped");
                skipped += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("failed: {failed:?}");
    }
    // The summary CI reads: alone on the last line.
    let mut summary = format!("{passed} passed, {} failed", failed.len());
    if skipped > 0 {
        summary.push_str(&format!(", {skipped} skipped"));
    }
    println!("\n{summary}");
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

// ---------------------------------------------------------------------------
// Cases

async fn layer_urls_are_checked() -> Option<()> {
    let error = graphex::layer::connect("nats://127.0.0.1:4222", "x:").await.err().expect("unsupported scheme refused");
    assert!(matches!(error, LayerError::Unsupported(_)), "{error}");
    assert!(error.to_string().contains("redis://"), "the message names what works: {error}");
    // Nothing listens on port 1: refused at start, with the reason.
    let error = graphex::layer::connect("redis://127.0.0.1:1/0", "x:").await.err().expect("unreachable Redis refused");
    assert!(matches!(error, LayerError::Unavailable { .. }), "{error}");
    assert!(graphex::layer::connect("memory://", "x:").await.is_ok());
    Some(())
}

/// A client on process A subscribed to a coarse group; changes made on
/// process B reach it exactly once, with one Redis publish per group.
async fn two_processes_coarse_group() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let spy = Spy::start(&url, &cluster.prefix).await;
    let mut on_a = cluster.a.http.ws().await;
    let mut on_b = cluster.b.http.ws().await;
    on_a.subscribe_ok(&cluster.a.http, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    on_b.subscribe_ok(&cluster.b.http, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    assert_eq!(spy.subscribers(&["users-create"]).await, 2, "one Redis subscription per process");

    let ann = cluster.b.http.create_user("ann", "ann@example.com", "t1").await;
    on_a.expect(&user_frame("create", &ann)).await;
    on_b.expect(&user_frame("create", &ann)).await;
    let id = ann["id"].clone();
    assert_eq!(
        spy.published_until_sentinel().await,
        vec!["users-create".to_owned(), format!("users-create-{id}")],
        "one publish per group of the change, whatever the number of processes and sockets"
    );

    // Exactly one: the next frame is the next change, not a copy.
    let bob = cluster.a.http.create_user("bob", "bob@example.com", "t1").await;
    on_a.expect(&user_frame("create", &bob)).await;
    on_b.expect(&user_frame("create", &bob)).await;
    Some(())
}

/// SIGTERM stops a server as a deploy does: its two-channel sockets get
/// close 1001 and the process exits with success (the reference example's
/// `graphex::shutdown_signal`; without it SIGTERM kills the process and the
/// socket just drops).
async fn sigterm_closes_sockets_and_exits() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let mut process = Process::start("sqlite::memory:", &url, &prefix, None).await;
    let mut ws = process.http.ws().await;
    ws.subscribe_ok(&process.http, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    let ann = process.http.create_user("ann", "ann@example.com", "t1").await;
    ws.expect(&user_frame("create", &ann)).await;
    let pid = process.child.id().expect("the server runs");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "SIGTERM sent");
    match ws.next_message().await {
        Some(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) => {
            assert_eq!(u16::from(frame.code), 1001, "going away: {frame:?}");
        }
        other => panic!("expected close 1001 after SIGTERM, got {other:?}"),
    }
    let exit = tokio::time::timeout(TIMEOUT * 2, process.child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .expect("its status");
    assert!(exit.success(), "a clean exit after SIGTERM: {exit:?}");
    Some(())
}

/// Index fields route through their own group across processes too.
async fn two_processes_indexed_group() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let spy = Spy::start(&url, &cluster.prefix).await;
    cluster.b.http.create_user("ann", "ann@example.com", "t1").await;
    let mut ws = cluster.a.http.ws_as("ann").await;
    ws.subscribe_ok(
        &cluster.a.http,
        "messageSubscription",
        "action: CREATE, operation: SUBSCRIBE",
        Some(json!({"room": 7})),
    )
    .await;
    let group = "messages-create:room=7&tenant=t1";
    assert_eq!(spy.subscribers(&[group, "messages-create"]).await, 1, "only the indexed group is subscribed");

    spy.published_until_sentinel().await; // the user's creation

    let other_room = cluster.b.http.create_message("ann", 8, "elsewhere").await;
    let in_room = cluster.b.http.create_message("ann", 7, "hello").await;
    // Changes arrive in order: a leak of room 8 would come first.
    ws.expect(&json!({"stream": "messages", "payload": {"action": "create", "model": "message", "data": in_room}}))
        .await;
    let groups = |message: &Json| {
        let room = &message["room"];
        vec![
            "messages-create".to_owned(),
            format!("messages-create-{}", message["id"]),
            format!("messages-create:room={room}&tenant=t1"),
        ]
    };
    assert_eq!(
        spy.published_until_sentinel().await,
        [groups(&other_room), groups(&in_room)].concat(),
        "each message published once to each of its three groups"
    );
    Some(())
}

/// When the last member on A leaves, A leaves the Redis channel, and B's
/// changes stop reaching the client.
async fn two_processes_unsubscribe() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let spy = Spy::start(&url, &cluster.prefix).await;
    let mut ws = cluster.a.http.ws().await;
    let args = "action: CREATE, operation: SUBSCRIBE";
    ws.subscribe_ok(&cluster.a.http, "userSubscription", args, None).await;
    assert_eq!(spy.subscribers(&["users-create"]).await, 1);
    ws.subscribe_ok(&cluster.a.http, "userSubscription", "action: CREATE, operation: UNSUBSCRIBE", None).await;
    // The UNSUBSCRIBE is sent by the layer's subscriber task after the
    // confirmation (nothing waits for it: the hub drops what it no longer wants).
    wait_for_async("the process left the Redis channel", || async { spy.subscribers(&["users-create"]).await == 0 })
        .await;

    // Sentinel: a comment subscription made afterwards; the user created
    // before the comment would arrive first if it leaked.
    ws.subscribe_ok(&cluster.a.http, "commentSubscription", args, None).await;
    cluster.b.http.create_user("ann", "ann@example.com", "t1").await;
    let id = cluster.b.http.create_comment(1, "x").await;
    ws.expect(&comment_frame("create", &id)).await;
    Some(())
}

/// The subscribe may reach any process: B forwards it to A, which holds the
/// socket, and answers with A's confirmation (the principal B authenticated,
/// A's rules).
async fn subscribe_through_another_process() -> Option<()> {
    let url = redis_url()?;
    through_another_process(&url, &Cluster::start(&url).await).await;
    Some(())
}

/// The scenario of [`subscribe_through_another_process`] on `cluster`.
async fn through_another_process(url: &str, cluster: &Cluster) {
    let spy = Spy::start(url, &cluster.prefix).await;
    cluster.a.http.create_user("ann", "ann@example.com", "t1").await;
    let mut ws = cluster.a.http.ws_as("ann").await;
    // Through B: a scoped, authenticated subscription on A's socket.
    ws.subscribe_ok(
        &cluster.b.http,
        "messageSubscription",
        "action: CREATE, operation: SUBSCRIBE",
        Some(json!({"room": 7})),
    )
    .await;
    let group = "messages-create:room=7&tenant=t1";
    assert_eq!(spy.subscribers(&[group]).await, 1, "the process holding the socket subscribed");
    let message = cluster.b.http.create_message("ann", 7, "hello").await;
    ws.expect(&json!({"stream": "messages", "payload": {"action": "create", "model": "message", "data": message}}))
        .await;

    // The owner's rules apply: another principal may not use ann's channel.
    let foreign = cluster
        .b
        .http
        .subscribe(Some("nobody"), &ws.channel_id, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None)
        .await;
    assert_eq!(foreign["ok"], json!(false), "{foreign}");
    assert_eq!(foreign["error"], json!("channel belongs to another principal"), "{foreign}");

    ws.subscribe_ok(
        &cluster.b.http,
        "messageSubscription",
        "action: CREATE, operation: UNSUBSCRIBE",
        Some(json!({"room": 7})),
    )
    .await;
    wait_for_async("unsubscribed through B as well", || async { spy.subscribers(&[group]).await == 0 }).await;

    // A channel of no running process: the usual refusal, at once.
    let unknown = "ffffffff".repeat(5);
    let refused = cluster
        .b
        .http
        .subscribe(None, &unknown, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None)
        .await;
    assert_eq!(refused["ok"], json!(false), "{refused}");
    assert_eq!(refused["error"], json!("unknown channel"), "{refused}");
}

/// graphql-sse single connection mode across processes: the stream is
/// reserved and held by A; operations POSTed to B (and their DELETE) are
/// forwarded to A, run there as the principal B authenticated, and their
/// results arrive on A's stream.
async fn single_connection_through_another_process() -> Option<()> {
    use support::http::{Streamed, request};
    const TOKEN: &str = "x-graphql-event-stream-token";
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let (a, b) = (cluster.a.http.addr, cluster.b.http.addr);
    cluster.a.http.create_user("ann", "ann@example.com", "t1").await;
    let ann = [("authorization", "Bearer ann")];
    let reserved = request(a, "PUT", "/graphql", &ann, None).await;
    assert_eq!(reserved.status.as_u16(), 201);
    let token = reserved.text();
    let as_ann = [("authorization", "Bearer ann"), (TOKEN, token.as_str())];
    let mut stream = Streamed::get(a, "/graphql", &[as_ann[0], as_ann[1], ("accept", "text/event-stream")]).await;
    assert!(stream.content_type().await.starts_with("text/event-stream"));
    let operation = |id: &str, query: &str| json!({"query": query, "extensions": {"operationId": id}});

    // Another process's token: B forwards, A refuses another principal.
    cluster.a.http.create_user("nobody", "nobody@example.com", "t2").await;
    let subscription = operation("s", "subscription { userChanges(action: CREATE, data: [USERNAME]) { data } }");
    let foreign = [("authorization", "Bearer nobody"), (TOKEN, token.as_str())];
    assert_eq!(request(b, "POST", "/graphql", &foreign, Some(&subscription)).await.status.as_u16(), 404);

    assert_eq!(request(b, "POST", "/graphql", &as_ann, Some(&subscription)).await.status.as_u16(), 202);
    // The subscription registers on A after the 202: create users through B
    // until one arrives.
    let mut arrived = false;
    for n in 0..50 {
        cluster.b.http.create_user(&format!("u{n}"), &format!("u{n}@example.com"), "t1").await;
        if tokio::time::timeout(Duration::from_millis(200), stream.read_until(r#"{"id":"s","payload""#)).await.is_ok() {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "a change made through B reached the subscription POSTed to B: {}", stream.text());

    // A mutation posted to B: its result and complete on A's stream.
    let mutation = operation(
        "m",
        r#"mutation { createUser(username: "zed", email: "z@example.com", tenant: "t1") { username } }"#,
    );
    assert_eq!(request(b, "POST", "/graphql", &as_ann, Some(&mutation)).await.status.as_u16(), 202);
    stream.read_until(r#"data: {"id":"m","payload":{"data":{"createUser":{"username":"zed"}}}}"#).await;
    stream.read_until(r#"data: {"id":"m"}"#).await;

    // DELETE through B stops it on A: its complete follows.
    assert_eq!(request(b, "DELETE", "/graphql?operationId=s", &foreign, None).await.status.as_u16(), 404);
    assert_eq!(request(b, "DELETE", "/graphql?operationId=s", &as_ann, None).await.status.as_u16(), 200);
    stream
        .read_until(
            r#"event: complete
data: {"id":"s"}"#,
        )
        .await;

    // A token of no running process.
    let nowhere = format!("ffffffff{}", "0".repeat(32));
    let unknown = [("authorization", "Bearer ann"), (TOKEN, nowhere.as_str())];
    assert_eq!(request(b, "POST", "/graphql", &unknown, Some(&subscription)).await.status.as_u16(), 404);
    Some(())
}

/// `broadcast` reaches custom-group subscribers of another hub through
/// Redis, including a group whose name looks like a process's request channel.
async fn custom_groups_cross_processes() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let hub = || async {
        let options = RedisOptions::default().with_prefix(prefix.clone());
        let layer = RedisLayer::connect_with(&url, options).await.expect("Redis answers");
        Hub::with_layer(Config::default(), Arc::new(layer))
    };
    let (a, b) = (hub().await, hub().await);
    let lookalike = format!("node:{}", a.node());
    let mut received = a.join_groups(["chat", lookalike.as_str()]).await.expect("joined");
    b.broadcast("chat", json!({"text": "hi"})).await.expect("broadcast");
    b.broadcast(&lookalike, json!({"text": "not a request"})).await.expect("broadcast");
    for expected in [json!({"text": "hi"}), json!({"text": "not a request"})] {
        let payload = tokio::time::timeout(TIMEOUT, received.next()).await.expect("in time").expect("open");
        assert_eq!(*payload, expected);
    }
    Some(())
}

/// `Hub::revoke` in one process ends the principal's socket in another:
/// a reference-example process holds ann's and bob's two-channel sockets,
/// a hub of this process on the same Redis prefix revokes ann; ann's socket
/// closes with 4403, bob's keeps receiving.
async fn revocation_reaches_every_process() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let process = Process::start("sqlite::memory:", &url, &prefix, None).await;
    let options = RedisOptions::default().with_prefix(prefix.clone());
    let layer = RedisLayer::connect_with(&url, options).await.expect("Redis answers");
    let other = Hub::with_layer(Config::default(), Arc::new(layer));
    let spy = Spy::start(&url, &prefix).await;
    wait_for_async("both processes listen for revocations", || async { spy.subscribers(&["~revoke"]).await == 2 })
        .await;
    process.http.create_user("ann", "ann@example.com", "t1").await;
    process.http.create_user("bob", "bob@example.com", "t1").await;
    let mut ann = process.http.ws_as("ann").await;
    let mut bob = process.http.ws_as("bob").await;
    ann.subscribe_ok(&process.http, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    bob.subscribe_ok(&process.http, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    other.revoke("ann").await.expect("published");
    expect_close(&mut ann, 4403).await;
    let cid = process.http.create_user("cid", "cid@example.com", "t1").await;
    bob.expect(&user_frame("create", &cid)).await;
    Some(())
}

/// Health pings on a subscribed connection succeed: no reconnection (which
/// would lose the messages published meanwhile) while Redis is fine.
async fn health_pings_keep_a_healthy_connection() -> Option<()> {
    let url = redis_url()?;
    let options =
        RedisOptions::default().with_prefix(unique_prefix()).with_health_check_interval(Duration::from_millis(10));
    let layer = Arc::new(RedisLayer::connect_with(&url, options).await.expect("Redis answers"));
    let hub = Hub::with_layer(Config::default(), layer.clone() as Arc<dyn ChannelLayer>);
    let server = Server::start(app::connect("sqlite::memory:", None).await, hub).await;
    let mut ws = server.ws().await;
    ws.arm_user_sentinel(&server).await;
    for round in 0..5 {
        // Several pings fall between two changes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let user = server.create_user(&format!("u{round}"), "u@example.com", "t1").await;
        ws.expect(&user_frame("create", &user)).await;
    }
    assert_eq!(layer.stats().reconnects, 0, "a healthy connection is kept");
    assert!(layer.stats().connected);
    Some(())
}

/// Kills and restarts a Redis of the test's own (empty: no persistence):
/// the layer reconnects and resubscribes; the outage's publish waits in
/// the outbox; the stream's history is gone, so the socket that was
/// subscribed is closed with CURSOR_EXPIRED (4010) rather than left with a
/// possible gap, and a new one receives what follows.
async fn redis_restart_resumes_delivery() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let options = RedisOptions::default()
        .with_prefix(unique_prefix())
        .with_publish_timeout(Duration::from_millis(500))
        .with_subscribe_timeout(Duration::from_secs(3))
        .with_connect_timeout(Duration::from_millis(500))
        .with_min_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(200))
        .with_health_check_interval(Duration::from_millis(500));
    let layer = Arc::new(RedisLayer::connect_with(&redis.url(), options).await.expect("own Redis answers"));
    let hub = Hub::with_layer(Config::default(), layer.clone() as Arc<dyn ChannelLayer>);
    let db = app::connect("sqlite::memory:", None).await;
    let server = Server::start(db, hub.clone()).await;
    let mut ws = server.ws().await;
    ws.arm_user_sentinel(&server).await;

    let before = server.create_user("before", "b@example.com", "t1").await;
    ws.expect(&user_frame("create", &before)).await;
    assert_eq!(layer.stats().published, 2, "two groups, one publish each");

    redis.stop_empty().await;
    // HTTP keeps working; the change is committed, its announcement waits in the outbox.
    server.create_user("during", "d@example.com", "t1").await;
    assert_eq!(hub.stats().dropped, 0, "the outage's change is kept, not dropped");
    assert_eq!(layer.stats().outboxed, 1);
    wait_until("the layer notices the outage", || !layer.stats().connected).await;
    assert_eq!(metric(&hub, "graphex_layer_connected"), Some(0), "the outage shows in the metrics");
    // A subscribe during the outage is not confirmed while Redis cannot
    // deliver: past `subscribe_timeout` it is refused, saying why, and the
    // refused subscription is not left behind.
    let late = server.ws().await;
    let update = "action: UPDATE, operation: SUBSCRIBE";
    let refused = server.subscribe(None, &late.channel_id, "userSubscription", update, None).await;
    assert_eq!(refused["ok"], json!(false), "{refused}");
    let error = refused["error"].as_str().expect("a reason");
    assert!(error.contains("did not confirm the subscription to `users-update`"), "{error}");
    assert_eq!(hub.group_size("users-update"), 0, "a refused join leaves nothing behind");
    // One made while Redis is still down waits for the resubscription and
    // is confirmed then; a change made after the confirmation reaches it.
    let waiting = {
        let (addr, channel) = (server.addr, late.channel_id.clone());
        tokio::spawn(async move { Http { addr }.subscribe(None, &channel, "userSubscription", update, None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "not confirmed while Redis is down");

    redis.start_again().await;
    let confirmed = waiting.await.expect("subscribe task");
    assert_eq!(confirmed["ok"], json!(true), "confirmed once Redis is back: {confirmed}");
    wait_until("the layer reconnects and resubscribes", || layer.stats().connected && layer.stats().resubscribed >= 2)
        .await;
    assert!(layer.stats().reconnects >= 1);
    // Redis lost the stream's history: the subscribed socket is closed
    // (CURSOR_EXPIRED), never left with a gap.
    expect_close(&mut ws, 4010).await;
    assert!(layer.stats().lost >= 1);
    // The metrics read the layer's counters; Redis keeps the history, not this process.
    let stats = layer.stats();
    assert_eq!(metric(&hub, "graphex_layer_connected"), Some(1));
    assert_eq!(metric(&hub, "graphex_layer_reconnects_total"), Some(stats.reconnects));
    assert_eq!(metric(&hub, "graphex_layer_streams_lost_total"), Some(stats.lost));
    assert_eq!(metric(&hub, "graphex_cursor_expirations_total"), Some(hub.stats().expired));
    assert!(hub.stats().expired >= 1);
    assert_eq!(metric(&hub, "graphex_layer_history"), None);
    drop(late);
    let mut fresh = server.ws().await;
    fresh.arm_user_sentinel(&server).await;
    let after = server.create_user("after", "a@example.com", "t1").await;
    fresh.expect(&user_frame("create", &after)).await;
    assert_eq!(hub.stats().dropped, 0);
    Some(())
}

/// The value of an unlabelled series of `hub`'s metrics, if exported.
fn metric(hub: &Hub, series: &str) -> Option<u64> {
    let text = graphex::render_metrics(hub);
    let prefix = format!("{series} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map(|value| value.parse().expect("a whole number"))
}

/// Skips the socket's frames until it is closed; asserts the close code.
async fn expect_close(ws: &mut support::two_channel::Ws, code: u16) {
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match ws.next_message().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), code, "{frame:?}");
                return;
            }
            Some(Message::Text(_)) => continue,
            other => panic!("expected a close frame with code {code}, got {other:?}"),
        }
    }
}

/// Leave and re-join trials per protocol.
const REJOIN_TRIALS: usize = 100;

/// What Apollo Client and urql do when variables change: `complete` and a
/// new `subscribe` of the same field, back to back, on process A; users are
/// created on process B. A process whose stale UNSUBSCRIBE reached Redis
/// after the new SUBSCRIBE is deaf to the group for good: no attempt of the
/// trial is ever delivered. Once one is, every later one must be, in order.
async fn leave_and_rejoin_over_graphql_transport_ws() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let mut client = Client::connected(cluster.a.http.addr, Proto::Transport, json!({})).await;
    let query = "subscription { userChanges(action: CREATE, data: [USERNAME]) { data } }";
    for trial in 0..REJOIN_TRIALS {
        let (old, new) = (format!("old-{trial}"), format!("new-{trial}"));
        client.start(&old, query).await;
        client.stop(&old).await;
        client.start(&new, query).await;
        // No confirmation exists in this protocol: the subscription is live
        // from the first change that reaches it. The server may read the
        // `complete` after a change it delivers to the old operation (the
        // socket and the mutations do not share a connection): such frames
        // are allowed, as the protocol allows them.
        let mut created = Vec::new();
        let first = 'live: loop {
            assert!(created.len() < 50, "trial {trial}: process A never delivered again after leave and re-join");
            let name = format!("t{trial}-{}", created.len());
            cluster.b.http.create_user(&name, "u@example.com", "t1").await;
            created.push(name);
            while let Some(frame) = client.frame_within(Duration::from_millis(100)).await {
                if !matches!(&frame, Frame::Json(message) if message["id"] == old.as_str()) {
                    break 'live username_of(&frame, &new, trial);
                }
            }
        };
        let check = format!("t{trial}-check");
        cluster.b.http.create_user(&check, "u@example.com", "t1").await;
        let seen = created.iter().position(|name| *name == first).expect("a user of this trial");
        for expected in created[seen + 1..].iter().chain([&check]) {
            let frame = client.frame().await;
            assert_eq!(&username_of(&frame, &new, trial), expected, "trial {trial}: nothing lost, in order");
        }
        client.stop(&new).await;
    }
    Some(())
}

/// The username of a `next` of operation `id` on `userChanges`.
fn username_of(frame: &Frame, id: &str, trial: usize) -> String {
    let Frame::Json(message) = frame else { panic!("trial {trial}: expected a message, got {frame:?}") };
    assert_eq!(message["type"], "next", "trial {trial}: {message}");
    assert_eq!(message["id"], id, "trial {trial}: only the new subscription is live: {message}");
    let data = &message["payload"]["data"]["userChanges"]["data"];
    let data: Json = data.as_str().map_or_else(|| data.clone(), |text| serde_json::from_str(text).expect("JSON"));
    data["username"].as_str().unwrap_or_else(|| panic!("trial {trial}: no username in {message}")).to_owned()
}

/// The two-channel protocol: an UNSUBSCRIBE and a SUBSCRIBE of the same
/// group sent at once (two HTTP requests in flight), on process A; once
/// both are confirmed, a user created on process B is the next frame.
async fn leave_and_rejoin_over_two_channel() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let a = &cluster.a.http;
    let mut ws = a.ws().await;
    // Two subscriptions of one group (`users-create`) that differ in their
    // filters, so that whichever request runs first, the other one's is left.
    let variants = [None, Some(json!({"id__gt": 0}))];
    let channel_id = ws.channel_id.clone();
    let subscribe = |operation: &str, filters: &Option<Json>| {
        let args = format!("action: CREATE, operation: {operation}");
        let (channel, filters) = (channel_id.clone(), filters.clone());
        async move { a.subscribe(None, &channel, "userSubscription", &args, filters).await }
    };
    let first = subscribe("SUBSCRIBE", &variants[0]).await;
    assert_eq!(first["ok"], json!(true), "{first}");
    for trial in 0..REJOIN_TRIALS {
        let (leaving, joining) = (&variants[trial % 2], &variants[(trial + 1) % 2]);
        let (left, joined) = tokio::join!(subscribe("UNSUBSCRIBE", leaving), subscribe("SUBSCRIBE", joining));
        assert_eq!(left["ok"], json!(true), "trial {trial}: {left}");
        assert_eq!(joined["ok"], json!(true), "trial {trial}: {joined}");
        let user = cluster.b.http.create_user(&format!("t{trial}"), "u@example.com", "t1").await;
        ws.expect_in(&format!("trial {trial}"), &user_frame("create", &user)).await;
    }
    Some(())
}

// ---------------------------------------------------------------------------
// Fixtures

fn redis_url() -> Option<String> {
    let url = std::env::var(REDIS_ENV).ok();
    if url.is_none() {
        println!("skipped: needs a Redis server (set {REDIS_ENV}, e.g. redis://127.0.0.1:6379/0)");
    }
    url
}

fn unique_prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("graphex-test-{}-{}-{random:016x}:", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two reference-example processes on one SQLite file and one Redis prefix.
struct Cluster {
    a: Process,
    b: Process,
    prefix: String,
    _dir: TempDir,
}

impl Cluster {
    async fn start(redis_url: &str) -> Cluster {
        Cluster::start_signed(redis_url, None).await
    }

    /// With `signing_key`, both processes sign their requests to each other.
    async fn start_signed(redis_url: &str, signing_key: Option<&str>) -> Cluster {
        let dir = TempDir::new();
        let database = format!("sqlite://{}?mode=rwc", dir.0.join("shared.db").display());
        let prefix = unique_prefix();
        // One after the other: the first creates the tables.
        let a = Process::start(&database, redis_url, &prefix, signing_key).await;
        let b = Process::start(&database, redis_url, &prefix, signing_key).await;
        Cluster { a, b, prefix, _dir: dir }
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique_prefix().trim_end_matches(':'));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// This binary, started as the reference example's server.
struct Process {
    http: Http,
    child: Child,
}

impl Process {
    async fn start(database: &str, redis_url: &str, prefix: &str, signing_key: Option<&str>) -> Process {
        Process::start_with(database, redis_url, prefix, signing_key, &[]).await
    }

    /// With more environment (`GRAPHEX_CAPTURE`, ...).
    async fn start_with(
        database: &str,
        redis_url: &str,
        prefix: &str,
        signing_key: Option<&str>,
        more: &[(&str, &str)],
    ) -> Process {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .envs(more.iter().copied())
            .env(CHILD_ENV, "1")
            .env("GRAPHEX_SIGNING_KEY", signing_key.unwrap_or_default())
            .env("DATABASE_URL", database)
            .env("GRAPHEX_LAYER", redis_url)
            .env("GRAPHEX_PREFIX", prefix)
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("server process starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(TIMEOUT * 2, lines.next_line())
            .await
            .expect("server process announced itself in time")
            .expect("readable stdout")
            .expect("server process printed its address");
        let addr: SocketAddr = first
            .rsplit("http://")
            .next()
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        // Keep reading so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process { http: Http { addr }, child }
    }

    /// Kills it at once (SIGKILL: no shutdown runs).
    async fn kill(&mut self) {
        self.child.kill().await.expect("killed");
    }
}

/// A raw Redis subscriber on every channel of a prefix: sees each publish.
struct Spy {
    messages: tokio::sync::Mutex<futures_util::stream::BoxStream<'static, redis::Msg>>,
    publisher: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl Spy {
    async fn start(url: &str, prefix: &str) -> Spy {
        let client = redis::Client::open(url).expect("Redis URL");
        let mut pubsub = client.get_async_pubsub().await.expect("Redis answers");
        pubsub.psubscribe(format!("{prefix}*")).await.expect("psubscribe");
        let publisher = client.get_multiplexed_async_connection().await.expect("Redis answers");
        Spy {
            messages: tokio::sync::Mutex::new(pubsub.into_on_message().boxed()),
            publisher,
            prefix: prefix.to_owned(),
        }
    }

    /// The number of subscribers (processes) of these groups' channels, summed.
    async fn subscribers(&self, groups: &[&str]) -> i64 {
        let mut command = redis::cmd("PUBSUB");
        command.arg("NUMSUB");
        for group in groups {
            command.arg(format!("{}{group}", self.prefix));
        }
        let counts: Vec<(String, i64)> =
            command.query_async(&mut self.publisher.clone()).await.expect("PUBSUB NUMSUB answers");
        counts.into_iter().map(|(_, count)| count).sum()
    }

    /// The groups published to since the last call, in order, up to a
    /// sentinel this publishes now (Redis keeps the order of publishes).
    async fn published_until_sentinel(&self) -> Vec<String> {
        let sentinel = format!("{}~sentinel", self.prefix);
        let _: i64 = self.publisher.clone().publish(&sentinel, "").await.expect("publish sentinel");
        let mut messages = self.messages.lock().await;
        let mut groups = Vec::new();
        loop {
            let message = tokio::time::timeout(TIMEOUT, messages.next())
                .await
                .expect("spy received the sentinel in time")
                .expect("spy connection open");
            let channel = message.get_channel_name();
            if channel == sentinel {
                return groups;
            }
            groups.push(channel.strip_prefix(&self.prefix).expect("prefixed channel").to_owned());
        }
    }
}

/// A `redis-server` of the test's own, on a free port, with a data
/// directory: stopped empty or with its data saved, started again on the
/// same port, or restored from an older snapshot.
struct OwnRedis {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start() -> Option<OwnRedis> {
        if std::process::Command::new("redis-server").arg("--version").output().is_err() {
            assert!(std::env::var_os(REDIS_ENV).is_none(), "redis-server must be installed when {REDIS_ENV} is set");
            println!("skipped: needs the redis-server binary");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("port").port();
        let mut redis = OwnRedis { port, dir: TempDir::new(), child: None };
        redis.start_again().await;
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn start_again(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("url");
        wait_for_async("the test's redis-server answers", || {
            let client = client.clone();
            async move {
                match client.get_multiplexed_async_connection().await {
                    Ok(mut connection) => redis::cmd("PING").query_async::<String>(&mut connection).await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).expect("url");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis answers");
        let mut command = redis::cmd(args[0]);
        for arg in &args[1..] {
            command.arg(*arg);
        }
        command.query_async(&mut connection).await.expect("command answered")
    }

    /// Saves the data (`dump.rdb`) and keeps a copy aside.
    async fn snapshot(&self) {
        self.command(&["SAVE"]).await;
        std::fs::copy(self.dir.0.join("dump.rdb"), self.dir.0.join("snapshot.rdb")).expect("copy the snapshot");
    }

    /// Stops Redis, its data saved (it starts again with it).
    async fn stop_saving(&mut self) {
        self.command(&["SAVE"]).await;
        self.kill().await;
    }

    /// Stops Redis; the next start has no data.
    async fn stop_empty(&mut self) {
        self.kill().await;
        let _ = std::fs::remove_file(self.dir.0.join("dump.rdb"));
    }

    /// Stops Redis; the next start has the snapshot's data.
    async fn stop_to_snapshot(&mut self) {
        self.kill().await;
        std::fs::copy(self.dir.0.join("snapshot.rdb"), self.dir.0.join("dump.rdb")).expect("restore the snapshot");
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("redis-server killed");
        }
    }
}

async fn wait_for_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

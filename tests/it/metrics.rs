//! `/metrics` after a scripted session: two-channel and
//! graphql-transport-ws clients, changes, a slow consumer, disconnects;
//! the scraped counters and gauges moved by exactly what happened.

use std::collections::HashMap;
use std::time::Duration;

use graphex::{Config, Hub};
use serde_json::json;

use crate::app;
use crate::support::http::get;
use crate::support::standard::{Client, Proto};
use crate::support::{Server, TIMEOUT, USERS_CREATE, user_frame};

/// A scrape: each sample line's series (name and labels) and value.
async fn scrape(server: &Server) -> HashMap<String, f64> {
    let response = get(server.addr, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some(graphex::METRICS_CONTENT_TYPE));
    let text = response.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            (series.to_owned(), value.parse().unwrap_or_else(|_| panic!("not a value: {line}")))
        })
        .collect()
}

fn value(scraped: &HashMap<String, f64>, series: &str) -> f64 {
    *scraped.get(series).unwrap_or_else(|| panic!("{series} not scraped: {scraped:?}"))
}

fn open(protocol: &str) -> String {
    format!("graphex_connections_open{{protocol=\"{protocol}\"}}")
}

/// Scrapes until `series` reads `expected`, for at most [`TIMEOUT`].
async fn settle(server: &Server, series: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let now = value(&scrape(server).await, series);
        if now == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} stayed {now}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_session_moves_the_metrics_by_exactly_what_happened() {
    let db = app::connect("sqlite::memory:", None).await;
    // Unshared executions: each native subscriber holds a channel of its own.
    let hub = Hub::new(Config::default().with_queue_capacity(4).with_share_executions(false));
    let server = Server::start(db, hub).await;

    let before = scrape(&server).await;
    for protocol in ["two-channel", "graphql-transport-ws", "graphql-ws", "sse", "multipart"] {
        assert_eq!(value(&before, &open(protocol)), 0.0, "{protocol}");
    }
    assert_eq!(value(&before, "graphex_changes_published_total"), 0.0);

    // A two-channel socket and a graphql-transport-ws client, each subscribed to user creations.
    let mut fast = server.ws().await;
    fast.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
    let mut native = Client::connected(server.addr, Proto::Transport, json!({})).await;
    native.start("1", "subscription { userChanges(action: CREATE) { action id } }").await;
    // A stream of its own whose filter refuses every change below (tenant acme).
    native
        .start("2", r#"subscription { userChanges(action: CREATE, filters: {tenant: "globex"}) { action id } }"#)
        .await;
    server.wait_for("the native channels", |hub| hub.channel_count() == 3).await;

    let scraped = scrape(&server).await;
    assert_eq!(value(&scraped, &open("two-channel")), 1.0);
    assert_eq!(value(&scraped, &open("graphql-transport-ws")), 1.0);
    assert_eq!(value(&scraped, &open("graphql-ws")), 0.0);
    assert_eq!(value(&scraped, "graphex_channels"), 3.0);
    assert_eq!(value(&scraped, "graphex_subscriptions{stream=\"users\"}"), 3.0);

    const CHANGES: u64 = 3;
    for n in 0..CHANGES {
        let row = server.create_user(&format!("user{n}"), "user@example.com", "acme").await;
        fast.expect(&user_frame("create", &row)).await;
        let next = native.json().await;
        assert_eq!(next["payload"]["data"]["userChanges"]["id"], row["id"], "{next}");
    }
    let scraped = scrape(&server).await;
    assert_eq!(value(&scraped, "graphex_changes_published_total"), CHANGES as f64);
    // The filter decides before queueing (in memory, on the change), or, if
    // the stream's subscription list is busy at that instant, after: each
    // change is either filtered or queued to the refusing stream.
    let filtered = value(&scraped, "graphex_notifications_dropped_total{reason=\"filtered\"}");
    assert!(filtered > 0.0, "no change filtered before queueing");
    assert_eq!(value(&scraped, "graphex_deliveries_total"), (3 * CHANGES) as f64 - filtered);
    // Published here, in memory: each change observed once, when first queued.
    assert_eq!(value(&scraped, "graphex_publish_to_queue_seconds_count"), CHANGES as f64);
    let writes = value(&scraped, "graphex_queue_to_socket_seconds_count");
    assert!((1.0..=CHANGES as f64).contains(&writes), "one observation per write: {writes}");

    native.close().await;
    settle(&server, &open("graphql-transport-ws"), 0.0).await;
    settle(&server, "graphex_channels", 1.0).await;

    // A slow consumer: subscribed, never read again (as in lifecycle.rs).
    let slow = server.ws().await;
    slow.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
    let _slow_stream = slow.into_inner();
    settle(&server, &open("two-channel"), 2.0).await;
    let email = format!("{}@example.com", "x".repeat(60 * 1024));
    let mut created = 0u64;
    // The change whose delivery found the slow queue full.
    let mut overflowed_at = None;
    while overflowed_at.is_none() || created < overflowed_at.unwrap_or(0) + 3 {
        assert!(created < 2000, "the slow consumer was never closed");
        let row = server.create_user(&format!("slow{created}"), &email, "acme").await;
        fast.expect(&user_frame("create", &row)).await;
        created += 1;
        if overflowed_at.is_none() && server.hub.stats().slow_consumers > 0 {
            overflowed_at = Some(created);
        }
    }
    let overflowed_at = overflowed_at.unwrap_or(0);
    settle(&server, "graphex_channels", 1.0).await;

    fast.close().await;
    settle(&server, &open("two-channel"), 0.0).await;
    settle(&server, "graphex_channels", 0.0).await;

    let scraped = scrape(&server).await;
    assert_eq!(value(&scraped, "graphex_changes_published_total"), (CHANGES + created) as f64);
    // The fast socket got every change; the slow one every change before
    // the one that overflowed its queue, then left its groups.
    assert_eq!(
        value(&scraped, "graphex_deliveries_total"),
        (3 * CHANGES + created + overflowed_at - 1) as f64 - filtered
    );
    assert_eq!(value(&scraped, "graphex_notifications_dropped_total{reason=\"filtered\"}"), filtered);
    assert_eq!(value(&scraped, "graphex_slow_consumer_closes_total"), 1.0);
    assert_eq!(value(&scraped, "graphex_notifications_dropped_total{reason=\"slow_consumer\"}"), 1.0);
    assert_eq!(value(&scraped, "graphex_notifications_dropped_total{reason=\"layer_failure\"}"), 0.0);
    assert_eq!(value(&scraped, "graphex_publish_to_queue_seconds_count"), (CHANGES + created) as f64);
    for protocol in ["two-channel", "graphql-transport-ws", "graphql-ws", "sse", "multipart"] {
        assert_eq!(value(&scraped, &open(protocol)), 0.0, "{protocol}");
    }
    assert!(!scraped.contains_key("graphex_subscriptions{stream=\"users\"}"), "no subscription left");
    // The memory layer keeps history: every change published.
    let kept = (CHANGES + created).min(graphex::layer::MemoryLayer::DEFAULT_HISTORY as u64);
    assert_eq!(value(&scraped, "graphex_layer_history"), kept as f64);
}

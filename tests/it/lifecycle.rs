//! Channels ending: closed or dropped sockets leave every group, and a slow
//! consumer is closed while the others get everything.
//!
//! Each test runs on SQLite in memory and, with `GRAPHEX_TEST_POSTGRES_URL`,
//! again on PostgreSQL in a schema of its own, and with `GRAPHEX_TEST_MYSQL_URL`
//! on MySQL / MariaDB in a database of its own ([`crate::support::each_database`]).
//! "Nothing arrives" is never asserted by waiting: a sentinel change is made
//! afterwards and must be the next frame (a channel receives changes in the
//! order they were announced).

use graphex::__internals::HubInternals;
use graphex::{Config, Hub};
use serde_json::json;

use crate::support::{Server, TIMEOUT, USERS_CREATE, each_database, refused, user_frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sockets_leave_every_group() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let alice = server.create_user("alice", "alice@example.com", "acme").await;
        let a = server.ws_as("alice").await;
        a.subscribe_ok(&server, "userSubscription", "action: ALL_ACTIONS, operation: SUBSCRIBE", None).await;
        a.subscribe_ok(
            &server,
            "userSubscription",
            &format!("action: UPDATE, operation: SUBSCRIBE, id: {}", alice["id"]),
            None,
        )
        .await;
        a.subscribe_ok(&server, "noteSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
        a.subscribe_ok(
            &server,
            "commentSubscription",
            "action: CREATE, operation: SUBSCRIBE",
            Some(json!({"post": 1})),
        )
        .await;
        a.subscribe_ok(
            &server,
            "messageSubscription",
            "action: CREATE, operation: SUBSCRIBE",
            Some(json!({"room": 3})),
        )
        .await;
        let b = server.ws().await;
        b.subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE, data: [EMAIL]", None).await;
        b.subscribe_ok(&server, "commentSubscription", "action: ALL_ACTIONS, operation: SUBSCRIBE", None).await;
        assert_eq!(server.hub.channel_count(), 2);
        // users-{create,update,delete}, users-update-<id>, notes-create,
        // comments-{create,update,delete}, messages-create:room=3&tenant=acme.
        assert_eq!(server.hub.group_count(), 9);
        assert_eq!(server.hub.group_size("users-create"), 2);

        let b_channel = b.channel_id.clone();
        // One closes cleanly, the other just drops its connection.
        a.close().await;
        drop(b.into_inner());
        server.wait_for("every channel closed", |hub| hub.channel_count() == 0).await;
        server.wait_for("every group left", |hub| hub.group_count() == 0).await;
        assert_eq!(server.hub.group_size("users-create"), 0);
        assert_eq!(
            server.subscribe(None, &b_channel, "userSubscription", USERS_CREATE, None).await,
            refused("users", "SUBSCRIBE", "CREATE", "unknown channel")
        );

        // Changes with nobody listening go nowhere.
        let received = server.hub.stats().received;
        server.create_user("bob", "bob@example.com", "acme").await;
        assert_eq!(server.hub.stats().received, received);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_and_the_others_get_everything() {
    each_database(|db| async move {
        let hub = Hub::new(Config::default().with_queue_capacity(4));
        let server = Server::start(db, hub).await;
        let slow = server.ws().await;
        slow.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        let slow_id = slow.channel_id.clone();
        let mut fast = server.ws().await;
        fast.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        // The slow client never reads its socket again.
        let slow_stream = slow.into_inner();

        // 60 KiB per notification (MySQL's TEXT holds 64 KiB): the socket
        // buffers fill after a few MiB.
        let email = format!("{}@example.com", "x".repeat(60 * 1024));
        let mut created = 0;
        let mut after_close = 0;
        while after_close < 10 {
            assert!(created < 2000, "the slow consumer was never closed");
            let row = server.create_user(&format!("user{created}"), &email, "acme").await;
            // Reading each notification before the next change keeps the
            // fast client's queue short whatever the machine's load.
            fast.expect(&user_frame("create", &row)).await;
            created += 1;
            if server.hub.stats().slow_consumers > 0 {
                after_close += 1;
            }
        }
        server.wait_for("the slow channel closed", |hub| hub.channel_count() == 1).await;
        assert_eq!(server.hub.stats().slow_consumers, 1);
        assert!(server.hub.channel(&slow_id).is_none());
        let fast_channel = server.hub.channel(&fast.channel_id).expect("the fast channel is open");
        assert_eq!(fast_channel.close_reason(), None);
        assert_eq!(server.hub.group_size("users-create"), 1);
        assert!(created >= 10, "{created}");

        // The server dropped the slow socket: what was buffered drains, then it ends.
        let mut slow_stream = slow_stream;
        let mut buffered = 0;
        let drained = tokio::time::timeout(TIMEOUT * 2, async {
            use futures_util::StreamExt;
            while let Some(Ok(message)) = slow_stream.next().await {
                if message.is_text() {
                    buffered += 1;
                }
            }
        })
        .await;
        assert!(drained.is_ok(), "the slow socket was not closed");
        assert!(buffered < created, "{buffered} of {created}");
        eprintln!("slow consumer: closed after {created} changes, {buffered} were buffered");
    })
    .await;
}

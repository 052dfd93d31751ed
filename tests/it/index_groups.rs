//! Index fields: a subscription whose filters (and scope) fix every index
//! field joins the group of those values, so changes are routed to it
//! without evaluating anyone else's filters.
//!
//! Each test runs on SQLite in memory and, with `GRAPHEX_TEST_POSTGRES_URL`,
//! again on PostgreSQL in a schema of its own, and with `GRAPHEX_TEST_MYSQL_URL`
//! on MySQL / MariaDB in a database of its own ([`crate::support::each_database`]).
//! "Nothing arrives" is never asserted by waiting: a sentinel change is made
//! afterwards and must be the next frame (a channel receives changes in the
//! order they were announced).

use graphex::Hub;
use serde_json::json;

use crate::support::{Server, confirmed, each_database, frame, refused};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_fields_route_messages_to_value_groups() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        server.create_user("alice", "alice@example.com", "acme").await;
        server.create_user("bob", "bob@example.com", "acme").await;
        server.create_user("eve", "eve@example.com", "globex").await;
        let create = "action: CREATE, operation: SUBSCRIBE";
        let hub = &server.hub;

        let anonymous = server.ws().await;
        assert_eq!(
            server
                .subscribe(None, &anonymous.channel_id, "messageSubscription", create, Some(json!({"room": 1})))
                .await,
            refused("messages", "SUBSCRIBE", "CREATE", "not authorized: authentication required")
        );

        let mut alice = server.ws_as("alice").await;
        assert_eq!(
            server
                .subscribe(Some("alice"), &alice.channel_id, "messageSubscription", create, Some(json!({"room": 1})))
                .await,
            confirmed("messages", "SUBSCRIBE", "CREATE")
        );
        assert_eq!(hub.group_size("messages-create:room=1&tenant=acme"), 1);
        assert_eq!(hub.group_size("messages-create"), 0);

        // Asking for another tenant changes nothing: the scope's tenant wins.
        let mut alice_widening = server.ws_as("alice").await;
        alice_widening
            .subscribe_ok(&server, "messageSubscription", create, Some(json!({"room": 1, "tenant": "globex"})))
            .await;
        assert_eq!(hub.group_size("messages-create:room=1&tenant=acme"), 2);
        assert_eq!(hub.group_size("messages-create:room=1&tenant=globex"), 0);

        // Without `room` the index is incomplete: the coarse group, still scoped.
        let mut bob = server.ws_as("bob").await;
        bob.subscribe_ok(&server, "messageSubscription", create, None).await;
        assert_eq!(hub.group_size("messages-create"), 1);

        let mut eve = server.ws_as("eve").await;
        eve.subscribe_ok(&server, "messageSubscription", create, Some(json!({"room": 1}))).await;
        assert_eq!(hub.group_size("messages-create:room=1&tenant=globex"), 1);
        for ws in [&alice, &alice_widening, &bob, &eve] {
            ws.arm_comment_sentinel(&server).await;
        }

        let acme_1 = server.create_message("alice", 1, "hello room 1").await;
        assert_eq!(acme_1["tenant"], json!("acme"));
        let acme_2 = server.create_message("bob", 2, "hello room 2").await;
        let globex_1 = server.create_message("eve", 1, "globex room 1").await;
        server.create_message("eve", 2, "globex room 2").await;
        let acme_1_again = server.create_message("bob", 1, "room 1 again").await;

        for ws in [&mut alice, &mut alice_widening] {
            ws.expect(&frame("messages", "create", "message", acme_1.clone())).await;
            ws.expect(&frame("messages", "create", "message", acme_1_again.clone())).await;
        }
        for row in [&acme_1, &acme_2, &acme_1_again] {
            bob.expect(&frame("messages", "create", "message", row.clone())).await;
        }
        eve.expect(&frame("messages", "create", "message", globex_1)).await;
        server.comment_sentinel(&mut [&mut alice, &mut alice_widening, &mut bob, &mut eve]).await;
    })
    .await;
}

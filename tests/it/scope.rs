//! Who may subscribe to what, on the reference app: authenticated models
//! and their scopes (a client filter can only narrow a scope), and channels
//! owned by whoever opened them.
//!
//! Each test runs on SQLite in memory and, with `GRAPHEX_TEST_POSTGRES_URL`,
//! again on PostgreSQL in a schema of its own, and with `GRAPHEX_TEST_MYSQL_URL`
//! on MySQL / MariaDB in a database of its own ([`crate::support::each_database`]).
//! "Nothing arrives" is never asserted by waiting: a sentinel change is made
//! afterwards and must be the next frame (a channel receives changes in the
//! order they were announced).

use graphex::__internals::HubInternals;
use graphex::Hub;
use serde_json::json;

use crate::support::{Server, USERS_CREATE, confirmed, each_database, frame, refused, user_frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_keeps_notes_private() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        server.create_user("alice", "alice@example.com", "acme").await;
        server.create_user("bob", "bob@example.com", "acme").await;
        let all = "action: ALL_ACTIONS, operation: SUBSCRIBE";

        let anonymous = server.ws().await;
        assert_eq!(
            server.subscribe(None, &anonymous.channel_id, "noteSubscription", all, None).await,
            refused("notes", "SUBSCRIBE", "ALL_ACTIONS", "not authorized: authentication required")
        );
        assert_eq!(server.hub.group_count(), 0);

        // Alice asks for bob's notes: the scope's `owner` wins over hers.
        let mut alice = server.ws_as("alice").await;
        assert_eq!(
            server
                .subscribe(Some("alice"), &alice.channel_id, "noteSubscription", all, Some(json!({"owner": "bob"})))
                .await,
            confirmed("notes", "SUBSCRIBE", "ALL_ACTIONS")
        );
        // A client filter is ANDed with the scope: it can only narrow.
        let mut alice_narrowed = server.ws_as("alice").await;
        alice_narrowed
            .subscribe_ok(&server, "noteSubscription", all, Some(json!({"owner__in": ["bob", "carol"]})))
            .await;
        let mut bob = server.ws_as("bob").await;
        bob.subscribe_ok(&server, "noteSubscription", all, None).await;
        for ws in [&alice, &alice_narrowed, &bob] {
            ws.arm_comment_sentinel(&server).await;
        }

        let bobs = server.create_note("bob", "bob's secret").await;
        assert_eq!(bobs["owner"], json!("bob"));
        let edited = server
            .execute(
                Some("bob"),
                "mutation ($id: Int!) { updateNote(id: $id, text: \"bob's edited secret\") { id owner text } }",
                json!({"id": bobs["id"]}),
            )
            .await["updateNote"]
            .clone();
        let deleted = server
            .execute(Some("bob"), "mutation ($id: Int!) { deleteNote(id: $id) }", json!({"id": bobs["id"]}))
            .await;
        assert_eq!(deleted["deleteNote"], json!(true));
        let alices = server.create_note("alice", "alice's note").await;

        bob.expect(&frame("notes", "create", "note", bobs.clone())).await;
        bob.expect(&frame("notes", "update", "note", edited.clone())).await;
        bob.expect(&frame("notes", "delete", "note", edited)).await;
        alice.expect(&frame("notes", "create", "note", alices)).await;
        server.comment_sentinel(&mut [&mut alice, &mut alice_narrowed, &mut bob]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_belongs_to_whoever_opened_it() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        server.create_user("alice", "alice@example.com", "acme").await;
        server.create_user("bob", "bob@example.com", "acme").await;
        let foreign = "channel belongs to another principal";

        let mut by_query = server.ws_as("alice").await;
        let mut by_header = server.ws_with_header("alice").await;
        for ws in [&by_query, &by_header] {
            assert_eq!(server.hub.channel(&ws.channel_id).unwrap().owner(), Some("alice"));
            for intruder in [Some("bob"), None, Some("nobody")] {
                assert_eq!(
                    server.subscribe(intruder, &ws.channel_id, "userSubscription", USERS_CREATE, None).await,
                    refused("users", "SUBSCRIBE", "CREATE", foreign),
                    "{intruder:?}"
                );
            }
            assert_eq!(
                server.subscribe(Some("alice"), &ws.channel_id, "userSubscription", USERS_CREATE, None).await,
                confirmed("users", "SUBSCRIBE", "CREATE")
            );
            assert_eq!(
                server
                    .subscribe(
                        Some("bob"),
                        &ws.channel_id,
                        "userSubscription",
                        "action: CREATE, operation: UNSUBSCRIBE",
                        None
                    )
                    .await,
                refused("users", "UNSUBSCRIBE", "CREATE", foreign)
            );
        }

        // An anonymous socket (no token, or one naming nobody) is not alice's either.
        let mut anonymous = server.ws().await;
        let unknown_token = server.ws_as("nobody").await;
        assert_eq!(server.hub.channel(&unknown_token.channel_id).unwrap().owner(), None);
        assert_eq!(
            server.subscribe(Some("alice"), &anonymous.channel_id, "userSubscription", USERS_CREATE, None).await,
            refused("users", "SUBSCRIBE", "CREATE", foreign)
        );
        assert_eq!(
            server.subscribe(None, &anonymous.channel_id, "userSubscription", USERS_CREATE, None).await,
            confirmed("users", "SUBSCRIBE", "CREATE")
        );
        assert_eq!(server.hub.group_size("users-create"), 3);

        let row = server.create_user("carol", "carol@example.com", "acme").await;
        for ws in [&mut by_query, &mut by_header, &mut anonymous] {
            ws.expect(&user_frame("create", &row)).await;
        }
    })
    .await;
}

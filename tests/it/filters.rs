//! Client filters over real sockets on the reference app: every lookup on a
//! full-payload model (decided in memory on the change) and on an id-only
//! model (decided in memory on the row read back by primary key), and the filters, ids and arguments that
//! are refused without joining anything. The lookups' SQL and in-memory
//! semantics themselves are checked in [`crate::conditions`].
//!
//! Each test runs on SQLite in memory and, with `GRAPHEX_TEST_POSTGRES_URL`,
//! again on PostgreSQL in a schema of its own, and with `GRAPHEX_TEST_MYSQL_URL`
//! on MySQL / MariaDB in a database of its own ([`crate::support::each_database`]).
//! "Nothing arrives" is never asserted by waiting: a sentinel change is made
//! afterwards and must be the next frame (a channel receives changes in the
//! order they were announced).

use graphex::__internals::HubInternals;
use graphex::Hub;
use serde_json::{Value as Json, json};

use crate::support::{Server, USERS_CREATE, comment_frame, confirmed, each_database, refused, user_frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_only_comments_filter_through_the_database() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let mut post7 = server.ws().await;
        let confirmation = server
            .subscribe(
                None,
                &post7.channel_id,
                "commentSubscription",
                "action: ALL_ACTIONS, operation: SUBSCRIBE",
                Some(json!({"post": 7})),
            )
            .await;
        assert_eq!(confirmation, confirmed("comments", "SUBSCRIBE", "ALL_ACTIONS"));
        post7.arm_user_sentinel(&server).await;
        let mut everything = server.ws().await;
        everything
            .subscribe_ok(&server, "commentSubscription", "action: ALL_ACTIONS, operation: SUBSCRIBE", None)
            .await;
        everything.arm_user_sentinel(&server).await;

        let kept = server.create_comment(7, "on post 7").await;
        post7.expect(&comment_frame("create", &kept)).await;
        everything.expect(&comment_frame("create", &kept)).await;
        let other = server.create_comment(8, "on post 8").await;
        everything.expect(&comment_frame("create", &other)).await;

        server.update_comment(&other, "edited on post 8").await;
        everything.expect(&comment_frame("update", &other)).await;
        server.update_comment(&kept, "edited on post 7").await;
        post7.expect(&comment_frame("update", &kept)).await;
        everything.expect(&comment_frame("update", &kept)).await;

        // On delete the row is gone: an id-only change cannot decide `post`, so it is dropped.
        server.delete_comment(&kept).await;
        everything.expect(&comment_frame("delete", &kept)).await;
        server.user_sentinel(&mut [&mut post7, &mut everything]).await;

        // A filter on the primary key is decided from the change, deletes included.
        let third = server.create_comment(7, "third").await;
        post7.expect(&comment_frame("create", &third)).await;
        let mut by_pk = server.ws().await;
        by_pk
            .subscribe_ok(
                &server,
                "commentSubscription",
                "action: DELETE, operation: SUBSCRIBE",
                Some(json!({"id": third})),
            )
            .await;
        by_pk.arm_user_sentinel(&server).await;
        server.delete_comment(&other).await;
        server.delete_comment(&third).await;
        by_pk.expect(&comment_frame("delete", &third)).await;
        server.user_sentinel(&mut [&mut by_pk, &mut post7]).await;
    })
    .await;
}

/// Usernames each filter must let through, on users (decided in memory on
/// the full payload).
fn user_lookup_cases(bob: i64) -> Vec<(Json, Vec<&'static str>)> {
    vec![
        (json!({"tenant": "acme"}), vec!["alice", "Bob"]),
        (json!({"tenant__exact": "globex"}), vec!["carol"]),
        (json!({"id": bob}), vec!["Bob"]),
        (json!({"username__iexact": "BOB"}), vec!["Bob"]),
        (json!({"email__contains": "example.com"}), vec!["alice", "carol"]),
        (json!({"email__contains": "Example"}), vec!["Bob"]),
        (json!({"email__icontains": "EXAMPLE.ORG"}), vec!["Bob"]),
        (json!({"username__startswith": "ca"}), vec!["carol"]),
        (json!({"username__startswith": "b"}), vec![]),
        (json!({"email__endswith": ".net"}), vec!["dave"]),
        (json!({"id__gt": bob}), vec!["carol", "dave"]),
        (json!({"id__gte": bob}), vec!["Bob", "carol", "dave"]),
        (json!({"id__lt": bob}), vec!["alice"]),
        (json!({"id__lte": bob}), vec!["alice", "Bob"]),
        (json!({"tenant__in": ["globex", "initech"]}), vec!["carol", "dave"]),
        (json!({"id__in": [bob, bob + 2]}), vec!["Bob", "dave"]),
        (json!({"email__isnull": false}), vec!["alice", "Bob", "carol", "dave"]),
        (json!({"tenant__isnull": true}), vec![]),
        (json!({"tenant": "acme", "username__icontains": "LI"}), vec!["alice"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lookup_on_a_full_payload_model() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let seed = server.create_user("seed", "seed@example.com", "seed").await;
        let bob = seed["id"].as_i64().unwrap() + 2;
        let cases = user_lookup_cases(bob);
        let mut sockets = Vec::new();
        for (filters, _) in &cases {
            let ws = server.ws().await;
            ws.subscribe_ok(&server, "userSubscription", USERS_CREATE, Some(filters.clone())).await;
            ws.arm_comment_sentinel(&server).await;
            sockets.push(ws);
        }
        let mut rows = std::collections::HashMap::new();
        for (username, email, tenant) in [
            ("alice", "alice@example.com", "acme"),
            ("Bob", "bob@Example.org", "acme"),
            ("carol", "carol@example.com", "globex"),
            ("dave", "DAVE@example.net", "initech"),
        ] {
            rows.insert(username, server.create_user(username, email, tenant).await);
        }
        assert_eq!(rows["Bob"]["id"], json!(bob), "ids are consecutive");
        let sentinel = server.create_comment(0, "sentinel").await;
        for ((filters, expected), ws) in cases.iter().zip(&mut sockets) {
            let label = filters.to_string();
            for username in expected {
                ws.expect_in(&label, &user_frame("create", &rows[username])).await;
            }
            ws.expect_in(&label, &comment_frame("create", &sentinel)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lookup_on_an_id_only_model() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        // Indexes into `texts` each filter must let through, decided on the
        // row read back from each database.
        let texts =
            [(1, "Urgent: fix the build"), (2, "urgent? maybe later"), (3, "All good 100%"), (4, "see section_2")];
        let cases: Vec<(Json, Vec<usize>)> = vec![
            (json!({"text": "All good 100%"}), vec![2]),
            (json!({"post": 2}), vec![1]),
            (json!({"text__iexact": "ALL GOOD 100%"}), vec![2]),
            (json!({"text__contains": "Urgent"}), vec![0]),
            (json!({"text__contains": "rgent"}), vec![0, 1]),
            (json!({"text__contains": "n_2"}), vec![3]),
            (json!({"text__icontains": "URGENT"}), vec![0, 1]),
            (json!({"text__icontains": "100%"}), vec![2]),
            (json!({"text__icontains": "E_T"}), vec![]),
            (json!({"text__startswith": "urgent"}), vec![1]),
            (json!({"text__startswith": "Urgent"}), vec![0]),
            (json!({"text__endswith": "100%"}), vec![2]),
            (json!({"text__endswith": "ION_2"}), vec![]),
            (json!({"post__gt": 2}), vec![2, 3]),
            (json!({"post__gte": 2}), vec![1, 2, 3]),
            (json!({"post__lt": 2}), vec![0]),
            (json!({"post__lte": 2}), vec![0, 1]),
            (json!({"post__in": [1, 4]}), vec![0, 3]),
            (json!({"text__in": ["see section_2", "nope"]}), vec![3]),
            (json!({"text__isnull": false}), vec![0, 1, 2, 3]),
            (json!({"post__isnull": true}), vec![]),
            (json!({"post__gte": 2, "text__icontains": "urgent"}), vec![1]),
        ];
        let mut sockets = Vec::new();
        for (filters, _) in &cases {
            let ws = server.ws().await;
            ws.subscribe_ok(
                &server,
                "commentSubscription",
                "action: CREATE, operation: SUBSCRIBE",
                Some(filters.clone()),
            )
            .await;
            ws.arm_user_sentinel(&server).await;
            sockets.push(ws);
        }
        let mut ids = Vec::new();
        for (post, text) in texts {
            ids.push(server.create_comment(post, text).await);
        }
        let sentinel = server.create_user("sentinel", "sentinel@example.com", "acme").await;
        for ((filters, expected), ws) in cases.iter().zip(&mut sockets) {
            let label = filters.to_string();
            for &index in expected {
                ws.expect_in(&label, &comment_frame("create", &ids[index])).await;
            }
            ws.expect_in(&label, &user_frame("create", &sentinel)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_subscriptions_join_nothing() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let mut ws = server.ws().await;
        ws.arm_comment_sentinel(&server).await;
        let channel = ws.channel_id.clone();

        let unknown = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            server.subscribe(None, unknown, "userSubscription", USERS_CREATE, None).await,
            refused("users", "SUBSCRIBE", "CREATE", "unknown channel")
        );

        let lookups = "exact, iexact, contains, icontains, startswith, endswith, gt, gte, lt, lte, in, isnull";
        let cases: Vec<(&str, Option<Json>, String)> = vec![
            (
                USERS_CREATE,
                Some(json!({"nickname": "neo"})),
                "unknown filter field `nickname`; fields: id, username, email, tenant".into(),
            ),
            (
                USERS_CREATE,
                Some(json!({"username__regex": "^n"})),
                format!("unknown lookup `regex` on `username`; lookups: {lookups}"),
            ),
            (
                USERS_CREATE,
                Some(json!({"id__gt": "abc"})),
                "invalid value for `id__gt`: invalid type: string \"abc\", expected i32".into(),
            ),
            (
                USERS_CREATE,
                Some(json!({"id__contains": "1"})),
                "invalid value for `id__contains`: contains applies to text fields only".into(),
            ),
            (
                USERS_CREATE,
                Some(json!({"tenant__in": "acme"})),
                "invalid value for `tenant__in`: in takes a list".into(),
            ),
            (USERS_CREATE, Some(json!(["tenant", "acme"])), "filters must be a JSON object".into()),
            (USERS_CREATE, Some(json!("tenant=acme")), "filters must be a JSON object".into()),
            ("action: CREATE, operation: SUBSCRIBE, id: \"abc\"", None, "invalid id `abc`".into()),
            // All or nothing: a refused ALL_ACTIONS joins none of its three groups.
            (
                "action: ALL_ACTIONS, operation: SUBSCRIBE",
                Some(json!({"tenant": "acme", "username__regex": "^n"})),
                format!("unknown lookup `regex` on `username`; lookups: {lookups}"),
            ),
        ];
        for (args, filters, error) in cases {
            let action = if args.contains("ALL_ACTIONS") { "ALL_ACTIONS" } else { "CREATE" };
            let label = format!("{args} {filters:?}");
            assert_eq!(
                server.subscribe(None, &channel, "userSubscription", args, filters).await,
                refused("users", "SUBSCRIBE", action, &error),
                "{label}"
            );
        }
        assert_eq!(server.hub.channel(&channel).unwrap().subscription_count(), 1, "only the sentinel");
        assert_eq!(server.hub.group_count(), 1, "only the sentinel's group");
        assert_eq!(server.hub.channel_count(), 1);

        let row = server.create_user("neo", "neo@example.com", "acme").await;
        server.update_user(&row["id"], "neo@example.org").await;
        server.delete_user(&row["id"]).await;
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

//! End to end: the reference app served on a real port, driven over real
//! sockets by a WebSocket client and an HTTP/1.1 client.
//!
//! Every test runs on SQLite in memory and, when `GRAPHEX_TEST_POSTGRES_URL`
//! is set, again on PostgreSQL in a schema of its own.
//!
//! "Nothing arrives" is never asserted by waiting: a sentinel change is made
//! afterwards and must be the next frame (a channel receives changes in the
//! order they were announced).
#![allow(unreachable_pub)]

#[path = "../examples/reference/app.rs"]
mod app;
mod support;

use app::{comment, user};
use graphex::{Action, Config, Hub};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value as Json, json};
use support::{Server, TIMEOUT, Ws, comment_frame, confirmed, each_database, frame, refused, user_frame};

const USERS_CREATE: &str = "action: CREATE, operation: SUBSCRIBE";

fn user_json(row: &user::Model) -> Json {
    json!({"id": row.id, "username": row.username, "email": row.email, "tenant": row.tenant})
}

fn new_user(username: &str, email: &str, tenant: &str) -> user::ActiveModel {
    user::ActiveModel {
        username: Set(username.to_owned()),
        email: Set(email.to_owned()),
        tenant: Set(tenant.to_owned()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_names_a_fresh_channel() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let a = server.ws().await;
        let b = server.ws().await;
        for ws in [&a, &b] {
            // `Ws::connect` asserted the frame is exactly {"channel_id": .., "connect": "success"}.
            assert_eq!(ws.channel_id.len(), 40, "{}", ws.channel_id);
            assert!(
                ws.channel_id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
                "{}",
                ws.channel_id
            );
            let channel = server.hub.channel(&ws.channel_id).expect("the hub knows the channel");
            assert_eq!(channel.owner(), None);
            assert_eq!(channel.subscription_count(), 0);
        }
        assert_ne!(a.channel_id, b.channel_id);
        assert_eq!(server.hub.channel_count(), 2);
        assert_eq!(server.hub.group_count(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_action_reaches_its_subscribers() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let mut sockets = Vec::new();
        for action in ["CREATE", "UPDATE", "DELETE", "ALL_ACTIONS"] {
            let ws = server.ws().await;
            let confirmation = server
                .subscribe(
                    None,
                    &ws.channel_id,
                    "userSubscription",
                    &format!("action: {action}, operation: SUBSCRIBE"),
                    None,
                )
                .await;
            assert_eq!(confirmation, confirmed("users", "SUBSCRIBE", action));
            ws.arm_comment_sentinel(&server).await;
            sockets.push(ws);
        }
        let [mut creates, mut updates, mut deletes, mut all] = <[Ws; 4]>::try_from(sockets).ok().unwrap();
        assert_eq!(server.hub.channel(&all.channel_id).unwrap().subscription_count(), 4, "ALL_ACTIONS is three");
        // Full payloads carry the row, so equality filters hold on deletes too.
        let mut acme = server.ws().await;
        acme.subscribe_ok(
            &server,
            "userSubscription",
            "action: ALL_ACTIONS, operation: SUBSCRIBE",
            Some(json!({"tenant": "acme"})),
        )
        .await;
        acme.arm_comment_sentinel(&server).await;

        let row = server.create_user("neo", "neo@example.com", "acme").await;
        assert_eq!(row, json!({"id": row["id"], "username": "neo", "email": "neo@example.com", "tenant": "acme"}));
        creates.expect(&user_frame("create", &row)).await;
        all.expect(&user_frame("create", &row)).await;

        let updated = server.update_user(&row["id"], "neo@matrix.org").await;
        assert_eq!(updated["email"], json!("neo@matrix.org"));
        updates.expect(&user_frame("update", &updated)).await;
        all.expect(&user_frame("update", &updated)).await;

        server.delete_user(&row["id"]).await;
        deletes.expect(&user_frame("delete", &updated)).await;
        all.expect(&user_frame("delete", &updated)).await;
        acme.expect(&user_frame("create", &row)).await;
        acme.expect(&user_frame("update", &updated)).await;
        acme.expect(&user_frame("delete", &updated)).await;

        // Another tenant: everyone but the filtered subscriber.
        let created = server.create_user("trinity", "trinity@example.com", "globex").await;
        let changed = server.update_user(&created["id"], "trinity@matrix.org").await;
        server.delete_user(&created["id"]).await;
        creates.expect(&user_frame("create", &created)).await;
        updates.expect(&user_frame("update", &changed)).await;
        deletes.expect(&user_frame("delete", &changed)).await;
        all.expect(&user_frame("create", &created)).await;
        all.expect(&user_frame("update", &changed)).await;
        all.expect(&user_frame("delete", &changed)).await;

        // The CREATE-only subscriber got neither the update nor the delete, and so on.
        server.comment_sentinel(&mut [&mut creates, &mut updates, &mut deletes, &mut all, &mut acme]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_scopes_to_one_row() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let mut rows = Vec::new();
        for n in 1..=6 {
            rows.push(server.create_user(&format!("user{n}"), &format!("user{n}@example.com"), "acme").await);
        }
        let target = rows[4].clone();
        let id = &target["id"];

        let mut ws = server.ws().await;
        let confirmation = server
            .subscribe(
                None,
                &ws.channel_id,
                "userSubscription",
                &format!("action: ALL_ACTIONS, operation: SUBSCRIBE, id: {id}"),
                None,
            )
            .await;
        assert_eq!(confirmation, confirmed("users", "SUBSCRIBE", "ALL_ACTIONS"));
        // The id given as a string names the same row (and the same subscription).
        let again = server
            .subscribe(
                None,
                &ws.channel_id,
                "userSubscription",
                &format!("action: UPDATE, operation: SUBSCRIBE, id: \"{id}\""),
                None,
            )
            .await;
        assert_eq!(again, confirmed("users", "SUBSCRIBE", "UPDATE"));
        assert_eq!(server.hub.channel(&ws.channel_id).unwrap().subscription_count(), 3);
        for action in ["create", "update", "delete"] {
            assert_eq!(server.hub.group_size(&format!("users-{action}-{id}")), 1);
        }
        assert_eq!(server.hub.group_size("users-update"), 0, "per-instance subscribers stay out of the coarse group");
        ws.arm_comment_sentinel(&server).await;

        let other = server.create_user("user7", "user7@example.com", "acme").await;
        let before = server.update_user(&rows[3]["id"], "changed4@example.com").await;
        let updated = server.update_user(id, "changed5@example.com").await;
        server.update_user(&rows[5]["id"], "changed6@example.com").await;
        server.delete_user(&before["id"]).await;
        server.delete_user(id).await;
        server.delete_user(&other["id"]).await;

        ws.expect(&user_frame("update", &updated)).await;
        ws.expect(&user_frame("delete", &updated)).await;
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_with_the_same_arguments_stops_delivery() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let mut ws = server.ws().await;
        let channel = ws.channel_id.clone();
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", USERS_CREATE, None).await,
            confirmed("users", "SUBSCRIBE", "CREATE")
        );
        ws.arm_comment_sentinel(&server).await;
        let first = server.create_user("first", "first@example.com", "acme").await;
        ws.expect(&user_frame("create", &first)).await;

        let unsubscribe = "action: CREATE, operation: UNSUBSCRIBE";
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", unsubscribe, None).await,
            confirmed("users", "UNSUBSCRIBE", "CREATE")
        );
        assert_eq!(server.hub.group_size("users-create"), 0);
        server.create_user("second", "second@example.com", "acme").await;
        server.comment_sentinel(&mut [&mut ws]).await;

        // Unsubscribing what is not (or no longer) subscribed is refused.
        let not_subscribed = "no subscription with these arguments";
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", unsubscribe, None).await,
            refused("users", "UNSUBSCRIBE", "CREATE", not_subscribed)
        );
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", "action: UPDATE, operation: UNSUBSCRIBE", None).await,
            refused("users", "UNSUBSCRIBE", "UPDATE", not_subscribed)
        );

        // The arguments must match: filters and projection included.
        let args = "action: CREATE, operation: SUBSCRIBE, data: [USERNAME]";
        let filters = json!({"tenant": "acme"});
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", args, Some(filters.clone())).await,
            confirmed("users", "SUBSCRIBE", "CREATE")
        );
        let unsubscribe_projected = "action: CREATE, operation: UNSUBSCRIBE, data: [USERNAME]";
        for (args, filters) in [
            (unsubscribe_projected, Some(json!({"tenant": "globex"}))),
            (unsubscribe_projected, None),
            (unsubscribe, Some(filters.clone())),
            ("action: CREATE, operation: UNSUBSCRIBE, data: [EMAIL]", Some(filters.clone())),
        ] {
            assert_eq!(
                server.subscribe(None, &channel, "userSubscription", args, filters).await,
                refused("users", "UNSUBSCRIBE", "CREATE", not_subscribed),
                "{args}"
            );
        }
        let third = server.create_user("third", "third@example.com", "acme").await;
        ws.expect(&user_frame("create", &json!({"username": third["username"]}))).await;
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", unsubscribe_projected, Some(filters)).await,
            confirmed("users", "UNSUBSCRIBE", "CREATE")
        );
        server.create_user("fourth", "fourth@example.com", "acme").await;
        server.comment_sentinel(&mut [&mut ws]).await;

        // ALL_ACTIONS, then UNSUBSCRIBE of one of its actions leaves the other two.
        let all = "action: ALL_ACTIONS, operation: SUBSCRIBE";
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", all, None).await,
            confirmed("users", "SUBSCRIBE", "ALL_ACTIONS")
        );
        assert_eq!(
            server.subscribe(None, &channel, "userSubscription", unsubscribe, None).await,
            confirmed("users", "UNSUBSCRIBE", "CREATE")
        );
        let fifth = server.create_user("fifth", "fifth@example.com", "acme").await;
        let updated = server.update_user(&fifth["id"], "fifth@example.org").await;
        ws.expect(&user_frame("update", &updated)).await;
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_and_filters_are_per_subscription() {
    each_database(|db| async move {
        let server = Server::start(db, Hub::default()).await;
        let names = server.ws().await;
        names
            .subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE, data: [USERNAME]", None)
            .await;
        let full = server.ws().await;
        full.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        // Two subscriptions of one socket in one group, with different `data`.
        let both = server.ws().await;
        both.subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE, data: [USERNAME]", None)
            .await;
        both.subscribe_ok(
            &server,
            "userSubscription",
            "action: CREATE, operation: SUBSCRIBE, data: [EMAIL, TENANT]",
            None,
        )
        .await;
        // ...and with different filters.
        let filtered = server.ws().await;
        let by_tenant = Some(json!({"tenant": "acme"}));
        let by_name = Some(json!({"username__startswith": "x"}));
        filtered
            .subscribe_ok(
                &server,
                "userSubscription",
                "action: CREATE, operation: SUBSCRIBE, data: [USERNAME]",
                by_tenant,
            )
            .await;
        filtered
            .subscribe_ok(&server, "userSubscription", "action: CREATE, operation: SUBSCRIBE, data: [EMAIL]", by_name)
            .await;
        assert_eq!(server.hub.group_size("users-create"), 4, "one membership per socket");
        let mut sockets = [names, full, both, filtered];
        for ws in &sockets {
            ws.arm_comment_sentinel(&server).await;
        }
        let [names, full, both, filtered] = &mut sockets;

        let people = [
            ("xavier", "xavier@example.com", "acme"),
            ("yolanda", "yolanda@example.com", "acme"),
            ("xena", "xena@example.com", "globex"),
            ("zed", "zed@example.com", "globex"),
        ];
        let mut rows = Vec::new();
        for (username, email, tenant) in people {
            rows.push(server.create_user(username, email, tenant).await);
        }
        for row in &rows {
            names.expect(&user_frame("create", &json!({"username": row["username"]}))).await;
            full.expect(&user_frame("create", row)).await;
            both.expect_unordered(&[
                user_frame("create", &json!({"username": row["username"]})),
                user_frame("create", &json!({"email": row["email"], "tenant": row["tenant"]})),
            ])
            .await;
        }
        // xavier matches both filters, yolanda the tenant, xena the name, zed none.
        filtered
            .expect_unordered(&[
                user_frame("create", &json!({"username": "xavier"})),
                user_frame("create", &json!({"email": "xavier@example.com"})),
            ])
            .await;
        filtered.expect(&user_frame("create", &json!({"username": "yolanda"}))).await;
        filtered.expect(&user_frame("create", &json!({"email": "xena@example.com"}))).await;
        let [names, full, both, filtered] = sockets.each_mut();
        server.comment_sentinel(&mut [names, full, both, filtered]).await;
    })
    .await;
}

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
        // Indexes into `texts` each filter must let through, decided by a
        // primary-key-bounded query on each database.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_announce_after_commit_only() {
    each_database(|db| async move {
        let server = Server::start(db.clone(), Hub::default()).await;
        let mut ws = server.ws().await;
        ws.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        ws.arm_comment_sentinel(&server).await;

        let hub = server.hub.clone();
        let (mut ws, rows) = server
            .hub
            .scope(graphex::transaction(&db, move |txn| {
                Box::pin(async move {
                    let a = new_user("in-txn-a", "a@example.com", "acme").insert(txn).await?;
                    let b = new_user("in-txn-b", "b@example.com", "acme").insert(txn).await?;
                    // Not yet: a change published now, outside the transaction,
                    // is the first frame (the database is not touched, so this
                    // works with SQLite's single connection held by `txn`).
                    let sentinel = comment::Model { id: 999_999, post: 0, text: "sentinel".into() };
                    let prepared = graphex::__internals::prepare(&sentinel, Action::Create);
                    hub.publish(&prepared.groups, prepared.message).await;
                    ws.expect(&comment_frame("create", &json!(999_999))).await;
                    Ok::<_, DbErr>((ws, [a, b]))
                })
            }))
            .await
            .expect("transaction committed");
        for row in &rows {
            ws.expect(&user_frame("create", &user_json(row))).await;
        }
        server.comment_sentinel(&mut [&mut ws]).await;

        // Rolled back: nothing is announced, ever.
        let result = server
            .hub
            .scope(graphex::transaction(&db, |txn| {
                Box::pin(async move {
                    new_user("rolled-back", "r@example.com", "acme").insert(txn).await.map_err(|e| e.to_string())?;
                    Err::<(), String>("changed my mind".into())
                })
            }))
            .await;
        match result {
            Err(sea_orm::TransactionError::Transaction(error)) => assert_eq!(error, "changed my mind"),
            other => panic!("expected the callback's error, got {other:?}"),
        }
        let found = user::Entity::find().filter(user::Column::Username.eq("rolled-back")).one(&db).await.unwrap();
        assert!(found.is_none(), "the insert was rolled back");
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_inserts_are_announced_by_hand() {
    each_database(|db| async move {
        let server = Server::start(db.clone(), Hub::default()).await;
        let mut ws = server.ws().await;
        ws.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
        ws.arm_comment_sentinel(&server).await;

        let names = ["bulk-1", "bulk-2", "bulk-3"];
        server
            .hub
            .scope(
                user::Entity::insert_many(names.map(|name| new_user(name, &format!("{name}@example.com"), "acme")))
                    .exec(&db),
            )
            .await
            .expect("inserted");
        // insert_many runs no hooks.
        server.comment_sentinel(&mut [&mut ws]).await;

        let rows = user::Entity::find()
            .filter(user::Column::Username.is_in(names))
            .order_by_asc(user::Column::Id)
            .all(&db)
            .await
            .unwrap();
        assert_eq!(rows.len(), 3);
        server.hub.scope(graphex::announce_many(&rows, Action::Create)).await;
        for row in &rows {
            ws.expect(&user_frame("create", &user_json(row))).await;
        }
        server.comment_sentinel(&mut [&mut ws]).await;
    })
    .await;
}

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

        // 64 KiB per notification: the socket buffers fill after a few MiB.
        let email = format!("{}@example.com", "x".repeat(64 * 1024));
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

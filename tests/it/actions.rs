//! The two-channel protocol on the reference app over real sockets: the
//! handshake, each action reaching its subscribers, per-row (`id`)
//! subscriptions, unsubscribe with the same arguments, and projections and
//! filters kept per subscription.
//!
//! Each test runs on SQLite in memory and, with `GRAPHEX_TEST_POSTGRES_URL`,
//! again on PostgreSQL in a schema of its own, and with `GRAPHEX_TEST_MYSQL_URL`
//! on MySQL / MariaDB in a database of its own ([`crate::support::each_database`]).
//! "Nothing arrives" is never asserted by waiting: a sentinel change is made
//! afterwards and must be the next frame (a channel receives changes in the
//! order they were announced).

use graphex::__internals::HubInternals;
use serde_json::json;

use crate::support::{Server, USERS_CREATE, Ws, confirmed, each_database, refused, user_frame};
use graphex::Hub;

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

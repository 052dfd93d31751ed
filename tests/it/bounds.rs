//! What one subscribe and one change may cost (issue 15), over real sockets
//! on the reference app: a projection naming fields many times keeps each
//! once, in the order of its first occurrence, with the frame of the list
//! without repeats; the subscriptions of one ALL_ACTIONS subscribe share
//! one projection and one filter; an id-only change is read back once per
//! process for every subscription whose filter needs the row, on SQLite
//! and PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use graphex::__internals::HubInternals;
use graphex::Hub;
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite::Message;

use crate::app;
use crate::support::{Server, Ws, comment_frame, each_database, frame};

/// Subscribes `ws` to user changes with `data` given as a variable.
async fn subscribe_users(server: &Server, ws: &Ws, operation: &str, data: &[&str]) -> Json {
    let query = format!(
        "subscription ($channelId: String!, $data: [UserFields!]) {{ \
           userSubscription(channelId: $channelId, action: ALL_ACTIONS, operation: {operation}, data: $data) \
           {{ ok error }} \
         }}"
    );
    let data = server.execute(None, &query, json!({"channelId": ws.channel_id, "data": data})).await;
    data["userSubscription"].clone()
}

/// The next frame's text, byte for byte.
async fn next_text(ws: &mut Ws) -> String {
    match ws.next_message().await {
        Some(Message::Text(text)) => text.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_keeps_each_field_once_in_the_order_given() {
    let db = app::connect("sqlite::memory:", None).await;
    let server = Server::start(db, Hub::default()).await;
    // 10 000 repeats of three fields in mixed orders; EMAIL comes first.
    let orders = [["EMAIL", "USERNAME", "ID"], ["ID", "EMAIL", "USERNAME"], ["USERNAME", "ID", "EMAIL"]];
    let repeated: Vec<&str> = (0..10_000).flat_map(|index| orders[index % 3]).collect();
    let unique = ["EMAIL", "USERNAME", "ID"];

    let mut many = server.ws().await;
    assert_eq!(subscribe_users(&server, &many, "SUBSCRIBE", &repeated).await, json!({"ok": true, "error": null}));
    let mut once = server.ws().await;
    assert_eq!(subscribe_users(&server, &once, "SUBSCRIBE", &unique).await, json!({"ok": true, "error": null}));

    let channel = server.hub.channel(&many.channel_id).expect("the channel is open");
    assert_eq!(channel.subscription_count(), 3, "one subscription per action");
    channel.inspect_subscriptions(|subscriptions| {
        let first = subscriptions[0].key.projection.clone().expect("a projection");
        assert_eq!(&*first, ["email", "username", "id"], "each field once, first occurrences in order");
        for subscription in subscriptions {
            let projection = subscription.key.projection.as_ref().expect("a projection");
            assert!(Arc::ptr_eq(projection, &first), "the actions share one projection");
        }
    });

    let row = server.create_user("neo", "neo@example.com", "acme").await;
    let expected = frame("users", "create", "user", json!({"email": row["email"], "username": "neo", "id": row["id"]}));
    let from_many = next_text(&mut many).await;
    assert_eq!(from_many, next_text(&mut once).await, "the frame of the list without repeats, byte for byte");
    assert_eq!(from_many, expected.to_string());

    // The same subscription, named without repeats, is the one to unsubscribe.
    assert_eq!(subscribe_users(&server, &many, "UNSUBSCRIBE", &unique).await, json!({"ok": true, "error": null}));
    assert_eq!(channel.subscription_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actions_of_one_subscribe_share_one_filter() {
    let db = app::connect("sqlite::memory:", None).await;
    let server = Server::start(db, Hub::default()).await;
    let ws = server.ws().await;
    let filters = json!({"post": 7, "text__icontains": "urgent"});
    ws.subscribe_ok(&server, "commentSubscription", "action: ALL_ACTIONS, operation: SUBSCRIBE", Some(filters.clone()))
        .await;
    let channel = server.hub.channel(&ws.channel_id).expect("the channel is open");
    channel.inspect_subscriptions(|subscriptions| {
        assert_eq!(subscriptions.len(), 3);
        for subscription in subscriptions {
            assert!(Arc::ptr_eq(&subscription.filter, &subscriptions[0].filter));
            let given = subscription.key.filters.as_ref().expect("filters");
            assert!(Arc::ptr_eq(given, subscriptions[0].key.filters.as_ref().expect("filters")));
            assert_eq!(**given, filters);
        }
    });
    // An identical subscribe is recognised as existing: still three.
    ws.subscribe_ok(&server, "commentSubscription", "action: ALL_ACTIONS, operation: SUBSCRIBE", Some(filters)).await;
    assert_eq!(channel.subscription_count(), 3);
}

/// `SELECT`s on the comments table, counted by the connection.
fn count_comment_selects(db: &mut sea_orm::DatabaseConnection) -> Arc<AtomicUsize> {
    let selects = Arc::new(AtomicUsize::new(0));
    let counter = selects.clone();
    db.set_metric_callback(move |info| {
        let sql = info.statement.sql.trim_start();
        if sql.get(..6).is_some_and(|head| head.eq_ignore_ascii_case("select")) && sql.contains("comments") {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    selects
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_only_change_is_read_back_once_for_every_filter() {
    each_database(|mut db| async move {
        let selects = count_comment_selects(&mut db);
        // MySQL has no RETURNING: SeaORM reads an inserted or updated row
        // back by primary key, a SELECT of the mutation's own.
        let read_back = usize::from(db.get_database_backend() == sea_orm::DbBackend::MySql);
        let server = Server::start(db, Hub::default()).await;
        // Different filters on fields other than the id of the id-only
        // comments, one socket each, and one socket with two of them.
        let cases = [
            vec![json!({"post": 7})],
            vec![json!({"post": 8})],
            vec![json!({"post__gte": 7, "text__icontains": "URGENT"})],
            vec![json!({"text__startswith": "Urgent"}), json!({"post__in": [1, 2]})],
            vec![json!({"text__endswith": "later"})],
            vec![json!({"post__lt": 7})],
        ];
        let mut sockets = Vec::new();
        for filters in &cases {
            let ws = server.ws().await;
            for filter in filters {
                ws.subscribe_ok(
                    &server,
                    "commentSubscription",
                    "action: ALL_ACTIONS, operation: SUBSCRIBE",
                    Some(filter.clone()),
                )
                .await;
            }
            ws.arm_user_sentinel(&server).await;
            sockets.push(ws);
        }
        let subscriptions: usize =
            sockets.iter().map(|ws| server.hub.channel(&ws.channel_id).unwrap().subscription_count()).sum();
        assert_eq!(subscriptions, 3 * 7 + 6);

        let before = selects.load(Ordering::SeqCst);
        let id = server.create_comment(7, "Urgent: fix the build").await;
        let takes = [true, false, true, true, false, false];
        for (ws, takes) in sockets.iter_mut().zip(takes) {
            if takes {
                ws.expect(&comment_frame("create", &id)).await;
            }
        }
        let mut all: Vec<&mut Ws> = sockets.iter_mut().collect();
        server.user_sentinel(&mut all).await;
        assert_eq!(
            selects.load(Ordering::SeqCst) - before,
            1 + read_back,
            "one read of the row for seven filters on six sockets"
        );
        drop(all);

        // A subscription by id is in another group (the instance group) of
        // the same change: still one read, beside the mutation's own lookup.
        let by_id = server.ws().await;
        by_id
            .subscribe_ok(
                &server,
                "commentSubscription",
                &format!("action: UPDATE, operation: SUBSCRIBE, id: {id}"),
                Some(json!({"text__contains": "fix"})),
            )
            .await;
        by_id.arm_user_sentinel(&server).await;
        sockets.push(by_id);
        let before = selects.load(Ordering::SeqCst);
        server.update_comment(&id, "fixed it").await;
        let takes = [true, false, false, false, false, false, true];
        for (ws, takes) in sockets.iter_mut().zip(takes) {
            if takes {
                ws.expect(&comment_frame("update", &id)).await;
            }
        }
        let mut all: Vec<&mut Ws> = sockets.iter_mut().collect();
        server.user_sentinel(&mut all).await;
        assert_eq!(
            selects.load(Ordering::SeqCst) - before,
            2 + read_back,
            "the mutation's lookup and one read, for two groups"
        );

        // Deletes are not read back (the row is gone), as before: only the
        // mutation's own lookup runs, and no filter that needs the row lets it through.
        let before = selects.load(Ordering::SeqCst);
        server.delete_comment(&id).await;
        server.user_sentinel(&mut all).await;
        assert_eq!(selects.load(Ordering::SeqCst) - before, 1, "the mutation's lookup only");
    })
    .await;
}

//! Positions, history, repair and the outbox of the Redis layer (issue 16,
//! "nothing lost"): two hubs in this process, each with its own
//! `RedisLayer`, are the two processes; changes carry sequence numbers in
//! their primary key, and every subscriber either receives each change
//! exactly once and in order, or is closed with `CloseReason::Expired`.

use graphex::__internals::{Channel, Delivery, HubInternals, Subscription, SubscriptionKey};
use graphex::layer::{Expiry, History, Position};
use graphex::{Action, CloseReason};
use tokio::sync::mpsc;

use super::*;

/// Short timeouts and backoffs: outages in these cases last a moment.
fn quick(prefix: &str) -> RedisOptions {
    RedisOptions::default()
        .with_prefix(prefix.to_owned())
        .with_publish_timeout(Duration::from_millis(500))
        .with_subscribe_timeout(Duration::from_secs(5))
        .with_connect_timeout(Duration::from_millis(500))
        .with_min_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(200))
        .with_health_check_interval(Duration::from_millis(300))
}

/// A "process": a hub on its own Redis layer.
struct Node {
    hub: Hub,
    layer: Arc<RedisLayer>,
}

impl Node {
    async fn start(url: &str, options: RedisOptions) -> Node {
        let layer = Arc::new(RedisLayer::connect_with(url, options).await.expect("Redis answers"));
        let hub = Hub::with_layer(Config::default(), layer.clone() as Arc<dyn ChannelLayer>);
        Node { hub, layer }
    }

    /// Publishes the creation of user `seq` (its primary key).
    async fn publish(&self, seq: i64) {
        let row = app::user::Model {
            id: seq as i32,
            username: format!("u{seq}"),
            email: "u@example.com".into(),
            tenant: "t1".into(),
        };
        let prepared = graphex::__internals::prepare(&row, Action::Create);
        self.hub.publish(&prepared.groups, prepared.message).await;
    }

    async fn publish_all(&self, seqs: std::ops::RangeInclusive<i64>) {
        for seq in seqs {
            self.publish(seq).await;
        }
    }

    /// A subscriber to every user creation.
    async fn watch(&self) -> Watcher {
        let (channel, rx) = self.hub.open_channel(None).expect("channel");
        let subscription = Subscription {
            key: SubscriptionKey {
                stream: "users",
                action: Action::Create,
                id: None,
                filters: None,
                projection: None,
                cursors: false,
            },
            group: graphex::__internals::group::coarse("users", Action::Create).into(),
            filter: Default::default(),
            row: None,
            resume: None,
            implied: None,
        };
        self.hub.add_subscription(&channel, subscription).await.expect("subscribed");
        Watcher { channel, rx, last: None }
    }
}

/// How a watcher's sequence ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every change up to the last one expected, once, in order.
    Complete,
    /// Closed with `CloseReason::Expired` (after an unbroken prefix).
    Expired,
}

struct Watcher {
    channel: Arc<Channel>,
    rx: mpsc::Receiver<Delivery>,
    /// The position of the last change received.
    last: Option<Position>,
}

impl Watcher {
    /// The next change's sequence number, or `None` once the channel is closed.
    async fn next(&mut self) -> Option<i64> {
        loop {
            let delivery = tokio::select! {
                biased;
                delivery = self.rx.recv() => delivery,
                () = self.channel.closed() => self.rx.try_recv().ok(),
                () = tokio::time::sleep(TIMEOUT * 2) => panic!("neither a change nor a close in time"),
            };
            match delivery {
                Some(Delivery::Change(dispatched) | Delivery::Taken(dispatched, _)) => {
                    self.last = dispatched.event.position.or(self.last);
                    return Some(dispatched.event.change.pk.as_i64().expect("numeric pk"));
                }
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Changes `from..=to`: each once, in order, or a close with
    /// `Expired` after an unbroken prefix of them. Never a gap, never a duplicate.
    async fn check(&mut self, label: &str, from: i64, to: i64) -> Ended {
        let mut expected = from;
        while expected <= to {
            match self.next().await {
                Some(seq) => {
                    assert_eq!(seq, expected, "{label}: change {seq} where {expected} was due (a gap or a duplicate)");
                    expected += 1;
                }
                None => {
                    let reason = self.channel.close_reason();
                    assert_eq!(reason, Some(CloseReason::Expired), "{label}: closed for another reason");
                    return Ended::Expired;
                }
            }
        }
        Ended::Complete
    }

    /// Waits until the channel is closed, every change before the close
    /// being `from`, `from + 1`, ...; returns how many came.
    async fn expect_expired(&mut self, label: &str, from: i64) -> i64 {
        let mut expected = from;
        while let Some(seq) = self.next().await {
            assert_eq!(seq, expected, "{label}: change {seq} where {expected} was due");
            expected += 1;
        }
        assert_eq!(self.channel.close_reason(), Some(CloseReason::Expired), "{label}");
        expected - from
    }
}

/// Waits until every subscriber connection of these layers is back.
async fn reconnected(layers: &[&RedisLayer]) {
    wait_until("the layers reconnect", || layers.iter().all(|layer| layer.stats().connected)).await;
}

/// Waits until the layer's outbox is empty (everything published).
async fn flushed(layer: &RedisLayer) {
    wait_until("the outbox is flushed", || layer.stats().outbox_waiting == 0).await;
}

/// Redis stops (data saved) while a publisher keeps publishing, and comes
/// back: the outbox publishes what waited, the subscribers' history
/// repairs what they missed; every change arrives once, in order.
pub async fn outbox_and_history_bridge_a_redis_restart() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&redis.url(), quick(&prefix)).await, Node::start(&redis.url(), quick(&prefix)).await);
    let (mut on_a, mut on_b) = (a.watch().await, b.watch().await);
    a.publish_all(1..=10).await;
    assert_eq!(on_a.check("A before", 1, 10).await, Ended::Complete);
    assert_eq!(on_b.check("B before", 1, 10).await, Ended::Complete);

    redis.stop_saving().await;
    // The publisher keeps going: each publish returns, its change waits.
    a.publish_all(11..=30).await;
    assert_eq!(a.hub.stats().dropped, 0, "nothing dropped: outboxed");
    assert!(a.layer.stats().outboxed >= 20, "{:?}", a.layer.stats());
    redis.start_again().await;
    a.publish_all(31..=40).await;
    assert_eq!(on_a.check("A across", 11, 40).await, Ended::Complete);
    assert_eq!(on_b.check("B across", 11, 40).await, Ended::Complete);
    reconnected(&[&a.layer, &b.layer]).await;
    assert_eq!(a.hub.stats().dropped, 0);
    let lost = a.layer.stats().lost + b.layer.stats().lost;
    assert_eq!(lost, 0, "nothing lost: the same epoch, history kept");
    Some(())
}

/// A process that stops while Redis is unreachable sends what its outbox
/// holds once Redis is back, before `Hub::stopped` returns (issue 19): a
/// change published before the stop reaches the other processes.
pub async fn stopping_sends_the_outbox_first() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&redis.url(), quick(&prefix)).await, Node::start(&redis.url(), quick(&prefix)).await);
    let mut on_b = b.watch().await;
    a.publish_all(1..=5).await;
    assert_eq!(on_b.check("B before", 1, 5).await, Ended::Complete);

    redis.stop_saving().await;
    a.publish_all(6..=15).await;
    assert!(a.layer.stats().outboxed >= 10, "{:?}", a.layer.stats());
    let hub = a.hub.clone();
    let stopping = tokio::spawn(async move { hub.stopped().await });
    // Waits for Redis rather than drop the outbox (not a timing check: a
    // stop that finished now would have lost the ten changes).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "stopped with changes still in the outbox");
    redis.start_again().await;
    let stopped = stopping.await.expect("stopped");
    assert!(stopped.is_clean(), "{stopped:?}");
    assert_eq!(a.layer.stats().outbox_waiting, 0);
    assert_eq!(on_b.check("B after A stopped", 6, 15).await, Ended::Complete);
    Some(())
}

/// Redis restarts empty: its history is gone, so subscribers cannot be
/// told what they missed; they are closed (Expired) rather than left with
/// a gap. New subscribers then receive everything.
pub async fn redis_restarted_empty_expires_subscribers() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&redis.url(), quick(&prefix)).await, Node::start(&redis.url(), quick(&prefix)).await);
    let (mut on_a, mut on_b) = (a.watch().await, b.watch().await);
    a.publish_all(1..=5).await;
    assert_eq!(on_a.check("A before", 1, 5).await, Ended::Complete);
    assert_eq!(on_b.check("B before", 1, 5).await, Ended::Complete);

    redis.stop_empty().await;
    a.publish_all(6..=8).await;
    redis.start_again().await;
    a.publish_all(9..=12).await;
    // The epoch changed: nobody can be sure to have everything.
    on_a.expect_expired("A", 6).await;
    on_b.expect_expired("B", 6).await;
    assert!(a.layer.stats().lost >= 1 && b.layer.stats().lost >= 1);

    reconnected(&[&a.layer, &b.layer]).await;
    // Subscribers made from now on see every change published after them.
    flushed(&a.layer).await;
    let (mut again_a, mut again_b) = (a.watch().await, b.watch().await);
    a.publish_all(13..=20).await;
    assert_eq!(again_a.check("A after", 13, 20).await, Ended::Complete);
    assert_eq!(again_b.check("B after", 13, 20).await, Ended::Complete);
    Some(())
}

/// Redis restored from an older snapshot gives offsets again: the
/// regression is detected, the stream moved to a new epoch, subscribers
/// closed; a cursor ahead of the head is refused (`Ahead`) and moves the epoch.
pub async fn redis_restored_from_an_older_snapshot() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&redis.url(), quick(&prefix)).await, Node::start(&redis.url(), quick(&prefix)).await);
    let (mut on_a, mut on_b) = (a.watch().await, b.watch().await);
    a.publish_all(1..=3).await;
    assert_eq!(on_b.check("B", 1, 3).await, Ended::Complete);
    redis.snapshot().await;
    a.publish_all(4..=8).await;
    assert_eq!(on_a.check("A", 1, 8).await, Ended::Complete);
    assert_eq!(on_b.check("B", 4, 8).await, Ended::Complete);
    let seen = on_b.last.expect("positions");
    assert_eq!(seen.offset, 8);

    redis.stop_to_snapshot().await;
    redis.start_again().await;
    // Both processes look when they reconnect, before anything else is published.
    on_a.expect_expired("A", 9).await;
    on_b.expect_expired("B", 9).await;
    let moved = a.layer.stats().epochs + b.layer.stats().epochs;
    assert!(moved >= 1, "one of them moved the epoch");
    reconnected(&[&a.layer, &b.layer]).await;
    let mut again = b.watch().await;
    a.publish_all(9..=12).await;
    assert_eq!(again.check("B after", 9, 12).await, Ended::Complete);
    assert_ne!(again.last.expect("positions").epoch, seen.epoch, "a new epoch");
    drop((a, b));

    // Back to the snapshot once more, with no process looking: a cursor
    // ahead of the head is refused and moves the epoch.
    redis.stop_to_snapshot().await;
    redis.start_again().await;
    let c = Node::start(&redis.url(), quick(&prefix)).await;
    let history = c.layer.history("users", seen).await.expect("history read");
    assert!(matches!(history, History::Expired(Expiry::Ahead)), "{history:?}");
    assert_eq!(c.layer.stats().epochs, 1);
    let within = Position { epoch: seen.epoch, offset: 2 };
    let history = c.layer.history("users", within).await.expect("history read");
    assert!(matches!(history, History::Expired(Expiry::Epoch)), "the old epoch is over: {history:?}");
    Some(())
}

/// A change published while Redis is down: `publish` returns, and the
/// change reaches every subscriber once Redis is back.
pub async fn a_change_published_during_an_outage_arrives() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&redis.url(), quick(&prefix)).await, Node::start(&redis.url(), quick(&prefix)).await);
    let (mut on_a, mut on_b) = (a.watch().await, b.watch().await);
    a.publish(1).await;
    assert_eq!(on_b.check("B", 1, 1).await, Ended::Complete);
    redis.stop_saving().await;
    a.publish(2).await;
    assert_eq!(a.layer.stats().outboxed, 1);
    redis.start_again().await;
    assert_eq!(on_a.check("A", 1, 2).await, Ended::Complete);
    assert_eq!(on_b.check("B", 2, 2).await, Ended::Complete);
    Some(())
}

/// An outbox that overflows drops changes: their stream moves to a new
/// epoch with its next change, and subscribers are closed (Expired).
pub async fn outbox_overflow_moves_the_epoch() -> Option<()> {
    // (Subscribers are told by a notice to the dropped changes' groups.)
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let a = Node::start(&redis.url(), quick(&prefix).with_outbox(2)).await;
    let b = Node::start(&redis.url(), quick(&prefix)).await;
    let (mut on_a, mut on_b) = (a.watch().await, b.watch().await);
    a.publish_all(1..=2).await;
    assert_eq!(on_a.check("A", 1, 2).await, Ended::Complete);
    assert_eq!(on_b.check("B", 1, 2).await, Ended::Complete);
    redis.stop_saving().await;
    a.publish_all(3..=6).await; // 5 and 6 do not fit
    assert_eq!(a.layer.stats().outbox_overflows, 2);
    assert_eq!(a.hub.stats().dropped, 2, "dropped changes are counted by the hub");
    redis.start_again().await;
    flushed(&a.layer).await;
    // Once the outbox is drained the stream starts a new epoch: no cursor
    // of the old one resumes past the dropped changes.
    wait_until("the stream moves to a new epoch", || a.layer.stats().epochs == 1).await;
    let before_the_drop = Position { epoch: on_a.last.expect("positions").epoch, offset: 2 };
    let history = b.layer.history("users", before_the_drop).await.expect("history read");
    assert!(matches!(history, History::Expired(Expiry::Epoch)), "{history:?}");
    // The groups of the dropped changes hear of the new epoch at once: their
    // subscribers are closed without waiting for the stream's next change.
    on_a.expect_expired("A", 3).await;
    on_b.expect_expired("B", 3).await;
    assert_eq!(a.layer.stats().epochs, 1, "one new epoch");
    assert_eq!(b.hub.stats().dropped, 0, "the notice is not delivered as a change (it would not decode)");
    Some(())
}

/// A position seen on one process resumes on another (the same changes,
/// from Redis's history); a small history expires old positions
/// (`Trimmed`); without history only the head resumes.
pub async fn history_across_processes() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&url, quick(&prefix)).await, Node::start(&url, quick(&prefix)).await);
    let mut on_a = a.watch().await;
    a.publish_all(1..=5).await;
    assert_eq!(on_a.check("A", 1, 2).await, Ended::Complete);
    let second = on_a.last.expect("positions");
    assert_eq!(on_a.check("A", 3, 5).await, Ended::Complete);
    let head = on_a.last.expect("positions");
    assert_eq!((second.epoch, second.offset + 3), (head.epoch, head.offset));
    match b.layer.history("users", second).await.expect("history") {
        History::Since { kept, head: read } => {
            assert_eq!(read, head);
            assert_eq!(kept.iter().map(|kept| kept.offset).collect::<Vec<_>>(), [3, 4, 5]);
            assert_eq!(kept[0].groups, ["users-create", "users-create-3"]);
            let change: Json = serde_json::from_slice(&kept[2].message).expect("the change message");
            assert_eq!(change["pk"], json!(5), "{change}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(b.layer.history("users", head).await, Ok(History::Since { kept, .. }) if kept.is_empty()));

    // A history of 3 changes.
    let prefix = unique_prefix();
    let small = Node::start(&url, quick(&prefix).with_history(3)).await;
    let mut watcher = small.watch().await;
    small.publish_all(1..=10).await;
    assert_eq!(watcher.check("small", 1, 10).await, Ended::Complete);
    let head = watcher.last.expect("positions");
    let at = |offset| Position { epoch: head.epoch, offset };
    let history = small.layer.history("users", at(2)).await.expect("history");
    assert!(matches!(history, History::Expired(Expiry::Trimmed)), "{history:?}");
    match small.layer.history("users", at(7)).await.expect("history") {
        History::Since { kept, .. } => assert_eq!(kept.iter().map(|kept| kept.offset).collect::<Vec<_>>(), [8, 9, 10]),
        other => panic!("{other:?}"),
    }

    // No history.
    let prefix = unique_prefix();
    let none = Node::start(&url, quick(&prefix).with_history(0)).await;
    let mut watcher = none.watch().await;
    none.publish_all(1..=3).await;
    assert_eq!(watcher.check("none", 1, 3).await, Ended::Complete);
    let head = watcher.last.expect("positions");
    assert!(matches!(none.layer.history("users", head).await, Ok(History::Since { kept, .. }) if kept.is_empty()));
    let before = Position { epoch: head.epoch, offset: 2 };
    let history = none.layer.history("users", before).await.expect("history");
    assert!(matches!(history, History::Expired(Expiry::Trimmed)), "{history:?}");
    Some(())
}

/// End to end over the two-channel protocol: a cursor a client got from
/// process A resumes on process B, which replays the changes after it
/// from Redis's history (with the same cursors), then goes on live.
pub async fn a_cursor_from_one_process_resumes_on_another() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&url, quick(&prefix)).await, Node::start(&url, quick(&prefix)).await);
    let server_a = Server::start(app::connect("sqlite::memory:", None).await, a.hub.clone()).await;
    let server_b = Server::start(app::connect("sqlite::memory:", None).await, b.hub.clone()).await;
    let mut on_a = server_a.ws().await;
    let args = "action: CREATE, operation: SUBSCRIBE, cursors: true";
    on_a.subscribe_ok(&server_a, "userSubscription", args, None).await;
    let mut users = Vec::new();
    let mut cursors = Vec::new();
    for n in 0..3 {
        let user = server_a.create_user(&format!("r{n}"), "r@example.com", "t1").await;
        let mut frame = on_a.next_json().await;
        let cursor = frame.as_object_mut().and_then(|frame| frame.remove("cursor")).expect("a cursor");
        assert_eq!(frame, user_frame("create", &user));
        users.push(user);
        cursors.push(cursor.as_str().expect("a string").to_owned());
    }

    let mut on_b = server_b.ws().await;
    let args = format!("action: CREATE, operation: SUBSCRIBE, after: \"{}\"", cursors[0]);
    on_b.subscribe_ok(&server_b, "userSubscription", &args, None).await;
    let live = server_a.create_user("r3", "r@example.com", "t1").await;
    for (user, cursor) in users[1..].iter().zip(&cursors[1..]) {
        let mut frame = on_b.next_json().await;
        assert_eq!(frame.as_object_mut().and_then(|frame| frame.remove("cursor")), Some(json!(cursor)));
        assert_eq!(frame, user_frame("create", user), "replayed from history");
    }
    let mut frame = on_b.next_json().await;
    assert!(frame.as_object_mut().and_then(|frame| frame.remove("cursor")).is_some());
    assert_eq!(frame, user_frame("create", &live), "then live, once");
    Some(())
}

/// A publish whose answer comes too late may still have run: Redis, paused
/// for writes, runs it after the publisher timed out and kept the change in
/// its outbox. The retry finds the change's token in the history and does
/// not publish it again: subscribers get it once.
pub async fn a_publish_that_timed_out_but_ran_is_not_published_twice() -> Option<()> {
    let redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    let options = quick(&prefix).with_publish_timeout(Duration::from_millis(150));
    let (a, b) = (Node::start(&redis.url(), options.clone()).await, Node::start(&redis.url(), options).await);
    let (mut on_a, mut on_b) = (a.watch().await, b.watch().await);
    a.publish_all(1..=3).await;
    assert_eq!(on_b.check("B before", 1, 3).await, Ended::Complete);
    // Writes wait 600 ms: the script sent now runs after the publisher gave up.
    redis.command(&["CLIENT", "PAUSE", "600", "WRITE"]).await;
    a.publish(4).await;
    assert!(a.layer.stats().outboxed >= 1, "timed out, kept: {:?}", a.layer.stats());
    flushed(&a.layer).await;
    a.publish_all(5..=6).await;
    assert_eq!(on_a.check("A", 1, 6).await, Ended::Complete);
    assert_eq!(on_b.check("B", 4, 6).await, Ended::Complete);
    let history = b.layer.history("users", Position { offset: 3, ..on_b.last.expect("positions") }).await.unwrap();
    let History::Since { kept, head } = history else { panic!("{history:?}") };
    assert_eq!(kept.len(), 3, "change 4 kept once: {kept:?}");
    assert_eq!(head.offset, 6);
    Some(())
}

/// Redis restored from an older snapshot, and before the watching process
/// reconnects another one publishes enough to push the head past the last
/// offset it saw: the offsets are given again, to other changes. The
/// watcher notices that the change at its last offset is not the one it
/// saw (its token differs), moves the epoch and closes its subscriber,
/// instead of "repairing" with changes that skip the reused offsets.
pub async fn reused_offsets_after_a_restore_are_noticed() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let prefix = unique_prefix();
    // The watcher comes back late (its reconnection backs off 2 s).
    let slow = quick(&prefix).with_min_backoff(Duration::from_secs(2)).with_max_backoff(Duration::from_secs(2));
    let b = Node::start(&redis.url(), slow).await;
    let mut on_b = b.watch().await;
    let a = Node::start(&redis.url(), quick(&prefix)).await;
    a.publish_all(1..=3).await;
    assert_eq!(on_b.check("B", 1, 3).await, Ended::Complete);
    redis.snapshot().await;
    a.publish_all(4..=8).await;
    assert_eq!(on_b.check("B", 4, 8).await, Ended::Complete);
    drop(a);

    redis.stop_to_snapshot().await;
    redis.start_again().await;
    // A process that knew nothing of the old offsets publishes 9..20 at
    // offsets 4..15 while the watcher is still away.
    let c = Node::start(&redis.url(), quick(&prefix)).await;
    c.publish_all(9..=20).await;
    assert_eq!(c.layer.stats().outbox_waiting, 0, "published before the watcher is back");
    on_b.expect_expired("B", 9).await;
    assert!(b.layer.stats().epochs >= 1, "the watcher moved the epoch: {:?}", b.layer.stats());
    Some(())
}

/// Users `from..=to` created on `process` (usernames `s<n>`).
async fn create_users(process: &Process, from: u32, to: u32) {
    for n in from..=to {
        process.http.create_user(&format!("s{n}"), "s@example.com", "t1").await;
    }
}

/// Two reference processes (real OS processes) on a Redis of the test's
/// own: a two-channel client on A, users created on B while Redis stops
/// (its data saved) and starts again. The client receives every user once
/// and in order, with cursors. Then Redis restarts empty: A closes the
/// socket with 4010, and the last cursor no longer resumes on B.
pub async fn two_processes_across_redis_restarts() -> Option<()> {
    let mut redis = OwnRedis::start().await?;
    let cluster = Cluster::start(&redis.url()).await;
    let mut on_a = cluster.a.http.ws().await;
    let args = "action: CREATE, operation: SUBSCRIBE, cursors: true";
    on_a.subscribe_ok(&cluster.a.http, "userSubscription", args, None).await;

    create_users(&cluster.b, 1, 5).await;
    redis.stop_saving().await;
    create_users(&cluster.b, 6, 10).await; // committed; waiting in B's outbox
    redis.start_again().await;
    create_users(&cluster.b, 11, 15).await;
    let mut last = None;
    for n in 1..=15 {
        let frame = on_a.next_json().await;
        assert_eq!(frame["payload"]["data"]["username"], json!(format!("s{n}")), "{frame}: a gap or a duplicate");
        let cursor = frame["cursor"].as_str().expect("a cursor").to_owned();
        if let Some(previous) = &last {
            assert_ne!(&cursor, previous);
        }
        last = Some(cursor);
    }

    redis.stop_empty().await;
    redis.start_again().await;
    create_users(&cluster.b, 16, 16).await;
    expect_close(&mut on_a, 4010).await;
    let fresh = cluster.b.http.ws().await;
    let resume = format!("action: CREATE, operation: SUBSCRIBE, after: \"{}\"", last.expect("a cursor"));
    let answer = cluster.b.http.subscribe(None, &fresh.channel_id, "userSubscription", &resume, None).await;
    assert_eq!(answer["ok"], json!(false), "{answer}");
    assert!(answer["error"].as_str().is_some_and(|error| error.starts_with("cursor expired")), "{answer}");
    Some(())
}

/// A captured transaction sent again (its confirmation to PostgreSQL was
/// lost) is recognised by its changes' log positions, kept in Redis beside
/// the stream's offsets, across processes: published once.
pub async fn captured_changes_sent_again_are_published_once() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let (a, b) = (Node::start(&url, quick(&prefix)).await, Node::start(&url, quick(&prefix)).await);
    let mut on_b = b.watch().await;
    let captured = |node: &Node, seq: i64, lsn: u64, index: u32| {
        let row = app::user::Model {
            id: seq as i32,
            username: format!("u{seq}"),
            email: "u@example.com".into(),
            tenant: "t1".into(),
        };
        let prepared = graphex::__internals::prepare(&row, Action::Create);
        let layer = node.layer.clone();
        async move {
            let source = graphex::layer::LogPosition { lsn, index };
            layer.publish_captured("users", &prepared.groups, prepared.message, source).await.expect("published");
        }
    };
    captured(&a, 1, 10, 0).await;
    captured(&a, 2, 10, 1).await;
    // The capture restarted (on process B, the new leader): the transaction again.
    captured(&b, 1, 10, 0).await;
    captured(&b, 2, 10, 1).await;
    captured(&b, 3, 20, 0).await;
    assert_eq!(on_b.check("B", 1, 3).await, Ended::Complete);
    Some(())
}

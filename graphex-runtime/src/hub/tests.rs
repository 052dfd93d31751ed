use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use super::*;
use crate::change::codec::Change;
use crate::change::group;
use crate::layer::LayerError;
use crate::model::Action;
use std::time::Duration;

#[test]
fn channel_ids_name_their_node_and_are_distinct() {
    let hub = Hub::default();
    let (a, _rx_a) = hub.open_channel(None).unwrap();
    let (b, _rx_b) = hub.open_channel(None).unwrap();
    assert_eq!(a.id().len(), 40);
    assert_ne!(a.id(), b.id());
    assert_eq!(Hub::node_of(a.id()), Some(hub.node()));
    assert_ne!(hub.node(), Hub::default().node());
    assert_eq!(Hub::node_of("abc"), None);
}

#[tokio::test]
async fn join_dispatch_leave() {
    let hub = Hub::default();
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    let group = group::coarse("users", Action::Create);
    hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    assert_eq!(
        hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await.unwrap(),
        Added::Existing
    );
    hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, Some(serde_json::json!({"a": 1}))))
        .await
        .unwrap();
    assert_eq!(hub.group_size(&group), 1, "one membership per channel and group");

    let change = Change::user_created(1, None);
    hub.publish(std::slice::from_ref(&group), change.encode()).await;
    let delivery = rx.try_recv().expect("delivered once");
    assert!(rx.try_recv().is_err(), "a group delivers once per channel");
    let mut frames = Vec::new();
    channel.frames(&delivery, &mut frames).await;
    assert_eq!(frames.len(), 2, "each subscription gets its frame");

    hub.close_channel(&channel);
    assert_eq!(hub.group_count(), 0);
    assert_eq!(hub.channel_count(), 0);
    // A subscribe that found the channel just before it closed adds nothing.
    assert!(matches!(
        hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await,
        Err(ChannelError::UnknownChannel)
    ));
    assert_eq!(hub.group_count(), 0);
}

#[tokio::test]
async fn the_hub_queues_only_what_a_channel_filters_let_through() {
    let hub = Hub::default();
    let group = group::coarse("users", Action::Create);
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    let mut in_room_1 = Subscription::of_users(&group, Action::Create, Some(serde_json::json!({"room": 1})));
    in_room_1.filter = Arc::new(crate::subscribe::filter::Filter::of(vec![crate::subscribe::filter::Clause {
        field: 1,
        name: "room",
        lookup: crate::model::Lookup::Exact,
        value: 1.into(),
    }]));
    hub.add_subscription(&channel, in_room_1).await.unwrap();
    let change = |pk: i64, room: Option<i64>| {
        Change::user_created(
            pk,
            Some(serde_json::Map::from_iter(
                [("id".to_owned(), pk.into())].into_iter().chain(room.map(|room| ("room".to_owned(), room.into()))),
            )),
        )
    };
    hub.publish(std::slice::from_ref(&group), change(1, Some(2)).encode()).await;
    assert!(rx.try_recv().is_err(), "another room's change is not queued (the socket is not woken)");
    hub.publish(std::slice::from_ref(&group), change(2, Some(1)).encode()).await;
    let delivery = rx.try_recv().expect("a change of room 1 is queued");
    assert_eq!(delivery.event().unwrap().change.pk, serde_json::json!(2));
    // Undecidable without a row check: nothing to queue either.
    hub.publish(std::slice::from_ref(&group), change(3, None).encode()).await;
    assert!(rx.try_recv().is_err());
    assert_eq!(hub.stats().delivered, 1);
}

/// A hub with 16-delivery queues and one channel subscribed to user creations.
async fn lagging_setup(backpressure: Option<Duration>) -> (Hub, Arc<Channel>, mpsc::Receiver<Delivery>, String) {
    let hub = Hub::new(Config { queue_capacity: 16, publish_backpressure: backpressure, ..Config::default() });
    let (channel, rx) = hub.open_channel(None).unwrap();
    let group = group::coarse("users", Action::Create);
    hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    (hub, channel, rx, group)
}

async fn create(hub: &Hub, group: &str, pk: i64) {
    let row = serde_json::Map::from_iter([("id".to_owned(), pk.into())]);
    hub.publish(&[group.to_owned()], Change::user_created(pk, Some(row)).encode()).await;
}

async fn yield_a_while() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

const BOUND: Duration = Duration::from_millis(100);

#[tokio::test(start_paused = true)]
async fn a_publish_that_leaves_a_socket_near_overflow_waits_until_it_catches_up() {
    let (hub, channel, mut rx, group) = lagging_setup(Some(BOUND)).await;
    let start = tokio::time::Instant::now();
    // Up to 13 of 16 queued, nobody waits.
    for pk in 1..=13 {
        create(&hub, &group, pk).await;
    }
    assert_eq!(hub.stats().backpressure_waits, 0);
    // The 14th leaves an eighth free: its publisher waits for the socket.
    let publisher = tokio::spawn({
        let (hub, group) = (hub.clone(), group.clone());
        async move { create(&hub, &group, 14).await }
    });
    yield_a_while().await;
    assert!(!publisher.is_finished(), "the publish waits while the socket is 14 behind");
    rx.try_recv().unwrap();
    channel.taken();
    yield_a_while().await;
    assert!(!publisher.is_finished(), "13 of 16 queued is still more than three quarters");
    rx.try_recv().unwrap();
    channel.taken();
    publisher.await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "relieved by the socket, not by the bound");
    assert_eq!(hub.stats().backpressure_waits, 1);
    assert!(channel.close_reason().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_stopped_reading_delays_each_publish_by_the_bound_at_most() {
    let (hub, channel, _rx, group) = lagging_setup(Some(BOUND)).await;
    for pk in 1..=13 {
        create(&hub, &group, pk).await;
    }
    for pk in 14..=16 {
        let start = tokio::time::Instant::now();
        create(&hub, &group, pk).await;
        assert_eq!(start.elapsed(), BOUND);
    }
    // Then its queue overflows and it is closed as a slow consumer.
    create(&hub, &group, 17).await;
    assert_eq!(channel.close_reason(), Some(CloseReason::SlowConsumer));
    let start = tokio::time::Instant::now();
    create(&hub, &group, 18).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "a closed channel holds nobody up");
}

#[tokio::test(start_paused = true)]
async fn without_backpressure_a_publish_never_waits() {
    let (hub, _channel, _rx, group) = lagging_setup(None).await;
    let start = tokio::time::Instant::now();
    for pk in 1..=16 {
        create(&hub, &group, pk).await;
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(hub.stats().backpressure_waits, 0);
}

/// A layer that records listen / unlisten in the order it is told, and
/// whose `ready` waits for the test (or fails, when told to).
struct Recording {
    told: Mutex<Vec<String>>,
    open: tokio::sync::Semaphore,
    fail: AtomicBool,
}

#[async_trait::async_trait]
impl ChannelLayer for Arc<Recording> {
    fn start(&self, _inbound: crate::layer::Inbound) {}

    async fn publish(&self, _group: &str, _message: Bytes) -> Result<(), LayerError> {
        Ok(())
    }

    fn listen(&self, group: &str) {
        self.told.lock().unwrap().push(format!("listen {group}"));
    }

    fn unlisten(&self, group: &str) {
        self.told.lock().unwrap().push(format!("unlisten {group}"));
    }

    async fn ready(&self, _group: &str) -> Result<(), LayerError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LayerError::unavailable("not confirmed"));
        }
        self.open.acquire().await.expect("open").forget();
        Ok(())
    }
}

fn recording_hub() -> (Hub, Arc<Recording>) {
    let layer = Arc::new(Recording {
        told: Mutex::default(),
        open: tokio::sync::Semaphore::new(0),
        fail: AtomicBool::new(false),
    });
    let hub = Hub::with_layer(Config::default(), Arc::new(layer.clone()));
    // Every hub listens for revocations from the start; the tests below
    // follow model groups only.
    let told = std::mem::take(&mut *layer.told.lock().unwrap());
    assert_eq!(told, [format!("listen {}", group::REVOKE)]);
    (hub, layer)
}

#[tokio::test]
async fn a_join_is_confirmed_only_once_the_layer_is_ready_for_every_member() {
    let (hub, layer) = recording_hub();
    let group = group::coarse("users", Action::Create);
    let (first, _rx1) = hub.open_channel(None).unwrap();
    let (second, _rx2) = hub.open_channel(None).unwrap();
    for channel in [&first, &second] {
        let add = hub.add_subscription(channel, Subscription::of_users(&group, Action::Create, None));
        tokio::pin!(add);
        assert!(futures_util::poll!(add.as_mut()).is_pending(), "not confirmed before the layer is ready");
        layer.open.add_permits(1);
        assert_eq!(add.await.expect("added"), Added::New);
    }
    assert_eq!(*layer.told.lock().unwrap(), [format!("listen {group}")], "the layer listens once per group");
}

#[tokio::test]
async fn a_dropped_or_failed_join_leaves_nothing_behind() {
    let (hub, layer) = recording_hub();
    let group = group::coarse("users", Action::Create);
    let (channel, _rx) = hub.open_channel(None).unwrap();
    let mut add = Box::pin(hub.add_subscriptions(
        &channel,
        vec![
            Subscription::of_users(&group, Action::Create, None),
            Subscription::of_users(&group::coarse("users", Action::Update), Action::Update, None),
        ],
    ));
    assert!(futures_util::poll!(add.as_mut()).is_pending());
    assert_eq!(hub.group_count(), 2, "joined while waiting for the layer");
    drop(add);
    assert_eq!((hub.group_count(), channel.subscription_count()), (0, 0), "a dropped join is undone");

    layer.fail.store(true, Ordering::SeqCst);
    let refused = hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await;
    let refused = refused.expect_err("refused");
    assert!(matches!(refused, ChannelError::Layer(LayerError::Unavailable { .. })), "{refused:?}");
    assert_eq!(refused.to_string(), "channel layer unavailable: not confirmed");
    assert_eq!((hub.group_count(), channel.subscription_count()), (0, 0), "a refused join is undone");
    let told = layer.told.lock().unwrap().clone();
    assert_eq!(
        told,
        [
            "listen users-create",
            "listen users-update",
            "unlisten users-create",
            "unlisten users-update",
            "listen users-create",
            "unlisten users-create"
        ]
    );
}

#[tokio::test]
async fn the_layer_hears_leaves_and_joins_in_membership_order() {
    let (hub, layer) = recording_hub();
    layer.open.add_permits(1000);
    let group = group::coarse("users", Action::Create);
    for _ in 0..3 {
        // A channel closed synchronously (as a dropped native stream
        // does), then a new member at once: the layer is told in that order.
        let (old, _rx) = hub.open_channel(None).unwrap();
        hub.add_subscription(&old, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
        hub.close_channel(&old);
        let (new, _rx) = hub.open_channel(None).unwrap();
        hub.add_subscription(&new, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
        hub.remove_subscription(&new, &Subscription::of_users(&group, Action::Create, None).key).unwrap();
    }
    let told = layer.told.lock().unwrap().clone();
    let expected: Vec<String> = ["listen", "unlisten", "listen", "unlisten"]
        .iter()
        .cycle()
        .take(12)
        .map(|verb| format!("{verb} {group}"))
        .collect();
    assert_eq!(told, expected);
}

#[tokio::test]
async fn full_queue_closes_the_channel() {
    let hub = Hub::new(Config { queue_capacity: 1, ..Config::default() });
    let client: ClientKey = Arc::from("a:192.0.2.9");
    let (slow, _slow_rx) = hub.open_channel_for(None, Some(client.clone())).unwrap();
    let (fast, mut fast_rx) = hub.open_channel(None).unwrap();
    let group = group::coarse("users", Action::Create);
    hub.add_subscription(&slow, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    hub.add_subscription(&fast, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    let change = Change::user_created(1, None);
    for _ in 0..2 {
        hub.publish(std::slice::from_ref(&group), change.encode()).await;
        assert!(fast_rx.try_recv().is_ok());
    }
    assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
    assert!(slow.is_closed());
    assert_eq!(fast.close_reason(), None);
    // The slow channel left its groups and its client's count at once, with
    // nobody reading it (an SSE response whose client stopped reading).
    assert_eq!(hub.channel_count(), 1);
    assert_eq!(hub.group_size(&group), 1);
    assert_eq!(slow.subscription_count(), 0);
    assert_eq!(hub.inner.clients.held(&client, Resource::Channels), 0);
    assert_eq!(hub.inner.clients.held(&client, Resource::Subscriptions), 0);
    // Its socket's own close later is harmless.
    hub.close_channel(&slow);
    assert_eq!(hub.channel_count(), 1);
}

#[tokio::test]
async fn per_client_caps_count_channels_and_subscriptions_and_give_them_back() {
    let config = Config::default().with_max_channels_per_client(2).with_max_subscriptions_per_client(3);
    let hub = Hub::new(config);
    let mallory: ClientKey = Arc::from("a:192.0.2.1");
    let alice: ClientKey = Arc::from("p:alice");
    let (first, _rx1) = hub.open_channel_for(None, Some(mallory.clone())).unwrap();
    let (second, _rx2) = hub.open_channel_for(None, Some(mallory.clone())).unwrap();
    let refused = hub.open_channel_for(None, Some(mallory.clone())).unwrap_err();
    assert_eq!(refused.to_string(), "too many open channels for this client (limit 2 per process)");
    assert_eq!(hub.channel_count(), 2, "the refused channel is not kept");
    // Another client, and uncounted channels, are not affected.
    let (_alice, _rx3) = hub.open_channel_for(Some("alice".into()), Some(alice.clone())).unwrap();
    let (_uncounted, _rx4) = hub.open_channel(None).unwrap();
    assert_eq!(hub.stats().client_limits, 1);

    // Subscriptions count over all of a client's channels, all or none.
    let subscription = |action: Action| Subscription::of_users(&group::coarse("users", action), action, None);
    hub.add_subscriptions(&first, vec![subscription(Action::Create), subscription(Action::Update)]).await.unwrap();
    let refused =
        hub.add_subscriptions(&second, vec![subscription(Action::Create), subscription(Action::Delete)]).await;
    assert!(matches!(refused, Err(ChannelError::ClientLimit { what: "subscriptions", limit: 3 })), "{refused:?}");
    assert_eq!(second.subscription_count(), 0, "nothing of the refused call is kept");
    hub.add_subscription(&second, subscription(Action::Delete)).await.unwrap();
    assert_eq!(hub.inner.clients.held(&mallory, Resource::Subscriptions), 3);
    hub.remove_subscription(&first, &subscription(Action::Update).key).unwrap();
    assert_eq!(hub.inner.clients.held(&mallory, Resource::Subscriptions), 2);

    // Closing gives back the channel and its subscriptions; twice is harmless.
    hub.close_channel(&first);
    hub.close_channel(&first);
    assert_eq!(hub.inner.clients.held(&mallory, Resource::Channels), 1);
    assert_eq!(hub.inner.clients.held(&mallory, Resource::Subscriptions), 1);
    hub.open_channel_for(None, Some(mallory.clone())).unwrap();
    hub.close_channel(&second);
    assert_eq!(hub.inner.clients.held(&mallory, Resource::Subscriptions), 0);
    assert_eq!(hub.inner.clients.len(), 2, "a client holding nothing has no entry");
}

#[tokio::test]
async fn a_refused_confirmation_gives_the_subscriptions_back() {
    let hub = Hub::with_layer(Config::default().with_max_subscriptions_per_client(1), Arc::new(Unready));
    let client: ClientKey = Arc::from("a:192.0.2.2");
    let (channel, _rx) = hub.open_channel_for(None, Some(client.clone())).unwrap();
    let subscription = Subscription::of_users(&group::coarse("users", Action::Create), Action::Create, None);
    assert!(hub.add_subscription(&channel, subscription).await.is_err());
    assert_eq!(hub.inner.clients.held(&client, Resource::Subscriptions), 0);
}

/// A layer that never confirms a group.
struct Unready;

#[async_trait::async_trait]
impl ChannelLayer for Unready {
    fn start(&self, _: crate::layer::Inbound) {}
    async fn publish(&self, _: &str, _: Bytes) -> Result<(), LayerError> {
        Ok(())
    }
    fn listen(&self, _: &str) {}
    fn unlisten(&self, _: &str) {}
    async fn ready(&self, group: &str) -> Result<(), LayerError> {
        Err(LayerError::unavailable(format!("`{group}` not ready")))
    }
}

#[tokio::test]
async fn the_previous_message_version_is_delivered_a_newer_one_is_counted_not_delivered() {
    let hub = Hub::default();
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    let group = group::coarse("users", Action::Create);
    hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    // Version 1, as the release before issue 15 wrote it: no `v`, no nonce.
    let v1 = br#"{"stream":"users","model":"user","action":"create","pk":7,"pk_field":"id"}"#;
    hub.publish(std::slice::from_ref(&group), Bytes::from_static(v1)).await;
    let delivery = rx.try_recv().expect("a version-1 change is delivered");
    assert_eq!(delivery.event().unwrap().change.pk, serde_json::json!(7));
    assert_eq!(delivery.event().unwrap().change.version, 1);
    // This release writes its own version.
    let current = Change::user_created(8, None).encode();
    assert!(std::str::from_utf8(&current).unwrap().starts_with(&format!(r#"{{"v":{}"#, Change::VERSION)));
    hub.publish(std::slice::from_ref(&group), current).await;
    assert_eq!(rx.try_recv().expect("a current change is delivered").event().unwrap().change.pk, serde_json::json!(8));
    // A newer release's message (and a nonsense version) is not guessed at.
    for version in [Change::VERSION + 1, 0] {
        let newer = format!(
            r#"{{"v":{version},"stream":"users","model":"user","action":"create","pk":9,"pk_field":"id","extra":true}}"#
        );
        hub.publish(std::slice::from_ref(&group), Bytes::from(newer)).await;
    }
    assert!(rx.try_recv().is_err(), "nothing delivered");
    assert_eq!(hub.stats().unreadable, 2);
    assert_eq!(hub.stats().dropped, 0, "counted apart from malformed messages");
}

#[test]
fn a_queue_slot_holds_one_pointer_and_its_tag() {
    // Every channel allocates a block of 32 queue slots when it opens:
    // at 40 bytes a slot (a group, an event and a time) that block alone
    // made an idle connection cost more than the bench's ceiling
    // (BENCHMARKS.md, "Session 12").
    assert!(std::mem::size_of::<Delivery>() <= 16, "{} bytes", std::mem::size_of::<Delivery>());
}

#[tokio::test]
async fn a_change_sent_to_several_groups_in_memory_is_decoded_once_per_position() {
    let hub = Hub::default();
    let coarse = group::coarse("users", Action::Create);
    let instance = group::instance("users", Action::Create, &serde_json::json!(7));
    let (a, mut rx_a) = hub.open_channel(None).unwrap();
    let (b, mut rx_b) = hub.open_channel(None).unwrap();
    hub.add_subscription(&a, Subscription::of_users(&coarse, Action::Create, None)).await.unwrap();
    hub.add_subscription(&b, Subscription::of_users(&instance, Action::Create, None)).await.unwrap();
    // A version-1 message has no nonce, so only the buffer can tell that
    // the two groups carry one change.
    let message = Bytes::from_static(br#"{"stream":"users","model":"user","action":"create","pk":7,"pk_field":"id"}"#);
    let groups = [coarse.clone(), instance.clone()];
    hub.publish(&groups, message.clone()).await;
    let first = rx_a.try_recv().unwrap().event().unwrap().clone();
    assert!(Arc::ptr_eq(&first, rx_b.try_recv().unwrap().event().unwrap()), "one decode, one event for both groups");
    // The same buffer published again is another change, at another position.
    hub.publish(&groups, message).await;
    let again = rx_a.try_recv().unwrap().event().unwrap().clone();
    assert!(!Arc::ptr_eq(&first, &again));
    assert!(again.position.unwrap().offset > first.position.unwrap().offset);
    assert!(Arc::ptr_eq(&again, rx_b.try_recv().unwrap().event().unwrap()));
}

/// A subscription to user creations on `group` whose filter pins `room`.
fn in_room(group: &str, room: i64) -> Subscription {
    let mut subscription = Subscription::of_users(group, Action::Create, Some(serde_json::json!({ "room": room })));
    subscription.filter = Arc::new(crate::subscribe::filter::Filter::of(vec![crate::subscribe::filter::Clause {
        field: 1,
        name: "room",
        lookup: crate::model::Lookup::Exact,
        value: room.into(),
    }]));
    subscription
}

fn created_in_room(pk: i64, room: i64) -> Change {
    let row = serde_json::Map::from_iter([("id".to_owned(), pk.into()), ("room".to_owned(), room.into())]);
    Change::user_created(pk, Some(row))
}

#[tokio::test]
async fn a_verdict_made_when_queued_is_used_only_on_the_subscriptions_it_was_made_on() {
    let hub = Hub::default();
    let group = group::coarse("users", Action::Create);
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    hub.add_subscription(&channel, in_room(&group, 1)).await.unwrap();
    hub.publish(std::slice::from_ref(&group), created_in_room(1, 1).encode()).await;
    let decided = rx.try_recv().unwrap();
    assert!(matches!(decided, Delivery::Taken(..)), "every subscription on the group takes it: {decided:?}");
    let mut frames = Vec::new();
    channel.frames(&decided, &mut frames).await;
    assert_eq!(frames.len(), 1);
    // Queued as taken by the room-1 subscription; then, before the socket
    // takes it, a subscription on the same group that does not take it
    // (room 2) and one that does (no filter) are added: the verdict made
    // on the old list is not used, each subscription decides.
    hub.publish(std::slice::from_ref(&group), created_in_room(2, 1).encode()).await;
    let queued = rx.try_recv().unwrap();
    assert!(matches!(queued, Delivery::Taken(..)));
    hub.add_subscription(&channel, in_room(&group, 2)).await.unwrap();
    hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    frames.clear();
    channel.frames(&queued, &mut frames).await;
    assert_eq!(frames.len(), 2, "room 1 and the unfiltered one, not room 2");
    // A subscription that does not take a change makes the socket decide.
    hub.publish(std::slice::from_ref(&group), created_in_room(3, 2).encode()).await;
    let mixed = rx.try_recv().unwrap();
    assert!(matches!(mixed, Delivery::Change(..)), "room 1 does not take it: {mixed:?}");
    frames.clear();
    channel.frames(&mixed, &mut frames).await;
    assert_eq!(frames.len(), 2, "room 2 and the unfiltered one");
}

#[tokio::test]
async fn a_subscription_holds_its_group_s_shared_name() {
    let hub = Hub::default();
    let group = group::coarse("users", Action::Create);
    let (a, _rx_a) = hub.open_channel(None).unwrap();
    let (b, mut rx_b) = hub.open_channel(None).unwrap();
    hub.add_subscription(&a, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    hub.add_subscription(&b, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    hub.add_subscription(&b, in_room(&group, 1)).await.unwrap();
    let names: Vec<Arc<str>> = [&a, &b]
        .iter()
        .flat_map(|channel| {
            channel.inspect_subscriptions(|list| list.iter().map(|s| s.group.clone()).collect::<Vec<_>>())
        })
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|name| Arc::ptr_eq(name, &names[0])), "one allocation for the group's name");
    hub.publish(std::slice::from_ref(&group), created_in_room(1, 1).encode()).await;
    let Delivery::Taken(dispatched, _) = rx_b.try_recv().unwrap() else { panic!("not decided when queued") };
    assert!(Arc::ptr_eq(&dispatched.group, &names[0]), "what is dispatched carries the same name");
}

#[tokio::test]
async fn a_change_published_in_memory_is_not_decoded_again() {
    let hub = Hub::default();
    let group = group::coarse("users", Action::Create);
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await.unwrap();
    let change = created_in_room(1, 1);
    // The message is what the layer carries; the change handed along with
    // it is what this process dispatches. (Here they differ on purpose,
    // to see which one the dispatch used: they never do otherwise.)
    let mut handed = change.clone();
    handed.pk = 99.into();
    hub.publish_change(std::slice::from_ref(&group), change.encode(), Some(handed.into())).await;
    let delivery = rx.try_recv().unwrap();
    assert_eq!(delivery.event().unwrap().change.pk, serde_json::json!(99), "the handed change, not a decode");
    // Without one, the message is decoded.
    hub.publish_change(std::slice::from_ref(&group), change.encode(), None).await;
    assert_eq!(rx.try_recv().unwrap().event().unwrap().change.pk, serde_json::json!(1));
}

#[tokio::test]
async fn a_filter_implied_by_its_group_still_tells_a_string_from_what_prints_the_same() {
    // In a group name `"5"` and `5` (and `"null"` and `null`) print alike:
    // a change of either reaches the group, and only the one of the
    // clause's kind matches it.
    let hub = Hub::default();
    let (channel, mut rx) = hub.open_channel(None).unwrap();
    let subscribe = async |value: serde_json::Value, key: i64| {
        let group = group::indexed("users", Action::Create, &[("room", &value)]);
        // (`key`: the two subscriptions' arguments differ, as two subscribes' would.)
        let mut subscription = in_room(&group, key);
        subscription.filter = Arc::new(crate::subscribe::filter::Filter::of(vec![crate::subscribe::filter::Clause {
            field: 1,
            name: "room",
            lookup: crate::model::Lookup::Exact,
            value: value.clone(),
        }]));
        subscription.implied = Some(crate::hub::Implied { field: 1, name: "room", string: value.is_string() });
        assert_eq!(hub.add_subscription(&channel, subscription).await.unwrap(), Added::New);
        group
    };
    let number = subscribe(serde_json::json!(5), 1).await;
    let text = subscribe(serde_json::json!("null"), 2).await;
    let mut send = async |group: &str, pk: i64, value: serde_json::Value| {
        let row = serde_json::Map::from_iter([("id".to_owned(), pk.into()), ("room".to_owned(), value)]);
        hub.publish(&[group.to_owned()], Change::user_created(pk, Some(row)).encode()).await;
        let mut frames = Vec::new();
        while let Ok(delivery) = rx.try_recv() {
            channel.frames(&delivery, &mut frames).await;
        }
        frames.len()
    };
    assert_eq!(send(&number, 1, serde_json::json!(5)).await, 1);
    assert_eq!(send(&number, 2, serde_json::json!("5")).await, 0, "a string five is not room 5");
    assert_eq!(send(&text, 3, serde_json::json!("null")).await, 1);
    assert_eq!(send(&text, 4, serde_json::Value::Null).await, 0, "no room is not the room named null");
    assert_eq!(group::indexed("users", Action::Create, &[("room", &serde_json::json!("5"))]), number);
}

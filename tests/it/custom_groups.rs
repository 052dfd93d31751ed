//! Custom group subscriptions over `graphql-transport-ws`: groups chosen
//! from arguments, per-subscriber transform and suppression, broadcasts
//! from a mutation, from outside any request, and from another hub (a
//! second "process") through a shared channel layer.

use graphex::__internals::HubInternals;
use std::sync::{Arc, Mutex};

use crate::support::standard::{Client, Proto, Served, serve, wait_for};
use async_graphql::{Context, Object, Schema, SimpleObject, Subscription};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use graphex::layer::{ChannelLayer, Inbound, LayerError};
use graphex::{Config, Hub, RouterBuilder};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// What the room broadcasts carry.
#[derive(SimpleObject, Serialize, Deserialize, Clone, Debug)]
struct Said {
    author: String,
    text: String,
}

struct Query;

#[Object]
impl Query {
    async fn ok(&self) -> bool {
        true
    }
}

struct Mutation;

#[Object]
impl Mutation {
    /// Broadcasts to the room's group from inside a request.
    async fn say(&self, ctx: &Context<'_>, room: String, author: String, text: String) -> async_graphql::Result<bool> {
        ctx.data::<Hub>()?.broadcast(&format!("room.{room}"), Said { author, text }).await?;
        Ok(true)
    }
}

struct Rooms;

#[Subscription]
impl Rooms {
    /// The rooms named by the argument; `muted` authors are suppressed and
    /// `shout` upper-cases the text, for this subscriber only.
    async fn rooms(
        &self,
        ctx: &Context<'_>,
        names: Vec<String>,
        muted: Option<String>,
        #[graphql(default)] shout: bool,
    ) -> async_graphql::Result<impl Stream<Item = Said>> {
        let groups = names.iter().map(|name| format!("room.{name}"));
        let stream = graphex::subscribe_groups::<Said, _, _>(ctx, groups).await?;
        Ok(stream.filter_map(move |mut said| {
            let keep = muted.as_deref() != Some(said.author.as_str());
            if shout {
                said.text = said.text.to_uppercase();
            }
            std::future::ready(keep.then_some(said))
        }))
    }
}

/// A channel layer shared by several hubs, standing in for Redis between
/// processes: every publish reaches every hub that started on it.
#[derive(Default)]
struct Bus {
    hubs: Mutex<Vec<Inbound>>,
}

struct BusLayer(Arc<Bus>);

#[async_trait::async_trait]
impl ChannelLayer for BusLayer {
    fn start(&self, inbound: Inbound) {
        self.0.hubs.lock().unwrap().push(inbound);
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        let hubs = self.0.hubs.lock().unwrap().clone();
        for inbound in hubs {
            inbound.deliver(group, message.clone());
        }
        Ok(())
    }

    fn listen(&self, _group: &str) {}

    fn unlisten(&self, _group: &str) {}
}

async fn start(hub: Hub) -> Served {
    let schema = Schema::build(Query, Mutation, Rooms).finish();
    serve(RouterBuilder::new(schema, hub).build()).await
}

async fn say(client: &mut Client, id: &str, room: &str, author: &str, text: &str) -> Vec<serde_json::Value> {
    let mutation = format!(r#"mutation {{ say(room: "{room}", author: "{author}", text: "{text}") }}"#);
    let (data, others) = client.execute(id, &mutation).await;
    assert_eq!(data, json!({"say": true}));
    others
}

/// The next `rooms` event of operation `id`, taking it from `seen` first.
async fn next_said(client: &mut Client, seen: &mut Vec<serde_json::Value>, id: &str) -> serde_json::Value {
    let message = if seen.is_empty() { client.json().await } else { seen.remove(0) };
    assert_eq!(message["type"], "next", "{message}");
    assert_eq!(message["id"], id, "{message}");
    message["payload"]["data"]["rooms"].clone()
}

#[tokio::test]
async fn groups_by_argument_with_per_subscriber_suppression_and_transform() {
    let hub = Hub::default();
    let server = start(hub.clone()).await;
    let mut a = Client::connected(server.addr, Proto::Transport, json!({})).await;
    let mut b = Client::connected(server.addr, Proto::Transport, json!({})).await;
    a.start("a", r#"subscription { rooms(names: ["lobby"], muted: "mallory") { author text } }"#).await;
    b.start("b", r#"subscription { rooms(names: ["lobby", "den"], shout: true) { author text } }"#).await;
    wait_for("two rooms", || hub.group_count() == 2).await;

    let mut seen = say(&mut a, "m1", "lobby", "mallory", "psst").await;
    say(&mut a, "m2", "den", "bob", "den only").await.into_iter().for_each(|message| seen.push(message));
    say(&mut a, "m3", "lobby", "alice", "hello").await.into_iter().for_each(|message| seen.push(message));
    // `a` muted mallory and is not in the den: alice's line is its first event.
    assert_eq!(next_said(&mut a, &mut seen, "a").await, json!({"author": "alice", "text": "hello"}));

    let mut none = Vec::new();
    assert_eq!(next_said(&mut b, &mut none, "b").await, json!({"author": "mallory", "text": "PSST"}));
    assert_eq!(next_said(&mut b, &mut none, "b").await, json!({"author": "bob", "text": "DEN ONLY"}));
    assert_eq!(next_said(&mut b, &mut none, "b").await, json!({"author": "alice", "text": "HELLO"}));

    // Outside any request (a background task holding the hub).
    let background = hub.clone();
    tokio::spawn(
        async move { background.broadcast("room.den", Said { author: "cron".into(), text: "tick".into() }).await },
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(next_said(&mut b, &mut none, "b").await, json!({"author": "cron", "text": "TICK"}));

    // Completing frees the groups.
    a.stop("a").await;
    b.stop("b").await;
    wait_for("no groups", || hub.group_count() == 0).await;
}

#[tokio::test]
async fn a_broadcast_from_another_hub_travels_through_the_layer() {
    let bus = Arc::new(Bus::default());
    let serving = Hub::with_layer(Config::default(), Arc::new(BusLayer(bus.clone())));
    let elsewhere = Hub::with_layer(Config::default(), Arc::new(BusLayer(bus)));
    let server = start(serving.clone()).await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("r", r#"subscription { rooms(names: ["ops"]) { author text } }"#).await;
    wait_for("the ops room", || serving.group_count() == 1).await;
    elsewhere.broadcast("room.ops", json!({"author": "worker", "text": "done"})).await.unwrap();
    let mut none = Vec::new();
    assert_eq!(next_said(&mut client, &mut none, "r").await, json!({"author": "worker", "text": "done"}));
    // A payload of another shape is skipped, and a model group of the same
    // text is another namespace: neither reaches the room.
    elsewhere.broadcast("room.ops", json!("not a Said")).await.unwrap();
    elsewhere.publish(&["room.ops".to_owned()], Bytes::from_static(b"{}")).await;
    elsewhere.broadcast("room.ops", json!({"author": "worker", "text": "again"})).await.unwrap();
    assert_eq!(next_said(&mut client, &mut none, "r").await, json!({"author": "worker", "text": "again"}));
}

#[tokio::test]
async fn invalid_group_names_are_refused() {
    let hub = Hub::default();
    let server = start(hub.clone()).await;
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("x", r#"subscription { rooms(names: ["a\nb"]) { text } }"#).await;
    let errors = client.expect_failure("x").await;
    assert!(errors[0]["message"].as_str().unwrap().starts_with("invalid custom group name"), "{errors}");
    assert_eq!(hub.group_count(), 0);
    assert!(hub.broadcast("", 1).await.is_err());
}

//! Custom group subscriptions: events that are not model changes.
//!
//! A subscription resolver decides from its arguments which custom groups
//! its subscriber joins ([`subscribe_groups`]); anything that holds the
//! [`Hub`] sends a payload to a group with [`Hub::broadcast`] (a mutation, a
//! background task, or another process through a cross-process layer). The
//! payload travels through the same [`crate::layer::ChannelLayer`] as model
//! changes, in a namespace of its own: custom group names start with `@`,
//! which no stream name may contain, so they never meet a model group. The
//! layer message says what it is (`{"kind": "custom", "payload": ...}`).
//!
//! Per-subscriber transform or suppression is the resolver's own
//! `filter_map` over the stream, which sees the subscriber's arguments and
//! principal:
//!
//! ```ignore
//! async fn on_message(&self, ctx: &Context<'_>, room: String) -> Result<impl Stream<Item = Message>> {
//!     let me = ctx.data::<Principal>()?.id.clone();
//!     let stream = graphex::subscribe_groups::<Message>(ctx, [format!("chat.{room}")]).await?;
//!     Ok(stream.filter(move |message| std::future::ready(message.author != me)))
//! }
//! ```

use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::change::group::{self, MAX_CUSTOM_NAME_LEN};
use crate::hub::{Counters, Hub, Membership};
use crate::layer::LayerError;

/// The layer group of the custom group `name`.
fn custom_group(name: &str) -> Result<String, BroadcastError> {
    group::custom(name).ok_or_else(|| BroadcastError::InvalidGroup(name.chars().take(MAX_CUSTOM_NAME_LEN).collect()))
}

/// Why a broadcast or a custom group subscription failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BroadcastError {
    /// Names are 1 to 200 bytes without control characters.
    #[error("invalid custom group name `{0}`")]
    InvalidGroup(String),
    /// The payload could not be serialized.
    #[error("payload could not be serialized: {0}")]
    Payload(#[source] serde_json::Error),
    /// Too many groups for one subscriber.
    #[error("too many groups for one subscription (limit {0})")]
    TooManyGroups(usize),
    /// The schema was built without a [`Hub`].
    #[error("subscriptions are not enabled on this server")]
    NoHub,
    /// The channel layer refused.
    #[error("channel layer: {0}")]
    Layer(#[source] LayerError),
}

/// The layer message of a custom payload.
#[derive(Serialize, Deserialize)]
struct CustomMessage {
    kind: Kind,
    payload: Json,
}

#[derive(Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Custom,
}

impl CustomMessage {
    fn encode(payload: Json) -> Bytes {
        Bytes::from(serde_json::to_vec(&CustomMessage { kind: Kind::Custom, payload }).expect("plain JSON"))
    }
}

struct Member {
    tx: mpsc::Sender<Arc<Json>>,
    overflowed: CancellationToken,
}

/// The local members of custom groups (one per hub).
#[derive(Default)]
pub(crate) struct Registry {
    groups: Membership<Member>,
    next: AtomicU64,
}

impl Registry {
    pub(crate) fn group_count(&self) -> usize {
        self.groups.group_count()
    }

    /// Queues a layer message to the local members of a custom group.
    pub(crate) fn dispatch(&self, group: &str, message: &[u8], stats: &Counters) {
        let groups = self.groups.members();
        let Some(members) = groups.get(group) else { return };
        stats.received.fetch_add(1, Ordering::Relaxed);
        let payload = match serde_json::from_slice::<CustomMessage>(message) {
            Ok(message) => Arc::new(message.payload),
            Err(error) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%group, %error, "undecodable custom message dropped");
                return;
            }
        };
        let mut delivered = 0;
        for member in members.values() {
            match member.tx.try_send(payload.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    stats.overflowed.fetch_add(1, Ordering::Relaxed);
                    if !member.overflowed.is_cancelled() {
                        stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%group, "custom group subscriber's queue full: ending its stream");
                    }
                    member.overflowed.cancel();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        stats.delivered.fetch_add(delivered, Ordering::Relaxed);
    }
}

impl Hub {
    /// Sends `payload` to every subscriber of the custom group `name`, in
    /// every process the channel layer reaches.
    #[tracing::instrument(skip(self, payload))]
    pub async fn broadcast(&self, name: &str, payload: impl Serialize) -> Result<(), BroadcastError> {
        let group = custom_group(name)?;
        let payload = serde_json::to_value(payload).map_err(BroadcastError::Payload)?;
        self.counters().published.fetch_add(1, Ordering::Relaxed);
        self.layer().publish(&group, CustomMessage::encode(payload)).await.map_err(|error| {
            self.counters().dropped.fetch_add(1, Ordering::Relaxed);
            self.counters().publish_failures.fetch_add(1, Ordering::Relaxed);
            BroadcastError::Layer(error)
        })
    }

    /// Joins the custom groups `names` and returns the stream of their
    /// payloads; dropping it leaves the groups.
    pub async fn join_groups<I, N>(&self, names: I) -> Result<GroupReceiver, BroadcastError>
    where
        I: IntoIterator<Item = N>,
        N: AsRef<str>,
    {
        let mut groups = Vec::new();
        for name in names {
            let group = custom_group(name.as_ref())?;
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        let limit = self.config().max_subscriptions_per_channel;
        if groups.len() > limit {
            return Err(BroadcastError::TooManyGroups(limit));
        }
        let (tx, rx) = mpsc::channel(self.config().queue_capacity.max(1));
        let overflowed = CancellationToken::new();
        let id = self.custom().next.fetch_add(1, Ordering::Relaxed);
        let mut receiver =
            GroupReceiver { hub: self.clone(), id, groups: Vec::new(), rx, overflowed: overflowed.clone() };
        let layer = self.layer().as_ref();
        for group in groups {
            let _ =
                self.custom().groups.join(layer, &group, id, Member { tx: tx.clone(), overflowed: overflowed.clone() });
            receiver.groups.push(group);
        }
        // Confirmed only once this process receives every group; on an
        // error (or a dropped future) the receiver's drop leaves them again.
        futures_util::future::try_join_all(receiver.groups.iter().map(|group| layer.ready(group)))
            .await
            .map_err(BroadcastError::Layer)?;
        Ok(receiver)
    }
}

/// The payloads of the custom groups one subscriber joined. Ends when the
/// subscriber falls [`crate::Config::queue_capacity`] payloads behind.
pub struct GroupReceiver {
    hub: Hub,
    id: u64,
    groups: Vec<String>,
    rx: mpsc::Receiver<Arc<Json>>,
    overflowed: CancellationToken,
}

impl std::fmt::Debug for GroupReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupReceiver").field("groups", &self.groups).finish_non_exhaustive()
    }
}

impl Stream for GroupReceiver {
    type Item = Arc<Json>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.overflowed.is_cancelled() {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx)
    }
}

impl Drop for GroupReceiver {
    fn drop(&mut self) {
        // Synchronous, like a channel's close: no unlisten can overtake a later join.
        let layer = self.hub.layer().as_ref();
        for group in std::mem::take(&mut self.groups) {
            self.hub.custom().groups.leave(layer, &group, self.id);
        }
    }
}

/// Typed payloads of custom groups: those that do not deserialize as `T`
/// are skipped (and logged).
pub struct GroupStream<T> {
    receiver: GroupReceiver,
    _payload: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for GroupStream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.receiver.fmt(f)
    }
}

impl<T: DeserializeOwned> Stream for GroupStream<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<T>> {
        loop {
            match Pin::new(&mut self.receiver).poll_next(cx) {
                Poll::Ready(Some(payload)) => match T::deserialize(&*payload) {
                    Ok(value) => return Poll::Ready(Some(value)),
                    Err(error) => tracing::warn!(%error, "custom payload of another shape skipped"),
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Joins the custom groups `names` for the subscriber of this resolver
/// (the [`Hub`] comes from the request or connection data the graphex
/// router sets) and returns their payloads as `T`.
pub async fn subscribe_groups<T, I, N>(
    ctx: &async_graphql::Context<'_>,
    names: I,
) -> Result<GroupStream<T>, BroadcastError>
where
    T: DeserializeOwned,
    I: IntoIterator<Item = N>,
    N: AsRef<str>,
{
    let hub = ctx.data_opt::<Hub>().ok_or(BroadcastError::NoHub)?;
    let receiver = hub.join_groups(names).await?;
    Ok(GroupStream { receiver, _payload: PhantomData })
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::Config;

    #[test]
    fn custom_groups_never_meet_model_groups() {
        assert_eq!(custom_group("chat.1").unwrap(), "@chat.1");
        assert!(group::is_custom("@users-create"));
        assert!(!group::is_custom(&crate::change::group::coarse("users", crate::Action::Create)));
        assert!(custom_group("").is_err());
        assert!(custom_group(&"x".repeat(MAX_CUSTOM_NAME_LEN + 1)).is_err());
        assert!(custom_group("a\nb").is_err());
    }

    #[tokio::test]
    async fn broadcast_reaches_members_and_leaving_frees_the_group() {
        let hub = Hub::default();
        let mut a = hub.join_groups(["room.1", "room.2"]).await.unwrap();
        let mut b = hub.join_groups(["room.2"]).await.unwrap();
        assert_eq!(hub.group_count(), 2);
        hub.broadcast("room.2", json!({"text": "hi"})).await.unwrap();
        hub.broadcast("room.3", json!("nobody")).await.unwrap();
        assert_eq!(*a.next().await.unwrap(), json!({"text": "hi"}));
        assert_eq!(*b.next().await.unwrap(), json!({"text": "hi"}));
        hub.broadcast("room.1", 7).await.unwrap();
        assert_eq!(*a.next().await.unwrap(), json!(7));
        assert!(b.rx.try_recv().is_err(), "b is not in room.1");
        drop(a);
        assert_eq!(hub.group_count(), 1);
        drop(b);
        assert_eq!(hub.group_count(), 0);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_ended() {
        let hub = Hub::new(Config { queue_capacity: 2, ..Config::default() });
        let mut slow = hub.join_groups(["g"]).await.unwrap();
        for n in 0..3 {
            hub.broadcast("g", n).await.unwrap();
        }
        assert!(slow.next().await.is_none());
        assert_eq!(hub.stats().slow_consumers, 1);
    }

    #[tokio::test]
    async fn typed_streams_skip_other_shapes() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Ping {
            n: i32,
        }
        let hub = Hub::default();
        let receiver = hub.join_groups(["g"]).await.unwrap();
        let mut typed = GroupStream::<Ping> { receiver, _payload: PhantomData };
        hub.broadcast("g", json!("not a ping")).await.unwrap();
        hub.broadcast("g", json!({"n": 1})).await.unwrap();
        assert_eq!(typed.next().await, Some(Ping { n: 1 }));
    }
}

//! Native GraphQL subscriptions: the `<name>Changes` field of every model
//! streams one [`ModelChange`] per change over the standard protocols
//! (`graphql-transport-ws`, legacy `graphql-ws`) or HTTP streaming.
//!
//! Same rules as the two-channel path (authorization, scope, filters,
//! projection, id-only row checks, groups): both go through
//! `subscribe::build_subscriptions`. Each native operation opens its own hub channel,
//! owned by the connection's principal; dropping the stream (client
//! `complete`, disconnect) forgets the channel and leaves its groups at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use async_graphql::{Context, ErrorExtensions, ID};
use futures_util::Stream;
use futures_util::stream::BoxStream;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;

use crate::change::codec::Event;
use crate::hub::{Channel, ChannelError, CloseReason, Delivery, Hub, Subscription, UndrainedStream};
use crate::model::Principal;
use crate::model::{Action, ActionSubscription, ModelSubscription};
use crate::subscribe::resume::{ResumeError, add_resumed, parse_after};
use crate::subscribe::shared;
use crate::subscribe::two_channel::shared_projection;
use crate::subscribe::{SubscribeError, build_subscriptions, canonical_id};

/// `extensions.code` of a subscription that cannot resume after its
/// cursor, or whose stream lost changes history could not repair.
pub(crate) const CURSOR_EXPIRED: &str = "CURSOR_EXPIRED";

/// One change of a model row, as a native subscription event.
#[derive(async_graphql::SimpleObject, Clone, Debug, PartialEq)]
#[graphql(name = "ModelChange")]
pub struct ModelChange {
    /// What happened.
    pub action: Action,
    /// The model label (e.g. `user`).
    pub model: String,
    /// The model's stream (e.g. `users`).
    pub stream: String,
    /// The row's primary key.
    pub id: async_graphql::Json<Json>,
    /// The row, projected to the `data` argument (full-payload mode); null
    /// in id-only mode.
    pub data: Option<async_graphql::Json<Json>>,
    /// Where this change sits in its stream: pass it as `after` to resume
    /// after it (opaque; empty for a change without a position, from a
    /// layer that keeps none or a release before positions).
    pub cursor: String,
}

impl ModelChange {
    fn of(subscription: &Subscription, event: &Event) -> ModelChange {
        let change = &event.change;
        let data = change.values.as_ref().map(|values| match &subscription.key.projection {
            None => Json::Object(values.clone()),
            Some(fields) => Json::Object(
                fields
                    .iter()
                    .filter_map(|field| values.get(*field).map(|value| ((*field).to_owned(), value.clone())))
                    .collect::<Map<String, Json>>(),
            ),
        });
        ModelChange {
            action: change.action,
            model: change.model.to_string(),
            stream: change.stream.to_string(),
            id: async_graphql::Json(change.pk.clone()),
            data: data.map(async_graphql::Json),
            cursor: event.position.map(crate::subscribe::resume::cursor).unwrap_or_default(),
        }
    }
}

/// The arguments of a `<name>Changes` field.
#[derive(Clone, Debug)]
pub struct ChangesArgs {
    /// Which actions.
    pub action: ActionSubscription,
    /// Only this primary key.
    pub id: Option<ID>,
    /// Client filters.
    pub filters: Option<Json>,
    /// Requested fields (full-payload mode only), each once, in the order
    /// of its first occurrence.
    pub projection: Option<Arc<[&'static str]>>,
    /// Resume after this cursor.
    pub after: Option<String>,
    /// The field returns the stream as is ([`ChangesArgs::shareable`]).
    pub shareable: bool,
}

impl ChangesArgs {
    /// Collects the arguments (called by generated code).
    pub fn new(
        action: ActionSubscription,
        id: Option<ID>,
        filters: Option<async_graphql::Json<Json>>,
        projection: Option<Vec<&'static str>>,
    ) -> Self {
        let projection = projection.map(shared_projection);
        ChangesArgs { action, id, filters: filters.map(|json| json.0), projection, after: None, shareable: false }
    }

    /// The cursor to resume after.
    pub fn after(mut self, after: Option<String>) -> Self {
        self.after = after;
        self
    }

    /// The field returns [`changes`]' stream as is, with nothing per
    /// request shaping its items, so subscribers whose operation and
    /// subscriptions are equal may share one execution
    /// ([`crate::Config::share_executions`]). The generated `<name>Changes`
    /// fields call this; a field of your own that maps the stream with
    /// request data must not.
    pub fn shareable(mut self) -> Self {
        self.shareable = true;
        self
    }
}

impl SubscribeError {
    /// A stable code for clients (`extensions.code` of the GraphQL error).
    pub fn code(&self) -> &'static str {
        match self {
            SubscribeError::NoHub | SubscribeError::NoDatabase => "INTERNAL_SERVER_ERROR",
            SubscribeError::Channel(
                ChannelError::TooManySubscriptions(_)
                | ChannelError::TooManyChannels
                | ChannelError::ClientLimit { .. },
            ) => "LIMIT_REACHED",
            SubscribeError::Channel(_) => "CHANNEL_ERROR",
            SubscribeError::Denied(_) => "FORBIDDEN",
            SubscribeError::Filter(_) => "BAD_FILTER",
            SubscribeError::InvalidId(_) | SubscribeError::Resume(ResumeError::Malformed) => "BAD_USER_INPUT",
            SubscribeError::Resume(_) => CURSOR_EXPIRED,
        }
    }
}

/// The GraphQL error a refused native subscription answers with, its
/// [`SubscribeError::code`] in `extensions.code`.
impl ErrorExtensions for SubscribeError {
    fn extend(&self) -> async_graphql::Error {
        let code = self.code();
        async_graphql::Error::new(self.to_string()).extend_with(|_, extensions| extensions.set("code", code))
    }
}

/// Runs a `<name>Changes` subscription for model `M` (called by generated code).
#[tracing::instrument(
    name = "subscribe",
    skip_all,
    fields(
        stream = M::STREAM,
        action = ?args.action,
        resume = args.after.is_some(),
        principal = ctx.data_opt::<Principal>().map(|principal| principal.id.as_str()),
    )
)]
pub async fn changes<M: ModelSubscription>(
    ctx: &Context<'_>,
    args: ChangesArgs,
) -> async_graphql::Result<ChangeStream> {
    match open::<M>(ctx, args).await {
        Ok(stream) => {
            tracing::debug!("subscribed");
            Ok(stream)
        }
        Err(error) => {
            tracing::debug!(%error, "refused");
            Err(error.extend())
        }
    }
}

async fn open<M: ModelSubscription>(ctx: &Context<'_>, args: ChangesArgs) -> Result<ChangeStream, SubscribeError> {
    // A shared execution's own run: the stream its first member prepared.
    if let Some(stream) = ctx.data_opt::<shared::Feed>().and_then(shared::Feed::take) {
        return Ok(stream);
    }
    let hub = ctx.data_opt::<Hub>().ok_or(SubscribeError::NoHub)?;
    let id = args.id.as_ref().map(|id| canonical_id::<M>(id)).transpose()?;
    let filters = args.filters.map(Arc::new);
    let after = args.after.as_deref().map(parse_after).transpose()?;
    let subscriptions = build_subscriptions::<M>(ctx, hub, args.action, id, filters, args.projection)?;
    let principal = ctx.data_opt::<Principal>();
    let address = ctx.data_opt::<crate::hub::ClientAddress>().map(|address| address.0);
    let client = crate::hub::client_key(principal, address);
    let owner = principal.map(|principal| principal.id.clone());
    let undrained = ctx.data_opt::<WebSocketConnection>().map(|_| hub.undrained());
    if args.shareable
        && after.is_none()
        && hub.config().share_executions
        && let Some(ticket) = ctx.data_opt::<shared::Ticket>()
        && let Some(sink) = ticket.claim()
    {
        let database = ctx.data_opt::<sea_orm::DatabaseConnection>().map(|db| std::ptr::from_ref(db) as usize);
        let proof = shared::Proof::of(&subscriptions, database);
        let open = async move {
            // Counted against nobody: each member counts for its client.
            let (channel, rx) = hub.open_channel_for(owner, None)?;
            let guard = ChannelGuard { hub: hub.clone(), channel: channel.clone() };
            add_resumed(hub, &guard.channel, subscriptions, None).await?;
            let delivered = Arc::new(AtomicU64::new(0));
            Ok((channel, ChangeStream::new(guard, rx, Some(delivered.clone()), undrained), delivered))
        };
        return shared::join(hub, ticket, sink, proof, client, open).await;
    }
    let (channel, rx) = hub.open_channel_for(owner, client)?;
    let guard = ChannelGuard { hub: hub.clone(), channel };
    add_resumed(hub, &guard.channel, subscriptions, after).await?;
    Ok(ChangeStream::new(guard, rx, None, undrained))
}

/// Connection data of a standard-protocol WebSocket connection: its native
/// streams wait at shutdown instead of ending (see [`ChangeStream`]), since
/// the connection closes with 1001 once they have drained.
pub(crate) struct WebSocketConnection;

/// Forgets the channel and leaves its groups when the stream is dropped.
struct ChannelGuard {
    hub: Hub,
    channel: Arc<Channel>,
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        // Synchronous: the layer hears of the groups this leaves before any
        // later join (no spawned unlisten that a re-subscribe could overtake).
        self.hub.close_channel(&self.channel);
    }
}

/// The events of one native model subscription. Ends with an error item
/// when the subscriber falls [`crate::Config::queue_capacity`] changes
/// behind, or when the server shuts down.
pub struct ChangeStream {
    inner: BoxStream<'static, async_graphql::Result<ModelChange>>,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream").finish_non_exhaustive()
    }
}

struct State {
    guard: ChannelGuard,
    rx: mpsc::Receiver<Delivery>,
    ready: VecDeque<ModelChange>,
    /// The error to yield once `ready` is empty (the channel was closed).
    end: Option<async_graphql::Error>,
    done: bool,
    /// Deliveries taken, for a shared execution's members.
    delivered: Option<Arc<AtomicU64>>,
    /// A WebSocket connection's stream, counted until it has yielded what
    /// its queue held at shutdown.
    undrained: Option<UndrainedStream>,
}

impl State {
    /// Takes one delivery off the queue: its changes join `ready`.
    async fn take(&mut self, channel: &Channel, delivery: &Delivery) {
        if let Some(delivered) = &self.delivered {
            delivered.fetch_add(1, Ordering::Release);
        }
        channel.taken();
        let mut changes = Vec::new();
        channel.select(delivery, ModelChange::of, &mut changes).await;
        self.ready.extend(changes);
    }
}

/// The error item a native stream ends with when the hub closed its channel.
pub(crate) fn closed_error(reason: Option<CloseReason>) -> async_graphql::Error {
    match reason {
        Some(CloseReason::SlowConsumer) => async_graphql::Error::new("slow consumer: outgoing queue full"),
        Some(CloseReason::Disconnected) => async_graphql::Error::new("disconnected by the server"),
        Some(CloseReason::Expired) => async_graphql::Error::new(
            "cursor expired: changes of this stream may have been lost; resume from the last cursor or refetch",
        )
        .extend_with(|_, extensions| extensions.set("code", CURSOR_EXPIRED)),
        Some(CloseReason::TokenExpired) => async_graphql::Error::new("token expired")
            .extend_with(|_, extensions| extensions.set("code", "TOKEN_EXPIRED")),
        Some(CloseReason::Revoked) => {
            async_graphql::Error::new("revoked").extend_with(|_, extensions| extensions.set("code", "REVOKED"))
        }
        _ => async_graphql::Error::new("server shutting down"),
    }
}

impl ChangeStream {
    /// `undrained`: the stream belongs to a WebSocket connection, which
    /// closes with 1001 at shutdown: the stream then yields what its queue
    /// holds and waits, without an error or an end (either would end the
    /// client's subscription for good instead of letting it resume after
    /// reconnecting), counted until then. Otherwise (HTTP streams) it
    /// yields what its queue holds, then the error, then ends.
    fn new(
        guard: ChannelGuard,
        rx: mpsc::Receiver<Delivery>,
        delivered: Option<Arc<AtomicU64>>,
        undrained: Option<UndrainedStream>,
    ) -> ChangeStream {
        let state = State { guard, rx, ready: VecDeque::new(), end: None, done: false, delivered, undrained };
        let inner = futures_util::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(change) = state.ready.pop_front() {
                    return Some((Ok(change), state));
                }
                if state.done {
                    return None;
                }
                if let Some(end) = state.end.take() {
                    state.done = true;
                    return Some((Err(end), state));
                }
                let channel = state.guard.channel.clone();
                tokio::select! {
                    biased;
                    () = channel.closed() => {
                        let reason = channel.close_reason();
                        if reason == Some(CloseReason::Shutdown) {
                            // What was queued before the shutdown goes first.
                            while let Ok(delivery) = state.rx.try_recv() {
                                state.take(&channel, &delivery).await;
                            }
                            if state.undrained.is_some() {
                                // Counted until what it held is yielded:
                                // only then does it wait here for good.
                                if state.ready.is_empty() {
                                    state.undrained = None;
                                    std::future::pending::<()>().await;
                                }
                                continue;
                            }
                        }
                        if let Some(delivered) = &state.delivered {
                            // The end is for every member, however late it joined.
                            delivered.store(u64::MAX, Ordering::Release);
                        }
                        state.end = Some(closed_error(reason));
                    }
                    delivery = state.rx.recv() => {
                        let delivery = delivery?;
                        state.take(&channel, &delivery).await;
                    }
                }
            }
        });
        ChangeStream { inner: Box::pin(inner) }
    }

    /// A stream of items from elsewhere (a shared execution's member).
    pub(crate) fn from_stream(inner: BoxStream<'static, async_graphql::Result<ModelChange>>) -> ChangeStream {
        ChangeStream { inner }
    }
}

impl Stream for ChangeStream {
    type Item = async_graphql::Result<ModelChange>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::Config;
    use crate::change::codec::Change;
    use crate::hub::SubscriptionKey;

    async fn stream(hub: &Hub, projection: Option<Vec<&'static str>>) -> ChangeStream {
        let (channel, rx) = hub.open_channel(Some("neo".into())).unwrap();
        let projection = projection.map(Arc::from);
        let key = SubscriptionKey {
            stream: "users",
            action: Action::Create,
            id: None,
            filters: None,
            projection,
            cursors: false,
        };
        let subscription = Subscription {
            key,
            group: "users-create".into(),
            filter: Arc::default(),
            row: None,
            resume: None,
            implied: None,
        };
        hub.add_subscription(&channel, subscription).await.unwrap();
        ChangeStream::new(ChannelGuard { hub: hub.clone(), channel }, rx, None, None)
    }

    fn change(id: i32) -> bytes::Bytes {
        let values = json!({"id": id, "username": "neo", "email": "neo@example.com"});
        Change::user_created(id.into(), values.as_object().cloned()).encode()
    }

    #[tokio::test]
    async fn deliveries_become_projected_events_and_dropping_frees_the_channel() {
        let hub = Hub::default();
        let mut events = stream(&hub, Some(vec!["username"])).await;
        hub.publish(&["users-create".into()], change(7)).await;
        let event = events.next().await.unwrap().unwrap();
        let position = crate::subscribe::resume::parse_cursor(&event.cursor).expect("a cursor");
        assert_eq!(position.offset, 1, "the stream's first change");
        assert_eq!(
            event,
            ModelChange {
                action: Action::Create,
                model: "user".into(),
                stream: "users".into(),
                id: async_graphql::Json(json!(7)),
                data: Some(async_graphql::Json(json!({"username": "neo"}))),
                cursor: event.cursor.clone(),
            }
        );
        assert_eq!((hub.channel_count(), hub.group_count()), (1, 1));
        drop(events);
        assert_eq!((hub.channel_count(), hub.group_count()), (0, 0), "freed on drop, synchronously");
    }

    #[tokio::test]
    async fn a_stream_that_falls_behind_ends_with_an_error() {
        let hub = Hub::new(Config { queue_capacity: 1, ..Config::default() });
        let mut events = stream(&hub, None).await;
        hub.publish(&["users-create".into()], change(1)).await;
        hub.publish(&["users-create".into()], change(2)).await;
        let error = events.next().await.unwrap().unwrap_err();
        assert_eq!(error.message, "slow consumer: outgoing queue full");
        assert!(events.next().await.is_none());
    }
}

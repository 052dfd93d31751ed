//! The process's channels and groups: who is subscribed to what, and the
//! local fan-out of every change the channel layer brings in.
//!
//! Locks are `std::sync` and never held across `.await`: the group map is
//! read-locked only while queueing deliveries with `try_send`, and a
//! channel's subscription list only while deciding which frames it gets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::filter::Filter;
use crate::layer::{ChannelLayer, LayerError, MemoryLayer};
use crate::model::Action;
use crate::notification::{Change, Event};

/// WebSocket close code sent to a client whose outgoing queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// A decoded change on its way to one channel, tagged with the group it came through.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The group the change was sent to.
    pub group: Arc<str>,
    /// The change, shared by every channel of the group.
    pub event: Arc<Event>,
    /// When the hub queued it: how long it waited tells a socket whether the server is behind.
    pub queued_at: tokio::time::Instant,
}

/// Decides, by one primary-key-bounded query, whether a row still matches.
pub type RowCheck = Arc<dyn Fn(Json) -> BoxFuture<'static, bool> + Send + Sync>;

/// What identifies a subscription for UNSUBSCRIBE: the arguments it was made with.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionKey {
    /// Stream of the model.
    pub stream: &'static str,
    /// One action (ALL_ACTIONS makes three subscriptions).
    pub action: Action,
    /// Canonical primary key of `id`, if given.
    pub id: Option<Json>,
    /// The client's filters, as given.
    pub filters: Option<Json>,
    /// The requested fields, if any.
    pub projection: Option<Vec<&'static str>>,
}

/// One subscription of one channel.
pub struct Subscription {
    /// Its arguments.
    pub key: SubscriptionKey,
    /// The group it receives from.
    pub group: String,
    /// Scope and client filters merged.
    pub filter: Filter,
    /// Query used when the filter cannot be decided from the change.
    pub check: Option<RowCheck>,
}

impl Subscription {
    fn frame(&self, event: &Event) -> Bytes {
        match &self.key.projection {
            None => event.frame.clone(),
            Some(fields) => event.projected(fields),
        }
    }

    /// What this subscription does with a change of its group.
    fn verdict(&self, event: &Event) -> Verdict<'_> {
        match self.filter.matches(event.known()) {
            Some(true) => Verdict::Take,
            Some(false) => Verdict::Skip,
            // The row is gone: what the change does not carry cannot be decided.
            None if event.change.action == Action::Delete => Verdict::Skip,
            None => self.check.as_ref().map_or(Verdict::Skip, Verdict::Check),
        }
    }
}

#[cfg(test)]
impl Subscription {
    /// A subscription to `users` on `group` with no filter to decide, for unit tests.
    pub(crate) fn of_users(group: &str, action: Action, filters: Option<Json>) -> Subscription {
        Subscription {
            key: SubscriptionKey { stream: "users", action, id: None, filters, projection: None },
            group: group.to_owned(),
            filter: Filter::default(),
            check: None,
        }
    }
}

/// A subscription's decision on one change.
enum Verdict<'a> {
    Take,
    Skip,
    /// Decided by a primary-key-bounded query (id-only mode).
    Check(&'a RowCheck),
}

/// Why a channel was closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// Its outgoing queue overflowed.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The server closed it while going on ([`Hub::disconnect_all`]); the client may reconnect.
    Disconnected,
}

/// WebSocket close code of a channel the server disconnected while going on
/// (1012, "service restart": clients reconnect).
pub const CLOSE_DISCONNECTED: u16 = 1012;

/// One WebSocket connection's mailbox and subscriptions.
pub struct Channel {
    id: String,
    seq: u64,
    owner: Option<String>,
    tx: mpsc::Sender<Delivery>,
    closed: CancellationToken,
    close_reason: OnceLock<CloseReason>,
    subscriptions: Mutex<Subscriptions>,
    /// Signalled when the queue passes half its capacity: a socket holding
    /// its write (pacing) writes now, whatever its timer says.
    pressure: tokio::sync::Notify,
    /// Signalled when a publisher waits for this lagging channel
    /// ([`Hub::publish`]) and its queue is back to three quarters or less,
    /// or closed.
    relieved: tokio::sync::Notify,
    /// Whether a publisher waits on `relieved` (saves a lock per write otherwise).
    relief_wanted: AtomicBool,
}

/// A channel's subscriptions; `gone` once the channel is closed, after
/// which nothing may be added (a subscribe racing the socket's close).
#[derive(Default)]
struct Subscriptions {
    list: Vec<Subscription>,
    gone: bool,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.id).field("owner", &self.owner).finish_non_exhaustive()
    }
}

impl Channel {
    /// The channel id sent in the handshake.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The principal id that opened the socket, if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Resolves once the channel's queue has passed half its capacity.
    pub(crate) fn pressure(&self) -> &tokio::sync::Notify {
        &self.pressure
    }

    /// Resolves when the server closes this channel.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Why the server closed the channel.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }

    fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.set(reason);
        self.closed.cancel();
        self.relieved.notify_waiters();
    }

    // The queue's levels, from the hub's side (`tx.capacity()` is what is free):
    // past half full ends a pacing hold; seven eighths full makes the next
    // local publisher wait (backpressure) until it is down to three quarters.

    /// At least half the queue is taken: a held write should go now.
    fn past_half(&self) -> bool {
        self.tx.capacity() <= self.tx.max_capacity() / 2
    }

    /// At most an eighth of the queue is free: close to overflowing.
    fn near_overflow(&self) -> bool {
        self.tx.capacity() <= self.tx.max_capacity() / 8
    }

    /// More than three quarters of the queue is taken: not yet relieved.
    fn above_relief(&self) -> bool {
        (self.tx.max_capacity() - self.tx.capacity()) * 4 > self.tx.max_capacity() * 3
    }

    /// Called by the socket after it took deliveries: wakes the publishers
    /// that wait for this channel once its queue is down to three quarters.
    pub(crate) fn taken(&self) {
        // Pairs with the fence in `relief`: either the socket sees the
        // publisher's wish here, or the publisher sees the drained queue.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.relief_wanted.load(Ordering::SeqCst) && !self.above_relief() {
            self.relief_wanted.store(false, Ordering::SeqCst);
            self.relieved.notify_waiters();
        }
    }

    /// Waits until the queue is down to three quarters, the channel closes, or `until`.
    async fn relief(&self, until: tokio::time::Instant) {
        loop {
            let relieved = self.relieved.notified();
            tokio::pin!(relieved);
            // Registered before the check, so a signal between the two is not lost.
            relieved.as_mut().enable();
            self.relief_wanted.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.above_relief() || self.closed.is_cancelled() {
                return;
            }
            if tokio::time::timeout_at(until, relieved).await.is_err() {
                return;
            }
        }
    }

    /// Number of subscriptions held.
    pub fn subscription_count(&self) -> usize {
        self.lock().list.len()
    }

    /// Whether a subscription of this channel on `group` may take `event`,
    /// so that the hub queues (and wakes the socket for) only what the
    /// channel's filters let through. Never waits: while a subscribe or a
    /// close holds the list, the socket decides.
    fn may_take(&self, group: &str, event: &Event) -> bool {
        let Ok(subscriptions) = self.subscriptions.try_lock() else { return true };
        subscriptions
            .list
            .iter()
            .filter(|subscription| subscription.group == group)
            .any(|subscription| !matches!(subscription.verdict(event), Verdict::Skip))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The frames this channel's subscriptions take from a delivery.
    pub async fn frames(&self, delivery: &Delivery, frames: &mut Vec<Bytes>) {
        self.select(delivery, Subscription::frame, frames).await;
    }

    /// What this channel's subscriptions take from a delivery: `render` is
    /// called once per matching subscription (two-channel frames, or native
    /// GraphQL events).
    pub async fn select<T>(
        &self,
        delivery: &Delivery,
        render: impl Fn(&Subscription, &Event) -> T,
        frames: &mut Vec<T>,
    ) {
        let event = &delivery.event;
        let mut pending: Vec<(RowCheck, T)> = Vec::new();
        {
            let subscriptions = self.lock();
            for subscription in subscriptions.list.iter().filter(|s| *s.group == *delivery.group) {
                match subscription.verdict(event) {
                    Verdict::Take => frames.push(render(subscription, event)),
                    Verdict::Skip => {}
                    Verdict::Check(check) => pending.push((check.clone(), render(subscription, event))),
                }
            }
        }
        for (check, frame) in pending {
            if check(event.change.pk.clone()).await {
                frames.push(frame);
            }
        }
    }
}

/// Outcome of adding a subscription.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Added.
    New,
    /// An identical subscription already existed.
    Existing,
}

/// Refusals of subscription changes on a channel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// No open channel has this id.
    #[error("unknown channel")]
    UnknownChannel,
    /// The channel was opened by another principal.
    #[error("channel belongs to another principal")]
    ForeignChannel,
    /// Too many subscriptions on one channel.
    #[error("subscription limit reached ({0} per channel)")]
    TooManySubscriptions(usize),
    /// No subscription with these arguments.
    #[error("no subscription with these arguments")]
    NotSubscribed,
    /// Too many open channels.
    #[error("too many open channels")]
    TooManyChannels,
    /// The channel layer refused.
    #[error("{0}")]
    Layer(String),
}

impl From<LayerError> for ChannelError {
    fn from(error: LayerError) -> Self {
        ChannelError::Layer(error.to_string())
    }
}

/// Counters a test or an operator can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Changes published (one per change, whatever the number of groups).
    pub published: AtomicU64,
    /// Layer messages received for groups with local members.
    pub received: AtomicU64,
    /// Deliveries queued to channels.
    pub delivered: AtomicU64,
    /// Channels closed as slow consumers.
    pub slow_consumers: AtomicU64,
    /// Changes that failed to publish (counted once per change) or decode.
    pub dropped: AtomicU64,
    /// Publishes that waited for lagging sockets ([`Config::publish_backpressure`]).
    pub backpressure_waits: AtomicU64,
}

struct Inner {
    /// This hub's node id: the first [`NODE_ID_LEN`] characters of its channel ids.
    node: String,
    layer: Arc<dyn ChannelLayer>,
    config: Config,
    channels: RwLock<HashMap<String, Arc<Channel>>>,
    groups: RwLock<HashMap<String, HashMap<u64, Arc<Channel>>>>,
    next_seq: AtomicU64,
    stats: Stats,
    /// Members of custom groups ([`crate::broadcast`]).
    custom: crate::broadcast::Registry,
    /// Cancelled by [`Hub::shutdown`]: standard-protocol connections close on it.
    shutdown: CancellationToken,
    /// The tasks that run the two-channel sockets, started with the first one.
    shards: OnceLock<crate::shard::Shards>,
    /// Channels a dispatch left seven eighths full or more, for the next
    /// local publisher to wait on (at most [`LAGGING_KEPT`]).
    lagging: Mutex<Vec<Arc<Channel>>>,
}

/// Lagging channels kept for publishers to wait on; a further one is not
/// kept (a publisher already has enough to wait for).
const LAGGING_KEPT: usize = 16;

/// Channels, groups and the channel layer of one process. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("channels", &self.channel_count()).finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(Config::default())
    }
}

impl Hub {
    /// A hub on the in-memory layer.
    pub fn new(config: Config) -> Hub {
        Hub::with_layer(config, Arc::new(MemoryLayer::new()))
    }

    /// A hub on the given channel layer.
    pub fn with_layer(config: Config, layer: Arc<dyn ChannelLayer>) -> Hub {
        let inner = Arc::new(Inner {
            node: random_hex(NODE_ID_LEN / 2),
            layer,
            config,
            channels: RwLock::default(),
            groups: RwLock::default(),
            next_seq: AtomicU64::new(1),
            stats: Stats::default(),
            custom: crate::broadcast::Registry::default(),
            shutdown: CancellationToken::new(),
            shards: OnceLock::new(),
            lagging: Mutex::default(),
        });
        let weak = Arc::downgrade(&inner);
        inner.layer.start(Arc::new(move |group: &str, message: Bytes| {
            if let Some(inner) = weak.upgrade() {
                Hub { inner }.dispatch(group, &message);
            }
        }));
        Hub { inner }
    }

    /// This hub's node id, which starts each of its channel ids, so another
    /// process can tell where a channel lives.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The node id a channel id starts with.
    pub fn node_of(channel_id: &str) -> Option<&str> {
        channel_id.get(..NODE_ID_LEN)
    }

    /// Makes this hub answer requests other processes send it through the
    /// layer (the router registers its subscribe handler here).
    pub fn serve_requests(&self, handler: crate::layer::RequestHandler) {
        self.inner.layer.serve_requests(&self.inner.node, handler);
    }

    /// Sends a request to the process of node `node`; `None` when no
    /// process answers for it.
    pub async fn request(&self, node: &str, body: Bytes) -> Result<Option<Bytes>, LayerError> {
        self.inner.layer.request(node, body).await
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// Opens a channel owned by `owner`; returns it and its delivery queue.
    pub fn open_channel(
        &self,
        owner: Option<String>,
    ) -> Result<(Arc<Channel>, mpsc::Receiver<Delivery>), ChannelError> {
        let (tx, rx) = mpsc::channel(self.inner.config.queue_capacity.max(1));
        let channel = Arc::new(Channel {
            id: format!("{}{}", self.inner.node, random_hex(CHANNEL_RANDOM_BYTES)),
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
            owner,
            tx,
            closed: CancellationToken::new(),
            close_reason: OnceLock::new(),
            subscriptions: Mutex::default(),
            pressure: tokio::sync::Notify::new(),
            relieved: tokio::sync::Notify::new(),
            relief_wanted: AtomicBool::new(false),
        });
        let mut channels = write(&self.inner.channels);
        if channels.len() >= self.inner.config.max_channels {
            return Err(ChannelError::TooManyChannels);
        }
        channels.insert(channel.id.clone(), channel.clone());
        Ok((channel, rx))
    }

    /// The open channel with this id.
    pub fn channel(&self, id: &str) -> Option<Arc<Channel>> {
        read(&self.inner.channels).get(id).cloned()
    }

    /// Number of open channels.
    pub fn channel_count(&self) -> usize {
        read(&self.inner.channels).len()
    }

    /// Number of groups (model and custom) with members in this process.
    pub fn group_count(&self) -> usize {
        read(&self.inner.groups).len() + self.inner.custom.group_count()
    }

    /// Resolves once [`Hub::shutdown`] was called.
    pub fn shutting_down(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Runs a two-channel socket in one of the hub's shard tasks.
    pub(crate) fn run_socket(&self, socket: BoxFuture<'static, ()>) {
        self.inner.shards.get_or_init(|| crate::shard::Shards::spawn(self.inner.config.socket_shards)).run(socket);
    }

    /// The channel layer.
    pub(crate) fn layer(&self) -> &Arc<dyn ChannelLayer> {
        &self.inner.layer
    }

    /// Members of custom groups.
    pub(crate) fn custom(&self) -> &crate::broadcast::Registry {
        &self.inner.custom
    }

    /// Number of local channels in `group`.
    pub fn group_size(&self, group: &str) -> usize {
        read(&self.inner.groups).get(group).map_or(0, HashMap::len)
    }

    /// Adds a subscription to a channel and joins its group; see
    /// [`Hub::add_subscriptions`].
    pub async fn add_subscription(
        &self,
        channel: &Arc<Channel>,
        subscription: Subscription,
    ) -> Result<Added, ChannelError> {
        let mut added = self.add_subscriptions(channel, vec![subscription]).await?;
        Ok(added.pop().unwrap_or(Added::Existing))
    }

    /// Adds subscriptions to a channel, all or none, joins their groups, and
    /// returns once the layer delivers each of those groups to this process
    /// ([`ChannelLayer::ready`]): a change published after this returns
    /// reaches the channel. That holds for every joiner, first member of
    /// its group or not, and for an identical subscription that already
    /// existed. When a limit refuses, the layer is not ready in time, or
    /// the returned future is dropped before it resolves, what this call
    /// added is removed again (no half-state). Returns, per subscription,
    /// whether it was new.
    pub async fn add_subscriptions(
        &self,
        channel: &Arc<Channel>,
        subscriptions: Vec<Subscription>,
    ) -> Result<Vec<Added>, ChannelError> {
        let mut groups = Vec::with_capacity(subscriptions.len());
        let mut undo = Undo { hub: self, channel, keys: Vec::new() };
        let outcomes = {
            // Groups are joined under the channel's lock, so a concurrent
            // close either sees the subscription (and leaves the group) or
            // has already marked the channel gone.
            let mut held = channel.lock();
            if held.gone {
                return Err(ChannelError::UnknownChannel);
            }
            let mut outcomes = Vec::with_capacity(subscriptions.len());
            let mut fresh: Vec<Subscription> = Vec::new();
            for subscription in subscriptions {
                groups.push(subscription.group.clone());
                if held.list.iter().chain(&fresh).any(|existing| existing.key == subscription.key) {
                    outcomes.push(Added::Existing);
                } else {
                    outcomes.push(Added::New);
                    fresh.push(subscription);
                }
            }
            let limit = self.inner.config.max_subscriptions_per_channel;
            if held.list.len() + fresh.len() > limit {
                return Err(ChannelError::TooManySubscriptions(limit));
            }
            for subscription in fresh {
                let joins = !held.list.iter().any(|existing| existing.group == subscription.group);
                undo.keys.push(subscription.key.clone());
                if joins {
                    self.join(&subscription.group, channel);
                }
                held.list.push(subscription);
            }
            outcomes
        };
        groups.sort_unstable();
        groups.dedup();
        let layer = &self.inner.layer;
        futures_util::future::try_join_all(groups.iter().map(|group| layer.ready(group))).await?;
        undo.keys.clear();
        Ok(outcomes)
    }

    /// Removes the subscription with this key, leaving its group if no other
    /// subscription of the channel uses it.
    pub fn remove_subscription(&self, channel: &Channel, key: &SubscriptionKey) -> Result<(), ChannelError> {
        let mut subscriptions = channel.lock();
        let position =
            subscriptions.list.iter().position(|existing| existing.key == *key).ok_or(ChannelError::NotSubscribed)?;
        let removed = subscriptions.list.swap_remove(position);
        if !subscriptions.list.iter().any(|existing| existing.group == removed.group) {
            self.leave(&removed.group, channel);
        }
        Ok(())
    }

    /// Closes a channel: forgets it, leaves every group, drops its
    /// subscriptions. Synchronous, so a `Drop` can call it: the layer is
    /// told in order (see [`ChannelLayer::listen`]).
    pub fn close_channel(&self, channel: &Channel) {
        write(&self.inner.channels).remove(&channel.id);
        let mut subscriptions = channel.lock();
        subscriptions.gone = true;
        let mut groups: Vec<String> = subscriptions.list.drain(..).map(|s| s.group).collect();
        groups.sort_unstable();
        groups.dedup();
        for group in groups {
            self.leave(&group, channel);
        }
    }

    /// Closes every two-channel socket and native stream with
    /// [`CloseReason::Disconnected`] but keeps serving: clients reconnect
    /// (e.g. to move them to other processes before a deploy).
    pub fn disconnect_all(&self) {
        for channel in read(&self.inner.channels).values() {
            channel.close(CloseReason::Disconnected);
        }
    }

    /// Closes every channel (their socket tasks send a close frame and exit)
    /// and refuses new standard-protocol connections.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for channel in read(&self.inner.channels).values() {
            channel.close(CloseReason::Shutdown);
        }
    }

    /// Adds `channel` to `group`'s members. When the group gains its first
    /// local member the layer is told while the membership lock is held, so
    /// it sees every group's listen and unlisten in membership order.
    fn join(&self, group: &str, channel: &Arc<Channel>) {
        let mut groups = write(&self.inner.groups);
        let members = groups.entry(group.to_owned()).or_default();
        members.insert(channel.seq, channel.clone());
        if members.len() == 1 {
            self.inner.layer.listen(group);
        }
    }

    /// Removes `channel` from `group`'s members; its last local member
    /// leaving unlistens the layer, under the same lock as [`Hub::join`].
    fn leave(&self, group: &str, channel: &Channel) {
        let mut groups = write(&self.inner.groups);
        let Some(members) = groups.get_mut(group) else { return };
        members.remove(&channel.seq);
        if members.is_empty() {
            groups.remove(group);
            self.inner.layer.unlisten(group);
        }
    }

    /// Publishes a change to each of its groups, through the layer; then,
    /// if local sockets are close to overflowing, waits for them a bounded
    /// time ([`Config::publish_backpressure`]).
    pub async fn publish(&self, groups: &[String], message: Bytes) {
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        if let Err(error) = self.inner.layer.publish_all(groups, message).await {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(?groups, %error, "change not published");
        }
        self.relieve().await;
    }

    /// Backpressure: if sockets of this process are close to overflowing
    /// (a queue seven eighths full), waits until they are back to three
    /// quarters, at most [`Config::publish_backpressure`], so that
    /// producers faster than the fan-out slow down instead of getting
    /// sockets that are merely behind closed as slow consumers. A socket
    /// that stopped reading costs each publish at most that bound until
    /// its queue overflows.
    async fn relieve(&self) {
        let Some(bound) = self.inner.config.publish_backpressure else { return };
        let lagging = {
            // Never waits: a publisher holding the list is taking care of it.
            let Ok(mut lagging) = self.inner.lagging.try_lock() else { return };
            if lagging.is_empty() {
                return;
            }
            std::mem::take(&mut *lagging)
        };
        self.inner.stats.backpressure_waits.fetch_add(1, Ordering::Relaxed);
        let until = tokio::time::Instant::now() + bound;
        for channel in lagging {
            channel.relief(until).await;
        }
    }

    /// Fans a layer message out to the local members of `group`.
    fn dispatch(&self, group: &str, message: &[u8]) {
        // Custom groups live in their own namespace and carry payloads, not changes.
        if crate::broadcast::is_custom(group) {
            return self.inner.custom.dispatch(group, message, &self.inner.stats);
        }
        let groups = read(&self.inner.groups);
        let Some(members) = groups.get(group) else { return };
        self.inner.stats.received.fetch_add(1, Ordering::Relaxed);
        let event = match Change::decode(message) {
            Ok(change) => Arc::new(Event::new(change)),
            Err(error) => {
                self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%group, %error, "undecodable message dropped");
                return;
            }
        };
        let group: Arc<str> = Arc::from(group);
        let queued_at = tokio::time::Instant::now();
        let mut delivered = 0;
        let mut lagging = Vec::new();
        let backpressure = self.inner.config.publish_backpressure.is_some();
        for channel in members.values() {
            if !channel.may_take(&group, &event) {
                continue;
            }
            let delivery = Delivery { group: group.clone(), event: event.clone(), queued_at };
            match channel.tx.try_send(delivery) {
                Ok(()) => {
                    delivered += 1;
                    if channel.past_half() {
                        channel.pressure.notify_one();
                    }
                    if backpressure && channel.near_overflow() {
                        lagging.push(channel.clone());
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if channel.close_reason().is_none() {
                        self.inner.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(channel = %channel.id, "outgoing queue full: closing slow consumer");
                    }
                    channel.close(CloseReason::SlowConsumer);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.inner.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        if !lagging.is_empty() {
            let mut kept = self.inner.lagging.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for channel in lagging {
                if kept.len() < LAGGING_KEPT && !kept.iter().any(|known| Arc::ptr_eq(known, &channel)) {
                    kept.push(channel);
                }
            }
        }
    }
}

/// Removes, when dropped, the subscriptions an unfinished
/// [`Hub::add_subscriptions`] added (its keys are cleared once it succeeds).
struct Undo<'a> {
    hub: &'a Hub,
    channel: &'a Channel,
    keys: Vec<SubscriptionKey>,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        for key in &self.keys {
            let _ = self.hub.remove_subscription(self.channel, key);
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hex characters of a node id at the start of every channel id.
pub const NODE_ID_LEN: usize = 8;

/// Random bytes after the node id in a channel id (128 bits).
const CHANNEL_RANDOM_BYTES: usize = 16;

/// `len` random bytes from the OS, hex-encoded.
fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group;
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
        hub.add_subscription(
            &channel,
            Subscription::of_users(&group, Action::Create, Some(serde_json::json!({"a": 1}))),
        )
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
        assert_eq!(
            hub.add_subscription(&channel, Subscription::of_users(&group, Action::Create, None)).await,
            Err(ChannelError::UnknownChannel)
        );
        assert_eq!(hub.group_count(), 0);
    }

    #[tokio::test]
    async fn the_hub_queues_only_what_a_channel_filters_let_through() {
        let hub = Hub::default();
        let group = group::coarse("users", Action::Create);
        let (channel, mut rx) = hub.open_channel(None).unwrap();
        let mut in_room_1 = Subscription::of_users(&group, Action::Create, Some(serde_json::json!({"room": 1})));
        in_room_1.filter = crate::filter::Filter::of(vec![crate::filter::Clause {
            field: 1,
            name: "room",
            lookup: crate::filter::Lookup::Exact,
            value: 1.into(),
        }]);
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
        assert_eq!(delivery.event.change.pk, serde_json::json!(2));
        // Undecidable without a row check: nothing to queue either.
        hub.publish(std::slice::from_ref(&group), change(3, None).encode()).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.stats().delivered.load(Ordering::Relaxed), 1);
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
        assert_eq!(hub.stats().backpressure_waits.load(Ordering::Relaxed), 0);
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
        assert_eq!(hub.stats().backpressure_waits.load(Ordering::Relaxed), 1);
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
        assert_eq!(hub.stats().backpressure_waits.load(Ordering::Relaxed), 0);
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
                return Err(LayerError::Unavailable("not confirmed".into()));
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
        (Hub::with_layer(Config::default(), Arc::new(layer.clone())), layer)
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
            assert_eq!(add.await, Ok(Added::New));
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
        assert_eq!(refused, Err(ChannelError::Layer("channel layer unavailable: not confirmed".into())));
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
        let (slow, _slow_rx) = hub.open_channel(None).unwrap();
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
        assert!(slow.closed().is_cancelled());
        assert_eq!(fast.close_reason(), None);
    }
}

//! Stage 4 of the pipeline: the hub, one per process. It holds the
//! channels (one per WebSocket connection or native stream), their group
//! memberships, the local fan-out of every change the layer brings in, and
//! the backpressure that slows local publishers when sockets fall behind.
//!
//! - `mod.rs`: the [`Hub`] handle; opening and closing channels; adding and
//!   removing subscriptions (confirmed once the layer is ready).
//! - `channel.rs`: a channel, its bounded queue and the queue levels that
//!   pacing and backpressure read; its subscriptions and their verdicts.
//! - `membership.rs`: the group map shared by model groups and custom
//!   groups; the layer hears listen/unlisten under its lock.
//! - `dispatch.rs`: publish, fan-out, slow consumers, backpressure.
//! - `sessions.rs`: the connections and streams of each principal, for
//!   [`Hub::revoke`].
//! - `clients.rs`: what each client (principal, or remote address) holds,
//!   against the per-client caps.
//! - `stats.rs`: counters and their snapshot.
//!
//! Calls: `layer` (publish, listen), `change` (decoding a change),
//! `subscribe` (a subscription's filter), `config`.
//! Locks are `std::sync` and never held across `.await`.

mod channel;
mod clients;
mod dispatch;
mod membership;
mod sessions;
mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::config::Config;
use crate::layer::{ChannelLayer, LayerError, MemoryLayer};

pub use channel::{
    Added, Channel, ChannelError, CloseReason, Delivery, Dispatched, Implied, Subscription, SubscriptionKey,
};
pub(crate) use clients::{ClientAddress, ClientKey, Resource, client_key};
pub(crate) use membership::Membership;
pub(crate) use sessions::Session;
pub use stats::Stats;
pub(crate) use stats::{Connected, Counters, Latency, Transport};

struct Inner {
    /// This hub's node id: the first [`NODE_ID_LEN`] characters of its channel ids.
    node: String,
    layer: Arc<dyn ChannelLayer>,
    config: Config,
    channels: RwLock<HashMap<Arc<str>, Arc<Channel>>>,
    groups: Membership<Arc<Channel>>,
    next_seq: AtomicU64,
    stats: Arc<Counters>,
    /// Members of custom groups ([`crate::subscribe_groups`]).
    custom: crate::subscribe::custom::Registry,
    /// Cancelled by [`Hub::shutdown`]: standard-protocol connections close on it.
    shutdown: CancellationToken,
    /// The tasks that run the sockets (two-channel and standard-protocol),
    /// started with the first one.
    shards: OnceLock<crate::transport::shard::Shards>,
    /// Channels a dispatch left seven eighths full or more, for the next
    /// local publisher to wait on (at most [`LAGGING_KEPT`]).
    lagging: Mutex<Vec<Arc<Channel>>>,
    /// What each client holds, against the per-client caps.
    clients: clients::Clients,
    /// The last changes dispatched here (at most [`RECENT_KEPT`]), with the
    /// message each was decoded from: a change sent to several groups is
    /// decoded once when the layer hands over the same buffer for each (in
    /// memory), its frames rendered once and its row read once.
    recent: Mutex<std::collections::VecDeque<dispatch::Recent>>,
    /// Changes decoded for replays, by position (at most [`REPLAYED_KEPT`]):
    /// clients resuming after the same outage share each decode.
    replayed: Mutex<Replayed>,
    /// Streams whose changes a capture from the database's log publishes:
    /// their hooks do not announce them too.
    captured: RwLock<std::collections::HashSet<&'static str>>,
    /// Shared executions of equal native subscriptions.
    shared: crate::subscribe::shared::Registry,
    /// Running captures from the database's log, by slot: their lag in
    /// bytes, read by the metrics (gone once the capture's `run` returns).
    captures: Mutex<Vec<(String, std::sync::Weak<LagFn>)>>,
    /// The connections and streams each principal's tokens opened, for
    /// [`Hub::revoke`].
    sessions: sessions::Sessions,
    /// Every task the hub runs or serves (shards, standard-protocol
    /// connections, shared executions, committed transactions' publishes,
    /// captures): [`Hub::stopped`] waits for them.
    tasks: TaskTracker,
    /// Native streams of WebSocket connections that have not yet written
    /// what their queue held at shutdown ([`Hub::drained`]).
    undrained: Undrained,
}

/// A count of native streams still to drain, and a signal when it is zero.
#[derive(Default)]
struct Undrained {
    count: std::sync::atomic::AtomicUsize,
    zero: tokio::sync::Notify,
}

/// Counts one native stream as undrained until dropped ([`Hub::undrained`]).
pub(crate) struct UndrainedStream(Hub);

impl Drop for UndrainedStream {
    fn drop(&mut self) {
        let undrained = &self.0.inner.undrained;
        if undrained.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            undrained.zero.notify_waiters();
        }
    }
}

/// What [`Hub::stopped`] found when it returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stopped {
    /// Tasks of the hub still running when [`Config::stop_timeout`] ran
    /// out (0 after a clean stop).
    pub tasks_left: usize,
    /// Whether the channel layer's [`ChannelLayer::stop`] did not finish
    /// in time (e.g. Redis unreachable with changes still in its outbox).
    pub layer_timed_out: bool,
}

impl Stopped {
    /// Everything ended in time.
    pub fn is_clean(&self) -> bool {
        self.tasks_left == 0 && !self.layer_timed_out
    }
}

/// Reads a running capture's lag in bytes.
type LagFn = dyn Fn() -> u64 + Send + Sync;

/// A running capture's lag, reported while kept ([`Hub::watch_capture`]).
pub(crate) type LagProbe = Arc<LagFn>;

/// Decoded changes kept for replays.
#[derive(Default)]
struct Replayed {
    events: HashMap<crate::layer::Position, Arc<crate::change::codec::Event>>,
    order: std::collections::VecDeque<crate::layer::Position>,
}

/// Changes decoded for replays kept for the next resuming client: about
/// two streams' default history.
const REPLAYED_KEPT: usize = 2048;

/// Changes kept for their next groups: a change reaches at most its coarse,
/// instance and index groups, in a row (in memory) or nearly (Redis).
const RECENT_KEPT: usize = 16;

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
            groups: Membership::default(),
            next_seq: AtomicU64::new(1),
            stats: Arc::default(),
            custom: crate::subscribe::custom::Registry::default(),
            shutdown: CancellationToken::new(),
            shards: OnceLock::new(),
            lagging: Mutex::default(),
            clients: clients::Clients::default(),
            recent: Mutex::default(),
            captured: RwLock::default(),
            replayed: Mutex::default(),
            shared: crate::subscribe::shared::Registry::default(),
            captures: Mutex::default(),
            sessions: sessions::Sessions::default(),
            tasks: TaskTracker::new(),
            undrained: Undrained::default(),
        });
        let weak = Arc::downgrade(&inner);
        let lost = Arc::downgrade(&inner);
        inner.layer.start(crate::layer::Inbound::new(
            move |group: &str, position, message: Bytes| {
                if let Some(inner) = weak.upgrade() {
                    Hub { inner }.dispatch(group, position, message);
                }
            },
            move |stream: &str| {
                if let Some(inner) = lost.upgrade() {
                    Hub { inner }.lost(stream);
                }
            },
        ));
        // Every process hears revocations (`Hub::revoke`), whoever sends them.
        inner.layer.listen(crate::change::group::REVOKE);
        Hub { inner }
    }

    /// The changes of `stream` are captured from the database's log: its
    /// models' hooks no longer announce them through this hub.
    #[cfg_attr(not(feature = "postgres-capture"), allow(dead_code))]
    pub(crate) fn capture_stream(&self, stream: &'static str) {
        write(&self.inner.captured).insert(stream);
    }

    /// Reports the lag of the capture reading `slot` in the metrics for as
    /// long as the caller keeps `probe`.
    #[cfg_attr(not(feature = "postgres-capture"), allow(dead_code))]
    pub(crate) fn watch_capture(&self, slot: &str, probe: &LagProbe) {
        let mut captures = self.inner.captures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        captures.retain(|(_, probe)| probe.strong_count() > 0);
        captures.push((slot.to_owned(), Arc::downgrade(probe)));
    }

    /// The lag in bytes of each running capture, by slot.
    pub(crate) fn capture_lags(&self) -> Vec<(String, u64)> {
        let captures = self.inner.captures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        captures.iter().filter_map(|(slot, probe)| Some((slot.clone(), probe.upgrade()?()))).collect()
    }

    /// Whether the changes of `stream` are captured from the database's log.
    pub(crate) fn is_captured(&self, stream: &str) -> bool {
        read(&self.inner.captured).contains(stream)
    }

    /// This hub's node id, which starts each of its channel ids, so another
    /// process can tell where a channel lives.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The node id a channel id starts with.
    pub(crate) fn node_of(channel_id: &str) -> Option<&str> {
        channel_id.get(..NODE_ID_LEN)
    }

    /// A new single-connection reservation token (graphql-sse): this
    /// hub's node id, then 128 random bits, so that any process knows
    /// where the stream is held ([`Hub::node_of`]).
    pub(crate) fn reservation_token(&self) -> String {
        format!("{}{}", self.inner.node, random_hex(CHANNEL_RANDOM_BYTES))
    }

    /// Makes this hub answer requests other processes send it through the
    /// layer (the router registers its subscribe handler here).
    pub(crate) fn serve_requests(&self, handler: crate::layer::RequestHandler) {
        if let Some(requests) = self.inner.layer.requests() {
            requests.serve_requests(&self.inner.node, handler);
        }
    }

    /// Sends a request to the process of node `node`; `None` when no
    /// process answers for it.
    pub(crate) async fn request(&self, node: &str, body: Bytes) -> Result<Option<Bytes>, LayerError> {
        match self.inner.layer.requests() {
            Some(requests) => requests.request(node, body).await,
            None => Ok(None),
        }
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }

    /// The shared executions of equal native subscriptions.
    pub(crate) fn shared(&self) -> &crate::subscribe::shared::Registry {
        &self.inner.shared
    }

    /// Shared executions running: each runs one native operation for every
    /// standard-protocol subscriber whose operation and subscriptions are
    /// equal ([`Config::share_executions`]).
    pub fn shared_execution_count(&self) -> usize {
        self.inner.shared.len()
    }

    /// Subscribers served by the shared executions: each holds no channel
    /// of its own, so subscribers in all are `channel_count() -
    /// shared_execution_count() + shared_subscriber_count()`.
    pub fn shared_subscriber_count(&self) -> usize {
        self.inner.shared.members()
    }

    /// The live counters.
    pub(crate) fn counters(&self) -> &Counters {
        &self.inner.stats
    }

    /// Counts a connection of `transport` open until the guard drops
    /// (`graphex_connections_open`).
    pub(crate) fn connected(&self, transport: Transport) -> Connected {
        self.inner.stats.connected(transport)
    }

    /// Subscriptions by stream: what each channel holds now, counted once
    /// per subscribe and action (a scrape-time walk over the channels).
    pub(crate) fn subscriptions_by_stream(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let mut counts = std::collections::BTreeMap::new();
        let channels: Vec<Arc<Channel>> = read(&self.inner.channels).values().cloned().collect();
        for channel in channels {
            for subscription in channel.lock().list.iter() {
                *counts.entry(subscription.key.stream).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Opens a channel owned by `owner`, not counted against a client.
    pub(crate) fn open_channel(
        &self,
        owner: Option<String>,
    ) -> Result<(Arc<Channel>, mpsc::Receiver<Delivery>), ChannelError> {
        self.open_channel_for(owner, None)
    }

    /// Opens a channel owned by `owner` and counted against `client`
    /// ([`Config::max_channels_per_client`]; its subscriptions against
    /// [`Config::max_subscriptions_per_client`]); returns it and its
    /// delivery queue.
    pub(crate) fn open_channel_for(
        &self,
        owner: Option<String>,
        client: Option<ClientKey>,
    ) -> Result<(Arc<Channel>, mpsc::Receiver<Delivery>), ChannelError> {
        let (tx, rx) = mpsc::channel(self.inner.config.queue_capacity.max(1));
        let channel = Arc::new(Channel {
            id: Arc::from(format!("{}{}", self.inner.node, random_hex(CHANNEL_RANDOM_BYTES))),
            seq: self.inner.next_seq.fetch_add(1, Ordering::Relaxed),
            owner,
            tx,
            close_reason: OnceLock::new(),
            subscriptions: Mutex::default(),
            pressure: OnceLock::new(),
            pressed: std::sync::atomic::AtomicBool::new(false),
            relieved: tokio::sync::Notify::new(),
            close_waker: futures_util::task::AtomicWaker::new(),
            relief_wanted: AtomicBool::new(false),
            client,
            sent: AtomicU64::new(0),
        });
        let mut channels = write(&self.inner.channels);
        if channels.len() >= self.inner.config.max_channels {
            return Err(ChannelError::TooManyChannels);
        }
        self.take(channel.client.as_ref(), Resource::Channels, 1)?;
        // Checked under the write lock that `shutdown` reads the channels
        // under: a channel opened once shutdown began is born closed.
        if self.inner.shutdown.is_cancelled() {
            channel.close(CloseReason::Shutdown);
        }
        channels.insert(channel.id.clone(), channel.clone());
        Ok((channel, rx))
    }

    /// The open channel with this id.
    pub(crate) fn channel(&self, id: &str) -> Option<Arc<Channel>> {
        read(&self.inner.channels).get(id).cloned()
    }

    /// Number of open channels.
    pub fn channel_count(&self) -> usize {
        read(&self.inner.channels).len()
    }

    /// Number of groups (model and custom) with members in this process.
    pub fn group_count(&self) -> usize {
        self.inner.groups.group_count() + self.inner.custom.group_count()
    }

    /// Resolves once [`Hub::shutdown`] was called.
    pub fn shutting_down(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Runs a socket (two-channel or standard-protocol) in one of the hub's
    /// shard tasks.
    pub(crate) fn run_socket(&self, socket: BoxFuture<'static, ()>) {
        self.inner
            .shards
            .get_or_init(|| crate::transport::shard::Shards::spawn(self, self.inner.config.socket_shards))
            .run(socket);
    }

    /// The tracker of the hub's tasks.
    pub(crate) fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// Spawns a task that [`Hub::stopped`] waits for.
    pub(crate) fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.tasks.spawn(task)
    }

    /// Counts the caller (a connection task spawned by axum, a capture's
    /// `run`) as one of the hub's tasks until the token is dropped.
    pub(crate) fn task_token(&self) -> TaskTrackerToken {
        self.inner.tasks.token()
    }

    /// Counts a native stream of a WebSocket connection as undrained until
    /// the returned guard is dropped.
    pub(crate) fn undrained(&self) -> UndrainedStream {
        self.inner.undrained.count.fetch_add(1, Ordering::AcqRel);
        UndrainedStream(self.clone())
    }

    /// Resolves once no native stream of a WebSocket connection holds
    /// undelivered changes (each stops counting once it has yielded what
    /// its queue held at shutdown, or ends).
    pub(crate) async fn drained(&self) {
        let undrained = &self.inner.undrained;
        loop {
            let zero = undrained.zero.notified();
            tokio::pin!(zero);
            zero.as_mut().enable();
            if undrained.count.load(Ordering::Acquire) == 0 {
                return;
            }
            zero.await;
        }
    }

    /// Waits, after [`Hub::shutdown`] (which it calls if nobody did), until
    /// the hub has stopped: every two-channel socket, standard-protocol
    /// connection and HTTP stream has written what its queue held and
    /// closed, the socket shards, shared executions, publishes of committed
    /// transactions and captures (`graphex::capture`) have ended, and then
    /// the channel layer has stopped ([`ChannelLayer::stop`]: Redis sends
    /// what its outbox still holds). At most [`Config::stop_timeout`] for
    /// the tasks and as long again for the layer; what was left then is in
    /// the answer (and logged). Call it after `axum::serve(..)` returns:
    /// axum waits for plain HTTP requests and streaming responses, but not
    /// for upgraded WebSocket connections, which are the hub's.
    #[tracing::instrument(name = "hub_stop", skip_all, fields(node = %self.inner.node))]
    pub async fn stopped(&self) -> Stopped {
        self.shutdown();
        let tasks = &self.inner.tasks;
        tasks.close();
        let bound = self.inner.config.stop_timeout;
        let mut stopped = Stopped::default();
        if tokio::time::timeout(bound, tasks.wait()).await.is_err() {
            stopped.tasks_left = tasks.len();
            tracing::warn!(
                tasks = stopped.tasks_left,
                "graphex hub: tasks still running at the end of the stop timeout"
            );
        }
        if tokio::time::timeout(bound, self.inner.layer.stop()).await.is_err() {
            stopped.layer_timed_out = true;
            tracing::warn!("graphex hub: the channel layer did not stop within the stop timeout");
        }
        stopped
    }

    /// The channel layer.
    pub(crate) fn layer(&self) -> &Arc<dyn ChannelLayer> {
        &self.inner.layer
    }

    /// Members of custom groups.
    pub(crate) fn custom(&self) -> &crate::subscribe::custom::Registry {
        &self.inner.custom
    }

    /// Number of local channels in `group`.
    pub fn group_size(&self, group: &str) -> usize {
        self.inner.groups.group_size(group)
    }

    /// Adds a subscription to a channel and joins its group; see
    /// [`Hub::add_subscriptions`].
    pub(crate) async fn add_subscription(
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
    pub(crate) async fn add_subscriptions(
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
            // Given back one by one by `remove_subscription` (the undo
            // included) or all at once by `close_channel`.
            self.take(channel.client.as_ref(), Resource::Subscriptions, fresh.len())?;
            for mut subscription in fresh {
                undo.keys.push(subscription.key.clone());
                // The group's shared name (`Membership`), joined by the
                // channel's first subscription on it.
                let joined = held.list.iter().find(|existing| existing.group == subscription.group);
                subscription.group = match joined {
                    Some(existing) => existing.group.clone(),
                    None => self.join(&subscription.group, channel),
                };
                held.list.push(subscription);
                held.changed();
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
    pub(crate) fn remove_subscription(&self, channel: &Channel, key: &SubscriptionKey) -> Result<(), ChannelError> {
        let mut subscriptions = channel.lock();
        let position =
            subscriptions.list.iter().position(|existing| existing.key == *key).ok_or(ChannelError::NotSubscribed)?;
        let removed = subscriptions.list.swap_remove(position);
        subscriptions.changed();
        self.release(channel.client.as_ref(), Resource::Subscriptions, 1);
        if !subscriptions.list.iter().any(|existing| existing.group == removed.group) {
            self.leave(&removed.group, channel);
        }
        Ok(())
    }

    /// Closes a channel: forgets it, leaves every group, drops its
    /// subscriptions. Synchronous, so a `Drop` can call it: the layer is
    /// told in order (see [`ChannelLayer::listen`]).
    pub(crate) fn close_channel(&self, channel: &Channel) {
        if write(&self.inner.channels).remove(&channel.id).is_some() {
            self.release(channel.client.as_ref(), Resource::Channels, 1);
        }
        let mut subscriptions = channel.lock();
        subscriptions.gone = true;
        self.release(channel.client.as_ref(), Resource::Subscriptions, subscriptions.list.len());
        let mut groups: Vec<Arc<str>> = subscriptions.list.drain(..).map(|s| s.group).collect();
        subscriptions.changed();
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

    /// Starts the shutdown: closes every channel (a two-channel socket
    /// writes what its queue holds, at most 1 s, then closes with 1001;
    /// standard-protocol connections likewise; HTTP streams end after what
    /// they hold) and refuses new connections. Returns at once:
    /// [`Hub::stopped`] waits for the end.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        for channel in read(&self.inner.channels).values() {
            channel.close(CloseReason::Shutdown);
        }
    }

    /// Adds `channel` to `group`'s members (the layer listens on its first).
    /// Returns the group's shared name.
    fn join(&self, group: &str, channel: &Arc<Channel>) -> Arc<str> {
        self.inner.groups.join(self.inner.layer.as_ref(), group, channel.seq, channel.clone())
    }

    /// Removes `channel` from `group`'s members (the layer unlistens on its last).
    fn leave(&self, group: &str, channel: &Channel) {
        self.inner.groups.leave(self.inner.layer.as_ref(), group, channel.seq);
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
pub(crate) const NODE_ID_LEN: usize = 8;

/// Random bytes after the node id in a channel id (128 bits).
const CHANNEL_RANDOM_BYTES: usize = 16;

/// `len` random bytes from the OS, hex-encoded.
fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests;

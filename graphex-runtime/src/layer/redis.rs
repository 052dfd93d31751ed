//! The Redis layer: several server processes sharing one Redis (feature `redis`).
//!
//! Each group is one Redis pub/sub channel, `<prefix><group>`. A process
//! subscribes to a group's channel when the group gains its first local member
//! and unsubscribes when it loses its last one, so Redis carries one copy of a
//! change per process that wants it, and each process fans it out locally.
//!
//! Two connections per process:
//! - publishing goes through a multiplexed [`ConnectionManager`]; the groups of
//!   one change are sent as one pipeline (one `PUBLISH` per group, one round
//!   trip);
//! - receiving goes through a dedicated pub/sub connection owned by one task
//!   (the *subscriber*), which also applies listen/unlisten requests in order.
//!   When that connection drops (Redis restarted, network cut, a failed health
//!   ping), the subscriber reconnects with exponential backoff and subscribes
//!   again to every group that still has local members: clients do nothing.
//!
//! Processes also answer each other's requests (a subscribe that reached
//! the wrong process, see the README on running several processes): each process listens on
//! `<prefix>~node:<node id>` for requests and `<prefix>~reply:<node id>` for
//! replies, through the same subscriber connection (`redis/requests.rs`),
//! in versioned, size-bounded envelopes with unguessable ids, signed with
//! [`RedisOptions::signing_key`] when it is set (`redis/envelope.rs`).
//!
//! URLs: `redis://[user:password@]host:port/db` (ACL credentials, or a
//! password alone), `rediss://...` for TLS (rustls, with the webpki root
//! certificates), `redis+unix:///path`.
//!
//! What an outage does:
//! - `listen` / `unlisten` never fail or wait: they record the wish in the
//!   layer's interest table, and the subscriber task reconciles Redis with
//!   the latest wish of each group (so their order cannot be lost between
//!   tasks: an UNSUBSCRIBE is sent only if the group is still unwanted when
//!   the subscriber gets to it). While disconnected the table is applied
//!   when the connection is back.
//! - [`ChannelLayer::ready`] resolves once Redis has acknowledged this
//!   process's SUBSCRIBE to the group on the live connection; every
//!   subscription the hub adds waits for it, at most
//!   [`RedisOptions::subscribe_timeout`], so a confirmation given to a
//!   client means a change published after it reaches this process. During
//!   an outage joins wait for the resubscription, then fail clearly.
//! - A change ([`ChannelLayer::publish_change`]) that cannot reach Redis
//!   (connection refused or dropped, or no answer within `publish_timeout`, after one
//!   retry on a dead connection) waits in a bounded, in-order outbox
//!   ([`RedisOptions::outbox`]) and the publish returns; while the outbox
//!   holds anything, later changes queue behind it, and a task publishes
//!   them when Redis answers again. A change that does not fit is dropped,
//!   counted (the hub's [`crate::Stats::dropped`], [`RedisStats::outbox_overflows`]),
//!   and its stream moves to a new epoch once the outbox is drained (or
//!   with its next change, whichever comes first), so no cursor resumes
//!   past the gap and every subscriber of that stream learns, with the
//!   stream's next change, that something was lost. The outbox lives in
//!   the process: a crash loses it. Other messages (custom groups, node
//!   requests: [`ChannelLayer::publish`]) fail with
//!   [`LayerError::Unavailable`] instead, counted in
//!   [`RedisStats::publish_failures`].
//! - Redis pub/sub keeps nothing, so the layer keeps a history itself:
//!   each change is numbered in its stream (epoch, offset) and kept in a
//!   Redis stream by the same script that publishes it (see
//!   `redis/positions.rs` for the keys, the script and the message
//!   header). After reconnecting, the subscriber reads what it missed from
//!   that history and delivers it before anything newer; what cannot be
//!   repaired (Redis restarted empty or from an older snapshot, history
//!   trimmed) closes the stream's subscribers in this process with
//!   `CURSOR_EXPIRED` ([`Inbound::lost`]), never a silent gap
//!   (`redis/changes.rs`).
//!
//! The publisher, the subscriber task and its interest table share the
//! connection handling in this file; node requests and their envelope have
//! files of their own.

mod changes;
mod envelope;
mod positions;
mod requests;

use changes::{Changes, SeenStreams};
pub use envelope::SigningKey;
use requests::Requests;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};

use super::{ChannelLayer, History, Inbound, LayerError, NodeRequests, Position};
use crate::change::group;

/// Settings of the Redis layer, with documented defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prepended to every group to name its Redis channel, so several apps
    /// can share one Redis. Default `graphex:`.
    pub prefix: String,
    /// How long a publish may take before it counts as failed. Default 1 s.
    pub publish_timeout: Duration,
    /// How long one connection attempt may take. Default 2 s.
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts; doubles up to `max_backoff`.
    /// Default 100 ms.
    pub min_backoff: Duration,
    /// Longest delay between reconnection attempts. Default 5 s.
    pub max_backoff: Duration,
    /// How often the subscriber pings Redis to find a connection that died
    /// silently. Default 5 s.
    pub health_check_interval: Duration,
    /// How long a request to another process (a subscribe sent to the
    /// process holding the socket) waits for its reply. Default 5 s.
    pub request_timeout: Duration,
    /// How long a join waits for Redis to acknowledge this process's
    /// subscription to its group (for instance while the layer reconnects)
    /// before it fails with [`LayerError::Unavailable`]. Default 5 s.
    pub subscribe_timeout: Duration,
    /// The shared secret that signs the requests processes send each other
    /// (forwarded subscribes) and their replies. Default `None`: Redis is
    /// trusted like the database. Set it (the same on every process) when
    /// clients less trusted than the servers can publish to this Redis;
    /// see [`SigningKey`].
    pub signing_key: Option<SigningKey>,
    /// Changes kept per stream in Redis for resuming and for repairing
    /// what a process missed while disconnected (0: none; then only a
    /// stream's head can be resumed from, and any change published while a
    /// process was disconnected closes that stream's subscribers there).
    /// Each kept change costs its message plus about 100 bytes in Redis.
    /// Default 1 000.
    pub history: usize,
    /// Changes kept in this process, in order, while Redis cannot be
    /// reached, published when it answers again. When full, a change is
    /// dropped and its stream moves to a new epoch once Redis answers
    /// (subscribers everywhere are closed with `CURSOR_EXPIRED` at its next
    /// change). A crash of the process loses what it holds. Default 10 000.
    pub outbox: usize,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: "graphex:".into(),
            publish_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            health_check_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            subscribe_timeout: Duration::from_secs(5),
            signing_key: None,
            history: 1000,
            outbox: 10_000,
        }
    }
}

crate::config::setters!(RedisOptions {
    prefix: String => with_prefix,
    publish_timeout: Duration => with_publish_timeout,
    connect_timeout: Duration => with_connect_timeout,
    min_backoff: Duration => with_min_backoff,
    max_backoff: Duration => with_max_backoff,
    health_check_interval: Duration => with_health_check_interval,
    request_timeout: Duration => with_request_timeout,
    subscribe_timeout: Duration => with_subscribe_timeout,
    history: usize => with_history,
    outbox: usize => with_outbox,
});

impl RedisOptions {
    /// Sets [`RedisOptions::signing_key`]: node requests and replies are
    /// signed with `key`, and unsigned or badly signed ones are dropped.
    #[must_use]
    pub fn with_signing_key(mut self, key: impl Into<SigningKey>) -> Self {
        self.signing_key = Some(key.into());
        self
    }
}

/// What the Redis layer counted since it connected: a snapshot
/// ([`RedisLayer::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisStats {
    /// `PUBLISH` commands Redis accepted (one per group per change).
    pub published: u64,
    /// `PUBLISH` commands that failed or timed out (the change was dropped).
    pub publish_failures: u64,
    /// Messages received from Redis, for any group.
    pub received: u64,
    /// Subscriber connections established after the first one.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Groups subscribed again after a reconnection.
    pub resubscribed: u64,
    /// Whether the subscriber connection is up.
    pub connected: bool,
    /// Node requests or replies longer than their bound
    /// ([`crate::layer::MAX_NODE_REQUEST`], [`crate::layer::MAX_NODE_REPLY`]):
    /// received and dropped, or not sent.
    pub envelopes_oversized: u64,
    /// Node requests or replies of another envelope version (or of none):
    /// dropped, never executed.
    pub envelopes_unknown_version: u64,
    /// Node requests or replies whose envelope did not parse: dropped.
    pub envelopes_malformed: u64,
    /// With a signing key: node requests or replies unsigned or badly
    /// signed, dropped.
    pub envelopes_unverified: u64,
    /// With a signing key: node requests or replies too old (or too far
    /// ahead of this process's clock), or requests already executed once,
    /// dropped.
    pub envelopes_stale: u64,
    /// Changes delivered from Redis's history after a reconnection (missed
    /// while disconnected, repaired).
    pub repaired: u64,
    /// Streams declared lost: changes this process should have received
    /// could not be repaired (new epoch, history trimmed); their
    /// subscribers here were closed with `CURSOR_EXPIRED`.
    pub lost: u64,
    /// Streams this process moved to a new epoch (Redis went back in time,
    /// or an outbox overflowed).
    pub epochs: u64,
    /// Changes put in the outbox because Redis could not be reached.
    pub outboxed: u64,
    /// Changes dropped because the outbox was full.
    pub outbox_overflows: u64,
    /// Changes in the outbox now, waiting for Redis.
    pub outbox_waiting: u64,
    /// Live changes dropped because a repair had delivered them already.
    pub duplicates: u64,
}

/// The live counters behind [`RedisStats`].
#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    resubscribed: AtomicU64,
    connected: AtomicBool,
    envelopes_oversized: AtomicU64,
    envelopes_unknown_version: AtomicU64,
    envelopes_malformed: AtomicU64,
    envelopes_unverified: AtomicU64,
    envelopes_stale: AtomicU64,
    repaired: AtomicU64,
    lost: AtomicU64,
    epochs: AtomicU64,
    outboxed: AtomicU64,
    outbox_overflows: AtomicU64,
    duplicates: AtomicU64,
}

impl Counters {
    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn snapshot(&self) -> RedisStats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RedisStats {
            published: read(&self.published),
            publish_failures: read(&self.publish_failures),
            received: read(&self.received),
            reconnects: read(&self.reconnects),
            connect_failures: read(&self.connect_failures),
            resubscribed: read(&self.resubscribed),
            connected: self.connected(),
            envelopes_oversized: read(&self.envelopes_oversized),
            envelopes_unknown_version: read(&self.envelopes_unknown_version),
            envelopes_malformed: read(&self.envelopes_malformed),
            envelopes_unverified: read(&self.envelopes_unverified),
            envelopes_stale: read(&self.envelopes_stale),
            repaired: read(&self.repaired),
            lost: read(&self.lost),
            epochs: read(&self.epochs),
            outboxed: read(&self.outboxed),
            outbox_overflows: read(&self.outbox_overflows),
            duplicates: read(&self.duplicates),
            outbox_waiting: 0,
        }
    }
}

/// Which groups this process wants from Redis and which Redis has
/// acknowledged on the live connection: written by `listen` / `unlisten`
/// (under the hub's membership lock, so in membership order), reconciled
/// with Redis by the subscriber task.
///
/// Bounded by live state: an entry is a group some local member wants or
/// that Redis has acknowledged; an unwanted, unacknowledged entry is
/// dropped at once while offline (no command can be in flight then) and by
/// the next reconciliation while online. `dirty` holds each group once.
#[derive(Default)]
struct Interest {
    groups: HashMap<String, GroupState>,
    /// Groups whose wish changed since the subscriber last looked.
    dirty: HashSet<String>,
    /// The subscriber serves a live connection (commands may be in flight).
    online: bool,
}

#[derive(Default)]
struct GroupState {
    /// The latest wish: some local member needs the group.
    wanted: bool,
    /// Redis acknowledged SUBSCRIBE on the live connection (and no
    /// UNSUBSCRIBE since).
    subscribed: bool,
    /// An UNSUBSCRIBE is on its way: Redis may stop sending the group's
    /// messages any moment, so a join made meanwhile is not ready (it
    /// waits for the SUBSCRIBE that follows).
    leaving: bool,
}

/// What `listen` / `unlisten`, `ready` and the subscriber task share.
#[derive(Default)]
struct Shared {
    interest: Mutex<Interest>,
    /// Wakes the subscriber: a wish changed.
    changed: tokio::sync::Notify,
    /// Wakes `ready` waiters: a subscription was acknowledged.
    settled: tokio::sync::Notify,
}

impl Shared {
    fn wish(&self, group: &str, wanted: bool) {
        {
            let mut interest = lock(&self.interest);
            let online = interest.online;
            let state = interest.groups.entry(group.to_owned()).or_default();
            state.wanted = wanted;
            if !wanted && !state.subscribed && !online {
                // Nothing to undo in Redis, and no SUBSCRIBE in flight offline.
                interest.groups.remove(group);
                interest.dirty.remove(group);
                return;
            }
            interest.dirty.insert(group.to_owned());
        }
        // Stores a permit if the subscriber is busy: no wish is missed.
        self.changed.notify_one();
    }

    /// Whether messages of `group` reach this process (or nobody wants them any more).
    fn is_ready(&self, group: &str) -> bool {
        let interest = lock(&self.interest);
        interest.groups.get(group).is_none_or(|state| !state.wanted || (state.subscribed && !state.leaving))
    }
}

/// `url` without its user and password, for logs and errors.
fn redacted(url: &str) -> std::borrow::Cow<'_, str> {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***{}", &url[..scheme], &url[at..]).into(),
        _ => url.into(),
    }
}

/// A channel layer on Redis pub/sub. See the [module documentation](self).
pub struct RedisLayer {
    publisher: ConnectionManager,
    changes: Arc<Changes>,
    shared: Arc<Shared>,
    /// Stops the subscriber task when the layer is dropped.
    _stop: tokio_util::sync::DropGuard,
    /// The same token, for [`ChannelLayer::stop`].
    stop: tokio_util::sync::CancellationToken,
    /// The outbox flusher and the subscriber, awaited by [`ChannelLayer::stop`].
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    inbound: Arc<OnceLock<Inbound>>,
    requests: Requests,
    stats: Arc<Counters>,
    options: RedisOptions,
}

impl std::fmt::Debug for RedisLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLayer").field("options", &self.options).finish_non_exhaustive()
    }
}

impl RedisLayer {
    /// Connects to `url` (e.g. `redis://127.0.0.1:6379/0`) with default options.
    pub async fn connect(url: &str) -> Result<RedisLayer, LayerError> {
        RedisLayer::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to `url` with `options`. Fails if the URL is invalid or Redis
    /// cannot be reached now; after that, the layer reconnects by itself.
    #[tracing::instrument(name = "redis_connect", skip_all, fields(prefix = %options.prefix))]
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<RedisLayer, LayerError> {
        if options.signing_key.as_ref().is_some_and(SigningKey::is_empty) {
            return Err(LayerError::unavailable("the Redis layer's signing key is empty"));
        }
        #[cfg(feature = "postgres-capture")]
        crate::capture::crypto_provider();
        let client = redis::Client::open(url).map_err(|error| unavailable("invalid Redis URL", error))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.publish_timeout))
            .set_number_of_retries(1)
            .set_min_delay(options.min_backoff)
            .set_max_delay(options.max_backoff);
        let publisher =
            tokio::time::timeout(options.connect_timeout, client.get_connection_manager_with_config(config))
                .await
                .map_err(|_| LayerError::unavailable(format!("Redis at {} did not answer in time", redacted(url))))?
                .map_err(|error| unavailable("cannot connect to Redis", error))?;
        let first = connect_pubsub(&client, &options).await?;
        tracing::info!(url = %redacted(url), prefix = %options.prefix, "redis layer connected");

        let stats = Arc::new(Counters::default());
        stats.connected.store(true, Ordering::Relaxed);
        let inbound = Arc::new(OnceLock::new());
        let requests = Requests::new(options.signing_key.clone());
        let shared = Arc::new(Shared::default());
        let stop = tokio_util::sync::CancellationToken::new();
        let changes = Changes::new(publisher.clone(), options.clone(), stats.clone());
        let flusher = tokio::spawn(changes.clone().flush(stop.clone()));
        let subscriber = Subscriber {
            changes: changes.clone(),
            seen: SeenStreams::default(),
            client,
            options: options.clone(),
            inbound: inbound.clone(),
            requests: requests.clone(),
            publisher: publisher.clone(),
            stats: stats.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
        };
        let tasks = std::sync::Mutex::new(vec![flusher, tokio::spawn(subscriber.run(first))]);
        Ok(RedisLayer {
            publisher,
            changes,
            shared,
            _stop: stop.clone().drop_guard(),
            stop,
            tasks,
            inbound,
            requests,
            stats,
            options,
        })
    }

    /// The counters.
    pub fn stats(&self) -> RedisStats {
        RedisStats { outbox_waiting: self.changes.waiting() as u64, ..self.stats.snapshot() }
    }

    /// The settings.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }
}

#[async_trait::async_trait]
impl ChannelLayer for RedisLayer {
    fn start(&self, inbound: Inbound) {
        let _ = self.inbound.set(inbound);
    }

    /// Waits until the outbox is empty (every change published while Redis
    /// was unreachable has been sent), then ends the flusher and the
    /// subscriber and waits for them. Without Redis it waits for Redis:
    /// [`crate::Hub::stopped`] bounds it.
    async fn stop(&self) {
        while self.changes.waiting() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.stop.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn metrics(&self) -> crate::layer::LayerMetrics {
        // History lives in Redis: reading its size would cost a round trip per scrape.
        let stats = self.stats();
        crate::layer::LayerMetrics {
            reconnects: stats.reconnects,
            publish_failures: stats.publish_failures,
            gap_repairs: stats.repaired,
            lost: stats.lost,
            history: None,
            connected: Some(stats.connected),
        }
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        self.publish_all(std::slice::from_ref(&group.to_owned()), message).await
    }

    async fn publish_all(&self, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        let mut pipe = redis::pipe();
        for group in groups {
            pipe.publish(format!("{}{group}", self.options.prefix), message.as_ref()).ignore();
        }
        let mut connection = self.publisher.clone();
        let send = async {
            match pipe.exec_async(&mut connection).await {
                // The connection was found dead (e.g. Redis restarted): the
                // manager reconnects; try once more on the new connection.
                Err(error) if error.is_connection_dropped() || error.is_connection_refusal() => {
                    pipe.exec_async(&mut connection).await
                }
                outcome => outcome,
            }
        };
        let outcome = match tokio::time::timeout(self.options.publish_timeout, send).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(unavailable("Redis publish failed", error)),
            Err(_) => Err(LayerError::unavailable("Redis publish timed out")),
        };
        let counter = if outcome.is_ok() { &self.stats.published } else { &self.stats.publish_failures };
        counter.fetch_add(groups.len() as u64, Ordering::Relaxed);
        outcome
    }

    async fn publish_change(&self, stream: &str, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.changes.publish(stream, groups, message, None).await
    }

    async fn publish_captured(
        &self,
        stream: &str,
        groups: &[String],
        message: Bytes,
        source: crate::layer::LogPosition,
    ) -> Result<(), LayerError> {
        self.changes.publish(stream, groups, message, Some(source.text())).await
    }

    async fn history(&self, stream: &str, after: Position) -> Result<History, LayerError> {
        self.changes.history(stream, after).await
    }

    fn listen(&self, group: &str) {
        self.shared.wish(group, true);
    }

    fn unlisten(&self, group: &str) {
        self.shared.wish(group, false);
    }

    async fn ready(&self, group: &str) -> Result<(), LayerError> {
        let wait = async {
            loop {
                let settled = self.shared.settled.notified();
                tokio::pin!(settled);
                // Registered before the check, so an acknowledgement between the two is not missed.
                settled.as_mut().enable();
                if self.shared.is_ready(group) {
                    return;
                }
                settled.await;
            }
        };
        tokio::time::timeout(self.options.subscribe_timeout, wait).await.map_err(|_| {
            LayerError::unavailable(format!(
                "Redis did not confirm the subscription to `{group}` within {:?}{}",
                self.options.subscribe_timeout,
                if self.stats.connected() { "" } else { " (the layer is reconnecting)" }
            ))
        })
    }

    fn requests(&self) -> Option<&dyn NodeRequests> {
        Some(self)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The task that owns the pub/sub connection and brings Redis in line
/// with the interest table.
struct Subscriber {
    client: redis::Client,
    options: RedisOptions,
    inbound: Arc<OnceLock<Inbound>>,
    requests: Requests,
    /// Sends the replies to requests.
    publisher: ConnectionManager,
    /// Reads the history to repair what a reconnection missed.
    changes: Arc<Changes>,
    /// What this process has seen of each stream (the subscriber's only).
    seen: SeenStreams,
    stats: Arc<Counters>,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
}

/// Why the subscriber stopped serving a connection.
enum Ended {
    /// The connection is gone: reconnect.
    Lost,
    /// The layer was dropped: stop.
    Stopped,
}

/// Channels per SUBSCRIBE / UNSUBSCRIBE command (a resubscription after a
/// reconnect may have thousands of groups).
const CHANNELS_PER_COMMAND: usize = 512;

impl Subscriber {
    async fn run(mut self, first: (PubSubSink, PubSubStream)) {
        let mut connection = Some(first);
        let mut backoff = self.options.min_backoff;
        let mut reconnected = false;
        loop {
            let (sink, stream) = match connection.take() {
                Some(connection) => connection,
                None => {
                    let attempt = tokio::select! {
                        () = self.stop.cancelled() => return,
                        attempt = connect_pubsub(&self.client, &self.options) => attempt,
                    };
                    match attempt {
                        Ok(connection) => {
                            self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("redis layer reconnected");
                            self.changes.redis_is_back();
                            backoff = self.options.min_backoff;
                            reconnected = true;
                            connection
                        }
                        Err(error) => {
                            self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, retry_in = ?backoff, "redis layer reconnect failed");
                            tokio::select! {
                                () = self.stop.cancelled() => return,
                                () = tokio::time::sleep(backoff) => {}
                            }
                            backoff = (backoff * 2).min(self.options.max_backoff);
                            continue;
                        }
                    }
                }
            };
            match self.serve(sink, stream, reconnected).await {
                Ended::Stopped => return,
                Ended::Lost => {
                    self.stats.connected.store(false, Ordering::Relaxed);
                    let wanted = self.forget_connection();
                    tracing::warn!(groups = wanted, "redis layer lost its subscriber connection");
                }
            }
        }
    }

    /// The connection is gone: nothing is subscribed any more, and every
    /// wanted group must be subscribed on the next one (joins wait for it).
    /// Returns the number of wanted groups.
    fn forget_connection(&self) -> usize {
        self.forget_subscribed();
        let mut interest = lock(&self.shared.interest);
        interest.online = false;
        interest.groups.retain(|_, state| {
            state.subscribed = false;
            state.leaving = false;
            state.wanted
        });
        let wanted: HashSet<String> = interest.groups.keys().cloned().collect();
        let count = wanted.len();
        interest.dirty = wanted;
        count
    }

    async fn serve(&mut self, mut sink: PubSubSink, mut stream: PubSubStream, reconnected: bool) -> Ended {
        self.stats.connected.store(true, Ordering::Relaxed);
        lock(&self.shared.interest).online = true;
        // Whatever is wanted now (everything, after a reconnection).
        let restored = match self.reconcile(&mut sink).await {
            Ok(subscribed) => subscribed,
            Err(error) => {
                tracing::warn!(%error, "redis layer resubscribe failed");
                return Ended::Lost;
            }
        };
        // Before any further live message: what was missed meanwhile.
        if let Err(error) = self.catch_up(&restored, reconnected).await {
            tracing::warn!(%error, "redis layer could not read the history after (re)subscribing");
            return Ended::Lost;
        }
        let restored = restored.len();
        if reconnected && restored > 0 {
            self.stats.resubscribed.fetch_add(restored as u64, Ordering::Relaxed);
            tracing::info!(groups = restored, "redis layer resubscribed");
        }
        let mut health = tokio::time::interval(self.options.health_check_interval);
        health.tick().await;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => return Ended::Stopped,
                message = stream.next() => match message {
                    Some(message) => self.deliver(&message),
                    None => return Ended::Lost,
                },
                () = self.shared.changed.notified() => {
                    let subscribed = match self.reconcile(&mut sink).await {
                        Ok(subscribed) => subscribed,
                        Err(error) => {
                            // The wishes stay in the table: the next connection applies them.
                            tracing::warn!(%error, "redis layer (un)subscribe failed");
                            return Ended::Lost;
                        }
                    };
                    if let Err(error) = self.catch_up(&subscribed, false).await {
                        tracing::warn!(%error, "redis layer could not read a stream's head after subscribing");
                        return Ended::Lost;
                    }
                },
                _ = health.tick() => {
                    // Any answer will do: a subscribed RESP2 connection answers
                    // `["pong", ""]`, not `PONG`.
                    let ping = tokio::time::timeout(self.options.connect_timeout, sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        tracing::warn!("redis layer health ping failed");
                        return Ended::Lost;
                    }
                },
            }
        }
    }

    /// Brings Redis in line with the latest wish of every group whose wish
    /// changed, until none is left: SUBSCRIBE what is wanted and not
    /// subscribed, UNSUBSCRIBE what is subscribed and no longer wanted.
    /// Acting on the latest wish (read when the command is about to be
    /// sent, and again once Redis answered) is what keeps the order: a
    /// leave followed by a re-join leaves the group subscribed, however
    /// late the subscriber looks. Returns the groups subscribed.
    async fn reconcile(&self, sink: &mut PubSubSink) -> redis::RedisResult<Vec<String>> {
        let mut subscribed = Vec::new();
        loop {
            let (to_subscribe, to_unsubscribe) = {
                let mut interest = lock(&self.shared.interest);
                let dirty = std::mem::take(&mut interest.dirty);
                let (mut to_subscribe, mut to_unsubscribe) = (Vec::new(), Vec::new());
                for group in dirty {
                    let Some(state) = interest.groups.get_mut(&group) else { continue };
                    match (state.wanted, state.subscribed) {
                        (true, false) => to_subscribe.push(group),
                        (false, true) => {
                            state.leaving = true;
                            to_unsubscribe.push(group);
                        }
                        (false, false) => {
                            interest.groups.remove(&group);
                        }
                        (true, true) => {}
                    }
                }
                (to_subscribe, to_unsubscribe)
            };
            if to_subscribe.is_empty() && to_unsubscribe.is_empty() {
                return Ok(subscribed);
            }
            for batch in to_unsubscribe.chunks(CHANNELS_PER_COMMAND) {
                let channels: Vec<String> = batch.iter().map(|group| self.channel(group)).collect();
                sink.unsubscribe(&channels).await?;
                self.settle(batch, false);
                self.count_subscribed(batch, false);
            }
            for batch in to_subscribe.chunks(CHANNELS_PER_COMMAND) {
                let channels: Vec<String> = batch.iter().map(|group| self.channel(group)).collect();
                sink.subscribe(&channels).await?;
                subscribed.extend_from_slice(batch);
                self.settle(batch, true);
                self.count_subscribed(batch, true);
            }
        }
    }

    /// Records what Redis acknowledged; a group whose wish changed meanwhile
    /// is looked at again. Wakes the joins waiting for a subscription.
    fn settle(&self, groups: &[String], subscribed: bool) {
        {
            let mut interest = lock(&self.shared.interest);
            for group in groups {
                let Some(state) = interest.groups.get_mut(group) else { continue };
                state.subscribed = subscribed;
                state.leaving = false;
                if state.wanted != subscribed {
                    interest.dirty.insert(group.clone());
                } else if !state.wanted {
                    interest.groups.remove(group);
                }
            }
        }
        if subscribed {
            self.shared.settled.notify_waiters();
        }
    }

    fn channel(&self, group: &str) -> String {
        format!("{}{group}", self.options.prefix)
    }

    fn deliver(&self, message: &redis::Msg) {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let Some(group) = message.get_channel_name().strip_prefix(&self.options.prefix) else { return };
        let payload = message.get_payload_bytes();
        if group == group::REVOKE {
            // Not a change: no position, and not a node request.
            if let Some(inbound) = self.inbound.get() {
                inbound.deliver(group, Bytes::copy_from_slice(payload));
            }
        } else if group::is_node(group) {
            self.control(message.get_channel_name(), group, payload);
        } else if let Some(inbound) = self.inbound.get() {
            match positions::parse(payload) {
                Some((position, token, body)) => self.deliver_change(inbound, group, position, token, body),
                None => inbound.deliver(group, Bytes::copy_from_slice(payload)),
            }
        }
    }
}

async fn connect_pubsub(
    client: &redis::Client,
    options: &RedisOptions,
) -> Result<(PubSubSink, PubSubStream), LayerError> {
    match tokio::time::timeout(options.connect_timeout, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => Ok(pubsub.split()),
        Ok(Err(error)) => Err(unavailable("cannot connect to Redis", error)),
        Err(_) => Err(LayerError::unavailable("Redis did not answer in time")),
    }
}

fn unavailable(what: &str, error: redis::RedisError) -> LayerError {
    LayerError::failed(what, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_urls_carry_no_password() {
        assert_eq!(redacted("redis://:s3cret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(redacted("rediss://user:p@ss@host/1"), "rediss://***@host/1");
        assert_eq!(redacted("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn the_interest_table_holds_only_live_groups_while_offline() {
        let shared = Shared::default();
        // Joins and leaves of many distinct groups during an outage leave
        // nothing behind but what is still wanted.
        for n in 0..1000 {
            let group = format!("users-create-{n}");
            shared.wish(&group, true);
            shared.wish(&group, false);
        }
        shared.wish("users-create", true);
        let interest = lock(&shared.interest);
        assert_eq!(interest.groups.len(), 1);
        assert_eq!(interest.dirty.len(), 1);
        assert!(interest.groups["users-create"].wanted);
    }

    #[test]
    fn a_join_during_an_unsubscribe_in_flight_is_not_ready() {
        let shared = Shared::default();
        {
            let mut interest = lock(&shared.interest);
            interest.online = true;
            // The subscriber took the group's UNSUBSCRIBE and sent it.
            interest
                .groups
                .insert("users-create".into(), GroupState { wanted: false, subscribed: true, leaving: true });
        }
        shared.wish("users-create", true);
        // Redis may already have stopped sending the group: wait for the SUBSCRIBE that follows.
        assert!(!shared.is_ready("users-create"));
    }

    #[test]
    fn online_an_unwanted_group_waits_for_the_subscriber() {
        let shared = Shared::default();
        lock(&shared.interest).online = true;
        shared.wish("users-create", true);
        shared.wish("users-create", false);
        // A SUBSCRIBE may be in flight: the subscriber decides, once.
        let interest = lock(&shared.interest);
        assert_eq!(interest.groups.len(), 1);
        assert_eq!(interest.dirty.len(), 1);
    }
}

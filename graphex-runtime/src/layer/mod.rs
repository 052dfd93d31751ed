//! Channel layers carry encoded changes between processes, by group.
//!
//! A layer works at process level: the [`crate::Hub`] tells it which groups
//! have members in this process ([`ChannelLayer::listen`] /
//! [`ChannelLayer::unlisten`]) and receives every message for those groups
//! through the [`Inbound`] it gave at start. Fan-out to sockets is local, so a
//! cross-process layer subscribes once per group per process and publishes
//! once per group per change.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{RedisLayer, RedisOptions, RedisStats, SigningKey};
pub use memory::MemoryLayer;

/// Where a change sits in its model's stream.
///
/// Offsets are dense and strictly increasing within an epoch (1 for the
/// first change of an epoch). A stream moves to a new epoch whenever its
/// history may have been lost (the broker restarted empty or from an older
/// snapshot, an outbox overflowed): positions of different epochs are not
/// comparable, and a cursor of an older epoch cannot be resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The stream's epoch: a random number, new whenever history may have been lost.
    pub epoch: u64,
    /// The change's offset within the epoch, from 1.
    pub offset: u64,
}

/// Where a captured change sits in the database's log: its transaction's
/// commit end (PostgreSQL LSN) and its index in the transaction. Ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogPosition {
    /// The transaction's commit LSN (where its commit record starts; the
    /// log orders transactions by it).
    pub lsn: u64,
    /// The change's index among its transaction's captured rows.
    pub index: u32,
}

impl LogPosition {
    /// As the Redis layer keeps it: fixed-width hex, so that text order is
    /// log order.
    pub fn text(self) -> String {
        format!("{:016x}{:08x}", self.lsn, self.index)
    }
}

/// One change kept in a stream's history.
#[derive(Clone, Debug)]
pub struct Kept {
    /// Its offset (in the epoch of the [`History`] it belongs to).
    pub offset: u64,
    /// The groups it was published to.
    pub groups: Vec<String>,
    /// The change message, as published.
    pub message: Bytes,
}

/// What a layer's history says about the changes of a stream after a position.
#[derive(Clone, Debug)]
pub enum History {
    /// Every change after the position, in order, up to `head`, the stream's
    /// last change when the history was read (the position itself when
    /// nothing came after it).
    Since {
        /// The changes after the position.
        kept: Vec<Kept>,
        /// The stream's last position when read.
        head: Position,
    },
    /// The changes after the position cannot all be told.
    Expired(Expiry),
    /// This layer keeps no positions or history.
    Unsupported,
}

/// Why a position can no longer be resumed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// The stream is in another epoch now: history may have been lost since.
    Epoch,
    /// The history no longer reaches back to the position (trimmed, or off).
    Trimmed,
    /// The position is ahead of the stream's head: the broker went back in
    /// time (restored from an older snapshot). The layer has moved the
    /// stream to a new epoch.
    Ahead,
}

impl std::fmt::Display for Expiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Expiry::Epoch => "the stream's history was lost since (new epoch)",
            Expiry::Trimmed => "the stream's history no longer reaches back to it",
            Expiry::Ahead => "it is ahead of the stream (the broker went back in time; new epoch)",
        })
    }
}

type Deliver = dyn Fn(&str, Option<Position>, Bytes) + Send + Sync;

/// Where a layer delivers messages for the groups this process listens to,
/// given to [`ChannelLayer::start`] by the hub. Cheap to clone.
#[derive(Clone)]
pub struct Inbound {
    deliver: Arc<Deliver>,
    lost: Arc<dyn Fn(&str) + Send + Sync>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound").finish_non_exhaustive()
    }
}

impl Inbound {
    /// Where messages go (`deliver`), and streams whose changes may have
    /// been lost (`lost`).
    pub fn new(
        deliver: impl Fn(&str, Option<Position>, Bytes) + Send + Sync + 'static,
        lost: impl Fn(&str) + Send + Sync + 'static,
    ) -> Inbound {
        Inbound { deliver: Arc::new(deliver), lost: Arc::new(lost) }
    }

    /// A message published to `group`, without a position (custom groups,
    /// layers that keep none, messages of releases before positions).
    pub fn deliver(&self, group: &str, message: Bytes) {
        (self.deliver)(group, None, message);
    }

    /// A change of a stream at `position`, published to `group`. For each
    /// stream, a layer delivers changes in offset order, each once per group.
    pub fn deliver_at(&self, group: &str, position: Position, message: Bytes) {
        (self.deliver)(group, Some(position), message);
    }

    /// Changes of `stream` this process should have received may be lost
    /// and cannot be repaired from history (epoch changed, history
    /// trimmed): the hub ends every subscription of that stream here, with
    /// `CURSOR_EXPIRED`, so that clients resume or refetch.
    pub fn lost(&self, stream: &str) {
        (self.lost)(stream);
    }
}

/// Answers a request another process sent to this one (see
/// [`NodeRequests::request`]); the reply goes back to the sender.
pub type RequestHandler = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Bytes> + Send + Sync>;

/// A channel layer failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// The backend could not be reached, or did not answer in time; the
    /// message was not sent (or the subscription not confirmed).
    #[error("channel layer unavailable: {message}")]
    Unavailable {
        /// What failed (the text clients see when a subscribe is refused).
        message: String,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The layer URL names no layer this build supports.
    #[error("unsupported channel layer URL `{0}`: use `memory://`{redis}", redis = if cfg!(feature = "redis") { " or `redis://host:port/db`" } else { " (Redis needs the `redis` feature)" })]
    Unsupported(String),
}

impl LayerError {
    /// The backend is unavailable: `message` says how.
    pub fn unavailable(message: impl Into<String>) -> LayerError {
        LayerError::Unavailable { message: message.into(), source: None }
    }

    /// The backend failed with `source` while doing `what`.
    pub fn failed(what: &str, source: impl std::error::Error + Send + Sync + 'static) -> LayerError {
        LayerError::Unavailable { message: format!("{what}: {source}"), source: Some(Box::new(source)) }
    }
}

/// The layer a URL names: `memory://` (the default, one process) or, with the
/// `redis` feature, `redis://host:port/db` / `rediss://...`, whose group
/// channels are named `<prefix><group>`.
pub async fn connect(url: &str, prefix: &str) -> Result<Arc<dyn ChannelLayer>, LayerError> {
    let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    match scheme {
        "memory" => Ok(Arc::new(MemoryLayer::new())),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+unix" | "unix" => {
            let options = RedisOptions { prefix: prefix.to_owned(), ..RedisOptions::default() };
            Ok(Arc::new(RedisLayer::connect_with(url, options).await?))
        }
        _ => {
            let _ = prefix;
            Err(LayerError::Unsupported(url.to_owned()))
        }
    }
}

/// Carries messages to the processes that listen to a group.
#[async_trait::async_trait]
pub trait ChannelLayer: Send + Sync + 'static {
    /// Registers where this process receives messages. Called once, by the hub.
    fn start(&self, inbound: Inbound);
    /// Sends `message` to every process listening to `group`.
    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError>;
    /// Sends `message` to each of `groups` (one publish per group). Layers
    /// that can batch (Redis pipelines them) override this. Used for
    /// messages that are not changes (custom groups).
    async fn publish_all(&self, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        let mut outcome = Ok(());
        for group in groups {
            if let Err(error) = self.publish(group, message.clone()).await {
                outcome = Err(error);
            }
        }
        outcome
    }
    /// Sends the change `message` of `stream` to each of `groups`, at the
    /// stream's next position, and keeps it in the stream's history.
    ///
    /// A layer that keeps positions assigns the offset where every process
    /// agrees (the in-memory layer under the stream's lock, the Redis layer
    /// in one script with the publishes) and delivers with
    /// [`Inbound::deliver_at`]. The default keeps none: [`ChannelLayer::publish_all`].
    async fn publish_change(&self, stream: &str, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        let _ = stream;
        self.publish_all(groups, message).await
    }
    /// As [`ChannelLayer::publish_change`], for a change captured from the
    /// database's log at `source`: a layer that keeps positions publishes
    /// it only if `source` is after the last captured change it published
    /// on `stream` (a transaction sent again after a capture restart is
    /// recognised and dropped). The default publishes it.
    async fn publish_captured(
        &self,
        stream: &str,
        groups: &[String],
        message: Bytes,
        source: LogPosition,
    ) -> Result<(), LayerError> {
        let _ = source;
        self.publish_change(stream, groups, message).await
    }
    /// The changes of `stream` after `after`, as kept by the layer's
    /// history, and the stream's head. Expired when `after` is of another
    /// epoch, older than what the history keeps, or ahead of the head (the
    /// layer then moves the stream to a new epoch). The default:
    /// [`History::Unsupported`].
    async fn history(&self, stream: &str, after: Position) -> Result<History, LayerError> {
        let _ = (stream, after);
        Ok(History::Unsupported)
    }
    /// This process now has members in `group`.
    ///
    /// The hub calls `listen` and `unlisten` while it holds the lock of the
    /// membership change that caused them, so the layer sees them for each
    /// group in exactly the order membership changed, whatever task or
    /// `Drop` caused them. They must therefore never block: record the wish
    /// and apply it from a task of the layer's own (the Redis layer
    /// reconciles the broker with the latest wish, so a stale unlisten can
    /// never overtake a later listen).
    fn listen(&self, group: &str);
    /// This process no longer has members in `group` (same rules as
    /// [`ChannelLayer::listen`]).
    fn unlisten(&self, group: &str);
    /// Resolves once messages published to `group` from now on reach this
    /// process: for a layer that links processes, once the broker has
    /// acknowledged this process's subscription on its current connection.
    /// Resolves at once when `group` is no longer listened to. Fails when
    /// that takes longer than the layer's documented bound (for example
    /// while the broker is unreachable). The hub awaits it for every
    /// subscription it adds, first member of its group or not, before the
    /// subscription is confirmed to the client. The default (a layer in one
    /// process) is always ready.
    async fn ready(&self, group: &str) -> Result<(), LayerError> {
        let _ = group;
        Ok(())
    }

    /// Stops the layer's own work once its hub has stopped
    /// ([`crate::Hub::stopped`], which bounds it by
    /// [`crate::Config::stop_timeout`]): sends what still waits to be
    /// published and ends the layer's tasks. A layer shared by several hubs
    /// stops for all of them. The default does nothing.
    async fn stop(&self) {}

    /// What the hub's metrics report of this layer, read at each scrape
    /// (`graphex::metrics_router`). The default reports nothing.
    fn metrics(&self) -> LayerMetrics {
        LayerMetrics::default()
    }

    /// The node-to-node requests this layer carries, if it links processes.
    fn requests(&self) -> Option<&dyn NodeRequests> {
        None
    }
}

/// What a layer reports to its hub's metrics ([`ChannelLayer::metrics`]):
/// counters since it started and values now. `None`: the layer does not
/// have that value (no series is exported for it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerMetrics {
    /// Connections to the backend established again after a loss.
    pub reconnects: u64,
    /// Messages the backend refused or did not take in time.
    pub publish_failures: u64,
    /// Changes delivered from history to repair a gap (after a reconnection).
    pub gap_repairs: u64,
    /// Streams declared lost: a gap history could not repair.
    pub lost: u64,
    /// Changes kept in history for resuming, over every stream, where the
    /// layer keeps them in this process.
    pub history: Option<u64>,
    /// Whether the layer is connected to its backend, where it has one.
    pub connected: Option<bool>,
}

/// Largest body of a node request ([`NodeRequests::request`]): 64 KiB. A
/// layer refuses to send a larger one and drops a larger one it receives.
pub const MAX_NODE_REQUEST: usize = 64 * 1024;

/// Largest body of a reply to a node request: 16 KiB (the answer to a
/// forwarded subscribe is a few hundred bytes). A [`RequestHandler`] must
/// answer within it; a layer neither sends nor accepts a larger reply.
pub const MAX_NODE_REPLY: usize = 16 * 1024;

/// Requests from one process to another (a subscribe sent to the process
/// that holds the socket), for layers that link processes.
///
/// Bodies are bounded: at most [`MAX_NODE_REQUEST`] bytes for a request and
/// [`MAX_NODE_REPLY`] for its reply.
#[async_trait::async_trait]
pub trait NodeRequests: Send + Sync {
    /// Makes this process answer the requests sent to `node` (its hub's
    /// node id) with `handler`.
    fn serve_requests(&self, node: &str, handler: RequestHandler);
    /// Sends `body` to the process whose node id is `node` and returns its
    /// reply, or `None` when no process answers for `node`. Fails without
    /// sending when `body` is longer than [`MAX_NODE_REQUEST`].
    async fn request(&self, node: &str, body: Bytes) -> Result<Option<Bytes>, LayerError>;
}

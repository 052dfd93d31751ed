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

/// Where a layer delivers messages for the groups this process listens to.
pub type Inbound = Arc<dyn Fn(&str, Bytes) + Send + Sync>;

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
    /// that can batch (Redis pipelines them) override this.
    async fn publish_all(&self, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        let mut outcome = Ok(());
        for group in groups {
            if let Err(error) = self.publish(group, message.clone()).await {
                outcome = Err(error);
            }
        }
        outcome
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
    /// The node-to-node requests this layer carries, if it links processes.
    fn requests(&self) -> Option<&dyn NodeRequests> {
        None
    }
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

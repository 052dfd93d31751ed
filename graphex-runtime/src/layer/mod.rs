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

pub mod memory;

pub use memory::MemoryLayer;

/// Where a layer delivers messages for the groups this process listens to.
pub type Inbound = Arc<dyn Fn(&str, Bytes) + Send + Sync>;

/// A channel layer failure.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The backend could not be reached; the message was not sent.
    #[error("channel layer unavailable: {0}")]
    Unavailable(String),
}

/// Carries messages to the processes that listen to a group.
#[async_trait::async_trait]
pub trait ChannelLayer: Send + Sync + 'static {
    /// Registers where this process receives messages. Called once, by the hub.
    fn start(&self, inbound: Inbound);
    /// Sends `message` to every process listening to `group`.
    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError>;
    /// This process now has members in `group`.
    async fn listen(&self, group: &str) -> Result<(), LayerError>;
    /// This process no longer has members in `group`.
    async fn unlisten(&self, group: &str) -> Result<(), LayerError>;
}

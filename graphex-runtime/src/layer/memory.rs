//! The in-process layer: the default, for one server process.

use std::sync::OnceLock;

use bytes::Bytes;

use super::{ChannelLayer, Inbound, LayerError};

/// Delivers every publish straight to this process's hub, in the
/// publisher's task. The hub drops messages for groups without members, so
/// listening needs no bookkeeping here.
#[derive(Default)]
pub struct MemoryLayer {
    inbound: OnceLock<Inbound>,
}

impl std::fmt::Debug for MemoryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLayer").field("started", &self.inbound.get().is_some()).finish()
    }
}

impl MemoryLayer {
    /// A new in-memory layer.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl ChannelLayer for MemoryLayer {
    fn start(&self, inbound: Inbound) {
        let _ = self.inbound.set(inbound);
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        if let Some(inbound) = self.inbound.get() {
            inbound(group, message);
        }
        Ok(())
    }

    fn listen(&self, _group: &str) {}

    fn unlisten(&self, _group: &str) {}
}

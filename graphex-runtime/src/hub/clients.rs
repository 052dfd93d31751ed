//! What each client holds in this process: open channels, subscriptions
//! and streaming responses, counted against the per-client caps of
//! [`crate::Config`]. A client is its principal's id when it authenticated,
//! else its remote address (behind a trusted proxy, the forwarded one);
//! a client the transport could not place (no principal, no address) is
//! not counted.
//!
//! Counts are per process: a client spread over several processes of a
//! Redis deployment may hold the cap in each.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use std::sync::atomic::Ordering;

use super::{ChannelError, Hub};
use crate::model::Principal;

/// The remote address a request or connection came from (the forwarded
/// one behind a trusted proxy): request data the transport adds, which
/// the native subscribe reads to count an anonymous client.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddress(pub(crate) IpAddr);

/// Who holds a resource: `p:<principal id>` or `a:<address>`.
pub(crate) type ClientKey = Arc<str>;

/// The client a request or connection counts as.
pub(crate) fn client_key(principal: Option<&Principal>, address: Option<IpAddr>) -> Option<ClientKey> {
    match (principal, address) {
        (Some(principal), _) => Some(Arc::from(format!("p:{}", principal.id))),
        (None, Some(address)) => Some(Arc::from(format!("a:{}", canonical(address)))),
        (None, None) => None,
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

/// A counted resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resource {
    Channels,
    Subscriptions,
    Streams,
}

impl Resource {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Resource::Channels => "open channels",
            Resource::Subscriptions => "subscriptions",
            Resource::Streams => "streaming responses",
        }
    }
}

#[derive(Default)]
struct Usage {
    channels: usize,
    subscriptions: usize,
    streams: usize,
}

impl Usage {
    fn of(&mut self, resource: Resource) -> &mut usize {
        match resource {
            Resource::Channels => &mut self.channels,
            Resource::Subscriptions => &mut self.subscriptions,
            Resource::Streams => &mut self.streams,
        }
    }
}

/// Per-client usage of one hub. Only clients holding something have an
/// entry, so the map is bounded by what is open.
#[derive(Default)]
pub(crate) struct Clients {
    usage: Mutex<HashMap<ClientKey, Usage>>,
}

impl Clients {
    /// Takes `n` of `resource` for `client`, unless that passes `limit`.
    pub(crate) fn take(&self, client: &ClientKey, resource: Resource, n: usize, limit: usize) -> bool {
        if n == 0 {
            return true;
        }
        let mut usage = self.usage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = usage.entry(client.clone()).or_default();
        let count = held.of(resource);
        if count.saturating_add(n) > limit {
            if held.channels == 0 && held.subscriptions == 0 && held.streams == 0 {
                usage.remove(client);
            }
            return false;
        }
        *count += n;
        true
    }

    /// Gives back `n` of `resource`.
    pub(crate) fn release(&self, client: &ClientKey, resource: Resource, n: usize) {
        if n == 0 {
            return;
        }
        let mut usage = self.usage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(held) = usage.get_mut(client) else { return };
        let count = held.of(resource);
        *count = count.saturating_sub(n);
        if held.channels == 0 && held.subscriptions == 0 && held.streams == 0 {
            usage.remove(client);
        }
    }

    /// Whether `client` holds `limit` or more of `resource` already.
    pub(crate) fn full(&self, client: &str, resource: Resource, limit: usize) -> bool {
        let mut usage = self.usage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        usage.get_mut(client).is_some_and(|held| *held.of(resource) >= limit)
    }

    /// How much of `resource` `client` holds.
    #[cfg(test)]
    pub(crate) fn held(&self, client: &str, resource: Resource) -> usize {
        let mut usage = self.usage.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        usage.get_mut(client).map(|held| *held.of(resource)).unwrap_or(0)
    }

    /// Clients holding anything.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.usage.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

impl Hub {
    /// Takes `n` of `resource` for `client` (nothing when the client is
    /// not counted), or refuses at its per-client cap.
    pub(crate) fn take(&self, client: Option<&ClientKey>, resource: Resource, n: usize) -> Result<(), ChannelError> {
        let Some(client) = client else { return Ok(()) };
        let limit = self.limit_of(resource);
        if self.inner.clients.take(client, resource, n, limit) {
            Ok(())
        } else {
            self.inner.stats.client_limits.fetch_add(1, Ordering::Relaxed);
            Err(ChannelError::ClientLimit { what: resource.name(), limit })
        }
    }

    /// The refusal [`Hub::take`] would answer for one more `resource` now,
    /// without taking it: lets a transport refuse before doing costly work
    /// (a WebSocket handshake). The take itself still decides.
    pub(crate) fn would_refuse(&self, client: Option<&ClientKey>, resource: Resource) -> Option<ChannelError> {
        let client = client?;
        let limit = self.limit_of(resource);
        self.inner.clients.full(client, resource, limit).then(|| {
            self.inner.stats.client_limits.fetch_add(1, Ordering::Relaxed);
            ChannelError::ClientLimit { what: resource.name(), limit }
        })
    }

    fn limit_of(&self, resource: Resource) -> usize {
        let config = &self.inner.config;
        match resource {
            Resource::Channels => config.max_channels_per_client,
            Resource::Subscriptions => config.max_subscriptions_per_client,
            Resource::Streams => config.max_streams_per_client,
        }
    }

    /// Gives back what [`Hub::take`] took.
    pub(crate) fn release(&self, client: Option<&ClientKey>, resource: Resource, n: usize) {
        if let Some(client) = client {
            self.inner.clients.release(client, resource, n);
        }
    }
}

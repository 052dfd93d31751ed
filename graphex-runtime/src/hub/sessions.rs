//! Who may be ended by principal: every connection or stream a principal's
//! token opened (a two-channel socket, a standard-protocol connection, an
//! SSE or multipart response) is registered here for as long as it lives,
//! so [`crate::Hub::revoke`] can end them all at once.
//!
//! A map of principal id -> registrations under one short synchronous lock;
//! a registration is removed by its guard's `Drop`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;

use super::{Channel, CloseReason, Hub};

/// How a registration is ended.
enum Ender {
    /// A two-channel socket: its channel closes with [`CloseReason::Revoked`]
    /// and the socket sends that reason's close code.
    Channel(Weak<Channel>),
    /// Anything else: the connection loop or the response watches the token.
    Token(CancellationToken),
}

/// The registrations of every principal.
#[derive(Default)]
pub(super) struct Sessions {
    by_principal: Mutex<HashMap<String, Vec<(u64, Ender)>>>,
    next: AtomicU64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<(u64, Ender)>>> {
        self.by_principal.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn add(&self, principal: &str, ender: Ender) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().entry(principal.to_owned()).or_default().push((id, ender));
        id
    }

    fn remove(&self, principal: &str, id: u64) {
        let mut sessions = self.lock();
        if let Some(list) = sessions.get_mut(principal) {
            list.retain(|(existing, _)| *existing != id);
            if list.is_empty() {
                sessions.remove(principal);
            }
        }
    }

    /// Ends every registration of `principal` here; returns how many.
    pub(super) fn revoke(&self, principal: &str) -> usize {
        // Taken out under the lock, ended after it: ending wakes tasks.
        let ended = self.lock().remove(principal).unwrap_or_default();
        for (_, ender) in &ended {
            match ender {
                Ender::Channel(channel) => {
                    if let Some(channel) = channel.upgrade() {
                        channel.close(CloseReason::Revoked);
                    }
                }
                Ender::Token(token) => token.cancel(),
            }
        }
        ended.len()
    }

    /// Number of registrations (connections and streams of principals).
    pub(super) fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}

/// A registration, removed when dropped.
pub(crate) struct Session {
    hub: Hub,
    principal: String,
    id: u64,
    /// Cancelled by a revocation (`None` for a two-channel socket: its
    /// channel is closed instead).
    revoked: Option<CancellationToken>,
}

impl Session {
    /// Cancelled when the principal is revoked.
    pub(crate) fn revoked(&self) -> Option<&CancellationToken> {
        self.revoked.as_ref()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("principal", &self.principal).field("id", &self.id).finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.hub.inner.sessions.remove(&self.principal, self.id);
    }
}

impl Hub {
    /// Registers a two-channel socket's channel, owned by `principal`: a
    /// revocation closes it with [`CloseReason::Revoked`].
    pub(crate) fn session_of_channel(&self, principal: &str, channel: &Arc<Channel>) -> Session {
        let id = self.inner.sessions.add(principal, Ender::Channel(Arc::downgrade(channel)));
        Session { hub: self.clone(), principal: principal.to_owned(), id, revoked: None }
    }

    /// Registers a connection or stream of `principal`: a revocation
    /// cancels [`Session::revoked`].
    pub(crate) fn session(&self, principal: &str) -> Session {
        let token = CancellationToken::new();
        let id = self.inner.sessions.add(principal, Ender::Token(token.clone()));
        Session { hub: self.clone(), principal: principal.to_owned(), id, revoked: Some(token) }
    }

    /// Connections and streams opened with a principal's token, open now
    /// in this process.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Ends every subscription of the principal `principal_id`, in this
    /// process at once and, through the channel layer, in every process
    /// behind it: each two-channel socket, standard-protocol connection and
    /// SSE or multipart response its token opened ends as it does when the
    /// token expires, with the reason `revoked` (two-channel: close 4403;
    /// `graphql-transport-ws`: close 4403 `Forbidden: revoked`; legacy
    /// `graphql-ws`, SSE and multipart: an error result, then complete).
    ///
    /// It does not stop the principal from connecting again: the
    /// application's [`crate::Authenticator`] must stop accepting the token
    /// first. Fails only when the layer could not publish the revocation
    /// to the other processes (this process's connections are ended anyway).
    pub async fn revoke(&self, principal_id: &str) -> Result<(), crate::layer::LayerError> {
        self.revoke_here(principal_id);
        let message = bytes::Bytes::copy_from_slice(principal_id.as_bytes());
        self.inner.layer.publish(crate::change::group::REVOKE, message).await
    }

    /// Ends the principal's registrations in this process.
    pub(super) fn revoke_here(&self, principal_id: &str) {
        let ended = self.inner.sessions.revoke(principal_id);
        if ended > 0 {
            self.inner.stats.revoked.fetch_add(ended as u64, Ordering::Relaxed);
            tracing::debug!(principal = principal_id, ended, "revoked");
        }
    }
}

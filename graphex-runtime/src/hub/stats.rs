//! Counters of a hub, and the snapshot an operator or a test reads.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a hub counted since it started: a snapshot ([`crate::Hub::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Changes published (one per change, whatever the number of groups).
    pub published: u64,
    /// Layer messages received for groups with local members.
    pub received: u64,
    /// Deliveries queued to channels.
    pub delivered: u64,
    /// Channels closed as slow consumers.
    pub slow_consumers: u64,
    /// Changes that failed to publish (counted once per change) or decode.
    pub dropped: u64,
    /// Publishes that waited for lagging sockets ([`crate::Config::publish_backpressure`]).
    pub backpressure_waits: u64,
    /// Layer messages of a version this process cannot read (a newer
    /// release's, during a rolling deploy): counted, logged, not delivered.
    pub unreadable: u64,
    /// Refusals at a per-client cap ([`crate::Config::max_channels_per_client`] and the like).
    pub client_limits: u64,
    /// Channels closed because changes of their stream may have been lost
    /// and history could not repair the gap (their clients get `CURSOR_EXPIRED`).
    pub expired: u64,
    /// Subscriptions resumed after a cursor (`after`).
    pub resumed: u64,
    /// Changes replayed from history to resumed subscriptions.
    pub replayed: u64,
    /// Native subscribes that joined a shared execution already running
    /// ([`crate::Config::share_executions`]).
    pub shared_joins: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) published: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) backpressure_waits: AtomicU64,
    pub(crate) client_limits: AtomicU64,
    pub(crate) unreadable: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) shared_joins: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            published: read(&self.published),
            received: read(&self.received),
            delivered: read(&self.delivered),
            slow_consumers: read(&self.slow_consumers),
            dropped: read(&self.dropped),
            backpressure_waits: read(&self.backpressure_waits),
            client_limits: read(&self.client_limits),
            unreadable: read(&self.unreadable),
            expired: read(&self.expired),
            resumed: read(&self.resumed),
            replayed: read(&self.replayed),
            shared_joins: read(&self.shared_joins),
        }
    }
}

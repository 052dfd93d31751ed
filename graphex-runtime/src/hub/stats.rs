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
    /// Connections and streams ended because the token that opened them
    /// expired ([`crate::Authenticator::authenticate_with_expiry`]).
    pub tokens_expired: u64,
    /// Connections and streams ended by [`crate::Hub::revoke`] (here, or
    /// in another process behind the layer).
    pub revoked: u64,
}

/// The live counters behind [`Stats`], and what only the metrics read
/// (`crate::metrics`): open connections by transport, drops by reason and
/// the two latency histograms.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections open now, by [`Transport`] (index `Transport as usize`).
    pub(crate) open: [AtomicU64; Transport::ALL.len()],
    /// Channels a change's group reached whose subscriptions' filters
    /// refused it before it was queued (added once per dispatch).
    pub(crate) filtered: AtomicU64,
    /// Deliveries refused by a full queue (the channel closes as a slow consumer).
    pub(crate) overflowed: AtomicU64,
    /// Changes the layer failed to publish (part of `dropped`).
    pub(crate) publish_failures: AtomicU64,
    /// From publish to queue, observed once per change a dispatch of this
    /// process queued, where the change was published in this process.
    pub(crate) publish_to_queue: Latency,
    /// From queue to socket: the oldest delivery of each batch a
    /// two-channel socket wrote, observed once per write.
    pub(crate) queue_to_socket: Latency,
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
    pub(crate) tokens_expired: AtomicU64,
    pub(crate) revoked: AtomicU64,
}

impl Counters {
    /// Counts a connection of `transport` open until the guard drops.
    pub(crate) fn connected(self: &std::sync::Arc<Self>, transport: Transport) -> Connected {
        self.open[transport as usize].fetch_add(1, Ordering::Relaxed);
        Connected { counters: self.clone(), transport }
    }

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
            tokens_expired: read(&self.tokens_expired),
            revoked: read(&self.revoked),
        }
    }
}

/// How a client is connected: the `protocol` label of
/// `graphex_connections_open`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// graphex's two-channel WebSocket.
    TwoChannel,
    /// graphql-transport-ws (graphql-ws's current protocol).
    GraphqlTransportWs,
    /// The legacy graphql-ws (subscriptions-transport-ws) protocol.
    GraphqlWs,
    /// An HTTP subscription answered with server-sent events.
    Sse,
    /// An HTTP subscription answered with `multipart/mixed`.
    Multipart,
}

impl Transport {
    /// Every transport, in `open`'s order.
    pub(crate) const ALL: [Transport; 5] = [
        Transport::TwoChannel,
        Transport::GraphqlTransportWs,
        Transport::GraphqlWs,
        Transport::Sse,
        Transport::Multipart,
    ];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Transport::TwoChannel => "two-channel",
            Transport::GraphqlTransportWs => "graphql-transport-ws",
            Transport::GraphqlWs => "graphql-ws",
            Transport::Sse => "sse",
            Transport::Multipart => "multipart",
        }
    }
}

/// An open connection, counted in [`Counters::open`] until dropped.
pub(crate) struct Connected {
    counters: std::sync::Arc<Counters>,
    transport: Transport,
}

impl Drop for Connected {
    fn drop(&mut self) {
        self.counters.open[self.transport as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A latency histogram in seconds, observed at most once per change
/// dispatched or per socket write (never per delivery). Lock-free, and
/// striped by thread: an observation adds to its bucket and to the sum of
/// its thread's stripe, whose cache lines no other runtime thread writes
/// while there are no more threads than stripes (prometheus-client's
/// histogram took a mutex per observation; one shared set of atomics
/// still moved its cache lines between the cores at every socket write).
#[derive(Debug, Default)]
pub(crate) struct Latency {
    stripes: [Stripe; LATENCY_STRIPES],
}

/// Stripes of a [`Latency`]: threads beyond that share them.
const LATENCY_STRIPES: usize = 8;

/// One thread's share of a [`Latency`]: 16 counters, two cache lines of
/// their own (aligned to 128 bytes, as adjacent-line prefetching pairs them).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    /// Observations per bucket of [`LATENCY_BUCKETS`], then above the last.
    buckets: [std::sync::atomic::AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// The sum of the observations, in nanoseconds.
    sum_nanos: std::sync::atomic::AtomicU64,
}

/// This thread's stripe: threads take them in turn as they first observe.
fn stripe_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % LATENCY_STRIPES;
    }
    STRIPE.with(|stripe| *stripe)
}

/// Bucket bounds in seconds: 100 µs to 10 s, fine where pacing and
/// backpressure act (1-10 ms).
pub(crate) const LATENCY_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];

impl Latency {
    pub(crate) fn observe(&self, elapsed: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BUCKETS.len());
        let stripe = &self.stripes[stripe_index()];
        stripe.buckets[bucket].fetch_add(1, Relaxed);
        stripe.sum_nanos.fetch_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's own count with its
    /// upper bound (the last one +Inf), as OpenMetrics encoders take them.
    /// The count is the buckets' total, so the two always agree.
    pub(crate) fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        use std::sync::atomic::Ordering::Relaxed;
        let bounds = LATENCY_BUCKETS.iter().copied().chain(std::iter::once(f64::INFINITY));
        let buckets: Vec<(f64, u64)> = bounds
            .enumerate()
            .map(|(index, bound)| (bound, self.stripes.iter().map(|stripe| stripe.buckets[index].load(Relaxed)).sum()))
            .collect();
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum_nanos: u64 = self.stripes.iter().map(|stripe| stripe.sum_nanos.load(Relaxed)).sum();
        (sum_nanos as f64 / 1e9, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn observations_of_every_thread_count_once_in_one_snapshot() {
        let latency = std::sync::Arc::new(Latency::default());
        // More threads than stripes: some share one.
        let threads: Vec<_> = (0..LATENCY_STRIPES + 3)
            .map(|_| {
                let latency = latency.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        latency.observe(Duration::from_micros(300));
                        latency.observe(Duration::from_secs(20));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let threads = (LATENCY_STRIPES + 3) as u64;
        let (sum, count, buckets) = latency.snapshot();
        assert_eq!(count, threads * 200);
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(buckets[2], (0.0005, threads * 100), "300 µs is at most 500 µs");
        assert_eq!(buckets[LATENCY_BUCKETS.len()], (f64::INFINITY, threads * 100), "20 s is above the last bound");
        assert!((sum - threads as f64 * 100.0 * 20.0003).abs() < 1e-6);
        assert!(
            buckets.iter().enumerate().all(|(index, (_, n))| *n == 0 || index == 2 || index == LATENCY_BUCKETS.len())
        );
    }

    #[test]
    fn a_stripe_is_two_cache_lines_of_its_own() {
        assert_eq!(std::mem::size_of::<Stripe>(), 128);
        assert_eq!(std::mem::align_of::<Stripe>(), 128);
    }
}

//! Publishing a change, and fanning out what the layer brings in to the
//! local channels of its group: filters decided before queueing, slow
//! consumers closed, lagging sockets noted for the local publisher to wait
//! on (backpressure).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::channel::Queue;
use super::{CloseReason, Delivery, Dispatched, Hub, LAGGING_KEPT, RECENT_KEPT};
use crate::change::codec::{Change, DecodeError, Event, Handed};
use crate::layer::Position;

/// A change dispatched here lately, with the message it was decoded from.
pub(super) struct Recent {
    message: Bytes,
    event: Arc<Event>,
}

/// The change being published in this task, for a layer that dispatches
/// in the publisher's task (in memory).
struct Publishing {
    /// When it was handed to the layer; taken by the first dispatch that queues it.
    at: Cell<Option<tokio::time::Instant>>,
    /// The change and its message as the layer was given it: the first
    /// dispatch of that very buffer takes the change instead of decoding
    /// the message (the buffer kept here cannot be reused meanwhile).
    change: Cell<Option<(Bytes, Handed)>>,
}

tokio::task_local! {
    static PUBLISHING: Publishing;
}

/// The change published in this task as `message`, if this is that buffer.
fn published_here(message: &Bytes) -> Option<Handed> {
    let take = |publishing: &Publishing| {
        let (kept, change) = publishing.change.take()?;
        if kept.as_ptr() == message.as_ptr() && kept.len() == message.len() {
            return Some(change);
        }
        publishing.change.set(Some((kept, change)));
        None
    };
    PUBLISHING.try_with(take).ok().flatten()
}

impl Hub {
    /// Publishes a change to each of its groups, through the layer; then,
    /// if local sockets are close to overflowing, waits for them a bounded
    /// time ([`crate::Config::publish_backpressure`]).
    pub(crate) async fn publish(&self, groups: &[String], message: Bytes) {
        self.publish_from(groups, message, None, None).await;
    }

    /// As [`Hub::publish`], with the change `message` encodes, if at hand:
    /// a layer that dispatches in this task then does not decode it again.
    pub(crate) async fn publish_change(&self, groups: &[String], message: Bytes, change: Option<Handed>) {
        self.publish_from(groups, message, change, None).await;
    }

    /// As [`Hub::publish`], for a change captured from the database's log
    /// at `source` (a resent one is dropped by a layer that keeps positions).
    #[cfg(feature = "postgres-capture")]
    pub(crate) async fn publish_captured(
        &self,
        groups: &[String],
        message: Bytes,
        change: Option<Handed>,
        source: crate::layer::LogPosition,
    ) {
        self.publish_from(groups, message, change, Some(source)).await;
    }

    async fn publish_from(
        &self,
        groups: &[String],
        message: Bytes,
        change: Option<Handed>,
        source: Option<crate::layer::LogPosition>,
    ) {
        self.inner.stats.published.fetch_add(1, Ordering::Relaxed);
        let stream = groups.first().map_or("", |group| crate::change::group::stream_of(group));
        let layer = &self.inner.layer;
        let publishing = Publishing {
            at: Cell::new(Some(tokio::time::Instant::now())),
            change: Cell::new(change.map(|change| (message.clone(), change))),
        };
        let publish = async {
            match source {
                Some(source) => layer.publish_captured(stream, groups, message, source).await,
                None => layer.publish_change(stream, groups, message).await,
            }
        };
        // A layer that delivers inline (in memory) dispatches in this task:
        // the first dispatch that queues the change observes publish-to-queue.
        let published = PUBLISHING.scope(publishing, publish).await;
        if let Err(error) = published {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.inner.stats.publish_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(?groups, %error, "change not published");
        }
        self.relieve().await;
    }

    /// Backpressure: if sockets of this process are close to overflowing
    /// (a queue seven eighths full), waits until they are back to three
    /// quarters, at most [`Config::publish_backpressure`], so that
    /// producers faster than the fan-out slow down instead of getting
    /// sockets that are merely behind closed as slow consumers. A socket
    /// that stopped reading costs each publish at most that bound until
    /// its queue overflows.
    pub(super) async fn relieve(&self) {
        let Some(bound) = self.inner.config.publish_backpressure else { return };
        let lagging = {
            // Never waits: a publisher holding the list is taking care of it.
            let Ok(mut lagging) = self.inner.lagging.try_lock() else { return };
            if lagging.is_empty() {
                return;
            }
            std::mem::take(&mut *lagging)
        };
        self.inner.stats.backpressure_waits.fetch_add(1, Ordering::Relaxed);
        let until = tokio::time::Instant::now() + bound;
        for channel in lagging {
            channel.relief(until).await;
        }
    }

    /// The shared event of a change: the one already made for another
    /// group of the same change, so that its frames are rendered and its
    /// row is read once per process; else a new one. The same buffer at the
    /// same position is the same change without decoding it again (a
    /// [`Bytes`] is immutable, and the one kept here keeps its memory from
    /// being reused); else the same nonce and content. Without a position
    /// or a nonce, two equal messages may be two changes: never shared.
    fn event(&self, message: &Bytes, position: Option<Position>) -> Result<Arc<Event>, DecodeError> {
        let recent = || self.inner.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let same_buffer = |kept: &&Recent| {
            kept.event.position == position
                && kept.message.as_ptr() == message.as_ptr()
                && kept.message.len() == message.len()
        };
        if position.is_some()
            && !message.is_empty()
            && let Some(kept) = recent().iter().find(same_buffer)
        {
            return Ok(kept.event.clone());
        }
        let (change, values_at) = match published_here(message) {
            Some(Handed { change, values_at }) => (change, values_at),
            None => (Change::decode(message)?, None),
        };
        // This process encoded it: the frame takes the values as encoded.
        let new_event = |change: Change| match values_at.and_then(|at| message.get(at)) {
            Some(values_json) => Event::with_values_json(change, position, values_json),
            None => Event::new(change, position),
        };
        if change.nonce != 0 {
            let known = |kept: &&Recent| {
                kept.event.change.nonce == change.nonce
                    && kept.event.position == position
                    && kept.event.change == change
            };
            if let Some(kept) = recent().iter().find(known) {
                return Ok(kept.event.clone());
            }
        } else if position.is_none() {
            return Ok(Arc::new(new_event(change)));
        }
        // Rendered outside the lock; two groups of one change dispatched at
        // once may each make one (nothing is wrong, only shared less).
        let event = Arc::new(new_event(change));
        let mut kept = recent();
        if kept.len() >= RECENT_KEPT {
            kept.pop_front();
        }
        kept.push_back(Recent { message: message.clone(), event: event.clone() });
        Ok(event)
    }

    /// Fans a layer message out to the local members of `group`.
    pub(super) fn dispatch(&self, group: &str, position: Option<Position>, message: Bytes) {
        // A revocation names a principal whose connections end here too.
        if group == crate::change::group::REVOKE {
            if let Ok(principal) = std::str::from_utf8(&message) {
                self.revoke_here(principal);
            }
            return;
        }
        // Custom groups live in their own namespace and carry payloads, not changes.
        if crate::change::group::is_custom(group) {
            return self.inner.custom.dispatch(group, &message, &self.inner.stats);
        }
        let groups = self.inner.groups.members();
        let Some((name, members)) = groups.get_key_value(group) else { return };
        self.inner.stats.received.fetch_add(1, Ordering::Relaxed);
        let event = match self.event(&message, position) {
            Ok(event) => event,
            Err(error @ DecodeError::UnknownVersion(_)) => {
                self.inner.stats.unreadable.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%group, %error, "change of a newer release not delivered");
                return;
            }
            Err(error) => {
                self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%group, %error, "undecodable message dropped");
                return;
            }
        };
        let queued_at = tokio::time::Instant::now();
        // The group's shared name: subscriptions on it match it by pointer.
        let dispatched = Arc::new(Dispatched { group: name.clone(), event, queued_at });
        let (group, event) = (&dispatched.group, &dispatched.event);
        let mut delivered = 0;
        let mut filtered = 0;
        let mut lagging = Vec::new();
        let mut overflowed = Vec::new();
        let backpressure = self.inner.config.publish_backpressure.is_some();
        for channel in members.values() {
            let delivery = match channel.may_take(group, event) {
                Queue::Skip => {
                    filtered += 1;
                    continue;
                }
                Queue::Decide => Delivery::Change(dispatched.clone()),
                Queue::Take(version) => Delivery::Taken(dispatched.clone(), version),
            };
            match channel.tx.try_send(delivery) {
                Ok(()) => {
                    channel.sent.fetch_add(1, Ordering::AcqRel);
                    delivered += 1;
                    if channel.past_half() {
                        channel.press();
                    }
                    if backpressure && channel.near_overflow() {
                        lagging.push(channel.clone());
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.inner.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                    if channel.close_reason().is_none() {
                        self.inner.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(channel = %channel.id, "outgoing queue full: closing slow consumer");
                    }
                    channel.close(CloseReason::SlowConsumer);
                    overflowed.push(channel.clone());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.inner.stats.delivered.fetch_add(delivered, Ordering::Relaxed);
        if filtered > 0 {
            self.inner.stats.filtered.fetch_add(filtered, Ordering::Relaxed);
        }
        if delivered > 0
            && let Ok(Some(published)) = PUBLISHING.try_with(|publishing| publishing.at.take())
        {
            self.inner.stats.publish_to_queue.observe(queued_at.saturating_duration_since(published));
        }
        // A slow consumer leaves its groups now, not when its socket or
        // stream gets around to it: an SSE response whose client stopped
        // reading is not polled again until the connection dies, and would
        // keep its memberships (and its client's count) until then. The
        // membership lock is released first (leaving takes it to write).
        drop(groups);
        for channel in overflowed {
            self.close_channel(&channel);
        }
        if !lagging.is_empty() {
            let mut kept = self.inner.lagging.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for channel in lagging {
                if kept.len() < LAGGING_KEPT && !kept.iter().any(|known| Arc::ptr_eq(known, &channel)) {
                    kept.push(channel);
                }
            }
        }
    }
}

impl Hub {
    /// Changes of `stream` this process should have received may be lost
    /// (the layer could not repair a gap from history): every channel with
    /// a subscription on the stream is closed as expired, so that its
    /// client resumes from its last cursor or refetches, rather than miss
    /// changes silently.
    pub(crate) fn lost(&self, stream: &str) {
        let affected: Vec<Arc<super::Channel>> = {
            let channels = self.inner.channels.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            channels
                .values()
                .filter(|channel| channel.lock().list.iter().any(|subscription| subscription.key.stream == stream))
                .cloned()
                .collect()
        };
        if affected.is_empty() {
            return;
        }
        self.inner.stats.expired.fetch_add(affected.len() as u64, Ordering::Relaxed);
        tracing::warn!(%stream, channels = affected.len(), "changes may be lost: closing the stream's subscribers (cursor expired)");
        for channel in affected {
            channel.close(CloseReason::Expired);
            self.close_channel(&channel);
        }
    }
}

impl Hub {
    /// A change kept in history, decoded for a replay; `None` (counted and
    /// logged like a live message) when this process cannot read it.
    /// Clients resuming after the same outage share the decode (and the
    /// frames rendered on it) of each change.
    pub(crate) fn decode_kept(&self, stream: &str, message: &[u8], position: Position) -> Option<Arc<Event>> {
        let replayed = || self.inner.replayed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(event) = replayed().events.get(&position)
            && event.change.stream == stream
        {
            return Some(event.clone());
        }
        match Change::decode(message) {
            Ok(change) => {
                let event = Arc::new(Event::new(change, Some(position)));
                let mut kept = replayed();
                if kept.events.insert(position, event.clone()).is_none() {
                    kept.order.push_back(position);
                }
                if kept.order.len() > super::REPLAYED_KEPT
                    && let Some(oldest) = kept.order.pop_front()
                {
                    kept.events.remove(&oldest);
                }
                Some(event)
            }
            Err(error) => {
                let counter = match error {
                    DecodeError::UnknownVersion(_) => &self.inner.stats.unreadable,
                    DecodeError::Malformed(_) => &self.inner.stats.dropped,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "change kept in history not replayed");
                None
            }
        }
    }

    /// Counts a resumed subscribe and the deliveries its replay makes.
    pub(crate) fn count_resumed(&self, replayed: usize) {
        self.inner.stats.resumed.fetch_add(1, Ordering::Relaxed);
        self.inner.stats.replayed.fetch_add(replayed as u64, Ordering::Relaxed);
    }

    /// Queues `delivery` on `channel`; a full queue closes it as a slow consumer.
    pub(crate) fn queue(&self, channel: &Arc<super::Channel>, delivery: Delivery) {
        match channel.tx.try_send(delivery) {
            Ok(()) => {
                channel.sent.fetch_add(1, Ordering::AcqRel);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inner.stats.overflowed.fetch_add(1, Ordering::Relaxed);
                self.inner.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(channel = %channel.id, "outgoing queue full: closing slow consumer");
                channel.close(CloseReason::SlowConsumer);
                self.close_channel(channel);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

//! A channel: one connection's bounded queue of deliveries, its queue
//! levels (pacing, backpressure, overflow), and its subscriptions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use serde_json::Value as Json;
use tokio::sync::mpsc;

use crate::change::codec::{Event, Fetched};
use crate::layer::LayerError;
use crate::model::Action;
use crate::subscribe::filter::Filter;
use crate::subscribe::resume::{Admit, Resume};
use crate::subscribe::row::RowFetch;

/// What a channel's queue carries: one pointer (and its tag), so that a
/// queue's block of slots, allocated with every channel, stays small.
#[derive(Clone, Debug)]
pub enum Delivery {
    /// A decoded change, as dispatched to the channels of one group.
    Change(Arc<Dispatched>),
    /// A change that every subscription of the channel on its group takes,
    /// as decided when it was queued, while the channel's subscription list
    /// was at this version: unless it changed since, the socket does not
    /// decide the filters again.
    Taken(Arc<Dispatched>, u32),
    /// The replay of a resumed subscribe, then its switch to live delivery
    /// (`subscribe/resume.rs`).
    Resume(Arc<Resume>),
}

/// A change dispatched to the local channels of one group: one per change
/// and group, shared by the queues of every channel it is queued on.
#[derive(Debug)]
pub struct Dispatched {
    /// The group the change was sent to.
    pub group: Arc<str>,
    /// The change, shared by every group of the change in this process.
    pub event: Arc<Event>,
    /// When the hub queued it: how long it waited tells a socket whether the server is behind.
    pub queued_at: tokio::time::Instant,
}

impl Delivery {
    /// When the hub queued a change (a resume is not timed).
    pub fn queued_at(&self) -> Option<tokio::time::Instant> {
        match self {
            Delivery::Change(dispatched) | Delivery::Taken(dispatched, _) => Some(dispatched.queued_at),
            Delivery::Resume(_) => None,
        }
    }

    /// The change, if this is one.
    pub fn event(&self) -> Option<&Arc<Event>> {
        match self {
            Delivery::Change(dispatched) | Delivery::Taken(dispatched, _) => Some(&dispatched.event),
            Delivery::Resume(_) => None,
        }
    }
}

/// What identifies a subscription for UNSUBSCRIBE: the arguments it was
/// made with. The filters and projection are shared (one allocation) by the
/// subscriptions of one subscribe; equality compares their contents.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionKey {
    /// Stream of the model.
    pub stream: &'static str,
    /// One action (ALL_ACTIONS makes three subscriptions).
    pub action: Action,
    /// Canonical primary key of `id`, if given.
    pub id: Option<Json>,
    /// The client's filters, as given.
    pub filters: Option<Arc<Json>>,
    /// The requested fields, if any: each field once, in the order of its
    /// first occurrence in the request.
    pub projection: Option<Arc<[&'static str]>>,
    /// Two-channel frames carry the change's cursor (asked for with
    /// `cursors: true` or `after`).
    pub cursors: bool,
}

/// One subscription of one channel.
pub struct Subscription {
    /// Its arguments.
    pub key: SubscriptionKey,
    /// The group it receives from: once added to a channel, the group's
    /// shared name, the same allocation as what is dispatched to it.
    pub group: Arc<str>,
    /// Scope and client filters merged, shared by the subscriptions of one subscribe.
    pub filter: Arc<Filter>,
    /// Reads the changed row back when the filter cannot be decided from the
    /// change (id-only models, clauses on other fields than the primary key).
    pub row: Option<RowFetch>,
    /// The replay-to-live handoff of a subscribe resumed after a cursor.
    pub resume: Option<Arc<Resume>>,
    /// Set when the group itself implies the filter: decided from the
    /// change and this (inline, without reading the filter).
    pub implied: Option<Implied>,
}

/// A filter that is one equality clause on the one index field the
/// subscription's value-indexed group is named after
/// (`<stream>-<action>:field=value`, not hashed). A change sent to that
/// group has, at that field, a value whose group encoding is the clause's
/// value's: the same value, unless one of the two is a string and the
/// other is not (a string prints bare in a group name: `"5"` and `5`, or
/// `"null"` and `null`, share one). So the clause holds exactly when the
/// change's value is a string as the clause's is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Implied {
    /// The field's position in the model's values.
    pub field: usize,
    /// The field's name.
    pub name: &'static str,
    /// Whether the clause's value is a string.
    pub string: bool,
}

impl Implied {
    /// The clause on `values`, sent to the group; `None` without the field.
    fn decide(&self, values: &serde_json::Map<String, Json>) -> Option<bool> {
        let actual = crate::subscribe::filter::field_value(values, self.field, self.name)?;
        Some(actual.is_string() == self.string)
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.key)
            .field("group", &self.group)
            .field("row_fetch", &self.row.is_some())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    fn frame(&self, event: &Event) -> Bytes {
        let frame = match &self.key.projection {
            None => event.frame.clone(),
            Some(fields) => event.projected(fields),
        };
        match event.position {
            Some(position) if self.key.cursors => with_cursor(&frame, &crate::subscribe::resume::cursor(position)),
            _ => frame,
        }
    }

    /// What this subscription does with a change of its group.
    fn verdict(&self, event: &Event) -> Verdict<'_> {
        let known = event.known();
        let decided = self.implied.and_then(|implied| implied.decide(known)).or_else(|| self.filter.matches(known));
        match decided {
            Some(true) => Verdict::Take,
            Some(false) => Verdict::Skip,
            // The row is gone: what the change does not carry cannot be decided.
            None if event.change.action == Action::Delete => Verdict::Skip,
            None => match (&self.row, event.fetched()) {
                (None, _) => Verdict::Skip,
                // Another subscription of this process already read the row back.
                (Some(_), Some(fetched)) => self.decide(fetched),
                (Some(fetch), None) => Verdict::Fetch(fetch),
            },
        }
    }

    /// Decides the filter on the row read back for a change: a row that is
    /// gone, or could not be read, matches nothing (as the pk-bounded query
    /// this replaces found nothing).
    fn decide(&self, fetched: &Fetched) -> Verdict<'static> {
        match fetched {
            Fetched::Row(values) if self.filter.matches(values) == Some(true) => Verdict::Take,
            _ => Verdict::Skip,
        }
    }
}

#[cfg(test)]
impl Subscription {
    /// A subscription to `users` on `group` with no filter to decide, for unit tests.
    pub(crate) fn of_users(group: &str, action: Action, filters: Option<Json>) -> Subscription {
        Subscription {
            key: SubscriptionKey {
                stream: "users",
                action,
                id: None,
                filters: filters.map(Arc::new),
                projection: None,
                cursors: false,
            },
            group: Arc::from(group),
            filter: Arc::default(),
            row: None,
            resume: None,
            implied: None,
        }
    }
}

/// `frame` with `"cursor": cursor` added last: `{...,"cursor":"..."}` (a
/// cursor is hex digits, `-` and digits: nothing to escape).
fn with_cursor(frame: &[u8], cursor: &str) -> Bytes {
    let Some(body) = frame.strip_suffix(b"}") else { return Bytes::copy_from_slice(frame) };
    let mut out = Vec::with_capacity(frame.len() + cursor.len() + 12);
    out.extend_from_slice(body);
    out.extend_from_slice(b",\"cursor\":\"");
    out.extend_from_slice(cursor.as_bytes());
    out.extend_from_slice(b"\"}");
    Bytes::from(out)
}

/// Whether a subscription's group is `group`: the same shared name (by
/// pointer, without reading either), else the same text (a replay's groups
/// are not the shared names).
fn same_group(subscription: &Arc<str>, group: &Arc<str>) -> bool {
    Arc::ptr_eq(subscription, group) || **subscription == **group
}

/// A subscription's decision on one change.
enum Verdict<'a> {
    Take,
    Skip,
    /// Decided once the changed row is read back (id-only mode): one read
    /// per change, shared by every subscription of the process.
    Fetch(&'a RowFetch),
}

/// Why a channel was closed by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// Its outgoing queue overflowed.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
    /// The server closed it while going on ([`crate::Hub::disconnect_all`]); the client may reconnect.
    Disconnected,
    /// Changes of a stream it subscribes to may have been lost and history
    /// could not repair the gap: the client resumes from its last cursor
    /// (which then fails with `CURSOR_EXPIRED` if that gap is before it) or
    /// refetches.
    Expired,
    /// The token that opened its connection expired
    /// ([`crate::Authenticator::authenticate_with_expiry`]): the client
    /// reconnects with a fresh token (and resumes with its cursor).
    TokenExpired,
    /// Its principal was revoked ([`crate::Hub::revoke`]).
    Revoked,
}

/// One WebSocket connection's mailbox and subscriptions.
pub struct Channel {
    /// Shared with the hub's map of channels by id (one allocation).
    pub(super) id: Arc<str>,
    pub(super) seq: u64,
    pub(super) owner: Option<String>,
    pub(super) tx: mpsc::Sender<Delivery>,
    pub(super) close_reason: OnceLock<CloseReason>,
    pub(super) subscriptions: Mutex<Subscriptions>,
    /// Woken when `pressed` is set (the queue passed half its capacity):
    /// the waker the channel's socket gave once ([`Channel::wake_on_press`]),
    /// so that a socket holding its write (pacing) writes now, whatever its
    /// timer says. Kept, not taken at each wake: a hold registers nothing.
    pub(super) pressure: OnceLock<std::task::Waker>,
    /// Set when the queue passed half its capacity, until the socket sees
    /// it ([`Channel::take_pressed`]; it also ends the next hold at once,
    /// as a `Notify`'s permit would).
    pub(super) pressed: AtomicBool,
    /// Signalled when a publisher waits for this lagging channel
    /// ([`Hub::publish`]) and its queue is back to three quarters or less,
    /// and when the channel is closed: both a waiting publisher and
    /// [`Channel::closed`] check their condition again when it fires.
    /// (One signal for both: a channel per connection, and a cancellation
    /// token of its own cost every connection about 130 bytes.)
    pub(super) relieved: tokio::sync::Notify,
    /// Woken when the channel is closed, for the task that serves its
    /// two-channel socket ([`Channel::wake_on_close`]: no lock, unlike a
    /// `Notify`'s waiters, at each turn of the socket's loop).
    pub(super) close_waker: AtomicWaker,
    /// Whether a publisher waits on `relieved` (saves a lock per write otherwise).
    pub(super) relief_wanted: AtomicBool,
    /// The client this channel and its subscriptions count against.
    pub(super) client: Option<super::ClientKey>,
    /// Deliveries queued so far.
    pub(super) sent: std::sync::atomic::AtomicU64,
}

/// A channel's subscriptions; `gone` once the channel is closed, after
/// which nothing may be added (a subscribe racing the socket's close).
#[derive(Default)]
pub(super) struct Subscriptions {
    pub(super) list: Vec<Subscription>,
    pub(super) gone: bool,
    /// Changed (wrapping) with every change of `list`, so that a verdict
    /// carried by a queued [`Delivery::Taken`] is used only on the list it
    /// was made on. (A wrap-around while one delivery waits in the queue
    /// would take 2^32 subscribes and unsubscribes meanwhile.)
    pub(super) version: u32,
}

impl Subscriptions {
    /// Marks `list` changed.
    pub(super) fn changed(&mut self) {
        self.version = self.version.wrapping_add(1);
    }
}

/// What the hub does with a change for one channel ([`Channel::may_take`]).
pub(super) enum Queue {
    /// No subscription of the channel takes it: not queued.
    Skip,
    /// Queued; the socket decides.
    Decide,
    /// Queued; every subscription on the group takes it, on this version
    /// of the channel's subscriptions.
    Take(u32),
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel").field("id", &self.id).field("owner", &self.owner).finish_non_exhaustive()
    }
}

impl Channel {
    /// The channel id sent in the handshake.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The principal id that opened the socket, if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// Has a queue passing half its capacity wake `waker` (set once, by
    /// the one task that serves the channel's socket; a second call is
    /// ignored). That task checks [`Channel::take_pressed`] when woken.
    pub(crate) fn wake_on_press(&self, waker: &std::task::Waker) {
        if self.pressure.set(waker.clone()).is_ok() && self.pressed.load(Ordering::Acquire) {
            // Pressed before the waker was there: the wake-up is not lost.
            waker.wake_by_ref();
        }
    }

    /// Whether the queue passed half its capacity since this last said so.
    pub(crate) fn take_pressed(&self) -> bool {
        self.pressed.load(Ordering::Relaxed) && self.pressed.swap(false, Ordering::AcqRel)
    }

    /// Tells a socket holding its write that the queue passed half its
    /// capacity (woken once per time it is pressed, not per delivery).
    pub(super) fn press(&self) {
        if !self.pressed.swap(true, Ordering::AcqRel)
            && let Some(waker) = self.pressure.get()
        {
            waker.wake_by_ref();
        }
    }

    /// Deliveries queued on this channel so far (counted once queued).
    pub(crate) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Resolves once the server has closed this channel
    /// ([`Channel::close_reason`] says why).
    pub async fn closed(&self) {
        loop {
            let signal = self.relieved.notified();
            tokio::pin!(signal);
            // Registered before the check: a close between the two is not missed.
            signal.as_mut().enable();
            if self.is_closed() {
                return;
            }
            // Also fires when a waiting publisher is relieved: check again.
            signal.await;
        }
    }

    /// Has the server's close of this channel wake `waker` (until another
    /// waker is registered by a second call). For
    /// the one task that serves the channel's socket, which checks
    /// [`Channel::is_closed`] at each turn of its loop.
    pub(crate) fn wake_on_close(&self, waker: &std::task::Waker) {
        self.close_waker.register(waker);
        if self.is_closed() {
            // Closed before the registration: the wake-up is not lost.
            waker.wake_by_ref();
        }
    }

    /// Whether the server has closed this channel (a lock-free check).
    pub fn is_closed(&self) -> bool {
        self.close_reason.get().is_some()
    }

    /// Why the server closed the channel.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }

    pub(crate) fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.set(reason);
        // After the reason is set: a waiter woken here sees it.
        self.relieved.notify_waiters();
        self.close_waker.wake();
    }

    // The queue's levels, from the hub's side (`tx.capacity()` is what is free):
    // past half full ends a pacing hold; seven eighths full makes the next
    // local publisher wait (backpressure) until it is down to three quarters.

    /// At least half the queue is taken: a held write should go now.
    pub(super) fn past_half(&self) -> bool {
        self.tx.capacity() <= self.tx.max_capacity() / 2
    }

    /// At most an eighth of the queue is free: close to overflowing.
    pub(super) fn near_overflow(&self) -> bool {
        self.tx.capacity() <= self.tx.max_capacity() / 8
    }

    /// More than three quarters of the queue is taken: not yet relieved.
    fn above_relief(&self) -> bool {
        (self.tx.max_capacity() - self.tx.capacity()) * 4 > self.tx.max_capacity() * 3
    }

    /// Called by the socket after it took deliveries: wakes the publishers
    /// that wait for this channel once its queue is down to three quarters.
    pub(crate) fn taken(&self) {
        // Pairs with the fence in `relief`: either the socket sees the
        // publisher's wish here, or the publisher sees the drained queue.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.relief_wanted.load(Ordering::SeqCst) && !self.above_relief() {
            self.relief_wanted.store(false, Ordering::SeqCst);
            self.relieved.notify_waiters();
        }
    }

    /// Waits until the queue is down to three quarters, the channel closes, or `until`.
    pub(super) async fn relief(&self, until: tokio::time::Instant) {
        loop {
            let relieved = self.relieved.notified();
            tokio::pin!(relieved);
            // Registered before the check, so a signal between the two is not lost.
            relieved.as_mut().enable();
            self.relief_wanted.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.above_relief() || self.is_closed() {
                return;
            }
            if tokio::time::timeout_at(until, relieved).await.is_err() {
                return;
            }
        }
    }

    /// Number of subscriptions held.
    pub fn subscription_count(&self) -> usize {
        self.lock().list.len()
    }

    /// Calls `inspect` with the subscriptions held (under the channel's
    /// lock: `inspect` must not block), for graphex's tests.
    #[doc(hidden)]
    pub fn inspect_subscriptions<R>(&self, inspect: impl FnOnce(&[Subscription]) -> R) -> R {
        inspect(&self.lock().list)
    }

    /// Whether a subscription of this channel on `group` may take `event`,
    /// so that the hub queues (and wakes the socket for) only what the
    /// channel's filters let through. Never waits: while a subscribe or a
    /// close holds the list, the socket decides.
    pub(super) fn may_take(&self, group: &Arc<str>, event: &Event) -> Queue {
        let Ok(subscriptions) = self.subscriptions.try_lock() else { return Queue::Decide };
        let (mut any, mut all) = (false, true);
        for subscription in subscriptions.list.iter().filter(|subscription| same_group(&subscription.group, group)) {
            let takes = match &subscription.resume {
                Some(resume) if !resume.wants(event) => false,
                // Held while its replay is read: taken whatever its filter
                // says (the socket decides once it is live).
                Some(_) => {
                    all = false;
                    true
                }
                None => match subscription.verdict(event) {
                    Verdict::Take => true,
                    Verdict::Skip => false,
                    // Decided by the socket, once the row is read back.
                    Verdict::Fetch(_) => {
                        all = false;
                        true
                    }
                },
            };
            any |= takes;
            all &= takes;
        }
        match (any, all) {
            (false, _) => Queue::Skip,
            (true, false) => Queue::Decide,
            (true, true) => Queue::Take(subscriptions.version),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subscriptions.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The frames this channel's subscriptions take from a delivery.
    pub async fn frames(&self, delivery: &Delivery, frames: &mut Vec<Bytes>) {
        self.select(delivery, Subscription::frame, frames).await;
    }

    /// What this channel's subscriptions take from a delivery: `render` is
    /// called once per matching subscription (two-channel frames, or native
    /// GraphQL events).
    pub async fn select<T>(
        &self,
        delivery: &Delivery,
        render: impl Fn(&Subscription, &Event) -> T,
        frames: &mut Vec<T>,
    ) {
        match delivery {
            Delivery::Change(dispatched) => {
                self.select_change(&dispatched.group, &dispatched.event, None, None, &render, frames).await;
            }
            Delivery::Taken(dispatched, version) => {
                let (group, event) = (&dispatched.group, &dispatched.event);
                self.select_change(group, event, None, Some(*version), &render, frames).await;
            }
            Delivery::Resume(resume) => {
                // The replay, then what was held meanwhile: for the resumed
                // subscriptions only, in order; then they are live.
                for (group, event) in resume.switch() {
                    self.select_change(&group, &event, Some(resume), None, &render, frames).await;
                }
            }
        }
    }

    /// What the subscriptions on `group` take of `event`; with `only`, the
    /// subscriptions of that resumed subscribe (its replay), else every
    /// live one. `taken`: the version of the subscriptions on which every
    /// one on `group` was found to take `event` when it was queued.
    async fn select_change<T>(
        &self,
        group: &Arc<str>,
        event: &Arc<Event>,
        only: Option<&Arc<Resume>>,
        taken: Option<u32>,
        render: &impl Fn(&Subscription, &Event) -> T,
        frames: &mut Vec<T>,
    ) {
        let mut pending: Vec<(Arc<Filter>, RowFetch, T)> = Vec::new();
        let mut overflow = false;
        {
            let subscriptions = self.lock();
            if taken.is_some_and(|version| version == subscriptions.version) {
                // Decided when queued, on these very subscriptions (none of
                // them resumed, every filter decided from the change).
                let on_group = subscriptions.list.iter().filter(|s| same_group(&s.group, group));
                frames.extend(on_group.map(|subscription| render(subscription, event)));
                return;
            }
            for subscription in subscriptions.list.iter().filter(|s| same_group(&s.group, group)) {
                match (only, &subscription.resume) {
                    (Some(only), _) if !crate::subscribe::resume::belongs(subscription, only) => continue,
                    (Some(_), _) | (None, None) => {}
                    (None, Some(resume)) => match resume.admit(group, event, self.tx.max_capacity()) {
                        Admit::Pass => {}
                        Admit::Duplicate | Admit::Held => continue,
                        Admit::Overflow => {
                            overflow = true;
                            continue;
                        }
                    },
                }
                match subscription.verdict(event) {
                    Verdict::Take => frames.push(render(subscription, event)),
                    Verdict::Skip => {}
                    Verdict::Fetch(fetch) => {
                        pending.push((subscription.filter.clone(), fetch.clone(), render(subscription, event)));
                    }
                }
            }
        }
        if overflow {
            // More live changes arrived during the replay's read than the
            // queue holds: a slow consumer (its socket or stream leaves its
            // groups when it sees the close).
            self.close(CloseReason::SlowConsumer);
        }
        // The lock is released: the read is awaited, and shared through the
        // event by every channel of the process (the first one reads).
        for (filter, fetch, frame) in pending {
            let fetched = event.row(|| fetch(event.change.pk.clone())).await;
            if matches!(fetched, Fetched::Row(values) if filter.matches(values) == Some(true)) {
                frames.push(frame);
            }
        }
    }
}

/// Outcome of adding a subscription.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Added.
    New,
    /// An identical subscription already existed.
    Existing,
}

/// Refusals of subscription changes on a channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// No open channel has this id.
    #[error("unknown channel")]
    UnknownChannel,
    /// The channel was opened by another principal.
    #[error("channel belongs to another principal")]
    ForeignChannel,
    /// Too many subscriptions on one channel.
    #[error("subscription limit reached ({0} per channel)")]
    TooManySubscriptions(usize),
    /// No subscription with these arguments.
    #[error("no subscription with these arguments")]
    NotSubscribed,
    /// Too many open channels.
    #[error("too many open channels")]
    TooManyChannels,
    /// One client (a principal, or an anonymous remote address) holds as
    /// many of these as it may in this process.
    #[error("too many {what} for this client (limit {limit} per process)")]
    ClientLimit {
        /// What was counted: open channels, subscriptions, streaming responses.
        what: &'static str,
        /// The cap.
        limit: usize,
    },
    /// The channel layer refused.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

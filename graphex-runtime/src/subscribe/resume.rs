//! Resuming a subscription after a cursor (`after`): the changes the
//! client missed are replayed from the layer's history, in order and once,
//! then delivery continues live with no gap and no duplicate.
//!
//! The handoff, for the subscriptions of one subscribe (they share one
//! [`Resume`]):
//!
//! 1. They are added *holding*: from then on the layer delivers their
//!    groups here, and every live change the channel takes for them is kept
//!    aside, in arrival order, instead of being rendered.
//! 2. The history after the cursor is read: every change up to the stream's
//!    head `H`, read after the groups were ready, so every later change
//!    arrives live.
//! 3. A [`Delivery::Resume`] is queued behind whatever the channel already
//!    holds. When the socket (or native stream) reaches it, it renders the
//!    replay, then the held changes after `H`, and switches the
//!    subscriptions to live: from then on a change at `H` or before is a
//!    duplicate and skipped (offsets of one stream arrive in order).
//!
//! The replay passes through the same filters, projections and row checks
//! as live changes; an id-only row check runs against the row as it is now.

use std::sync::{Arc, Mutex};

use crate::change::codec::Event;
use crate::hub::{Channel, Delivery, Hub, Subscription};
use crate::layer::{Expiry, History, Position};
use crate::subscribe::{SubscribeError, add_all};

/// A cursor as clients see it: opaque, `<epoch as 16 hex digits>-<offset>`.
pub(crate) fn cursor(position: Position) -> String {
    format!("{:016x}-{}", position.epoch, position.offset)
}

/// Reads a cursor made by [`cursor`]; `None` when it is not one.
pub(crate) fn parse_cursor(text: &str) -> Option<Position> {
    let (epoch, offset) = text.split_once('-')?;
    if epoch.len() != 16 || !epoch.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    if offset.is_empty() || offset.len() > 20 || !offset.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(Position { epoch: u64::from_str_radix(epoch, 16).ok()?, offset: offset.parse().ok()? })
}

/// Why a subscription cannot resume after its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// `after` is not a cursor graphex made.
    #[error("`after` is not a cursor")]
    Malformed,
    /// The history cannot tell every change after the cursor.
    #[error("cursor expired: {0}; refetch, then subscribe without `after`")]
    Expired(Expiry),
    /// The channel layer keeps no history.
    #[error("cursor expired: this server's channel layer keeps no history; refetch, then subscribe without `after`")]
    Unsupported,
}

/// The handoff from replay to live delivery, shared by the subscriptions
/// of one resumed subscribe.
#[derive(Debug)]
pub struct Resume {
    /// The cursor's epoch: changes of another epoch are not compared.
    epoch: u64,
    state: Mutex<State>,
}

/// A change and the group it came through.
type Routed = (Arc<str>, Arc<Event>);

#[derive(Debug)]
enum State {
    /// Live changes taken meanwhile (group, event), and the replay once read.
    Holding { held: Vec<Routed>, replay: Option<(Vec<Routed>, u64)> },
    /// Live: a change at `floor` or before was replayed already.
    Live { floor: u64 },
}

/// What a resumed subscription does with a live change.
pub(crate) enum Admit {
    /// Deliver it (after its filter).
    Pass,
    /// Replayed already: skip it.
    Duplicate,
    /// Kept aside until the replay is rendered.
    Held,
    /// Kept aside would exceed the bound: the channel must close.
    Overflow,
}

impl Resume {
    pub(crate) fn new(epoch: u64) -> Arc<Resume> {
        Arc::new(Resume { epoch, state: Mutex::new(State::Holding { held: Vec::new(), replay: None }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn duplicate(&self, floor: u64, event: &Event) -> bool {
        event.position.is_some_and(|position| position.epoch == self.epoch && position.offset <= floor)
    }

    /// Whether the hub should queue a live change for this subscription
    /// (never a replayed one); takes nothing.
    pub(crate) fn wants(&self, event: &Event) -> bool {
        match &*self.lock() {
            State::Holding { .. } => true,
            State::Live { floor } => !self.duplicate(*floor, event),
        }
    }

    /// A live change reaching the socket for this subscription; `bound`:
    /// most changes kept aside.
    pub(crate) fn admit(&self, group: &Arc<str>, event: &Arc<Event>, bound: usize) -> Admit {
        match &mut *self.lock() {
            State::Holding { held, .. } if held.len() >= bound => Admit::Overflow,
            State::Holding { held, .. } => {
                held.push((group.clone(), event.clone()));
                Admit::Held
            }
            State::Live { floor } if self.duplicate(*floor, event) => Admit::Duplicate,
            State::Live { .. } => Admit::Pass,
        }
    }

    /// The replay, read from history up to the stream's `head` offset.
    fn install(&self, replay: Vec<Routed>, head: u64) {
        if let State::Holding { replay: slot, .. } = &mut *self.lock() {
            *slot = Some((replay, head));
        }
    }

    /// Switches to live and returns what to render first, in order: the
    /// replay, then the changes held meanwhile that came after it.
    pub(crate) fn switch(&self) -> Vec<Routed> {
        let mut state = self.lock();
        let State::Holding { held, replay } = &mut *state else { return Vec::new() };
        let (mut out, head) = replay.take().unwrap_or_default();
        let held = std::mem::take(held);
        out.extend(held.into_iter().filter(|(_, event)| !self.duplicate(head, event)));
        *state = State::Live { floor: head };
        out
    }
}

/// Reads the history of `stream` after `after` for the subscriptions just
/// added holding `resume` to `channel`, and queues the replay behind what
/// the channel holds. Fails when the history cannot tell every change
/// after the cursor: the caller removes the subscriptions.
pub(crate) async fn replay(
    hub: &Hub,
    channel: &Arc<Channel>,
    stream: &str,
    after: Position,
    resume: &Arc<Resume>,
    subscriptions: &[String],
) -> Result<(), ResumeError> {
    let history = hub.layer().history(stream, after).await.map_err(|error| {
        tracing::warn!(%error, %stream, "history could not be read");
        ResumeError::Expired(Expiry::Trimmed)
    })?;
    let (kept, head) = match history {
        History::Since { kept, head } => (kept, head),
        History::Expired(why) => return Err(ResumeError::Expired(why)),
        History::Unsupported => return Err(ResumeError::Unsupported),
    };
    let mut replay = Vec::new();
    for kept in kept {
        let wanted: Vec<&String> = kept.groups.iter().filter(|group| subscriptions.contains(group)).collect();
        if wanted.is_empty() {
            continue;
        }
        let Some(event) = hub.decode_kept(stream, &kept.message, Position { epoch: head.epoch, offset: kept.offset })
        else {
            continue;
        };
        for group in wanted {
            replay.push((Arc::<str>::from(group.as_str()), event.clone()));
        }
    }
    hub.count_resumed(replay.len());
    resume.install(replay, head.offset);
    hub.queue(channel, Delivery::Resume(resume.clone()));
    Ok(())
}

/// Reads a client's `after`: a cursor, else `BAD_USER_INPUT`.
pub(crate) fn parse_after(text: &str) -> Result<Position, ResumeError> {
    parse_cursor(text).ok_or(ResumeError::Malformed)
}

/// Adds the subscriptions of one subscribe to `channel`; with `after`,
/// holding, and queues their replay ([`replay`]). When the history cannot
/// resume after the cursor, the subscriptions this call added are removed
/// again and the subscribe fails.
pub(crate) async fn add_resumed(
    hub: &Hub,
    channel: &Arc<Channel>,
    mut subscriptions: Vec<Subscription>,
    after: Option<Position>,
) -> Result<(), SubscribeError> {
    let Some(after) = after else { return add_all(hub, channel, subscriptions).await };
    let Some(stream) = subscriptions.first().map(|subscription| subscription.key.stream) else { return Ok(()) };
    let resume = Resume::new(after.epoch);
    for subscription in &mut subscriptions {
        subscription.resume = Some(resume.clone());
    }
    let groups: Vec<String> = subscriptions.iter().map(|subscription| subscription.group.to_string()).collect();
    add_all(hub, channel, subscriptions).await?;
    if let Err(error) = replay(hub, channel, stream, after, &resume, &groups).await {
        let added: Vec<_> = channel.inspect_subscriptions(|list| {
            list.iter().filter(|subscription| belongs(subscription, &resume)).map(|s| s.key.clone()).collect()
        });
        for key in added {
            let _ = hub.remove_subscription(channel, &key);
        }
        return Err(error.into());
    }
    Ok(())
}

/// Whether `subscription` belongs to the resumed subscribe `resume`.
pub(crate) fn belongs(subscription: &Subscription, resume: &Arc<Resume>) -> bool {
    subscription.resume.as_ref().is_some_and(|own| Arc::ptr_eq(own, resume))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::Config;
    use crate::change::codec::Change;
    use crate::model::Action;

    const GROUP: &str = "users-create";

    fn change(pk: i64) -> bytes::Bytes {
        Change::user_created(pk, json!({"id": pk}).as_object().cloned()).encode()
    }

    async fn publish(hub: &Hub, pk: i64) {
        hub.publish(&[GROUP.into()], change(pk)).await;
    }

    /// A subscription to `users-create` that asks for cursors (so that its
    /// frames are told from the plain one's), resumed with `resume`.
    fn resumed(resume: &Arc<Resume>) -> Subscription {
        let mut subscription = Subscription::of_users(GROUP, Action::Create, None);
        subscription.key.cursors = true;
        subscription.resume = Some(resume.clone());
        subscription
    }

    /// The frames of every queued delivery, in queue order: (pk, has a cursor).
    async fn drain(channel: &Channel, rx: &mut tokio::sync::mpsc::Receiver<Delivery>) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        while let Ok(delivery) = rx.try_recv() {
            let mut frames = Vec::new();
            channel.frames(&delivery, &mut frames).await;
            for frame in frames {
                let frame: Json = serde_json::from_slice(&frame).unwrap();
                out.push((frame["payload"]["data"]["id"].as_i64().unwrap(), frame.get("cursor").is_some()));
            }
        }
        out
    }

    #[tokio::test]
    async fn the_replay_comes_before_live_changes_held_meanwhile_and_each_change_once() {
        let hub = Hub::default();
        let (channel, mut rx) = hub.open_channel(None).unwrap();
        hub.add_subscription(&channel, Subscription::of_users(GROUP, Action::Create, None)).await.unwrap();
        for pk in 1..=3 {
            publish(&hub, pk).await;
        }
        let first = rx.try_recv().unwrap().event().unwrap().position.expect("a position");
        while rx.try_recv().is_ok() {}

        // Resumed after change 1: added holding; change 4 arrives live
        // before the history is read, change 5 after the replay is queued.
        let resume = Resume::new(first.epoch);
        hub.add_subscription(&channel, resumed(&resume)).await.unwrap();
        publish(&hub, 4).await;
        replay(&hub, &channel, "users", first, &resume, &[GROUP.to_owned()]).await.unwrap();
        publish(&hub, 5).await;

        let frames = drain(&channel, &mut rx).await;
        let plain: Vec<i64> = frames.iter().filter(|(_, cursor)| !cursor).map(|(pk, _)| *pk).collect();
        let resumed: Vec<i64> = frames.iter().filter(|(_, cursor)| *cursor).map(|(pk, _)| *pk).collect();
        assert_eq!(plain, [4, 5], "the other subscription is not replayed to");
        assert_eq!(resumed, [2, 3, 4, 5], "missed changes in order, then live, each once");
        assert_eq!(frames.iter().position(|frame| *frame == (4, false)), Some(0), "live 4 was not held for others");
        assert_eq!(hub.stats().resumed, 1);
        assert_eq!(hub.stats().replayed, 3);
    }

    #[test]
    fn clients_resuming_after_the_same_changes_share_their_decode() {
        let hub = Hub::default();
        let position = Position { epoch: 9, offset: 4 };
        let first = hub.decode_kept("users", &change(4), position).unwrap();
        let again = hub.decode_kept("users", &change(4), position).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "decoded once");
        let next = hub.decode_kept("users", &change(5), Position { offset: 5, ..position }).unwrap();
        assert!(!Arc::ptr_eq(&first, &next));
        // Another stream at the same position (epochs are random: never in
        // practice) is decoded for itself.
        let mut note = Change::user_created(4, None);
        note.stream = "notes".into();
        let other = hub.decode_kept("notes", &note.encode(), position).unwrap();
        assert_eq!(other.change.stream, "notes");
    }

    #[tokio::test]
    async fn live_changes_held_beyond_the_queue_close_the_channel() {
        let hub = Hub::new(Config { queue_capacity: 4, ..Config::default() });
        let (channel, mut rx) = hub.open_channel(None).unwrap();
        let resume = Resume::new(1);
        hub.add_subscription(&channel, resumed(&resume)).await.unwrap();
        for pk in 1..=3 {
            publish(&hub, pk).await;
            assert!(drain(&channel, &mut rx).await.is_empty(), "held, not rendered");
        }
        publish(&hub, 4).await;
        assert!(drain(&channel, &mut rx).await.is_empty());
        assert_eq!(channel.close_reason(), None);
        publish(&hub, 5).await;
        drain(&channel, &mut rx).await;
        assert_eq!(channel.close_reason(), Some(crate::CloseReason::SlowConsumer));
    }

    #[tokio::test]
    async fn a_cursor_history_cannot_serve_adds_nothing() {
        let hub = Hub::new(Config::default());
        let (channel, _rx) = hub.open_channel(None).unwrap();
        publish(&hub, 1).await;
        let foreign = Position { epoch: 7, offset: 1 };
        let added = add_resumed(&hub, &channel, vec![resumed(&Resume::new(7))], Some(foreign)).await;
        assert!(matches!(added, Err(SubscribeError::Resume(ResumeError::Expired(Expiry::Epoch)))), "{added:?}");
        assert_eq!(channel.subscription_count(), 0, "the subscriptions it added are removed");
        assert_eq!(hub.group_count(), 0);
    }

    #[tokio::test]
    async fn a_stream_that_lost_changes_closes_its_subscribers_only() {
        let hub = Hub::default();
        let (users, _users_rx) = hub.open_channel(None).unwrap();
        hub.add_subscription(&users, Subscription::of_users(GROUP, Action::Create, None)).await.unwrap();
        let (other, _other_rx) = hub.open_channel(None).unwrap();
        let mut notes = Subscription::of_users("notes-create", Action::Create, None);
        notes.key.stream = "notes";
        hub.add_subscription(&other, notes).await.unwrap();
        hub.lost("users");
        assert_eq!(users.close_reason(), Some(crate::CloseReason::Expired));
        assert_eq!(other.close_reason(), None);
        assert_eq!(hub.channel_count(), 1);
        assert_eq!(hub.stats().expired, 1);
    }

    #[test]
    fn cursors_round_trip_and_anything_else_is_malformed() {
        let position = Position { epoch: 0xdead_beef_0000_0001, offset: 42 };
        assert_eq!(cursor(position), "deadbeef00000001-42");
        assert_eq!(parse_cursor(&cursor(position)), Some(position));
        assert_eq!(parse_cursor(&cursor(Position { epoch: u64::MAX, offset: u64::MAX })).unwrap().offset, u64::MAX);
        for bad in [
            "",
            "-",
            "42",
            "deadbeef00000001",
            "deadbeef00000001-",
            "deadbeef0000001-4",
            "xeadbeef00000001-4",
            "deadbeef00000001-4a",
            "deadbeef00000001--4",
            "deadbeef00000001-+4",
            "deadbeef00000001-99999999999999999999",
            " deadbeef00000001-4",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}

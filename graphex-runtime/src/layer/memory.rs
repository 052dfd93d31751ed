//! The in-process layer: the default, for one server process.
//!
//! Positions are a counter per stream, under the stream's lock, in an
//! epoch drawn at random when the layer is made (a restarted process starts
//! a new epoch: its history is gone). The history is a ring of the last
//! [`MemoryLayer::DEFAULT_HISTORY`] changes per stream. A change is
//! delivered under its stream's lock, so every subscriber sees a stream's
//! changes in offset order even when writers publish concurrently.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;

use super::{ChannelLayer, Expiry, History, Inbound, Kept, LayerError, LayerMetrics, LogPosition, Position};

/// Delivers every publish straight to this process's hub, in the
/// publisher's task. The hub drops messages for groups without members, so
/// listening needs no bookkeeping here.
pub struct MemoryLayer {
    inbound: OnceLock<Inbound>,
    /// Changes kept per stream (0: none).
    history: usize,
    streams: Mutex<HashMap<String, Arc<Mutex<Stream>>>>,
}

/// One stream's positions and history.
struct Stream {
    epoch: u64,
    /// The last offset given (0 before the first change).
    head: u64,
    kept: VecDeque<Held>,
    /// The last captured change published (a resent one is dropped).
    captured: Option<LogPosition>,
}

/// A change in a stream's history: its groups joined by [`GROUP_SEPARATOR`]
/// (one allocation per change, not one per group and one for the list;
/// split again only when a client resumes).
struct Held {
    offset: u64,
    /// `None` for a change published to no group.
    groups: Option<Box<str>>,
    message: Bytes,
}

/// Between the group names of a [`Held`] change: no group name holds it
/// (model groups are ASCII without controls, custom and node groups have no
/// control characters and are not published as changes).
const GROUP_SEPARATOR: &str = "\n";

impl Held {
    fn new(offset: u64, groups: &[String], message: Bytes) -> Held {
        debug_assert!(groups.iter().all(|group| !group.contains(GROUP_SEPARATOR)), "group names without the separator");
        let groups = (!groups.is_empty()).then(|| groups.join(GROUP_SEPARATOR).into_boxed_str());
        Held { offset, groups, message }
    }

    fn kept(&self) -> Kept {
        let groups = match &self.groups {
            Some(joined) => joined.split(GROUP_SEPARATOR).map(str::to_owned).collect(),
            None => Vec::new(),
        };
        Kept { offset: self.offset, groups, message: self.message.clone() }
    }
}

impl Default for MemoryLayer {
    fn default() -> Self {
        MemoryLayer::new()
    }
}

impl std::fmt::Debug for MemoryLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLayer")
            .field("started", &self.inbound.get().is_some())
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl MemoryLayer {
    /// Changes each stream keeps for resuming by default: 1 000. Each costs
    /// its message (a few hundred bytes for a typical row in full-payload
    /// mode, shared with the publish) plus about 100 bytes: about 0.3 MiB per
    /// stream with rows of 200 bytes.
    pub const DEFAULT_HISTORY: usize = 1000;

    /// A new in-memory layer keeping [`MemoryLayer::DEFAULT_HISTORY`] changes per stream.
    pub fn new() -> Self {
        MemoryLayer::with_history(MemoryLayer::DEFAULT_HISTORY)
    }

    /// A new in-memory layer keeping the last `history` changes of each
    /// stream (0: none; then only a stream's head can be resumed from).
    pub fn with_history(history: usize) -> Self {
        MemoryLayer { inbound: OnceLock::new(), history, streams: Mutex::default() }
    }

    /// Numbers, keeps and delivers a change, under its stream's lock; a
    /// captured change at or before the last one published is dropped.
    fn publish_at(&self, stream: &str, groups: &[String], message: Bytes, source: Option<LogPosition>) {
        let stream = self.stream(stream);
        // Held while delivering (the hub's dispatch never waits), so the
        // offsets of one stream reach every subscriber in order.
        let mut stream = lock(&stream);
        if let Some(source) = source {
            if stream.captured.is_some_and(|last| source <= last) {
                return;
            }
            stream.captured = Some(source);
        }
        stream.head += 1;
        let position = Position { epoch: stream.epoch, offset: stream.head };
        if self.history > 0 {
            if stream.kept.len() == self.history {
                stream.kept.pop_front();
            }
            stream.kept.push_back(Held::new(position.offset, groups, message.clone()));
        }
        if let Some(inbound) = self.inbound.get() {
            for group in groups {
                inbound.deliver_at(group, position, message.clone());
            }
        }
    }

    fn stream(&self, name: &str) -> Arc<Mutex<Stream>> {
        let mut streams = lock(&self.streams);
        if let Some(stream) = streams.get(name) {
            return stream.clone();
        }
        let stream =
            Arc::new(Mutex::new(Stream { epoch: new_epoch(), head: 0, kept: VecDeque::new(), captured: None }));
        streams.insert(name.to_owned(), stream.clone());
        stream
    }
}

/// A random epoch, never 0.
pub(crate) fn new_epoch() -> u64 {
    loop {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).expect("the OS random source is available");
        let epoch = u64::from_le_bytes(seed);
        if epoch != 0 {
            return epoch;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait::async_trait]
impl ChannelLayer for MemoryLayer {
    fn start(&self, inbound: Inbound) {
        let _ = self.inbound.set(inbound);
    }

    fn metrics(&self) -> LayerMetrics {
        let streams: Vec<Arc<Mutex<Stream>>> = lock(&self.streams).values().cloned().collect();
        let kept = streams.iter().map(|stream| lock(stream).kept.len() as u64).sum();
        LayerMetrics { history: Some(kept), ..LayerMetrics::default() }
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        if let Some(inbound) = self.inbound.get() {
            inbound.deliver(group, message);
        }
        Ok(())
    }

    async fn publish_change(&self, stream: &str, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.publish_at(stream, groups, message, None);
        Ok(())
    }

    async fn publish_captured(
        &self,
        stream: &str,
        groups: &[String],
        message: Bytes,
        source: LogPosition,
    ) -> Result<(), LayerError> {
        self.publish_at(stream, groups, message, Some(source));
        Ok(())
    }

    async fn history(&self, stream: &str, after: Position) -> Result<History, LayerError> {
        let stream = self.stream(stream);
        let stream = lock(&stream);
        let head = Position { epoch: stream.epoch, offset: stream.head };
        if after.epoch != stream.epoch {
            return Ok(History::Expired(Expiry::Epoch));
        }
        if after.offset > stream.head {
            // Cannot happen in one process (the epoch is this process's);
            // refused like the Redis layer refuses it.
            return Ok(History::Expired(Expiry::Ahead));
        }
        let first = stream.kept.front().map_or(stream.head + 1, |kept| kept.offset);
        if after.offset + 1 < first {
            return Ok(History::Expired(Expiry::Trimmed));
        }
        let skip = (after.offset + 1 - first) as usize;
        Ok(History::Since { kept: stream.kept.iter().skip(skip).map(Held::kept).collect(), head })
    }

    fn listen(&self, _group: &str) {}

    fn unlisten(&self, _group: &str) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(history: &History) -> Vec<u64> {
        match history {
            History::Since { kept, .. } => kept.iter().map(|kept| kept.offset).collect(),
            other => panic!("expected changes, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn positions_are_dense_and_history_is_a_ring() {
        let layer = MemoryLayer::with_history(3);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        layer.start(Inbound::new(move |group, position, _| lock(&into).push((group.to_owned(), position)), |_| {}));
        for _ in 0..5 {
            layer
                .publish_change("users", &["users-create".into(), "users-create-1".into()], Bytes::new())
                .await
                .unwrap();
        }
        let seen = lock(&seen).clone();
        assert_eq!(seen.len(), 10);
        let epoch = seen[0].1.unwrap().epoch;
        let offsets: Vec<u64> = seen.iter().map(|(_, position)| position.unwrap().offset).collect();
        assert_eq!(offsets, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);

        let at = |offset| Position { epoch, offset };
        assert_eq!(offsets_of(&layer, at(2)).await, [3, 4, 5]);
        assert_eq!(offsets_of(&layer, at(4)).await, [5]);
        assert_eq!(offsets_of(&layer, at(5)).await, Vec::<u64>::new(), "the head: nothing after it");
        let expired = |history| matches!(history, History::Expired(_));
        assert!(expired(layer.history("users", at(1)).await.unwrap()), "offset 2 was trimmed");
        assert!(matches!(layer.history("users", at(6)).await.unwrap(), History::Expired(Expiry::Ahead)));
        let foreign = Position { epoch: epoch ^ 1, offset: 5 };
        assert!(matches!(layer.history("users", foreign).await.unwrap(), History::Expired(Expiry::Epoch)));
        match layer.history("users", at(3)).await.unwrap() {
            History::Since { kept, head } => {
                assert_eq!(head, at(5));
                assert_eq!(kept[0].groups, ["users-create", "users-create-1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn history_gives_back_each_change_s_groups_as_published() {
        let layer = MemoryLayer::new();
        let lists: [&[&str]; 4] =
            [&["users-create", "users-create-1", "users-create:room=2"], &["users-create"], &[], &[""]];
        for groups in lists {
            let groups: Vec<String> = groups.iter().map(|group| (*group).to_owned()).collect();
            layer.publish_change("users", &groups, Bytes::from_static(b"m")).await.unwrap();
        }
        let epoch = lock(&layer.stream("users")).epoch;
        match layer.history("users", Position { epoch, offset: 0 }).await.unwrap() {
            History::Since { kept, .. } => {
                let got: Vec<Vec<String>> = kept.into_iter().map(|kept| kept.groups).collect();
                let want: Vec<Vec<String>> =
                    lists.iter().map(|groups| groups.iter().map(|group| (*group).to_owned()).collect()).collect();
                assert_eq!(got, want);
            }
            other => panic!("{other:?}"),
        }
    }

    async fn offsets_of(layer: &MemoryLayer, after: Position) -> Vec<u64> {
        offsets(&layer.history("users", after).await.unwrap())
    }

    #[tokio::test]
    async fn a_captured_change_sent_again_is_published_once() {
        let layer = MemoryLayer::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        layer.start(Inbound::new(move |_, position, _| lock(&into).push(position.unwrap().offset), |_| {}));
        let groups = ["users-create".to_owned()];
        let at = |lsn, index| LogPosition { lsn, index };
        for source in [at(10, 0), at(10, 1), at(10, 0), at(10, 1), at(9, 5), at(20, 0)] {
            layer.publish_captured("users", &groups, Bytes::new(), source).await.unwrap();
        }
        assert_eq!(*lock(&seen), [1, 2, 3], "the resent transaction (and anything before it) is dropped");
        layer.publish_change("users", &groups, Bytes::new()).await.unwrap();
        assert_eq!(lock(&seen).len(), 4, "changes announced by hooks are not affected");
    }

    #[tokio::test]
    async fn without_history_only_the_head_resumes() {
        let layer = MemoryLayer::with_history(0);
        layer.publish_change("users", &["users-create".into()], Bytes::new()).await.unwrap();
        layer.publish_change("users", &["users-create".into()], Bytes::new()).await.unwrap();
        let epoch = lock(&layer.stream("users")).epoch;
        assert_eq!(offsets_of(&layer, Position { epoch, offset: 2 }).await, Vec::<u64>::new());
        let before = Position { epoch, offset: 1 };
        assert!(matches!(layer.history("users", before).await.unwrap(), History::Expired(Expiry::Trimmed)));
    }
}

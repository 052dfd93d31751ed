//! Changes over Redis with positions (issue 16): the publish script and
//! the outbox on the publishing side, the history read for resuming, and on
//! the subscriber side the continuity check of live changes and the repair
//! after a reconnection. The Redis keys, the scripts and the message header
//! are in `positions.rs`.
//!
//! Continuity: within one live pub/sub connection Redis delivers every
//! message, in publish order, so changes can only be missed across
//! connection events. The subscriber remembers, per stream, the epoch and
//! last offset it delivered ([`Seen`]); when it has (re)subscribed it reads
//! the stream's epoch, head and the history after that offset in one
//! script and delivers what it missed before reading further live
//! messages (which are then duplicates up to the head, and dropped). What
//! cannot be repaired (another epoch, history trimmed, Redis went back in
//! time) is declared lost ([`Inbound::lost`]): the hub closes the stream's
//! subscribers here with `CURSOR_EXPIRED`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redis::aio::ConnectionManager;

use super::positions::{self, MOVE, Outbox, PUBLISH, Pending, READ, RENEW, Read, Seen};
use super::{Counters, RedisOptions, Subscriber, lock, unavailable};
use crate::change::group;
use crate::layer::memory::new_epoch;
use crate::layer::{Expiry, History, Inbound, LayerError, Position};

/// Why a publish did not happen.
pub(super) enum Failure {
    /// Redis could not be reached (or did not answer in time): worth
    /// keeping the change and trying again.
    Unreachable(LayerError),
    /// Redis refused it: trying again would not help.
    Refused(LayerError),
}

/// The publishing side of changes: the script, the outbox and its flusher.
pub(super) struct Changes {
    connection: ConnectionManager,
    options: RedisOptions,
    stats: Arc<Counters>,
    outbox: Mutex<Outbox>,
    /// Wakes the flusher: the outbox has something.
    wake: tokio::sync::Notify,
}

impl Changes {
    pub(super) fn new(connection: ConnectionManager, options: RedisOptions, stats: Arc<Counters>) -> Arc<Changes> {
        Arc::new(Changes { connection, options, stats, outbox: Mutex::default(), wake: tokio::sync::Notify::new() })
    }

    /// Redis answers again (the subscriber reconnected): the flusher
    /// tries at once instead of at the end of its backoff.
    pub(super) fn redis_is_back(&self) {
        if self.waiting() > 0 {
            self.wake.notify_one();
        }
    }

    /// Changes in the outbox now.
    pub(super) fn waiting(&self) -> usize {
        lock(&self.outbox).queue.len()
    }

    fn meta(&self, stream: &str) -> String {
        format!("{}~meta:{stream}", self.options.prefix)
    }

    fn hist(&self, stream: &str) -> String {
        format!("{}~hist:{stream}", self.options.prefix)
    }

    /// [`crate::layer::ChannelLayer::publish_change`]: straight to Redis,
    /// or behind the outbox while it holds anything (order), or into it
    /// when Redis cannot be reached.
    pub(super) async fn publish(
        &self,
        stream: &str,
        groups: &[String],
        message: Bytes,
        source: Option<String>,
    ) -> Result<(), LayerError> {
        let mut pending = Pending {
            stream: stream.to_owned(),
            groups: groups.to_vec(),
            message,
            after_drops: 0,
            token: token(),
            tried: false,
            source,
        };
        {
            let mut outbox = lock(&self.outbox);
            // Behind what waits (order), and through the flusher while the
            // stream must start a new epoch (it alone starts them, in order).
            if !outbox.queue.is_empty() || outbox.uncovered(stream) {
                pending.after_drops = outbox.drops(stream);
                let kept = self.keep(&mut outbox, pending);
                drop(outbox);
                self.wake.notify_one();
                return kept;
            }
        }
        match self.send(&pending, false).await {
            Ok(_) => Ok(()),
            Err(Failure::Unreachable(error)) => {
                tracing::warn!(%stream, %error, "Redis unreachable: change kept in the outbox");
                let kept = {
                    let mut outbox = lock(&self.outbox);
                    if self.options.history == 0 {
                        // The attempt may have run, and without history its
                        // retry cannot tell: a new epoch tells subscribers.
                        outbox.dropped(stream);
                    }
                    pending.after_drops = outbox.drops(stream);
                    pending.tried = true;
                    self.keep(&mut outbox, pending)
                };
                self.wake.notify_one();
                kept
            }
            Err(Failure::Refused(error)) => {
                // Dropped: its stream's subscribers must learn it.
                lock(&self.outbox).dropped_on(stream, groups);
                self.wake.notify_one();
                self.stats.publish_failures.fetch_add(groups.len() as u64, Ordering::Relaxed);
                Err(error)
            }
        }
    }

    /// Queues a change in the outbox; a dropped one (outbox full) is an error.
    fn keep(&self, outbox: &mut Outbox, pending: Pending) -> Result<(), LayerError> {
        let stream = pending.stream.clone();
        if outbox.push(pending, self.options.outbox) {
            self.stats.outboxed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            self.stats.outbox_overflows.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%stream, "Redis outbox full: change dropped; the stream moves to a new epoch");
            Err(LayerError::unavailable(format!(
                "Redis unreachable and its outbox full ({} changes): change dropped",
                self.options.outbox
            )))
        }
    }

    /// Runs the publish script once (again once if the connection was
    /// found dead), within `publish_timeout`.
    async fn send(&self, pending: &Pending, new_epoch: bool) -> Result<Position, Failure> {
        let Pending { stream, groups, message, token, tried, source, .. } = pending;
        let (stream, tried, source) = (stream.as_str(), *tried, source.as_deref());
        let invocation = |retry: bool| {
            let mut invocation = PUBLISH.prepare_invoke();
            invocation
                .key(self.meta(stream))
                .key(self.hist(stream))
                .arg(message.as_ref())
                .arg(self.options.history)
                .arg(positions::epoch_text(crate::layer::memory::new_epoch()))
                .arg(if new_epoch { "1" } else { "0" })
                .arg(&self.options.prefix)
                .arg(token)
                .arg(if retry { "1" } else { "0" })
                .arg(source.unwrap_or(""))
                .arg(groups);
            invocation
        };
        let mut connection = self.connection.clone();
        let attempt = async {
            match invocation(tried).invoke_async::<(String, String)>(&mut connection).await {
                // The connection was found dead: the manager reconnects; try
                // once more, checking the token (the first may have run).
                Err(error) if error.is_connection_dropped() || error.is_connection_refusal() => {
                    invocation(true).invoke_async::<(String, String)>(&mut connection).await
                }
                outcome => outcome,
            }
        };
        let answer = match tokio::time::timeout(self.options.publish_timeout, attempt).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) if unreachable(&error) => {
                return Err(Failure::Unreachable(unavailable("Redis publish failed", error)));
            }
            Ok(Err(error)) => return Err(Failure::Refused(unavailable("Redis publish failed", error))),
            Err(_) => return Err(Failure::Unreachable(LayerError::unavailable("Redis publish timed out"))),
        };
        self.stats.published.fetch_add(groups.len() as u64, Ordering::Relaxed);
        if new_epoch {
            self.stats.epochs.fetch_add(1, Ordering::Relaxed);
        }
        let epoch = positions::parse_epoch(answer.0.as_bytes());
        let offset = answer.1.parse().ok();
        match (epoch, offset) {
            (Some(epoch), Some(offset)) => Ok(Position { epoch, offset }),
            _ => Err(Failure::Refused(LayerError::unavailable("the publish script answered nonsense"))),
        }
    }

    /// Publishes what the outbox holds, in order, whenever it holds
    /// something, until `stop`.
    pub(super) async fn flush(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut backoff = self.options.min_backoff;
        loop {
            let front = {
                let outbox = lock(&self.outbox);
                outbox.queue.front().cloned().map(|pending| {
                    let new_epoch = outbox.needs_new_epoch(&pending);
                    (pending, new_epoch)
                })
            };
            let Some((pending, new_epoch)) = front else {
                // Drained: streams that dropped changes start a new epoch
                // now, so that no cursor of the old one resumes past the gap.
                let renew = lock(&self.outbox).to_renew();
                let mut unreachable = false;
                for (stream, drops) in renew {
                    if let Some(epoch) = self.renew(&stream).await {
                        let groups = lock(&self.outbox).covered(&stream, drops);
                        self.notify(epoch, &groups).await;
                    } else {
                        unreachable = true;
                        break;
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.wake.notified() => continue,
                    () = tokio::time::sleep(backoff), if unreachable => {
                        backoff = (backoff * 2).min(self.options.max_backoff);
                        continue;
                    }
                }
            };
            match self.send(&pending, new_epoch).await {
                Ok(position) => {
                    let groups = {
                        let mut outbox = lock(&self.outbox);
                        outbox.queue.pop_front();
                        if new_epoch { outbox.covered(&pending.stream, pending.after_drops) } else { Vec::new() }
                    };
                    self.notify(position.epoch, &groups).await;
                    backoff = self.options.min_backoff;
                }
                Err(Failure::Unreachable(error)) => {
                    tracing::debug!(%error, retry_in = ?backoff, "Redis outbox: still unreachable");
                    if !pending.tried {
                        // Its retries check the token; without history they
                        // cannot, and a new epoch tells subscribers instead.
                        let mut outbox = lock(&self.outbox);
                        let unknowable = self.options.history == 0;
                        if unknowable {
                            outbox.dropped(&pending.stream);
                        }
                        let drops = outbox.drops(&pending.stream);
                        if let Some(front) = outbox.queue.front_mut() {
                            front.tried = true;
                            if unknowable {
                                front.after_drops = drops;
                            }
                        }
                    }
                    // Woken early when the subscriber reconnects (Redis is back).
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                        () = self.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(self.options.max_backoff);
                }
                Err(Failure::Refused(error)) => {
                    tracing::error!(stream = %pending.stream, %error, "Redis refused an outboxed change: dropped; the stream moves to a new epoch");
                    let mut outbox = lock(&self.outbox);
                    outbox.queue.pop_front();
                    outbox.dropped_on(&pending.stream, &pending.groups);
                    self.stats.publish_failures.fetch_add(pending.groups.len() as u64, Ordering::Relaxed);
                }
            }
        }
    }

    /// Moves `stream` to a new epoch; `false` when Redis did not do it.
    async fn renew(&self, stream: &str) -> Option<u64> {
        let epoch = new_epoch();
        let mut invocation = RENEW.prepare_invoke();
        invocation.key(self.meta(stream)).key(self.hist(stream));
        invocation.arg(positions::epoch_text(epoch));
        match self.run(&invocation, "Redis epoch renewal").await {
            Ok(_) => {
                self.stats.epochs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%stream, "stream moved to a new epoch: changes of it were dropped");
                Some(epoch)
            }
            Err(error) => {
                tracing::debug!(%stream, %error, "Redis epoch renewal failed; retried");
                None
            }
        }
    }

    /// Tells the processes listening to the groups of dropped changes that
    /// their stream is in `epoch` now ([`positions::notice`]), so that they
    /// close its subscribers at once, not with the group's next change. A
    /// failure is logged: they learn it with that next change.
    async fn notify(&self, epoch: u64, groups: &[String]) {
        if groups.is_empty() {
            return;
        }
        let notice = positions::notice(epoch);
        let mut pipe = redis::pipe();
        for group in groups {
            pipe.publish(format!("{}{group}", self.options.prefix), notice.as_slice()).ignore();
        }
        let mut connection = self.connection.clone();
        match tokio::time::timeout(self.options.publish_timeout, pipe.exec_async(&mut connection)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "Redis: the new epoch's notice was not published"),
            Err(_) => tracing::warn!("Redis: the new epoch's notice timed out"),
        }
    }

    /// The stream's epoch and head, and its history from offset `from` on
    /// (none when `from` is `None`); `None` when the stream has no epoch.
    pub(super) async fn read(&self, stream: &str, from: Option<u64>) -> Result<Option<Read>, LayerError> {
        let mut invocation = READ.prepare_invoke();
        invocation.key(self.meta(stream)).key(self.hist(stream));
        invocation.arg(from.map_or_else(|| "-".to_owned(), positions::entry_id));
        let value: redis::Value = self.run(&invocation, "Redis history read").await?;
        positions::decode_read(value).map_err(|error| unavailable("Redis history read", error))
    }

    /// Moves the stream to a new epoch if it is still in `expected`;
    /// returns its epoch and head afterwards.
    pub(super) async fn move_epoch(&self, stream: &str, expected: u64) -> Result<Option<Position>, LayerError> {
        let candidate = new_epoch();
        let mut invocation = MOVE.prepare_invoke();
        invocation.key(self.meta(stream)).key(self.hist(stream));
        invocation.arg(positions::epoch_text(expected)).arg(positions::epoch_text(candidate));
        let value: redis::Value = self.run(&invocation, "Redis epoch move").await?;
        let now = positions::decode_read(value).map_err(|error| unavailable("Redis epoch move", error))?;
        let now = now.map(|read| read.head);
        if now.is_some_and(|head| head.epoch == candidate) {
            self.stats.epochs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%stream, epoch = %positions::epoch_text(candidate), "stream moved to a new epoch");
        }
        Ok(now)
    }

    async fn run(&self, invocation: &redis::ScriptInvocation<'_>, what: &str) -> Result<redis::Value, LayerError> {
        let mut connection = self.connection.clone();
        let bound = self.options.publish_timeout.max(self.options.connect_timeout);
        match tokio::time::timeout(bound, invocation.invoke_async(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(unavailable(what, error)),
            Err(_) => Err(LayerError::unavailable(format!("{what} timed out"))),
        }
    }

    /// [`crate::layer::ChannelLayer::history`].
    pub(super) async fn history(&self, stream: &str, after: Position) -> Result<History, LayerError> {
        let Some(read) = self.read(stream, Some(after.offset.saturating_add(1))).await? else {
            return Ok(History::Expired(Expiry::Epoch));
        };
        let head = read.head;
        if head.epoch != after.epoch {
            return Ok(History::Expired(Expiry::Epoch));
        }
        if after.offset > head.offset {
            // Redis went back in time (restored from an older snapshot):
            // its offsets will be given again, to other changes.
            self.move_epoch(stream, head.epoch).await?;
            return Ok(History::Expired(Expiry::Ahead));
        }
        if after.offset == head.offset {
            return Ok(History::Since { kept: Vec::new(), head });
        }
        if read.kept.first().map(|kept| kept.offset) != Some(after.offset + 1) {
            return Ok(History::Expired(Expiry::Trimmed));
        }
        Ok(History::Since { kept: read.kept, head })
    }
}

/// Whether a publish error means Redis could not be reached (keep the
/// change and try again) rather than that it refused the command.
fn unreachable(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match error.kind() {
        ErrorKind::Io | ErrorKind::Client => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ClusterDown
        ),
        _ => error.is_connection_dropped() || error.is_connection_refusal() || error.is_timeout(),
    }
}

/// A change's token: tells its retry from a new change (the publish script
/// looks for it in the history before publishing a retry again).
fn token() -> String {
    positions::epoch_text(crate::layer::memory::new_epoch())
}

/// The stream of a group whose changes carry positions; `None` for custom
/// groups and node requests.
fn stream_of(group: &str) -> Option<&str> {
    (!group::is_custom(group) && !group::is_node(group)).then(|| group::stream_of(group))
}

impl Subscriber {
    /// A live change at `position`: the continuity rule ([`Seen::live`]).
    pub(super) fn deliver_change(
        &self,
        inbound: &Inbound,
        group: &str,
        position: Position,
        token: u64,
        message: &[u8],
    ) {
        let stream = group::stream_of(group);
        let rule = {
            let mut streams = lock(&self.seen);
            if !streams.subscribed.contains_key(stream) {
                // In flight when its last group was unsubscribed: the hub drops it.
                return;
            }
            let mut known = streams.seen.get(stream).copied();
            let rule = Seen::live(&mut known, position, token);
            if let Some(known) = known {
                streams.seen.insert(stream.to_owned(), known);
            }
            rule
        };
        match rule {
            positions::Live::Duplicate => {
                if position.offset != 0 {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
            positions::Live::LostThenDeliver => self.declare_lost(inbound, stream, "the stream changed epoch"),
            positions::Live::Deliver => {}
        }
        if position.offset == 0 {
            // A new epoch's notice (changes of the stream were dropped): no change.
            return;
        }
        inbound.deliver_at(group, position, Bytes::copy_from_slice(message));
    }

    fn declare_lost(&self, inbound: &Inbound, stream: &str, why: &str) {
        self.stats.lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%stream, why, "redis layer: changes of the stream may be lost");
        inbound.lost(stream);
    }

    /// After the groups were (re)subscribed: repairs every stream this
    /// process has seen (`all`, after a reconnection) and learns the head of
    /// the streams of `groups` it has not seen yet.
    pub(super) async fn catch_up(&self, groups: &[String], all: bool) -> Result<(), LayerError> {
        let mut streams: Vec<String> = Vec::new();
        {
            let mut known = lock(&self.seen);
            let Streams { seen, subscribed } = &mut *known;
            if all {
                // Streams no group of which is subscribed any more are forgotten.
                seen.retain(|stream, _| subscribed.contains_key(stream));
                streams.extend(seen.keys().cloned());
            }
            for group in groups {
                if let Some(stream) = stream_of(group)
                    && !seen.contains_key(stream)
                    && !streams.iter().any(|known| known == stream)
                {
                    streams.push(stream.to_owned());
                }
            }
        }
        for stream in streams {
            self.catch_up_stream(&stream).await?;
        }
        Ok(())
    }

    async fn catch_up_stream(&self, stream: &str) -> Result<(), LayerError> {
        let known = lock(&self.seen).seen.get(stream).copied();
        let Some(known) = known else {
            // First subscription to the stream: what came before is not ours.
            let read = self.changes.read(stream, None).await?;
            let head = read.map_or(Position { epoch: 0, offset: 0 }, |read| read.head);
            let seen = Seen { epoch: head.epoch, last: head.offset, floor: 0, token: 0 };
            lock(&self.seen).seen.insert(stream.to_owned(), seen);
            return Ok(());
        };
        let last = if known.epoch == 0 { 0 } else { known.last };
        // From the last change seen, when its token is known: the entry at
        // that offset must still be that change.
        let verify = known.token != 0 && last > 0;
        let read = self.changes.read(stream, Some(if verify { last } else { last + 1 })).await?;
        let inbound = self.inbound.get();
        let lost = |why: &str| {
            if let Some(inbound) = inbound {
                self.declare_lost(inbound, stream, why);
            } else {
                self.stats.lost.fetch_add(1, Ordering::Relaxed);
            }
        };
        let settled =
            |head: Position, token: u64| Seen { epoch: head.epoch, last: head.offset, floor: head.offset, token };
        let unknown = Seen { epoch: 0, last: 0, floor: 0, token: 0 };
        let now = match read {
            None if known.epoch == 0 => known,
            None => {
                lost("Redis lost the stream (restarted empty?)");
                unknown
            }
            Some(read) if known.epoch != 0 && read.head.epoch != known.epoch => {
                lost("the stream changed epoch");
                settled(read.head, 0)
            }
            Some(read)
                if read.head.offset < last
                    || (verify
                        && read.kept.first().is_some_and(|kept| kept.offset == last)
                        && read.tokens.first() != Some(&known.token)) =>
            {
                // Redis went back in time: its offsets name other changes
                // (the head is behind, or the last change seen was replaced).
                let moved = self.changes.move_epoch(stream, read.head.epoch).await?;
                lost("Redis went back in time (restored from an older snapshot?)");
                moved.map_or(unknown, |head| settled(head, 0))
            }
            Some(read) if read.head.offset == last => Seen { epoch: read.head.epoch, last, floor: last, ..known },
            Some(mut read) => {
                let head = read.head;
                if read.kept.first().is_some_and(|kept| kept.offset == last) {
                    // The last change seen, verified: not delivered again.
                    read.kept.remove(0);
                    read.tokens.remove(0);
                }
                let reaches = read.kept.first().map(|kept| kept.offset) == Some(last + 1)
                    && read.kept.last().map(|kept| kept.offset) == Some(head.offset);
                let token = if reaches { read.tokens.last().copied().unwrap_or(0) } else { 0 };
                if reaches {
                    if let Some(inbound) = inbound {
                        for kept in &read.kept {
                            let position = Position { epoch: head.epoch, offset: kept.offset };
                            for group in &kept.groups {
                                inbound.deliver_at(group, position, kept.message.clone());
                            }
                        }
                    }
                    self.stats.repaired.fetch_add(read.kept.len() as u64, Ordering::Relaxed);
                    tracing::info!(%stream, changes = read.kept.len(), "redis layer repaired missed changes from history");
                } else {
                    lost("the history no longer reaches back to the last change seen");
                }
                settled(head, token)
            }
        };
        lock(&self.seen).seen.insert(stream.to_owned(), now);
        Ok(())
    }

    /// Counts the groups of each stream subscribed on the live connection
    /// (Redis acknowledged `groups`' SUBSCRIBE, or UNSUBSCRIBE when not
    /// `subscribed`); a stream none of whose groups is subscribed any more is
    /// forgotten, so a later subscription starts from its head again.
    pub(super) fn count_subscribed(&self, groups: &[String], subscribed: bool) {
        let mut streams = lock(&self.seen);
        for stream in groups.iter().filter_map(|group| stream_of(group)) {
            if subscribed {
                *streams.subscribed.entry(stream.to_owned()).or_default() += 1;
            } else if let Some(count) = streams.subscribed.get_mut(stream) {
                *count -= 1;
                if *count == 0 {
                    streams.subscribed.remove(stream);
                    streams.seen.remove(stream);
                }
            }
        }
    }

    /// The connection is gone: nothing is subscribed; what was seen is kept
    /// for the repair.
    pub(super) fn forget_subscribed(&self) {
        lock(&self.seen).subscribed.clear();
    }
}

/// What the subscriber knows of the streams it listens to.
#[derive(Default)]
pub(super) struct Streams {
    /// What it has seen of each stream.
    seen: HashMap<String, Seen>,
    /// How many groups of each stream are subscribed on the live connection.
    subscribed: HashMap<String, usize>,
}

/// [`Streams`], the subscriber's only (a lock so its methods take `&self`).
pub(super) type SeenStreams = Mutex<Streams>;

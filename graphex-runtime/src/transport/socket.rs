//! The two-channel WebSocket: a channel per socket, the handshake, then the
//! channel's frames, filtered and projected per subscription, written in
//! batches with write pacing, until either side closes.

use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::sync::mpsc;

use crate::config::WritePacing;
use crate::hub::{Channel, ClientKey, CloseReason, Delivery, Hub, Latency, Transport};
use crate::transport::close::{
    CLOSE_CURSOR_EXPIRED, CLOSE_DISCONNECTED, CLOSE_FORBIDDEN, CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER,
    CLOSE_TRY_AGAIN_LATER, CLOSE_UNAUTHORIZED,
};
use crate::transport::gate::Gates;

/// Most deliveries written to a socket before one flush.
const WRITE_BATCH: usize = 256;

/// Read buffer of a two-channel socket. Clients send next to nothing on it,
/// and tungstenite zero-fills the whole read buffer on every read attempt
/// (each turn of the socket loop): the 128 KiB default cost a 128 KiB
/// memset per written batch and 128 KiB resident per connection.
pub(crate) const SOCKET_READ_BUFFER: usize = 4 * 1024;

/// Runs one two-channel WebSocket: opens a channel owned by `owner`, sends
/// the handshake, then writes the channel's frames until either side closes,
/// or until `expiry` fires (the token that opened it expired: close 4401),
/// or until the owner is revoked (close 4403).
/// Generic over the socket halves so tests can drive it with channels.
#[tracing::instrument(
    name = "connection",
    skip_all,
    fields(protocol = "two-channel", principal = tracing::field::Empty, channel = tracing::field::Empty)
)]
pub(crate) async fn serve_socket<Si, St, E>(
    hub: Hub,
    owner: Option<String>,
    // The timer, not the deadline: 8 bytes in every idle socket's future
    // (none for a token that does not expire) instead of 24.
    expiry: crate::transport::auth::Expiry,
    client: Option<ClientKey>,
    mut sink: Si,
    stream: St,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    // Recorded here rather than evaluated in the attribute: that kept 24
    // more bytes in every idle socket's future.
    if let Some(owner) = &owner {
        tracing::Span::current().record("principal", owner.as_str());
    }
    let (channel, rx) = match hub.open_channel_for(owner, client) {
        Ok(opened) => opened,
        Err(error) => {
            let frame = CloseFrame { code: CLOSE_TRY_AGAIN_LATER, reason: Utf8Bytes::from(error.to_string()) };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return;
        }
    };
    tracing::Span::current().record("channel", channel.id());
    tracing::debug!("connected");
    let _connected = hub.connected(Transport::TwoChannel);
    // Closes the channel however this future ends: returned, dropped, or
    // unwound by a panic (the shard catches it; the channel must not leak).
    let guard = Opened { hub: &hub, channel };
    // A revocation of the owner closes the channel (`Hub::revoke`).
    // Boxed: an anonymous socket's future then carries 8 bytes for it.
    let _session = guard.channel.owner().map(|owner| Box::new(hub.session_of_channel(owner, &guard.channel)));
    let handshake = serde_json::json!({"channel_id": guard.channel.id(), "connect": "success"}).to_string();
    let config = hub.config();
    let live = Liveness { ping: config.socket_ping, idle: config.socket_idle_timeout, send: config.send_timeout };
    if let Ok(Ok(())) = tokio::time::timeout(live.send, sink.send(Message::Text(handshake.into()))).await {
        let written = &hub.counters().queue_to_socket;
        pump(&guard.channel, rx, &mut sink, stream, config.write_pacing, live, written, expiry).await;
        if guard.channel.close_reason() == Some(CloseReason::TokenExpired) {
            hub.counters().tokens_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The open channel of a socket, closed when dropped.
struct Opened<'a> {
    hub: &'a Hub,
    channel: Arc<Channel>,
}

impl Drop for Opened<'_> {
    fn drop(&mut self) {
        self.hub.close_channel(&self.channel);
        tracing::debug!(reason = ?self.channel.close_reason(), "disconnected");
    }
}

/// How a socket finds out that its peer is gone.
#[derive(Clone, Copy)]
struct Liveness {
    /// Ping interval; `None`: no pings, and no idle timeout.
    ping: Option<Duration>,
    /// Nothing received for this long: the peer is gone.
    idle: Duration,
    /// A write making no progress for this long: the peer stopped reading.
    send: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn pump<Si, St, E>(
    channel: &Arc<Channel>,
    mut rx: mpsc::Receiver<Delivery>,
    sink: &mut Si,
    mut stream: St,
    pacing: Option<WritePacing>,
    live: Liveness,
    written: &Latency,
    mut expiry: crate::transport::auth::Expiry,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut frames = Vec::new();
    let period = live.ping.filter(|period| !period.is_zero());
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + period.unwrap_or(Duration::from_secs(3600)),
        period.unwrap_or(Duration::from_secs(3600)),
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = tokio::time::Instant::now();
    let mut last_write: Option<tokio::time::Instant> = None;
    // The loop's sources behind one registration of its waker per turn
    // (`Gates`): the read half and the ping timer are polled only once
    // their own waker fired, since a read attempt is not free (tungstenite
    // zero-fills its read buffer before each one, and the split socket
    // takes its lock) and neither is a timer's poll. The close wakes the
    // task through the same registration and is checked at every turn.
    let gates = Gates::new();
    let (read_waker, ping_waker) = (gates.waker(READ), gates.waker(PING));
    // The server's signals (the close, a queue past half full during a
    // hold) wake the task through the same registration; the loop checks
    // their flags, lock-free, rather than a gate bit.
    {
        let signal = gates.waker(SIGNAL);
        channel.wake_on_close(&signal);
        channel.wake_on_press(&signal);
    }
    let mut registered = None;
    loop {
        // The sources in the order they are polled. A change is the usual
        // wake-up, so the queue comes before the read half and the close:
        // a turn that finds a change polls neither.
        let turn = std::future::poll_fn(|cx| {
            gates.register(cx, &mut registered);
            // The token that opened the socket expired: closed like any
            // channel the server closes (the close, next turn).
            if let Some(sleep) = expiry.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Turn::Expired);
            }
            if period.is_some() && gates.poll(PING, &ping_waker, |cx| ping.poll_tick(cx)).is_ready() {
                return Poll::Ready(Turn::Ping);
            }
            if let Poll::Ready(delivery) = rx.poll_recv(cx) {
                return Poll::Ready(Turn::Delivery(delivery));
            }
            if let Poll::Ready(incoming) = gates.poll(READ, &read_waker, |cx| stream.poll_next_unpin(cx)) {
                return Poll::Ready(Turn::Incoming(incoming));
            }
            if channel.is_closed() { Poll::Ready(Turn::Closed) } else { Poll::Pending }
        })
        .await;
        match turn {
            Turn::Expired => {
                expiry = None;
                channel.close(CloseReason::TokenExpired);
            }
            Turn::Ping => {
                // Under a steady stream of changes the read half may not
                // have had a turn: what the peer sent meanwhile counts.
                loop {
                    match gates.poll(READ, &read_waker, |cx| stream.poll_next_unpin(cx)) {
                        Poll::Pending => break,
                        Poll::Ready(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return,
                        Poll::Ready(Some(Ok(_))) => heard = tokio::time::Instant::now(),
                    }
                }
                if heard.elapsed() > live.idle {
                    tracing::debug!(channel = channel.id(), "nothing heard from the peer: closing");
                    return;
                }
                match tokio::time::timeout(live.send, sink.send(Message::Ping(bytes::Bytes::new()))).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
            Turn::Delivery(delivery) => {
                let Some(delivery) = delivery else { return };
                // Closed by the server: nothing more is written (a revoked
                // principal gets nothing queued before the revocation).
                if channel.is_closed() {
                    return Box::pin(finish(channel, Some(delivery), &mut rx, sink, live.send)).await;
                }
                let hold = pacing.and_then(|pacing| {
                    pacing.hold_until(tokio::time::Instant::now(), delivery.queued_at(), last_write)
                });
                if let Some(until) = hold {
                    // The server is behind, or this socket wrote a moment
                    // ago: let the changes arriving meanwhile share this
                    // write. A busy runtime fires timers late, so a queue
                    // past half full ends the hold at once.
                    if hold_write(until, &gates, &mut registered, channel).await {
                        return Box::pin(finish(channel, Some(delivery), &mut rx, sink, live.send)).await;
                    }
                }
                // The first delivery of a batch is its oldest.
                let oldest = delivery.queued_at();
                channel.frames(&delivery, &mut frames).await;
                let mut batched = 1;
                while batched < WRITE_BATCH {
                    let Ok(delivery) = rx.try_recv() else { break };
                    channel.frames(&delivery, &mut frames).await;
                    batched += 1;
                }
                channel.taken();
                if frames.is_empty() {
                    continue;
                }
                last_write = Some(tokio::time::Instant::now());
                let mut write = std::pin::pin!(write_frames(sink, &mut frames));
                // Most writes complete at once (the kernel takes the bytes):
                // only one that does not is timed, and raced with the close.
                let done = match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
                    Poll::Ready(done) => done.is_ok(),
                    Poll::Pending => tokio::select! {
                        biased;
                        done = tokio::time::timeout(live.send, write) => matches!(done, Ok(Ok(()))),
                        // A client that stopped reading: give up on the write.
                        () = std::future::poll_fn(|cx| {
                            gates.register(cx, &mut registered);
                            if channel.is_closed() { Poll::Ready(()) } else { Poll::Pending }
                        }) => false,
                    },
                };
                if !done {
                    return;
                }
                // Once per write, not per delivery: one histogram update.
                if let Some(oldest) = oldest {
                    written.observe(oldest.elapsed());
                }
            }
            Turn::Incoming(incoming) => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            },
            // Boxed: its state (the drain) would otherwise be part of every
            // idle socket's future, a few hundred bytes per connection.
            Turn::Closed => return Box::pin(finish(channel, None, &mut rx, sink, live.send)).await,
        }
    }
}

/// Holds a socket's write (pacing) until `until`, or until the queue
/// passes half full (false), or the channel closes (true). Through the loop's `Gates`
/// registration: it registers nothing of its own. A function of its own:
/// inline in the loop, its sleep took 136 more bytes of every socket's
/// future (rustc laid it out apart from the write's state).
async fn hold_write(
    until: tokio::time::Instant,
    gates: &Gates,
    registered: &mut Option<Waker>,
    channel: &Channel,
) -> bool {
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(until));
    std::future::poll_fn(|cx| {
        gates.register(cx, registered);
        if channel.is_closed() {
            return Poll::Ready(true);
        }
        if channel.take_pressed() {
            return Poll::Ready(false);
        }
        sleep.as_mut().poll(cx).map(|()| false)
    })
    .await
}

/// The bits of a socket loop's gated sources (`Gates`).
const READ: u8 = 1;
const PING: u8 = 2;
/// The server's signals: the channel closed, its queue past half full.
const SIGNAL: u8 = 4;

/// What woke a socket's loop, in the order its sources are polled.
enum Turn<E> {
    /// The token that opened the socket expired.
    Expired,
    /// Time to ping the peer (and to check it was heard from).
    Ping,
    /// The channel's queue gave a delivery (`None`: it was closed).
    Delivery(Option<Delivery>),
    /// The peer sent something (`None`: the connection ended).
    Incoming(Option<Result<Message, E>>),
    /// The server closed the channel.
    Closed,
}

/// Most time a socket spends, at shutdown, writing what its queue still
/// holds before its close frame.
pub(crate) const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);

/// Ends a socket whose channel the server closed. At shutdown the changes
/// already queued for it (and `held`, taken but not yet written) are
/// written first, within [`SHUTDOWN_DRAIN`] and the send timeout, so that
/// a client's last cursor is as recent as the server could make it; for
/// any other reason (a slow consumer, a disconnect, an expired cursor) the
/// close goes at once. Then the close frame.
async fn finish<Si: Sink<Message> + Unpin>(
    channel: &Arc<Channel>,
    held: Option<Delivery>,
    rx: &mut mpsc::Receiver<Delivery>,
    sink: &mut Si,
    send: Duration,
) {
    if channel.close_reason() == Some(CloseReason::Shutdown) {
        let drain = async {
            let mut frames = Vec::new();
            if let Some(delivery) = &held {
                channel.frames(delivery, &mut frames).await;
            }
            while let Ok(delivery) = rx.try_recv() {
                channel.frames(&delivery, &mut frames).await;
            }
            write_frames(sink, &mut frames).await
        };
        let _ = tokio::time::timeout(SHUTDOWN_DRAIN.min(send), drain).await;
    }
    send_close(channel, sink).await;
}

/// Feeds `frames` (drained) to the socket as text messages (one that is not
/// UTF-8 is skipped) and flushes once: one write for the batch.
async fn write_frames<Si: Sink<Message> + Unpin>(
    sink: &mut Si,
    frames: &mut Vec<bytes::Bytes>,
) -> Result<(), Si::Error> {
    for frame in frames.drain(..) {
        let Ok(text) = Utf8Bytes::try_from(frame) else { continue };
        sink.feed(Message::Text(text)).await?;
    }
    sink.flush().await
}

/// Tells the client why the server closed its channel.
async fn send_close<Si: Sink<Message> + Unpin>(channel: &Channel, sink: &mut Si) {
    let (code, reason) = match channel.close_reason() {
        Some(CloseReason::SlowConsumer) => (CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full"),
        Some(CloseReason::Disconnected) => (CLOSE_DISCONNECTED, "disconnected by the server: reconnect"),
        Some(CloseReason::Expired) => (CLOSE_CURSOR_EXPIRED, "cursor expired: changes may be lost; resume or refetch"),
        Some(CloseReason::TokenExpired) => (CLOSE_UNAUTHORIZED, "token expired"),
        Some(CloseReason::Revoked) => (CLOSE_FORBIDDEN, "revoked"),
        _ => (CLOSE_GOING_AWAY, "server shutting down"),
    };
    let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use super::*;
    use crate::change::codec::Change;
    use crate::change::group;
    use crate::config::Config;
    use crate::hub::Subscription;
    use crate::model::Action;

    /// A socket's sending half that records which frames left in which flush.
    #[derive(Clone, Default)]
    struct Recorder {
        pending: Arc<Mutex<Vec<String>>>,
        flushed: Arc<Mutex<Vec<Vec<String>>>>,
        /// Set: the peer stopped reading, nothing more can be sent.
        stuck: Arc<std::sync::atomic::AtomicBool>,
        /// Close frames sent: their code, and how many writes were flushed before.
        closes: Arc<Mutex<Vec<(u16, usize)>>>,
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<String>> {
            self.flushed.lock().unwrap().clone()
        }
    }

    impl Sink<Message> for Recorder {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.stuck.load(std::sync::atomic::Ordering::Relaxed) { Poll::Pending } else { Poll::Ready(Ok(())) }
        }

        fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            match message {
                Message::Text(text) => self.pending.lock().unwrap().push(text.to_string()),
                Message::Close(frame) => {
                    let code = frame.map_or(0, |frame| frame.code);
                    let before = self.flushed.lock().unwrap().len();
                    self.closes.lock().unwrap().push((code, before));
                }
                _ => {}
            }
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            let batch = std::mem::take(&mut *self.pending.lock().unwrap());
            if !batch.is_empty() {
                self.flushed.lock().unwrap().push(batch);
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.poll_flush(context)
        }
    }

    /// A socket on `hub` subscribed to every user creation; returns its recorder.
    async fn subscribed_socket(hub: &Hub) -> Recorder {
        owned_socket(hub, None, None).await
    }

    async fn create(hub: &Hub, pk: i64) {
        let change = Change::user_created(pk, None);
        hub.publish(&[group::coarse("users", Action::Create)], change.encode()).await;
    }

    /// Lets the socket task run until it has nothing left to do (time is paused).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_keeps_up_writes_each_change_at_once() {
        let hub = Hub::default();
        let pacing = hub.config().write_pacing.expect("pacing is on by default");
        let recorder = subscribed_socket(&hub).await;
        create(&hub, 1).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "handshake, then the first change at once");
        // The next change comes after the socket's minimum interval: no wait either.
        tokio::time::advance(pacing.min_interval).await;
        create(&hub, 2).await;
        settle().await;
        let writes = recorder.writes();
        assert_eq!(writes.len(), 3, "handshake, then one write per change: {writes:?}");
        assert!(writes[1][0].contains(r#""id":1"#) && writes[2][0].contains(r#""id":2"#));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_socket_writes_at_most_once_per_min_interval() {
        let hub = Hub::default();
        let pacing = hub.config().write_pacing.expect("pacing is on by default");
        let recorder = subscribed_socket(&hub).await;
        let start = tokio::time::Instant::now();
        create(&hub, 1).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "the first change at once");
        // Changes keep coming sooner than the minimum interval: they wait
        // for it, and leave in one write.
        create(&hub, 2).await;
        settle().await;
        tokio::time::advance(pacing.min_interval / 4).await;
        create(&hub, 3).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "changes 2 and 3 wait for the interval to pass");
        tokio::time::sleep_until(start + pacing.min_interval).await;
        settle().await;
        let writes = recorder.writes();
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(writes[2].len(), 2, "2 and 3 in one write: {writes:?}");
        assert!(writes[2][0].contains(r#""id":2"#) && writes[2][1].contains(r#""id":3"#));
        // Without the interval, each change is written at once.
        let hub = Hub::new(Config::default().with_write_pacing(Some(pacing.with_min_interval(Duration::ZERO))));
        let recorder = subscribed_socket(&hub).await;
        for pk in 1..=3 {
            create(&hub, pk).await;
            settle().await;
        }
        assert_eq!(recorder.writes().len(), 4, "handshake and three writes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_of_a_server_that_is_behind_gathers_changes_into_one_write() {
        let hub = Hub::default();
        let pacing = hub.config().write_pacing.expect("pacing is on by default");
        let recorder = subscribed_socket(&hub).await;
        // The first change reaches the socket task late: the server is behind.
        create(&hub, 1).await;
        tokio::time::advance(pacing.busy_after * 2).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 1, "only the handshake: the socket waits for more changes");
        create(&hub, 2).await;
        create(&hub, 3).await;
        tokio::time::advance(pacing.window).await;
        settle().await;
        let writes = recorder.writes();
        assert_eq!(writes.len(), 2, "the three changes left in one write: {writes:?}");
        assert_eq!(writes[1].len(), 3);
        for (frame, id) in writes[1].iter().zip(1..) {
            assert!(frame.contains(&format!(r#""id":{id}"#)), "in order: {frame}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_full_queue_ends_the_hold_without_waiting_for_the_timer() {
        let hub = Hub::new(Config { queue_capacity: 8, ..Config::default() });
        let pacing = hub.config().write_pacing.expect("pacing is on by default");
        let recorder = subscribed_socket(&hub).await;
        create(&hub, 0).await;
        tokio::time::advance(pacing.busy_after * 2).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 1, "the socket holds");
        let start = tokio::time::Instant::now();
        for pk in 1..=4 {
            create(&hub, pk).await;
        }
        settle().await;
        let writes = recorder.writes();
        assert_eq!(writes.len(), 2, "the held change and the queued ones were written: {writes:?}");
        assert_eq!(writes[1].len(), 5);
        assert_eq!(tokio::time::Instant::now(), start, "without the hold's timer");
    }

    #[tokio::test(start_paused = true)]
    async fn at_shutdown_held_and_queued_changes_are_written_before_the_close() {
        let hub = Hub::default();
        let recorder = subscribed_socket(&hub).await;
        create(&hub, 1).await;
        settle().await;
        // Within the socket's minimum interval: 2 is held, 3 queued behind it.
        create(&hub, 2).await;
        settle().await;
        create(&hub, 3).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "handshake and change 1; 2 and 3 wait");
        hub.shutdown();
        settle().await;
        let writes = recorder.writes();
        assert_eq!(writes.len(), 3, "2 and 3 written at shutdown: {writes:?}");
        assert!(writes[2][0].contains(r#""id":2"#) && writes[2][1].contains(r#""id":3"#), "{writes:?}");
        let closes = recorder.closes.lock().unwrap().clone();
        assert_eq!(closes, vec![(CLOSE_GOING_AWAY, 3)], "then the close, after them");
    }

    #[tokio::test(start_paused = true)]
    async fn without_pacing_a_late_change_is_written_at_once() {
        let hub = Hub::new(Config { write_pacing: None, ..Config::default() });
        let recorder = subscribed_socket(&hub).await;
        create(&hub, 1).await;
        tokio::time::advance(Duration::from_millis(50)).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "handshake and the change");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stopped_reading_is_let_go_after_the_send_timeout() {
        let hub = Hub::new(Config::default().with_socket_ping(None));
        let recorder = subscribed_socket(&hub).await;
        recorder.stuck.store(true, std::sync::atomic::Ordering::Relaxed);
        create(&hub, 1).await;
        settle().await;
        assert_eq!(hub.channel_count(), 1, "the write waits");
        tokio::time::sleep(hub.config().send_timeout + Duration::from_millis(10)).await;
        settle().await;
        assert_eq!(hub.channel_count(), 0, "the channel is freed once the write made no progress for the bound");
        assert_eq!(hub.group_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_to_a_peer_that_stopped_reading_ends_when_the_server_closes_the_channel() {
        let hub = Hub::new(Config::default().with_socket_ping(None));
        let recorder = owned_socket(&hub, Some("ann"), None).await;
        recorder.stuck.store(true, std::sync::atomic::Ordering::Relaxed);
        create(&hub, 1).await;
        settle().await;
        assert_eq!(hub.channel_count(), 1, "the write waits");
        hub.revoke("ann").await.unwrap();
        settle().await;
        assert_eq!(hub.channel_count(), 0, "let go at the close, not after the send timeout");
        assert_eq!(hub.group_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_closed_after_the_idle_timeout() {
        let config = Config::default()
            .with_socket_ping(Some(Duration::from_secs(1)))
            .with_socket_idle_timeout(Duration::from_secs(3));
        let hub = Hub::new(config);
        let _recorder = subscribed_socket(&hub).await;
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        settle().await;
        assert_eq!(hub.channel_count(), 1, "pinged, not yet idle");
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(hub.channel_count(), 0, "nothing heard for longer than the idle timeout");
    }

    /// A socket opened by `owner`'s token, which expires at `deadline`;
    /// subscribed to every user creation.
    async fn owned_socket(hub: &Hub, owner: Option<&str>, deadline: Option<tokio::time::Instant>) -> Recorder {
        let recorder = Recorder::default();
        let silent_client = futures_util::stream::pending::<Result<Message, std::convert::Infallible>>();
        let socket = serve_socket(
            hub.clone(),
            owner.map(str::to_owned),
            crate::transport::auth::expiry(deadline),
            None,
            recorder.clone(),
            silent_client,
        );
        tokio::spawn(socket);
        settle().await;
        let handshake: serde_json::Value = serde_json::from_str(&recorder.writes()[0][0]).unwrap();
        let channel = hub.channel(handshake["channel_id"].as_str().unwrap()).expect("the socket's channel");
        let subscription = Subscription::of_users(&group::coarse("users", Action::Create), Action::Create, None);
        hub.add_subscription(&channel, subscription).await.unwrap();
        recorder
    }

    fn closes(recorder: &Recorder) -> Vec<u16> {
        recorder.closes.lock().unwrap().iter().map(|(code, _)| *code).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_closes_with_4401_when_its_token_expires_and_not_before() {
        let hub = Hub::new(Config::default().with_socket_ping(None).with_write_pacing(None));
        let expiry = Duration::from_secs(60);
        let recorder = owned_socket(&hub, Some("ann"), Some(tokio::time::Instant::now() + expiry)).await;
        tokio::time::advance(expiry - Duration::from_millis(1)).await;
        create(&hub, 1).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "a millisecond before the expiry, still receiving");
        assert!(closes(&recorder).is_empty());
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(closes(&recorder), vec![CLOSE_UNAUTHORIZED], "closed at the expiry");
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.stats().tokens_expired, 1);
        assert_eq!(hub.session_count(), 0, "its registration is gone");
    }

    #[tokio::test(start_paused = true)]
    async fn revoking_a_principal_closes_its_sockets_with_4403_and_no_other() {
        let hub = Hub::new(Config::default().with_socket_ping(None).with_write_pacing(None));
        let ann = owned_socket(&hub, Some("ann"), None).await;
        let ann_again = owned_socket(&hub, Some("ann"), None).await;
        let bob = owned_socket(&hub, Some("bob"), None).await;
        assert_eq!(hub.session_count(), 3);
        hub.revoke("ann").await.unwrap();
        settle().await;
        assert_eq!(closes(&ann), vec![CLOSE_FORBIDDEN]);
        assert_eq!(closes(&ann_again), vec![CLOSE_FORBIDDEN]);
        assert!(closes(&bob).is_empty());
        create(&hub, 1).await;
        settle().await;
        assert_eq!(bob.writes().len(), 2, "bob still receives");
        assert_eq!(hub.stats().revoked, 2);
        assert_eq!(hub.session_count(), 1);
    }

    #[tokio::test]
    async fn a_socket_future_dropped_midway_frees_its_channel() {
        // The shard catches a panic by dropping the socket's future: the
        // channel goes with it, whatever point the future had reached.
        let hub = Hub::default();
        let recorder = Recorder::default();
        let silent_client = futures_util::stream::pending::<Result<Message, std::convert::Infallible>>();
        let socket = tokio::spawn(serve_socket(hub.clone(), None, None, None, recorder, silent_client));
        while hub.channel_count() == 0 {
            tokio::task::yield_now().await;
        }
        socket.abort();
        let _ = socket.await;
        assert_eq!(hub.channel_count(), 0);
    }
}

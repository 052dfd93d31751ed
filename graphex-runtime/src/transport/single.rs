//! The graphql-sse protocol's single connection mode: one event stream
//! carries the results of every operation a client posts, each frame
//! tagged with the operation's id.
//!
//! 1. `PUT` makes a reservation ([`Reservations::reserve`]): `201` and a
//!    token, which starts with this hub's node id ([`Hub::node_of`]) and
//!    holds 128 random bits, so any process can tell which one holds it.
//! 2. `GET` with the token (`x-graphql-event-stream-token` header or
//!    `?token=`) and `Accept: text/event-stream` opens the stream
//!    ([`Reservations::open`]): `404` for an unknown token, `409` when the
//!    reservation's stream is open already. A reservation whose stream is
//!    not opened within [`RESERVATION_TTL`] expires.
//! 3. `POST` of a GraphQL request with the token (header only: a `?token=`
//!    on a `POST` is left alone) and
//!    `extensions.operationId` starts an operation on the stream
//!    ([`Reservation::start`]): `202`; its results arrive as
//!    `event: next` / `data: {"id":..,"payload":..}`, then
//!    `event: complete` / `data: {"id":..}`. `409` for an id in use.
//! 4. `DELETE ?operationId=` stops one ([`Reservation::stop`]): `200`, and
//!    the stream gets the operation's `complete`.
//!
//! A reservation belongs to the client that made it (its principal, else
//! its address): a request of another client with the token is answered
//! as for an unknown token (`404`). It holds one of the client's
//! streaming-response slots ([`crate::Config::max_streams_per_client`])
//! from the `PUT` until the stream ends or the reservation expires; its
//! operations are bounded by [`crate::ProtocolConfig::max_operations`] and
//! their ids by [`crate::ProtocolConfig::max_operation_id_bytes`].
//!
//! The stream ends when the client leaves; at the hub's shutdown once its
//! running operations have sent their last frames (at most
//! `SHUTDOWN_DRAIN`); when the token of its `GET` expires or the principal
//! is revoked, after one error result and a `complete` per running
//! operation.
//!
//! A `POST` or `DELETE` reaching a process other than the one holding the
//! reservation is forwarded to that one (`forward.rs`), like a two-channel
//! subscribe; the reply is an [`Outcome`]. The `PUT` and its `GET` must
//! reach the same process (a `GET` elsewhere is a `404`: the client then
//! reserves again).
//!
//! Calls `hub` (the per-client count, shutdown, the scope of mutations).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::hub::{ClientKey, Hub, Resource};
use crate::transport::auth;
use crate::transport::socket::SHUTDOWN_DRAIN;
use crate::transport::streaming::Part;

/// The header carrying a reservation's token.
pub(crate) const TOKEN_HEADER: &str = "x-graphql-event-stream-token";

/// The query parameter carrying a reservation's token (for `EventSource`,
/// which sets no headers).
pub(crate) const TOKEN_QUERY: &str = "token";

/// How long a reservation waits for its stream to be opened.
pub(crate) const RESERVATION_TTL: Duration = Duration::from_secs(30);

/// Bytes of a token: the node id and 128 random bits, hex.
pub(crate) const TOKEN_BYTES: usize = crate::hub::NODE_ID_LEN + 32;

/// The token a request presents: the header, else `?token=`.
pub(crate) fn token<'a>(headers: &'a HeaderMap, raw_query: Option<&'a str>) -> Option<String> {
    if let Some(token) = headers.get(TOKEN_HEADER).and_then(|value| value.to_str().ok()) {
        return Some(token.to_owned());
    }
    query_param(raw_query?, TOKEN_QUERY)
}

/// A parameter of a URL's query string, percent-decoded.
pub(crate) fn query_param(raw_query: &str, name: &str) -> Option<String> {
    raw_query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then(|| {
            let value = value.replace('+', " ");
            percent_encoding::percent_decode_str(&value).decode_utf8_lossy().into_owned()
        })
    })
}

/// What a single-connection request comes to: its HTTP status, and the
/// reason of a refusal. What a forwarded operation or stop sends back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Outcome {
    /// The HTTP status.
    pub status: u16,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Outcome {
    pub(crate) fn ok(status: StatusCode) -> Outcome {
        Outcome { status: status.as_u16(), message: None }
    }

    pub(crate) fn refused(status: StatusCode, message: impl Into<String>) -> Outcome {
        Outcome { status: status.as_u16(), message: Some(message.into()) }
    }

    /// `404`: no reservation with this token for this client here.
    pub(crate) fn not_found() -> Outcome {
        Outcome::refused(StatusCode::NOT_FOUND, "stream not found")
    }

    /// The HTTP response: the status, and a GraphQL error body for a refusal.
    pub(crate) fn into_http(self) -> axum::response::Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self.message {
            Some(message) => {
                let body = serde_json::json!({ "errors": [{ "message": message }] }).to_string();
                (status, [(axum::http::header::CONTENT_TYPE, "application/json; charset=utf-8")], body).into_response()
            }
            None => status.into_response(),
        }
    }
}

/// One frame of a single-connection stream.
enum Message {
    /// `event: next`, the data `{"id":..,"payload":..}` serialized.
    Next(String),
    /// `event: complete`, the data `{"id":..}` serialized.
    Complete(String),
}

impl Message {
    fn next(id: &str, part: Part) -> Option<Message> {
        let payload = part.json()?;
        let id = serde_json::to_string(id).ok()?;
        let payload = std::str::from_utf8(&payload).ok()?;
        // Compact JSON has no line break: one `data:` line.
        Some(Message::Next(format!("{{\"id\":{id},\"payload\":{payload}}}")))
    }

    fn complete(id: &str) -> Message {
        Message::Complete(serde_json::json!({ "id": id }).to_string())
    }

    fn event(self) -> Event {
        match self {
            Message::Next(data) => Event::default().event("next").data(data),
            Message::Complete(data) => Event::default().event("complete").data(data),
        }
    }
}

/// The reservations of one router, by token.
pub(crate) struct Reservations {
    hub: Hub,
    by_token: Mutex<HashMap<String, Arc<Reservation>>>,
}

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservations").field("len", &self.len()).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Reservations {
    pub(crate) fn new(hub: Hub) -> Arc<Reservations> {
        Arc::new(Reservations { hub, by_token: Mutex::default() })
    }

    /// Reservations held (opened or not).
    pub(crate) fn len(&self) -> usize {
        lock(&self.by_token).len()
    }

    /// A new reservation of `client`: its token, or the refusal (`409` when
    /// `presented` names one of the client's live reservations, as
    /// graphql-sse's own server answers; `429` when the client holds all
    /// its streaming-response slots).
    pub(crate) fn reserve(
        self: &Arc<Self>,
        client: Option<ClientKey>,
        presented: Option<&str>,
    ) -> Result<String, Outcome> {
        if presented.is_some_and(|token| self.find(token, client.as_ref()).is_some()) {
            return Err(Outcome::refused(StatusCode::CONFLICT, "stream already registered"));
        }
        if let Err(error) = self.hub.take(client.as_ref(), Resource::Streams, 1) {
            return Err(Outcome::refused(StatusCode::TOO_MANY_REQUESTS, error.to_string()));
        }
        let token = self.hub.reservation_token();
        let (tx, rx) = mpsc::channel(self.hub.config().queue_capacity.max(1));
        let reservation = Arc::new(Reservation {
            hub: self.hub.clone(),
            client,
            ended: CancellationToken::new(),
            tx,
            rx: Mutex::new(Some(rx)),
            operations: Mutex::default(),
        });
        lock(&self.by_token).insert(token.clone(), reservation.clone());
        // Expires unless opened in time; ends with the hub.
        let reservations = Arc::downgrade(self);
        let ended = reservation.ended.clone();
        let shutdown = self.hub.shutting_down().clone();
        let expiring = token.clone();
        self.hub.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(RESERVATION_TTL) => {}
                () = shutdown.cancelled() => {}
                () = ended.cancelled() => return,
            }
            if let Some(reservations) = reservations.upgrade() {
                reservations.expire(&expiring);
            }
        });
        Ok(token)
    }

    /// Removes the reservation if its stream was never opened.
    fn expire(&self, token: &str) {
        let mut by_token = lock(&self.by_token);
        let unopened = by_token.get(token).is_some_and(|reservation| lock(&reservation.rx).is_some());
        if unopened && let Some(reservation) = by_token.remove(token) {
            reservation.ended.cancel();
        }
    }

    /// The reservation `token` names, if `client` made it.
    pub(crate) fn find(&self, token: &str, client: Option<&ClientKey>) -> Option<Arc<Reservation>> {
        lock(&self.by_token).get(token).filter(|reservation| reservation.client.as_ref() == client).cloned()
    }

    /// The reservation's event stream, or the refusal (`404`, `409`). The
    /// stream ends when the client goes, or at [`Hub::shutdown`]; its end
    /// ends the reservation and its operations.
    pub(crate) fn open(
        self: &Arc<Self>,
        token: &str,
        client: Option<&ClientKey>,
        deadline: Option<tokio::time::Instant>,
        session: Option<crate::hub::Session>,
    ) -> Result<axum::response::Response, Outcome> {
        let reservation = self.find(token, client).ok_or_else(Outcome::not_found)?;
        let Some(rx) = lock(&reservation.rx).take() else {
            return Err(Outcome::refused(StatusCode::CONFLICT, "stream already open"));
        };
        let open = Opened {
            reservations: Arc::downgrade(self),
            token: token.to_owned(),
            ended: reservation.ended.clone(),
            _open: self.hub.connected(crate::hub::Transport::Sse),
        };
        let ended = reservation.ended.clone();
        let shutdown = self.hub.shutting_down().clone();
        let (reservations, token) = (Arc::downgrade(self), token.to_owned());
        let running = Arc::downgrade(&reservation);
        drop(reservation);
        let why: Arc<std::sync::OnceLock<auth::Ended>> = Arc::default();
        let until = {
            let why = why.clone();
            async move {
                tokio::select! {
                    () = ended.cancelled() => {}
                    () = async {
                        shutdown.cancelled().await;
                        // No new operations. The stream ends once every
                        // running one has sent its last frame (the
                        // reservation, and the sender it holds, go with the
                        // last: `rx` then ends), at most `SHUTDOWN_DRAIN`.
                        if let Some(reservations) = reservations.upgrade() {
                            lock(&reservations.by_token).remove(&token);
                        }
                        tokio::time::sleep(SHUTDOWN_DRAIN).await;
                    } => {}
                    ended = auth::Ending::new(session.as_ref(), auth::expiry(deadline)) => {
                        let _ = why.set(ended);
                    }
                }
            }
        };
        // Ended by its token's expiry or its principal's revocation: each
        // running operation gets the error result and its `complete`.
        let tail = futures_util::stream::once(async move {
            let (Some(ended), Some(reservation)) = (why.get().copied(), running.upgrade()) else {
                return Vec::new();
            };
            if ended == auth::Ended::TokenExpired {
                reservation.hub.counters().tokens_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let mut ids: Vec<String> = lock(&reservation.operations).running.keys().cloned().collect();
            ids.sort_unstable();
            ids.iter()
                .flat_map(|id| [Message::next(id, Part::Own(Box::new(ended.response()))), Some(Message::complete(id))])
                .flatten()
                .collect()
        })
        .flat_map(futures_util::stream::iter);
        let messages = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) })
            .take_until(until)
            .chain(tail)
            .map(move |message| {
                let _ends_the_reservation_when_dropped = &open;
                Ok::<_, std::convert::Infallible>(message.event())
            });
        // A comment first, so that the client sees the response start
        // before any operation has results (graphql-sse's server does too).
        let events = futures_util::stream::once(async { Ok(Event::default().comment("")) }).chain(messages);
        Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
    }
}

/// Held by an open stream: its end ends the reservation.
struct Opened {
    reservations: Weak<Reservations>,
    token: String,
    ended: CancellationToken,
    /// Counts the stream in `graphex_connections_open` while it lives.
    _open: crate::hub::Connected,
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.ended.cancel();
        if let Some(reservations) = self.reservations.upgrade() {
            lock(&reservations.by_token).remove(&self.token);
        }
    }
}

/// A reserved event stream and the operations running on it.
pub(crate) struct Reservation {
    hub: Hub,
    /// Who made it; holds one of its streaming-response slots.
    client: Option<ClientKey>,
    /// Cancelled when the stream ends or the reservation expires: the
    /// operations stop.
    ended: CancellationToken,
    /// Where the operations' frames go (bounded: an operation waits for a
    /// slow stream, and its hub channel then overflows as a slow consumer).
    tx: mpsc::Sender<Message>,
    /// The stream's end of `tx`, until the stream is opened.
    rx: Mutex<Option<mpsc::Receiver<Message>>>,
    operations: Mutex<Operations>,
}

#[derive(Default)]
struct Operations {
    /// Running operations by id: their start number and stop signal.
    running: HashMap<String, (u64, CancellationToken)>,
    started: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.hub.release(self.client.as_ref(), Resource::Streams, 1);
    }
}

impl Reservation {
    /// Runs an operation's results onto the stream, in a task of its own
    /// (in the hub's scope, so a mutation's changes are announced): `202`,
    /// or `409` for an id in use, `429` past `max_operations`.
    pub(crate) fn start(
        self: &Arc<Self>,
        id: String,
        parts: BoxStream<'static, Part>,
        max_operations: usize,
    ) -> Outcome {
        let (started, stop) = {
            let mut operations = lock(&self.operations);
            if operations.running.contains_key(&id) {
                return Outcome::refused(StatusCode::CONFLICT, "operation with this id already exists");
            }
            if operations.running.len() >= max_operations {
                let message = format!("too many operations on this stream ({max_operations} at most)");
                return Outcome::refused(StatusCode::TOO_MANY_REQUESTS, message);
            }
            operations.started += 1;
            let (started, stop) = (operations.started, self.ended.child_token());
            operations.running.insert(id.clone(), (started, stop.clone()));
            (started, stop)
        };
        let reservation = self.clone();
        let hub = self.hub.clone();
        hub.clone().spawn(async move { hub.scope(reservation.run(id, started, stop, parts)).await });
        Outcome::ok(StatusCode::ACCEPTED)
    }

    async fn run(
        self: Arc<Self>,
        id: String,
        started: u64,
        stop: CancellationToken,
        mut parts: BoxStream<'static, Part>,
    ) {
        loop {
            let part = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                part = parts.next() => part,
            };
            let Some(part) = part else { break };
            let Some(message) = Message::next(&id, part) else { continue };
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                sent = self.tx.send(message) => if sent.is_err() { break },
            }
        }
        // The operation (and its hub channel) goes before its `complete`.
        drop(parts);
        {
            let mut operations = lock(&self.operations);
            if operations.running.get(&id).is_some_and(|(number, _)| *number == started) {
                operations.running.remove(&id);
            }
        }
        if !self.ended.is_cancelled() {
            tokio::select! {
                () = self.ended.cancelled() => {}
                _ = self.tx.send(Message::complete(&id)) => {}
            }
        }
    }

    /// Stops the operation `id` if it runs (its `complete` follows on the
    /// stream): `200` either way, as graphql-sse's server answers.
    pub(crate) fn stop(&self, id: &str) -> Outcome {
        if let Some((_, stop)) = lock(&self.operations).running.remove(id) {
            stop.cancel();
        }
        Outcome::ok(StatusCode::OK)
    }

    /// Operations running on this stream.
    #[cfg(test)]
    fn operation_count(&self) -> usize {
        lock(&self.operations).running.len()
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::Config;

    fn response(value: serde_json::Value) -> Part {
        Part::Own(Box::new(async_graphql::Response::new(async_graphql::Value::from_json(value).unwrap())))
    }

    type Body = axum::body::BodyDataStream;

    async fn body_until(body: &mut Body, needle: &str) -> String {
        let mut text = String::new();
        while !text.contains(needle) {
            let chunk = body.next().await.expect("more of the stream").expect("a chunk");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        text
    }

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(query_param("a=1&operationId=x%20y&b", "operationId").as_deref(), Some("x y"));
        assert_eq!(query_param("token=abc", "token").as_deref(), Some("abc"));
        assert_eq!(query_param("tokens=abc", "token"), None);
    }

    #[tokio::test]
    async fn frames_carry_the_operation_id() {
        let hub = Hub::new(Config::default());
        let reservations = Reservations::new(hub.clone());
        let client: Option<ClientKey> = Some(Arc::from("p:ann"));
        let token = reservations.reserve(client.clone(), None).expect("reserved");
        assert!(token.starts_with(hub.node()) && token.len() == TOKEN_BYTES, "{token}");
        let mut stream =
            reservations.open(&token, client.as_ref(), None, None).expect("opened").into_body().into_data_stream();
        let reservation = reservations.find(&token, client.as_ref()).unwrap();
        let parts = futures_util::stream::iter([response(serde_json::json!({"a": 1}))]).boxed();
        assert_eq!(reservation.start("op\"1".into(), parts, 10), Outcome::ok(StatusCode::ACCEPTED));
        let text = body_until(&mut stream, "event: complete").await;
        assert_eq!(
            text,
            ": \n\nevent: next\ndata: {\"id\":\"op\\\"1\",\"payload\":{\"data\":{\"a\":1}}}\n\n\
             event: complete\ndata: {\"id\":\"op\\\"1\"}\n\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unopened_reservation_expires_and_gives_its_slot_back() {
        let hub = Hub::new(Config::default().with_max_streams_per_client(1));
        let reservations = Reservations::new(hub.clone());
        let client: Option<ClientKey> = Some(Arc::from("p:ann"));
        let token = reservations.reserve(client.clone(), None).expect("reserved");
        let refused = reservations.reserve(client.clone(), None).expect_err("one slot");
        assert_eq!(refused.status, 429);
        tokio::time::sleep(RESERVATION_TTL - Duration::from_secs(1)).await;
        assert!(reservations.find(&token, client.as_ref()).is_some(), "not yet expired");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(reservations.len(), 0, "expired");
        assert_eq!(reservations.open(&token, client.as_ref(), None, None).unwrap_err().status, 404);
        reservations.reserve(client, None).expect("the slot is back");
    }

    #[tokio::test(start_paused = true)]
    async fn an_opened_reservation_does_not_expire() {
        let hub = Hub::new(Config::default());
        let reservations = Reservations::new(hub.clone());
        let token = reservations.reserve(None, None).expect("reserved");
        let _stream = reservations.open(&token, None, None, None).expect("opened");
        assert_eq!(reservations.open(&token, None, None, None).unwrap_err().status, 409);
        tokio::time::sleep(RESERVATION_TTL * 2).await;
        assert_eq!(reservations.len(), 1);
    }

    #[tokio::test]
    async fn operations_are_bounded_and_stopped() {
        let hub = Hub::new(Config::default());
        let reservations = Reservations::new(hub.clone());
        let token = reservations.reserve(None, None).expect("reserved");
        let mut stream = reservations.open(&token, None, None, None).expect("opened").into_body().into_data_stream();
        let reservation = reservations.find(&token, None).unwrap();
        let forever = || futures_util::stream::pending::<Part>().boxed();
        assert_eq!(reservation.start("a".into(), forever(), 2).status, 202);
        assert_eq!(reservation.start("a".into(), forever(), 2).status, 409);
        assert_eq!(reservation.start("b".into(), forever(), 2).status, 202);
        assert_eq!(reservation.start("c".into(), forever(), 2).status, 429);
        assert_eq!(reservation.stop("a").status, 200);
        assert_eq!(reservation.stop("unknown").status, 200);
        let text = body_until(&mut stream, "event: complete").await;
        assert_eq!(text, ": \n\nevent: complete\ndata: {\"id\":\"a\"}\n\n");
        assert_eq!(reservation.operation_count(), 1);
        drop(stream);
        // The stream's end ends the reservation and its operations.
        assert_eq!(reservations.len(), 0);
        while reservation.operation_count() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(reservations.find(&token, Some(&Arc::from("p:mallory"))).map(|_| ()), None, "another client");
    }

    /// The whole body, once the stream ends, without keep-alive comments.
    async fn body_to_end(body: &mut Body) -> String {
        let mut text = String::new();
        while let Some(chunk) = body.next().await {
            text.push_str(std::str::from_utf8(&chunk.expect("a chunk")).unwrap());
        }
        text.replace(":\n\n", "")
    }

    #[tokio::test(start_paused = true)]
    async fn at_its_token_s_expiry_each_operation_ends_with_the_error_and_the_stream_ends() {
        let hub = Hub::new(Config::default());
        let reservations = Reservations::new(hub.clone());
        let token = reservations.reserve(None, None).expect("reserved");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let response = reservations.open(&token, None, Some(deadline), Some(hub.session("ann"))).expect("opened");
        let mut stream = response.into_body().into_data_stream();
        let reservation = reservations.find(&token, None).unwrap();
        let forever = || futures_util::stream::pending::<Part>().boxed();
        assert_eq!(reservation.start("b".into(), forever(), 10).status, 202);
        assert_eq!(reservation.start("a".into(), forever(), 10).status, 202);
        drop(reservation);
        assert_eq!(body_until(&mut stream, ": \n\n").await, ": \n\n");
        tokio::time::sleep(Duration::from_millis(59_999)).await;
        while let Some(Some(chunk)) = stream.next().now_or_never() {
            let chunk = chunk.expect("a chunk");
            assert_eq!(&chunk[..], b":\n\n", "only keep-alives before the deadline");
        }
        let text = body_to_end(&mut stream).await;
        let error = r#"{"data":null,"errors":[{"message":"token expired","extensions":{"code":"TOKEN_EXPIRED"}}]}"#;
        assert_eq!(
            text,
            format!(
                "event: next\ndata: {{\"id\":\"a\",\"payload\":{error}}}\n\nevent: complete\ndata: {{\"id\":\"a\"}}\n\n\
                 event: next\ndata: {{\"id\":\"b\",\"payload\":{error}}}\n\nevent: complete\ndata: {{\"id\":\"b\"}}\n\n"
            )
        );
        drop(stream);
        assert_eq!(reservations.len(), 0);
        assert_eq!(hub.stats().tokens_expired, 1);
    }

    #[tokio::test]
    async fn a_revoked_principal_s_stream_ends() {
        let hub = Hub::new(Config::default());
        let reservations = Reservations::new(hub.clone());
        let ann = reservations.reserve(Some(Arc::from("p:ann")), None).expect("reserved");
        let bob = reservations.reserve(Some(Arc::from("p:bob")), None).expect("reserved");
        let open = |token: &str, who: &str| {
            let client: ClientKey = Arc::from(format!("p:{who}"));
            let response = reservations.open(token, Some(&client), None, Some(hub.session(who))).expect("opened");
            response.into_body().into_data_stream()
        };
        let (mut ann_stream, mut bob_stream) = (open(&ann, "ann"), open(&bob, "bob"));
        let ann_reservation = reservations.find(&ann, Some(&Arc::from("p:ann"))).unwrap();
        let forever = || futures_util::stream::pending::<Part>().boxed();
        assert_eq!(ann_reservation.start("1".into(), forever(), 10).status, 202);
        drop(ann_reservation);
        hub.revoke("ann").await.expect("revoked");
        let text = body_to_end(&mut ann_stream).await;
        assert!(
            text.contains(r#""code":"REVOKED""#) && text.ends_with("event: complete\ndata: {\"id\":\"1\"}\n\n"),
            "{text}"
        );
        assert_eq!(body_until(&mut bob_stream, ": \n\n").await, ": \n\n");
        drop(ann_stream);
        assert_eq!(reservations.len(), 1, "bob's stream goes on");
    }

    #[tokio::test]
    async fn at_shutdown_running_operations_finish_before_the_stream_ends() {
        let hub = Hub::new(Config::default());
        let reservations = Reservations::new(hub.clone());
        let token = reservations.reserve(None, None).expect("reserved");
        let mut stream = reservations.open(&token, None, None, None).expect("opened").into_body().into_data_stream();
        let reservation = reservations.find(&token, None).unwrap();
        // An operation whose last result comes after the shutdown began, as
        // a native stream's queued changes do.
        let shutdown = hub.shutting_down().clone();
        let late = futures_util::stream::once(async move {
            shutdown.cancelled().await;
            response(serde_json::json!({"last": true}))
        })
        .boxed();
        assert_eq!(reservation.start("op".into(), late, 10).status, 202);
        drop(reservation);
        assert_eq!(body_until(&mut stream, ": \n\n").await, ": \n\n");
        hub.shutdown();
        let text = body_to_end(&mut stream).await;
        assert_eq!(
            text,
            "event: next\ndata: {\"id\":\"op\",\"payload\":{\"data\":{\"last\":true}}}\n\n\
             event: complete\ndata: {\"id\":\"op\"}\n\n"
        );
    }
}

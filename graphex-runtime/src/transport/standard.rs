//! The standard GraphQL-over-WebSocket protocols on the HTTP endpoint's
//! path: `graphql-transport-ws` (the `graphql-ws` npm package, Apollo,
//! urql) and the legacy `graphql-ws` (`subscriptions-transport-ws`),
//! negotiated by `Sec-WebSocket-Protocol`.
//!
//! The protocol itself is async-graphql's (`async_graphql::http::WebSocket`:
//! init/ack, subscribe/next/complete, ping/pong, too many inits). This
//! module wraps it with what it lacks: [`ConnectionHooks`] (connect with the
//! `connection_init` payload, disconnect, operation start and complete), an
//! init timeout, server keep-alives, a cap on operations per connection,
//! duplicate operation ids, the close codes of the `graphql-transport-ws`
//! spec for bad messages and subscribes before the ack, and `error` messages
//! for operations that fail before producing a result.
//!
//! One cohesive job in one file: the connection loop and the message rules
//! it enforces, with its unit tests.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use async_graphql::http::{WebSocketProtocols as Protocols, WsMessage};
use async_graphql::{Data, Executor, Request};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use axum::http::HeaderMap;
use bytes::Bytes;
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::model::{Denied, Principal};
use crate::subscribe::shared::{self, Execute, Frame, Ticket};
use crate::transport::auth::{Authenticated, Authenticator};
use crate::transport::gate::Gate;
use crate::transport::socket::SHUTDOWN_DRAIN;

use crate::transport::close::*;

/// Settings of the standard WebSocket protocols.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ProtocolConfig {
    /// How long a client may take to send `connection_init`. Default 10 s.
    pub init_timeout: Duration,
    /// Interval of server keep-alives (`ping` in `graphql-transport-ws`,
    /// `ka` in `graphql-ws`); `None` (or zero) sends none. Default 15 s.
    pub keep_alive: Option<Duration>,
    /// Operations one connection may run at once; one more is answered
    /// with an `error` message (code `TOO_MANY_OPERATIONS`). Also bounds
    /// the operations of a graphql-sse single-connection stream (one more
    /// is answered `429`). Default 100.
    pub max_operations: usize,
    /// Bytes of an operation id; a longer one is an invalid message
    /// (`graphql-transport-ws`: close 4400; a graphql-sse single-connection
    /// operation: `400`). Default 128.
    pub max_operation_id_bytes: usize,
    /// Bytes of one client message (and of one WebSocket frame); a larger
    /// one closes the connection (1009, message too big). Default 256 KiB.
    pub max_message_bytes: usize,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            init_timeout: Duration::from_secs(10),
            keep_alive: Some(Duration::from_secs(15)),
            max_operations: 100,
            max_operation_id_bytes: 128,
            max_message_bytes: 256 << 10,
        }
    }
}

crate::config::setters!(ProtocolConfig {
    init_timeout: Duration => with_init_timeout,
    keep_alive: Option<Duration> => with_keep_alive,
    max_operations: usize => with_max_operations,
    max_operation_id_bytes: usize => with_max_operation_id_bytes,
    max_message_bytes: usize => with_max_message_bytes,
});

/// One standard-protocol WebSocket connection, as hooks see it.
#[derive(Clone)]
pub struct Connection {
    pub(crate) id: u64,
    pub(crate) protocol: &'static str,
    pub(crate) headers: HeaderMap,
    pub(crate) upgrade_principal: Option<Principal>,
    pub(crate) principal: Option<Principal>,
    auth: Arc<dyn Authenticator>,
    address: Option<std::net::IpAddr>,
    /// The expiry of each token this connection authenticated (the
    /// upgrade's, `connection_init`'s), by principal id: the principal
    /// `on_connect` returns keeps its token's.
    expiries: Arc<Mutex<Vec<(String, SystemTime)>>>,
}

impl Connection {
    /// Process-unique connection number.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The negotiated subprotocol: `graphql-transport-ws` or `graphql-ws`.
    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// Headers of the upgrade request.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The principal of the upgrade request (`Authorization: Bearer` or `?token=`).
    pub fn upgrade_principal(&self) -> Option<&Principal> {
        self.upgrade_principal.as_ref()
    }

    /// The principal [`ConnectionHooks::on_connect`] returned (set once acknowledged).
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The client's address: the TCP peer's (when the router is served with
    /// connect info), or behind a trusted proxy the forwarded one
    /// ([`crate::Config::trusted_proxies`]).
    pub fn remote_address(&self) -> Option<std::net::IpAddr> {
        self.address
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("protocol", &self.protocol)
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(
        id: u64,
        protocol: &'static str,
        headers: HeaderMap,
        upgrade: Option<Authenticated>,
        auth: Arc<dyn Authenticator>,
        address: Option<std::net::IpAddr>,
    ) -> Self {
        let connection = Connection {
            id,
            protocol,
            headers,
            upgrade_principal: None,
            principal: None,
            auth,
            address,
            expiries: Arc::default(),
        };
        let upgrade_principal = upgrade.map(|upgrade| connection.record(upgrade));
        Connection { upgrade_principal, ..connection }
    }

    /// Runs the router's [`Authenticator`] on a token
    /// ([`Authenticator::authenticate_with_expiry`]; an expired token is
    /// none). When [`ConnectionHooks::on_connect`] returns this principal,
    /// the connection ends when the token expires.
    pub async fn authenticate(&self, token: &str) -> Option<Principal> {
        let found = crate::transport::auth::authenticated(self.auth.as_ref(), Some(token)).await?;
        Some(self.record(found))
    }

    /// Ends the connection at `expires_at` if [`ConnectionHooks::on_connect`]
    /// returns a principal with the id `principal_id` (for hooks that
    /// authenticate without [`Connection::authenticate`]).
    pub fn expire_at(&self, principal_id: &str, expires_at: SystemTime) {
        lock(&self.expiries).push((principal_id.to_owned(), expires_at));
    }

    fn record(&self, authenticated: Authenticated) -> Principal {
        if let Some(at) = authenticated.expires_at {
            self.expire_at(&authenticated.principal.id, at);
        }
        authenticated.principal
    }

    /// When the token of `principal` expires, as a deadline.
    fn deadline(&self, principal: &Principal) -> Option<tokio::time::Instant> {
        let at = lock(&self.expiries).iter().rev().find(|(id, _)| *id == principal.id).map(|(_, at)| *at);
        crate::transport::auth::deadline(at)
    }
}

/// Connection lifecycle hooks of the standard protocols (Ariadne's
/// `on_connect` / `on_disconnect` / `on_operation` / `on_complete`).
/// Every method has a default; implement the ones you need.
#[async_trait::async_trait]
pub trait ConnectionHooks: Send + Sync + 'static {
    /// Called with the `connection_init` payload. Returns the principal the
    /// connection's operations run as (authorization, scope, channel
    /// ownership), or refuses: `graphql-transport-ws` closes with 4403,
    /// `graphql-ws` answers `connection_error` and closes.
    ///
    /// The default is [`default_on_connect`].
    async fn on_connect(&self, connection: &Connection, payload: &Json) -> Result<Option<Principal>, Denied> {
        default_on_connect(connection, payload).await
    }

    /// Called once when an acknowledged connection ends, however it ends.
    async fn on_disconnect(&self, _connection: &Connection) {}

    /// Called before an operation starts; a refusal answers the operation
    /// with an `error` message (code `FORBIDDEN`) and keeps the connection.
    async fn on_operation(&self, _connection: &Connection, _id: &str, _request: &Request) -> Result<(), Denied> {
        Ok(())
    }

    /// Called when an operation ends: completed by the client or the server,
    /// failed, replaced, or cut by the disconnect.
    async fn on_complete(&self, _connection: &Connection, _id: &str) {}
}

/// The hooks used when none are given: [`default_on_connect`], nothing else.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultHooks;

impl ConnectionHooks for DefaultHooks {}

/// Reads a token from the payload (`Authorization`, `authorization`,
/// `authToken` or `token`, with or without `Bearer `) and authenticates it;
/// an unknown token is refused. Without a token, the upgrade request's
/// principal (or anonymous).
pub async fn default_on_connect(connection: &Connection, payload: &Json) -> Result<Option<Principal>, Denied> {
    let token = ["Authorization", "authorization", "authToken", "token"]
        .iter()
        .find_map(|key| payload.get(key).and_then(Json::as_str))
        .map(|token| token.strip_prefix("Bearer ").unwrap_or(token).trim());
    match token {
        Some(token) => match connection.authenticate(token).await {
            Some(principal) => Ok(Some(principal)),
            None => Err(Denied::new("invalid token")),
        },
        None => Ok(connection.upgrade_principal.clone()),
    }
}

/// Set by the `connection_init` callback, read by the connection loop.
#[derive(Default)]
struct Shared {
    principal: Option<Principal>,
    refused: Option<String>,
}

/// Per-connection protocol state the wrapper keeps besides async-graphql's.
#[derive(Default)]
struct Operations {
    transport_ws: bool,
    init_received: bool,
    acked: bool,
    /// The ack is the message being sent (legacy clients get a `ka` right after it).
    just_acked: bool,
    /// Operations running, by id.
    active: HashSet<String>,
    /// Operations that have produced at least one result.
    answered: HashSet<String>,
    /// Operations whose `complete` from async-graphql must not reach the
    /// client (it completed them, or got an `error` instead).
    silenced: HashSet<String>,
    /// The subscribe each running operation id belongs to: a shared
    /// execution's frame is written only while its subscribe runs.
    generations: HashMap<String, u64>,
    next_generation: u64,
}

/// The executor a connection runs operations with: the server's, plus the
/// ticket a shareable subscribe carries to its field (`subscribe/shared.rs`).
#[derive(Clone)]
struct Sharing<E> {
    inner: E,
    execute: Execute,
    transport_ws: bool,
    outbox: mpsc::UnboundedSender<Frame>,
}

impl<E: Executor> Executor for Sharing<E> {
    async fn execute(&self, request: Request) -> async_graphql::Response {
        self.inner.execute(request).await
    }

    fn execute_stream(
        &self,
        mut request: Request,
        session_data: Option<Arc<Data>>,
    ) -> futures_util::stream::BoxStream<'static, async_graphql::Response> {
        if let Some(ticket) =
            Ticket::take(&mut request, session_data.clone(), &self.execute, self.transport_ws, &self.outbox)
        {
            request = request.data(ticket);
        }
        self.inner.execute_stream(request, session_data)
    }
}

/// What to do with one client message.
enum Incoming {
    Forward(Bytes),
    Drop,
    Reply(String),
    Close(u16, String),
}

/// Serves one standard-protocol connection until either side closes.
/// Generic over the socket halves so tests can drive it with channels.
#[allow(clippy::too_many_arguments)]
#[tracing::instrument(
    name = "connection",
    skip_all,
    fields(connection = connection.id, protocol = connection.protocol, principal = tracing::field::Empty)
)]
pub(crate) async fn serve_connection<E, Si, St, Er>(
    executor: E,
    hub: Hub,
    hooks: Arc<dyn ConnectionHooks>,
    config: ProtocolConfig,
    mut connection: Connection,
    protocol: Protocols,
    mut sink: Si,
    mut stream: St,
) where
    E: Executor,
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, Er>> + Unpin,
{
    // One of the hub's tasks: `Hub::stopped` waits for this connection.
    let _task = hub.task_token();
    let _connected = hub.connected(match protocol {
        Protocols::GraphQLWS => crate::hub::Transport::GraphqlTransportWs,
        _ => crate::hub::Transport::GraphqlWs,
    });
    let send_timeout = hub.config().send_timeout;
    // Shareable subscribes are marked for their field (`subscribe/shared.rs`)
    // only after the query's raw bounds are checked: the mark parses it.
    let share = hub.config().share_executions.then(|| hub.config().request_limits.clone());
    let (outbox_tx, mut outbox) = mpsc::unbounded_channel::<Frame>();
    let mut frames: Vec<Frame> = Vec::new();
    let pacing = hub.config().write_pacing;
    let mut last_write: Option<tokio::time::Instant> = None;
    let executor = {
        let inner = executor.clone();
        let execute: Execute = Arc::new(move |request, data| inner.execute_stream(request, data));
        Sharing { inner: executor, execute, transport_ws: protocol == Protocols::GraphQLWS, outbox: outbox_tx }
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    // Bounded: a client that sends faster than async-graphql takes its
    // messages is closed (1008), not buffered without end. The bound leaves
    // room for a burst of every operation the connection may start.
    let (to_graphql, mut from_client) = mpsc::channel::<Bytes>(config.max_operations.saturating_add(64));
    let input = futures_util::stream::poll_fn(move |cx| from_client.poll_recv(cx));
    let shutdown = hub.shutting_down().clone();
    // Set once acknowledged with a principal: registered for revocations
    // while held, and how the connection's authorization ends.
    let mut _session: Option<crate::hub::Session> = None;
    let mut ending = crate::transport::auth::Ending::new(None, None);
    let counters = hub.clone();
    let mut connection_data = Data::default();
    connection_data.insert(hub.clone());
    connection_data.insert(crate::subscribe::native::WebSocketConnection);
    if let Some(address) = connection.address {
        connection_data.insert(crate::hub::ClientAddress(address));
    }
    let span = tracing::Span::current();
    let on_init = {
        let span = span.clone();
        let hooks = hooks.clone();
        let connection = connection.clone();
        let shared = shared.clone();
        move |payload: Json| async move {
            match hooks.on_connect(&connection, &payload).await {
                Ok(principal) => {
                    let mut data = Data::default();
                    if let Some(principal) = &principal {
                        span.record("principal", principal.id.as_str());
                        data.insert(principal.clone());
                    }
                    tracing::debug!(parent: &span, "connected");
                    lock(&shared).principal = principal;
                    Ok(data)
                }
                Err(denied) => {
                    lock(&shared).refused = Some(denied.message().to_owned());
                    Err(async_graphql::Error::new(format!("Forbidden: {}", denied.message())))
                }
            }
        }
    };
    let mut graphql = async_graphql::http::WebSocket::new(executor, input, protocol)
        .connection_data(connection_data)
        .on_connection_init(on_init);

    let mut ops = Operations {
        transport_ws: protocol == Protocols::GraphQLWS,
        init_received: false,
        acked: false,
        just_acked: false,
        active: HashSet::new(),
        answered: HashSet::new(),
        silenced: HashSet::new(),
        generations: HashMap::new(),
        next_generation: 0,
    };
    let init_deadline = tokio::time::sleep(config.init_timeout);
    tokio::pin!(init_deadline);
    let keep_alive_on = config.keep_alive.is_some_and(|period| !period.is_zero());
    let keep_alive_period = config.keep_alive.filter(|_| keep_alive_on).unwrap_or(Duration::from_secs(3600));
    let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + keep_alive_period, keep_alive_period);
    keep_alive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Shared frames are the usual wake-up: the other sources (the client's
    // messages, async-graphql's, the keep-alive timer, the shutdown) are
    // polled only once their own waker fired (`Gate`), as a two-channel
    // socket's are. Polling async-graphql's connection, the split read
    // half or the shutdown token is not free (the token takes a lock).
    let (read_gate, graphql_gate, keep_alive_gate, shutdown_gate) =
        (Gate::new(), Gate::new(), Gate::new(), Gate::new());
    let shutdown_signal = shutdown.cancelled();
    tokio::pin!(shutdown_signal);

    let close: Option<(u16, String)> = loop {
        tokio::select! {
            () = std::future::poll_fn(|cx| shutdown_gate.poll(cx, |cx| shutdown_signal.as_mut().poll(cx))) => {
                // What the connection's streams held at shutdown is written
                // first (at most `SHUTDOWN_DRAIN`), then 1001, with no
                // `complete`: the client's subscriptions resume from their
                // cursors once it reconnects.
                // Every write of the drain is bounded by what is left of it,
                // not by the send timeout alone: a client that stopped
                // reading holds the connection 1 s, not 10.
                let until = tokio::time::Instant::now() + SHUTDOWN_DRAIN.min(send_timeout);
                let left = || until.saturating_duration_since(tokio::time::Instant::now());
                let deadline = tokio::time::sleep_until(until);
                tokio::pin!(deadline);
                let drained = hub.drained();
                tokio::pin!(drained);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut deadline => break,
                        outgoing = graphql.next() => {
                            let Some(WsMessage::Text(text)) = outgoing else { break };
                            if !drain_text(&mut ops, &hooks, &mut connection, &shared, &mut outbox, &mut frames, &mut sink, text, left()).await {
                                break;
                            }
                        }
                        _ = outbox.recv_many(&mut frames, FRAME_BATCH) => {
                            if !write_frames(&mut ops, &mut sink, &mut frames, left()).await {
                                break;
                            }
                        }
                        () = &mut drained => {
                            // Every stream has yielded what it held; what
                            // is ready now is the rest.
                            while let Some(Some(WsMessage::Text(text))) = graphql.next().now_or_never() {
                                if !drain_text(&mut ops, &hooks, &mut connection, &shared, &mut outbox, &mut frames, &mut sink, text, left()).await {
                                    break;
                                }
                            }
                            frames_before(&mut ops, &mut sink, &mut outbox, &mut frames, left()).await;
                            break;
                        }
                    }
                }
                break Some((CLOSE_GOING_AWAY, "server shutting down".into()));
            }
            ended = &mut ending => {
                if ended == crate::transport::auth::Ended::TokenExpired {
                    counters.counters().tokens_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let reason = ended.reason();
                if !ops.transport_ws && !ops.active.is_empty() {
                    // Legacy graphql-ws has no close code for it: each
                    // running operation gets an error result, then complete.
                    let mut ids: Vec<&String> = ops.active.iter().collect();
                    ids.sort_unstable();
                    let texts: Vec<String> = ids.into_iter().flat_map(|id| ended.legacy_frames(id)).collect();
                    let written = sent(send_timeout, async {
                        for text in texts {
                            sink.feed(Message::Text(text.into())).await?;
                        }
                        sink.flush().await
                    });
                    if !written.await {
                        break None;
                    }
                }
                break Some((CLOSE_FORBIDDEN, format!("Forbidden: {reason}")));
            }
            () = &mut init_deadline, if !ops.init_received => {
                break Some((CLOSE_INIT_TIMEOUT, "Connection initialisation timeout".into()));
            }
            _ = std::future::poll_fn(|cx| keep_alive_gate.poll(cx, |cx| keep_alive.poll_tick(cx))), if ops.acked && keep_alive_on => {
                let ping = if ops.transport_ws { r#"{"type":"ping"}"# } else { r#"{"type":"ka"}"# };
                if !sent(send_timeout, sink.send(Message::Text(Utf8Bytes::from_static(ping)))).await {
                    break None;
                }
            }
            outgoing = std::future::poll_fn(|cx| graphql_gate.poll(cx, |cx| graphql.poll_next_unpin(cx))) => match outgoing {
                None => {
                    let refused = lock(&shared).refused.clone();
                    break refused.map(|reason| (CLOSE_FORBIDDEN, format!("Forbidden: {reason}")));
                }
                Some(WsMessage::Close(code, reason)) => {
                    let refused = lock(&shared).refused.clone();
                    break Some(match refused {
                        Some(reason) if code == CLOSE_PROTOCOL_ERROR => (CLOSE_FORBIDDEN, format!("Forbidden: {reason}")),
                        _ => (code, reason),
                    });
                }
                Some(WsMessage::Text(text)) => {
                    if !frames_before(&mut ops, &mut sink, &mut outbox, &mut frames, send_timeout).await {
                        break None;
                    }
                    let Some(text) = outgoing_text(&mut ops, &hooks, &mut connection, &shared, text).await else {
                        continue;
                    };
                    // Registered before the ack is written: a revocation
                    // the client could follow with finds the connection.
                    if ops.just_acked && let Some(principal) = &connection.principal {
                        let opened = counters.session(&principal.id);
                        let expiry = crate::transport::auth::expiry(connection.deadline(principal));
                        ending = crate::transport::auth::Ending::new(Some(&opened), expiry);
                        _session = Some(opened);
                    }
                    let keep_alive_now = std::mem::take(&mut ops.just_acked) && !ops.transport_ws;
                    if !sent(send_timeout, sink.send(Message::Text(text.into()))).await {
                        break None;
                    }
                    if keep_alive_now && keep_alive_on {
                        // graphql-ws clients expect a first keep-alive right after the ack.
                        if !sent(send_timeout, sink.send(Message::Text(Utf8Bytes::from_static(r#"{"type":"ka"}"#)))).await {
                            break None;
                        }
                    }
                }
            },
            _ = outbox.recv_many(&mut frames, FRAME_BATCH) => {
                // A connection that wrote shared frames less than
                // `min_interval` ago gathers what comes until then into this
                // write, as a two-channel socket does (`WritePacing`).
                let now = tokio::time::Instant::now();
                if let Some(until) = pacing.and_then(|pacing| pacing.hold_until(now, None, last_write)) {
                    gather(&mut outbox, &mut frames, until, FRAME_BATCH / 2).await;
                }
                last_write = Some(tokio::time::Instant::now());
                if !write_frames(&mut ops, &mut sink, &mut frames, send_timeout).await {
                    break None;
                }
            }
            incoming = std::future::poll_fn(|cx| read_gate.poll(cx, |cx| stream.poll_next_unpin(cx))) => {
                let bytes = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) => Bytes::from(text),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(_)) => continue,
                };
                match incoming_message(&mut ops, &hooks, &connection, &config, share.as_ref(), bytes).await {
                    Incoming::Forward(bytes) => match to_graphql.try_send(bytes) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            break Some((CLOSE_POLICY_VIOLATION, "too many messages in flight".into()));
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break None,
                    },
                    Incoming::Drop => {}
                    Incoming::Reply(text) => {
                        if !sent(send_timeout, sink.send(Message::Text(text.into()))).await {
                            break None;
                        }
                    }
                    Incoming::Close(code, reason) => break Some((code, reason)),
                }
            }
        }
    };
    // Dropping async-graphql's connection drops every operation's stream,
    // which frees their hub channels and groups.
    drop(graphql);
    if let Some((code, reason)) = close {
        tracing::debug!(code, %reason, "closing the connection");
        let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(Some(frame)))).await;
    }
    for id in ops.active.drain() {
        hooks.on_complete(&connection, &id).await;
    }
    tracing::debug!("disconnected");
    if ops.acked {
        hooks.on_disconnect(&connection).await;
    }
}

/// Writes the shared executions' frames queued before a message of
/// async-graphql's (a shared execution's last results go before its
/// `complete`); false when the peer stopped reading.
async fn frames_before<Si: Sink<Message> + Unpin>(
    ops: &mut Operations,
    sink: &mut Si,
    outbox: &mut mpsc::UnboundedReceiver<Frame>,
    frames: &mut Vec<Frame>,
    bound: Duration,
) -> bool {
    while let Ok(frame) = outbox.try_recv() {
        frames.push(frame);
    }
    frames.is_empty() || write_frames(ops, sink, frames, bound).await
}

/// Writes, while draining at shutdown, one message of async-graphql's
/// ([`frames_before`] it, then the message as the connection tracks it:
/// `outgoing_text`); false when the peer stopped reading.
#[allow(clippy::too_many_arguments)]
async fn drain_text<Si: Sink<Message> + Unpin>(
    ops: &mut Operations,
    hooks: &Arc<dyn ConnectionHooks>,
    connection: &mut Connection,
    shared: &Arc<Mutex<Shared>>,
    outbox: &mut mpsc::UnboundedReceiver<Frame>,
    frames: &mut Vec<Frame>,
    sink: &mut Si,
    text: String,
    bound: Duration,
) -> bool {
    if !frames_before(ops, sink, outbox, frames, bound).await {
        return false;
    }
    match outgoing_text(ops, hooks, connection, shared, text).await {
        Some(text) => sent(bound, sink.send(Message::Text(text.into()))).await,
        None => true,
    }
}

/// Frames of shared executions written per flush at most.
const FRAME_BATCH: usize = 256;

/// Adds to `batch` what `rx` brings until `until`, or until `batch` holds
/// `enough` (a burst goes at once rather than wait), or `rx` is closed.
async fn gather<T>(
    rx: &mut mpsc::UnboundedReceiver<T>,
    batch: &mut Vec<T>,
    until: tokio::time::Instant,
    enough: usize,
) {
    let hold = tokio::time::sleep_until(until);
    tokio::pin!(hold);
    while batch.len() < enough {
        tokio::select! {
            biased;
            () = &mut hold => return,
            received = rx.recv_many(batch, enough - batch.len()) => if received == 0 { return },
        }
    }
}

/// Writes the shared executions' frames (`frames`, drained) whose
/// subscribe still runs, then flushes once; false when the peer stopped
/// reading.
async fn write_frames<Si: Sink<Message> + Unpin>(
    ops: &mut Operations,
    sink: &mut Si,
    frames: &mut Vec<Frame>,
    bound: Duration,
) -> bool {
    let mut texts = Vec::with_capacity(frames.len());
    for frame in frames.drain(..) {
        frame.member.taken();
        if !shared::current(&frame, &ops.generations) {
            continue;
        }
        if !ops.answered.contains(frame.member.id()) {
            ops.answered.insert(frame.member.id().to_owned());
        }
        texts.push(frame.member.frame(&frame.payload));
    }
    if texts.is_empty() {
        return true;
    }
    sent(bound, async {
        for text in texts {
            sink.feed(Message::Text(text.into())).await?;
        }
        sink.flush().await
    })
    .await
}

fn lock<T>(shared: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    id: Option<String>,
}

/// Observes a message async-graphql sends; returns what reaches the client.
async fn outgoing_text(
    ops: &mut Operations,
    hooks: &Arc<dyn ConnectionHooks>,
    connection: &mut Connection,
    shared: &Mutex<Shared>,
    text: String,
) -> Option<String> {
    let Ok(head) = serde_json::from_str::<Head<'_>>(&text) else { return Some(text) };
    match (head.kind.as_ref(), head.id) {
        ("connection_ack", _) => {
            ops.acked = true;
            ops.just_acked = true;
            connection.principal = lock(shared).principal.clone();
            Some(text)
        }
        ("next" | "data", Some(id)) => {
            if ops.answered.insert(id.clone()) && ops.transport_ws {
                // An operation refused before execution (parse or validation
                // errors: no data, no error path) gets an `error` message, as
                // the graphql-transport-ws spec and reference server do;
                // execution errors stay results (`next`, then `complete`).
                let message: Json = serde_json::from_str(&text).ok()?;
                let payload = &message["payload"];
                if payload.get("data").is_none_or(Json::is_null)
                    && let Some(errors) = payload.get("errors")
                    && errors.as_array().is_some_and(|errors| {
                        errors
                            .iter()
                            .all(|error| error.get("path").is_none_or(|path| path.as_array().is_none_or(Vec::is_empty)))
                    })
                {
                    ops.silenced.insert(id.clone());
                    ops.generations.remove(&id);
                    if ops.active.remove(&id) {
                        hooks.on_complete(connection, &id).await;
                    }
                    return Some(json!({"type": "error", "id": id, "payload": errors}).to_string());
                }
            }
            Some(text)
        }
        ("complete", Some(id)) => {
            ops.answered.remove(&id);
            ops.generations.remove(&id);
            if ops.silenced.remove(&id) {
                return None;
            }
            if ops.active.remove(&id) {
                hooks.on_complete(connection, &id).await;
            }
            Some(text)
        }
        _ => Some(text),
    }
}

#[derive(Deserialize)]
struct ClientHead {
    #[serde(rename = "type")]
    kind: String,
    id: Option<Json>,
    payload: Option<Json>,
}

/// Decides what to do with a client message before async-graphql sees it.
async fn incoming_message(
    ops: &mut Operations,
    hooks: &Arc<dyn ConnectionHooks>,
    connection: &Connection,
    config: &ProtocolConfig,
    share: Option<&crate::transport::limits::RequestLimits>,
    bytes: Bytes,
) -> Incoming {
    let bad = |ops: &Operations, why: &str| {
        if ops.transport_ws {
            Incoming::Close(CLOSE_BAD_REQUEST, format!("Invalid message received: {why}"))
        } else {
            Incoming::Reply(
                json!({"type": "error", "payload": {"message": format!("Invalid message received: {why}")}})
                    .to_string(),
            )
        }
    };
    let Ok(head) = serde_json::from_slice::<ClientHead>(&bytes) else {
        return bad(ops, "not a protocol message");
    };
    match head.kind.as_str() {
        "connection_init" => {
            if ops.init_received && ops.transport_ws {
                return Incoming::Close(CLOSE_TOO_MANY_INITS, "Too many initialisation requests".into());
            }
            ops.init_received = true;
            Incoming::Forward(bytes)
        }
        kind @ ("subscribe" | "start") => {
            if (kind == "subscribe") != ops.transport_ws {
                return bad(ops, "unknown message type for this protocol");
            }
            let Some(Json::String(id)) = head.id else { return bad(ops, "an operation needs a string id") };
            if id.len() > config.max_operation_id_bytes {
                return bad(ops, &format!("operation id longer than {} bytes", config.max_operation_id_bytes));
            }
            let Some(request) = head.payload.and_then(|payload| serde_json::from_value::<Request>(payload).ok()) else {
                return bad(ops, "an operation needs a GraphQL request payload");
            };
            // graphql-transport-ws clients must wait for the ack. Legacy
            // clients (subscriptions-transport-ws) send their queued
            // operations right after `connection_init`: async-graphql holds
            // them until the init callback is done.
            let ready = if ops.transport_ws { ops.acked } else { ops.init_received };
            if !ready {
                return Incoming::Close(CLOSE_UNAUTHORIZED, "Unauthorized".into());
            }
            if ops.active.contains(&id) {
                if ops.transport_ws {
                    return Incoming::Close(CLOSE_DUPLICATE_ID, format!("Subscriber for {id} already exists"));
                }
                // graphql-ws: the new operation replaces the old one.
                ops.active.remove(&id);
                ops.answered.remove(&id);
                hooks.on_complete(connection, &id).await;
            }
            if ops.active.len() >= config.max_operations {
                let message = format!("too many operations on this connection (limit {})", config.max_operations);
                return Incoming::Reply(operation_error(ops, &id, &message, "TOO_MANY_OPERATIONS"));
            }
            if let Err(denied) = hooks.on_operation(connection, &id, &request).await {
                return Incoming::Reply(operation_error(ops, &id, denied.message(), "FORBIDDEN"));
            }
            ops.next_generation += 1;
            let generation = ops.next_generation;
            let bytes = match share {
                Some(limits) if shareable(limits, &request) => marked(&bytes, &id, generation).unwrap_or(bytes),
                _ => bytes,
            };
            tracing::debug!(operation = %id, "operation started");
            ops.generations.insert(id.clone(), generation);
            ops.active.insert(id);
            Incoming::Forward(bytes)
        }
        kind @ ("complete" | "stop") => {
            if (kind == "complete") != ops.transport_ws {
                return bad(ops, "unknown message type for this protocol");
            }
            let Some(Json::String(id)) = head.id else { return bad(ops, "complete needs a string id") };
            if !ops.active.remove(&id) {
                // Already finished (or never started): nothing to stop.
                return Incoming::Drop;
            }
            ops.answered.remove(&id);
            ops.generations.remove(&id);
            if ops.transport_ws {
                ops.silenced.insert(id.clone());
            }
            hooks.on_complete(connection, &id).await;
            tracing::debug!(operation = %id, "operation stopped by the client");
            Incoming::Forward(bytes)
        }
        "ping" | "pong" if ops.transport_ws => Incoming::Forward(bytes),
        "connection_terminate" if !ops.transport_ws => Incoming::Forward(bytes),
        _ => bad(ops, "unknown message type"),
    }
}

/// Whether `request` runs a subscription whose result may be shared: its
/// raw bounds pass, it parses, and its operation has one root field
/// ([`shared::shareable_operation`]).
fn shareable(limits: &crate::transport::limits::RequestLimits, request: &Request) -> bool {
    crate::transport::limits::precheck(limits, &request.query).is_ok()
        && async_graphql::parser::parse_query(&request.query)
            .is_ok_and(|document| shared::shareable_operation(&document, request.operation_name.as_deref()))
}

/// The client's message with the mark of a shareable subscribe in its
/// payload's extensions (a client's own mark is overwritten).
fn marked(bytes: &Bytes, id: &str, generation: u64) -> Option<Bytes> {
    let mut message: Json = serde_json::from_slice(bytes).ok()?;
    let payload = message.get_mut("payload")?.as_object_mut()?;
    let extensions = payload.entry("extensions").or_insert_with(|| json!({}));
    if extensions.is_null() {
        *extensions = json!({});
    }
    extensions.as_object_mut()?.insert(shared::MARK.to_owned(), Ticket::mark(id, generation));
    serde_json::to_vec(&message).ok().map(Bytes::from)
}

/// Whether a send completed within `bound` (a peer that stopped reading
/// makes no progress: the connection ends).
/// Most sends complete at once (the kernel takes the bytes): only one that
/// does not is timed.
async fn sent<E>(bound: Duration, send: impl std::future::Future<Output = Result<(), E>>) -> bool {
    let mut send = std::pin::pin!(send);
    match std::future::poll_fn(|cx| Poll::Ready(send.as_mut().poll(cx))).await {
        Poll::Ready(done) => done.is_ok(),
        Poll::Pending => matches!(tokio::time::timeout(bound, send).await, Ok(Ok(()))),
    }
}

/// An `error` message for one operation, in the negotiated protocol's shape.
fn operation_error(ops: &Operations, id: &str, message: &str, code: &str) -> String {
    let error = json!({"message": message, "extensions": {"code": code}});
    let payload = if ops.transport_ws { json!([error]) } else { error };
    json!({"type": "error", "id": id, "payload": payload}).to_string()
}

#[cfg(test)]
mod tests;

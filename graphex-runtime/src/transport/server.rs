//! Serving with axum: the GraphQL HTTP endpoint (queries, mutations and
//! one-shot two-channel subscribes), the standard GraphQL WebSocket
//! protocols on the same path ([`crate::protocol`]) and the two-channel
//! WebSocket endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::{ObjectType, Request, Response, Schema, SubscriptionType};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::config::WritePacing;
use crate::hub::{CLOSE_DISCONNECTED, CLOSE_SLOW_CONSUMER, Channel, CloseReason, Delivery, Hub};
use crate::model::Principal;
use crate::transport::forward::{self, Forwarded};
use crate::transport::standard::{Connection, ConnectionHooks, DefaultHooks, ProtocolConfig, serve_connection};

/// Turns a bearer token into a principal. Requests without a token, or
/// whose token yields `None`, are anonymous.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The principal a token stands for.
    async fn authenticate(&self, token: &str) -> Option<Principal>;
}

/// Everyone is anonymous.
#[derive(Clone, Copy, Debug, Default)]
pub struct Anonymous;

#[async_trait::async_trait]
impl Authenticator for Anonymous {
    async fn authenticate(&self, _token: &str) -> Option<Principal> {
        None
    }
}

/// Most deliveries written to a socket before one flush.
const WRITE_BATCH: usize = 256;

/// Read buffer of a two-channel socket. Clients send next to nothing on it,
/// and tungstenite zero-fills the whole read buffer on every read attempt
/// (each turn of the socket loop): the 128 KiB default cost a 128 KiB
/// memset per written batch and 128 KiB resident per connection.
const SOCKET_READ_BUFFER: usize = 4 * 1024;

struct AppState<Q, M, S> {
    schema: Schema<Q, M, S>,
    hub: Hub,
    auth: Arc<dyn Authenticator>,
    hooks: Arc<dyn ConnectionHooks>,
    protocol: ProtocolConfig,
}

/// The axum router serving `schema` at the hub's configured paths: GraphQL
/// over HTTP (`POST`) and the standard WebSocket protocols (`GET` upgrade)
/// at [`crate::Config::http_path`], the two-channel WebSocket at
/// [`crate::Config::ws_path`].
///
/// Every HTTP request runs inside [`Hub::scope`], so changes its mutations
/// make are announced to this hub. [`RouterBuilder`] sets connection hooks
/// and protocol settings.
pub fn router<Q, M, S>(schema: Schema<Q, M, S>, hub: Hub, auth: impl Authenticator) -> Router
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    RouterBuilder::new(schema, hub).authenticator(auth).build()
}

/// Builds the graphex router with non-default authentication, connection
/// hooks or protocol settings.
///
/// ```ignore
/// let app = graphex::RouterBuilder::new(schema, hub)
///     .authenticator(MyAuthenticator)
///     .hooks(MyHooks)
///     .protocol(graphex::ProtocolConfig { max_operations: 20, ..Default::default() })
///     .build();
/// ```
pub struct RouterBuilder<Q, M, S> {
    state: AppState<Q, M, S>,
}

impl<Q, M, S> RouterBuilder<Q, M, S>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    /// Everyone anonymous, [`DefaultHooks`], default [`ProtocolConfig`].
    pub fn new(schema: Schema<Q, M, S>, hub: Hub) -> Self {
        RouterBuilder {
            state: AppState {
                schema,
                hub,
                auth: Arc::new(Anonymous),
                hooks: Arc::new(DefaultHooks),
                protocol: ProtocolConfig::default(),
            },
        }
    }

    /// Turns bearer tokens into principals.
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.state.auth = Arc::new(auth);
        self
    }

    /// Connection hooks of the standard WebSocket protocols.
    pub fn hooks(mut self, hooks: impl ConnectionHooks) -> Self {
        self.state.hooks = Arc::new(hooks);
        self
    }

    /// Settings of the standard WebSocket protocols.
    pub fn protocol(mut self, protocol: ProtocolConfig) -> Self {
        self.state.protocol = protocol;
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        let config = self.state.hub.config().clone();
        let state = Arc::new(self.state);
        // Subscribes other processes forward here, for channels of this process.
        // Weak: the layer (held by the hub) must not keep the router alive.
        let served = Arc::downgrade(&state);
        state.hub.serve_requests(Arc::new(move |body: Bytes| {
            let state = served.upgrade();
            Box::pin(async move {
                let forwarded = serde_json::from_slice::<Forwarded>(&body);
                let response = match (state, forwarded) {
                    (Some(state), Ok(forwarded)) => {
                        let (request, token) = forwarded.into_request();
                        run(&state, request, token.as_deref()).await
                    }
                    (None, _) => Response::from_errors(vec![async_graphql::ServerError::new("server stopped", None)]),
                    (_, Err(error)) => Response::from_errors(vec![async_graphql::ServerError::new(
                        format!("malformed forwarded request: {error}"),
                        None,
                    )]),
                };
                Bytes::from(serde_json::to_vec(&response).unwrap_or_default())
            })
        }));
        Router::new()
            .route(&config.http_path, post(graphql_http::<Q, M, S>).get(graphql_standard_ws::<Q, M, S>))
            .route(&config.ws_path, get(graphql_ws::<Q, M, S>))
            .with_state(state)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

async fn principal(auth: &dyn Authenticator, token: Option<&str>) -> Option<Principal> {
    match token {
        Some(token) if !token.is_empty() => auth.authenticate(token).await,
        _ => None,
    }
}

async fn graphql_http<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> axum::response::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let request = request.into_inner();
    let token = bearer(&headers);
    if let Some(reply) = forward::to_owner(&state.hub, &request, token).await {
        return ([(axum::http::header::CONTENT_TYPE, "application/json")], reply).into_response();
    }
    match streaming(&headers) {
        Some(format) if is_subscription(&request) => {
            let request = as_principal(&state, request, token).await;
            stream_response(state.schema.execute_stream(request), format)
        }
        _ => GraphQLResponse::from(run(&state, request, token).await).into_response(),
    }
}

/// The request with this hub and the principal `token` stands for.
async fn as_principal<Q, M, S>(state: &AppState<Q, M, S>, request: Request, token: Option<&str>) -> Request {
    let mut request = request.data(state.hub.clone());
    if let Some(principal) = principal(state.auth.as_ref(), token).await {
        request = request.data(principal);
    }
    request
}

/// Runs a request as the principal `token` stands for, announcing to this hub.
async fn run<Q, M, S>(state: &AppState<Q, M, S>, request: Request, token: Option<&str>) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let request = as_principal(state, request, token).await;
    state.hub.scope(execute(&state.schema, request)).await
}

/// How a client without WebSockets asked for a subscription's results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Streaming {
    /// `multipart/mixed; boundary="graphql"; subscriptionSpec="1.0"` (Apollo's HTTP subscriptions).
    Multipart,
    /// `text/event-stream` (GraphQL over SSE, distinct connections: `next` events, then `complete`).
    ServerSentEvents,
}

fn streaming(headers: &HeaderMap) -> Option<Streaming> {
    let accept = headers.get(axum::http::header::ACCEPT)?.to_str().ok()?;
    if async_graphql::http::is_accept_multipart_mixed(accept) {
        Some(Streaming::Multipart)
    } else if accept.split(',').any(|item| item.trim().starts_with("text/event-stream")) {
        Some(Streaming::ServerSentEvents)
    } else {
        None
    }
}

/// A subscription's results as an HTTP stream. Dropping the response (the
/// client went away) drops the operation, which frees its hub channel.
fn stream_response(
    results: futures_util::stream::BoxStream<'static, Response>,
    format: Streaming,
) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    match format {
        Streaming::Multipart => {
            let body = async_graphql::http::create_multipart_mixed_stream(results, Duration::from_secs(30))
                .map(Ok::<_, std::convert::Infallible>);
            (
                [(axum::http::header::CONTENT_TYPE, "multipart/mixed; boundary=graphql")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Streaming::ServerSentEvents => {
            let events = results
                .map(|result| Event::default().event("next").json_data(result))
                .chain(futures_util::stream::once(async { Ok(Event::default().event("complete").data("")) }));
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
    }
}

/// Executes a query or mutation, or a subscription operation once (the
/// two-channel subscribe answers with exactly one item).
pub(crate) async fn execute<Q, M, S>(schema: &Schema<Q, M, S>, request: Request) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    if is_subscription(&request) {
        let mut stream = schema.execute_stream(request);
        stream.next().await.unwrap_or_else(|| {
            Response::from_errors(vec![async_graphql::ServerError::new("subscription produced no result", None)])
        })
    } else {
        schema.execute(request).await
    }
}

fn is_subscription(request: &Request) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else { return false };
    let is_sub = |ty: OperationType| ty == OperationType::Subscription;
    match &document.operations {
        DocumentOperations::Single(operation) => is_sub(operation.node.ty),
        DocumentOperations::Multiple(operations) => match &request.operation_name {
            Some(name) => operations.get(name.as_str()).is_some_and(|operation| is_sub(operation.node.ty)),
            None => false,
        },
    }
}

/// Serves `graphql-transport-ws` and `graphql-ws` on a GET upgrade of the
/// HTTP endpoint, with async-graphql's protocol under [`crate::protocol`].
async fn graphql_standard_ws<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> axum::response::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
    let Some(protocol) = negotiate(&headers) else {
        let message = "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws";
        return (axum::http::StatusCode::BAD_REQUEST, message).into_response();
    };
    let token = bearer(&headers).map(str::to_owned).or(query.token);
    let upgrade_principal = principal(state.auth.as_ref(), token.as_deref()).await;
    let protocols = [protocol.sec_websocket_protocol()];
    let connection = Connection::new(
        CONNECTIONS.fetch_add(1, Ordering::Relaxed),
        protocol.sec_websocket_protocol(),
        headers,
        upgrade_principal,
        state.auth.clone(),
    );
    upgrade
        .protocols(protocols)
        .on_upgrade(move |socket: WebSocket| async move {
            let (sink, stream) = socket.split();
            // Mutations sent over the socket announce their changes to this hub.
            let hub = state.hub.clone();
            hub.scope(serve_connection(
                state.schema.clone(),
                state.hub.clone(),
                state.hooks.clone(),
                state.protocol.clone(),
                connection,
                protocol,
                sink,
                stream,
            ))
            .await;
        })
        .into_response()
}

/// The first standard subprotocol the client offers.
fn negotiate(headers: &HeaderMap) -> Option<Protocols> {
    let offered = headers.get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered.split(',').find_map(|protocol| protocol.trim().parse::<Protocols>().ok())
}

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn graphql_ws<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let token = bearer(&headers).map(str::to_owned).or(query.token);
    let principal = principal(state.auth.as_ref(), token.as_deref()).await;
    let hub = state.hub.clone();
    upgrade.read_buffer_size(SOCKET_READ_BUFFER).on_upgrade(move |socket: WebSocket| async move {
        let (sink, stream) = socket.split();
        // The socket runs in one of the hub's shard tasks; this upgrade task ends here.
        let owner = principal.map(|principal| principal.id);
        hub.run_socket(Box::pin(serve_socket(hub.clone(), owner, sink, stream)));
    })
}

/// Runs one two-channel WebSocket: opens a channel owned by `owner`, sends
/// the handshake, then writes the channel's frames until either side closes.
/// Generic over the socket halves so tests can drive it with channels.
#[tracing::instrument(skip_all)]
pub(crate) async fn serve_socket<Si, St, E>(hub: Hub, owner: Option<String>, mut sink: Si, stream: St)
where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let (channel, rx) = match hub.open_channel(owner) {
        Ok(opened) => opened,
        Err(error) => {
            let frame = CloseFrame { code: 1013, reason: Utf8Bytes::from(error.to_string()) };
            let _ = sink.send(Message::Close(Some(frame))).await;
            return;
        }
    };
    tracing::debug!(channel = channel.id(), "channel opened");
    let handshake = serde_json::json!({"channel_id": channel.id(), "connect": "success"}).to_string();
    if sink.send(Message::Text(handshake.into())).await.is_ok() {
        pump(&channel, rx, &mut sink, stream, hub.config().write_pacing).await;
    }
    hub.close_channel(&channel);
    tracing::debug!(channel = channel.id(), "channel closed");
}

async fn pump<Si, St, E>(
    channel: &Arc<Channel>,
    mut rx: mpsc::Receiver<Delivery>,
    sink: &mut Si,
    mut stream: St,
    pacing: Option<WritePacing>,
) where
    Si: Sink<Message> + Unpin,
    St: Stream<Item = Result<Message, E>> + Unpin,
{
    let mut frames = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = channel.closed().cancelled() => return send_close(channel, sink).await,
            incoming = stream.next() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
            delivery = rx.recv() => {
                let Some(delivery) = delivery else { return };
                if let Some(pacing) = pacing.filter(|pacing| delivery.queued_at.elapsed() > pacing.busy_after) {
                    // The server is behind: let the changes arriving meanwhile
                    // share this write. A busy runtime fires timers late, so a
                    // queue past half full ends the hold at once.
                    tokio::select! {
                        biased;
                        () = channel.closed().cancelled() => return send_close(channel, sink).await,
                        () = channel.pressure().notified() => {}
                        () = tokio::time::sleep(pacing.window) => {}
                    }
                }
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
                let write = async {
                    for frame in frames.drain(..) {
                        let Ok(text) = Utf8Bytes::try_from(frame) else { continue };
                        sink.feed(Message::Text(text)).await?;
                    }
                    sink.flush().await
                };
                tokio::select! {
                    written = write => if written.is_err() { return },
                    // A client that stopped reading: give up on the write.
                    () = channel.closed().cancelled() => return,
                }
            }
        }
    }
}

/// Tells the client why the server closed its channel.
async fn send_close<Si: Sink<Message> + Unpin>(channel: &Channel, sink: &mut Si) {
    let (code, reason) = match channel.close_reason() {
        Some(CloseReason::SlowConsumer) => (CLOSE_SLOW_CONSUMER, "slow consumer: outgoing queue full"),
        Some(CloseReason::Disconnected) => (CLOSE_DISCONNECTED, "disconnected by the server: reconnect"),
        _ => (1001, "server shutting down"),
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
    }

    impl Recorder {
        fn writes(&self) -> Vec<Vec<String>> {
            self.flushed.lock().unwrap().clone()
        }
    }

    impl Sink<Message> for Recorder {
        type Error = std::convert::Infallible;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, message: Message) -> Result<(), Self::Error> {
            if let Message::Text(text) = message {
                self.pending.lock().unwrap().push(text.to_string());
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
        let recorder = Recorder::default();
        let silent_client = futures_util::stream::pending::<Result<Message, std::convert::Infallible>>();
        tokio::spawn(serve_socket(hub.clone(), None, recorder.clone(), silent_client));
        settle().await;
        let handshake: serde_json::Value = serde_json::from_str(&recorder.writes()[0][0]).unwrap();
        let channel = hub.channel(handshake["channel_id"].as_str().unwrap()).expect("the socket's channel");
        let subscription = Subscription::of_users(&group::coarse("users", Action::Create), Action::Create, None);
        hub.add_subscription(&channel, subscription).await.unwrap();
        recorder
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
        let recorder = subscribed_socket(&hub).await;
        let start = tokio::time::Instant::now();
        create(&hub, 1).await;
        settle().await;
        create(&hub, 2).await;
        settle().await;
        let writes = recorder.writes();
        assert_eq!(writes.len(), 3, "handshake, then one write per change: {writes:?}");
        assert!(writes[1][0].contains(r#""id":1"#) && writes[2][0].contains(r#""id":2"#));
        assert_eq!(tokio::time::Instant::now(), start, "no write waited");
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
    async fn without_pacing_a_late_change_is_written_at_once() {
        let hub = Hub::new(Config { write_pacing: None, ..Config::default() });
        let recorder = subscribed_socket(&hub).await;
        create(&hub, 1).await;
        tokio::time::advance(Duration::from_millis(50)).await;
        settle().await;
        assert_eq!(recorder.writes().len(), 2, "handshake and the change");
    }
}

//! Serving with axum: the GraphQL HTTP endpoint (queries, mutations and
//! one-shot two-channel subscribes), graphql-sse's single connection mode
//! on the same path (`PUT`, `GET` with a token, `POST` with a token,
//! `DELETE`: `single.rs`), the standard GraphQL WebSocket protocols on the
//! same path (`standard.rs`) and the two-channel WebSocket endpoint
//! (`socket.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_graphql::http::WebSocketProtocols as Protocols;
use async_graphql::parser::types::OperationType;
use async_graphql::{Executor, ObjectType, Request, Response, Schema, ServerError, SubscriptionType};
use async_graphql_axum::GraphQLResponse;
use axum::Router;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::hub::{ClientAddress, Hub, Resource, Transport, client_key};
use crate::model::Principal;
use crate::subscribe::shared::{self, Execute, Frame, Sink, Ticket};
use crate::transport::auth::{Anonymous, Authenticated, Authenticator, authenticated, bearer, principal};
use crate::transport::body;
use crate::transport::forward::{self, Admitted, SingleConnection};
use crate::transport::limits::{Guard, Guarded, LIMIT_REACHED, selected_operation, with_code};
use crate::transport::peer::{Peer, client_address, origin_allowed};
use crate::transport::single::{self, Outcome, Reservations};
use crate::transport::socket::{SOCKET_READ_BUFFER, serve_socket};
use crate::transport::standard::{Connection, ConnectionHooks, DefaultHooks, ProtocolConfig, serve_connection};
use crate::transport::streaming::{
    StreamSlot, Streaming, event_stream_only, parts, stream_response, streaming, until_ended,
};

struct AppState<Q, M, S> {
    schema: Schema<Q, M, S>,
    hub: Hub,
    auth: Arc<dyn Authenticator>,
    hooks: Arc<dyn ConnectionHooks>,
    protocol: ProtocolConfig,
    /// The request limits and the schema's types they check against.
    guard: Arc<Guard>,
    /// graphql-sse single-connection reservations made here.
    reservations: Arc<Reservations>,
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
///     .protocol(graphex::ProtocolConfig::default().with_max_operations(20))
///     .build();
/// ```
pub struct RouterBuilder<Q, M, S> {
    state: AppState<Q, M, S>,
}

impl<Q, M, S> std::fmt::Debug for RouterBuilder<Q, M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBuilder").field("hub", &self.state.hub).finish_non_exhaustive()
    }
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
                guard: Arc::new(Guard::new(hub.config().request_limits.clone(), &schema.sdl())),
                reservations: Reservations::new(hub.clone()),
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
        // Only a subscribe / unsubscribe of a channel of this process, or an
        // operation / stop on a single-connection stream of this process,
        // runs, as the principal the sender authenticated (forward::admit).
        state.hub.serve_requests(Arc::new(move |body: Bytes| {
            let state = served.upgrade();
            Box::pin(async move {
                let Some(state) = state else {
                    return forward::reply(&forward::refusal("server stopped".to_owned()));
                };
                let admitted = forward::admit(&state.hub, &state.guard, &body);
                let (kind, principal) = match &admitted {
                    Ok(Admitted::Subscribe(_, principal)) => ("subscribe", principal),
                    Ok(Admitted::Operation(_, principal, _)) => ("single-connection operation", principal),
                    Ok(Admitted::Stop(principal, _)) => ("single-connection stop", principal),
                    Err(_) => ("refused", &None),
                };
                let span = tracing::debug_span!(
                    "forwarded",
                    kind,
                    principal = principal.as_ref().map(|principal| principal.id.as_str())
                );
                let run = async move {
                    match admitted {
                        Ok(Admitted::Subscribe(mut request, principal)) => {
                            let response = match state.guard.check(&mut request) {
                                Ok(_) => run_as(&state, request, principal).await,
                                Err(error) => Response::from_errors(vec![error]),
                            };
                            forward::reply(&response)
                        }
                        Ok(Admitted::Operation(mut request, principal, target)) => {
                            let outcome = match state.guard.check(&mut request) {
                                Ok(_) => start_single(&state, request, principal, target),
                                Err(error) => Outcome::refused(StatusCode::BAD_REQUEST, error.message),
                            };
                            forward::single_reply(&outcome)
                        }
                        Ok(Admitted::Stop(principal, target)) => {
                            forward::single_reply(&stop_single(&state, principal.as_ref(), &target))
                        }
                        Err(message) => forward::reply(&forward::refusal(message)),
                    }
                };
                tracing::Instrument::instrument(run, span).await
            })
        }));
        Router::new()
            .route(
                &config.http_path,
                post(graphql_http::<Q, M, S>)
                    .get(graphql_get::<Q, M, S>)
                    .put(single_reserve::<Q, M, S>)
                    .delete(single_stop::<Q, M, S>),
            )
            .route(&config.ws_path, get(graphql_ws::<Q, M, S>))
            .with_state(state)
    }
}

async fn graphql_http<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    peer: Peer,
    headers: HeaderMap,
    body: axum::body::Body,
) -> axum::response::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let mut request = match body::read(&headers, body, &state.guard.limits).await {
        Ok(request) => request,
        Err(refused) => return refused.into_response(),
    };
    // graphql-sse single connection mode: an operation for a reserved
    // stream. The token only from its own header (as the graphql-sse client
    // sends it): a `?token=` on a POST keeps its old meaning (none).
    let single_token = match streaming(&headers) {
        None => headers.get(single::TOKEN_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned),
        Some(_) => None,
    };
    let operation = match state.guard.check_typed(&mut request) {
        Ok(operation) => operation,
        Err(refused) if single_token.is_some() => {
            return Outcome::refused(StatusCode::BAD_REQUEST, refused.1.message).into_http();
        }
        Err(refused) => {
            let (operation, error) = *refused;
            let refused = Response::from_errors(vec![error]);
            return match streaming(&headers) {
                // A refused subscription answers in the format it asked for.
                Some(format) if operation == Some(OperationType::Subscription) => {
                    stream_response(parts(Box::pin(futures_util::stream::once(async { refused })), None), format)
                }
                _ => GraphQLResponse::from(refused).into_response(),
            };
        }
    };
    let token = bearer(&headers);
    if let Some(single_token) = single_token {
        return post_single(&state, peer, &headers, request, single_token).await.into_http();
    }
    if let Some(reply) = forward::to_owner(&state.hub, &mut request, state.auth.as_ref(), token).await {
        return ([(axum::http::header::CONTENT_TYPE, "application/json")], reply).into_response();
    }
    let address = client_address(peer, &headers, &state.hub.config().trusted_proxies);
    if let Some(address) = address {
        request = request.data(ClientAddress(address));
    }
    match streaming(&headers) {
        Some(_) if operation == Some(OperationType::Subscription) && !origin_allowed(&headers, origins(&state)) => {
            forbidden_origin(&headers)
        }
        Some(format) if operation == Some(OperationType::Subscription) => {
            // A streaming response holds its connection for as long as the
            // subscription lives: counted per client.
            let authenticated = authenticated(state.auth.as_ref(), token).await;
            let deadline = authenticated.as_ref().and_then(Authenticated::deadline);
            let principal = authenticated.map(|authenticated| authenticated.principal);
            let client = client_key(principal.as_ref(), address);
            if let Err(error) = state.hub.take(client.as_ref(), Resource::Streams, 1) {
                let refused = ServerError::new(error.to_string(), None);
                let refused = Response::from_errors(vec![with_code(refused, LIMIT_REACHED)]);
                return stream_response(parts(Box::pin(futures_util::stream::once(async { refused })), None), format);
            }
            let open = state.hub.connected(match format {
                Streaming::ServerSentEvents => Transport::Sse,
                Streaming::Multipart => Transport::Multipart,
            });
            let slot = StreamSlot { hub: state.hub.clone(), client, _open: open };
            // Ended by its token's expiry or its principal's revocation.
            let session = principal.as_ref().map(|principal| state.hub.session(&principal.id));
            let mut request = with_principal(&state, request, principal);
            let outbox = share(&state, &mut request);
            let results = state.schema.execute_stream(request).map(move |result| {
                let _held_until_the_stream_drops = &slot;
                result
            });
            stream_response(until_ended(parts(Box::pin(results), outbox), &state.hub, deadline, session), format)
        }
        // A query or mutation from a client that takes only an event stream
        // (graphql-sse, distinct connections): its one result as an event
        // stream, executed here like any other (inside the hub's scope).
        Some(Streaming::ServerSentEvents) if event_stream_only(&headers) => {
            let response = run(&state, request, token).await;
            stream_response(
                parts(Box::pin(futures_util::stream::once(async { response })), None),
                Streaming::ServerSentEvents,
            )
        }
        _ => GraphQLResponse::from(run(&state, request, token).await).into_response(),
    }
}

/// Gives a shareable streaming subscription its ticket to a shared
/// execution (`subscribe/shared.rs`) and returns where that execution's
/// frames arrive.
fn share<Q, M, S>(state: &AppState<Q, M, S>, request: &mut Request) -> Option<mpsc::UnboundedReceiver<Frame>>
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    if !state.hub.config().share_executions {
        return None;
    }
    let name = request.operation_name.clone();
    if !request.parsed_query().is_ok_and(|document| shared::shareable_operation(document, name.as_deref())) {
        return None;
    }
    let (outbox, frames) = mpsc::unbounded_channel();
    let sink = Sink { id: String::new(), generation: 0, transport_ws: true, outbox };
    let schema = state.schema.clone();
    let execute: Execute = Arc::new(move |request, data| Executor::execute_stream(&schema, request, data));
    let ticket = Ticket::new(request, None, &execute, sink)?;
    request.data.insert(ticket);
    Some(frames)
}

/// The id a single-connection operation names in `extensions.operationId`.
fn operation_id(request: &Request) -> Option<String> {
    match request.extensions.get("operationId")? {
        async_graphql::Value::String(id) if !id.is_empty() => Some(id.clone()),
        _ => None,
    }
}

/// `POST` with a reservation token: the operation starts on the stream,
/// here or, through the layer, in the process holding it.
async fn post_single<Q, M, S>(
    state: &AppState<Q, M, S>,
    peer: Peer,
    headers: &HeaderMap,
    request: Request,
    token: String,
) -> Outcome
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let Some(operation_id) = operation_id(&request) else {
        return Outcome::refused(StatusCode::BAD_REQUEST, "operation id is missing (extensions.operationId)");
    };
    let principal = principal(state.auth.as_ref(), bearer(headers)).await;
    let address = client_address(peer, headers, &state.hub.config().trusted_proxies);
    let target = SingleConnection { token, operation_id, stop: false, address };
    if let Some(bounded) = operation_id_refused(state, &target) {
        return bounded;
    }
    if let Some(outcome) = forward::single_to_owner(&state.hub, Some(&request), principal.clone(), target.clone()).await
    {
        return outcome;
    }
    start_single(state, request, principal, target)
}

/// `400` for an operation id longer than [`ProtocolConfig::max_operation_id_bytes`].
fn operation_id_refused<Q, M, S>(state: &AppState<Q, M, S>, target: &SingleConnection) -> Option<Outcome> {
    let max = state.protocol.max_operation_id_bytes;
    (target.operation_id.len() > max)
        .then(|| Outcome::refused(StatusCode::BAD_REQUEST, format!("operation id longer than {max} bytes")))
}

/// Starts an operation on a single-connection stream held here, if the
/// client that made the reservation asks (else `404`).
fn start_single<Q, M, S>(
    state: &AppState<Q, M, S>,
    mut request: Request,
    principal: Option<Principal>,
    target: SingleConnection,
) -> Outcome
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let client = client_key(principal.as_ref(), target.address);
    let Some(reservation) = state.reservations.find(&target.token, client.as_ref()) else {
        return Outcome::not_found();
    };
    if let Some(refused) = operation_id_refused(state, &target) {
        return refused;
    }
    if let Some(address) = target.address {
        request = request.data(ClientAddress(address));
    }
    // The id addresses the stream's frames, it is not part of the
    // operation: equal operations of different ids share one execution.
    request.extensions.remove("operationId");
    let mut request = with_principal(state, request, principal);
    let outbox = share(state, &mut request);
    let results = state.schema.execute_stream(request);
    reservation.start(target.operation_id, parts(Box::pin(results), outbox), state.protocol.max_operations)
}

/// Stops an operation on a single-connection stream held here, if the
/// client that made the reservation asks (else `404`).
fn stop_single<Q, M, S>(
    state: &AppState<Q, M, S>,
    principal: Option<&Principal>,
    target: &SingleConnection,
) -> Outcome {
    let client = client_key(principal, target.address);
    match state.reservations.find(&target.token, client.as_ref()) {
        Some(reservation) => reservation.stop(&target.operation_id),
        None => Outcome::not_found(),
    }
}

/// `PUT`: a single-connection reservation, `201` and its token.
async fn single_reserve<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    peer: Peer,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> axum::response::Response {
    if !origin_allowed(&headers, origins(&state)) {
        return forbidden_origin(&headers);
    }
    let principal = principal(state.auth.as_ref(), bearer(&headers)).await;
    let address = client_address(peer, &headers, &state.hub.config().trusted_proxies);
    let presented = single::token(&headers, raw_query.as_deref());
    match state.reservations.reserve(client_key(principal.as_ref(), address), presented.as_deref()) {
        Ok(token) => (StatusCode::CREATED, [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], token)
            .into_response(),
        Err(refused) => refused.into_http(),
    }
}

/// `DELETE ?operationId=`: stops an operation of a single-connection
/// stream, here or in the process holding it.
async fn single_stop<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    peer: Peer,
    headers: HeaderMap,
    RawQuery(raw_query): RawQuery,
) -> axum::response::Response {
    let Some(token) = single::token(&headers, raw_query.as_deref()) else {
        return Outcome::not_found().into_http();
    };
    let operation_id = raw_query.as_deref().and_then(|query| single::query_param(query, "operationId"));
    let Some(operation_id) = operation_id.filter(|id| !id.is_empty()) else {
        return Outcome::refused(StatusCode::BAD_REQUEST, "operation id is missing (?operationId=)").into_http();
    };
    let principal = principal(state.auth.as_ref(), bearer(&headers)).await;
    let address = client_address(peer, &headers, &state.hub.config().trusted_proxies);
    let target = SingleConnection { token, operation_id, stop: true, address };
    if let Some(refused) = operation_id_refused(&state, &target) {
        return refused.into_http();
    }
    if let Some(outcome) = forward::single_to_owner(&state.hub, None, principal.clone(), target.clone()).await {
        return outcome.into_http();
    }
    stop_single(&state, principal.as_ref(), &target).into_http()
}

/// `GET` of the HTTP endpoint: a WebSocket upgrade (the standard
/// protocols), or the event stream of a single-connection reservation.
async fn graphql_get<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> axum::response::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let rejection = match upgrade {
        Ok(upgrade) => return graphql_standard_ws(state, peer, headers, query, upgrade).await,
        Err(rejection) => rejection,
    };
    let header = headers.get(single::TOKEN_HEADER).and_then(|value| value.to_str().ok()).map(str::to_owned);
    let Some(token) = header.or(query.token) else { return rejection.into_response() };
    if streaming(&headers) != Some(Streaming::ServerSentEvents) {
        return rejection.into_response();
    }
    if !origin_allowed(&headers, origins(&state)) {
        return forbidden_origin(&headers);
    }
    // The stream ends when the token that opened it expires, or its
    // principal is revoked.
    let authenticated = authenticated(state.auth.as_ref(), bearer(&headers)).await;
    let deadline = authenticated.as_ref().and_then(Authenticated::deadline);
    let principal = authenticated.map(|authenticated| authenticated.principal);
    let address = client_address(peer, &headers, &state.hub.config().trusted_proxies);
    let client = client_key(principal.as_ref(), address);
    let session = principal.as_ref().map(|principal| state.hub.session(&principal.id));
    state.reservations.open(&token, client.as_ref(), deadline, session).unwrap_or_else(Outcome::into_http)
}

/// The origins besides the server's own that may stream.
fn origins<Q, M, S>(state: &AppState<Q, M, S>) -> &[String] {
    &state.hub.config().allowed_origins
}

/// `403` for a browser page of an origin that may not stream.
fn forbidden_origin(headers: &HeaderMap) -> axum::response::Response {
    let origin = headers.get(axum::http::header::ORIGIN).and_then(|origin| origin.to_str().ok()).unwrap_or("?");
    let message = format!("origin `{origin}` may not open subscriptions here (graphex Config::allowed_origins)");
    (axum::http::StatusCode::FORBIDDEN, message).into_response()
}

/// The request with this hub and `principal` (none: anonymous).
fn with_principal<Q, M, S>(state: &AppState<Q, M, S>, request: Request, principal: Option<Principal>) -> Request {
    let request = request.data(state.hub.clone());
    match principal {
        Some(principal) => request.data(principal),
        None => request,
    }
}

/// Runs a request as the principal `token` stands for, announcing to this hub.
async fn run<Q, M, S>(state: &AppState<Q, M, S>, request: Request, token: Option<&str>) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    run_as(state, request, principal(state.auth.as_ref(), token).await).await
}

/// Runs a request as `principal` (a forwarded one: authenticated by the
/// process that received it), announcing to this hub.
async fn run_as<Q, M, S>(state: &AppState<Q, M, S>, request: Request, principal: Option<Principal>) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    let request = with_principal(state, request, principal);
    state.hub.scope(execute(&state.schema, request)).await
}

/// Executes a query or mutation, or a subscription operation once (the
/// two-channel subscribe answers with exactly one item).
pub(crate) async fn execute<Q, M, S>(schema: &Schema<Q, M, S>, mut request: Request) -> Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    if is_subscription(&mut request) {
        let mut stream = schema.execute_stream(request);
        stream.next().await.unwrap_or_else(|| {
            Response::from_errors(vec![async_graphql::ServerError::new("subscription produced no result", None)])
        })
    } else {
        schema.execute(request).await
    }
}

/// Whether the request runs a subscription operation. Parses the query
/// only if [`Guard::check`] has not (it leaves the request parsed).
fn is_subscription(request: &mut Request) -> bool {
    let name = request.operation_name.clone();
    let Ok(document) = request.parsed_query() else { return false };
    selected_operation(document, name.as_deref())
        .is_some_and(|operation| operation.node.ty == OperationType::Subscription)
}

/// Serves `graphql-transport-ws` and `graphql-ws` on a GET upgrade of the
/// HTTP endpoint, with async-graphql's protocol wrapped by `standard.rs`.
async fn graphql_standard_ws<Q, M, S>(
    state: Arc<AppState<Q, M, S>>,
    peer: Peer,
    headers: HeaderMap,
    query: WsQuery,
    upgrade: WebSocketUpgrade,
) -> axum::response::Response
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    static CONNECTIONS: AtomicU64 = AtomicU64::new(1);
    if !origin_allowed(&headers, origins(&state)) {
        return forbidden_origin(&headers);
    }
    let Some(protocol) = negotiate(&headers) else {
        let message = "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws";
        return (axum::http::StatusCode::BAD_REQUEST, message).into_response();
    };
    let token = bearer(&headers).map(str::to_owned).or(query.token);
    let authenticated = authenticated(state.auth.as_ref(), token.as_deref()).await;
    let protocols = [protocol.sec_websocket_protocol()];
    let address = client_address(peer, &headers, &state.hub.config().trusted_proxies);
    let connection = Connection::new(
        CONNECTIONS.fetch_add(1, Ordering::Relaxed),
        protocol.sec_websocket_protocol(),
        headers,
        authenticated,
        state.auth.clone(),
        address,
    );
    let max_message = state.protocol.max_message_bytes;
    // The small read buffer of the two-channel socket (see
    // SOCKET_READ_BUFFER): tungstenite zero-fills it on every read attempt,
    // and at the 128 KiB default that memset was 38% of the server's CPU
    // in graphex-bench standard. It is a chunk size, not a bound: larger
    // messages (up to max_message) still arrive whole.
    upgrade
        .protocols(protocols)
        .read_buffer_size(SOCKET_READ_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket: WebSocket| async move {
            let (sink, stream) = socket.split();
            // Mutations sent over the socket announce their changes to this hub.
            let hub = state.hub.clone();
            let executor = Guarded { inner: state.schema.clone(), guard: state.guard.clone() };
            // The connection runs in one of the hub's shard tasks, as a
            // two-channel socket does: a shared frame for many connections
            // wakes a few shards, not one task per connection.
            let shards = hub.clone();
            let serve = async move {
                hub.scope(serve_connection(
                    executor,
                    state.hub.clone(),
                    state.hooks.clone(),
                    state.protocol.clone(),
                    connection,
                    protocol,
                    sink,
                    stream,
                ))
                .await;
            };
            shards.run_socket(Box::pin(serve));
        })
        .into_response()
}

/// The first standard subprotocol the client offers.
fn negotiate(headers: &HeaderMap) -> Option<Protocols> {
    let offered = headers.get(axum::http::header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    offered.split(',').find_map(|protocol| protocol.trim().parse::<Protocols>().ok())
}

/// Bytes of a client message on the two-channel socket, which reads none
/// but control frames.
const TWO_CHANNEL_MAX_MESSAGE: usize = 1024;

#[derive(Deserialize)]
struct WsQuery {
    token: Option<String>,
}

async fn graphql_ws<Q, M, S>(
    State(state): State<Arc<AppState<Q, M, S>>>,
    peer: Peer,
    headers: HeaderMap,
    Query(query): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> impl IntoResponse
where
    Q: ObjectType + 'static,
    M: ObjectType + 'static,
    S: SubscriptionType + 'static,
{
    if !origin_allowed(&headers, origins(&state)) {
        return forbidden_origin(&headers);
    }
    let token = bearer(&headers).map(str::to_owned).or(query.token);
    let authenticated = authenticated(state.auth.as_ref(), token.as_deref()).await;
    let deadline = authenticated.as_ref().and_then(Authenticated::deadline);
    let principal = authenticated.map(|authenticated| authenticated.principal);
    let address = client_address(peer, &headers, &state.hub.config().trusted_proxies);
    let client = client_key(principal.as_ref(), address);
    // Refused before the handshake when the client is at its cap: a
    // refusal then costs an HTTP answer, not an upgrade and a close frame.
    // (The channel's own take still decides; a race ends in close 1013.)
    if let Some(refusal) = state.hub.would_refuse(client.as_ref(), Resource::Channels) {
        return (axum::http::StatusCode::TOO_MANY_REQUESTS, refusal.to_string()).into_response();
    }
    let hub = state.hub.clone();
    // The two-channel socket reads no data frames: control frames carry at
    // most 125 bytes, anything larger ends the socket.
    upgrade
        .read_buffer_size(SOCKET_READ_BUFFER)
        .max_message_size(TWO_CHANNEL_MAX_MESSAGE)
        .max_frame_size(TWO_CHANNEL_MAX_MESSAGE)
        .on_upgrade(move |socket: WebSocket| async move {
            let (sink, stream) = socket.split();
            // The socket runs in one of the hub's shard tasks; this upgrade task ends here.
            let owner = principal.map(|principal| principal.id);
            let expiry = crate::transport::auth::expiry(deadline);
            hub.run_socket(Box::pin(serve_socket(hub.clone(), owner, expiry, client, sink, stream)));
        })
}

/// Resolves when the process is asked to stop: Ctrl-C (SIGINT) or, on Unix,
/// SIGTERM (what `kill`, systemd and Kubernetes send before a deploy). For
/// `axum::serve(..).with_graceful_shutdown(..)`, followed by
/// [`Hub::shutdown`] so that open sockets are told (close 1001) and write
/// what they hold first.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

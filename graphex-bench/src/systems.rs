//! The servers under test, each started on `127.0.0.1:0` in this process:
//! graphex itself, the ceiling (a minimal tokio-tungstenite server pushing
//! pre-serialized frames) and the alternative (an async-graphql native
//! subscription over graphql-transport-ws fed by a tokio broadcast channel).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_graphql::{Context, EmptyMutation, MergedSubscription, Object, Schema, Subscription};
use async_graphql_axum::GraphQLSubscription;
use axum::serve::ListenerExt;
use bytes::Bytes;
use futures_util::task::{ArcWake, AtomicWaker};
use futures_util::{SinkExt, Stream, StreamExt};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection};
use serde_json::{Map, Value as Json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::BenchError;
use crate::entities::{self, BODY, alt_message, id_message, message, now_us, plain_message};

/// The implementation being measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum System {
    /// graphex: SeaORM hooks, hub, two-channel WebSocket.
    Graphex,
    /// The same graphex server, its clients on the native `<name>Changes`
    /// field over `graphql-transport-ws` (issue 18's `standard` scenario).
    GraphexStandard,
    /// A minimal tokio-tungstenite server pushing pre-serialized frames with
    /// batched writes, paced under load as graphex's sockets are
    /// ([`graphex::WritePacing`]), so that it stays a ceiling.
    Ceiling,
    /// The same server without pacing: the ceiling to the letter
    /// (batched writes only), reported for comparison.
    CeilingUnpaced,
    /// async-graphql over graphql-transport-ws, fed by a tokio broadcast channel.
    Alternative,
}

impl System {
    /// Its name in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::Graphex => "graphex",
            System::GraphexStandard => "graphex-standard",
            System::Ceiling => "ceiling",
            System::CeilingUnpaced => "ceiling-unpaced",
            System::Alternative => "alternative",
        }
    }
}

impl FromStr for System {
    type Err = BenchError;

    fn from_str(name: &str) -> Result<System, BenchError> {
        [System::Graphex, System::GraphexStandard, System::Ceiling, System::CeilingUnpaced, System::Alternative]
            .into_iter()
            .find(|system| system.name() == name)
            .ok_or_else(|| BenchError::new(format!("unknown system {name:?}")))
    }
}

/// Which table, and so which groups and payload mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Full payload, `index_fields(room_id)`: a room subscription joins an indexed group.
    Indexed,
    /// Full payload, no index fields: a room is a filter on the coarse group.
    Plain,
    /// Id-only payload.
    IdOnly,
}

/// The fields of the three projections used by the payload scenario. Each
/// carries `id` (delivery accounting) and `created_us` (latency).
pub const PROJECTIONS: [&[&str]; 3] = [
    &["id", "room_id", "created_us"],
    &["id", "author", "created_us"],
    &["id", "room_id", "author", "body", "created_us"],
];

/// The per-client limits a graphex server runs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Limits {
    /// graphex's defaults, except the per-client caps (channels,
    /// subscriptions, streaming responses), raised so that the load
    /// generator's 10 000 anonymous clients, all from 127.0.0.1, fit: the
    /// throughput, latency and memory scenarios measure delivery, not caps.
    #[default]
    Raised,
    /// `graphex::Config::default()` untouched (the hostile scenario).
    Default,
}

impl Limits {
    /// Its name as a `serve` argument.
    pub fn name(self) -> &'static str {
        match self {
            Limits::Raised => "raised-limits",
            Limits::Default => "default-limits",
        }
    }

    /// The graphex settings it stands for (write pacing as [`pacing`] says).
    pub fn config(self) -> graphex::Config {
        let config = match self {
            Limits::Default => graphex::Config::default(),
            Limits::Raised => graphex::Config::default()
                .with_max_channels_per_client(RAISED_CAP)
                .with_max_subscriptions_per_client(RAISED_CAP)
                .with_max_streams_per_client(RAISED_CAP),
        };
        let shards = std::env::var(SHARDS).ok().and_then(|count| count.parse().ok()).unwrap_or(0);
        config.with_write_pacing(Some(pacing())).with_socket_shards(shards)
    }
}

/// The environment variable that sets [`graphex::Config::socket_shards`]
/// for the graphex server (unset or `0`: the default, four per CPU), to
/// compare shard counts without rebuilding.
pub const SHARDS: &str = "GRAPHEX_BENCH_SHARDS";

/// The environment variable that, set to `0`, leaves Nagle's algorithm on
/// for the graphex and alternative servers' connections (`TCP_NODELAY`
/// off, axum's default); otherwise they set `TCP_NODELAY`, as the ceiling
/// always does and as the README tells applications to.
pub const NODELAY: &str = "GRAPHEX_BENCH_NODELAY";

/// Sets `TCP_NODELAY` on an accepted connection unless [`NODELAY`] is `0`.
fn nodelay(stream: &mut TcpStream) {
    if std::env::var(NODELAY).as_deref() != Ok("0") {
        let _ = stream.set_nodelay(true);
    }
}

/// The environment variable that sets [`graphex::WritePacing::min_interval`]
/// in microseconds for graphex and the paced ceiling alike (unset: the
/// default), to compare settings without rebuilding.
pub const MIN_INTERVAL_US: &str = "GRAPHEX_BENCH_MIN_INTERVAL_US";

/// graphex's write pacing in this run: the default, or with the minimum
/// interval [`MIN_INTERVAL_US`] gives.
pub fn pacing() -> graphex::WritePacing {
    let pacing = graphex::WritePacing::default();
    match std::env::var(MIN_INTERVAL_US).ok().and_then(|micros| micros.parse().ok()) {
        Some(micros) => pacing.with_min_interval(std::time::Duration::from_micros(micros)),
        None => pacing,
    }
}

/// The per-client caps of [`Limits::Raised`]: above any scenario's clients.
const RAISED_CAP: usize = 1_000_000;

/// What one client subscribes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Only changes of this room; `None`: every change.
    pub room: Option<i32>,
    /// One of [`PROJECTIONS`]; `None`: the whole payload.
    pub projection: Option<usize>,
}

/// The side of a server the driver talks to.
#[async_trait::async_trait]
pub trait Target: Send + Sync {
    /// Saves (or, for the ceiling, builds) change `seq` (row id `seq + 1`) in `room` and sends it.
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError>;
    /// Subscriptions the server holds now.
    async fn subscribers(&self) -> Result<usize, BenchError>;
    /// Changes the server dropped on its own side (a lagging broadcast receiver).
    fn dropped(&self) -> u64 {
        0
    }
}

/// A server under test, listening on `addr`. Dropping it stops accepting.
pub struct Server {
    /// What it is.
    pub system: System,
    /// Where it listens.
    pub addr: SocketAddr,
    /// How changes are sent to it.
    pub target: Arc<dyn Target>,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a graphex server runs (the other systems ignore it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serve {
    /// Rows are saved through SeaORM; false: announced as the hooks would
    /// after saving them, without the database (a diagnostic: the runtime's
    /// own fan-out, apart from the pace at which SQLite produces changes).
    pub save: bool,
    /// The per-client limits.
    pub limits: Limits,
    /// The in-memory layer keeps its history (the default, 1 000 changes
    /// per stream); false: `MemoryLayer::with_history(0)`.
    pub history: bool,
}

impl Default for Serve {
    fn default() -> Self {
        Serve { save: true, limits: Limits::Raised, history: true }
    }
}

impl Serve {
    /// Its `graphex-bench serve` flags.
    pub fn flags(self) -> Vec<&'static str> {
        let mut flags = Vec::new();
        if !self.save {
            flags.push("no-db");
        }
        if !self.history {
            flags.push("no-history");
        }
        flags.push(self.limits.name());
        flags
    }
}

/// Starts a server of `system` for `model` on `127.0.0.1:0`.
pub async fn start(system: System, model: Model) -> Result<Server, BenchError> {
    start_with(system, model, Serve::default()).await
}

/// As [`start`], graphex as `serve` says. graphex is served with connect
/// info, so that its per-client caps count anonymous clients by address.
pub async fn start_with(system: System, model: Model, serve: Serve) -> Result<Server, BenchError> {
    let Serve { save, limits, history } = serve;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (target, task): (Arc<dyn Target>, JoinHandle<()>) = match system {
        System::Graphex | System::GraphexStandard => {
            let db = entities::database().await?;
            let hub = if history {
                graphex::Hub::new(limits.config())
            } else {
                graphex::Hub::with_layer(limits.config(), Arc::new(graphex::layer::MemoryLayer::with_history(0)))
            };
            let schema =
                Schema::build(BenchQuery, BenchMutation, GraphexSubscription::default()).data(db.clone()).finish();
            let app = graphex::router(schema, hub.clone(), graphex::Anonymous)
                .into_make_service_with_connect_info::<SocketAddr>();
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener.tap_io(nodelay), app).await;
            });
            let batch = (save && model == Model::Indexed).then(batch_size).flatten().map(|size| {
                let (tx, rx) = mpsc::channel(4 * size);
                tokio::spawn(group_commit(db.clone(), hub.clone(), rx, size));
                tx
            });
            (Arc::new(GraphexTarget { db, hub, model, save, batch }), task)
        }
        System::Alternative => {
            let db = entities::database().await?;
            let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
            let state = Arc::new(AltState { tx, lagged: AtomicU64::new(0) });
            let schema = Schema::build(BenchQuery, EmptyMutation, AltSubscription).data(state.clone()).finish();
            let app = axum::Router::new().route_service("/ws", GraphQLSubscription::new(schema));
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener.tap_io(nodelay), app).await;
            });
            (Arc::new(AltTarget { db, state }), task)
        }
        System::Ceiling | System::CeilingUnpaced => {
            let registry = Arc::new(Mutex::new(Registry::default()));
            let pacing = (system == System::Ceiling).then(pacing);
            let task = tokio::spawn(ceiling_accept(listener, registry.clone(), pacing));
            (Arc::new(CeilingTarget { registry, model }), task)
        }
    };
    Ok(Server { system, addr, target, task })
}

/// The row id of change `seq`: set explicitly, so that concurrent writers
/// still give every change a known id (and so a known room).
fn row_id(seq: usize) -> Result<i32, BenchError> {
    i32::try_from(seq + 1).map_err(|_| BenchError::new("too many changes"))
}

struct BenchQuery;

#[Object]
impl BenchQuery {
    /// Always true (a schema needs a query).
    async fn ping(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------
// graphex

/// The mutation an application would expose (issue 18's `mutations`
/// scenario): graphex's router runs every HTTP request inside
/// `Hub::scope`, so the hooks announce the row it saves.
struct BenchMutation;

#[Object]
impl BenchMutation {
    /// Creates a message in room `roomId` (the `messages` table, whatever
    /// model the server was started for) and returns its id. `id` is the
    /// row id to use (the bench passes `seq + 1`, so that every delivery is
    /// attributable to one mutation); omitted, the database picks it.
    async fn create_message(
        &self,
        ctx: &Context<'_>,
        id: Option<i32>,
        room_id: i32,
        body: String,
    ) -> async_graphql::Result<i32> {
        let db = ctx.data::<DatabaseConnection>()?;
        let row = message::ActiveModel {
            id: id.map_or(sea_orm::ActiveValue::NotSet, Set),
            room_id: Set(room_id),
            author: Set(entities::author(room_id)),
            body: Set(body),
            created_us: Set(now_us()),
        }
        .insert(db)
        .await?;
        Ok(row.id)
    }
}

#[derive(MergedSubscription, Default)]
struct GraphexSubscription(
    message::MessageSubscriptionRoot,
    plain_message::PlainMessageSubscriptionRoot,
    id_message::IdMessageSubscriptionRoot,
);

struct GraphexTarget {
    db: DatabaseConnection,
    hub: graphex::Hub,
    model: Model,
    save: bool,
    /// Group commit (`GRAPHEX_BENCH_BATCH`): rows to save, answered once saved.
    batch: Option<mpsc::Sender<Pending>>,
}

/// A row waiting for the group commit, and who waits for it.
type Pending = (message::Model, tokio::sync::oneshot::Sender<Result<(), String>>);

/// `GRAPHEX_BENCH_BATCH=k` (k > 1): the indexed model's rows are saved by
/// group commit, as a high-rate writer would save them: the rows that
/// concurrent emits bring while one batch is being saved (at most k) go in
/// one `insert_many`, announced with `graphex::announce_many` (bulk writes
/// run no hooks). Unset: one `insert` per change, announced by its hooks.
fn batch_size() -> Option<usize> {
    std::env::var("GRAPHEX_BENCH_BATCH").ok()?.parse().ok().filter(|size: &usize| *size > 1)
}

/// Saves what `rows` brings, up to `size` rows per statement, and
/// announces them in order, inside the hub's scope.
async fn group_commit(db: DatabaseConnection, hub: graphex::Hub, mut rows: mpsc::Receiver<Pending>, size: usize) {
    use sea_orm::{EntityTrait, IntoActiveModel};
    let mut batch = Vec::with_capacity(size);
    while rows.recv_many(&mut batch, size).await > 0 {
        let models: Vec<message::Model> = batch.iter().map(|(row, _)| row.clone()).collect();
        let saved = hub
            .scope(async {
                // The ids are the bench's own: nothing to read back. (`exec`
                // adds `RETURNING`, whose rows come back one by one through
                // sqlx's worker thread.)
                message::Entity::insert_many(models.iter().cloned().map(IntoActiveModel::into_active_model))
                    .exec_without_returning(&db)
                    .await?;
                graphex::announce_many(&models, graphex::Action::Create).await;
                Ok::<(), sea_orm::DbErr>(())
            })
            .await
            .map_err(|error| error.to_string());
        for (_, done) in batch.drain(..) {
            let _ = done.send(saved.clone());
        }
    }
}

impl GraphexTarget {
    /// Saves one row through SeaORM; the hooks announce it to the hub in scope.
    async fn insert(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        let db = &self.db;
        let (author, body, created_us) = (Set(entities::author(room)), Set(BODY.to_owned()), Set(now_us()));
        let (id, room_id) = (Set(row_id(seq)?), Set(room));
        let saved = self.hub.scope(async {
            match self.model {
                Model::Indexed => {
                    message::ActiveModel { id, room_id, author, body, created_us }.insert(db).await?;
                }
                Model::Plain => {
                    plain_message::ActiveModel { id, room_id, author, body, created_us }.insert(db).await?;
                }
                Model::IdOnly => {
                    id_message::ActiveModel { id, room_id, author, body, created_us }.insert(db).await?;
                }
            }
            Ok::<(), sea_orm::DbErr>(())
        });
        Ok(saved.await?)
    }
}

/// The indexed model's row of change `seq`, as it is saved (its time taken now).
fn message_row(seq: usize, room: i32) -> Result<message::Model, BenchError> {
    Ok(message::Model {
        id: row_id(seq)?,
        room_id: room,
        author: entities::author(room),
        body: BODY.to_owned(),
        created_us: now_us(),
    })
}

#[async_trait::async_trait]
impl Target for GraphexTarget {
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        if !self.save {
            let row = message_row(seq, room)?;
            self.hub.scope(graphex::announce(&row, graphex::Action::Create)).await;
            return Ok(());
        }
        if let Some(batch) = &self.batch {
            let row = message_row(seq, room)?;
            let (done, saved) = tokio::sync::oneshot::channel();
            batch.send((row, done)).await.map_err(|_| BenchError::new("the group commit stopped"))?;
            return saved.await.map_err(|_| BenchError::new("the group commit stopped"))?.map_err(BenchError::new);
        }
        // Boxed on its own: SeaORM's insert future is several KiB, and
        // as part of this one it would make every emit (the two paths
        // above too) allocate that much, a cost no application pays
        // for an announce or a queued row.
        Box::pin(self.insert(seq, room)).await
    }

    async fn subscribers(&self) -> Result<usize, BenchError> {
        // Standard-protocol subscribers of one operation share an execution
        // and its channel (issue 18).
        let hub = &self.hub;
        Ok(hub.channel_count().saturating_sub(hub.shared_execution_count()) + hub.shared_subscriber_count())
    }
}

// ---------------------------------------------------------------------------
// The alternative: async-graphql native subscriptions over a broadcast channel

/// Broadcast buffer of the alternative; above the driver's window, so a
/// receiver lags only if its socket falls far behind.
const BROADCAST_CAPACITY: usize = 4096;

struct AltState {
    tx: broadcast::Sender<Arc<alt_message::Model>>,
    lagged: AtomicU64,
}

struct AltSubscription;

#[Subscription]
impl AltSubscription {
    /// New messages, of one room if `room` is given.
    async fn message(&self, ctx: &Context<'_>, room: Option<i32>) -> impl Stream<Item = alt_message::Model> + use<> {
        let state = ctx.data_unchecked::<Arc<AltState>>().clone();
        let rx = state.tx.subscribe();
        // The per-subscriber filter closure a user would write.
        let wanted = move |row: &alt_message::Model| room.is_none_or(|room| row.room_id == room);
        futures_util::stream::unfold((rx, state), move |(mut rx, state)| async move {
            loop {
                match rx.recv().await {
                    Ok(row) if wanted(&row) => return Some(((*row).clone(), (rx, state))),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        state.lagged.fetch_add(missed, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

struct AltTarget {
    db: DatabaseConnection,
    state: Arc<AltState>,
}

#[async_trait::async_trait]
impl Target for AltTarget {
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        let row = alt_message::ActiveModel {
            id: Set(row_id(seq)?),
            room_id: Set(room),
            author: Set(entities::author(room)),
            body: Set(BODY.to_owned()),
            created_us: Set(now_us()),
        }
        .insert(&self.db)
        .await?;
        // No receivers is not an error here: nobody subscribed to anything.
        let _ = self.state.tx.send(Arc::new(row));
        Ok(())
    }

    async fn subscribers(&self) -> Result<usize, BenchError> {
        Ok(self.state.tx.receiver_count())
    }

    fn dropped(&self) -> u64 {
        self.state.lagged.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// The ceiling: no GraphQL, no database, frames serialized once per change

/// Frames queued per ceiling connection (the same bound as graphex's default queue).
const CEILING_QUEUE: usize = 1024;
/// Most frames written before one flush (as in graphex's socket loop).
const WRITE_BATCH: usize = 256;

/// A frame and when it was queued (the ceiling paces as graphex does).
type Queued = (Bytes, Instant);

/// The payload variant a ceiling connection takes: 0 = full, 1..=3 = projection, 4 = id only.
type Variant = usize;

#[derive(Default)]
struct Registry {
    /// Connections by room (`None`: every room), each with its variant.
    rooms: HashMap<Option<i32>, Vec<(Variant, mpsc::Sender<Queued>)>>,
    count: usize,
    dropped: u64,
}

struct CeilingTarget {
    registry: Arc<Mutex<Registry>>,
    model: Model,
}

/// The frame graphex would send for this row and variant.
fn frame(row: &Map<String, Json>, variant: Variant, stream: &str) -> Bytes {
    let data: Map<String, Json> = match variant {
        0 => row.clone(),
        4 => Map::from_iter([("id".to_owned(), row["id"].clone())]),
        projection => {
            PROJECTIONS[projection - 1].iter().map(|field| ((*field).to_owned(), row[*field].clone())).collect()
        }
    };
    let frame =
        serde_json::json!({"stream": stream, "payload": {"action": "create", "model": "message", "data": data}});
    Bytes::from(serde_json::to_vec(&frame).expect("plain JSON"))
}

#[async_trait::async_trait]
impl Target for CeilingTarget {
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        let id = row_id(seq)?;
        let row = serde_json::json!({
            "id": id, "room_id": room, "author": entities::author(room), "body": BODY, "created_us": now_us(),
        });
        let Json::Object(row) = row else { unreachable!("an object literal") };
        let stream = match self.model {
            Model::Indexed => "messages",
            Model::Plain => "plain_messages",
            Model::IdOnly => "id_messages",
        };
        let mut frames: [Option<Bytes>; 5] = Default::default();
        let queued_at = Instant::now();
        let mut registry = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut dropped = 0;
        for key in [None, Some(room)] {
            for (variant, tx) in registry.rooms.get(&key).into_iter().flatten() {
                let bytes = frames[*variant].get_or_insert_with(|| frame(&row, *variant, stream)).clone();
                if tx.try_send((bytes, queued_at)).is_err() {
                    dropped += 1;
                }
            }
        }
        registry.dropped += dropped;
        Ok(())
    }

    async fn subscribers(&self) -> Result<usize, BenchError> {
        Ok(self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).count)
    }

    fn dropped(&self) -> u64 {
        self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).dropped
    }
}

/// The ceiling's own copy of graphex's read gate (the ceiling depends on
/// none of graphex's socket code): the read half is polled with this
/// gate's waker, and only once it fired or a read returned something.
struct ReadGate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for ReadGate {
    fn wake_by_ref(gate: &Arc<Self>) {
        gate.woken.store(true, Ordering::Release);
        gate.task.wake();
    }
}

impl ReadGate {
    fn poll_next<St: Stream + Unpin>(
        self: &Arc<Self>,
        stream: &mut St,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<St::Item>> {
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return std::task::Poll::Pending;
        }
        let waker = futures_util::task::waker_ref(self);
        let polled = stream.poll_next_unpin(&mut std::task::Context::from_waker(&waker));
        if polled.is_ready() {
            self.woken.store(true, Ordering::Release);
        }
        polled
    }
}

async fn ceiling_accept(listener: TcpListener, registry: Arc<Mutex<Registry>>, pacing: Option<graphex::WritePacing>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(ceiling_connection(stream, registry.clone(), pacing));
    }
}

/// `/ws?room=R&variant=V`: registers, sends `ready`, then writes queued frames in batches.
// The handshake callback's error type is tungstenite's (an HTTP response).
#[allow(clippy::result_large_err)]
async fn ceiling_connection(stream: TcpStream, registry: Arc<Mutex<Registry>>, pacing: Option<graphex::WritePacing>) {
    let _ = stream.set_nodelay(true);
    let mut query = String::new();
    let callback = |request: &Request, response: Response| {
        query = request.uri().query().unwrap_or_default().to_owned();
        Ok(response)
    };
    // The clients send nothing: a small read buffer, since tungstenite zero-fills it before every read.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let Ok(socket) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    let mut room = None;
    let mut variant: Variant = 0;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("room", value)) => room = value.parse().ok(),
            Some(("variant", value)) => variant = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    let (tx, mut rx) = mpsc::channel::<Queued>(CEILING_QUEUE);
    let (mut sink, mut incoming) = socket.split();
    {
        let mut registry = registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        registry.rooms.entry(room).or_default().push((variant, tx.clone()));
        registry.count += 1;
    }
    if sink.send(Message::text("ready")).await.is_ok() {
        let mut last_write: Option<tokio::time::Instant> = None;
        let gate = Arc::new(ReadGate { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        loop {
            // As graphex's socket loop: the queue first, and the read half
            // only once its waker fired, so that a turn that writes one
            // frame makes no read attempt (tungstenite zero-fills its read
            // buffer before each).
            tokio::select! {
                biased;
                frame = rx.recv() => {
                    let Some((frame, queued_at)) = frame else { break };
                    // graphex's rules: a frame that waited past `busy_after`
                    // means the server is behind; a socket that wrote less
                    // than `min_interval` ago waits for the rest of it.
                    if let Some(until) = pacing.and_then(|pacing| pacing.hold_until(Instant::now(), Some(queued_at), last_write)) {
                        tokio::time::sleep_until(until).await;
                    }
                    let mut batch = vec![frame];
                    while batch.len() < WRITE_BATCH {
                        let Ok((frame, _)) = rx.try_recv() else { break };
                        batch.push(frame);
                    }
                    let write = async {
                        for frame in batch {
                            let Ok(text) = frame.try_into() else { continue };
                            sink.feed(Message::Text(text)).await?;
                        }
                        sink.flush().await
                    };
                    last_write = Some(tokio::time::Instant::now());
                    if write.await.is_err() {
                        break;
                    }
                }
                message = std::future::poll_fn(|cx| gate.poll_next(&mut incoming, cx)) => match message {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
    let mut registry = registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(members) = registry.rooms.get_mut(&room) {
        members.retain(|(_, member)| !member.same_channel(&tx));
    }
    registry.count -= 1;
}

//! The load generator: many WebSocket clients in this process, each
//! subscribed as its [`Plan`] says, counting every notification it receives
//! by the id of the change, so that missing and duplicate deliveries are
//! known exactly, and (optionally) recording the latency from the row's
//! `created_us` to receipt. graphex clients may also ask for cursors and
//! resume after one ([`Resume`]): they then check that the offsets of the
//! cursors they receive only grow, and note when they have caught up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, SplitStream};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Mutex as AsyncMutex;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

use crate::BenchError;
use crate::entities::now_us;
use crate::systems::{Model, PROJECTIONS, Plan, System};

pub(crate) type Socket = WebSocketStream<TcpStream>;

/// Sockets opened at once while connecting.
const CONNECT_CONCURRENCY: usize = 64;
/// HTTP connections used for graphex subscribes.
const HTTP_CONNECTIONS: usize = 8;

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientRecord {
    /// Notifications received.
    pub received: u64,
    /// Notifications of a change already received.
    pub duplicates: u64,
    /// Notifications of a change outside the client's plan (wrong room, unknown id).
    pub unexpected: u64,
    /// Bytes of notification payload received.
    pub bytes: u64,
    /// Which changes arrived, by sequence number (id - 1).
    pub seen: Vec<u64>,
    /// Latencies in microseconds, when recorded.
    pub latencies: Vec<u32>,
    /// The server closed the socket before the end (close code, if any).
    pub closed_early: Option<u16>,
    /// The cursor of the latest change received (graphex with cursors).
    pub last_cursor: Option<String>,
    /// Notifications whose cursor's offset was not above the previous one's
    /// (or above the offset of the cursor the client resumed after).
    pub out_of_order: u64,
    /// When the client began to connect.
    pub started: Option<Instant>,
    /// When it had received [`Resume::catch_up`] distinct changes.
    pub caught_up: Option<Instant>,
}

/// How a graphex client subscribes beyond its [`Plan`] (issue 16), and what
/// it watches for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// Subscribe with `cursors: true`: every frame ends with its cursor.
    pub cursors: bool,
    /// Subscribe with `after: <cursor>`: the changes after it first.
    pub after: Option<String>,
    /// Note the moment this many distinct changes have arrived
    /// ([`ClientRecord::caught_up`]).
    pub catch_up: Option<u64>,
}

/// The offset of a cursor `<16 hex digits>-<offset>`.
pub fn cursor_offset(cursor: &str) -> Option<u64> {
    cursor.split_once('-').and_then(|(_, offset)| offset.parse().ok())
}

impl ClientRecord {
    /// Whether change `seq` arrived.
    pub fn has(&self, seq: usize) -> bool {
        self.seen.get(seq / 64).is_some_and(|word| word & (1 << (seq % 64)) != 0)
    }
}

/// Connected and subscribed clients, reading in their own tasks.
pub struct Fleet {
    /// The clients' plans, in order.
    pub plans: Vec<Plan>,
    /// Notifications received so far by every client together.
    pub delivered: Arc<AtomicU64>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<ClientRecord>>,
}

/// The sums over every client of a finished run.
#[derive(Debug, Default)]
pub struct Tally {
    /// Deliveries the plans call for.
    pub expected: u64,
    /// Distinct expected deliveries received.
    pub delivered: u64,
    /// Expected deliveries never received.
    pub missing: u64,
    /// Deliveries of a change already received.
    pub duplicates: u64,
    /// Deliveries nobody asked for.
    pub unexpected: u64,
    /// Clients the server closed.
    pub closed_early: u64,
    /// Mean notification size in bytes.
    pub frame_bytes: f64,
    /// Every latency sample, sorted, in microseconds.
    pub latencies: Vec<u32>,
}

/// Which room change `seq` is saved in, for `rooms` rooms.
pub fn room_of(seq: usize, rooms: usize) -> i32 {
    i32::try_from(seq % rooms.max(1)).unwrap_or(0)
}

impl Fleet {
    /// Opens one client per plan against the server at `addr` and subscribes
    /// each; returns once every subscribe was answered.
    pub async fn connect(
        system: System,
        model: Model,
        addr: SocketAddr,
        plans: Vec<Plan>,
        changes: usize,
        latency: bool,
    ) -> Result<Fleet, BenchError> {
        let resumes = vec![Resume::default(); plans.len()];
        Fleet::connect_resuming(system, model, addr, plans, resumes, changes, latency).await
    }

    /// As [`Fleet::connect`], graphex client `i` subscribing as `resumes[i]`
    /// says. Each client reads from the moment its subscribe is answered.
    pub async fn connect_resuming(
        system: System,
        model: Model,
        addr: SocketAddr,
        plans: Vec<Plan>,
        resumes: Vec<Resume>,
        changes: usize,
        latency: bool,
    ) -> Result<Fleet, BenchError> {
        if resumes.len() != plans.len() {
            return Err(BenchError::new("one Resume per plan"));
        }
        let http = match system {
            System::Graphex => {
                let mut pool = Vec::new();
                for _ in 0..HTTP_CONNECTIONS {
                    pool.push(AsyncMutex::new(http_connection(addr).await?));
                }
                pool
            }
            _ => Vec::new(),
        };
        let (http, resumes) = (&http, &resumes);
        let delivered = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (delivered_ref, stop_ref) = (&delivered, &stop);
        let started: Vec<Result<(usize, JoinHandle<ClientRecord>), BenchError>> =
            stream::iter(plans.iter().copied().enumerate())
                .map(|(index, plan)| async move {
                    let http = http.get(index % HTTP_CONNECTIONS.max(1));
                    let resume = &resumes[index];
                    let started = Instant::now();
                    let socket = open(system, model, addr, plan, resume, http)
                        .await
                        .map_err(|error| BenchError::new(format!("{} client {index}: {error}", system.name())))?;
                    let (_, incoming) = socket.split();
                    let reader = Reader {
                        protocol: system,
                        plan,
                        changes,
                        latency,
                        delivered: delivered_ref.clone(),
                        after: resume.after.as_deref().and_then(cursor_offset),
                        catch_up: resume.catch_up,
                        started,
                    };
                    Ok((index, tokio::spawn(reader.run(incoming, stop_ref.clone()))))
                })
                .buffer_unordered(CONNECT_CONCURRENCY)
                .collect()
                .await;
        let mut ordered = Vec::with_capacity(started.len());
        let mut failure = None;
        for outcome in started {
            match outcome {
                Ok(task) => ordered.push(task),
                Err(error) => failure = failure.or(Some(error)),
            }
        }
        if let Some(error) = failure {
            stop.cancel();
            return Err(error);
        }
        ordered.sort_by_key(|(index, _)| *index);
        let tasks = ordered.into_iter().map(|(_, task)| task).collect();
        Ok(Fleet { plans, delivered, stop, tasks })
    }

    /// Stops every client (each drops its socket) and returns what each saw, in order.
    pub async fn records(self) -> Result<Vec<ClientRecord>, BenchError> {
        self.stop.cancel();
        let mut records = Vec::with_capacity(self.tasks.len());
        for task in self.tasks {
            records.push(task.await.map_err(|error| BenchError::new(format!("client task failed: {error}")))?);
        }
        Ok(records)
    }

    /// Stops every client and sums what they saw, given that `changes`
    /// changes were sent round-robin over `rooms` rooms.
    pub async fn finish(self, changes: usize, rooms: usize) -> Result<Tally, BenchError> {
        let plans = self.plans.clone();
        let records = self.records().await?;
        let mut tally = Tally::default();
        let mut bytes = 0;
        let mut received = 0;
        for (plan, record) in plans.iter().zip(records) {
            for seq in 0..changes {
                if plan.room.is_none_or(|room| room == room_of(seq, rooms)) {
                    tally.expected += 1;
                    if record.has(seq) {
                        tally.delivered += 1;
                    } else {
                        tally.missing += 1;
                    }
                }
            }
            tally.duplicates += record.duplicates;
            tally.unexpected += record.unexpected;
            tally.closed_early += u64::from(record.closed_early.is_some());
            bytes += record.bytes;
            received += record.received;
            tally.latencies.extend(record.latencies);
        }
        tally.frame_bytes = if received == 0 { 0.0 } else { bytes as f64 / received as f64 };
        tally.latencies.sort_unstable();
        Ok(tally)
    }
}

impl Tally {
    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn latency(&self, q: f64) -> Option<u32> {
        if self.latencies.is_empty() {
            return None;
        }
        let rank = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies.get(rank).copied()
    }
}

struct Reader {
    protocol: System,
    plan: Plan,
    changes: usize,
    latency: bool,
    delivered: Arc<AtomicU64>,
    /// The offset of the cursor resumed after.
    after: Option<u64>,
    catch_up: Option<u64>,
    started: Instant,
}

#[derive(Deserialize)]
struct Row {
    id: i64,
    #[serde(default)]
    room_id: Option<i32>,
    #[serde(default)]
    created_us: Option<i64>,
}

#[derive(Deserialize)]
struct TwoChannelFrame {
    payload: TwoChannelPayload,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct TwoChannelPayload {
    data: Row,
}

#[derive(Deserialize)]
struct TransportWsFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<TransportWsPayload>,
}

#[derive(Deserialize)]
struct TransportWsPayload {
    data: TransportWsData,
}

#[derive(Deserialize)]
struct TransportWsData {
    message: Row,
}

/// A `next` of graphex's native `<name>Changes` field (a `ModelChange`).
#[derive(Deserialize)]
struct StandardFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    payload: Option<StandardPayload>,
}

#[derive(Deserialize)]
struct StandardPayload {
    data: StandardData,
}

#[derive(Deserialize)]
struct StandardData {
    #[serde(alias = "messageChanges", alias = "plainMessageChanges", alias = "idMessageChanges")]
    changes: StandardChange,
}

#[derive(Deserialize)]
struct StandardChange {
    /// The row's primary key.
    id: i64,
    /// The row (projected), null in id-only mode.
    #[serde(default)]
    data: Option<StandardRow>,
}

#[derive(Deserialize, Default)]
struct StandardRow {
    #[serde(default)]
    room_id: Option<i32>,
    #[serde(default)]
    created_us: Option<i64>,
}

impl Reader {
    async fn run(self, mut incoming: SplitStream<Socket>, stop: CancellationToken) -> ClientRecord {
        let mut record = ClientRecord {
            seen: vec![0; self.changes.div_ceil(64)],
            started: Some(self.started),
            ..ClientRecord::default()
        };
        let mut last_offset = self.after;
        let mut distinct = 0u64;
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let message = tokio::select! {
                biased;
                message = incoming.next() => message,
                () = &mut stopped => break,
            };
            match message {
                Some(Ok(Message::Text(text))) => {
                    if self.take(text.as_str(), &mut record, &mut last_offset) {
                        distinct += 1;
                        if Some(distinct) == self.catch_up {
                            record.caught_up = Some(Instant::now());
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    record.closed_early = Some(frame.map_or(1005, |frame| u16::from(frame.code)));
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    record.closed_early.get_or_insert(1006);
                    break;
                }
            }
        }
        record
    }

    /// Counts one notification; true if it was a change not seen before.
    fn take(&self, text: &str, record: &mut ClientRecord, last_offset: &mut Option<u64>) -> bool {
        let row = match self.protocol {
            System::Graphex | System::Ceiling | System::CeilingUnpaced => {
                serde_json::from_str::<TwoChannelFrame>(text).ok().map(|frame| {
                    if let Some(cursor) = frame.cursor {
                        let offset = cursor_offset(&cursor);
                        if offset.is_none() || last_offset.is_some_and(|last| offset <= Some(last)) {
                            record.out_of_order += 1;
                        } else {
                            *last_offset = offset;
                            record.last_cursor = Some(cursor);
                        }
                    }
                    frame.payload.data
                })
            }
            System::Alternative => match serde_json::from_str::<TransportWsFrame>(text) {
                Ok(frame) if frame.kind == "next" => frame.payload.map(|payload| payload.data.message),
                _ => None,
            },
            System::GraphexStandard => match serde_json::from_str::<StandardFrame>(text) {
                Ok(frame) if frame.kind == "next" => frame.payload.map(|payload| {
                    let StandardChange { id, data } = payload.data.changes;
                    let data = data.unwrap_or_default();
                    Row { id, room_id: data.room_id, created_us: data.created_us }
                }),
                // Keep-alives are not notifications.
                Ok(frame) if matches!(frame.kind.as_str(), "ping" | "pong" | "ka") => return false,
                _ => None,
            },
        };
        let Some(row) = row else {
            record.unexpected += 1;
            return false;
        };
        let received_us = now_us();
        record.received += 1;
        record.bytes += text.len() as u64;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let in_room = match (self.plan.room, row.room_id) {
            (Some(room), Some(row_room)) => room == row_room,
            _ => true,
        };
        let seq = usize::try_from(row.id - 1).ok().filter(|seq| *seq < self.changes);
        let Some(seq) = seq.filter(|_| in_room) else {
            record.unexpected += 1;
            return false;
        };
        let (word, bit) = (seq / 64, 1u64 << (seq % 64));
        if record.seen[word] & bit != 0 {
            record.duplicates += 1;
            return false;
        }
        record.seen[word] |= bit;
        if self.latency
            && let Some(created_us) = row.created_us
        {
            record.latencies.push(u32::try_from((received_us - created_us).max(0)).unwrap_or(u32::MAX));
        }
        true
    }
}

fn client_config() -> WebSocketConfig {
    // Small buffers: the generator's own memory is not under test.
    WebSocketConfig::default().read_buffer_size(8 * 1024).write_buffer_size(0)
}

async fn ws_connect(addr: SocketAddr, path: &str, protocol: Option<&str>) -> Result<Socket, BenchError> {
    ws_connect_from(addr, path, protocol, None).await
}

/// A TCP connection to `addr`, from the local address `source` if given
/// (e.g. `127.0.0.2`: on loopback, another client address).
pub(crate) async fn tcp_connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, BenchError> {
    let connect = async {
        let Some(source) = source else { return TcpStream::connect(addr).await };
        let socket = if source.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(source, 0))?;
        socket.connect(addr).await
    };
    let tcp = connect.await.map_err(|error| BenchError::new(format!("connect: {error}")))?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// A WebSocket client of `path`, from `source` if given (see [`tcp_connect`]).
pub(crate) async fn ws_connect_from(
    addr: SocketAddr,
    path: &str,
    protocol: Option<&str>,
    source: Option<IpAddr>,
) -> Result<Socket, BenchError> {
    let tcp = tcp_connect(addr, source).await?;
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    if let Some(protocol) = protocol {
        request.headers_mut().insert("sec-websocket-protocol", protocol.parse().expect("a valid header value"));
    }
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, tcp, Some(client_config()))
        .await
        .map_err(|error| BenchError::new(format!("WebSocket handshake: {error}")))?;
    Ok(socket)
}

pub(crate) async fn next_text(socket: &mut Socket) -> Result<String, BenchError> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => return Err(BenchError::new(format!("closed by the server: {frame:?}"))),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => return Err(BenchError::new("socket ended")),
        }
    }
}

async fn open(
    system: System,
    model: Model,
    addr: SocketAddr,
    plan: Plan,
    resume: &Resume,
    http: Option<&AsyncMutex<HttpConnection>>,
) -> Result<Socket, BenchError> {
    match system {
        System::Graphex => {
            let mut socket = ws_connect(addr, "/ws/graphql/", None).await?;
            let handshake: Json = serde_json::from_str(&next_text(&mut socket).await?)?;
            let channel = handshake["channel_id"].as_str().ok_or_else(|| BenchError::new("no channel_id"))?;
            let http = http.ok_or_else(|| BenchError::new("no HTTP connection"))?;
            let request = subscribe_request_resuming(model, channel, plan, resume);
            let answer = http.lock().await.post(addr, "/graphql", &request).await?;
            let confirmation = answer["data"].as_object().and_then(|data| data.values().next());
            if confirmation.and_then(|c| c["ok"].as_bool()) != Some(true) {
                return Err(BenchError::new(format!("subscribe refused: {answer}")));
            }
            Ok(socket)
        }
        System::Ceiling | System::CeilingUnpaced => {
            let variant = match (model, plan.projection) {
                (Model::IdOnly, _) => 4,
                (_, None) => 0,
                (_, Some(projection)) => projection + 1,
            };
            let room = plan.room.map(|room| format!("&room={room}")).unwrap_or_default();
            let mut socket = ws_connect(addr, &format!("/ws?variant={variant}{room}"), None).await?;
            let ready = next_text(&mut socket).await?;
            if ready != "ready" {
                return Err(BenchError::new(format!("unexpected ceiling greeting {ready:?}")));
            }
            Ok(socket)
        }
        System::GraphexStandard => {
            let mut socket = ws_connect(addr, "/graphql", Some("graphql-transport-ws")).await?;
            socket.send(Message::text(json!({"type": "connection_init"}).to_string())).await?;
            let ack: Json = serde_json::from_str(&next_text(&mut socket).await?)?;
            if ack["type"] != "connection_ack" {
                return Err(BenchError::new(format!("no connection_ack: {ack}")));
            }
            socket.send(Message::text(standard_subscribe(model, plan).to_string())).await?;
            Ok(socket)
        }
        System::Alternative => {
            let mut socket = ws_connect(addr, "/ws", Some("graphql-transport-ws")).await?;
            socket.send(Message::text(json!({"type": "connection_init"}).to_string())).await?;
            let ack: Json = serde_json::from_str(&next_text(&mut socket).await?)?;
            if ack["type"] != "connection_ack" {
                return Err(BenchError::new(format!("no connection_ack: {ack}")));
            }
            let fields = match (model, plan.projection) {
                (Model::IdOnly, _) => "id".to_owned(),
                (_, None) => "id room_id author body created_us".to_owned(),
                (_, Some(projection)) => PROJECTIONS[projection].join(" "),
            };
            let query = format!("subscription($room: Int) {{ message(room: $room) {{ {fields} }} }}");
            let subscribe =
                json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"room": plan.room}}});
            socket.send(Message::text(subscribe.to_string())).await?;
            Ok(socket)
        }
    }
}

/// The graphex two-channel subscribe for `plan` on `channel`.
pub(crate) fn subscribe_request(model: Model, channel: &str, plan: Plan) -> Json {
    subscribe_request_resuming(model, channel, plan, &Resume::default())
}

/// As [`subscribe_request`], with `cursors: true` and `after` if `resume` asks.
pub(crate) fn subscribe_request_resuming(model: Model, channel: &str, plan: Plan, resume: &Resume) -> Json {
    let filters = plan.room.map(|room| json!({"room_id": room}));
    let (field, fields_type) = match model {
        Model::Indexed => ("messageSubscription", Some("MessageFields")),
        Model::Plain => ("plainMessageSubscription", Some("PlainMessageFields")),
        Model::IdOnly => ("idMessageSubscription", None),
    };
    // Only when asked: the other scenarios send the subscribe they always sent.
    let (resume_vars, resume_args) = match (resume.cursors, &resume.after) {
        (_, Some(_)) => (", $after: String", ", cursors: true, after: $after"),
        (true, None) => ("", ", cursors: true"),
        (false, None) => ("", ""),
    };
    let query = match fields_type {
        Some(fields_type) => format!(
            "subscription($ch: String!, $f: JSON, $d: [{fields_type}!]{resume_vars}) {{ {field}(channelId: $ch, \
             action: CREATE, operation: SUBSCRIBE, filters: $f, data: $d{resume_args}) {{ ok error }} }}"
        ),
        None => format!(
            "subscription($ch: String!, $f: JSON{resume_vars}) {{ {field}(channelId: $ch, action: CREATE, \
             operation: SUBSCRIBE, filters: $f{resume_args}) {{ ok error }} }}"
        ),
    };
    let data = plan
        .projection
        .map(|projection| PROJECTIONS[projection].iter().map(|field| field.to_uppercase()).collect::<Vec<_>>());
    let mut variables = json!({"ch": channel, "f": filters, "d": data});
    if let Some(after) = &resume.after {
        variables["after"] = json!(after);
    }
    json!({"query": query, "variables": variables})
}

/// The `graphql-transport-ws` subscribe to graphex's native `<name>Changes`
/// field for `plan`: its room as `filters`, its projection as `data`.
pub(crate) fn standard_subscribe(model: Model, plan: Plan) -> Json {
    let filters = plan.room.map(|room| json!({"room_id": room}));
    let (field, fields_type) = match model {
        Model::Indexed => ("messageChanges", Some("MessageFields")),
        Model::Plain => ("plainMessageChanges", Some("PlainMessageFields")),
        Model::IdOnly => ("idMessageChanges", None),
    };
    let query = match fields_type {
        Some(fields_type) => format!(
            "subscription($f: JSON, $d: [{fields_type}!]) {{ {field}(action: CREATE, filters: $f, data: $d) \
             {{ id data }} }}"
        ),
        None => format!("subscription($f: JSON) {{ {field}(action: CREATE, filters: $f) {{ id data }} }}"),
    };
    let data = plan
        .projection
        .map(|projection| PROJECTIONS[projection].iter().map(|field| field.to_uppercase()).collect::<Vec<_>>());
    json!({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": {"f": filters, "d": data}}})
}

/// One keep-alive HTTP/1.1 connection (hyper's low-level client).
pub(crate) struct HttpConnection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

async fn http_connection(addr: SocketAddr) -> Result<HttpConnection, BenchError> {
    http_connection_from(addr, None).await
}

/// A keep-alive HTTP/1.1 connection from `source` if given (see [`tcp_connect`]).
pub(crate) async fn http_connection_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> Result<HttpConnection, BenchError> {
    let tcp = tcp_connect(addr, source).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(HttpConnection { sender })
}

impl HttpConnection {
    pub(crate) async fn post(&mut self, addr: SocketAddr, path: &str, body: &Json) -> Result<Json, BenchError> {
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|error| BenchError::new(error.to_string()))?;
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }
}

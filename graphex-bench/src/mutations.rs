//! Issue 18's `mutations` scenario: rows created as a real application
//! creates them, by a GraphQL mutation over HTTP (`createMessage`, several
//! in flight, each on its own keep-alive connection), the hooks announcing
//! each saved row inside the `Hub::scope` graphex's router gives every HTTP
//! request; N two-channel sockets spread over rooms, one room each (indexed
//! groups). Reported: mutations/s, deliveries/s, and the server process's
//! CPU time per mutation (`utime + stime` of `/proc/<pid>/stat` before and
//! after, everything the server did for the run: HTTP, GraphQL, SQLite,
//! hooks, fan-out, socket writes). Beside it, for comparison, the same rows
//! saved by the bench's command pipe (`emit`, no HTTP, no GraphQL) with as
//! many writers. Every run checks for lost, duplicated and unexpected
//! deliveries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;

use crate::BenchError;
use crate::entities::BODY;
use crate::load::{Fleet, HttpConnection, http_connection_from, room_of};
use crate::remote::RemoteServer;
use crate::scenarios::{
    Check, Options, Outcome, Pace, Run, drive, lossless_check, rate_of, ratio_check, run_of, wait_for_subscribers,
};
use crate::systems::{Model, Plan, Serve, System, Target};

/// The variant of rows created by mutations over HTTP.
const HTTP: &str = "HTTP mutations";
/// The variant of rows saved through the bench's command pipe.
const PIPE: &str = "pipe emit (info)";

/// Runs the scenario: the HTTP mutations, then the pipe for comparison.
pub async fn run(options: &Options) -> Outcome {
    let n = options.mutations_n;
    let rooms = options.mutations_rooms.max(1);
    let plans: Vec<Plan> = (0..n).map(|index| Plan { room: Some(room_of(index, rooms)), projection: None }).collect();
    let mut runs = Vec::new();
    for variant in [HTTP, PIPE] {
        runs.push(one(variant, plans.clone(), options).await?);
    }
    let mut checks = Vec::new();
    if let Some(http) = runs.iter().find(|run| run.variant == HTTP) {
        if let Some(per) = http.cpu_us_per_change {
            checks.push(Check {
                name: format!("server CPU per mutation, N={n} over {rooms} rooms (µs)"),
                value: per,
                target: "(info)".into(),
                met: true,
            });
        }
        if let Some(rate) = http.changes_per_s {
            checks.push(Check {
                name: format!("mutations/s, {} in flight", options.mutations_in_flight),
                value: rate,
                target: "(info)".into(),
                met: true,
            });
        }
    }
    let cpu_of = |variant: &str| runs.iter().find(|run| run.variant == variant).and_then(|run| run.cpu_us_per_change);
    checks.extend(ratio_check(
        "server CPU per change: HTTP mutation / pipe (info)".into(),
        cpu_of(HTTP),
        cpu_of(PIPE),
        0.0,
    ));
    checks.extend(ratio_check(
        "deliveries/s: HTTP mutations / pipe (info)".into(),
        rate_of(&runs, System::Graphex, HTTP, n),
        rate_of(&runs, System::Graphex, PIPE, n),
        0.0,
    ));
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// One run: a fresh server, the sockets, `mutations_count` rows created as `variant` says.
async fn one(variant: &str, plans: Vec<Plan>, options: &Options) -> Result<Run, BenchError> {
    let exe = options.server_exe.as_deref().ok_or_else(|| BenchError::new("no server_exe given"))?;
    let (n, rooms, count) = (plans.len(), options.mutations_rooms.max(1), options.mutations_count);
    let in_flight = options.mutations_in_flight.max(1);
    let server = Arc::new(RemoteServer::spawn_with(exe, System::Graphex, Model::Indexed, Serve::default()).await?);
    let fleet = Fleet::connect(System::Graphex, Model::Indexed, server.addr, plans, count, false).await?;
    wait_for_subscribers(server.as_ref(), n).await?;
    let inner: Arc<dyn Target> = if variant == HTTP {
        Arc::new(MutationTarget::connect(server.clone(), in_flight).await?)
    } else {
        server.clone()
    };
    let timed = Arc::new(Timed::new(inner));
    let pace = Pace { changes: count, rooms, rate: None, latency: false, serve: Serve::default() };
    // `in_flight` writers: at most that many mutations outstanding.
    let driving = Options { writers: in_flight, ..options.clone() };
    let cpu_before = server.cpu_seconds()?;
    let seconds = drive(timed.clone(), &fleet, &pace, &driving).await?;
    let cpu = server.cpu_seconds()? - cpu_before;
    let dropped = server.dropped().await?;
    let tally = fleet.finish(count, rooms).await?;
    let mut run = run_of(System::Graphex, variant, n, count, seconds, dropped, &tally);
    run.set_cpu(cpu);
    run.changes_per_s = timed.rate();
    Ok(run)
}

/// Creates change `seq` by the `createMessage` mutation on one of its
/// keep-alive HTTP connections (one free per writer).
struct MutationTarget {
    server: Arc<RemoteServer>,
    connections: Vec<AsyncMutex<HttpConnection>>,
}

impl MutationTarget {
    async fn connect(server: Arc<RemoteServer>, connections: usize) -> Result<MutationTarget, BenchError> {
        let mut pool = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            pool.push(AsyncMutex::new(http_connection_from(server.addr, None).await?));
        }
        Ok(MutationTarget { server, connections: pool })
    }
}

const CREATE_MESSAGE: &str =
    "mutation($id: Int, $room: Int!, $body: String!) { createMessage(id: $id, roomId: $room, body: $body) }";

#[async_trait::async_trait]
impl Target for MutationTarget {
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        let id = i32::try_from(seq + 1).map_err(|_| BenchError::new("too many mutations"))?;
        let body = json!({"query": CREATE_MESSAGE, "variables": {"id": id, "room": room, "body": BODY}});
        // A free connection (there are as many as writers), else wait for this change's own.
        let mut connection = match self.connections.iter().find_map(|connection| connection.try_lock().ok()) {
            Some(connection) => connection,
            None => self.connections[seq % self.connections.len()].lock().await,
        };
        let answer = connection.post(self.server.addr, "/graphql", &body).await?;
        drop(connection);
        if answer["data"]["createMessage"].as_i64() != Some(i64::from(id)) {
            return Err(BenchError::new(format!("createMessage {id} answered {answer}")));
        }
        Ok(())
    }

    async fn subscribers(&self) -> Result<usize, BenchError> {
        self.server.subscribers().await
    }
}

/// A target that notes when its first change was sent and its last answered.
struct Timed {
    inner: Arc<dyn Target>,
    first: OnceLock<Instant>,
    last: Mutex<Option<Instant>>,
    done: AtomicU64,
}

impl Timed {
    fn new(inner: Arc<dyn Target>) -> Timed {
        Timed { inner, first: OnceLock::new(), last: Mutex::new(None), done: AtomicU64::new(0) }
    }

    /// Changes answered per second, from the first sent to the last answered.
    fn rate(&self) -> Option<f64> {
        let (first, last) = (*self.first.get()?, (*self.last.lock().unwrap_or_else(|p| p.into_inner()))?);
        let seconds = last.duration_since(first).as_secs_f64();
        (seconds > 0.0).then(|| self.done.load(Ordering::Relaxed) as f64 / seconds)
    }
}

#[async_trait::async_trait]
impl Target for Timed {
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        self.first.get_or_init(Instant::now);
        self.inner.emit(seq, room).await?;
        self.done.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *last = Some(last.map_or(now, |last| last.max(now)));
        Ok(())
    }

    async fn subscribers(&self) -> Result<usize, BenchError> {
        self.inner.subscribers().await
    }

    fn dropped(&self) -> u64 {
        self.inner.dropped()
    }
}

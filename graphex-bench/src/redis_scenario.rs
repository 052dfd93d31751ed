//! Scenario 5: cross-process delivery through the Redis layer, against the
//! raw redis-rs pub/sub publish rate measured in the same run.
//!
//! - **raw**: this process publishes `changes` messages, each the size of a
//!   graphex change, to one Redis channel through a multiplexed redis-rs
//!   connection (at most `window` in flight); a pub/sub connection counts
//!   them as they arrive. Rate = messages / (first publish → last receipt).
//! - **graphex**: a server process (`graphex-bench serve-redis <url>
//!   <prefix>`: the bench's `message` model, its hub on the Redis layer)
//!   holds `n` subscribed two-channel sockets of the load generator; this
//!   process announces the same number of changes through its own hub on the
//!   Redis layer, with the code the SeaORM hooks run after a save
//!   (`graphex::announce`), at most `window` in flight. Rate = changes /
//!   (first announce → last delivery to a socket of the other process). The
//!   publishing layer counts its Redis publishes: one per group per change
//!   is expected (the model has three groups per change: coarse, instance,
//!   `room_id` index).
//!
//! The database is left out of both sides on purpose: what is compared is
//! the channel layer with the transport it is built on; the save-to-socket
//! path is scenario 1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_graphql::{EmptyMutation, Object, Schema};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::BenchError;
use crate::entities::{self, BODY, message, now_us};
use crate::load::Fleet;
use crate::scenarios::{Check, Run, run_of};
use crate::systems::{Model, Plan, System};

/// Groups one change of the `message` model is published to.
const GROUPS_PER_CHANGE: u64 = 3;

/// Tasks sending changes concurrently (each waits for its send to finish).
const WRITERS: usize = 32;

/// Sizes of scenario 5.
#[derive(Clone, Debug, Serialize)]
pub struct RedisOptions {
    /// The Redis both processes share.
    pub url: String,
    /// Changes per run.
    pub changes: usize,
    /// Subscribed sockets on the receiving process (each value is one run).
    pub n: Vec<usize>,
    /// Changes whose deliveries may be outstanding at most (the same for raw and graphex).
    pub window: usize,
    /// How long to wait for missing deliveries after the last progress.
    pub settle_secs: f64,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            url: "redis://127.0.0.1:6379/0".into(),
            changes: 100_000,
            n: vec![1, 100],
            // Two processes and Redis make the path longer than in one
            // process, so more changes must be in flight to keep it busy
            // (throughput <= window / latency); below the per-socket queue
            // (1024), so no socket is closed as a slow consumer.
            window: 1000,
            settle_secs: 2.0,
        }
    }
}

/// Scenario 5's runs and its checks against the target.
#[derive(Clone, Debug, Serialize)]
pub struct RedisReport {
    /// The options it ran with.
    pub options: RedisOptions,
    /// The two raw runs first (one channel, three channels per message),
    /// then one graphex run per `n`.
    pub runs: Vec<Run>,
    /// Redis publishes per group per change, per graphex run.
    pub publishes_per_group_change: Vec<f64>,
    /// Figures against the targets.
    pub checks: Vec<Check>,
}

/// Runs scenario 5; `exe` is this benchmark's binary (the server process).
pub async fn run(options: &RedisOptions, exe: &std::path::Path) -> Result<RedisReport, BenchError> {
    let prefix = format!("graphex-bench-{}-{}:", std::process::id(), now_us());
    let changes = options.changes.max(1);
    let size = graphex::__internals::prepare(&row(1), graphex::Action::Create).message.len();

    let mut runs = vec![
        raw(options, &prefix, changes, size, 1).await?,
        raw(options, &prefix, changes, size, GROUPS_PER_CHANGE as usize).await?,
    ];
    let mut publishes = Vec::new();
    for &n in &options.n {
        let (run, per_group) = through_graphex(options, exe, &prefix, changes, n).await?;
        runs.push(run);
        publishes.push(per_group);
    }
    let (raw_rate, like_for_like) = (runs[0].rate, runs[1].rate);
    let mut checks = Vec::new();
    for (run, per_group) in runs[2..].iter().zip(&publishes) {
        let changes_per_second = run.changes as f64 / run.seconds.max(f64::EPSILON);
        checks.push(Check {
            name: format!("redis N={}: graphex changes/s / raw messages/s (1 PUBLISH each)", run.n),
            value: changes_per_second / raw_rate.max(f64::EPSILON),
            target: ">= 0.7".into(),
            met: changes_per_second >= 0.7 * raw_rate,
        });
        checks.push(Check {
            name: format!("redis N={}: graphex changes/s / raw messages/s (3 PUBLISH each)", run.n),
            value: changes_per_second / like_for_like.max(f64::EPSILON),
            target: "(info)".into(),
            met: true,
        });
        checks.push(Check {
            name: format!("redis N={}: Redis publishes per group per change", run.n),
            value: *per_group,
            target: "== 1".into(),
            met: (*per_group - 1.0).abs() < f64::EPSILON,
        });
    }
    checks.push(Check {
        name: "deliveries lost, duplicated or unexpected (all runs)".into(),
        value: runs.iter().map(|run| run.missing + run.duplicates + run.unexpected).sum::<u64>() as f64,
        target: "== 0".into(),
        met: runs.iter().all(Run::lossless),
    });
    Ok(RedisReport { options: options.clone(), runs, publishes_per_group_change: publishes, checks })
}

/// The row of change `id` (room 0, so every change reaches every socket).
fn row(id: i32) -> message::Model {
    message::Model { id, room_id: 0, author: entities::author(0), body: BODY.to_owned(), created_us: now_us() }
}

/// Sends `changes` messages from `writers` tasks, each waiting while more
/// than `window` deliveries are outstanding (`per_change` deliveries are
/// expected per message; `delivered` counts them), so that no queue
/// overflows; returns when every message was sent.
async fn drive<F, Fut>(
    options: &RedisOptions,
    changes: usize,
    per_change: u64,
    delivered: Arc<AtomicU64>,
    emit: F,
) -> Result<(), BenchError>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), BenchError>> + Send,
{
    let window = options.window.max(1) as u64 * per_change;
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (next, sent, delivered, emit) = (next.clone(), sent.clone(), delivered.clone(), emit.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= changes {
                    return Ok::<(), BenchError>(());
                }
                while sent.load(Ordering::Relaxed).saturating_sub(delivered.load(Ordering::Relaxed)) > window {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                sent.fetch_add(per_change, Ordering::Relaxed);
                emit(seq).await?;
            }
        }));
    }
    for task in tasks {
        task.await.map_err(|error| BenchError::new(format!("writer failed: {error}")))??;
    }
    Ok(())
}

/// Waits until `delivered` reaches `expected` or stops moving for
/// `settle_secs`; returns the instant of the last progress.
async fn settle(options: &RedisOptions, delivered: &AtomicU64, expected: u64, started: Instant) -> Instant {
    let settle = Duration::from_secs_f64(options.settle_secs.max(0.1));
    let (mut seen, mut last) = (0, started);
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now != seen {
            (seen, last) = (now, Instant::now());
        }
        if now >= expected || last.elapsed() > settle {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Raw redis-rs: each message is published to `channels` channels in one
/// pipeline (the first subscribed, the others not: with three, Redis does
/// the same work as for one graphex change of this model).
async fn raw(
    options: &RedisOptions,
    prefix: &str,
    changes: usize,
    size: usize,
    channels: usize,
) -> Result<Run, BenchError> {
    let client = redis::Client::open(options.url.as_str())?;
    let channel = format!("{prefix}raw");
    let mut subscriber = client.get_async_pubsub().await?;
    subscriber.subscribe(&channel).await?;
    let mut messages = subscriber.into_on_message();
    let publisher = client.get_multiplexed_async_connection().await?;
    let payload = Arc::new(vec![b'x'; size]);
    let names: Arc<Vec<String>> = Arc::new(
        (0..channels.max(1))
            .map(|index| if index == 0 { channel.clone() } else { format!("{channel}-{index}") })
            .collect(),
    );

    let received = Arc::new(AtomicU64::new(0));
    let counter = tokio::spawn({
        let received = received.clone();
        async move {
            while messages.next().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let started = Instant::now();
    drive(options, changes, 1, received.clone(), move |_| {
        let mut connection = publisher.clone();
        let mut pipe = redis::pipe();
        for name in names.iter() {
            pipe.publish(name, payload.as_slice()).ignore();
        }
        async move { Ok(pipe.exec_async(&mut connection).await?) }
    })
    .await?;
    let last = settle(options, &received, changes as u64, started).await;
    counter.abort();
    let received = received.load(Ordering::Relaxed).min(changes as u64);
    let seconds = last.duration_since(started).as_secs_f64();
    Ok(Run {
        system: "redis-rs raw".into(),
        variant: format!("PUBLISH ×{channels} → SUBSCRIBE"),
        n: 1,
        changes,
        expected: changes as u64,
        delivered: received,
        missing: changes as u64 - received,
        seconds,
        rate: received as f64 / seconds.max(f64::EPSILON),
        frame_bytes: size as f64,
        ..Run::default()
    })
}

async fn through_graphex(
    options: &RedisOptions,
    exe: &std::path::Path,
    prefix: &str,
    changes: usize,
    n: usize,
) -> Result<(Run, f64), BenchError> {
    let (addr, _server) = spawn_server(exe, &options.url, prefix).await?;
    let plans = vec![Plan { room: None, projection: None }; n];
    let fleet = Fleet::connect(System::Graphex, Model::Indexed, addr, plans, changes, false).await?;

    let layer = Arc::new(
        graphex::layer::RedisLayer::connect_with(
            &options.url,
            graphex::layer::RedisOptions::default().with_prefix(prefix.to_owned()),
        )
        .await
        .map_err(|error| BenchError::new(error.to_string()))?,
    );
    let hub = graphex::Hub::with_layer(graphex::Config::default(), layer.clone());
    let ids: Vec<i32> = (1..=i32::try_from(changes).map_err(|_| BenchError::new("too many changes"))?).collect();

    let started = Instant::now();
    let ids = Arc::new(ids);
    let emitter = hub.clone();
    drive(options, changes, n as u64, fleet.delivered.clone(), move |seq| {
        let (hub, id) = (emitter.clone(), ids[seq]);
        async move {
            hub.scope(graphex::announce(&row(id), graphex::Action::Create)).await;
            Ok(())
        }
    })
    .await?;
    let last = settle(options, &fleet.delivered, (changes * n) as u64, started).await;
    let seconds = last.duration_since(started).as_secs_f64();
    let tally = fleet.finish(changes, 1).await?;
    let published = layer.stats().published;
    let per_group = published as f64 / (changes as u64 * GROUPS_PER_CHANGE) as f64;
    let dropped = hub.stats().dropped;
    let run = run_of(System::Graphex, "two processes via Redis", n, changes, seconds, dropped, &tally);
    Ok((run, per_group))
}

/// Starts `exe serve-redis <url> <prefix>` and waits for its address.
async fn spawn_server(exe: &std::path::Path, url: &str, prefix: &str) -> Result<(SocketAddr, Child), BenchError> {
    let mut child = Command::new(exe)
        .args(["serve-redis", url, prefix])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| BenchError::new("no child stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next_line().await?.ok_or_else(|| BenchError::new("server process exited before listening"))?;
    let addr = line
        .strip_prefix("listening ")
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| BenchError::new(format!("unexpected server line {line:?}")))?;
    Ok((addr, child))
}

/// The server process of scenario 5: the `message` model over a hub on the
/// Redis layer; prints `listening <addr>` and serves until killed.
pub async fn serve(args: &[String]) -> Result<(), BenchError> {
    let [url, prefix] = args else { return Err(BenchError::new("usage: graphex-bench serve-redis <url> <prefix>")) };
    let options = graphex::layer::RedisOptions::default().with_prefix(prefix.clone());
    let layer = graphex::layer::RedisLayer::connect_with(url, options)
        .await
        .map_err(|error| BenchError::new(error.to_string()))?;
    let hub = graphex::Hub::with_layer(graphex::Config::default(), Arc::new(layer));
    let schema =
        Schema::build(Ping, EmptyMutation, message::MessageSubscriptionRoot).data(entities::database().await?).finish();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    axum::serve(listener, graphex::router(schema, hub, graphex::Anonymous)).await?;
    Ok(())
}

struct Ping;

#[Object]
impl Ping {
    /// Always true (a schema needs a query).
    async fn ping(&self) -> bool {
        true
    }
}

/// The report as a table.
pub fn table(report: &RedisReport) -> String {
    let mut out = String::from("scenario redis\n");
    out.push_str(&format!(
        "{:<14} {:<26} {:>5} {:>8} {:>10} {:>8} {:>12} {:>8}\n",
        "system", "variant", "n", "changes", "delivered", "missing", "rate/s", "bytes"
    ));
    for run in &report.runs {
        out.push_str(&format!(
            "{:<14} {:<26} {:>5} {:>8} {:>10} {:>8} {:>12.0} {:>8.0}\n",
            run.system, run.variant, run.n, run.changes, run.delivered, run.missing, run.rate, run.frame_bytes
        ));
    }
    for check in &report.checks {
        let verdict = if check.met { "met" } else { "MISSED" };
        out.push_str(&format!("  {:<62} {:>10.3}  target {:<8} {verdict}\n", check.name, check.value, check.target));
    }
    out
}

//! Issue 17's benchmark: change capture from PostgreSQL's log against the
//! SeaORM hooks, side by side in one process on one PostgreSQL server.
//!
//! - **hooks**: `W` writer tasks insert rows of the bench's `message` model
//!   through SeaORM (`ActiveModel::insert` inside `hub.scope(..)`); the
//!   hooks announce each save to the hub.
//! - **capture**: the same inserts through SeaORM on a hub where the model
//!   is registered with [`PostgresCapture`]: the hooks announce nothing, the
//!   capture task reads the slot (pgoutput) and publishes each committed row.
//!
//! `N` in-process subscribers (hub channels, each subscribed to the
//! model's coarse `create` group, as the integration tests' `watch` does)
//! record the id and the moment of every change they receive. Per variant
//! and `N`, two runs:
//!
//! - **throughput**: `changes` inserts as fast as `W` writers go (at most
//!   `window` changes whose deliveries are outstanding); changes/s = changes
//!   / (first commit → last delivery to any subscriber); the writers'
//!   commit rate is reported beside it.
//! - **latency**: `latency_rate` inserts per second for `latency_secs`;
//!   commit-to-delivery latency = the moment a subscriber receives a change
//!   − the moment its insert returned (clamped at 0: the hooks publish
//!   inside the insert, before it returns), p50, p99 and max over every
//!   delivery.
//!
//! Every run is checked: nothing lost, duplicated or unexpected, and each
//! writer's changes reach every subscriber in the order it committed them.
//!
//! Each run of the scenario (`--repeat`) works in its own database
//! (`CREATE DATABASE`, dropped at the end); each capture measurement
//! prepares its own slot and publication just before it (so the slot
//! starts after the hooks' rows) and removes them after it, also when the
//! measurement failed (an abandoned slot holds the server's log). Before a
//! measurement's subscribers attach, one warm-up row is inserted and, for
//! capture, waited for: the capture then streams and has caught up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use graphex::__internals::{Channel, Delivery, HubInternals, Subscription, SubscriptionKey};
use graphex::capture::{CaptureMonitor, PostgresCapture, ReplicationTarget};
use graphex::{Action, Hub};
use sea_orm::{ActiveModelTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Schema, Set};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::BenchError;
use crate::entities::{self, BODY, message, now_us};
use crate::scenarios::{Check, median_of, quantile};

/// Frames queued per subscriber before it would be closed as slow (above
/// any window, so the hub's backpressure never has to act).
const QUEUE: usize = 8192;

/// Bound on waiting for a capture to stream and catch up, or for a stalled
/// delivery window to move.
const STALL: Duration = Duration::from_secs(30);

/// Sizes of the capture scenario.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureOptions {
    /// A PostgreSQL server with `wal_level=logical` and a replication role;
    /// `None`: a throwaway cluster of the benchmark's own.
    pub url: Option<String>,
    /// Changes per throughput run.
    pub changes: usize,
    /// Subscribers (each value is one pair of runs per variant).
    pub n: Vec<usize>,
    /// Writer tasks inserting concurrently.
    pub writers: usize,
    /// Changes whose deliveries may be outstanding in a throughput run.
    pub window: usize,
    /// Changes per second of the latency runs.
    pub latency_rate: f64,
    /// Seconds of each latency run.
    pub latency_secs: f64,
    /// How long to wait for missing deliveries after the last progress.
    pub settle_secs: f64,
}

impl Default for CaptureOptions {
    fn default() -> Self {
        CaptureOptions {
            url: None,
            changes: 20_000,
            n: vec![1, 100],
            writers: 8,
            window: 1000,
            latency_rate: 200.0,
            latency_secs: 5.0,
            settle_secs: 2.0,
        }
    }
}

/// How changes reach the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// SeaORM's hooks announce each save.
    Hooks,
    /// The capture reads the log.
    Capture,
}

impl Variant {
    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Hooks => "hooks",
            Variant::Capture => "capture",
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureRun {
    /// `hooks` or `capture`.
    pub variant: String,
    /// `throughput` or `latency`.
    pub kind: String,
    /// Subscribers.
    pub n: usize,
    /// Changes inserted.
    pub changes: usize,
    /// Deliveries expected (changes × n).
    pub expected: u64,
    /// Distinct expected deliveries received.
    pub delivered: u64,
    /// Expected deliveries never received.
    pub missing: u64,
    /// Deliveries of a change a subscriber already had.
    pub duplicates: u64,
    /// Deliveries of a change not of this run.
    pub unexpected: u64,
    /// Deliveries that came before a change committed earlier by the same writer.
    pub out_of_order: u64,
    /// First commit → last delivery.
    pub seconds: f64,
    /// Changes per second delivered to every subscriber (changes / seconds).
    pub rate: f64,
    /// Changes per second the writers committed (first insert started → last returned).
    pub commit_rate: f64,
    /// Commit-to-delivery latency, 50th percentile, µs.
    pub p50_us: Option<u32>,
    /// 99th percentile.
    pub p99_us: Option<u32>,
    /// Largest.
    pub max_us: Option<u32>,
    /// Save-to-delivery latency (from just before the insert, so the
    /// insert's round trip is in it for both variants), 50th percentile, µs.
    pub save_p50_us: Option<u32>,
    /// 99th percentile.
    pub save_p99_us: Option<u32>,
    /// Capture: transactions read in the run (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_transactions: Option<u64>,
    /// Capture: changes published (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_changes: Option<u64>,
    /// Capture: rows refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub captured_refused: Option<u64>,
    /// Repeats summed up in this run (medians).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<usize>,
}

impl CaptureRun {
    /// Nothing lost, duplicated, unexpected or reordered.
    pub fn lossless(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.unexpected == 0
            && self.out_of_order == 0
            && self.delivered == self.expected
            && self.captured_refused.unwrap_or(0) == 0
    }
}

/// Capture against hooks at one `N`, within one run of the scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    /// Subscribers.
    pub n: usize,
    /// Capture's changes/s over the hooks'.
    pub rate: f64,
    /// Capture's p50 over the hooks'.
    pub p50: f64,
    /// Capture's p99 over the hooks'.
    pub p99: f64,
    /// Capture's save-to-delivery p99 over the hooks'.
    pub save_p99: f64,
}

/// One run of the scenario (or the medians of several).
#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    /// The options it ran with.
    pub options: CaptureOptions,
    /// The PostgreSQL server (`version()`).
    pub server: String,
    /// Per N: hooks throughput, capture throughput, hooks latency, capture latency.
    pub runs: Vec<CaptureRun>,
    /// Capture against hooks, per N.
    pub ratios: Vec<Ratios>,
    /// The targets.
    pub checks: Vec<Check>,
}

/// What every measurement of one run of the scenario shares.
struct Context {
    db: DatabaseConnection,
    target: ReplicationTarget,
    options: CaptureOptions,
    /// The next unused row id.
    next_id: AtomicUsize,
    /// Measurements so far (names slots, numbers warm-up rows).
    measurements: AtomicUsize,
}

/// `url` with its database replaced by `database` (query kept).
fn with_database(url: &str, database: &str) -> Result<String, BenchError> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority = base.find("://").map(|at| at + 3).ok_or_else(|| BenchError::new(format!("not a URL: {url}")))?;
    let end = base[authority..].find('/').map_or(base.len(), |slash| authority + slash);
    let mut out = format!("{}/{database}", &base[..end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

async fn connect(url: &str, connections: u32) -> Result<DatabaseConnection, BenchError> {
    let mut options = ConnectOptions::new(url.to_owned());
    options.max_connections(connections).min_connections(1).sqlx_logging(false);
    Ok(Database::connect(options).await?)
}

/// One run of the scenario on the server at `url` (any database of it:
/// the run makes its own).
pub async fn run(options: &CaptureOptions, url: &str) -> Result<CaptureReport, BenchError> {
    let admin = connect(url, 2).await?;
    let server: String = admin
        .query_one_raw(sea_orm::Statement::from_string(admin.get_database_backend(), "SELECT version() AS v"))
        .await?
        .map(|row| row.try_get("", "v"))
        .transpose()?
        .unwrap_or_default();
    let database = format!("graphex_bench_capture_{}_{}", std::process::id(), now_us());
    admin.execute_unprepared(&format!("CREATE DATABASE {database}")).await?;
    let outcome = run_in(options, url, &database, server).await;
    // The run's slots are gone (each measurement removes its own), so the
    // database can be dropped; FORCE ends a straggling pooled session.
    let dropped = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
    let _ = admin.close().await;
    let report = outcome?;
    dropped?;
    Ok(report)
}

async fn run_in(
    options: &CaptureOptions,
    url: &str,
    database: &str,
    server: String,
) -> Result<CaptureReport, BenchError> {
    let url = with_database(url, database)?;
    let writers = options.writers.max(1);
    let db = connect(&url, u32::try_from(writers + 2).unwrap_or(u32::MAX)).await?;
    let builder = Schema::new(db.get_database_backend());
    db.execute(&builder.create_table_from_entity(message::Entity)).await?;
    let target = ReplicationTarget::from_url(&url).map_err(|error| BenchError::new(error.to_string()))?;
    let context = Context {
        db,
        target,
        options: options.clone(),
        next_id: AtomicUsize::new(1),
        measurements: AtomicUsize::new(0),
    };
    let outcome = measure_all(&context).await;
    let _ = context.db.close().await;
    let runs = outcome?;

    let mut ratios = Vec::new();
    for &n in &options.n {
        let find = |variant: Variant, kind: &str| {
            runs.iter().find(|run| run.variant == variant.name() && run.kind == kind && run.n == n)
        };
        let (Some(hooks), Some(capture)) = (find(Variant::Hooks, "throughput"), find(Variant::Capture, "throughput"))
        else {
            continue;
        };
        let (Some(hooks_latency), Some(capture_latency)) =
            (find(Variant::Hooks, "latency"), find(Variant::Capture, "latency"))
        else {
            continue;
        };
        let ratio = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => f64::from(a) / f64::from(b.max(1)),
            _ => f64::NAN,
        };
        ratios.push(Ratios {
            n,
            rate: capture.rate / hooks.rate.max(f64::EPSILON),
            p50: ratio(capture_latency.p50_us, hooks_latency.p50_us),
            p99: ratio(capture_latency.p99_us, hooks_latency.p99_us),
            save_p99: ratio(capture_latency.save_p99_us, hooks_latency.save_p99_us),
        });
    }
    let checks = checks(&runs, &ratios);
    Ok(CaptureReport { options: options.clone(), server, runs, ratios, checks })
}

/// The targets against `ratios`, and losslessness over `runs`.
fn checks(runs: &[CaptureRun], ratios: &[Ratios]) -> Vec<Check> {
    let mut checks = Vec::new();
    for ratio in ratios {
        checks.push(Check {
            name: format!("capture N={}: changes/s capture / hooks", ratio.n),
            value: ratio.rate,
            target: ">= 0.5".into(),
            met: ratio.rate >= 0.5,
        });
        checks.push(Check {
            name: format!("capture N={}: p99 commit-to-delivery capture / hooks", ratio.n),
            value: ratio.p99,
            target: "<= 2".into(),
            met: ratio.p99 <= 2.0,
        });
        checks.push(Check {
            name: format!("capture N={}: p99 save-to-delivery capture / hooks", ratio.n),
            value: ratio.save_p99,
            target: "(info)".into(),
            met: true,
        });
    }
    checks.push(Check {
        name: "deliveries lost, duplicated, unexpected or reordered (all runs)".into(),
        value: runs.iter().map(|run| run.missing + run.duplicates + run.unexpected + run.out_of_order).sum::<u64>()
            as f64,
        target: "== 0".into(),
        met: runs.iter().all(CaptureRun::lossless),
    });
    checks
}

async fn measure_all(context: &Context) -> Result<Vec<CaptureRun>, BenchError> {
    let options = &context.options;
    let latency_changes = (options.latency_rate * options.latency_secs).round().max(1.0) as usize;
    let mut runs = Vec::new();
    for &n in &options.n {
        for variant in [Variant::Hooks, Variant::Capture] {
            runs.push(measure(context, variant, n, options.changes.max(1), None).await?);
        }
        for variant in [Variant::Hooks, Variant::Capture] {
            runs.push(measure(context, variant, n, latency_changes, Some(options.latency_rate)).await?);
        }
    }
    Ok(runs)
}

/// One run: a fresh hub (with a capture on it for [`Variant::Capture`],
/// its slot and publication removed afterwards whatever happened).
async fn measure(
    context: &Context,
    variant: Variant,
    n: usize,
    changes: usize,
    pace: Option<f64>,
) -> Result<CaptureRun, BenchError> {
    let hub = Hub::new(graphex::Config::default().with_queue_capacity(QUEUE));
    let index = context.measurements.fetch_add(1, Ordering::Relaxed);
    let warm_up = -1 - i32::try_from(index).unwrap_or(0);
    let mut run = match variant {
        Variant::Hooks => {
            insert(&hub, &context.db, warm_up).await?;
            measure_on(context, &hub, n, changes, pace).await?
        }
        Variant::Capture => {
            let slot = format!("graphex_bench_{}_{index}", std::process::id());
            let capture = PostgresCapture::new(hub.clone(), context.target.clone())
                .table::<message::Model>()
                .slot(&slot)
                .publication(&slot);
            // Removes the same slot and publication (no table of its own).
            let remover = PostgresCapture::new(Hub::default(), context.target.clone()).slot(&slot).publication(&slot);
            let monitor = capture.monitor();
            let outcome = captured(context, &hub, capture, &monitor, warm_up, n, changes, pace).await;
            let removed = remove(&remover, &context.db).await;
            let mut run = outcome?;
            removed?;
            let stats = monitor.stats();
            run.captured_transactions = Some(stats.transactions);
            run.captured_changes = Some(stats.changes);
            run.captured_refused = Some(stats.refused);
            run
        }
    };
    run.variant = variant.name().into();
    Ok(run)
}

/// Prepares `capture`, runs it, waits for the warm-up row, measures, stops it.
#[allow(clippy::too_many_arguments)]
async fn captured(
    context: &Context,
    hub: &Hub,
    capture: PostgresCapture,
    monitor: &CaptureMonitor,
    warm_up: i32,
    n: usize,
    changes: usize,
    pace: Option<f64>,
) -> Result<CaptureRun, BenchError> {
    let failed = |error: graphex::capture::CaptureRunError| BenchError::new(error.to_string());
    capture.prepare(&context.db).await.map_err(failed)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(capture.run(stop.clone()));
    let measured = async {
        insert(hub, &context.db, warm_up).await?;
        let deadline = Instant::now() + STALL;
        while monitor.stats().changes < 1 {
            if task.is_finished() || Instant::now() > deadline {
                return Err(BenchError::new("the capture did not bring the warm-up row"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        measure_on(context, hub, n, changes, pace).await
    }
    .await;
    stop.cancel();
    let ran = task.await.map_err(|error| BenchError::new(format!("capture task: {error}")))?;
    let run = measured?;
    ran.map_err(failed)?;
    Ok(run)
}

/// Drops the slot and publication; the walsender may hold the slot for a
/// moment after the capture stopped, so a refusal is tried again for a while.
async fn remove(remover: &PostgresCapture, db: &DatabaseConnection) -> Result<(), BenchError> {
    let deadline = Instant::now() + STALL;
    loop {
        match remover.remove(db).await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > deadline => {
                return Err(BenchError::new(format!("slot not removed (drop it by hand): {error}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Inserts row `id` through SeaORM in `hub`'s scope.
async fn insert(hub: &Hub, db: &DatabaseConnection, id: i32) -> Result<(), BenchError> {
    let row = message::ActiveModel {
        id: Set(id),
        room_id: Set(0),
        author: Set(entities::author(0)),
        body: Set(BODY.to_owned()),
        created_us: Set(now_us()),
    };
    hub.scope(row.insert(db)).await?;
    Ok(())
}

/// A subscriber: its channel and the task recording `(id, nanoseconds
/// since the run's start)` of each change it receives.
struct Subscriber {
    channel: Arc<Channel>,
    task: JoinHandle<Vec<(i64, u64)>>,
}

async fn subscribe(
    hub: &Hub,
    start: Instant,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
    capacity: usize,
) -> Result<Subscriber, BenchError> {
    let (channel, mut rx): (Arc<Channel>, mpsc::Receiver<Delivery>) =
        hub.open_channel(None).map_err(|error| BenchError::new(error.to_string()))?;
    let key = SubscriptionKey {
        stream: "messages",
        action: Action::Create,
        id: None,
        filters: None,
        projection: None,
        cursors: false,
    };
    let group = graphex::__internals::group::coarse("messages", Action::Create);
    let subscription =
        Subscription { key, group: group.into(), filter: Default::default(), row: None, resume: None, implied: None };
    hub.add_subscription(&channel, subscription).await.map_err(|error| BenchError::new(error.to_string()))?;
    let task = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(capacity);
        loop {
            let delivery = tokio::select! {
                biased;
                delivery = rx.recv() => delivery,
                () = stop.cancelled() => None,
            };
            let Some(delivery) = delivery else { break };
            let Some(event) = delivery.event() else { continue };
            let at = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            seen.push((event.change.pk.as_i64().unwrap_or(i64::MIN), at));
            delivered.fetch_add(1, Ordering::Relaxed);
        }
        seen
    });
    Ok(Subscriber { channel, task })
}

/// Inserts `changes` rows from the writers (paced at `pace` per second, or
/// as fast as the window lets them) with `n` subscribers on `hub`; checks
/// and times what they received.
async fn measure_on(
    context: &Context,
    hub: &Hub,
    n: usize,
    changes: usize,
    pace: Option<f64>,
) -> Result<CaptureRun, BenchError> {
    let options = &context.options;
    let base = context.next_id.fetch_add(changes, Ordering::Relaxed);
    let start = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let mut subscribers = Vec::with_capacity(n);
    for _ in 0..n {
        subscribers.push(subscribe(hub, start, delivered.clone(), stop.clone(), changes).await?);
    }

    let committed_at: Arc<Vec<AtomicU64>> = Arc::new((0..changes).map(|_| AtomicU64::new(0)).collect());
    let saving_at: Arc<Vec<AtomicU64>> = Arc::new((0..changes).map(|_| AtomicU64::new(0)).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let window = options.window.max(1) as u64 * n as u64;
    let began = Instant::now();
    let began_ns = u64::try_from(began.duration_since(start).as_nanos()).unwrap_or(0);
    let mut writers = Vec::new();
    for _ in 0..options.writers.max(1) {
        let (hub, db) = (hub.clone(), context.db.clone());
        let (next, sent, delivered) = (next.clone(), sent.clone(), delivered.clone());
        let (committed_at, saving_at) = (committed_at.clone(), saving_at.clone());
        writers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= changes {
                    return Ok::<Vec<usize>, BenchError>(mine);
                }
                match pace {
                    Some(rate) => {
                        let due = began + Duration::from_secs_f64(seq as f64 / rate.max(f64::EPSILON));
                        tokio::time::sleep_until(due.into()).await;
                    }
                    None => {
                        let (mut seen, mut moved) = (delivered.load(Ordering::Relaxed), Instant::now());
                        while sent.load(Ordering::Relaxed).saturating_sub(seen) > window {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            let now = delivered.load(Ordering::Relaxed);
                            if now != seen {
                                (seen, moved) = (now, Instant::now());
                            } else if moved.elapsed() > STALL {
                                return Err(BenchError::new("deliveries stalled: the window never moved"));
                            }
                        }
                    }
                }
                sent.fetch_add(n as u64, Ordering::Relaxed);
                let id = i32::try_from(base + seq).map_err(|_| BenchError::new("row id out of range"))?;
                saving_at[seq].store(u64::try_from(start.elapsed().as_nanos()).unwrap_or(0), Ordering::Relaxed);
                insert(&hub, &db, id).await?;
                committed_at[seq].store(u64::try_from(start.elapsed().as_nanos()).unwrap_or(0), Ordering::Relaxed);
                mine.push(seq);
            }
        }));
    }
    let mut order = Vec::new();
    let mut failure = None;
    for writer in writers {
        match writer.await {
            Ok(Ok(mine)) => order.push(mine),
            Ok(Err(error)) => failure = Some(error),
            Err(error) => failure = Some(BenchError::new(format!("writer failed: {error}"))),
        }
    }
    if failure.is_none() {
        settle(options, &delivered, (changes * n) as u64).await;
    }
    stop.cancel();
    let mut received = Vec::with_capacity(n);
    for subscriber in subscribers {
        hub.close_channel(&subscriber.channel);
        received.push(subscriber.task.await.map_err(|error| BenchError::new(format!("subscriber failed: {error}")))?);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    let committed: Vec<u64> = committed_at.iter().map(|at| at.load(Ordering::Relaxed)).collect();
    let saving: Vec<u64> = saving_at.iter().map(|at| at.load(Ordering::Relaxed)).collect();
    let mut run = tally(&received, &order, &committed, base, changes);
    (run.save_p50_us, run.save_p99_us) = save_latency(&received, &saving, base, changes);
    run.kind = if pace.is_some() { "latency" } else { "throughput" }.into();
    let last_commit = committed.iter().copied().max().unwrap_or(0);
    run.commit_rate = changes as f64 / (last_commit.saturating_sub(began_ns) as f64 / 1e9).max(f64::EPSILON);
    Ok(run)
}

/// Waits until `delivered` reaches `expected` or stops moving for `settle_secs`.
async fn settle(options: &CaptureOptions, delivered: &AtomicU64, expected: u64) {
    let settle = Duration::from_secs_f64(options.settle_secs.max(0.1));
    let (mut seen, mut last) = (u64::MAX, Instant::now());
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now != seen {
            (seen, last) = (now, Instant::now());
        }
        if now >= expected || last.elapsed() > settle {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Checks and times what each subscriber received: `received[s]` in
/// arrival order, `order[w]` the sequence numbers writer `w` committed in
/// its order, `committed[seq]` when change `seq`'s insert returned (ns).
fn tally(
    received: &[Vec<(i64, u64)>],
    order: &[Vec<usize>],
    committed: &[u64],
    base: usize,
    changes: usize,
) -> CaptureRun {
    let mut writer_of = vec![(0usize, 0usize); changes];
    for (writer, mine) in order.iter().enumerate() {
        for (position, &seq) in mine.iter().enumerate() {
            writer_of[seq] = (writer, position);
        }
    }
    let mut run =
        CaptureRun { n: received.len(), changes, expected: (changes * received.len()) as u64, ..CaptureRun::default() };
    let mut latencies: Vec<u32> = Vec::with_capacity(changes * received.len());
    let mut last_delivery = 0u64;
    for deliveries in received {
        let mut seen = vec![false; changes];
        let mut last = vec![None::<usize>; order.len()];
        for &(id, at) in deliveries {
            let seq = usize::try_from(id).ok().and_then(|id| id.checked_sub(base)).filter(|&seq| seq < changes);
            let Some(seq) = seq else {
                run.unexpected += 1;
                continue;
            };
            if std::mem::replace(&mut seen[seq], true) {
                run.duplicates += 1;
                continue;
            }
            run.delivered += 1;
            last_delivery = last_delivery.max(at);
            let (writer, position) = writer_of[seq];
            if last[writer].is_some_and(|before| before >= position) {
                run.out_of_order += 1;
            }
            last[writer] = Some(position);
            let micros = at.saturating_sub(committed[seq]) / 1000;
            latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
        }
    }
    run.missing = run.expected - run.delivered;
    let first_commit = committed.iter().copied().filter(|&at| at > 0).min().unwrap_or(0);
    run.seconds = last_delivery.saturating_sub(first_commit) as f64 / 1e9;
    run.rate = changes as f64 / run.seconds.max(f64::EPSILON);
    latencies.sort_unstable();
    (run.p50_us, run.p99_us, run.max_us) =
        (quantile(&latencies, 0.5), quantile(&latencies, 0.99), latencies.last().copied());
    run
}

/// Save-to-delivery p50 and p99 (µs) of every first delivery of a change of this run.
fn save_latency(
    received: &[Vec<(i64, u64)>],
    saving: &[u64],
    base: usize,
    changes: usize,
) -> (Option<u32>, Option<u32>) {
    let mut latencies = Vec::new();
    for deliveries in received {
        let mut seen = vec![false; changes];
        for &(id, at) in deliveries {
            let seq = usize::try_from(id).ok().and_then(|id| id.checked_sub(base)).filter(|&seq| seq < changes);
            if let Some(seq) = seq.filter(|&seq| !std::mem::replace(&mut seen[seq], true)) {
                latencies.push(u32::try_from(at.saturating_sub(saving[seq]) / 1000).unwrap_or(u32::MAX));
            }
        }
    }
    latencies.sort_unstable();
    (quantile(&latencies, 0.5), quantile(&latencies, 0.99))
}

/// The lower median of the figures that are numbers (NaN when none is).
fn median_f64(values: Vec<f64>) -> f64 {
    median_of(values.into_iter().filter(|value| !value.is_nan()).collect()).unwrap_or(f64::NAN)
}

/// The medians of several runs of the scenario: each figure of each run
/// (variant, kind, N) at its median, loss counts summed; each ratio at the
/// median of the per-run ratios (a ratio is taken within one run, where
/// both variants saw the same machine), and the checks judged on those.
pub fn median(reports: &[CaptureReport]) -> Option<CaptureReport> {
    let first = reports.first()?;
    let mut runs = Vec::new();
    for run in &first.runs {
        let same: Vec<&CaptureRun> = reports
            .iter()
            .flat_map(|report| &report.runs)
            .filter(|other| other.variant == run.variant && other.kind == run.kind && other.n == run.n)
            .collect();
        let med = |figure: fn(&CaptureRun) -> f64| median_f64(same.iter().map(|run| figure(run)).collect());
        let med_us =
            |figure: fn(&CaptureRun) -> Option<u32>| median_of(same.iter().filter_map(|run| figure(run)).collect());
        let sum = |figure: fn(&CaptureRun) -> u64| same.iter().map(|run| figure(run)).sum::<u64>();
        runs.push(CaptureRun {
            variant: run.variant.clone(),
            kind: run.kind.clone(),
            n: run.n,
            changes: run.changes,
            expected: sum(|run| run.expected),
            delivered: sum(|run| run.delivered),
            missing: sum(|run| run.missing),
            duplicates: sum(|run| run.duplicates),
            unexpected: sum(|run| run.unexpected),
            out_of_order: sum(|run| run.out_of_order),
            seconds: med(|run| run.seconds),
            rate: med(|run| run.rate),
            commit_rate: med(|run| run.commit_rate),
            p50_us: med_us(|run| run.p50_us),
            p99_us: med_us(|run| run.p99_us),
            max_us: med_us(|run| run.max_us),
            save_p50_us: med_us(|run| run.save_p50_us),
            save_p99_us: med_us(|run| run.save_p99_us),
            captured_transactions: None,
            captured_changes: None,
            captured_refused: run.captured_refused.map(|_| sum(|run| run.captured_refused.unwrap_or(0))),
            repeats: Some(same.len()),
        });
    }
    let ratios: Vec<Ratios> = first
        .ratios
        .iter()
        .map(|ratio| {
            let same: Vec<&Ratios> =
                reports.iter().flat_map(|report| &report.ratios).filter(|other| other.n == ratio.n).collect();
            let med = |figure: fn(&Ratios) -> f64| median_f64(same.iter().map(|ratio| figure(ratio)).collect());
            Ratios {
                n: ratio.n,
                rate: med(|ratio| ratio.rate),
                p50: med(|ratio| ratio.p50),
                p99: med(|ratio| ratio.p99),
                save_p99: med(|ratio| ratio.save_p99),
            }
        })
        .collect();
    let mut checks = checks(&runs, &ratios);
    // Losses over every run of every repeat (the summed counts above).
    if let Some(loss) = checks.last_mut() {
        loss.met = reports.iter().flat_map(|report| &report.runs).all(CaptureRun::lossless);
    }
    Some(CaptureReport { options: first.options.clone(), server: first.server.clone(), runs, ratios, checks })
}

fn millis(us: Option<u32>) -> String {
    us.map_or_else(|| "-".into(), |us| format!("{:.2}", f64::from(us) / 1000.0))
}

/// The report as a table: one row per variant and N (the throughput run's
/// rates, the latency run's quantiles, both runs' losses).
pub fn table(report: &CaptureReport) -> String {
    let options = &report.options;
    let mut out = format!(
        "scenario capture ({} writers, {} changes per throughput run, latency at {}/s for {} s)\n",
        options.writers, options.changes, options.latency_rate, options.latency_secs
    );
    out.push_str(&format!(
        "{:<8} {:>5} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>6} {:>6} {:>6} {:>6}\n",
        "variant",
        "n",
        "commit/s",
        "changes/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p99 ratio",
        "save p99 ms",
        "lost",
        "dup",
        "unexp",
        "order"
    ));
    for run in report.runs.iter().filter(|run| run.kind == "throughput") {
        let latency = report
            .runs
            .iter()
            .find(|other| other.kind == "latency" && other.variant == run.variant && other.n == run.n);
        let ratio = report.ratios.iter().find(|ratio| ratio.n == run.n);
        let capture = run.variant == Variant::Capture.name();
        let (rate_ratio, p99_ratio) = match ratio {
            Some(ratio) if capture => (format!("{:.3}", ratio.rate), format!("{:.2}", ratio.p99)),
            _ => ("".into(), "".into()),
        };
        let both = |figure: fn(&CaptureRun) -> u64| figure(run) + latency.map_or(0, figure);
        out.push_str(&format!(
            "{:<8} {:>5} {:>10.0} {:>10.0} {:>8} {:>9} {:>9} {:>9} {:>9} {:>11} {:>6} {:>6} {:>6} {:>6}\n",
            run.variant,
            run.n,
            run.commit_rate,
            run.rate,
            rate_ratio,
            millis(latency.and_then(|run| run.p50_us)),
            millis(latency.and_then(|run| run.p99_us)),
            millis(latency.and_then(|run| run.max_us)),
            p99_ratio,
            millis(latency.and_then(|run| run.save_p99_us)),
            both(|run| run.missing),
            both(|run| run.duplicates),
            both(|run| run.unexpected),
            both(|run| run.out_of_order),
        ));
    }
    for check in &report.checks {
        let verdict = if check.met { "met" } else { "MISSED" };
        out.push_str(&format!("  {:<62} {:>10.3}  target {:<8} {verdict}\n", check.name, check.value, check.target));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_another_database() {
        assert_eq!(
            with_database("postgres://u:p@h:5/postgres?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x").unwrap(), "postgres://h/x");
    }

    #[test]
    fn the_tally_counts_losses_duplicates_strays_and_reordering() {
        // Writer 0 committed 0 then 2, writer 1 committed 1 then 3.
        let order = vec![vec![0, 2], vec![1, 3]];
        let committed = vec![10_000, 20_000, 30_000, 40_000];
        let good = vec![(100, 11_000), (101, 21_000), (102, 31_000), (103, 41_000)];
        let run = tally(&[good], &order, &committed, 100, 4);
        assert!(run.lossless(), "{run:?}");
        assert_eq!((run.p50_us, run.max_us), (Some(1), Some(1)));
        let bad = vec![(102, 31_000), (100, 32_000), (100, 33_000), (7, 34_000), (101, 35_000)];
        let run = tally(&[bad], &order, &committed, 100, 4);
        assert_eq!((run.missing, run.duplicates, run.unexpected, run.out_of_order), (1, 1, 1, 1));
    }
}

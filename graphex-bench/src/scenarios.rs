//! The scenarios of issue 7 (1-4), each run against graphex and both
//! baselines with the same clients, the same N and the same rows; issue 15's
//! hostile inputs and issue 16's resume, against graphex alone; issue 18's
//! native subscriptions over `graphql-transport-ws` against the two-channel
//! path and the alternative, and rows created by GraphQL mutations.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::BenchError;
use crate::load::{Fleet, Tally, room_of};
use crate::remote::RemoteServer;
use crate::systems::{Model, Plan, Serve, System, Target};

/// A benchmark scenario (the numbers of issue 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// 1. N sockets on one coarse group: throughput, then latency at a fixed rate.
    Fanout,
    /// 2. Subscribers spread over rooms: indexed groups vs coarse group with filters.
    Partitioned,
    /// 3. Id-only payloads vs full payloads with three projections in use.
    Payload,
    /// 4. Resident memory per idle subscribed connection.
    Memory,
    /// Issue 15: hostile inputs, one at a time, against graphex with its
    /// default limits while one legitimate client receives a steady rate
    /// (`crate::hostile`).
    Hostile,
    /// Issue 16: N clients drop their sockets, M changes happen, the clients
    /// resume after their last cursor; the replay's rate and each client's
    /// time to catch up (`crate::resume`).
    Resume,
    /// Issue 18: N `graphql-transport-ws` clients on graphex's native
    /// `messageChanges` field, beside the two-channel fan-out and the
    /// async-graphql alternative with the same N and rows.
    Standard,
    /// Issue 18: rows created by GraphQL mutations over HTTP (several in
    /// flight), delivered to two-channel sockets spread over rooms; the
    /// server's CPU time per mutation (`crate::mutations`).
    Mutations,
    // 5. Redis (two processes through the Redis layer vs raw redis-rs
    //    pub/sub) has options of its own and runs separately:
    //    `graphex-bench redis` (`crate::redis_scenario`).
}

impl Scenario {
    /// Every scenario, in order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Fanout,
        Scenario::Partitioned,
        Scenario::Payload,
        Scenario::Memory,
        Scenario::Hostile,
        Scenario::Resume,
        Scenario::Standard,
        Scenario::Mutations,
    ];

    /// Its name on the command line and in file names.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Partitioned => "partitioned",
            Scenario::Payload => "payload",
            Scenario::Memory => "memory",
            Scenario::Hostile => "hostile",
            Scenario::Resume => "resume",
            Scenario::Standard => "standard",
            Scenario::Mutations => "mutations",
        }
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|scenario| scenario.name() == name)
    }
}

/// Sizes and rates; `Options::default()` holds the numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Subscribers in the fan-out scenario (each value is one series).
    pub fanout_n: Vec<usize>,
    /// Deliveries per fan-out throughput run (changes = deliveries / N).
    pub fanout_deliveries: usize,
    /// The N of the fan-out series that also get a latency run.
    pub latency_n: Vec<usize>,
    /// Changes per second of the latency runs.
    pub latency_rate: f64,
    /// Seconds of each latency run.
    pub latency_secs: f64,
    /// Subscribers in the partitioned scenario.
    pub partitioned_n: usize,
    /// Rooms they are spread over.
    pub rooms: usize,
    /// Changes of the partitioned runs that route by room (ceiling, indexed groups).
    pub partitioned_changes: usize,
    /// Changes of the partitioned runs that send every change to every subscriber.
    pub broadcast_changes: usize,
    /// Subscribers in the payload scenario.
    pub payload_n: usize,
    /// Changes per payload run.
    pub payload_changes: usize,
    /// Idle subscribed connections in the memory scenario.
    pub memory_n: usize,
    /// Changes in flight at most (throughput runs), so that no queue overflows.
    pub window: usize,
    /// Tasks saving changes concurrently (throughput runs), as concurrent requests would.
    pub writers: usize,
    /// How long a run waits for missing deliveries after the last progress.
    pub settle_secs: f64,
    /// The systems measured.
    pub systems: Vec<System>,
    /// Hostile scenario: changes per second the legitimate client receives.
    pub hostile_rate: f64,
    /// Hostile scenario: seconds of each input's baseline window and (at
    /// least) of its attack window.
    pub hostile_secs: f64,
    /// Hostile scenario: each input's size times this (never below what the
    /// default limits refuse), for quick runs; 1 = the sizes.
    pub hostile_scale: f64,
    /// Hostile scenario: the inputs to send, by key (empty: every one; see
    /// `crate::hostile::INPUTS`).
    pub hostile_inputs: Vec<String>,
    /// Hostile scenario: bound on the wall time of one input.
    pub hostile_timeout_secs: f64,
    /// Resume scenario: clients that drop their sockets and resume.
    pub resume_n: usize,
    /// Resume scenario: changes made while they are away (within the
    /// in-memory layer's history of 1 000).
    pub resume_changes: usize,
    /// Resume scenario: live changes sent after the replay.
    pub resume_live: usize,
    /// Standard scenario: clients of each system, all on every change.
    pub standard_n: usize,
    /// Standard scenario: changes per run.
    pub standard_changes: usize,
    /// Mutations scenario: two-channel sockets.
    pub mutations_n: usize,
    /// Mutations scenario: rooms they are spread over (one room each).
    pub mutations_rooms: usize,
    /// Mutations scenario: mutations (rows created) per run.
    pub mutations_count: usize,
    /// Mutations scenario: mutations in flight at once, each on its own
    /// keep-alive HTTP connection.
    pub mutations_in_flight: usize,
    /// Times each scenario is run; above 1, a summary of the medians
    /// ([`median`]) follows the runs.
    pub repeat: usize,
    /// The benchmark binary, started as the server process of every run.
    #[serde(skip)]
    pub server_exe: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fanout_n: vec![1_000, 10_000],
            fanout_deliveries: 2_000_000,
            latency_n: vec![1_000],
            latency_rate: 200.0,
            latency_secs: 5.0,
            partitioned_n: 10_000,
            rooms: 1_000,
            partitioned_changes: 20_000,
            broadcast_changes: 2_000,
            payload_n: 1_000,
            payload_changes: 2_000,
            memory_n: 10_000,
            window: 256,
            writers: 64,
            settle_secs: 2.0,
            systems: vec![System::Ceiling, System::CeilingUnpaced, System::Graphex, System::Alternative],
            hostile_rate: 50.0,
            hostile_secs: 5.0,
            hostile_scale: 1.0,
            hostile_inputs: Vec::new(),
            hostile_timeout_secs: 30.0,
            resume_n: 1_000,
            resume_changes: 100,
            resume_live: 10,
            standard_n: 1_000,
            standard_changes: 2_000,
            mutations_n: 200,
            mutations_rooms: 4,
            mutations_count: 20_000,
            mutations_in_flight: 8,
            repeat: 1,
            server_exe: None,
        }
    }
}

/// One measured run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    /// `graphex`, `ceiling` or `alternative`.
    pub system: String,
    /// What was measured (e.g. `throughput`, `indexed`, `3 projections`).
    pub variant: String,
    /// Subscribed clients.
    pub n: usize,
    /// Changes sent.
    pub changes: usize,
    /// Deliveries the subscriptions call for.
    pub expected: u64,
    /// Distinct expected deliveries received.
    pub delivered: u64,
    /// Expected deliveries never received.
    pub missing: u64,
    /// Deliveries of a change already received.
    pub duplicates: u64,
    /// Deliveries nobody asked for.
    pub unexpected: u64,
    /// Clients closed by the server.
    pub closed_early: u64,
    /// Resume scenario: changes whose cursor's offset was not above the
    /// previous one's, summed over the clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_order: Option<u64>,
    /// Changes the server dropped on its own side.
    pub server_dropped: u64,
    /// From the first change sent to the last delivery received.
    pub seconds: f64,
    /// Delivered notifications per second.
    pub rate: f64,
    /// Mean notification size in bytes.
    pub frame_bytes: f64,
    /// Latency quantiles (commit to receipt), in microseconds.
    pub p50_us: Option<u32>,
    /// 99th percentile.
    pub p99_us: Option<u32>,
    /// Largest.
    pub max_us: Option<u32>,
    /// Server resident memory before the clients connected (memory scenario).
    pub rss_before_kib: Option<u64>,
    /// And with every client connected, subscribed and idle.
    pub rss_after_kib: Option<u64>,
    /// Growth per connection.
    pub kib_per_connection: Option<f64>,
    /// Hostile scenario: how the server answered the input (`accepted`,
    /// `HTTP 413`, `close 1009`, an error code...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Hostile scenario: whether the server refused the input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<bool>,
    /// Hostile scenario: the server's peak resident memory during the input
    /// (`VmHWM` reset just before it) minus its resident memory before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_growth_kib: Option<u64>,
    /// Hostile scenario: the legitimate client's latency in the window of
    /// the same length just before the input (the `p50_us`, `p99_us` and
    /// `max_us` above are during the input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_p50_us: Option<u32>,
    /// 99th percentile of the baseline window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_p99_us: Option<u32>,
    /// The server process's CPU time (user + system) from the first change
    /// sent to the last delivery, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_secs: Option<f64>,
    /// That CPU time per change (per mutation), in microseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_change: Option<f64>,
    /// Changes (mutations) per second, from the first sent to the last
    /// answered (mutations scenario).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changes_per_s: Option<f64>,
    /// In a summary of repeats ([`median`]): how many runs it sums up, and
    /// their lowest and highest rate (the other figures are medians, the
    /// counts of lost, duplicated and unexpected deliveries are totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<Spread>,
}

/// How the repeats of one run spread (see [`Run::repeats`]).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Spread {
    /// Runs summed up.
    pub runs: usize,
    /// Lowest rate.
    pub rate_min: f64,
    /// Highest rate.
    pub rate_max: f64,
}

impl Run {
    /// Nothing missing, duplicated, unexpected or closed.
    pub fn lossless(&self) -> bool {
        self.missing == 0
            && self.duplicates == 0
            && self.unexpected == 0
            && self.closed_early == 0
            && self.out_of_order.unwrap_or(0) == 0
            && self.server_dropped == 0
            && self.delivered == self.expected
    }
}

/// A figure compared with a target of the issue (reported, never asserted).
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is compared.
    pub name: String,
    /// The measured value.
    pub value: f64,
    /// The target, in words.
    pub target: String,
    /// Whether it is met.
    pub met: bool,
}

/// A scenario's runs and checks.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Which scenario.
    pub scenario: Scenario,
    /// The options it ran with.
    pub options: Options,
    /// Every run.
    pub runs: Vec<Run>,
    /// Figures against the targets.
    pub checks: Vec<Check>,
}

/// Runs `scenario`.
pub async fn run(scenario: Scenario, options: &Options) -> Result<Report, BenchError> {
    let (runs, checks) = match scenario {
        Scenario::Fanout => fanout(options).await?,
        Scenario::Partitioned => partitioned(options).await?,
        Scenario::Payload => payload(options).await?,
        Scenario::Memory => memory(options).await?,
        Scenario::Hostile => crate::hostile::run(options).await?,
        Scenario::Resume => crate::resume::run(options).await?,
        Scenario::Standard => standard(options).await?,
        Scenario::Mutations => crate::mutations::run(options).await?,
    };
    Ok(Report { scenario, options: options.clone(), runs, checks })
}

/// How one run sends its changes.
pub(crate) struct Pace {
    pub(crate) changes: usize,
    pub(crate) rooms: usize,
    /// Changes per second; `None`: as fast as the window allows.
    pub(crate) rate: Option<f64>,
    pub(crate) latency: bool,
    /// How graphex runs (saving or not, with or without history).
    pub(crate) serve: Serve,
}

/// Starts `system`, connects the clients, sends the changes, counts.
async fn measure(
    system: System,
    model: Model,
    plans: Vec<Plan>,
    pace: Pace,
    variant: &str,
    options: &Options,
) -> Result<Run, BenchError> {
    let exe = options.server_exe.as_deref().ok_or_else(|| BenchError::new("no server_exe given"))?;
    let server = Arc::new(RemoteServer::spawn_with(exe, system, model, pace.serve).await?);
    let n = plans.len();
    let fleet = Fleet::connect(system, model, server.addr, plans, pace.changes, pace.latency).await?;
    wait_for_subscribers(server.as_ref(), n).await?;
    let cpu_before = server.cpu_seconds()?;
    let seconds = drive(server.clone(), &fleet, &pace, options).await?;
    let cpu = server.cpu_seconds()? - cpu_before;
    let dropped = server.dropped().await?;
    let tally = fleet.finish(pace.changes, pace.rooms).await?;
    let mut run = run_of(system, variant, n, pace.changes, seconds, dropped, &tally);
    run.set_cpu(cpu);
    Ok(run)
}

impl Run {
    /// Records the server's CPU time over the run, and per change.
    pub(crate) fn set_cpu(&mut self, seconds: f64) {
        self.server_cpu_secs = Some(seconds);
        self.cpu_us_per_change = Some(seconds * 1e6 / self.changes.max(1) as f64);
    }
}

/// A run's row from what its clients tallied.
pub(crate) fn run_of(
    system: System,
    variant: &str,
    n: usize,
    changes: usize,
    seconds: f64,
    dropped: u64,
    tally: &Tally,
) -> Run {
    Run {
        system: system.name().to_owned(),
        variant: variant.to_owned(),
        n,
        changes,
        expected: tally.expected,
        delivered: tally.delivered,
        missing: tally.missing,
        duplicates: tally.duplicates,
        unexpected: tally.unexpected,
        closed_early: tally.closed_early,
        server_dropped: dropped,
        seconds,
        rate: if seconds > 0.0 { tally.delivered as f64 / seconds } else { 0.0 },
        frame_bytes: tally.frame_bytes,
        p50_us: tally.latency(0.50),
        p99_us: tally.latency(0.99),
        max_us: tally.latency(1.0),
        ..Run::default()
    }
}

/// Waits until the server holds `n` subscribers (the alternative subscribes
/// asynchronously: graphql-transport-ws has no subscribe acknowledgement).
pub(crate) async fn wait_for_subscribers(target: &dyn Target, n: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = target.subscribers().await?;
        if count >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::new(format!("only {count} of {n} subscribers after 60 s")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends the changes round-robin over the rooms, then waits for the last
/// delivery (or for `settle_secs` without progress). At a fixed rate, each
/// change is sent by its own task (independent requests arriving on
/// schedule); otherwise `writers` tasks send concurrently, keeping at most
/// `window` changes' deliveries outstanding so that no queue overflows.
/// Returns the seconds from the first change to the last delivery.
pub(crate) async fn drive(
    target: Arc<dyn Target>,
    fleet: &Fleet,
    pace: &Pace,
    options: &Options,
) -> Result<f64, BenchError> {
    let rooms = pace.rooms.max(1);
    let mut per_room = vec![0u64; rooms];
    let mut everywhere = 0u64;
    for plan in &fleet.plans {
        match plan.room.and_then(|room| usize::try_from(room).ok()) {
            Some(room) if room < rooms => per_room[room] += 1,
            Some(_) => {}
            None => everywhere += 1,
        }
    }
    let fanout = Arc::new(move |seq: usize| everywhere + per_room[usize::try_from(room_of(seq, rooms)).unwrap_or(0)]);
    let total: u64 = (0..pace.changes).map(|seq| fanout(seq)).sum();
    let window = (total as f64 / pace.changes.max(1) as f64 * options.window as f64).ceil().max(1.0) as u64;
    let delivered = fleet.delivered.clone();
    let start = Instant::now();
    let mut tasks = Vec::new();
    match pace.rate {
        Some(rate) => {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for seq in 0..pace.changes {
                ticker.tick().await;
                let target = target.clone();
                tasks.push(tokio::spawn(async move { target.emit(seq, room_of(seq, rooms)).await }));
            }
        }
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            let sent = Arc::new(AtomicU64::new(0));
            let settle = Duration::from_secs_f64(options.settle_secs);
            for _ in 0..options.writers.max(1) {
                let (target, next, sent, delivered, fanout) =
                    (target.clone(), next.clone(), sent.clone(), delivered.clone(), fanout.clone());
                let changes = pace.changes;
                tasks.push(tokio::spawn(async move {
                    loop {
                        let seq = next.fetch_add(1, Ordering::Relaxed);
                        if seq >= changes {
                            return Ok(());
                        }
                        let (mut seen, mut since) = (delivered.load(Ordering::Relaxed), Instant::now());
                        while sent.load(Ordering::Relaxed).saturating_sub(delivered.load(Ordering::Relaxed)) > window {
                            let now = delivered.load(Ordering::Relaxed);
                            if now != seen {
                                (seen, since) = (now, Instant::now());
                            } else if since.elapsed() > settle {
                                // Deliveries stopped (clients closed): stop sending; the
                                // changes never sent count as missing instead of a hang.
                                return Ok(());
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        sent.fetch_add(fanout(seq), Ordering::Relaxed);
                        target.emit(seq, room_of(seq, rooms)).await?;
                    }
                }));
            }
        }
    }
    for task in tasks {
        task.await.map_err(|error| BenchError::new(format!("writer failed: {error}")))??;
    }
    let settle = Duration::from_secs_f64(options.settle_secs);
    let mut last = delivered.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    let mut end = Instant::now();
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now >= total {
            end = Instant::now();
            break;
        }
        if now != last {
            last = now;
            last_progress = Instant::now();
            end = last_progress;
        } else if last_progress.elapsed() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(end.duration_since(start).as_secs_f64())
}

pub(crate) fn rate_of(runs: &[Run], system: System, variant: &str, n: usize) -> Option<f64> {
    runs.iter().find(|run| run.system == system.name() && run.variant == variant && run.n == n).map(|run| run.rate)
}

/// The name of [`lossless_check`], which a summary of repeats recomputes
/// over every run instead of taking a median.
const LOSSLESS: &str = "deliveries lost (+ duplicated or unexpected) over every run";

pub(crate) fn lossless_check(runs: &[Run]) -> Check {
    let lost: u64 = runs.iter().map(|run| run.missing + run.closed_early + run.server_dropped).sum();
    let wrong: u64 = runs.iter().map(|run| run.duplicates + run.unexpected + run.out_of_order.unwrap_or(0)).sum();
    Check {
        name: LOSSLESS.into(),
        value: (lost + wrong) as f64,
        target: "0".into(),
        met: runs.iter().all(Run::lossless),
    }
}

pub(crate) fn ratio_check(name: String, value: Option<f64>, over: Option<f64>, at_least: f64) -> Option<Check> {
    let ratio = value? / over.filter(|over| *over > 0.0)?;
    Some(Check { name, value: ratio, target: format!(">= {at_least}"), met: ratio >= at_least })
}

pub(crate) type Outcome = Result<(Vec<Run>, Vec<Check>), BenchError>;

/// Scenario 1: every client on the coarse group, full payload.
async fn fanout(options: &Options) -> Outcome {
    let mut runs = Vec::new();
    let mut checks = Vec::new();
    for &n in &options.fanout_n {
        let plans = vec![Plan { room: None, projection: None }; n];
        let changes = (options.fanout_deliveries / n.max(1)).max(1);
        let latency_changes = ((options.latency_rate * options.latency_secs).round() as usize).max(1);
        for &system in &options.systems {
            let pace = Pace { changes, rooms: 1, rate: None, latency: false, serve: Serve::default() };
            runs.push(measure(system, Model::Indexed, plans.clone(), pace, "throughput", options).await?);
            if system == System::Graphex {
                // Right after "throughput", so that the machine's drift
                // between the two runs is as small as it can be.
                let serve = Serve { history: false, ..Serve::default() };
                let pace = Pace { changes, rooms: 1, rate: None, latency: false, serve };
                let variant = "throughput, no history";
                runs.push(measure(system, Model::Indexed, plans.clone(), pace, variant, options).await?);
                let pace = Pace {
                    changes,
                    rooms: 1,
                    rate: None,
                    latency: false,
                    serve: Serve { save: false, ..Serve::default() },
                };
                let variant = "throughput, no DB";
                runs.push(measure(system, Model::Indexed, plans.clone(), pace, variant, options).await?);
            }
            if !options.latency_n.contains(&n) {
                continue;
            }
            let pace = Pace {
                changes: latency_changes,
                rooms: 1,
                rate: Some(options.latency_rate),
                latency: true,
                serve: Serve::default(),
            };
            let variant = format!("latency {}/s", options.latency_rate);
            runs.push(measure(system, Model::Indexed, plans.clone(), pace, &variant, options).await?);
        }
        let graphex = rate_of(&runs, System::Graphex, "throughput", n);
        let ceiling = rate_of(&runs, System::Ceiling, "throughput", n);
        let alternative = rate_of(&runs, System::Alternative, "throughput", n);
        checks.extend(ratio_check(format!("fan-out N={n}: graphex / ceiling"), graphex, ceiling, 0.5));
        // Issue 16: the history costs at most 10% of deliveries/s at N = 1 000.
        checks.extend(ratio_check(
            format!("fan-out N={n}: history on / off{}", if n == 1_000 { "" } else { " (info)" }),
            graphex,
            rate_of(&runs, System::Graphex, "throughput, no history", n),
            if n == 1_000 { 0.9 } else { 0.0 },
        ));
        checks.extend(ratio_check(
            format!("fan-out N={n}: graphex / unpaced ceiling (info)"),
            graphex,
            rate_of(&runs, System::CeilingUnpaced, "throughput", n),
            0.0,
        ));
        checks.extend(ratio_check(format!("fan-out N={n}: graphex / alternative (info)"), graphex, alternative, 0.0));
        checks.extend(ratio_check(
            format!("fan-out N={n}: graphex without DB / ceiling (info)"),
            rate_of(&runs, System::Graphex, "throughput, no DB", n),
            ceiling,
            0.0,
        ));
        let latency = runs
            .iter()
            .find(|run| run.system == System::Graphex.name() && run.n == n && run.variant.starts_with("latency"));
        if let Some(p99) = latency.and_then(|run| run.p99_us) {
            checks.push(Check {
                name: format!("graphex p99 latency at N={n}, {}/s (µs)", options.latency_rate),
                value: f64::from(p99),
                target: if n == 1_000 { "<= 5000".into() } else { "(info)".into() },
                met: n != 1_000 || p99 <= 5_000,
            });
        }
    }
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// Issue 18: N clients on every change (the coarse group, full payload)
/// through graphex's two-channel path, then graphex's native
/// `messageChanges(action: CREATE)` over `graphql-transport-ws`, then the
/// async-graphql alternative; same rows, same writers and window. `--systems`
/// chooses among `graphex` and `alternative`; `graphex-standard` always runs.
async fn standard(options: &Options) -> Outcome {
    let n = options.standard_n;
    let plans = vec![Plan { room: None, projection: None }; n];
    let mut runs = Vec::new();
    for (system, variant) in [
        (System::Graphex, "two-channel"),
        (System::GraphexStandard, "graphql-transport-ws"),
        (System::Alternative, "graphql-transport-ws"),
    ] {
        if system != System::GraphexStandard && !options.systems.contains(&system) {
            continue;
        }
        let pace =
            Pace { changes: options.standard_changes, rooms: 1, rate: None, latency: false, serve: Serve::default() };
        runs.push(measure(system, Model::Indexed, plans.clone(), pace, variant, options).await?);
    }
    let standard = rate_of(&runs, System::GraphexStandard, "graphql-transport-ws", n);
    let mut checks = Vec::new();
    checks.extend(ratio_check(
        format!("N={n}: standard / two-channel fan-out"),
        standard,
        rate_of(&runs, System::Graphex, "two-channel", n),
        0.5,
    ));
    checks.extend(ratio_check(
        format!("N={n}: standard / alternative"),
        standard,
        rate_of(&runs, System::Alternative, "graphql-transport-ws", n),
        5.0,
    ));
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// Scenario 2: N subscribers over `rooms` rooms, one room each.
async fn partitioned(options: &Options) -> Outcome {
    let n = options.partitioned_n;
    let rooms = options.rooms.max(1);
    let plans: Vec<Plan> = (0..n).map(|index| Plan { room: Some(room_of(index, rooms)), projection: None }).collect();
    let mut runs = Vec::new();
    for &system in &options.systems {
        let variants: &[(Model, &str, usize)] = match system {
            System::Graphex => &[
                (Model::Indexed, "indexed groups", options.partitioned_changes),
                (Model::Plain, "coarse + filters", options.broadcast_changes),
            ],
            System::Ceiling | System::CeilingUnpaced => &[(Model::Indexed, "rooms", options.partitioned_changes)],
            System::Alternative => &[(Model::Indexed, "broadcast + filter", options.broadcast_changes)],
            System::GraphexStandard => &[(Model::Indexed, "indexed groups", options.partitioned_changes)],
        };
        for &(model, variant, changes) in variants {
            let pace = Pace { changes, rooms, rate: None, latency: false, serve: Serve::default() };
            runs.push(measure(system, model, plans.clone(), pace, variant, options).await?);
            if system == System::Graphex && variant == "indexed groups" {
                // Right after, as in the fan-out: the pipeline without the
                // save, so the gap to the ceiling splits into its two parts.
                let serve = Serve { save: false, ..Serve::default() };
                let pace = Pace { changes, rooms, rate: None, latency: false, serve };
                runs.push(measure(system, model, plans.clone(), pace, "indexed groups, no DB", options).await?);
            }
        }
    }
    let indexed = rate_of(&runs, System::Graphex, "indexed groups", n);
    let mut checks = Vec::new();
    checks.extend(ratio_check(
        "indexed groups / coarse + filters".into(),
        indexed,
        rate_of(&runs, System::Graphex, "coarse + filters", n),
        20.0,
    ));
    checks.extend(ratio_check(
        "indexed groups / alternative".into(),
        indexed,
        rate_of(&runs, System::Alternative, "broadcast + filter", n),
        10.0,
    ));
    checks.extend(ratio_check(
        "indexed groups / ceiling (info)".into(),
        indexed,
        rate_of(&runs, System::Ceiling, "rooms", n),
        0.0,
    ));
    checks.extend(ratio_check(
        "indexed groups without DB / ceiling (info)".into(),
        rate_of(&runs, System::Graphex, "indexed groups, no DB", n),
        rate_of(&runs, System::Ceiling, "rooms", n),
        0.0,
    ));
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// Scenario 3: id-only payloads, then full payloads with three projections
/// (client i takes projection i mod 3).
async fn payload(options: &Options) -> Outcome {
    let n = options.payload_n;
    let mut runs = Vec::new();
    for &system in &options.systems {
        let id_only = vec![Plan { room: None, projection: None }; n];
        let pace =
            Pace { changes: options.payload_changes, rooms: 1, rate: None, latency: false, serve: Serve::default() };
        runs.push(measure(system, Model::IdOnly, id_only, pace, "id-only", options).await?);
        let projected: Vec<Plan> = (0..n).map(|index| Plan { room: None, projection: Some(index % 3) }).collect();
        let pace =
            Pace { changes: options.payload_changes, rooms: 1, rate: None, latency: false, serve: Serve::default() };
        runs.push(measure(system, Model::Indexed, projected, pace, "3 projections", options).await?);
    }
    let mut checks = Vec::new();
    for variant in ["id-only", "3 projections"] {
        checks.extend(ratio_check(
            format!("{variant}: graphex / ceiling"),
            rate_of(&runs, System::Graphex, variant, n),
            rate_of(&runs, System::Ceiling, variant, n),
            0.5,
        ));
    }
    checks.extend(ratio_check(
        "graphex 3 projections / id-only (info)".into(),
        rate_of(&runs, System::Graphex, "3 projections", n),
        rate_of(&runs, System::Graphex, "id-only", n),
        0.0,
    ));
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// Scenario 4: each server in its own process; its RSS growth per idle
/// subscribed connection, then one change to check every subscription works.
async fn memory(options: &Options) -> Outcome {
    let exe = options.server_exe.clone().ok_or_else(|| BenchError::new("the memory scenario needs server_exe"))?;
    let n = options.memory_n;
    let mut runs = Vec::new();
    for &system in &options.systems {
        let server = Arc::new(RemoteServer::spawn(&exe, system, Model::Indexed, true).await?);
        // Let the child finish starting up before the baseline.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = server.resident_kib().await?;
        let plans = vec![Plan { room: None, projection: None }; n];
        let fleet = Fleet::connect(system, Model::Indexed, server.addr, plans, 1, false).await?;
        wait_for_subscribers(server.as_ref(), n).await?;
        tokio::time::sleep(Duration::from_secs_f64(options.settle_secs)).await;
        let after = server.resident_kib().await?;
        let pace = Pace { changes: 1, rooms: 1, rate: None, latency: false, serve: Serve::default() };
        let seconds = drive(server.clone(), &fleet, &pace, options).await?;
        let tally = fleet.finish(1, 1).await?;
        let dropped = server.dropped().await?;
        let mut run = run_of(system, "idle subscribed", n, 1, seconds, dropped, &tally);
        run.rss_before_kib = Some(before);
        run.rss_after_kib = Some(after);
        run.kib_per_connection = Some(after.saturating_sub(before) as f64 / n.max(1) as f64);
        runs.push(run);
    }
    let mut checks = Vec::new();
    if let Some(per) = runs.iter().find(|run| run.system == System::Graphex.name()).and_then(|r| r.kib_per_connection) {
        checks.push(Check {
            name: format!("graphex KiB per idle subscribed connection (N={n})"),
            value: per,
            target: "<= 16".into(),
            met: per <= 16.0,
        });
    }
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// The latency at quantile `q` (0..=1) of sorted samples (`None` if empty).
pub(crate) fn quantile(sorted: &[u32], q: f64) -> Option<u32> {
    let last = sorted.len().checked_sub(1)?;
    sorted.get((last as f64 * q).round() as usize).copied()
}

/// The lower median of `values` (`None` if empty).
pub(crate) fn median_of<T: Copy + PartialOrd>(mut values: Vec<T>) -> Option<T> {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len().saturating_sub(1) / 2).copied()
}

/// Sums up repeats of one scenario (same options): one run per system,
/// variant and N with the median of each figure, the total of every loss
/// count and the spread of the rate ([`Run::repeats`]); each check at its
/// median (with the met flag of that median run), except the loss check,
/// recomputed over every run of every repeat. A shared machine's figures
/// drift from run to run; the median of several is the one to compare.
pub fn median(reports: &[Report]) -> Option<Report> {
    let first = reports.first()?;
    let every: Vec<&Run> = reports.iter().flat_map(|report| &report.runs).collect();
    let mut runs: Vec<Run> = Vec::new();
    for run in &every {
        let key = |other: &Run| other.system == run.system && other.variant == run.variant && other.n == run.n;
        if runs.iter().any(key) {
            continue;
        }
        let same: Vec<&Run> = every.iter().copied().filter(|other| key(other)).collect();
        let med = |figure: fn(&Run) -> f64| median_of(same.iter().map(|run| figure(run)).collect()).unwrap_or(0.0);
        let med_opt = |figure: fn(&Run) -> Option<u32>| median_of(same.iter().filter_map(|run| figure(run)).collect());
        let sum = |figure: fn(&Run) -> u64| same.iter().map(|run| figure(run)).sum::<u64>();
        let rates: Vec<f64> = same.iter().map(|run| run.rate).collect();
        runs.push(Run {
            system: run.system.clone(),
            variant: run.variant.clone(),
            n: run.n,
            changes: run.changes,
            expected: sum(|run| run.expected),
            delivered: sum(|run| run.delivered),
            missing: sum(|run| run.missing),
            duplicates: sum(|run| run.duplicates),
            unexpected: sum(|run| run.unexpected),
            closed_early: sum(|run| run.closed_early),
            out_of_order: run.out_of_order.map(|_| same.iter().filter_map(|run| run.out_of_order).sum()),
            server_dropped: sum(|run| run.server_dropped),
            seconds: med(|run| run.seconds),
            rate: med(|run| run.rate),
            frame_bytes: med(|run| run.frame_bytes),
            p50_us: med_opt(|run| run.p50_us),
            p99_us: med_opt(|run| run.p99_us),
            max_us: med_opt(|run| run.max_us),
            rss_before_kib: median_of(same.iter().filter_map(|run| run.rss_before_kib).collect()),
            rss_after_kib: median_of(same.iter().filter_map(|run| run.rss_after_kib).collect()),
            kib_per_connection: median_of(same.iter().filter_map(|run| run.kib_per_connection).collect()),
            answer: distinct(same.iter().filter_map(|run| run.answer.clone())),
            refused: run.refused.map(|_| same.iter().all(|run| run.refused == Some(true))),
            peak_growth_kib: median_of(same.iter().filter_map(|run| run.peak_growth_kib).collect()),
            baseline_p50_us: med_opt(|run| run.baseline_p50_us),
            baseline_p99_us: med_opt(|run| run.baseline_p99_us),
            server_cpu_secs: median_of(same.iter().filter_map(|run| run.server_cpu_secs).collect()),
            cpu_us_per_change: median_of(same.iter().filter_map(|run| run.cpu_us_per_change).collect()),
            changes_per_s: median_of(same.iter().filter_map(|run| run.changes_per_s).collect()),
            repeats: Some(Spread {
                runs: same.len(),
                rate_min: rates.iter().copied().fold(f64::INFINITY, f64::min),
                rate_max: rates.iter().copied().fold(0.0, f64::max),
            }),
        });
    }
    let mut checks = Vec::new();
    for check in &first.checks {
        if check.name == LOSSLESS {
            let all: Vec<Run> = every.iter().map(|run| (*run).clone()).collect();
            checks.push(lossless_check(&all));
            continue;
        }
        let mut same: Vec<&Check> =
            reports.iter().flat_map(|report| &report.checks).filter(|other| other.name == check.name).collect();
        same.sort_by(|a, b| a.value.partial_cmp(&b.value).unwrap_or(std::cmp::Ordering::Equal));
        if let Some(middle) = same.get(same.len().saturating_sub(1) / 2) {
            let values: Vec<String> = same.iter().map(|check| format!("{:.2}", check.value)).collect();
            checks.push(Check {
                name: format!("{} (median of {}: {})", check.name, same.len(), values.join(", ")),
                ..(*middle).clone()
            });
        }
    }
    Some(Report { scenario: first.scenario, options: first.options.clone(), runs, checks })
}

/// The distinct values, in order of first appearance, joined by ` | `
/// (`None` if there are none).
fn distinct(values: impl Iterator<Item = String>) -> Option<String> {
    let mut seen: Vec<String> = Vec::new();
    for value in values {
        if !seen.contains(&value) {
            seen.push(value);
        }
    }
    (!seen.is_empty()).then(|| seen.join(" | "))
}

/// The report as a table.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    if report.scenario == Scenario::Hostile {
        return crate::hostile::table(report);
    }
    let mut out = String::new();
    let opt = |value: Option<u32>| value.map_or_else(|| "-".to_owned(), |value| value.to_string());
    let _ = writeln!(out, "scenario: {}", report.scenario.name());
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:>6} {:>7} {:>10} {:>8} {:>6} {:>5} {:>8} {:>12} {:>6} {:>7} {:>7} {:>7} {:>8}",
        "system",
        "variant",
        "N",
        "changes",
        "delivered",
        "missing",
        "closed",
        "dup",
        "seconds",
        "deliveries/s",
        "bytes",
        "p50 µs",
        "p99 µs",
        "max µs",
        "KiB/conn"
    );
    for run in &report.runs {
        let _ = writeln!(
            out,
            "{:<16} {:<20} {:>6} {:>7} {:>10} {:>8} {:>6} {:>5} {:>8.3} {:>12.0} {:>6.0} {:>7} {:>7} {:>7} {:>8}",
            run.system,
            run.variant,
            run.n,
            run.changes,
            run.delivered,
            run.missing + run.server_dropped,
            run.closed_early,
            run.duplicates + run.unexpected + run.out_of_order.unwrap_or(0),
            run.seconds,
            run.rate,
            run.frame_bytes,
            opt(run.p50_us),
            opt(run.p99_us),
            opt(run.max_us),
            run.kib_per_connection.map_or_else(|| "-".to_owned(), |kib| format!("{kib:.2}")),
        );
    }
    if report.scenario == Scenario::Resume {
        let _ = writeln!(
            out,
            "  resume: p50/p99/max are each client's time to catch up, from its reconnect to its last missed change; \
             seconds until the last client caught up; deliveries/s = N x M / seconds; dup includes out of order"
        );
    }
    if matches!(report.scenario, Scenario::Standard | Scenario::Mutations) {
        for run in &report.runs {
            let (Some(cpu), Some(per_change)) = (run.server_cpu_secs, run.cpu_us_per_change) else { continue };
            // A summary's `delivered` is the total over its runs; the CPU time, a median of one run's.
            let delivered = run.delivered as f64 / run.repeats.map_or(1, |spread| spread.runs).max(1) as f64;
            let per_delivery = if delivered > 0.0 { cpu * 1e6 / delivered } else { 0.0 };
            let rate = run.changes_per_s.map(|rate| format!(", {rate:.0} changes/s")).unwrap_or_default();
            let _ = writeln!(
                out,
                "  {} {} N={}: server CPU {cpu:.2} s, {per_change:.1} µs per change, {per_delivery:.2} µs per \
                 delivery{rate}",
                run.system, run.variant, run.n
            );
        }
    }
    for run in &report.runs {
        if let Some(spread) = run.repeats {
            let _ = writeln!(
                out,
                "  {} {} N={}: deliveries/s {:.0} to {:.0} over {} runs (median above; losses are totals)",
                run.system, run.variant, run.n, spread.rate_min, spread.rate_max, spread.runs
            );
        }
    }
    for check in &report.checks {
        let mark = if check.met { "met" } else { "MISSED" };
        let _ = writeln!(out, "  {:<58} {:>12.2}  target {:<10} {mark}", check.name, check.value, check.target);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rate: f64, missing: u64, p99: u32) -> Report {
        let run = Run {
            system: "graphex".into(),
            variant: "throughput".into(),
            n: 10,
            changes: 5,
            expected: 50,
            delivered: 50 - missing,
            missing,
            rate,
            p99_us: Some(p99),
            ..Run::default()
        };
        let checks = vec![
            ratio_check("graphex / ceiling".into(), Some(rate), Some(100.0), 0.5).expect("a ratio"),
            lossless_check(std::slice::from_ref(&run)),
        ];
        Report { scenario: Scenario::Fanout, options: Options::default(), runs: vec![run], checks }
    }

    #[test]
    fn repeats_sum_up_to_medians_with_the_spread_and_every_loss() {
        let summary = median(&[report(30.0, 0, 900), report(70.0, 2, 100), report(60.0, 0, 500)]).expect("a summary");
        let [run] = summary.runs.as_slice() else { panic!("one run per system, variant and N: {:?}", summary.runs) };
        assert_eq!(run.rate, 60.0);
        assert_eq!(run.p99_us, Some(500));
        assert_eq!((run.missing, run.expected, run.delivered), (2, 150, 148));
        let spread = run.repeats.expect("the spread");
        assert_eq!((spread.runs, spread.rate_min, spread.rate_max), (3, 30.0, 70.0));
        let ratio = &summary.checks[0];
        assert!(ratio.name.starts_with("graphex / ceiling (median of 3: 0.30, 0.60, 0.70)"), "{}", ratio.name);
        assert_eq!((ratio.value, ratio.met), (0.6, true));
        // One repeat lost two deliveries: the loss check counts them, not a median of zero.
        let lost = &summary.checks[1];
        assert_eq!((lost.value, lost.met), (2.0, false));
        assert!(median(&[]).is_none());
    }
}

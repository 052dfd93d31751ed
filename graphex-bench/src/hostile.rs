//! Issue 15, "Hostile clients cannot exhaust a server": graphex with its
//! DEFAULT limits in its own process, one legitimate client receiving a
//! steady rate of changes, and hostile inputs sent one at a time.
//!
//! For each input: a baseline window without attack, then the input (sent
//! once, bounded by a timeout) in an attack window of at least the same
//! length, then a short settle. Reported per input: how the server answered
//! (accepted, or the status, close code or error code that refused it), the
//! server's peak resident growth during the input (`VmHWM`, reset just
//! before it, minus `VmRSS` before it), and the legitimate client's p50 /
//! p99 latency during the attack window against its baseline window, with
//! the changes it missed.
//!
//! The legitimate client connects from `127.0.0.2`, the attacker from
//! `127.0.0.1`: two clients at two addresses, so the per-address caps the
//! attacker runs into are its own. Latency is measured from the moment the
//! bench asks the server to save a change to its receipt: the row's
//! `created_us` is taken inside the server, so a stalled server runtime
//! would delay it too and hide the stall.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, stream};
use serde_json::{Value as Json, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::entities::now_us;
use crate::load::{self, Socket};
use crate::remote::RemoteServer;
use crate::scenarios::{Check, Options, Outcome, Run, lossless_check, quantile};
use crate::systems::{Limits, Model, Plan, Serve, System};
use crate::{BenchError, raise_open_files_limit};

/// Every input, by key (`--hostile-inputs` takes a comma-separated subset).
pub const INPUTS: [&str; 13] = [
    "sse-aliases",
    "sse-aliases-big",
    "data-list",
    "body-announced",
    "body-chunked",
    "text-plain",
    "operation-id",
    "subscribe-aliases",
    "typename-aliases",
    "enum-strings",
    "nesting",
    "sockets",
    "fragment-bomb",
];

/// Where the legitimate client connects from.
const LEGIT_SOURCE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Sockets the `sockets` input opens at once.
const SOCKET_CONCURRENCY: usize = 64;
/// A response (or a close) not seen within this long counts as none.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// The targets of issue 15.
const PEAK_TARGET_MIB: f64 = 32.0;
const P99_TARGET_RATIO: f64 = 2.0;

/// One input at the size it is sent.
#[derive(Clone, Debug)]
struct Input {
    key: &'static str,
    /// What is sent, with its size (the run's `variant`).
    label: String,
    /// Its size (aliases, list items, bytes, levels or sockets).
    size: usize,
}

/// `full` scaled, never below `min` (what the default limits still refuse).
fn scaled(full: usize, scale: f64, min: usize) -> usize {
    ((full as f64 * scale).round() as usize).max(min)
}

fn inputs(options: &Options) -> Result<Vec<Input>, BenchError> {
    let limits = graphex::RequestLimits::default();
    let config = graphex::Config::default();
    let scale = options.hostile_scale;
    let aliases = limits.max_aliases + 1;
    let mut all = Vec::new();
    for key in INPUTS {
        let (size, label) = match key {
            "sse-aliases" | "sse-aliases-big" => {
                let size = scaled(if key == "sse-aliases" { 20_000 } else { 100_000 }, scale, aliases);
                (size, format!("SSE POST, {size} aliased messageChanges"))
            }
            "data-list" => {
                // Nine bytes an item: past the query-size limit however scaled.
                let size = scaled(400_000, scale, limits.max_query_bytes / 9 + 1);
                (size, format!("messageSubscription data: {size} x ROOM_ID"))
            }
            "body-announced" | "body-chunked" => {
                let size = scaled(300 << 20, scale, limits.max_body_bytes * 2);
                let how = if key == "body-announced" { "Content-Length" } else { "chunked" };
                (size, format!("{} MiB JSON body, {how}", size >> 20))
            }
            "text-plain" => (1, "text/plain body with a query".to_owned()),
            "operation-id" => {
                let size = scaled(8 << 20, scale, 1 << 10);
                (size, format!("graphql-transport-ws id of {} KiB", size >> 10))
            }
            "subscribe-aliases" => {
                let size = scaled(10_000, scale, aliases);
                (size, format!("{size} aliased messageSubscription"))
            }
            "typename-aliases" => {
                let size = scaled(100_000, scale, aliases);
                (size, format!("{size} aliases of __typename"))
            }
            "enum-strings" => (1, "enum arguments as strings".to_owned()),
            "nesting" => {
                let size = scaled(10_000, scale, limits.max_depth + 1);
                (size, format!("{size} nested {{"))
            }
            "sockets" => {
                let size = scaled(2_000, scale, config.max_channels_per_client + 1);
                (size, format!("{size} two-channel sockets, one address"))
            }
            "fragment-bomb" => (30, "fragments doubling 30 levels".to_owned()),
            _ => unreachable!("every input has a size"),
        };
        all.push(Input { key, label, size });
    }
    if options.hostile_inputs.is_empty() {
        return Ok(all);
    }
    options
        .hostile_inputs
        .iter()
        .map(|key| {
            all.iter()
                .find(|input| input.key == key)
                .cloned()
                .ok_or_else(|| BenchError::new(format!("unknown hostile input {key:?}; inputs: {}", INPUTS.join(","))))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The legitimate client and the steady changes

/// What the legitimate client received: per change (by sequence number),
/// its latency in µs from the moment the bench asked for it.
#[derive(Default)]
struct Received {
    latencies: Vec<Option<u32>>,
    duplicates: u64,
    unexpected: u64,
    /// The server closed the client (close code) and when (µs).
    closed: Option<(u16, i64)>,
}

/// Which window a change was sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    WarmUp,
    Baseline(usize),
    Attack(usize),
    /// After input `i`'s attack window: its missed changes still count for it.
    Settle(usize),
}

/// The steady sender: one change per tick, each from its own task (as the
/// latency runs of the other scenarios), tagged with the current phase.
struct Sender {
    phase: Mutex<Phase>,
    /// Per sequence number: its phase and when it was asked for (µs).
    sent: Mutex<Vec<(Phase, i64)>>,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Sender {
    fn set(&self, phase: Phase) {
        *self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = phase;
    }
}

fn send_steadily(server: Arc<RemoteServer>, sender: Arc<Sender>, rate: f64, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
        let mut tasks = Vec::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stop.cancelled() => break,
            }
            let phase = *sender.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let seq = {
                let mut sent = sender.sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                sent.push((phase, now_us()));
                sent.len() - 1
            };
            let (server, sender) = (server.clone(), sender.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(error) = crate::systems::Target::emit(server.as_ref(), seq, 0).await {
                    sender.errors.fetch_add(1, Ordering::Relaxed);
                    sender
                        .first_error
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .get_or_insert(error.to_string());
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    })
}

/// Connects the legitimate client from [`LEGIT_SOURCE`], subscribes it to
/// every change, and reads in a task until `stop`.
async fn legit_client(
    addr: SocketAddr,
    sender: Arc<Sender>,
    received: Arc<Mutex<Received>>,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, BenchError> {
    let mut socket = load::ws_connect_from(addr, "/ws/graphql/", None, Some(LEGIT_SOURCE)).await?;
    let handshake: Json = serde_json::from_str(&load::next_text(&mut socket).await?)?;
    let channel = handshake["channel_id"].as_str().ok_or_else(|| BenchError::new("no channel_id"))?;
    let mut http = load::http_connection_from(addr, Some(LEGIT_SOURCE)).await?;
    let plan = Plan { room: None, projection: None };
    let answer = http.post(addr, "/graphql", &load::subscribe_request(Model::Indexed, channel, plan)).await?;
    let confirmation = answer["data"].as_object().and_then(|data| data.values().next());
    if confirmation.and_then(|c| c["ok"].as_bool()) != Some(true) {
        return Err(BenchError::new(format!("the legitimate subscribe was refused: {answer}")));
    }
    Ok(tokio::spawn(async move {
        let _http = http;
        loop {
            let message = tokio::select! {
                biased;
                message = socket.next() => message,
                () = stop.cancelled() => break,
            };
            let received_us = now_us();
            let mut received = received.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame: Json = serde_json::from_str(text.as_str()).unwrap_or_default();
                    let seq = frame["payload"]["data"]["id"].as_i64().and_then(|id| usize::try_from(id - 1).ok());
                    let sent_us = seq.and_then(|seq| {
                        sender.sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get(seq).map(|sent| sent.1)
                    });
                    let (Some(seq), Some(sent_us)) = (seq, sent_us) else {
                        received.unexpected += 1;
                        continue;
                    };
                    if received.latencies.len() <= seq {
                        received.latencies.resize(seq + 1, None);
                    }
                    if received.latencies[seq].is_some() {
                        received.duplicates += 1;
                    } else {
                        received.latencies[seq] =
                            Some(u32::try_from((received_us - sent_us).max(0)).unwrap_or(u32::MAX));
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    received.closed = Some((frame.map_or(1005, |frame| u16::from(frame.code)), received_us));
                    break;
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => {
                    received.closed = Some((1006, received_us));
                    break;
                }
            }
        }
    }))
}

// ---------------------------------------------------------------------------
// The scenario

/// What one input measured, before the legitimate client's figures are
/// attributed.
struct Attack {
    answer: String,
    refused: bool,
    seconds: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    peak_kib: u64,
    started_us: i64,
}

/// Runs every input (or `options.hostile_inputs`) once.
pub async fn run(options: &Options) -> Outcome {
    let exe = options.server_exe.clone().ok_or_else(|| BenchError::new("the hostile scenario needs server_exe"))?;
    let inputs = inputs(options)?;
    raise_open_files_limit()?;
    let server = Arc::new(
        RemoteServer::spawn_with(
            &exe,
            System::Graphex,
            Model::Indexed,
            Serve { limits: Limits::Default, ..Serve::default() },
        )
        .await?,
    );
    let addr = server.addr;
    let window = Duration::from_secs_f64(options.hostile_secs);
    let settle = Duration::from_secs_f64(options.settle_secs);
    let timeout = Duration::from_secs_f64(options.hostile_timeout_secs);

    let sender = Arc::new(Sender {
        phase: Mutex::new(Phase::WarmUp),
        sent: Mutex::default(),
        errors: AtomicU64::new(0),
        first_error: Mutex::default(),
    });
    let received = Arc::new(Mutex::new(Received::default()));
    let stop_reading = CancellationToken::new();
    let reader = legit_client(addr, sender.clone(), received.clone(), stop_reading.clone()).await?;
    let stop_sending = CancellationToken::new();
    let sending = send_steadily(server.clone(), sender.clone(), options.hostile_rate, stop_sending.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut attacks = Vec::new();
    for (index, input) in inputs.iter().enumerate() {
        sender.set(Phase::Baseline(index));
        tokio::time::sleep(window).await;
        sender.set(Phase::Attack(index));
        server.reset_peak().await?;
        let rss_before_kib = server.resident_kib().await?;
        let started = Instant::now();
        let started_us = now_us();
        let (answer, refused) = match tokio::time::timeout(timeout, attack(addr, input)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => (format!("client error: {error}"), false),
            Err(_) => (format!("no answer within {} s", timeout.as_secs_f64()), false),
        };
        let seconds = started.elapsed().as_secs_f64();
        tokio::time::sleep(window.saturating_sub(started.elapsed())).await;
        let peak_kib = server.peak_kib().await?;
        let rss_after_kib = server.resident_kib().await?;
        sender.set(Phase::Settle(index));
        println!(
            "  {:<48} {:<40} {:>7.3} s, peak +{:.1} MiB",
            input.label,
            answer,
            seconds,
            peak_kib.saturating_sub(rss_before_kib) as f64 / 1024.0
        );
        attacks.push(Attack { answer, refused, seconds, rss_before_kib, rss_after_kib, peak_kib, started_us });
        tokio::time::sleep(settle).await;
    }
    stop_sending.cancel();
    sending.await.map_err(|error| BenchError::new(format!("the sender failed: {error}")))?;
    // The last deliveries.
    let total = sender.sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len();
    let deadline = Instant::now() + settle;
    while Instant::now() < deadline {
        let got = received.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).latencies.iter().flatten().count();
        if got >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_reading.cancel();
    let _ = reader.await;

    let sent = sender.sent.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
    let received = std::mem::take(&mut *received.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    let emit_errors = sender.errors.load(Ordering::Relaxed);
    if let Some(error) = sender.first_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref() {
        println!("  {emit_errors} changes could not be sent; the first: {error}");
    }
    let latency_of = |seq: usize| received.latencies.get(seq).copied().flatten();
    let mut runs = Vec::new();
    let mut checks = Vec::new();
    for (index, (input, attack)) in inputs.iter().zip(&attacks).enumerate() {
        let in_phase = |wanted: &[Phase]| -> Vec<usize> {
            sent.iter().enumerate().filter(|(_, (phase, _))| wanted.contains(phase)).map(|(seq, _)| seq).collect()
        };
        let sorted = |seqs: &[usize]| {
            let mut latencies: Vec<u32> = seqs.iter().filter_map(|seq| latency_of(*seq)).collect();
            latencies.sort_unstable();
            latencies
        };
        let baseline = sorted(&in_phase(&[Phase::Baseline(index)]));
        let during = sorted(&in_phase(&[Phase::Attack(index)]));
        let counted = in_phase(&[Phase::Attack(index), Phase::Settle(index)]);
        let delivered = counted.iter().filter(|seq| latency_of(**seq).is_some()).count() as u64;
        let closed = received.closed.is_some_and(|(_, at)| {
            at >= attack.started_us && (index + 1 == attacks.len() || at < attacks[index + 1].started_us)
        });
        let first = index == 0;
        let run = Run {
            system: System::Graphex.name().to_owned(),
            variant: input.label.clone(),
            n: input.size,
            changes: counted.len(),
            expected: counted.len() as u64,
            delivered,
            missing: counted.len() as u64 - delivered,
            // Counted once, with the first input.
            duplicates: if first { received.duplicates } else { 0 },
            unexpected: if first { received.unexpected } else { 0 },
            closed_early: u64::from(closed),
            server_dropped: if first { emit_errors } else { 0 },
            seconds: attack.seconds,
            rate: 0.0,
            p50_us: quantile(&during, 0.50),
            p99_us: quantile(&during, 0.99),
            max_us: quantile(&during, 1.0),
            rss_before_kib: Some(attack.rss_before_kib),
            rss_after_kib: Some(attack.rss_after_kib),
            answer: Some(attack.answer.clone()),
            refused: Some(attack.refused),
            peak_growth_kib: Some(attack.peak_kib.saturating_sub(attack.rss_before_kib)),
            baseline_p50_us: quantile(&baseline, 0.50),
            baseline_p99_us: quantile(&baseline, 0.99),
            ..Run::default()
        };
        checks.extend(input_checks(&run));
        runs.push(run);
    }
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// The three verdicts of one input: refused, peak growth, p99 against baseline.
fn input_checks(run: &Run) -> Vec<Check> {
    let mut checks = vec![Check {
        name: format!("{}: refused", run.variant),
        value: f64::from(u8::from(run.refused == Some(true))),
        target: "1".into(),
        met: run.refused == Some(true),
    }];
    if let Some(growth) = run.peak_growth_kib {
        let mib = growth as f64 / 1024.0;
        checks.push(Check {
            name: format!("{}: server peak RSS growth (MiB)", run.variant),
            value: mib,
            target: format!("<= {PEAK_TARGET_MIB}"),
            met: mib <= PEAK_TARGET_MIB,
        });
    }
    if let (Some(during), Some(baseline)) = (run.p99_us, run.baseline_p99_us) {
        let ratio = f64::from(during) / f64::from(baseline.max(1));
        checks.push(Check {
            name: format!("{}: legit p99 attack / baseline", run.variant),
            value: ratio,
            target: format!("<= {P99_TARGET_RATIO}"),
            met: ratio <= P99_TARGET_RATIO,
        });
    }
    checks
}

/// The hostile report as a table, then one verdict line per input.
pub fn table(report: &crate::scenarios::Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let ms = |us: Option<u32>| us.map_or_else(|| "-".to_owned(), |us| format!("{:.2}", f64::from(us) / 1000.0));
    let _ = writeln!(
        out,
        "scenario: hostile (graphex, default limits; legit client at {} changes/s)",
        report.options.hostile_rate
    );
    let _ = writeln!(
        out,
        "{:<46} {:<44} {:>8} {:>9} {:>15} {:>15} {:>6} {:>7}",
        "input", "answer", "secs", "peak MiB", "base p50/p99 ms", "atk p50/p99 ms", "p99 x", "missed"
    );
    for run in &report.runs {
        let ratio = match (run.p99_us, run.baseline_p99_us) {
            (Some(during), Some(baseline)) => format!("{:.2}", f64::from(during) / f64::from(baseline.max(1))),
            _ => "-".to_owned(),
        };
        let baseline = format!("{}/{}", ms(run.baseline_p50_us), ms(run.baseline_p99_us));
        let during = format!("{}/{}", ms(run.p50_us), ms(run.p99_us));
        let missed = format!("{}/{}", run.missing + run.closed_early, run.expected);
        let _ = writeln!(
            out,
            "{:<46} {:<44} {:>8.3} {:>9.1} {baseline:>15} {during:>15} {ratio:>6} {missed:>7}",
            run.variant,
            run.answer.as_deref().unwrap_or("-"),
            run.seconds,
            run.peak_growth_kib.unwrap_or(0) as f64 / 1024.0,
        );
    }
    for run in &report.runs {
        let growth = run.peak_growth_kib.unwrap_or(0) as f64 / 1024.0;
        let ratio = match (run.p99_us, run.baseline_p99_us) {
            (Some(during), Some(baseline)) => Some(f64::from(during) / f64::from(baseline.max(1))),
            _ => None,
        };
        let mut over = Vec::new();
        if run.refused != Some(true) {
            over.push("not refused".to_owned());
        }
        if growth > PEAK_TARGET_MIB {
            over.push(format!("peak +{growth:.1} MiB > {PEAK_TARGET_MIB}"));
        }
        if let Some(ratio) = ratio.filter(|ratio| *ratio > P99_TARGET_RATIO) {
            over.push(format!("p99 {ratio:.2}x baseline > {P99_TARGET_RATIO}x"));
        }
        if run.missing + run.closed_early > 0 {
            over.push(format!("legit client missed {} changes", run.missing + run.closed_early));
        }
        let verdict = if over.is_empty() { "met".to_owned() } else { format!("OVER: {}", over.join("; ")) };
        let _ = writeln!(out, "  {:<46} {verdict}", run.variant);
    }
    for run in &report.runs {
        if let Some(spread) = run.repeats {
            let _ = writeln!(out, "  (medians of {} runs; missed changes are totals)", spread.runs);
            break;
        }
    }
    if let Some(check) = report.checks.iter().find(|check| check.name.starts_with("deliveries lost")) {
        let mark = if check.met { "met" } else { "MISSED" };
        let _ =
            writeln!(out, "  legit client: lost, duplicated or unexpected over every input {:.0}: {mark}", check.value);
    }
    out
}

// ---------------------------------------------------------------------------
// The inputs

/// Sends one input; answers how the server answered it and whether that
/// was a refusal.
async fn attack(addr: SocketAddr, input: &Input) -> Result<(String, bool), BenchError> {
    let n = input.size;
    match input.key {
        "sse-aliases" | "sse-aliases-big" => {
            let query = aliased("subscription {", n, |i| format!("a{i}: messageChanges {{ id }}"));
            post(addr, "application/json", Some("text/event-stream"), query_body(&query)).await
        }
        "data-list" => {
            let items = vec!["ROOM_ID"; n].join(", ");
            let query = format!(
                "subscription {{ messageSubscription(channelId: \"0\", action: CREATE, operation: SUBSCRIBE, data: \
                 [{items}]) {{ ok error }} }}"
            );
            post(addr, "application/json", None, query_body(&query)).await
        }
        "body-announced" => post(addr, "application/json", None, Body::Filler { bytes: n, announced: true }).await,
        "body-chunked" => post(addr, "application/json", None, Body::Filler { bytes: n, announced: false }).await,
        "text-plain" => {
            post(addr, "text/plain", None, Body::Bytes(json!({"query": "{ ping }"}).to_string().into_bytes())).await
        }
        "operation-id" => operation_id(addr, n).await,
        "subscribe-aliases" => {
            let query = aliased("subscription {", n, |i| {
                format!("s{i}: messageSubscription(channelId: \"0\", action: CREATE, operation: SUBSCRIBE) {{ ok }}")
            });
            post(addr, "application/json", None, query_body(&query)).await
        }
        "typename-aliases" => {
            let query = aliased("query {", n, |i| format!("t{i}: __typename"));
            post(addr, "application/json", None, query_body(&query)).await
        }
        "enum-strings" => {
            // On a channel of the attacker's own: the string enums are the only fault.
            let mut socket = load::ws_connect_from(addr, "/ws/graphql/", None, None).await?;
            let handshake: Json = serde_json::from_str(&load::next_text(&mut socket).await?)?;
            let channel = handshake["channel_id"].as_str().unwrap_or_default();
            let query = format!(
                "subscription {{ messageSubscription(channelId: \"{channel}\", action: \"CREATE\", operation: \
                 \"SUBSCRIBE\") {{ ok error }} }}"
            );
            let answer = post(addr, "application/json", None, query_body(&query)).await;
            drop(socket);
            answer
        }
        "nesting" => {
            let query = format!("{}{}", "{".repeat(n), "}".repeat(n));
            post(addr, "application/json", None, query_body(&query)).await
        }
        "sockets" => sockets(addr, n).await,
        "fragment-bomb" => {
            let mut query = "query { ...F0 }".to_owned();
            for level in 0..n {
                query.push_str(&format!(
                    " fragment F{level} on BenchQuery {{ ...F{next} ...F{next} }}",
                    next = level + 1
                ));
            }
            query.push_str(&format!(" fragment F{n} on BenchQuery {{ ping }}"));
            post(addr, "application/json", None, query_body(&query)).await
        }
        other => Err(BenchError::new(format!("unknown input {other}"))),
    }
}

/// `head` then `n` selections, then `}`.
fn aliased(head: &str, n: usize, selection: impl Fn(usize) -> String) -> String {
    let mut query = String::from(head);
    for i in 0..n {
        query.push(' ');
        query.push_str(&selection(i));
    }
    query.push_str(" }");
    query
}

fn query_body(query: &str) -> Body {
    Body::Bytes(json!({"query": query}).to_string().into_bytes())
}

/// A request body.
enum Body {
    Bytes(Vec<u8>),
    /// A JSON request of `bytes` bytes (a query and one huge string
    /// variable), generated while it is written, with or without
    /// `Content-Length`.
    Filler {
        bytes: usize,
        announced: bool,
    },
}

/// Written per system call.
const CHUNK: usize = 64 << 10;

/// Bytes `offset..offset + len` of a JSON request `total` bytes long: a
/// query, then one string variable of `x`s filling the rest.
fn filler(offset: usize, len: usize, total: usize) -> Vec<u8> {
    const PREFIX: &[u8] = br#"{"query":"{ ping }","variables":{"pad":""#;
    const SUFFIX: &[u8] = br#""}}"#;
    (offset..offset + len)
        .map(|at| {
            if at < PREFIX.len() {
                PREFIX[at]
            } else if at >= total.saturating_sub(SUFFIX.len()) {
                SUFFIX[at - (total - SUFFIX.len())]
            } else {
                b'x'
            }
        })
        .collect()
}

/// `POST /graphql` over a fresh connection (`Connection: close`), writing
/// the body while reading the answer: a server that refuses early answers
/// before the body is through, and the rest is not sent.
async fn post(
    addr: SocketAddr,
    content_type: &str,
    accept: Option<&str>,
    body: Body,
) -> Result<(String, bool), BenchError> {
    let tcp = load::tcp_connect(addr, None).await?;
    let (mut read, mut write) = tcp.into_split();
    let accept = accept.map(|accept| format!("Accept: {accept}\r\n")).unwrap_or_default();
    let (length, announced) = match &body {
        Body::Bytes(bytes) => (bytes.len(), true),
        Body::Filler { bytes, announced } => (*bytes, *announced),
    };
    let framing =
        if announced { format!("Content-Length: {length}\r\n") } else { "Transfer-Encoding: chunked\r\n".to_owned() };
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{accept}{framing}Connection: close\r\n\r\n"
    );
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        match body {
            Body::Bytes(bytes) => {
                for chunk in bytes.chunks(CHUNK) {
                    write.write_all(chunk).await?;
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
            Body::Filler { bytes, announced } => {
                let mut offset = 0;
                while offset < bytes {
                    let piece = filler(offset, CHUNK.min(bytes - offset), bytes);
                    if announced {
                        write.write_all(&piece).await?;
                    } else {
                        write.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await?;
                        write.write_all(&piece).await?;
                        write.write_all(b"\r\n").await?;
                    }
                    offset += piece.len();
                    counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
                }
                if !announced {
                    write.write_all(b"0\r\n\r\n").await?;
                }
            }
        }
        write.flush().await?;
        Ok::<_, std::io::Error>(write)
    });
    // Read the answer: until the connection closes, or the body announced
    // by the answer is complete, or (SSE) the first event is complete.
    let sse = accept.contains("event-stream");
    let mut answer = Vec::new();
    let mut buffer = vec![0u8; 16 << 10];
    let deadline = tokio::time::Instant::now() + ANSWER_WAIT;
    let mut read_error = None;
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buffer)).await {
            Err(_) => break,
            Ok(Ok(0)) => break,
            Ok(Ok(got)) => {
                answer.extend_from_slice(&buffer[..got]);
                if answer_complete(&answer, sse) {
                    break;
                }
            }
            Ok(Err(error)) => {
                read_error = Some(error);
                break;
            }
        }
    }
    let sent = written.load(Ordering::Relaxed);
    writer.abort();
    let text = String::from_utf8_lossy(&answer);
    let Some(status) = text.split_whitespace().nth(1).and_then(|status| status.parse::<u16>().ok()) else {
        let why = read_error.map_or_else(|| "no answer".to_owned(), |error| error.to_string());
        return Ok((format!("no HTTP answer ({why}) after {}", bytes(sent)), false));
    };
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let codes = error_codes(body);
    let partial = if (sent as usize) < length {
        format!(", after {} of {}", bytes(sent), bytes(length as u64))
    } else {
        String::new()
    };
    let prefix = if sse { "SSE " } else { "" };
    Ok(match (status, codes.is_empty(), body.contains("\"errors\"")) {
        (200, true, false) => (format!("{prefix}accepted (200){partial}"), false),
        (200, true, true) => (format!("{prefix}200 errors: {}", first_message(body)), true),
        (200, false, _) => (format!("{prefix}200 {}{partial}", codes.join(",")), true),
        (status, _, _) => (format!("HTTP {status}{partial}"), true),
    })
}

fn bytes(count: u64) -> String {
    if count >= 1 << 20 {
        format!("{:.1} MiB", count as f64 / f64::from(1u32 << 20))
    } else if count >= 1 << 10 {
        format!("{:.0} KiB", count as f64 / 1024.0)
    } else {
        format!("{count} B")
    }
}

/// Whether the answer read so far is complete.
fn answer_complete(answer: &[u8], sse: bool) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else { return false };
    let head = head.to_ascii_lowercase();
    if let Some(length) = head.lines().find_map(|line| line.strip_prefix("content-length:")) {
        return length.trim().parse::<usize>().is_ok_and(|length| body.len() >= length);
    }
    if sse && head.contains("text/event-stream") {
        // The first event (not a keep-alive comment) is through.
        return body.split("\n\n").any(|event| event.contains("data:")) && body.contains("\n\n");
    }
    body.ends_with("0\r\n\r\n")
}

/// Every `"code":"..."` in a body.
fn error_codes(body: &str) -> Vec<String> {
    let mut codes: Vec<String> = Vec::new();
    for piece in body.split("\"code\":\"").skip(1) {
        let code = piece.split('"').next().unwrap_or_default().to_owned();
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    codes
}

/// The first error message of a body, shortened.
fn first_message(body: &str) -> String {
    let message = body.split("\"message\":\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or("?");
    message.chars().take(60).collect()
}

/// graphql-transport-ws: `connection_init`, then a `subscribe` whose id is
/// `n` bytes long.
async fn operation_id(addr: SocketAddr, n: usize) -> Result<(String, bool), BenchError> {
    let mut socket = load::ws_connect_from(addr, "/graphql", Some("graphql-transport-ws"), None).await?;
    socket.send(Message::text(json!({"type": "connection_init"}).to_string())).await?;
    let ack: Json = serde_json::from_str(&load::next_text(&mut socket).await?)?;
    if ack["type"] != "connection_ack" {
        return Ok((format!("no connection_ack: {ack}"), false));
    }
    let id = "x".repeat(n);
    let subscribe =
        json!({"id": id, "type": "subscribe", "payload": {"query": "subscription { messageChanges { id } }"}});
    let sent = socket.send(Message::text(subscribe.to_string())).await;
    let mut note = sent.err().map(|error| format!(" (send: {error})")).unwrap_or_default();
    let answer = tokio::time::timeout(ANSWER_WAIT, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |frame| u16::from(frame.code));
                    return (format!("close {code}"), true);
                }
                Some(Ok(Message::Text(text))) => {
                    let message: Json = serde_json::from_str(text.as_str()).unwrap_or_default();
                    match message["type"].as_str() {
                        Some("error") => {
                            let codes = error_codes(text.as_str());
                            return (format!("error message {}", codes.join(",")), true);
                        }
                        Some("next") => return ("accepted (next)".to_owned(), false),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return (format!("connection error: {error}"), true),
                None => return ("connection ended without a close frame".to_owned(), true),
            }
        }
    })
    .await
    .unwrap_or_else(|_| ("no answer (the subscription may be running)".to_owned(), false));
    if answer.0.starts_with("close") {
        note.clear();
    }
    Ok((format!("{}{note}", answer.0), answer.1))
}

/// Opens `n` two-channel sockets from one address, at most
/// [`SOCKET_CONCURRENCY`] at once, holding every accepted one until all
/// were tried.
async fn sockets(addr: SocketAddr, n: usize) -> Result<(String, bool), BenchError> {
    #[derive(PartialEq, Eq)]
    enum Opened {
        Accepted,
        Refused(String),
    }
    let outcomes: Vec<(Opened, Option<Socket>)> = stream::iter(0..n)
        .map(|_| async move {
            let mut socket = match load::ws_connect_from(addr, "/ws/graphql/", None, None).await {
                Ok(socket) => socket,
                Err(error) => return (Opened::Refused(format!("handshake: {error}")), None),
            };
            let first = tokio::time::timeout(ANSWER_WAIT, socket.next()).await;
            match first {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str().contains("channel_id") => {
                    (Opened::Accepted, Some(socket))
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    (Opened::Refused(format!("close {}", frame.map_or(1005, |frame| u16::from(frame.code)))), None)
                }
                Ok(Some(Ok(other))) => (Opened::Refused(format!("unexpected {other:?}")), None),
                Ok(Some(Err(error))) => (Opened::Refused(format!("error {error}")), None),
                Ok(None) => (Opened::Refused("ended".to_owned()), None),
                Err(_) => (Opened::Refused("no handshake".to_owned()), None),
            }
        })
        .buffer_unordered(SOCKET_CONCURRENCY)
        .collect()
        .await;
    let accepted = outcomes.iter().filter(|(opened, _)| *opened == Opened::Accepted).count();
    let mut refusals: Vec<(String, usize)> = Vec::new();
    for (opened, _) in &outcomes {
        if let Opened::Refused(how) = opened {
            match refusals.iter_mut().find(|(seen, _)| seen == how) {
                Some((_, count)) => *count += 1,
                None => refusals.push((how.clone(), 1)),
            }
        }
    }
    drop(outcomes);
    let refused: Vec<String> = refusals.iter().map(|(how, count)| format!("{count} {how}")).collect();
    let answer = format!(
        "{accepted} opened, {}",
        if refused.is_empty() { "none refused".to_owned() } else { refused.join(", ") }
    );
    Ok((answer, !refusals.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_complete_when_their_body_is() {
        assert!(!answer_complete(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 5\r\n\r\nabc", false));
        assert!(answer_complete(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nabc", false));
        assert!(answer_complete(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false));
        let sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n50\r\nevent: next\ndata: {}\n\n";
        assert!(answer_complete(sse, true));
        assert!(!answer_complete(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n5\r\n:\n\n", true));
    }

    #[test]
    fn the_filler_is_one_json_request() {
        let total = 200_000;
        let mut body = Vec::new();
        while body.len() < total {
            body.extend(filler(body.len(), CHUNK.min(total - body.len()), total));
        }
        let request: Json = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(request["query"], "{ ping }");
    }

    #[test]
    fn error_codes_are_read_from_any_body() {
        let body = r#"{"errors":[{"message":"too many","extensions":{"code":"LIMIT_REACHED"}}]}"#;
        assert_eq!(error_codes(body), ["LIMIT_REACHED"]);
        assert_eq!(first_message(body), "too many");
    }

    #[test]
    fn sizes_scale_but_stay_past_the_default_limits() {
        let options = Options { hostile_scale: 0.0001, ..Options::default() };
        let sizes = inputs(&options).expect("every input");
        let size = |key: &str| sizes.iter().find(|input| input.key == key).expect("listed").size;
        assert_eq!(size("sse-aliases"), 65);
        assert_eq!(size("sockets"), 1_001);
        assert_eq!(size("body-chunked"), 2 << 20);
        let full = inputs(&Options::default()).expect("every input");
        assert_eq!(full.len(), INPUTS.len());
        assert_eq!(full.iter().find(|input| input.key == "sse-aliases-big").expect("listed").size, 100_000);
    }
}

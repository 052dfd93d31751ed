//! Issue 16, "Nothing lost": N two-channel clients subscribe with
//! `cursors: true` and receive a few changes, keeping the last cursor each
//! received; all of them drop their sockets; M changes happen while nobody
//! listens (within the in-memory layer's history of 1 000 changes); then
//! every client reconnects and subscribes with `after: <its last cursor>`.
//!
//! Measured: the time from the first reconnect until every client has
//! received all M missed changes (and so the replay rate, N × M deliveries
//! over that time), and each client's time to catch up, from the moment it
//! began to reconnect (handshake, subscribe and replay) to its M-th missed
//! change. Checked: each missed change arrives exactly once and in order
//! (the offsets of the cursors only grow), none received before the drop
//! comes again, and a few live changes sent after the replay arrive once
//! each, after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::BenchError;
use crate::load::{ClientRecord, Fleet, Resume, room_of};
use crate::remote::RemoteServer;
use crate::scenarios::{Check, Options, Outcome, Run, lossless_check};
use crate::systems::{Model, Plan, Serve, System, Target};

/// Changes every client receives before the drop (its last one gives the
/// cursor it resumes after).
pub const BEFORE: usize = 5;

/// The resume scenario (graphex only; nothing runs if `--systems` leaves graphex out).
pub async fn run(options: &Options) -> Outcome {
    if !options.systems.contains(&System::Graphex) {
        return Ok((Vec::new(), Vec::new()));
    }
    let exe = options.server_exe.as_deref().ok_or_else(|| BenchError::new("no server_exe given"))?;
    let (n, missed, live) = (options.resume_n, options.resume_changes.max(1), options.resume_live);
    let total = BEFORE + missed + live;
    let settle = Duration::from_secs_f64(options.settle_secs);
    let server = Arc::new(RemoteServer::spawn_with(exe, System::Graphex, Model::Indexed, Serve::default()).await?);
    let plans = vec![Plan { room: None, projection: None }; n];
    let system = System::Graphex;

    // 1. Subscribe with cursors; receive BEFORE changes.
    let resumes = vec![Resume { cursors: true, ..Resume::default() }; n];
    let fleet =
        Fleet::connect_resuming(system, Model::Indexed, server.addr, plans.clone(), resumes, total, false).await?;
    wait_for_channels(server.as_ref(), |count| count >= n, n).await?;
    let start = Instant::now();
    emit(server.clone(), 0..BEFORE, options.writers).await?;
    let first_seconds = wait_for(&fleet.delivered, (n * BEFORE) as u64, settle).await.duration_since(start);
    // 2. Every client drops its socket.
    let before = fleet.records().await?;
    wait_for_channels(server.as_ref(), |count| count == 0, 0).await?;

    // 3. M changes nobody hears.
    emit(server.clone(), BEFORE..BEFORE + missed, options.writers).await?;

    // 4. Every client reconnects, resuming after its last cursor.
    let mut resumes = Vec::with_capacity(n);
    for (index, record) in before.iter().enumerate() {
        let after = record
            .last_cursor
            .clone()
            .ok_or_else(|| BenchError::new(format!("client {index} received no cursor before the drop")))?;
        resumes.push(Resume { cursors: true, after: Some(after), catch_up: Some(missed as u64) });
    }
    let start = Instant::now();
    let fleet = Fleet::connect_resuming(system, Model::Indexed, server.addr, plans, resumes, total, false).await?;
    let replayed_by = wait_for(&fleet.delivered, (n * missed) as u64, settle).await;
    // 5. A few live changes after the replay.
    emit(server.clone(), BEFORE + missed..total, options.writers).await?;
    wait_for(&fleet.delivered, (n * (missed + live)) as u64, settle).await;
    let dropped = server.dropped().await?;
    let after = fleet.records().await?;

    let mut first = tally(&before, 0..BEFORE, 0..0);
    first.system = system.name().to_owned();
    first.variant = "before the drop".into();
    (first.n, first.changes, first.seconds) = (n, BEFORE, first_seconds.as_secs_f64());
    first.rate = if first.seconds > 0.0 { first.delivered as f64 / first.seconds } else { 0.0 };

    let mut resumed = tally(&after, BEFORE..total, 0..BEFORE);
    resumed.system = system.name().to_owned();
    resumed.variant = format!("resume after {missed}");
    (resumed.n, resumed.changes, resumed.server_dropped) = (n, missed + live, dropped);
    // Until the last client caught up (every client did: else until the
    // deliveries stopped).
    let caught_up: Vec<Instant> = after.iter().filter_map(|record| record.caught_up).collect();
    let end = if caught_up.len() == n { caught_up.iter().max().copied().unwrap_or(replayed_by) } else { replayed_by };
    resumed.seconds = end.duration_since(start).as_secs_f64();
    resumed.rate = if resumed.seconds > 0.0 { (n * missed) as f64 / resumed.seconds } else { 0.0 };
    let mut catch_up: Vec<u32> = after
        .iter()
        .filter_map(|record| Some(record.caught_up?.duration_since(record.started?)))
        .map(|took| u32::try_from(took.as_micros()).unwrap_or(u32::MAX))
        .collect();
    catch_up.sort_unstable();
    let quantile = |q: f64| {
        let rank = ((catch_up.len().max(1) - 1) as f64 * q).round() as usize;
        catch_up.get(rank).copied()
    };
    (resumed.p50_us, resumed.p99_us, resumed.max_us) = (quantile(0.5), quantile(0.99), quantile(1.0));

    let mut checks = vec![
        Check {
            name: format!("resume N={n} M={missed}: replay deliveries/s (info)"),
            value: resumed.rate,
            target: "(info)".into(),
            met: true,
        },
        Check {
            name: format!("resume N={n} M={missed}: seconds until all caught up (info)"),
            value: resumed.seconds,
            target: "(info)".into(),
            met: true,
        },
    ];
    if let Some(p99) = resumed.p99_us {
        checks.push(Check {
            name: format!("resume N={n} M={missed}: catch-up p99 per client, ms (info)"),
            value: f64::from(p99) / 1000.0,
            target: "(info)".into(),
            met: true,
        });
    }
    let disorder = first.out_of_order.unwrap_or(0) + resumed.out_of_order.unwrap_or(0);
    checks.push(Check {
        name: "changes out of order (offsets not growing)".into(),
        value: disorder as f64,
        target: "0".into(),
        met: disorder == 0,
    });
    let runs = vec![first, resumed];
    checks.push(lossless_check(&runs));
    Ok((runs, checks))
}

/// The sums over `records`: every change in `wanted` expected once; one
/// in `already` (received before the drop) counts as a duplicate.
fn tally(records: &[ClientRecord], wanted: std::ops::Range<usize>, already: std::ops::Range<usize>) -> Run {
    let mut run = Run { out_of_order: Some(0), ..Run::default() };
    let (mut bytes, mut received) = (0, 0);
    for record in records {
        for seq in wanted.clone() {
            run.expected += 1;
            if record.has(seq) {
                run.delivered += 1;
            } else {
                run.missing += 1;
            }
        }
        run.duplicates += record.duplicates + already.clone().filter(|seq| record.has(*seq)).count() as u64;
        run.unexpected += record.unexpected;
        run.closed_early += u64::from(record.closed_early.is_some());
        run.out_of_order = run.out_of_order.map(|count| count + record.out_of_order);
        bytes += record.bytes;
        received += record.received;
    }
    run.frame_bytes = if received == 0 { 0.0 } else { bytes as f64 / received as f64 };
    run
}

/// Sends changes `seqs` (room 0), `writers` at a time.
async fn emit(server: Arc<RemoteServer>, seqs: std::ops::Range<usize>, writers: usize) -> Result<(), BenchError> {
    stream::iter(seqs)
        .map(|seq| {
            let server = server.clone();
            async move { server.emit(seq, room_of(seq, 1)).await }
        })
        .buffer_unordered(writers.max(1))
        .try_collect::<Vec<()>>()
        .await
        .map(drop)
}

/// Waits until `delivered` reaches `target` or makes no progress for
/// `settle`; returns the moment of the last progress (or of reaching it).
async fn wait_for(delivered: &AtomicU64, target: u64, settle: Duration) -> Instant {
    let (mut last, mut last_progress) = (delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now >= target {
            return Instant::now();
        }
        if now != last {
            (last, last_progress) = (now, Instant::now());
        } else if last_progress.elapsed() > settle {
            return last_progress;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Waits until the server's channel count satisfies `done` (within 60 s).
async fn wait_for_channels(target: &dyn Target, done: impl Fn(usize) -> bool, want: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = target.subscribers().await?;
        if done(count) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::new(format!("{count} channels after 60 s, waiting for {want}")));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

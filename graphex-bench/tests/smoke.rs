//! Every scenario at a tiny size, so the benchmark cannot rot: each run must
//! deliver exactly what its subscriptions call for (no time is asserted).

#![allow(unreachable_pub)]

use graphex_bench::scenarios::{self, Options, Report, Scenario};

fn tiny() -> Options {
    Options {
        fanout_n: vec![12],
        latency_n: vec![12],
        fanout_deliveries: 600,
        latency_rate: 100.0,
        latency_secs: 0.2,
        partitioned_n: 30,
        rooms: 6,
        partitioned_changes: 60,
        broadcast_changes: 24,
        payload_n: 9,
        payload_changes: 30,
        memory_n: 16,
        window: 8,
        settle_secs: 5.0,
        server_exe: Some(env!("CARGO_BIN_EXE_graphex-bench").into()),
        ..Options::default()
    }
}

fn assert_lossless(report: &Report, runs: usize) {
    println!("{}", scenarios::table(report));
    assert_eq!(report.runs.len(), runs, "one run per system and variant");
    for run in &report.runs {
        assert!(run.expected > 0, "{} {}: nothing expected", run.system, run.variant);
        assert!(run.lossless(), "{} {} lost or garbled deliveries: {run:?}", run.system, run.variant);
    }
    assert!(report.checks.iter().any(|check| check.name.starts_with("deliveries lost") && check.met));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout() {
    let report = scenarios::run(Scenario::Fanout, &tiny()).await.unwrap();
    // Ceiling and unpaced ceiling: throughput and latency each; graphex: also no history and no DB;
    // alternative: two.
    assert_lossless(&report, 10);
    let latency = report.runs.iter().find(|run| run.system == "graphex" && run.variant.starts_with("latency")).unwrap();
    assert_eq!(latency.expected, 20 * 12, "rate x seconds changes, each to every client");
    assert!(latency.p99_us.is_some(), "latencies recorded from the row timestamp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned() {
    let report = scenarios::run(Scenario::Partitioned, &tiny()).await.unwrap();
    // Ceiling and unpaced ceiling by room; graphex indexed, indexed without the database and coarse +
    // filters; the alternative's broadcast + filter.
    assert_lossless(&report, 6);
    let indexed = report.runs.iter().find(|run| run.variant == "indexed groups").unwrap();
    assert_eq!(indexed.expected, 60 * 5, "each change reaches the 5 subscribers of its room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload() {
    let report = scenarios::run(Scenario::Payload, &tiny()).await.unwrap();
    assert_lossless(&report, 8);
    let size = |system: &str, variant: &str| {
        report.runs.iter().find(|run| run.system == system && run.variant == variant).unwrap().frame_bytes
    };
    assert!(size("graphex", "id-only") < size("graphex", "3 projections"));
    assert_eq!(
        size("graphex", "3 projections"),
        size("ceiling", "3 projections"),
        "the ceiling sends graphex's frames"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let report = scenarios::run(Scenario::Memory, &tiny()).await.unwrap();
    assert_lossless(&report, 4);
    for run in &report.runs {
        assert!(run.rss_after_kib.is_some_and(|kib| kib > 0), "{}: resident memory read", run.system);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume() {
    let options = Options { resume_n: 20, resume_changes: 30, resume_live: 4, ..tiny() };
    let report = scenarios::run(Scenario::Resume, &options).await.unwrap();
    // Before the drop, then the resume (graphex only).
    assert_lossless(&report, 2);
    let [before, resumed] = report.runs.as_slice() else { unreachable!() };
    assert_eq!(before.expected, 20 * 5, "every client hears the changes before the drop");
    assert_eq!(resumed.expected, 20 * (30 + 4), "the missed changes, then the live ones, each once");
    assert_eq!(resumed.out_of_order, Some(0), "cursors' offsets only grow");
    assert!(resumed.p99_us.is_some(), "every client's time to catch up recorded");
    assert!(report.checks.iter().any(|check| check.name.starts_with("changes out of order") && check.met));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard() {
    let options = Options { standard_n: 12, standard_changes: 30, ..tiny() };
    let report = scenarios::run(Scenario::Standard, &options).await.unwrap();
    // Two-channel, graphql-transport-ws on the native field, the alternative.
    assert_lossless(&report, 3);
    let standard = report.runs.iter().find(|run| run.system == "graphex-standard").unwrap();
    assert_eq!(standard.expected, 30 * 12, "every change to every client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations() {
    let options = Options { mutations_n: 8, mutations_rooms: 4, mutations_count: 40, mutations_in_flight: 8, ..tiny() };
    let report = scenarios::run(Scenario::Mutations, &options).await.unwrap();
    // HTTP mutations, then the pipe for comparison.
    assert_lossless(&report, 2);
    let http = report.runs.iter().find(|run| run.variant == "HTTP mutations").unwrap();
    assert_eq!(http.expected, 40 * 2, "each row reaches the 2 sockets of its room");
    assert!(http.cpu_us_per_change.is_some() && http.changes_per_s.is_some(), "CPU and rate measured");
}

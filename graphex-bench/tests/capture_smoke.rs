//! Issue 17's capture scenario at a tiny size, on a throwaway PostgreSQL
//! cluster with `wal_level=logical` (skipped, saying so, without
//! PostgreSQL's `initdb`, unless `GRAPHEX_TEST_POSTGRES_URL` is set: then
//! CI has PostgreSQL installed and a missing `initdb` is a failure): both
//! variants deliver every change exactly once to every subscriber, each
//! writer's changes in order. No time is asserted.

#![allow(unreachable_pub)]

use graphex_bench::capture_scenario::{self, CaptureOptions};
use graphex_bench::logical::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_and_capture_are_lossless() {
    let Some(cluster) = Cluster::start().expect("the cluster starts") else {
        assert!(
            std::env::var_os("GRAPHEX_TEST_POSTGRES_URL").is_none(),
            "PostgreSQL's initdb is missing but GRAPHEX_TEST_POSTGRES_URL is set"
        );
        println!("skipped: the capture scenario needs PostgreSQL's initdb");
        return;
    };
    let options = CaptureOptions {
        url: None,
        changes: 200,
        n: vec![1, 5],
        writers: 4,
        window: 50,
        latency_rate: 200.0,
        latency_secs: 1.0,
        settle_secs: 5.0,
    };
    let report = capture_scenario::run(&options, &cluster.url()).await.expect("scenario runs");
    println!("{}", capture_scenario::table(&report));
    assert_eq!(report.runs.len(), 8, "hooks and capture, throughput and latency, per n");
    for run in &report.runs {
        assert!(run.expected > 0, "{} {} n={}: nothing expected", run.variant, run.kind, run.n);
        assert!(run.lossless(), "{} {} n={} lost, duplicated or reordered: {run:?}", run.variant, run.kind, run.n);
        assert_eq!(run.delivered, run.changes as u64 * run.n as u64);
    }
    for run in report.runs.iter().filter(|run| run.variant == "capture") {
        // The run's changes and the warm-up row, nothing refused.
        assert_eq!(run.captured_changes, Some(run.changes as u64 + 1), "{run:?}");
        assert_eq!(run.captured_refused, Some(0));
    }
    assert_eq!(report.ratios.len(), 2);
}

//! Scenario 5 at a tiny size against the Redis of `GRAPHEX_TEST_REDIS_URL`
//! (skipped, saying so, without it): every change crosses the processes
//! exactly once per socket, with one Redis publish per group per change.
//! No time is asserted.

#![allow(unreachable_pub)]

use graphex_bench::redis_scenario::{self, RedisOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_processes() {
    let Ok(url) = std::env::var("GRAPHEX_TEST_REDIS_URL") else {
        println!("skipped: scenario 5 needs a Redis server (set GRAPHEX_TEST_REDIS_URL)");
        return;
    };
    let options = RedisOptions { url, changes: 200, n: vec![1, 5], window: 16, settle_secs: 5.0 };
    let report =
        redis_scenario::run(&options, env!("CARGO_BIN_EXE_graphex-bench").as_ref()).await.expect("scenario runs");
    println!("{}", redis_scenario::table(&report));
    assert_eq!(report.runs.len(), 4, "two raw runs and one graphex run per n");
    for run in &report.runs {
        assert!(run.expected > 0, "{} {}: nothing expected", run.system, run.variant);
        assert!(run.lossless(), "{} {} lost or garbled deliveries: {run:?}", run.system, run.variant);
    }
    assert_eq!(report.runs[3].delivered, 200 * 5);
    assert_eq!(report.publishes_per_group_change, vec![1.0, 1.0], "one Redis publish per group per change");
}

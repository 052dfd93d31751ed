//! The group commit (`GRAPHEX_BENCH_BATCH`) at a tiny size: rows saved by
//! `insert_many` and announced with `graphex::announce_many` reach every
//! subscriber exactly once (no time is asserted). The setting is an
//! environment variable the server processes inherit, so the benchmark
//! runs as a process of its own here.

#![allow(unreachable_pub)]

#[test]
fn fanout_and_partitioned_with_group_commit() {
    let dir = std::env::temp_dir().join(format!("graphex-batch-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for args in [
        &["fanout", "--fanout-n", "12", "--latency-n", "", "--fanout-deliveries", "600"][..],
        &[
            "partitioned",
            "--partitioned-n",
            "30",
            "--rooms",
            "6",
            "--partitioned-changes",
            "60",
            "--broadcast-changes",
            "24",
        ],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_graphex-bench"))
            .args(args)
            .args(["--systems", "graphex", "--window", "8", "--settle-secs", "5"])
            .env("GRAPHEX_BENCH_BATCH", "8")
            .current_dir(&dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}");
        let lossless = stdout.lines().find(|line| line.trim_start().starts_with("deliveries lost"));
        assert!(
            lossless.is_some_and(|line| line.contains(" 0.00 ") && line.trim_end().ends_with("met")),
            "{args:?}: every delivery exactly once\n{stdout}\n{stderr}"
        );
        let graphex_runs = stdout.lines().filter(|line| line.starts_with("graphex ")).count();
        assert!(graphex_runs > 0, "{args:?}: graphex ran\n{stdout}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

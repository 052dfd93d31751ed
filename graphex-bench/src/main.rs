//! `graphex-bench <scenario|all> [options]`: runs scenarios, prints tables,
//! writes `target/bench/<scenario>.json`. `graphex-bench serve <system>
//! <model> [no-db] [no-history]` is the server process every run starts.

use std::path::PathBuf;
use std::process::ExitCode;

use graphex_bench::remote;
use graphex_bench::scenarios::{self, Options, Scenario};
use graphex_bench::systems::{Limits, Serve};
use graphex_bench::{BenchError, raise_open_files_limit};

const USAGE: &str =
    "usage: graphex-bench <fanout|partitioned|payload|memory|hostile|resume|standard|mutations|all> [options]
       graphex-bench redis [options]   (scenario 5; `graphex-bench redis --help` lists its options)
       graphex-bench capture [options] (issue 17: hooks vs capture on PostgreSQL; `graphex-bench capture --help`)
options (defaults are the issue's numbers):
  --fanout-n 1000,10000      subscribers of the fan-out series
  --fanout-deliveries 2000000  deliveries per fan-out throughput run
  --latency-n 1000           fan-out N that also get a latency run (empty: none)
  --latency-rate 200         changes per second of the latency runs
  --latency-secs 5           seconds of each latency run
  --partitioned-n 10000      subscribers of the partitioned scenario
  --rooms 1000               rooms they are spread over
  --partitioned-changes 20000  changes of the routed runs
  --broadcast-changes 2000   changes of the coarse + filters and alternative runs
  --payload-n 1000           subscribers of the payload scenario
  --payload-changes 2000     changes per payload run
  --memory-n 10000           idle connections of the memory scenario
  --window 256               changes in flight at most
  --writers 64               tasks saving changes concurrently (throughput runs)
                             (GRAPHEX_BENCH_BATCH=k: graphex saves the indexed model's rows by group
                             commit, up to k per insert_many + graphex::announce_many; unset: one
                             insert per change, announced by its hooks)
  --settle-secs 2            wait for late deliveries
  --systems ceiling,ceiling-unpaced,graphex,alternative
                             (also graphex-standard: graphex's native field over graphql-transport-ws;
                             the standard scenario runs it always, graphex and alternative if listed)
  --hostile-rate 50          changes per second the hostile scenario's legitimate client receives
  --hostile-secs 5           seconds of each hostile input's baseline and attack windows
  --hostile-scale 1          hostile input sizes times this (never below what the default limits refuse)
  --hostile-inputs ''        hostile inputs to send (empty: all): sse-aliases,sse-aliases-big,data-list,
                             body-announced,body-chunked,text-plain,operation-id,subscribe-aliases,
                             typename-aliases,enum-strings,nesting,sockets,fragment-bomb
  --hostile-timeout-secs 30  bound on one hostile input's wall time
  --resume-n 1000            clients that drop their sockets and resume after their last cursor
  --resume-changes 100       changes made while they are away (the history keeps 1 000)
  --resume-live 10           live changes sent after the replay
  --standard-n 1000          graphql-transport-ws clients on graphex's native messageChanges (issue 18),
                             beside the two-channel fan-out and the alternative with as many clients
  --standard-changes 2000    changes per standard run (each to every client)
  --mutations-n 200          two-channel sockets of the mutations scenario (issue 18)
  --mutations-rooms 4        rooms they are spread over (one room each)
  --mutations-count 20000    rows created by GraphQL mutations over HTTP per run
  --mutations-in-flight 8    mutations in flight (one keep-alive HTTP connection each)
  --repeat 1                 runs of each scenario; above 1, a table of medians follows
  --out target/bench         where the JSON goes";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("no tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if args.first().map(String::as_str) == Some("serve") {
        runtime.block_on(serve(&args[1..]))
    } else if args.first().map(String::as_str) == Some("serve-redis") {
        runtime.block_on(graphex_bench::redis_scenario::serve(&args[1..]))
    } else if args.first().map(String::as_str) == Some("redis") {
        runtime.block_on(redis_scenario(&args[1..]))
    } else if args.first().map(String::as_str) == Some("capture") {
        runtime.block_on(capture_scenario(&args[1..]))
    } else {
        runtime.block_on(bench(&args))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: &[String]) -> Result<(), BenchError> {
    const SERVE_USAGE: &str =
        "usage: graphex-bench serve <system> <model> [no-db] [no-history] [raised-limits|default-limits]";
    let [system, model, flags @ ..] = args else { return Err(BenchError::new(SERVE_USAGE)) };
    let mut serve = Serve::default();
    for flag in flags {
        match flag.as_str() {
            "no-db" => serve.save = false,
            "no-history" => serve.history = false,
            "raised-limits" => serve.limits = Limits::Raised,
            "default-limits" => serve.limits = Limits::Default,
            _ => return Err(BenchError::new(SERVE_USAGE)),
        }
    }
    raise_open_files_limit()?;
    remote::serve(system.parse()?, remote::parse_model(model)?, serve).await
}

const REDIS_USAGE: &str = "usage: graphex-bench redis [options]
  --url redis://127.0.0.1:6379/0  the Redis both processes share (or GRAPHEX_BENCH_REDIS_URL)
  --changes 100000           changes per run
  --n 1,100                  subscribed sockets on the receiving process (one run each)
  --window 1000              changes whose deliveries may be outstanding
  --settle-secs 2            wait for late deliveries
  --out target/bench         where redis.json goes";

/// Scenario 5: two processes through the Redis layer vs raw redis-rs pub/sub.
async fn redis_scenario(args: &[String]) -> Result<(), BenchError> {
    let mut options = graphex_bench::redis_scenario::RedisOptions::default();
    if let Ok(url) = std::env::var("GRAPHEX_BENCH_REDIS_URL") {
        options.url = url;
    }
    let mut out = PathBuf::from("target/bench");
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| BenchError::new(format!("{flag} needs a value\n{REDIS_USAGE}")))?;
        let bad = || BenchError::new(format!("bad value {value:?} for {flag}"));
        match flag.as_str() {
            "--url" => options.url = value.clone(),
            "--changes" => options.changes = value.parse().map_err(|_| bad())?,
            "--n" => options.n = value.split(',').map(str::parse).collect::<Result<_, _>>().map_err(|_| bad())?,
            "--window" => options.window = value.parse().map_err(|_| bad())?,
            "--settle-secs" => options.settle_secs = value.parse().map_err(|_| bad())?,
            "--out" => out = PathBuf::from(value),
            _ => return Err(BenchError::new(format!("unknown option {flag}\n{REDIS_USAGE}"))),
        }
    }
    raise_open_files_limit()?;
    let report = graphex_bench::redis_scenario::run(&options, &std::env::current_exe()?).await?;
    print!("{}", graphex_bench::redis_scenario::table(&report));
    std::fs::create_dir_all(&out)?;
    let path = out.join("redis.json");
    std::fs::write(&path, serde_json::to_string_pretty(&serde_json::json!({"machine": machine(), "report": report}))?)?;
    println!("written {}", path.display());
    Ok(())
}

const CAPTURE_USAGE: &str = "usage: graphex-bench capture [options]
  --url postgres://...       a server with wal_level=logical and a replication role (default: a
                             throwaway cluster of the benchmark's own, from /usr/lib/postgresql/*/bin)
  --changes 20000            changes per throughput run
  --n 1,100                  in-process subscribers (one set of runs each)
  --writers 8                tasks inserting concurrently
  --window 1000              changes whose deliveries may be outstanding (throughput runs)
  --latency-rate 200         changes per second of the latency runs
  --latency-secs 5           seconds of each latency run
  --settle-secs 2            wait for late deliveries
  --repeat 3                 runs of the scenario; above 1, a table of medians follows
  --out target/bench         where capture.json goes";

/// Issue 17: the SeaORM hooks against capture from PostgreSQL's log.
async fn capture_scenario(args: &[String]) -> Result<(), BenchError> {
    use graphex_bench::capture_scenario::{self as capture, CaptureOptions};
    let mut options = CaptureOptions::default();
    let (mut repeat, mut out) = (3usize, PathBuf::from("target/bench"));
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| BenchError::new(format!("{flag} needs a value\n{CAPTURE_USAGE}")))?;
        let bad = || BenchError::new(format!("bad value {value:?} for {flag}"));
        match flag.as_str() {
            "--url" => options.url = Some(value.clone()),
            "--changes" => options.changes = value.parse().map_err(|_| bad())?,
            "--n" => options.n = value.split(',').map(str::parse).collect::<Result<_, _>>().map_err(|_| bad())?,
            "--writers" => options.writers = value.parse().map_err(|_| bad())?,
            "--window" => options.window = value.parse().map_err(|_| bad())?,
            "--latency-rate" => options.latency_rate = value.parse().map_err(|_| bad())?,
            "--latency-secs" => options.latency_secs = value.parse().map_err(|_| bad())?,
            "--settle-secs" => options.settle_secs = value.parse().map_err(|_| bad())?,
            "--repeat" => repeat = value.parse().map_err(|_| bad())?,
            "--out" => out = PathBuf::from(value),
            _ => return Err(BenchError::new(format!("unknown option {flag}\n{CAPTURE_USAGE}"))),
        }
    }
    // Dropped (stopped and removed) when the scenario ends, however it ends.
    let (_cluster, url) = match &options.url {
        Some(url) => (None, url.clone()),
        None => {
            let cluster = graphex_bench::logical::Cluster::start()?.ok_or_else(|| {
                BenchError::new("no PostgreSQL binaries in /usr/lib/postgresql/*/bin: pass --url to a server with wal_level=logical")
            })?;
            println!("own PostgreSQL {} cluster with wal_level=logical on port {}", cluster.version(), cluster.port);
            let url = cluster.url();
            (Some(cluster), url)
        }
    };
    let mut reports = Vec::new();
    for index in 1..=repeat.max(1) {
        if repeat > 1 {
            println!("repeat {index} of {repeat}");
        }
        let report = capture::run(&options, &url).await?;
        print!("{}", capture::table(&report));
        reports.push(report);
    }
    std::fs::create_dir_all(&out)?;
    let path = out.join("capture.json");
    let json = match capture::median(&reports).filter(|_| reports.len() > 1) {
        Some(median) => {
            println!("\nmedian of {} repeats", reports.len());
            print!("{}", capture::table(&median));
            serde_json::json!({"machine": machine(), "median": median, "repeats": reports})
        }
        None => serde_json::json!({"machine": machine(), "report": reports.pop()}),
    };
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("written {}", path.display());
    Ok(())
}

async fn bench(args: &[String]) -> Result<(), BenchError> {
    let Some(which) = args.first() else { return Err(BenchError::new(USAGE)) };
    let scenarios = match which.as_str() {
        "all" => Scenario::ALL.to_vec(),
        name => vec![Scenario::parse(name).ok_or_else(|| BenchError::new(USAGE))?],
    };
    let (options, out) = parse_options(&args[1..])?;
    let limit = raise_open_files_limit()?;
    println!("open files limit: {limit}");
    std::fs::create_dir_all(&out)?;
    for scenario in scenarios {
        let mut reports = Vec::new();
        for repeat in 1..=options.repeat.max(1) {
            if options.repeat > 1 {
                println!("repeat {repeat} of {}", options.repeat);
            }
            let report = scenarios::run(scenario, &options).await?;
            print!("{}", scenarios::table(&report));
            reports.push(report);
        }
        let path = out.join(format!("{}.json", scenario.name()));
        let json = match scenarios::median(&reports).filter(|_| reports.len() > 1) {
            Some(median) => {
                println!("\nmedian of {} repeats", reports.len());
                print!("{}", scenarios::table(&median));
                serde_json::json!({"machine": machine(), "median": median, "repeats": reports})
            }
            None => serde_json::json!({"machine": machine(), "report": reports.pop()}),
        };
        std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
        println!("written {}\n", path.display());
    }
    Ok(())
}

fn parse_options(args: &[String]) -> Result<(Options, PathBuf), BenchError> {
    let mut options = Options { server_exe: Some(std::env::current_exe()?), ..Options::default() };
    let mut out = PathBuf::from("target/bench");
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| BenchError::new(format!("{flag} needs a value\n{USAGE}")))?;
        let bad = |_| BenchError::new(format!("bad value {value:?} for {flag}"));
        let float = || value.parse::<f64>().map_err(|_| BenchError::new(format!("bad value {value:?} for {flag}")));
        match flag.as_str() {
            "--fanout-n" => {
                options.fanout_n = value.split(',').map(str::parse).collect::<Result<_, _>>().map_err(bad)?;
            }
            "--latency-n" => {
                options.latency_n = value
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .map_err(bad)?;
            }
            "--fanout-deliveries" => options.fanout_deliveries = value.parse().map_err(bad)?,
            "--latency-rate" => options.latency_rate = float()?,
            "--latency-secs" => options.latency_secs = float()?,
            "--partitioned-n" => options.partitioned_n = value.parse().map_err(bad)?,
            "--rooms" => options.rooms = value.parse().map_err(bad)?,
            "--partitioned-changes" => options.partitioned_changes = value.parse().map_err(bad)?,
            "--broadcast-changes" => options.broadcast_changes = value.parse().map_err(bad)?,
            "--payload-n" => options.payload_n = value.parse().map_err(bad)?,
            "--payload-changes" => options.payload_changes = value.parse().map_err(bad)?,
            "--memory-n" => options.memory_n = value.parse().map_err(bad)?,
            "--writers" => options.writers = value.parse().map_err(bad)?,
            "--window" => options.window = value.parse().map_err(bad)?,
            "--settle-secs" => options.settle_secs = float()?,
            "--repeat" => options.repeat = value.parse().map_err(bad)?,
            "--hostile-rate" => options.hostile_rate = float()?,
            "--hostile-secs" => options.hostile_secs = float()?,
            "--hostile-scale" => options.hostile_scale = float()?,
            "--hostile-timeout-secs" => options.hostile_timeout_secs = float()?,
            "--resume-n" => options.resume_n = value.parse().map_err(bad)?,
            "--resume-changes" => options.resume_changes = value.parse().map_err(bad)?,
            "--resume-live" => options.resume_live = value.parse().map_err(bad)?,
            "--standard-n" => options.standard_n = value.parse().map_err(bad)?,
            "--standard-changes" => options.standard_changes = value.parse().map_err(bad)?,
            "--mutations-n" => options.mutations_n = value.parse().map_err(bad)?,
            "--mutations-rooms" => options.mutations_rooms = value.parse().map_err(bad)?,
            "--mutations-count" => options.mutations_count = value.parse().map_err(bad)?,
            "--mutations-in-flight" => options.mutations_in_flight = value.parse().map_err(bad)?,
            "--hostile-inputs" => {
                options.hostile_inputs = value.split(',').filter(|key| !key.is_empty()).map(str::to_owned).collect();
            }
            "--systems" => options.systems = value.split(',').map(str::parse).collect::<Result<_, _>>()?,
            "--out" => out = PathBuf::from(value),
            _ => return Err(BenchError::new(format!("unknown option {flag}\n{USAGE}"))),
        }
    }
    Ok((options, out))
}

/// What the figures were measured on.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']));
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo.lines().find_map(|line| line.strip_prefix("MemTotal:")).map(str::trim);
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory": memory,
    })
}

//! graphex benchmarks: fan-out throughput and latency, partitioned
//! delivery, payload modes and memory per connection, each measured against
//! a raw WebSocket ceiling and an async-graphql alternative in the same run;
//! hostile inputs (issue 15), resuming after a cursor (issue 16), native
//! subscriptions over `graphql-transport-ws` and rows created by GraphQL
//! mutations (issue 18).
//!
//! The binary (`cargo run --release -p graphex-bench -- <scenario>`) prints a
//! table and writes `target/bench/<scenario>.json`; the smoke tests run every
//! scenario at a tiny size through [`scenarios::run`].

pub mod capture_scenario;
pub mod entities;
pub mod hostile;
pub mod load;
pub mod logical;
pub mod mutations;
pub mod redis_scenario;
pub mod remote;
pub mod resume;
pub mod scenarios;
pub mod systems;

/// Anything that stops a benchmark run.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> BenchError {
        BenchError(message.into())
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

macro_rules! from_error {
    ($($source:ty),* $(,)?) => {$(
        impl From<$source> for BenchError {
            fn from(error: $source) -> Self {
                BenchError(error.to_string())
            }
        }
    )*};
}

from_error!(
    std::io::Error,
    sea_orm::DbErr,
    serde_json::Error,
    hyper::Error,
    tokio_tungstenite::tungstenite::Error,
    std::num::ParseIntError,
    redis::RedisError,
);

/// Open files wanted: 10 000 clients and their 10 000 server sockets live
/// in one process, plus files, pipes and the HTTP connections.
const OPEN_FILES_WANTED: u64 = 65_536;

/// Raises the open-files limit: both limits to 65 536 where the process may
/// (root, or a hard limit already above), else the soft limit to the hard
/// one. Returns the limit now in force.
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < OPEN_FILES_WANTED && rlimit::Resource::NOFILE.set(OPEN_FILES_WANTED, hard.max(OPEN_FILES_WANTED)).is_ok()
    {
        return Ok(OPEN_FILES_WANTED);
    }
    rlimit::increase_nofile_limit(u64::MAX)
}

/// Resident memory of this process in KiB (`VmRSS` of `/proc/self/status`).
pub fn resident_kib() -> Result<u64, BenchError> {
    status_kib("VmRSS:")
}

/// The peak resident memory of this process in KiB since it started or
/// since the last [`reset_peak_resident`] (`VmHWM` of `/proc/self/status`).
pub fn peak_resident_kib() -> Result<u64, BenchError> {
    status_kib("VmHWM:")
}

/// Resets this process's peak resident memory (`VmHWM`) to its current
/// resident memory (`5` written to `/proc/self/clear_refs`, Linux 4.0+).
pub fn reset_peak_resident() -> Result<(), BenchError> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    Ok(())
}

fn status_kib(key: &str) -> Result<u64, BenchError> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::new(format!("no {key} in /proc/self/status")))
}

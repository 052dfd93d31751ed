//! The server under test runs in a child process (`graphex-bench serve
//! <system> <model> [no-db] [no-history] [raised-limits|default-limits]`): 10 000 clients and their 10 000 server sockets
//! would not fit one process's open-files limit, and the server's resident
//! memory must be its own, not the load generator's.
//!
//! The child prints `listening <addr>`, then obeys tagged commands on its
//! standard input, each answered by one line with the same tag, and runs
//! them concurrently (so concurrent writers stay concurrent):
//! `<tag> emit <seq> <room>` -> `<tag> ok`, `<tag> count` -> `<tag> <subscribers>`,
//! `<tag> rss` -> `<tag> <VmRSS KiB>`, `<tag> dropped` -> `<tag> <count>`,
//! `<tag> reset-peak` -> `<tag> ok` (resets `VmHWM` to `VmRSS`),
//! `<tag> peak` -> `<tag> <VmHWM KiB>` (the peak since the last reset).
//! A failure answers `<tag> error <message>`. The child exits when its
//! standard input closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Mutex as AsyncMutex, mpsc, oneshot};

use crate::systems::{self, Model, Serve, System, Target};
use crate::{BenchError, peak_resident_kib, reset_peak_resident, resident_kib};

/// The child side: serves `system` and obeys commands until stdin closes.
pub async fn serve(system: System, model: Model, serve: Serve) -> Result<(), BenchError> {
    let server = systems::start_with(system, model, serve).await?;
    let target = server.target.clone();
    // The parent's pipes, read and written through the reactor: tokio's
    // `stdin()`/`stdout()` hand every read and write to a blocking thread,
    // two thread switches per command that the server under test would pay.
    let not_a_pipe = |error: std::io::Error| {
        BenchError::new(format!("serve talks to the benchmark over pipes on stdin and stdout: {error}"))
    };
    let input = std::io::stdin().as_fd().try_clone_to_owned()?;
    let input = pipe::Receiver::from_owned_fd(input).map_err(not_a_pipe)?;
    let output = std::io::stdout().as_fd().try_clone_to_owned()?;
    let mut output = pipe::Sender::from_owned_fd(output).map_err(not_a_pipe)?;
    let (answers, mut outgoing) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut batch = String::new();
        while let Some(line) = outgoing.recv().await {
            // The answers ready now leave in one write.
            batch.push_str(&line);
            while let Ok(line) = outgoing.try_recv() {
                batch.push_str(&line);
            }
            if output.write_all(batch.as_bytes()).await.is_err() {
                break;
            }
            batch.clear();
        }
    });
    let _ = answers.send(format!("listening {}\n", server.addr));
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        let (target, answers) = (target.clone(), answers.clone());
        tokio::spawn(async move {
            let mut words = line.split_whitespace();
            let tag = words.next().unwrap_or_default().to_owned();
            let command: Vec<&str> = words.collect();
            let answer = obey(target.as_ref(), &command).await.unwrap_or_else(|error| format!("error {error}"));
            let _ = answers.send(format!("{tag} {answer}\n"));
        });
    }
    drop(answers);
    let _ = writer.await;
    Ok(())
}

async fn obey(target: &dyn Target, command: &[&str]) -> Result<String, BenchError> {
    match command {
        ["emit", seq, room] => target.emit(seq.parse()?, room.parse()?).await.map(|()| "ok".to_owned()),
        ["count"] => Ok(target.subscribers().await?.to_string()),
        ["dropped"] => Ok(target.dropped().to_string()),
        ["rss"] => Ok(resident_kib()?.to_string()),
        ["reset-peak"] => reset_peak_resident().map(|()| "ok".to_owned()),
        ["peak"] => Ok(peak_resident_kib()?.to_string()),
        other => Err(BenchError::new(format!("unknown command {other:?}"))),
    }
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<String>>>>;

/// The parent side: a child server process and its command pipe.
pub struct RemoteServer {
    /// Where the child listens.
    pub addr: SocketAddr,
    stdin: AsyncMutex<ChildStdin>,
    waiting: Waiting,
    next_tag: AtomicU64,
    pid: Option<u32>,
    _child: Child,
}

impl RemoteServer {
    /// Starts `exe serve <system> <model> [no-db]` and waits for its address
    /// (graphex with [`crate::systems::Limits::Raised`] and its history).
    pub async fn spawn(exe: &Path, system: System, model: Model, save: bool) -> Result<RemoteServer, BenchError> {
        RemoteServer::spawn_with(exe, system, model, Serve { save, ..Serve::default() }).await
    }

    /// As [`RemoteServer::spawn`], graphex as `serve` says.
    pub async fn spawn_with(
        exe: &Path,
        system: System,
        model: Model,
        serve: Serve,
    ) -> Result<RemoteServer, BenchError> {
        let model = serde_json::to_value(model)?.as_str().unwrap_or_default().to_owned();
        let mut command = wrapped(exe);
        command.args(["serve", system.name(), &model]);
        command.args(serve.flags());
        // A profiler writes its results when the server exits: a wrapped
        // server is let exit on its own (its stdin closes) instead of killed.
        let kill_on_drop = std::env::var_os(SERVER_WRAPPER).is_none();
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).kill_on_drop(kill_on_drop).spawn()?;
        let pid = child.id();
        let stdin = child.stdin.take().ok_or_else(|| BenchError::new("no child stdin"))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| BenchError::new("no child stdout"))?).lines();
        let line = lines.next_line().await?.ok_or_else(|| BenchError::new("child exited before listening"))?;
        let addr = line
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| BenchError::new(format!("unexpected child line {line:?}")))?;
        let waiting: Waiting = Arc::default();
        let answers = waiting.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some((tag, answer)) = line.split_once(' ') else { continue };
                let Ok(tag) = tag.parse::<u64>() else { continue };
                let sender = answers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&tag);
                if let Some(sender) = sender {
                    let _ = sender.send(answer.to_owned());
                }
            }
        });
        Ok(RemoteServer {
            addr,
            stdin: AsyncMutex::new(stdin),
            waiting,
            next_tag: AtomicU64::new(1),
            pid,
            _child: child,
        })
    }

    async fn ask(&self, command: &str) -> Result<String, BenchError> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        let (sender, answer) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(tag, sender);
        {
            let mut stdin = self.stdin.lock().await;
            stdin.write_all(format!("{tag} {command}\n").as_bytes()).await?;
            stdin.flush().await?;
        }
        let answer = answer.await.map_err(|_| BenchError::new("the server process exited"))?;
        match answer.strip_prefix("error ") {
            Some(error) => Err(BenchError::new(format!("server process: {error}"))),
            None => Ok(answer),
        }
    }

    /// The child's resident memory in KiB.
    pub async fn resident_kib(&self) -> Result<u64, BenchError> {
        Ok(self.ask("rss").await?.parse()?)
    }

    /// Resets the child's peak resident memory to its current resident memory.
    pub async fn reset_peak(&self) -> Result<(), BenchError> {
        self.ask("reset-peak").await.map(drop)
    }

    /// The child's peak resident memory in KiB since the last [`RemoteServer::reset_peak`].
    pub async fn peak_kib(&self) -> Result<u64, BenchError> {
        Ok(self.ask("peak").await?.parse()?)
    }

    /// The child's CPU time so far (user + system, every thread, those
    /// ended included), in seconds: `utime + stime` of `/proc/<pid>/stat`,
    /// in clock ticks of 1/100 s (Linux's `USER_HZ`, 100 on every
    /// architecture it exports to user space).
    pub fn cpu_seconds(&self) -> Result<f64, BenchError> {
        let pid = self.pid.ok_or_else(|| BenchError::new("the server process has no pid"))?;
        cpu_seconds_of(pid)
    }

    /// Changes the child dropped on its own side.
    pub async fn dropped(&self) -> Result<u64, BenchError> {
        Ok(self.ask("dropped").await?.parse()?)
    }
}

#[async_trait::async_trait]
impl Target for RemoteServer {
    async fn emit(&self, seq: usize, room: i32) -> Result<(), BenchError> {
        self.ask(&format!("emit {seq} {room}")).await.map(drop)
    }

    async fn subscribers(&self) -> Result<usize, BenchError> {
        Ok(self.ask("count").await?.parse()?)
    }
}

/// The environment variable naming a command (words split on whitespace)
/// the server process runs under, for profiling: with
/// `GRAPHEX_BENCH_SERVER_WRAPPER="valgrind --tool=callgrind"` every server
/// child is started as `valgrind --tool=callgrind <exe> serve ...`.
pub const SERVER_WRAPPER: &str = "GRAPHEX_BENCH_SERVER_WRAPPER";

/// The command that starts `exe`, under [`SERVER_WRAPPER`] if it is set.
fn wrapped(exe: &Path) -> Command {
    let wrapper = std::env::var(SERVER_WRAPPER).unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(exe);
            command
        }
        None => Command::new(exe),
    }
}

/// Parses a model name as written by `serve` arguments.
pub fn parse_model(name: &str) -> Result<Model, BenchError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| BenchError::new(format!("unknown model {name:?}")))
}

/// The CPU time (user + system) of process `pid` so far, in seconds (see
/// [`RemoteServer::cpu_seconds`]).
pub fn cpu_seconds_of(pid: u32) -> Result<f64, BenchError> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: fields are counted after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]: utime (14) and stime (15) are fields[11] and fields[12].
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .ok_or_else(|| BenchError::new(format!("unreadable /proc/{pid}/stat")))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / TICKS_PER_SECOND)
}

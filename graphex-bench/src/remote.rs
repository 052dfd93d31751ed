//! A server under test in a child process, so that its resident memory is
//! its own and not the load generator's. The child (`graphex-bench serve
//! <system> <model>`) prints `listening <addr>`, then answers one line per
//! command read on its standard input: `emit <seq> <room>` -> `ok`, `count` -> the
//! number of subscribers, `rss` -> its VmRSS in KiB. It exits when its
//! standard input closes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::systems::{self, Model, System, Target};
use crate::{BenchError, resident_kib};

/// The child side: serves `system` and obeys commands until stdin closes.
pub async fn serve(system: System, model: Model) -> Result<(), BenchError> {
    let server = systems::start(system, model).await?;
    let mut stdout = tokio::io::stdout();
    stdout.write_all(format!("listening {}\n", server.addr).as_bytes()).await?;
    stdout.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let answer = match line.split_once(' ').unwrap_or((line.as_str(), "")) {
            ("emit", args) => {
                let (seq, room) = args.trim().split_once(' ').unwrap_or((args, "0"));
                server.target.emit(seq.parse()?, room.parse()?).await?;
                "ok".to_owned()
            }
            ("count", _) => server.target.subscribers().await?.to_string(),
            ("rss", _) => resident_kib()?.to_string(),
            (other, _) => format!("error: unknown command {other:?}"),
        };
        stdout.write_all(format!("{answer}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    Ok(())
}

/// The parent side: a child server process and its command pipe.
pub struct RemoteServer {
    /// Where the child listens.
    pub addr: SocketAddr,
    pipe: Mutex<(ChildStdin, Lines<BufReader<ChildStdout>>)>,
    _child: Child,
}

impl RemoteServer {
    /// Starts `exe serve <system> <model>` and waits for its address.
    pub async fn spawn(exe: &Path, system: System, model: Model) -> Result<RemoteServer, BenchError> {
        let model = serde_json::to_value(model)?.as_str().unwrap_or_default().to_owned();
        let mut child = Command::new(exe)
            .args(["serve", system.name(), &model])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| BenchError::new("no child stdin"))?;
        let mut lines = BufReader::new(child.stdout.take().ok_or_else(|| BenchError::new("no child stdout"))?).lines();
        let line = lines.next_line().await?.ok_or_else(|| BenchError::new("child exited before listening"))?;
        let addr = line
            .strip_prefix("listening ")
            .and_then(|addr| addr.parse().ok())
            .ok_or_else(|| BenchError::new(format!("unexpected child line {line:?}")))?;
        Ok(RemoteServer { addr, pipe: Mutex::new((stdin, lines)), _child: child })
    }

    async fn ask(&self, command: &str) -> Result<String, BenchError> {
        let mut pipe = self.pipe.lock().await;
        let (stdin, lines) = &mut *pipe;
        stdin.write_all(format!("{command}\n").as_bytes()).await?;
        stdin.flush().await?;
        let answer = lines.next_line().await?.ok_or_else(|| BenchError::new("child exited"))?;
        if answer.starts_with("error") {
            return Err(BenchError::new(answer));
        }
        Ok(answer)
    }

    /// The child's resident memory in KiB.
    pub async fn resident_kib(&self) -> Result<u64, BenchError> {
        Ok(self.ask("rss").await?.parse()?)
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

/// Parses a model name as written by `serve` arguments.
pub fn parse_model(name: &str) -> Result<Model, BenchError> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
        .map_err(|_| BenchError::new(format!("unknown model {name:?}")))
}

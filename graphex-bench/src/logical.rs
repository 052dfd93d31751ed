//! A throwaway PostgreSQL cluster with `wal_level=logical`, for the capture
//! scenario (adapted from the integration tests' `support/logical.rs`: the
//! machine's shared cluster runs `replica`, and changing it needs a
//! restart). `initdb` and `pg_ctl` from `/usr/lib/postgresql/<version>/bin`
//! (the newest), run as a non-root user (PostgreSQL refuses root: as root,
//! the user `graphex-pg` is made if missing). Port chosen free; stopped and
//! removed on drop.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::BenchError;

/// The user the cluster runs as when the benchmark runs as root.
const USER: &str = "graphex-pg";

/// A running cluster of this process.
#[derive(Debug)]
pub struct Cluster {
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_user: Option<&'static str>,
}

/// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.starts_with(b"0\n"))
}

impl Cluster {
    /// Starts one; `Ok(None)` without PostgreSQL's binaries (the caller
    /// decides whether that is a skip or a failure).
    pub fn start() -> Result<Option<Cluster>, BenchError> {
        let Some(bin) = bin_dir() else { return Ok(None) };
        let as_user = is_root().then_some(USER);
        if as_user.is_some() {
            // Made once; a concurrent run making it too is fine.
            let _ = Command::new("useradd").args(["--system", "--no-create-home", USER]).stderr(Stdio::null()).status();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("graphex-bench-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        // From here on, dropping the cluster removes the directory.
        let cluster = Cluster { port, dir, bin, as_user };
        if as_user.is_some() {
            let status = Command::new("chown").arg(USER).arg(&cluster.dir).status()?;
            if !status.success() {
                return Err(BenchError::new(format!("chown {USER} {} failed", cluster.dir.display())));
            }
        }
        cluster.run("initdb", &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "--no-sync"])?;
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_wal_senders=4 \
             -c max_replication_slots=4 -c fsync=off -c wal_sender_timeout=4s",
            cluster.dir.display()
        );
        let log = cluster.dir.join("postgres.log");
        cluster
            .run("pg_ctl", &["-D", &cluster.data(), "-l", &log.display().to_string(), "-w", "-o", &options, "start"])?;
        Ok(Some(cluster))
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    /// `program` of PostgreSQL's binaries, as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        match self.as_user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), BenchError> {
        let output = self.command(program).args(args).output()?;
        if output.status.success() {
            return Ok(());
        }
        Err(BenchError::new(format!(
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }

    /// The PostgreSQL version of its binaries (`16` of `/usr/lib/postgresql/16/bin`).
    pub fn version(&self) -> String {
        self.bin
            .parent()
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.command("pg_ctl").args(["-D", data.as_str(), "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

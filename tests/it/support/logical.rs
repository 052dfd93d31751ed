//! A PostgreSQL cluster of the test's own with `wal_level=logical` (change
//! capture needs it; the machine's shared cluster runs `replica`, and
//! changing it needs a restart). `initdb` and `pg_ctl` from
//! `/usr/lib/postgresql/<version>/bin`, run as a non-root user (PostgreSQL
//! refuses root: as root, the user `graphex-pg` is made if missing). Port
//! chosen free; stopped and removed on drop. Without the binaries the test
//! says `skipped:`, unless `GRAPHEX_TEST_POSTGRES_URL` is set (then CI has
//! PostgreSQL installed and a missing binary is a failure).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use super::databases::POSTGRES_ENV;

/// The user the cluster runs as when the tests run as root.
const USER: &str = "graphex-pg";

pub struct Cluster {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    as_user: Option<&'static str>,
}

fn bin_dir() -> Option<PathBuf> {
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
    /// Starts one; `None` (after saying `skipped:`) without PostgreSQL's binaries.
    pub fn start(what: &str) -> Option<Cluster> {
        Cluster::start_with(what, "logical")
    }

    /// Starts one with `wal_level` (`logical` or `replica`). Its walsenders
    /// time out after 4 s, so an idle stream gets a keep-alive every 2 s.
    pub fn start_with(what: &str, wal_level: &str) -> Option<Cluster> {
        Cluster::start_full(what, wal_level, false)
    }

    /// A logical cluster serving TLS too, with a certificate of its own for
    /// `127.0.0.1` (made with `openssl`): [`Cluster::certificate`].
    pub fn start_tls(what: &str) -> Option<Cluster> {
        Cluster::start_full(what, "logical", true)
    }

    /// The authority that signed the certificate a [`Cluster::start_tls`]
    /// cluster serves (PEM).
    pub fn certificate(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn start_full(what: &str, wal_level: &str, tls: bool) -> Option<Cluster> {
        let Some(bin) = bin_dir() else {
            assert!(
                std::env::var_os(POSTGRES_ENV).is_none(),
                "PostgreSQL's initdb is missing but {POSTGRES_ENV} is set"
            );
            println!("skipped: {what} (needs PostgreSQL's initdb)");
            return None;
        };
        let as_user = is_root().then_some(USER);
        if as_user.is_some() {
            // Made once; a concurrent test making it too is fine.
            let _ = Command::new("useradd").args(["--system", "--no-create-home", USER]).stderr(Stdio::null()).status();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("graphex-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        if as_user.is_some() {
            let status = Command::new("chown").arg(USER).arg(&dir).status().expect("chown");
            assert!(status.success(), "chown {USER} {}", dir.display());
        }
        let cluster = Cluster { port, dir, bin, as_user };
        cluster.run("initdb", &["-D", &cluster.data(), "-U", "postgres", "--auth=trust", "--no-sync"]);
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c wal_level={wal_level} -c max_wal_senders=32 \
             -c max_replication_slots=32 -c fsync=off -c wal_sender_timeout=4s",
            cluster.dir.display()
        );
        if tls {
            // An authority, and the server's certificate for 127.0.0.1 signed by it.
            let (cert, key) = (cluster.dir.join("server.crt"), cluster.dir.join("server.key"));
            std::fs::write(cluster.dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").expect("extensions file");
            let path = |name: &str| cluster.dir.join(name).display().to_string();
            let openssl = |args: &[&str]| {
                let output = Command::new("openssl").args(args).output().expect("openssl runs");
                assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
            };
            let (ca, ca_key) = (path("ca.crt"), path("ca.key"));
            let (csr, cert_path, key_path) = (path("server.csr"), path("server.crt"), path("server.key"));
            let ext = path("server.ext");
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=graphex test CA",
                "-keyout",
                &ca_key,
                "-out",
                &ca,
            ]);
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                &key_path,
                "-out",
                &csr,
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &ext,
                "-out",
                &cert_path,
            ]);
            for file in [&cert, &key] {
                if let Some(user) = cluster.as_user {
                    assert!(Command::new("chown").arg(user).arg(file).status().expect("chown").success());
                }
            }
            assert!(Command::new("chmod").arg("600").arg(&key).status().expect("chmod").success());
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        let log = cluster.dir.join("postgres.log");
        cluster
            .run("pg_ctl", &["-D", &cluster.data(), "-l", &log.display().to_string(), "-w", "-o", &options, "start"]);
        Some(cluster)
    }

    /// One cluster for the whole test process (the capture variant of
    /// `each_database`, a database and a slot per test): started on first
    /// use, stopped and removed by a watchdog once this process has exited
    /// (a static is never dropped). `None` (after saying `skipped:`)
    /// without PostgreSQL's binaries.
    pub fn shared(what: &str) -> Option<&'static Cluster> {
        static SHARED: OnceLock<Option<Cluster>> = OnceLock::new();
        let cluster = SHARED
            .get_or_init(|| {
                let cluster = Cluster::start_with("the shared capture cluster", "logical")?;
                cluster.stop_after(std::process::id());
                Some(cluster)
            })
            .as_ref();
        if cluster.is_none() {
            println!("skipped: {what} (needs PostgreSQL's initdb)");
        }
        cluster
    }

    /// A detached shell that waits for process `pid` to end, then stops the
    /// cluster and removes its directory.
    fn stop_after(&self, pid: u32) {
        let pg_ctl = self.bin.join("pg_ctl").display().to_string();
        let stop = match self.as_user {
            Some(user) => format!("runuser -u {user} -- {pg_ctl}"),
            None => pg_ctl,
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D {} -m immediate stop; rm -rf {}",
            self.data(),
            self.dir.display()
        );
        // Detached on purpose: it outlives this process, so nothing waits for it.
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the cluster's watchdog starts");
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

    fn run(&self, program: &str, args: &[&str]) {
        let output = self.command(program).args(args).output().expect("PostgreSQL's tools run");
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
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

//! A test body run on a fresh in-memory SQLite database; when
//! `GRAPHEX_TEST_POSTGRES_URL` is set, again on a PostgreSQL schema of its
//! own; when `GRAPHEX_TEST_MYSQL_URL` is set, again on a MySQL / MariaDB
//! database of its own (MariaDB's default collation, the hostile one: case-
//! insensitive and PAD SPACE); then in capture mode: on a database of its own in a `wal_level =
//! logical` cluster, where every [`crate::support::Server`] the body starts
//! captures the reference app's tables from the log instead of announcing
//! from the hooks (so a change announced twice, or not at all, fails).

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use crate::app;

/// The environment variable naming the PostgreSQL server of the second variant.
pub const POSTGRES_ENV: &str = "GRAPHEX_TEST_POSTGRES_URL";

/// The environment variable naming the MySQL or MariaDB server of the third
/// variant: a URL whose database each test replaces with one of its own.
pub const MYSQL_ENV: &str = "GRAPHEX_TEST_MYSQL_URL";

/// The collation of the tests' MySQL databases: MariaDB's default, which
/// ignores case and pads trailing spaces (MySQL 8 has it too).
pub const MYSQL_COLLATION: &str = "utf8mb4_general_ci";

/// Runs `body` on a fresh in-memory SQLite database, then, when
/// `GRAPHEX_TEST_POSTGRES_URL` is set, on a fresh PostgreSQL schema, and,
/// when `GRAPHEX_TEST_MYSQL_URL` is set, on a fresh MySQL database (each
/// dropped afterwards, even if the body panics).
pub async fn each_database<F, Fut>(body: F)
where
    F: Fn(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = app::connect("sqlite::memory:", None).await;
    run_variant("sqlite", body(db)).await;
    on_postgres("PostgreSQL variant", &body).await;
    on_mysql("MySQL variant", &body).await;
    in_capture_mode(body).await;
}

/// What a [`crate::support::Server`] started in capture mode captures from.
#[derive(Clone, Debug)]
pub struct CaptureMode {
    /// The test's database.
    pub url: String,
    /// The prefix of its slots and publications (one per server).
    pub slot: String,
    /// Each capturing server's barrier, by address (see
    /// `support::reference::Barrier`).
    pub barriers: std::sync::Arc<
        std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, crate::support::reference::Barrier>>,
    >,
}

tokio::task_local! {
    /// Set while a body runs in capture mode.
    pub static CAPTURE_MODE: CaptureMode;
}

/// Whether the body runs in capture mode (for the few tests whose subject
/// is what the hooks do not see).
pub fn capturing() -> bool {
    CAPTURE_MODE.try_with(|_| ()).is_ok()
}

/// The capture variant: a database of its own on the process's shared
/// logical cluster, a slot of its own; both dropped afterwards.
async fn in_capture_mode<F, Fut>(body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(cluster) = crate::support::logical::Cluster::shared("the capture variant") else { return };
    let name = unique_schema();
    let admin = Database::connect(cluster.url()).await.expect("the shared cluster answers");
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("database created");
    let url = format!("{}/{name}", cluster.url().rsplit_once('/').expect("a path").0);
    let db = app::connect(&url, None).await;
    let mode = CaptureMode { url, slot: name.clone(), barriers: Default::default() };
    let outcome = tokio::spawn(CAPTURE_MODE.scope(mode, body(db))).await;
    // The slot first (a database with one cannot be dropped); its session
    // may take a moment to end after the body's servers are gone.
    let drop_slot =
        format!("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{name}'");
    for _ in 0..100 {
        if admin.execute_unprepared(&drop_slot).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    if let Err(error) = admin.execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)")).await {
        eprintln!("could not drop database {name}: {error}");
    }
    if let Err(error) = outcome {
        eprintln!("failed in capture mode (database {name})");
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Runs `body` on a fresh PostgreSQL schema (dropped afterwards) when
/// `GRAPHEX_TEST_POSTGRES_URL` is set; says `skipped:` otherwise. For what
/// only PostgreSQL has.
pub async fn on_postgres<F, Fut>(what: &str, body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        println!("skipped: {what} (set {POSTGRES_ENV})");
        return;
    };
    let schema = unique_schema();
    let db = app::connect(&url, Some(&schema)).await;
    let outcome = tokio::spawn(body(db)).await;
    drop_schema(&url, &schema).await;
    if let Err(error) = outcome {
        eprintln!("failed on PostgreSQL (schema {schema})");
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Runs `body` on a fresh MySQL / MariaDB database with the reference app's
/// tables (dropped afterwards, even if the body panics) when
/// `GRAPHEX_TEST_MYSQL_URL` is set; says `skipped:` otherwise.
pub async fn on_mysql<F, Fut>(what: &str, body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(database) = MysqlDatabase::create(what).await else { return };
    let db = app::connect(&database.url, None).await;
    let outcome = tokio::spawn(body(db)).await;
    database.drop().await;
    if let Err(error) = outcome {
        eprintln!("failed on MySQL (database {})", database.name);
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A database of one test's own on the server of `GRAPHEX_TEST_MYSQL_URL`,
/// with [`MYSQL_COLLATION`]; [`MysqlDatabase::drop`] drops it.
#[derive(Debug)]
pub struct MysqlDatabase {
    /// Its name.
    pub name: String,
    /// The server's URL with this database.
    pub url: String,
    admin: DatabaseConnection,
}

impl MysqlDatabase {
    /// Creates one when `GRAPHEX_TEST_MYSQL_URL` is set; says `skipped:
    /// {what}` and returns `None` otherwise. A server that does not answer
    /// fails the test.
    pub async fn create(what: &str) -> Option<MysqlDatabase> {
        let Ok(base) = std::env::var(MYSQL_ENV) else {
            println!("skipped: {what} (set {MYSQL_ENV})");
            return None;
        };
        let name = unique_schema();
        let admin = Database::connect(&base).await.expect("MySQL reachable");
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE {MYSQL_COLLATION}"))
            .await
            .expect("database created");
        let (base, query) = base.split_once('?').map_or((base.as_str(), None), |(base, query)| (base, Some(query)));
        let server =
            base.rsplit_once('/').filter(|(server, _)| server.contains("//")).map_or(base, |(server, _)| server);
        let url = match query {
            Some(query) => format!("{server}/{name}?{query}"),
            None => format!("{server}/{name}"),
        };
        Some(MysqlDatabase { name, url, admin })
    }

    /// Drops the database (logging, not failing, when it cannot).
    pub async fn drop(&self) {
        if let Err(error) = self.admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS `{}`", self.name)).await {
            eprintln!("could not drop database {}: {error}", self.name);
        }
        let _ = self.admin.clone().close().await;
    }
}

async fn run_variant(name: &str, body: impl Future<Output = ()> + Send + 'static) {
    if let Err(error) = tokio::spawn(body).await {
        eprintln!("failed on the {name} variant");
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A schema name no other test (of this or another process) uses.
fn unique_schema() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("graphex_e2e_{}_{counter}_{random:016x}", std::process::id())
}

async fn drop_schema(url: &str, schema: &str) {
    let Ok(admin) = Database::connect(url).await else { return };
    if let Err(error) = admin.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        eprintln!("could not drop schema {schema}: {error}");
    }
    let _ = admin.close().await;
}

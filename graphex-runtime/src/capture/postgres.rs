//! The capture connection (feature `postgres-capture`): a
//! logical replication connection with pgoutput to a publication of the
//! registered models' tables, through a persistent slot; each committed
//! transaction's changes are published through the hub in order, and only
//! then is the transaction's end confirmed to PostgreSQL, so a crash or a
//! restart sends unconfirmed transactions again rather than losing them.
//!
//! A transaction sent again (its confirmation was lost in a crash or a
//! reconnect) is recognised by each change's log position, which the layer
//! keeps per stream beside the stream's offsets, and not published twice.
//!
//! One reader per slot among many processes: each capture opens a
//! replication session and takes the slot's advisory lock on it before
//! streaming (`pg_try_advisory_lock`); the others stand by and try again
//! every second, so when the leader's session ends (it stopped, or died
//! and PostgreSQL noticed) another takes over, from the slot's confirmed
//! position.
//!
//! A model registered for capture on a hub is no longer announced from its
//! hooks through that hub (no double delivery); `announce` and
//! `announce_many` still publish.
//!
//! TLS as libpq does it ([`TlsMode`], `sslmode` in the URL); TLS
//! failures are lasting refusals, not retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use super::assemble::{Assembler, Step, Tables};
use super::pgoutput::{self, Message};
use crate::change::announce::Prepared;
use crate::hub::Hub;
use crate::model::ModelSubscription;

/// How the replication connection uses TLS: libpq's `sslmode`, with its
/// meanings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, else plain TCP; the certificate is not
    /// checked (libpq's default).
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is not checked.
    Require,
    /// TLS with a certificate signed by a trusted authority.
    VerifyCa,
    /// As [`TlsMode::VerifyCa`], and the certificate names the host.
    VerifyFull,
}

/// Where the replication connection goes: a role with the `REPLICATION`
/// attribute (or a superuser).
#[derive(Clone, Debug)]
pub struct ReplicationTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Role.
    pub user: String,
    /// Its password (SCRAM), empty for trust.
    pub password: String,
    /// Database.
    pub database: String,
    /// TLS.
    pub tls: TlsMode,
    /// The authorities trusted to sign the server's certificate (a PEM
    /// file) for [`TlsMode::VerifyCa`] and [`TlsMode::VerifyFull`]; `None`:
    /// the Mozilla roots (webpki-roots).
    pub root_cert: Option<std::path::PathBuf>,
}

impl ReplicationTarget {
    /// Reads a target from a `postgres://user:password@host:port/database`
    /// URL, the form SeaORM connects with. The role needs the `REPLICATION`
    /// attribute (or superuser, or `rds_replication` on Amazon RDS). Port
    /// 5432, user `postgres` and database `postgres` when missing; user and
    /// password may be percent-encoded. `sslmode` (`disable`, `prefer`, the
    /// default, `require`, `verify-ca`, `verify-full`; `allow` is read as
    /// `prefer`) and `sslrootcert` (a PEM file) are read as libpq reads
    /// them; other parameters are ignored.
    pub fn from_url(url: &str) -> Result<ReplicationTarget, CaptureRunError> {
        let bad = |why: &str| CaptureRunError::Url(format!("{why} (in a postgres:// URL)"));
        let parsed = url::Url::parse(url).map_err(|error| bad(&error.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(bad(&format!("the scheme is {:?}, not postgres", parsed.scheme())));
        }
        let decode = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
        let (mut tls, mut root_cert) = (TlsMode::default(), None);
        for (name, value) in parsed.query_pairs() {
            match &*name {
                "sslmode" => {
                    tls = match &*value {
                        "disable" => TlsMode::Disable,
                        "allow" | "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        other => return Err(bad(&format!("sslmode={other} is not a libpq sslmode"))),
                    }
                }
                "sslrootcert" => root_cert = Some(std::path::PathBuf::from(&*value)),
                _ => {}
            }
        }
        let host = parsed.host_str().filter(|host| !host.is_empty()).ok_or_else(|| bad("no host"))?;
        let user = match parsed.username() {
            "" => "postgres".to_owned(),
            user => decode(user),
        };
        let database = match parsed.path().trim_start_matches('/') {
            "" => "postgres".to_owned(),
            database => decode(database),
        };
        Ok(ReplicationTarget {
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port: parsed.port().unwrap_or(5432),
            user,
            password: parsed.password().map(decode).unwrap_or_default(),
            database,
            tls,
            root_cert,
        })
    }
}

/// What a capture has done so far, from [`CaptureMonitor::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureStats {
    /// This process reads the slot now (the others stand by).
    pub leader: bool,
    /// Replication sessions this process has led.
    pub sessions: u64,
    /// Committed transactions read (each confirmed once its changes were
    /// published).
    pub transactions: u64,
    /// Changes published.
    pub changes: u64,
    /// Rows not published because a value did not parse or a row could not
    /// be made whole (each logged with its table, column and value).
    pub refused: u64,
    /// `TRUNCATE`s of a captured table (no change is sent for their rows).
    pub truncates: u64,
    /// The commit position of the last transaction whose changes were all
    /// published, as a number: every transaction that committed before it
    /// has been published too.
    pub published_lsn: u64,
    /// The log position last confirmed to PostgreSQL (the slot's
    /// `confirmed_flush_lsn` once the server has it), as a number.
    pub confirmed_lsn: u64,
    /// The server's log end as it last reported it.
    pub server_lsn: u64,
    /// `server_lsn - confirmed_lsn`: how far capture is behind what the
    /// server has told it about, in bytes of log (0 while caught up; this
    /// process's view only, and 0 while it stands by: the README has the
    /// query for the slot's own lag).
    pub lag_bytes: u64,
}

/// Reads a capture's [`CaptureStats`] while it runs (from
/// [`PostgresCapture::monitor`]).
#[derive(Clone, Debug, Default)]
pub struct CaptureMonitor(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    leader: AtomicBool,
    sessions: AtomicU64,
    transactions: AtomicU64,
    changes: AtomicU64,
    refused: AtomicU64,
    truncates: AtomicU64,
    published: AtomicU64,
    confirmed: AtomicU64,
    server: AtomicU64,
}

impl CaptureMonitor {
    /// The counts now.
    pub fn stats(&self) -> CaptureStats {
        let counters = &self.0;
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let leader = counters.leader.load(Ordering::Relaxed);
        let (confirmed, server) = (load(&counters.confirmed), load(&counters.server));
        CaptureStats {
            leader,
            sessions: load(&counters.sessions),
            transactions: load(&counters.transactions),
            changes: load(&counters.changes),
            refused: load(&counters.refused),
            truncates: load(&counters.truncates),
            published_lsn: load(&counters.published),
            confirmed_lsn: confirmed,
            server_lsn: server,
            lag_bytes: if leader { server.saturating_sub(confirmed) } else { 0 },
        }
    }
}

/// A table of the publication.
#[derive(Clone, Debug)]
struct Table {
    /// `"schema"."table"` or `"table"`, quoted for SQL.
    sql: String,
    /// Its changes need whole old rows: `REPLICA IDENTITY FULL`.
    full: bool,
}

/// Captures the changes of registered models' tables from PostgreSQL's log
/// and publishes them through a hub. See the [module documentation](crate::capture) and the README.
#[derive(Debug)]
pub struct PostgresCapture {
    hub: Hub,
    target: ReplicationTarget,
    slot: String,
    publication: String,
    tables: Tables,
    sql_tables: Vec<Table>,
    /// The registered models' streams.
    streams: Vec<&'static str>,
    monitor: CaptureMonitor,
}

/// Why capture stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureRunError {
    /// The server cannot decode its log for capture.
    #[error(
        "PostgreSQL runs with wal_level = {found}; capture needs wal_level = logical \
         (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
    )]
    WalLevel {
        /// The server's setting.
        found: String,
    },
    /// The replication connection's role may not read the log.
    #[error(
        "role {role:?} may not open a replication connection: give it the REPLICATION attribute \
         (ALTER ROLE {role} REPLICATION), or rds_replication on Amazon RDS"
    )]
    Privilege {
        /// The role of the [`ReplicationTarget`].
        role: String,
    },
    /// The target's URL could not be read.
    #[error("capture target: {0}")]
    Url(String),
    /// The server refused the replication connection for a reason that
    /// trying again will not change (authentication, a missing database,
    /// slot or publication: [`PostgresCapture::prepare`] makes the last two).
    #[error("capture refused by PostgreSQL: {0}")]
    Refused(String),
    /// Setting up the publication, the slot or a replica identity failed.
    #[error("capture setup failed: {0}")]
    Setup(#[from] DbErr),
    /// The replication stream broke pgoutput's rules, or a message could
    /// not be decoded.
    #[error("capture stopped: {0}")]
    Stream(String),
}

/// Quotes an SQL identifier.
fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

impl PostgresCapture {
    /// Captures into `hub` through a replication connection to `target`,
    /// with the slot and publication named `graphex_capture`.
    pub fn new(hub: Hub, target: ReplicationTarget) -> PostgresCapture {
        PostgresCapture {
            hub,
            target,
            slot: "graphex_capture".into(),
            publication: "graphex_capture".into(),
            tables: Tables::default(),
            sql_tables: Vec::new(),
            streams: Vec::new(),
            monitor: CaptureMonitor::default(),
        }
    }

    /// The replication slot's name (one per capturing deployment).
    pub fn slot(mut self, name: &str) -> PostgresCapture {
        self.slot = name.to_owned();
        self
    }

    /// The publication's name.
    pub fn publication(mut self, name: &str) -> PostgresCapture {
        self.publication = name.to_owned();
        self
    }

    /// Captures the changes of `M`'s table. A full-payload model, or one with
    /// index fields, needs whole old rows: [`PostgresCapture::prepare`] sets
    /// its table's `REPLICA IDENTITY FULL`.
    ///
    /// Once the slot exists ([`PostgresCapture::prepare`] made it or
    /// found it, or [`PostgresCapture::run`] started), the hub no longer
    /// announces `M`'s changes from its hooks (the log brings each
    /// committed change once), for good: after capture stops, the slot
    /// keeps the changes for the next run. [`crate::announce`] and
    /// [`crate::announce_many`] still publish.
    pub fn table<M: ModelSubscription>(mut self) -> PostgresCapture {
        self.tables.register::<M>();
        self.streams.push(M::STREAM);
        let entity = <M::Entity as Default>::default();
        let table = quote(sea_orm::EntityName::table_name(&entity));
        let sql = match sea_orm::EntityName::schema_name(&entity) {
            Some(schema) => format!("{}.{table}", quote(schema)),
            None => table,
        };
        self.sql_tables.push(Table { sql, full: M::FULL_PAYLOAD || !M::INDEX_FIELDS.is_empty() });
        self
    }

    /// Reads this capture's counts while it runs; take it before
    /// [`PostgresCapture::run`].
    pub fn monitor(&self) -> CaptureMonitor {
        self.monitor.clone()
    }

    /// Checks that the server can be captured (`wal_level = logical`, a
    /// replication role), then creates (or updates) the publication of the
    /// registered tables and the slot, and sets `REPLICA IDENTITY FULL`
    /// where changes need whole rows. Runs on `db` (a role that may alter
    /// the tables and create publications). Idempotent: every process may
    /// call it at start.
    #[tracing::instrument(name = "capture_prepare", skip_all, fields(slot = %self.slot))]
    pub async fn prepare(&self, db: &DatabaseConnection) -> Result<(), CaptureRunError> {
        let one = |sql: String| async move {
            let statement = sea_orm::Statement::from_string(db.get_database_backend(), sql);
            db.query_one_raw(statement).await
        };
        let wal_level: String = match one("SELECT current_setting('wal_level') AS wal_level".into()).await? {
            Some(row) => row.try_get("", "wal_level")?,
            None => String::new(),
        };
        if wal_level != "logical" {
            return Err(CaptureRunError::WalLevel { found: wal_level });
        }
        // A superuser, the REPLICATION attribute, or Amazon RDS's
        // rds_replication role.
        let may = one(format!(
            "SELECT (rolsuper OR rolreplication OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') \
             AND pg_has_role(rolname, 'rds_replication', 'member'))) AS may FROM pg_roles WHERE rolname = {}",
            literal(&self.target.user)
        ))
        .await?
        .map(|row| row.try_get::<bool>("", "may"))
        .transpose()?
        .unwrap_or(false);
        if !may {
            return Err(CaptureRunError::Privilege { role: self.target.user.clone() });
        }
        let slot = literal(&self.slot);
        let exists = format!("SELECT 1 AS one FROM pg_replication_slots WHERE slot_name = {slot}");
        if one(exists).await?.is_some() {
            // The slot keeps every change since its last confirmation:
            // the hooks are a second copy from now on.
            self.hooks_off();
        }
        for table in self.sql_tables.iter().filter(|table| table.full) {
            db.execute_unprepared(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.sql)).await?;
        }
        // Processes starting together race to create the publication and
        // the slot: the loser sees "already exists" (or the catalog's
        // unique index) and looks again.
        let mut attempts = 0;
        while let Err(error) = self.publish_and_slot(db, &slot).await {
            attempts += 1;
            let raced =
                ["already exists", "duplicate key", "concurrently"].iter().any(|text| error.to_string().contains(text));
            if attempts == 5 || !raced {
                return Err(error.into());
            }
        }
        // A write between the slot's creation and this line is announced by
        // its hook and captured too (a duplicate, once, at first start);
        // the other order would lose it.
        self.hooks_off();
        Ok(())
    }

    /// Creates or updates the publication, creates the slot if missing.
    async fn publish_and_slot(&self, db: &DatabaseConnection, slot: &str) -> Result<(), DbErr> {
        let tables: Vec<&str> = self.sql_tables.iter().map(|table| table.sql.as_str()).collect();
        let exists = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT 1 AS one FROM pg_publication WHERE pubname = {}", literal(&self.publication)),
            ))
            .await?
            .is_some();
        let verb = if exists { "ALTER PUBLICATION {} SET TABLE {}" } else { "CREATE PUBLICATION {} FOR TABLE {}" };
        let statement = verb.replacen("{}", &quote(&self.publication), 1).replacen("{}", &tables.join(", "), 1);
        db.execute_unprepared(&statement).await?;
        db.execute_unprepared(&format!(
            "SELECT pg_create_logical_replication_slot({slot}, 'pgoutput') \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})"
        ))
        .await?;
        Ok(())
    }

    /// The hub's hooks stop announcing the registered models.
    fn hooks_off(&self) {
        for stream in &self.streams {
            self.hub.capture_stream(stream);
        }
    }

    /// Drops the slot and the publication: run it when a deployment stops
    /// capturing for good (an abandoned slot keeps the server's log from
    /// being recycled). Fails while a capture reads the slot.
    #[tracing::instrument(name = "capture_remove", skip_all, fields(slot = %self.slot))]
    pub async fn remove(&self, db: &DatabaseConnection) -> Result<(), CaptureRunError> {
        let slot = literal(&self.slot);
        db.execute_unprepared(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = {slot}"
        ))
        .await?;
        db.execute_unprepared(&format!("DROP PUBLICATION IF EXISTS {}", quote(&self.publication))).await?;
        Ok(())
    }

    fn config(&self) -> ReplicationConfig {
        ReplicationConfig::new(
            self.target.host.clone(),
            self.target.user.clone(),
            self.target.password.clone(),
            self.target.database.clone(),
            self.slot.clone(),
            self.publication.clone(),
        )
        .with_port(self.target.port)
        .with_tls(self.tls())
        // From the slot's confirmed position.
        .with_start_lsn(Lsn::ZERO)
        // Values arrive as text in the session's styles: the forms
        // `capture::text` reads.
        .with_options("-c TimeZone=UTC -c DateStyle=ISO -c bytea_output=hex")
        .with_status_interval(Duration::from_millis(500))
        .with_application_name("graphex capture")
    }

    fn tls(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::TlsConfig;
        let ca = self.target.root_cert.clone();
        let tls = match self.target.tls {
            TlsMode::Disable => TlsConfig::disabled(),
            TlsMode::Prefer => TlsConfig { mode: pgwire_replication::SslMode::Prefer, ..TlsConfig::default() },
            TlsMode::Require => TlsConfig::require(),
            TlsMode::VerifyCa => TlsConfig::verify_ca(ca),
            TlsMode::VerifyFull => TlsConfig::verify_full(ca),
        };
        tls.with_sni_hostname(self.target.host.clone())
    }

    /// Reads the slot until `stop` or the hub's [`Hub::shutdown`],
    /// publishing each committed transaction's changes in order, then
    /// confirming it ([`Hub::stopped`] waits for it to return). A lost connection is opened
    /// again (after a second), from the last confirmed transaction; a
    /// stream that breaks pgoutput's rules stops capture with an error.
    #[tracing::instrument(name = "capture", skip_all, fields(slot = %self.slot))]
    pub async fn run(self, stop: CancellationToken) -> Result<(), CaptureRunError> {
        // Prepared here or by another process: the slot exists (or the
        // session is refused).
        self.hooks_off();
        let monitor = self.monitor.clone();
        let lag: crate::hub::LagProbe = Arc::new(move || monitor.stats().lag_bytes);
        self.hub.watch_capture(&self.slot, &lag);
        // One of the hub's tasks (`Hub::stopped` waits for it), and it
        // stops with the hub as with `stop`.
        let _task = self.hub.task_token();
        let either = self.hub.shutting_down().child_token();
        let linked = async {
            stop.cancelled().await;
            either.cancel();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            result = self.run_until(&either) => result,
            () = linked => unreachable!("pending"),
        }
    }

    async fn run_until(&self, stop: &CancellationToken) -> Result<(), CaptureRunError> {
        loop {
            match self.session(stop).await {
                Ok(()) => return Ok(()),
                Err(Session::Lost(error)) => {
                    tracing::warn!(%error, slot = %self.slot, "capture connection lost; reconnecting");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(Session::Standby) => {
                    tracing::debug!(slot = %self.slot, "capture: another process reads the slot; standing by");
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        () = tokio::time::sleep(STANDBY_RETRY) => {}
                    }
                }
                Err(Session::Fatal(error)) => return Err(error),
            }
        }
    }

    /// Opens a replication session and, if this process wins the slot's
    /// advisory lock on it, starts streaming; `None` when another process
    /// holds the lock (this one stands by).
    async fn lead(&self) -> Result<Option<ReplicationClient>, Session> {
        let lost = classify;
        let mut client = ReplicationClient::connect_gated(self.config()).await.map_err(lost)?;
        // Held by the replication session itself: it ends with the session,
        // so a leader that dies frees it as PostgreSQL notices.
        let key = literal(&format!("graphex capture: {}", self.slot));
        let rows = client.simple_query(&format!("SELECT pg_try_advisory_lock(hashtext({key}))")).await.map_err(lost)?;
        let leader = rows.first().and_then(|row| row.first()).is_some_and(|value| value.as_deref() == Some(&b"t"[..]));
        if !leader {
            // Dropping a session that has not started ends it (`shutdown`
            // would wait for a start that never comes).
            drop(client);
            return Ok(None);
        }
        client.start().await.map_err(lost)?;
        client.wait_started().await.map_err(lost)?;
        Ok(Some(client))
    }

    async fn session(&self, stop: &CancellationToken) -> Result<(), Session> {
        let Some(mut client) = self.lead().await? else {
            return Err(Session::Standby);
        };
        tracing::info!(slot = %self.slot, "capture: this process reads the slot");
        let counters = &self.monitor.0;
        counters.sessions.fetch_add(1, Ordering::Relaxed);
        counters.leader.store(true, Ordering::Relaxed);
        let ended = self.stream(&mut client, stop).await;
        counters.leader.store(false, Ordering::Relaxed);
        if ended.is_ok() {
            let _ = client.shutdown().await;
        }
        ended
    }

    async fn stream(&self, client: &mut ReplicationClient, stop: &CancellationToken) -> Result<(), Session> {
        let counters = &self.monitor.0;
        let server = |lsn: Lsn| counters.server.fetch_max(lsn.as_u64(), Ordering::Relaxed);
        // Table descriptions are per connection.
        let mut assembler = Assembler::new(self.tables.clone());
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                event = client.recv() => event.map_err(|error| Session::Lost(error.to_string()))?,
            };
            let message = match event {
                None => return Err(Session::Lost("the replication stream ended".into())),
                Some(ReplicationEvent::Begin { final_lsn, xid, .. }) => {
                    Message::Begin { final_lsn: final_lsn.as_u64(), xid }
                }
                Some(ReplicationEvent::Commit { lsn, end_lsn, .. }) => {
                    Message::Commit { commit_lsn: lsn.as_u64(), end_lsn: end_lsn.as_u64() }
                }
                Some(ReplicationEvent::XLogData { data, wal_end, .. }) => {
                    server(wal_end);
                    pgoutput::decode(&data)
                        .map_err(|error| Session::Fatal(CaptureRunError::Stream(error.to_string())))?
                }
                Some(ReplicationEvent::KeepAlive { wal_end, .. }) => {
                    server(wal_end);
                    // Between transactions everything the server sent is
                    // published: confirm up to its log end, so a slot whose
                    // tables are quiet does not hold back the log that
                    // other tables' writes fill.
                    if !assembler.in_transaction() && wal_end.as_u64() > counters.confirmed.load(Ordering::Relaxed) {
                        client.update_applied_lsn(wal_end);
                        counters.confirmed.store(wal_end.as_u64(), Ordering::Relaxed);
                    }
                    continue;
                }
                Some(_) => continue,
            };
            let fatal =
                |error: super::assemble::StreamError| Session::Fatal(CaptureRunError::Stream(error.to_string()));
            let truncates = assembler.truncates;
            let step = assembler.feed(message).map_err(fatal)?;
            counters.truncates.fetch_add(assembler.truncates - truncates, Ordering::Relaxed);
            match step {
                None => {}
                // Published as it comes (pgoutput sends only committed
                // transactions); a row sent again (not confirmed before a
                // restart) is recognised by its log position and not
                // published twice. The publish waits for room, and so
                // slows the stream rather than buffering it.
                Some(Step::Row(source, row)) => match *row {
                    Ok(prepared) => {
                        let Prepared { groups, message, change } = prepared;
                        self.hub.publish_captured(&groups, message, change, source).await;
                        counters.changes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        tracing::error!(%error, "captured row not published");
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Some(Step::Commit { commit_lsn, end_lsn }) => {
                    counters.published.fetch_max(commit_lsn, Ordering::Relaxed);
                    // Published (into the layer's history where it keeps
                    // one): now PostgreSQL may forget it.
                    client.update_applied_lsn(Lsn::from_u64(end_lsn));
                    counters.confirmed.fetch_max(end_lsn, Ordering::Relaxed);
                    counters.transactions.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Sorts a replication connection's error: what trying again will not
/// change (authentication, TLS, privilege, a missing database, slot or
/// publication) stops capture; the rest is a lost connection.
fn classify(error: pgwire_replication::PgWireError) -> Session {
    use pgwire_replication::PgWireError;
    let text = error.to_string();
    // 28xxx: authorization; 42501: insufficient privilege; 42704:
    // undefined object (slot, publication); 3D000: no such database.
    let lasting = ["SQLSTATE 28", "SQLSTATE 42501", "SQLSTATE 42704", "SQLSTATE 3D000"];
    match error {
        PgWireError::Auth(_) | PgWireError::Tls(_) => Session::Fatal(CaptureRunError::Refused(text)),
        PgWireError::Server(ref message) if lasting.iter().any(|code| message.contains(code)) => {
            Session::Fatal(CaptureRunError::Refused(text))
        }
        _ => Session::Lost(text),
    }
}

/// How often a standing-by process tries to become the reader.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// How a replication session ended.
enum Session {
    /// Another process holds the slot's lock: try again later.
    Standby,
    /// The connection: open another.
    Lost(String),
    /// The stream itself: stop.
    Fatal(CaptureRunError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_is_read_from_the_database_url() {
        let target = ReplicationTarget::from_url("postgres://app%40corp:p%2Fss@db.example:6432/shop?sslmode=prefer")
            .expect("read");
        assert_eq!(
            (target.host.as_str(), target.port, target.user.as_str(), target.password.as_str()),
            ("db.example", 6432, "app@corp", "p/ss")
        );
        assert_eq!(target.database, "shop");
        assert_eq!((target.tls, target.root_cert), (TlsMode::Prefer, None));
        let verified = ReplicationTarget::from_url("postgres://h/db?sslmode=verify-full&sslrootcert=/ca.pem").unwrap();
        assert_eq!((verified.tls, verified.root_cert), (TlsMode::VerifyFull, Some("/ca.pem".into())));
        assert_eq!(ReplicationTarget::from_url("postgres://h/db?sslmode=disable").unwrap().tls, TlsMode::Disable);
        assert_eq!(ReplicationTarget::from_url("postgres://h/db?sslmode=require").unwrap().tls, TlsMode::Require);
        let defaults = ReplicationTarget::from_url("postgresql://[::1]").expect("read");
        assert_eq!(
            (defaults.host.as_str(), defaults.port, defaults.user.as_str(), defaults.database.as_str()),
            ("::1", 5432, "postgres", "postgres")
        );
    }

    #[test]
    fn a_target_that_cannot_be_honoured_is_refused() {
        for (url, says) in [
            ("mysql://root@localhost/test", "scheme"),
            ("postgres:///db", "no host"),
            ("postgres://u@h/db?sslmode=sometimes", "not a libpq sslmode"),
            ("not a url", "relative URL"),
        ] {
            let error = ReplicationTarget::from_url(url).expect_err(url).to_string();
            assert!(error.contains(says), "{url}: {error}");
        }
    }

    /// Registering a model does not yet switch its hooks off: until the
    /// slot exists, nothing else would announce its writes.
    #[tokio::test]
    async fn hooks_stay_on_until_the_slot_exists() {
        use crate::model::ModelSubscription;
        use crate::proptests::person;
        let hub = Hub::default();
        let target = ReplicationTarget::from_url("postgres://127.0.0.1:1/db").unwrap();
        let capture = PostgresCapture::new(hub.clone(), target).table::<person::Model>();
        assert!(!hub.is_captured(person::Model::STREAM));
        // Nothing listens on port 1: refused or lost, the hooks are off
        // once run has started (the slot is its to read).
        let stop = CancellationToken::new();
        stop.cancel();
        capture.run(stop).await.expect("stopped");
        assert!(hub.is_captured(person::Model::STREAM));
    }

    #[test]
    fn lasting_refusals_stop_capture_and_the_rest_reconnect() {
        use pgwire_replication::PgWireError;
        let fatal = |error| matches!(classify(error), Session::Fatal(CaptureRunError::Refused(_)));
        assert!(fatal(PgWireError::Auth("password authentication failed".into())));
        assert!(fatal(PgWireError::Server(
            "must be superuser or replication role to start walsender (SQLSTATE 42501)".into()
        )));
        assert!(fatal(PgWireError::Server("replication slot \"x\" does not exist (SQLSTATE 42704)".into())));
        assert!(!fatal(PgWireError::Server("replication slot \"x\" is active for PID 7 (SQLSTATE 55006)".into())));
        assert!(!fatal(PgWireError::Server("the database system is starting up (SQLSTATE 57P03)".into())));
        assert!(!fatal(PgWireError::Io(std::sync::Arc::new(std::io::ErrorKind::ConnectionReset.into()))));
    }
}

//! The capture connection (feature `postgres-capture`, in progress): a
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
//! Not built yet: TLS (see the dependency's note in `Cargo.toml`).

use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use super::assemble::{Assembler, Tables};
use super::pgoutput::{self, Message};
use crate::hub::Hub;
use crate::model::ModelSubscription;

/// Where the replication connection goes: a role with the `REPLICATION`
/// attribute (or a superuser), plain TCP for now.
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
/// and publishes them through a hub. See the [module documentation](self).
#[derive(Debug)]
pub struct PostgresCapture {
    hub: Hub,
    target: ReplicationTarget,
    slot: String,
    publication: String,
    tables: Tables,
    sql_tables: Vec<Table>,
}

/// Why capture stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureRunError {
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
    /// From now on the hub no longer announces `M`'s changes from its
    /// hooks (the log brings each committed change once);
    /// [`crate::announce`] and [`crate::announce_many`] still publish.
    pub fn table<M: ModelSubscription>(mut self) -> PostgresCapture {
        self.tables.register::<M>();
        self.hub.capture_stream(M::STREAM);
        let entity = <M::Entity as Default>::default();
        let table = quote(sea_orm::EntityName::table_name(&entity));
        let sql = match sea_orm::EntityName::schema_name(&entity) {
            Some(schema) => format!("{}.{table}", quote(schema)),
            None => table,
        };
        self.sql_tables.push(Table { sql, full: M::FULL_PAYLOAD || !M::INDEX_FIELDS.is_empty() });
        self
    }

    /// Creates (or updates) the publication of the registered tables and
    /// the slot, and sets `REPLICA IDENTITY FULL` where changes need whole
    /// rows. Runs on `db` (a role that may do so). Idempotent.
    pub async fn prepare(&self, db: &DatabaseConnection) -> Result<(), DbErr> {
        for table in self.sql_tables.iter().filter(|table| table.full) {
            db.execute_unprepared(&format!("ALTER TABLE {} REPLICA IDENTITY FULL", table.sql)).await?;
        }
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
        let slot = literal(&self.slot);
        db.execute_unprepared(&format!(
            "SELECT pg_create_logical_replication_slot({slot}, 'pgoutput') \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {slot})"
        ))
        .await?;
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
        // From the slot's confirmed position.
        .with_start_lsn(Lsn::ZERO)
        // Values arrive as text in the session's styles: the forms
        // `capture::text` reads.
        .with_options("-c TimeZone=UTC -c DateStyle=ISO -c bytea_output=hex")
        .with_status_interval(Duration::from_millis(500))
        .with_application_name("graphex capture")
    }

    /// Reads the slot until `stop`, publishing each committed transaction's
    /// changes in order, then confirming it. A lost connection is opened
    /// again (after a second), from the last confirmed transaction; a
    /// stream that breaks pgoutput's rules stops capture with an error.
    pub async fn run(self, stop: CancellationToken) -> Result<(), CaptureRunError> {
        loop {
            match self.session(&stop).await {
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
        let lost = |error: pgwire_replication::PgWireError| Session::Lost(error.to_string());
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
        // Table descriptions are per connection.
        let mut assembler = Assembler::new(self.tables.clone());
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => {
                    let _ = client.shutdown().await;
                    return Ok(());
                }
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
                Some(ReplicationEvent::XLogData { data, .. }) => pgoutput::decode(&data)
                    .map_err(|error| Session::Fatal(CaptureRunError::Stream(error.to_string())))?,
                Some(_) => continue,
            };
            let fatal =
                |error: super::assemble::StreamError| Session::Fatal(CaptureRunError::Stream(error.to_string()));
            let Some(committed) = assembler.feed(message).map_err(fatal)? else {
                continue;
            };
            for error in &committed.errors {
                tracing::error!(%error, "captured row not published");
            }
            for (index, prepared) in committed.changes.into_iter().enumerate() {
                // A transaction sent again (not confirmed before a restart)
                // is recognised by its log position and not published twice.
                let source = crate::layer::LogPosition { lsn: committed.end_lsn, index: index as u32 };
                self.hub.publish_captured(&prepared.groups, prepared.message, source).await;
            }
            // Published (into the layer's history where it keeps one): now
            // PostgreSQL may forget it.
            client.update_applied_lsn(Lsn::from_u64(committed.end_lsn));
        }
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

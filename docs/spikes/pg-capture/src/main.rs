//! Spike for issue 17: change capture from PostgreSQL's logical replication
//! log (pgoutput), with `pg_walstream` (high level, decoded rows) and
//! `pgwire-replication` (transport only, raw pgoutput bytes).
//!
//! Usage: `pg-spike walstream|pgwire` with `SPIKE_PORT` (default 5499) set to
//! a throwaway cluster started with `-c wal_level=logical`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use pg_walstream::{
    CancellationToken, ChangeEvent, ColumnValue, EventStream, EventType, LogicalReplicationStream,
    ReplicationSlotOptions, ReplicationStreamConfig, RetryConfig, RowData, StreamingMode,
};
use tokio_postgres::{Client, NoTls};

const SLOT: &str = "spike_slot";
const PUBLICATION: &str = "spike_pub";

fn port() -> u16 {
    std::env::var("SPIKE_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5499)
}

async fn sql() -> Result<Client> {
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", port()), NoTls)
            .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            eprintln!("sql connection: {e}");
        }
    });
    Ok(client)
}

/// Table, publication; the slot is dropped so that each run starts clean.
async fn setup(c: &Client, slot: &str) -> Result<()> {
    c.batch_execute(&format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}';
         DROP PUBLICATION IF EXISTS {PUBLICATION};
         DROP TABLE IF EXISTS spike_items, spike_full;
         CREATE EXTENSION IF NOT EXISTS pgcrypto;
         CREATE TABLE spike_items (
             id int PRIMARY KEY,
             name text,
             flag bool,
             at timestamptz,
             doc jsonb,
             amount numeric(12,4),
             uid uuid,
             big text
         );
         -- Storage EXTERNAL: no compression, so a 100 kB text is TOASTed out of line.
         ALTER TABLE spike_items ALTER COLUMN big SET STORAGE EXTERNAL;
         CREATE TABLE spike_full (id int PRIMARY KEY, name text, big text);
         ALTER TABLE spike_full ALTER COLUMN big SET STORAGE EXTERNAL;
         ALTER TABLE spike_full REPLICA IDENTITY FULL;
         CREATE PUBLICATION {PUBLICATION} FOR TABLE spike_items, spike_full;"
    ))
    .await?;
    Ok(())
}

fn config(slot: &str) -> ReplicationStreamConfig {
    ReplicationStreamConfig::builder(slot, PUBLICATION)
        .with_protocol_version(1)
        .with_streaming_mode(StreamingMode::Off)
        .with_feedback_interval(Duration::from_secs(1))
        .with_connection_timeout(Duration::from_secs(10))
        .with_health_check_interval(Duration::from_secs(30))
        .with_retry_config(RetryConfig::default())
        // A persistent (not TEMPORARY) slot, no exported snapshot.
        .with_slot_options(ReplicationSlotOptions {
            temporary: false,
            snapshot: Some("nothing".into()),
            ..Default::default()
        })
}

fn repl_url(extra: &str) -> String {
    format!("postgresql://postgres@127.0.0.1:{}/postgres?replication=database{extra}", port())
}

fn show_value(v: &ColumnValue) -> String {
    match v {
        ColumnValue::Null => "NULL".into(),
        ColumnValue::Text(b) => {
            let s = String::from_utf8_lossy(b);
            if s.len() > 40 { format!("{:?}…({} bytes)", &s[..20], s.len()) } else { format!("{s:?}") }
        }
        ColumnValue::Binary(b) => format!("<{} binary bytes>", b.len()),
    }
}

fn show_row(r: &RowData) -> String {
    r.iter().map(|(k, v)| format!("{k}={}", show_value(v))).collect::<Vec<_>>().join(" ")
}

/// One line per event; the 1 000-row update is summarised.
struct Printer {
    updates_in_txn: usize,
    quiet_after: usize,
}

impl Printer {
    fn print(&mut self, ev: &ChangeEvent) {
        match &ev.event_type {
            EventType::Begin { transaction_id, final_lsn, commit_timestamp } => {
                self.updates_in_txn = 0;
                println!("  BEGIN xid={transaction_id} final_lsn={final_lsn} at={commit_timestamp} (event lsn {})", ev.lsn)
            }
            EventType::Commit { commit_lsn, end_lsn, .. } => {
                if self.updates_in_txn > self.quiet_after {
                    println!("    ... {} changes in this transaction", self.updates_in_txn);
                }
                println!("  COMMIT commit_lsn={commit_lsn} end_lsn={end_lsn} (event lsn {})", ev.lsn)
            }
            EventType::Relation { relation_id, namespace, relation_name, replica_identity, columns } => {
                let cols: Vec<String> =
                    columns.iter().map(|c| format!("{}:{}{}", c.name, c.type_id, if c.is_key { "*" } else { "" })).collect();
                println!("  RELATION {relation_id} {namespace}.{relation_name} identity={replica_identity:?} [{}]", cols.join(", "))
            }
            EventType::Insert { table, data, .. } => {
                self.updates_in_txn += 1;
                if self.updates_in_txn <= self.quiet_after {
                    println!("    INSERT {table}: {}", show_row(data))
                }
            }
            EventType::Update { table, old_data, new_data, replica_identity, key_columns, .. } => {
                self.updates_in_txn += 1;
                if self.updates_in_txn <= self.quiet_after {
                    println!(
                        "    UPDATE {table} identity={replica_identity:?} keys={key_columns:?}\n      old: {}\n      new: {} ({} of the columns present)",
                        old_data.as_ref().map(show_row).unwrap_or_else(|| "-".into()),
                        show_row(new_data),
                        new_data.len()
                    )
                }
            }
            EventType::Delete { table, old_data, replica_identity, .. } => {
                self.updates_in_txn += 1;
                println!("    DELETE {table} identity={replica_identity:?} old: {}", show_row(old_data))
            }
            other => println!("  other: {other:?}"),
        }
    }
}

/// Reads events until none came for `idle`; returns the commits' end LSNs.
async fn drain(stream: &mut EventStream, idle: Duration, printer: &mut Printer) -> Result<Vec<u64>> {
    let mut commits = Vec::new();
    loop {
        match tokio::time::timeout(idle, stream.next_event()).await {
            Err(_) => return Ok(commits),
            Ok(Err(e)) => bail!("stream: {e}"),
            Ok(Ok(ev)) => {
                printer.print(&ev);
                if let EventType::Commit { end_lsn, .. } = &ev.event_type {
                    commits.push(end_lsn.value());
                }
            }
        }
    }
}

async fn slot_state(c: &Client, slot: &str) -> Result<String> {
    let row = c
        .query_one(
            "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(format!(
        "active={} pid={:?} confirmed_flush_lsn={:?} restart_lsn={:?}",
        row.get::<_, bool>(0),
        row.get::<_, Option<i32>>(1),
        row.get::<_, Option<String>>(2),
        row.get::<_, Option<String>>(3)
    ))
}

async fn open(slot: &str, extra: &str) -> Result<EventStream> {
    let mut s = LogicalReplicationStream::new(&repl_url(extra), config(slot)).await.context("connect")?;
    s.ensure_replication_slot().await.context("slot")?;
    s.start(None).await.context("start")?;
    Ok(s.into_stream(CancellationToken::new()))
}

async fn walstream() -> Result<()> {
    let c = sql().await?;
    setup(&c, SLOT).await?;

    println!("== connect, create slot {SLOT} (pgoutput, persistent), START_REPLICATION proto_version 1");
    let t = std::time::Instant::now();
    let mut stream = open(SLOT, "").await?;
    println!("   started in {:?}; slot: {}", t.elapsed(), slot_state(&c, SLOT).await?);

    println!("== workload");
    let big: String = "x".repeat(100_000);
    c.execute(
        "INSERT INTO spike_items VALUES (1, 'one', true, '2024-02-29 13:14:15.123456+01', '{\"b\": [1, 2.50, null], \"a\": \"é\"}', 12345678.9, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', $1)",
        &[&big],
    )
    .await?;
    c.execute("INSERT INTO spike_items (id, name, flag) VALUES (2, NULL, false)", &[]).await?;
    // Leaves `big` (TOASTed out of line) unchanged: it arrives as 'u'.
    c.execute("UPDATE spike_items SET name = 'uno', amount = -0.5 WHERE id = 1", &[]).await?;
    c.execute("DELETE FROM spike_items WHERE id = 2", &[]).await?;
    c.batch_execute("BEGIN; INSERT INTO spike_items (id, name) VALUES (3, 'rolled back'); ROLLBACK;").await?;
    c.execute("INSERT INTO spike_full VALUES (1, 'full', $1), (2, 'full2', 'small')", &[&big]).await?;
    c.execute("UPDATE spike_full SET name = 'full-updated' WHERE id = 1", &[]).await?;
    c.execute("DELETE FROM spike_full WHERE id = 2", &[]).await?;
    // An update of the key under the default identity sends the old key ('K').
    c.execute("UPDATE spike_items SET id = 10 WHERE id = 1", &[]).await?;
    c.execute(
        "INSERT INTO spike_items (id, name, flag, at) SELECT g, 'row ' || g, g % 2 = 0, now() FROM generate_series(100, 1099) g",
        &[],
    )
    .await?;
    let t = std::time::Instant::now();
    c.execute("UPDATE spike_items SET name = name || '!' WHERE id BETWEEN 100 AND 1099", &[]).await?;
    println!("   1000-row UPDATE took {:?}", t.elapsed());

    let mut p = Printer { updates_in_txn: 0, quiet_after: 3 };
    let t = std::time::Instant::now();
    let commits = drain(&mut stream, Duration::from_secs(2), &mut p).await?;
    println!("   {} commits received ({:?} incl. 2 s idle)", commits.len(), t.elapsed());
    if commits.len() < 3 {
        bail!("expected more commits");
    }

    // Confirm all but the last two transactions (the 1 000-row insert and update).
    let confirm = commits[commits.len() - 3];
    println!("== confirm up to {} (commit end of the third-last transaction)", pg_walstream::format_lsn(confirm));
    stream.update_flushed_lsn(confirm);
    stream.update_applied_lsn(confirm);
    stream.inner_mut().send_feedback().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("   slot: {}", slot_state(&c, SLOT).await?);

    println!("== leader election");
    let other = sql().await?;
    let mine: bool = c.query_one("SELECT pg_try_advisory_lock(17)", &[]).await?.get(0);
    let theirs: bool = other.query_one("SELECT pg_try_advisory_lock(17)", &[]).await?.get(0);
    println!("   pg_try_advisory_lock(17): this session={mine}, another session={theirs}");
    let t = std::time::Instant::now();
    let second = open(SLOT, "").await;
    println!("   (second reader gave up after {:?})", t.elapsed());
    match second {
        Ok(_) => println!("   second reader on the same slot: started (unexpected)"),
        Err(e) => println!("   second reader on the same slot: {e:#}"),
    }

    println!("== shutdown, reconnect");
    stream.shutdown().await?;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;
    println!("   slot after shutdown: {}", slot_state(&c, SLOT).await?);
    let mut stream = open(SLOT, "").await?;
    let mut p = Printer { updates_in_txn: 0, quiet_after: 1 };
    let again = drain(&mut stream, Duration::from_secs(2), &mut p).await?;
    println!("   after reconnect: {} commits re-sent (expected 2: the unconfirmed ones)", again.len());
    let last = *again.last().unwrap_or(&confirm);
    stream.update_flushed_lsn(last);
    stream.update_applied_lsn(last);
    stream.inner_mut().send_feedback().await?;
    stream.shutdown().await?;
    drop(stream);

    println!("== TimeZone of the replication connection decides timestamptz text");
    c.execute("INSERT INTO spike_items (id, at) VALUES (5000, '2024-06-01 12:00:00+00')", &[]).await?;
    let mut stream = open(SLOT, "&options=-c%20TimeZone%3DAsia/Kolkata%20-c%20DateStyle%3DGerman").await?;
    let mut p = Printer { updates_in_txn: 0, quiet_after: 5 };
    drain(&mut stream, Duration::from_secs(2), &mut p).await?;
    stream.shutdown().await?;
    drop(stream);
    drop_slot(&c, SLOT).await
}

/// The walsender lets go of the slot a moment after the client's shutdown.
pub(crate) async fn drop_slot(c: &Client, slot: &str) -> Result<()> {
    for _ in 0..50 {
        match c.batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')")).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.into()),
        }
    }
    bail!("slot {slot} still active")
}

#[tokio::main]
async fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("walstream") | None => walstream().await,
        Some("pgwire") => pgwire::run().await,
        // With pg_walstream in the graph, rustls has both the ring and the
        // aws-lc-rs providers: the process default can no longer be chosen.
        Some("rustls-default") => {
            let r = std::panic::catch_unwind(|| {
                let _ = rustls::ClientConfig::builder();
            });
            println!("rustls::ClientConfig::builder() without install_default: {}", if r.is_ok() { "ok" } else { "panicked" });
            Ok(())
        }
        Some(other) => bail!("unknown mode {other}"),
    }
}

mod pgwire;

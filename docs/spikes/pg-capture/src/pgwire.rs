//! The same capture with `pgwire-replication`: it owns the connection, the
//! keep-alive replies and the standby status updates, decodes Begin/Commit
//! itself, and hands every other pgoutput message over as raw bytes, so the
//! Relation/Insert/Update/Delete decoding below is ours (protocol version 1).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Result, bail};
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::Client;

const SLOT: &str = "spike_slot_pgwire";

struct Cur<'a>(&'a [u8]);
impl<'a> Cur<'a> {
    fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self.0.split_first().ok_or_else(|| anyhow::anyhow!("truncated"))?;
        self.0 = rest;
        Ok(b)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            bail!("truncated");
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn i16(&mut self) -> Result<i16> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into()?))
    }
    fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    fn cstr(&mut self) -> Result<String> {
        let end = self.0.iter().position(|&b| b == 0).ok_or_else(|| anyhow::anyhow!("no NUL"))?;
        let s = String::from_utf8(self.0[..end].to_vec())?;
        self.0 = &self.0[end + 1..];
        Ok(s)
    }
}

/// One tuple's columns: `None` = NULL, `Some(None)` = unchanged TOAST ('u'), `Some(Some(text))`.
type Tuple = Vec<Option<Option<String>>>;

fn tuple(c: &mut Cur) -> Result<Tuple> {
    let n = c.i16()?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match c.u8()? {
            b'n' => out.push(None),
            b'u' => out.push(Some(None)),
            b't' | b'b' => {
                let len = c.i32()? as usize;
                out.push(Some(Some(String::from_utf8_lossy(c.take(len)?).into_owned())));
            }
            k => bail!("tuple kind {k}"),
        }
    }
    Ok(out)
}

fn show(rel: &(String, Vec<String>), t: &Tuple) -> String {
    rel.1
        .iter()
        .zip(t)
        .map(|(name, v)| match v {
            None => format!("{name}=NULL"),
            Some(None) => format!("{name}=<unchanged toast 'u'>"),
            Some(Some(s)) if s.len() > 40 => format!("{name}={:?}…({} bytes)", &s[..20], s.len()),
            Some(Some(s)) => format!("{name}={s:?}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Decodes one pgoutput v1 message (not Begin/Commit: the crate gives those as events).
fn decode(data: &[u8], rels: &mut HashMap<i32, (String, Vec<String>)>, count: &mut usize) -> Result<()> {
    let mut c = Cur(data);
    let tag = c.u8()?;
    match tag {
        b'R' => {
            let oid = c.i32()?;
            let ns = c.cstr()?;
            let name = c.cstr()?;
            let ident = c.u8()? as char;
            let n = c.i16()?;
            let mut cols = Vec::new();
            let mut desc = Vec::new();
            for _ in 0..n {
                let flags = c.u8()?;
                let col = c.cstr()?;
                let typ = c.i32()?;
                let _typmod = c.i32()?;
                desc.push(format!("{col}:{typ}{}", if flags & 1 == 1 { "*" } else { "" }));
                cols.push(col);
            }
            println!("  RELATION {oid} {ns}.{name} identity={ident} [{}]", desc.join(", "));
            rels.insert(oid, (name, cols));
        }
        b'I' | b'U' | b'D' => {
            *count += 1;
            let oid = c.i32()?;
            let rel = rels.get(&oid).ok_or_else(|| anyhow::anyhow!("change before its Relation"))?;
            let mut old = None;
            let mut kind = c.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some((kind as char, tuple(&mut c)?));
                if tag == b'U' {
                    kind = c.u8()?;
                }
            }
            let new = if kind == b'N' { Some(tuple(&mut c)?) } else { None };
            if *count <= 3 || tag == b'D' {
                let op = match tag { b'I' => "INSERT", b'U' => "UPDATE", _ => "DELETE" };
                println!("    {op} {}", rel.0);
                if let Some((k, t)) = &old {
                    println!("      old ({k}): {}", show(rel, t));
                }
                if let Some(t) = &new {
                    println!("      new: {}", show(rel, t));
                }
            }
        }
        other => println!("  message {:?} ({} bytes)", other as char, data.len()),
    }
    Ok(())
}

/// Reads until idle; returns the commits' end LSNs.
async fn drain(client: &mut ReplicationClient, rels: &mut HashMap<i32, (String, Vec<String>)>) -> Result<Vec<Lsn>> {
    let mut commits = Vec::new();
    let mut count = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), client.recv()).await {
            Err(_) => return Ok(commits),
            Ok(r) => match r? {
                None => return Ok(commits),
                Some(ReplicationEvent::Begin { final_lsn, xid, .. }) => {
                    count = 0;
                    println!("  BEGIN xid={xid} final_lsn={final_lsn}")
                }
                Some(ReplicationEvent::Commit { lsn, end_lsn, .. }) => {
                    if count > 3 {
                        println!("    ... {count} changes in this transaction");
                    }
                    println!("  COMMIT lsn={lsn} end_lsn={end_lsn}");
                    commits.push(end_lsn);
                }
                Some(ReplicationEvent::XLogData { data, .. }) => decode(&data, rels, &mut count)?,
                Some(ReplicationEvent::KeepAlive { .. }) => {}
                Some(other) => println!("  {other:?}"),
            },
        }
    }
}

fn config() -> ReplicationConfig {
    ReplicationConfig::new("127.0.0.1", "postgres", "", "postgres", SLOT, super::PUBLICATION)
        .with_port(super::port())
        .with_status_interval(Duration::from_millis(200))
}

async fn slot(c: &Client) -> Result<String> {
    let r = c
        .query_one("SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", &[&SLOT])
        .await?;
    Ok(format!("active={} confirmed_flush_lsn={:?}", r.get::<_, bool>(0), r.get::<_, Option<String>>(1)))
}

pub(crate) async fn run() -> Result<()> {
    let c = super::sql().await?;
    super::setup(&c, SLOT).await?;
    // No slot helper in the crate: an ordinary SQL connection creates it.
    let row = c
        .query_one("SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&SLOT])
        .await?;
    println!("== slot {SLOT} created at {}", row.get::<_, String>(0));

    let big = "y".repeat(100_000);
    c.execute("INSERT INTO spike_items (id, name, big) VALUES (1, 'one', $1)", &[&big]).await?;
    c.execute("UPDATE spike_items SET name = 'uno' WHERE id = 1", &[]).await?;
    c.execute("INSERT INTO spike_full VALUES (1, 'full', $1)", &[&big]).await?;
    c.execute("UPDATE spike_full SET name = 'full-updated' WHERE id = 1", &[]).await?;
    c.execute("DELETE FROM spike_full WHERE id = 1", &[]).await?;
    c.execute("INSERT INTO spike_items (id, name) SELECT g, 'r' FROM generate_series(100, 1099) g", &[]).await?;
    c.execute("UPDATE spike_items SET name = name || '!' WHERE id BETWEEN 100 AND 1099", &[]).await?;

    // Lsn::ZERO: resume from the slot's confirmed_flush_lsn.
    let mut client = ReplicationClient::connect(config().with_start_lsn(Lsn::ZERO)).await?;
    let mut rels = HashMap::new();
    let commits = drain(&mut client, &mut rels).await?;
    let confirm = commits[commits.len() - 3];
    println!("== confirm {confirm}");
    client.update_applied_lsn(confirm);
    tokio::time::sleep(Duration::from_millis(600)).await;
    println!("   slot: {}", slot(&c).await?);

    match ReplicationClient::connect(config()).await {
        Ok(mut second) => match tokio::time::timeout(Duration::from_secs(3), second.recv()).await {
            Ok(Err(e)) => println!("   second reader: {e}"),
            other => println!("   second reader: {:?}", other.map(|r| r.map(|e| e.map(|_| "an event")))),
        },
        Err(e) => println!("   second reader (connect): {e}"),
    }

    client.shutdown().await?;
    println!("== reconnect; slot: {}", slot(&c).await?);
    let mut client = ReplicationClient::connect(config()).await?;
    let mut rels = HashMap::new();
    let again = drain(&mut client, &mut rels).await?;
    println!("   {} commits re-sent (expected 2)", again.len());
    client.shutdown().await?;
    drop(client);

    println!("== TimeZone/DateStyle of the replication session decide the text of timestamptz");
    c.execute("INSERT INTO spike_items (id, at) VALUES (5000, '2024-06-01 12:00:00+00')", &[]).await?;
    let cfg = config().with_options("-c TimeZone=Asia/Kolkata -c DateStyle=German");
    let mut client = ReplicationClient::connect(cfg).await?;
    drain(&mut client, &mut HashMap::new()).await?;
    client.shutdown().await?;
    drop(client);
    super::drop_slot(&c, SLOT).await
}

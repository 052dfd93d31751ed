//! Change capture from the database's log: every committed write of a
//! model's table reaches its subscribers, including the writes that never
//! pass through SeaORM's hooks (`insert_many`, `update_many`,
//! `delete_many`, raw SQL, migrations, other services), each as exactly the
//! change the hooks would have produced, after its commit, in commit order.
//!
//! PostgreSQL only, with the cargo feature `postgres-capture`:
//! `PostgresCapture` reads the server's logical replication stream with
//! its built-in `pgoutput` plugin (no server extension), through a
//! persistent slot and a publication of the registered tables. The
//! README's "Change capture from PostgreSQL's log" section is the guide;
//! ARCHITECTURE.md has the design.
//!
//! Inside: `pgoutput.rs` decodes the stream's messages (protocol version
//! 1); `text.rs` turns a row's values, in PostgreSQL's text form with each
//! column's type, into the model's payload values through each field's own
//! Rust type; `assemble.rs` makes each committed transaction's changes, in
//! order, rows made whole from the old row under `REPLICA IDENTITY FULL`
//! (or refused); `postgres.rs` is the connection: slot, publication, leader
//! election, publishing, then confirming.

// The decoder and assembler are only driven by the connection, which needs
// the feature; without it they are still compiled and unit-tested.
#[cfg_attr(not(feature = "postgres-capture"), allow(dead_code))]
pub(crate) mod assemble;
#[cfg_attr(not(feature = "postgres-capture"), allow(dead_code))]
pub(crate) mod pgoutput;
#[cfg(feature = "postgres-capture")]
mod postgres;
pub(crate) mod text;

#[cfg(feature = "postgres-capture")]
pub use postgres::{CaptureMonitor, CaptureRunError, CaptureStats, PostgresCapture, ReplicationTarget, TlsMode};

/// Makes ring rustls's process default provider unless one is installed.
/// With this feature, the graph compiles rustls with both ring (sqlx,
/// redis) and aws-lc-rs (pgwire-replication's TLS), and rustls then picks
/// no default: whatever builds a TLS configuration through the default
/// (redis-rs for `rediss://`) would panic. pgwire-replication installs ring
/// the same way before its own handshake; an application's own choice,
/// made earlier, wins.
#[cfg(feature = "postgres-capture")]
pub(crate) fn crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

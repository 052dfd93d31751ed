//! Change capture from the database's log (issue 17, in progress): the
//! changes that never pass through SeaORM's hooks, read from PostgreSQL's
//! logical replication stream (pgoutput) and turned into exactly the change
//! the hooks would have produced.
//!
//! Built so far: `pgoutput.rs`, the decoder of pgoutput's messages
//! (protocol version 1: transactions, table descriptions, inserts, updates
//! with their unchanged TOAST markers and old rows, deletes, truncates);
//! `text.rs`, the values of a row as pgoutput sends them (PostgreSQL's text
//! form, with each column's type OID) turned into the model's payload
//! values, through each field's own Rust type; `assemble.rs`, decoded
//! messages into each committed transaction's changes, in order, exactly
//! the changes the hooks would have made (rows made whole from the old row
//! under `REPLICA IDENTITY FULL`, or refused). Not built yet: the replication connection, slot and publication, transactions,
//! confirmed positions, leader election (see `docs/spikes/pg-capture/`).

// Decoded, assembled and tested here; the capture connection that feeds
// them is not built yet (issue 17).
#[allow(dead_code)]
pub(crate) mod assemble;
#[allow(dead_code)]
pub(crate) mod pgoutput;
#[cfg(feature = "postgres-capture")]
pub(crate) mod postgres;
pub(crate) mod text;

#[cfg(feature = "postgres-capture")]
pub use postgres::{CaptureRunError, PostgresCapture, ReplicationTarget};
pub use text::{CaptureError, values_from_text};

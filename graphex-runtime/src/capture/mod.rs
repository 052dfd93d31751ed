//! Change capture from the database's log (issue 17, in progress): the
//! changes that never pass through SeaORM's hooks, read from PostgreSQL's
//! logical replication stream (pgoutput) and turned into exactly the change
//! the hooks would have produced.
//!
//! Built so far: `text.rs`, the values of a row as pgoutput sends them
//! (PostgreSQL's text form, with each column's type OID) turned into the
//! model's payload values, through each field's own Rust type. Not built
//! yet: the replication connection, slot and publication, transactions,
//! confirmed positions, leader election (see `docs/spikes/pg-capture/`).

pub(crate) mod text;

pub use text::{CaptureError, values_from_text};

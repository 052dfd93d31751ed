//! The reference example: `cargo run --example reference`.
//!
//! Settings come from the environment (see [`serve::Settings::from_env`]):
//! SQLite in memory and the in-memory channel layer by default;
//! `DATABASE_URL` selects another database, `GRAPHEX_LAYER` another channel
//! layer (e.g. `redis://127.0.0.1:6379/0`), `PORT` the port (default 8000),
//! `GRAPHEX_CAPTURE=postgres` capture from PostgreSQL's log instead of the
//! hooks (`GRAPHEX_CAPTURE_SLOT` names the slot, default `graphex_reference`).
#![allow(unreachable_pub)]

mod app;
#[path = "../common/mod.rs"]
mod common;
mod serve;

#[tokio::main]
async fn main() {
    common::init_logs();
    serve::serve(serve::Settings::from_env()).await;
}

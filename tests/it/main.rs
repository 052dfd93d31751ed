//! graphex's integration tests, in one binary (one link of the whole
//! dependency graph instead of one per file), one module per feature:
//!
//! - [`pins`]: the reference app's SDL and one scripted client session,
//!   compared byte for byte with `tests/pins/` (`GRAPHEX_BLESS=1` rewrites).
//! - [`derive`], [`hygiene`]: what the derive generates; the derive under
//!   `#![no_implicit_prelude]`.
//! - [`hooks`]: how changes are announced (hooks, by hand).
//! - [`transactions`]: announced after the commit; savepoints.
//! - [`actions`]: the two-channel protocol end to end: actions, ids,
//!   unsubscribe, projections.
//! - [`conditions`], [`filters`]: filter lookups in SQL and in memory; over
//!   sockets, and their refusals.
//! - [`bounds`]: what one subscribe and one change may cost: repeated
//!   projection fields, arguments shared by the actions of a subscribe, one
//!   id-only row read per change.
//! - [`scope`]: authentication, scopes, channel owners.
//! - [`index_groups`]: routing by index field values.
//! - [`lifecycle`]: sockets closing, slow consumers.
//! - [`metrics`]: `/metrics` after a scripted session.
//! - [`protocols`]: `graphql-transport-ws` and the legacy `graphql-ws`.
//! - [`streaming`]: subscriptions over SSE and `multipart/mixed`.
//! - [`single_connection`]: graphql-sse's single connection mode.
//! - [`resume`]: resuming after a cursor (`after`) over every protocol.
//! - [`custom_groups`]: `subscribe_groups` and `broadcast`.
//! - [`examples`], [`node_clients`]: the chat and blog examples, over our
//!   client and over the npm clients (`GRAPHEX_TEST_NODE=1`).
//! - [`browser`]: the client page in headless Chromium (`GRAPHEX_TEST_BROWSER=1`).
//! - [`fanout_bench`]: an ignored measurement.
//!
//! [`support`] holds what they share. Tests that use a database run on
//! SQLite in memory, with `GRAPHEX_TEST_POSTGRES_URL` on PostgreSQL in a
//! schema of their own and with `GRAPHEX_TEST_MYSQL_URL` on MySQL / MariaDB in
//! a database of their own; each serves its app on port 0, so every test may
//! run in parallel with the others.
//!
//! Separate binaries remain where they must: `tests/ui.rs` (trybuild) and
//! `tests/redis.rs` (`harness = false`: it re-executes itself as the server
//! processes of its two-process cases).
#![allow(unreachable_pub)]

#[path = "../../examples/reference/app.rs"]
mod app;
#[path = "../../examples/blog/app.rs"]
mod blog_app;
#[path = "../../examples/chat/app.rs"]
mod chat_app;
mod support;

mod actions;
mod bounds;
mod browser;
mod capture;
mod capture_text;
mod conditions;
mod custom_groups;
mod derive;
mod examples;
mod expiry;
mod fanout_bench;
mod filters;
mod hooks;
mod hygiene;
mod index_groups;
mod lifecycle;
mod limits;
mod logs;
mod metrics;
mod node_clients;
mod pins;
mod protocols;
mod resume;
mod scope;
mod shared;
mod shutdown;
mod single_connection;
mod streaming;
mod transactions;

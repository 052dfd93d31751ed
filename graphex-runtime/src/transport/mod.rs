//! Stage 6 of the pipeline: sockets and HTTP.
//!
//! Owns the axum router and its builder, authentication, HTTP execution
//! (JSON, SSE and multipart subscriptions), graphql-sse's single
//! connection mode (`single.rs`), subscribe forwarding to the process that
//! holds a socket or a single-connection stream, the two-channel socket loop with write
//! pacing and the shard tasks that run it, the standard GraphQL WebSocket
//! protocols and their connection hooks, the WebSocket close codes, and
//! the browser client page, and the Prometheus metrics (`metrics.rs`:
//! `metrics_router`, read from the hub at each scrape).
//!
//! Calls: `hub` (channels, deliveries), `subscribe` (native streams' data),
//! `change` (the hub scope of a request), `model` (principals).

pub(crate) mod auth;
pub(crate) mod body;
pub(crate) mod client;
pub(crate) mod close;
pub(crate) mod forward;
pub(crate) mod gate;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod peer;
pub(crate) mod server;
pub(crate) mod shard;
pub(crate) mod single;
pub(crate) mod socket;
pub(crate) mod standard;
pub(crate) mod streaming;

//! What the integration tests share:
//!
//! - [`databases`]: a test body run on SQLite in memory and, when
//!   `GRAPHEX_TEST_POSTGRES_URL` is set, on a PostgreSQL schema of its own,
//!   when `GRAPHEX_TEST_MYSQL_URL` is set, on a MySQL database of its own.
//! - [`reference`]: the reference app (examples/reference/app.rs) served on
//!   port 0, its GraphQL helpers, and the frames it sends.
//! - [`two_channel`]: a client of the two-channel WebSocket protocol.
//! - [`standard`]: any router served on port 0, and a raw client of
//!   `graphql-transport-ws` / `graphql-ws` that shows every frame.
//! - [`http`]: the HTTP client (hyper-util), streaming responses included.
//! - [`entities`]: models for the derive and filter tests.
//!
//! Also compiled into the Redis harness (tests/redis.rs), which uses part of it.

use std::time::Duration;

pub mod databases;
pub mod entities;
pub mod http;
pub mod logical;
pub mod reference;
pub mod standard;
pub mod two_channel;

pub use databases::{POSTGRES_ENV, each_database};
pub use reference::{Server, USERS_CREATE, comment_frame, confirmed, frame, new_user, refused, user_frame, user_json};
pub use two_channel::Ws;

/// How long an expected frame or response may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A schema's SDL without descriptions, whitespace collapsed to single
/// spaces, for `contains` checks on type and field definitions.
pub fn compact_sdl(sdl: &str) -> String {
    let mut text = String::new();
    for (index, part) in sdl.split("\"\"\"").enumerate() {
        if index % 2 == 0 {
            text.push_str(part);
        }
    }
    text.lines()
        .filter(|line| !line.trim_start().starts_with('"'))
        .flat_map(str::split_whitespace)
        .collect::<Vec<_>>()
        .join(" ")
}

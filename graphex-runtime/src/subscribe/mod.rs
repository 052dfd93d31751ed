//! Stage 5 of the pipeline: what a client subscribes to, and what it
//! receives of each change.
//!
//! Owns the client filters (parsing, type checking, in-memory evaluation,
//! SQL conditions), the two-channel subscribe / unsubscribe, the native
//! `<name>Changes` fields of the standard protocols, and custom groups.
//!
//! Calls: `model` (fields, scope, authorization), `change` (group names,
//! the decoded change), `hub` (channels and their subscriptions).

pub(crate) mod custom;
pub(crate) mod filter;
pub(crate) mod native;
pub(crate) mod resume;
pub(crate) mod row;
pub(crate) mod shared;
pub(crate) mod two_channel;

pub(crate) use two_channel::{SubscribeError, add_all, build_subscriptions, canonical_id};

//! Stage 2 of the pipeline: a change, from the moment a row is saved to
//! the encoded message the layer carries.
//!
//! Owns announcing (hooks, by hand, bulk), the transaction and savepoint
//! buffers that hold changes until the commit, the change codec (the one
//! serialization per change, and its decoded, pre-rendered form), and every
//! group name and namespace (model groups, `@` custom groups, `~` node
//! requests).
//!
//! Calls: `model` (what a row is), `hub` (publishing a change through the
//! hub in scope).

pub(crate) mod announce;
pub(crate) mod codec;
pub mod group;
pub(crate) mod transaction;

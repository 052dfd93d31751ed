//! # graphex
//!
//! Live GraphQL subscriptions for SeaORM models. Add one derive to an
//! entity's `Model` and every create, update and delete made through SeaORM
//! reaches the WebSocket clients subscribed to it: filtered, scoped to what
//! each client may see, and shaped to the fields each asked for.
//!
//! ```ignore
//! #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
//! #[sea_orm(table_name = "users")]
//! #[graphex(stream = "users", serialize_data = true)]
//! pub struct Model {
//!     #[sea_orm(primary_key)]
//!     pub id: i32,
//!     pub username: String,
//!     #[graphex(skip)]
//!     pub password_hash: String,
//! }
//!
//! #[graphex::hooks]
//! impl ActiveModelBehavior for ActiveModel {}
//! ```
//!
//! The derive generates `UserFields`, the `UserSubscriptionRoot` root piece
//! (merge it into the schema's subscription root with
//! `async_graphql::MergedSubscription`: one line per model) and the
//! [`ModelSubscription`] binding the runtime reads. `#[graphex::hooks]`
//! announces each save and delete. See the README for the attributes and
//! the wire protocol.

pub use graphex_macros::{ModelSubscription, hooks};
pub use graphex_runtime::*;

//! The run-time half of graphex: carries model changes from SeaORM to the
//! clients subscribed to them. Users depend on the `graphex` crate, which
//! re-exports this one beside the derive.
//!
//! # Layout
//!
//! One folder per stage, in the order a change travels:
//!
//! 1. `model/`: what the derive tells the runtime about a model
//!    ([`ModelSubscription`]), and who may see what ([`Principal`],
//!    [`SubscribeRequest`], [`Scope`], [`Denied`]).
//! 2. `change/`: announcing a change once ([`announce`], the hooks,
//!    [`transaction`] and [`savepoint`] buffers), its encoding, and every
//!    group name.
//! 3. [`layer`]: carrying encoded changes between processes by group
//!    (in memory, or Redis).
//! 4. `hub/`: the process's channels, group membership, local fan-out and
//!    backpressure ([`Hub`]).
//! 5. `subscribe/`: filters, the two-channel subscribe, the native
//!    `<name>Changes` fields, custom groups ([`subscribe_groups`]).
//! 6. `transport/`: the axum router ([`router`], [`RouterBuilder`]), HTTP,
//!    SSE and multipart, the two-channel socket loop, the standard GraphQL
//!    WebSocket protocols ([`ConnectionHooks`]), the client page.
//!
//! Each folder's module documentation says what it owns and which others it
//! calls. Generated code reaches the runtime through `__private`.

#![warn(missing_debug_implementations)]

mod change;
mod config;
mod hub;
pub mod layer;
mod model;
mod subscribe;
mod transport;

pub use change::announce::{announce, announce_many, set_global_hub};
pub use change::transaction::{savepoint, transaction};
pub use config::{Config, WritePacing};
pub use hub::{ChannelError, CloseReason, Hub, Stats};
pub use model::{
    Action, ActionSubscription, Denied, Field, FieldsEnum, Lookup, ModelSubscription, OperationSubscription, Principal,
    Scope, SubscribeRequest,
};
pub use subscribe::custom::{BroadcastError, GroupReceiver, GroupStream, subscribe_groups};
pub use subscribe::filter::{FilterError, FilterLimits};
pub use subscribe::native::{ChangeStream, ChangesArgs, ModelChange, changes};
pub use subscribe::two_channel::{Confirmation, SubscribeArgs, SubscribeError, subscribe};
pub use transport::auth::{Anonymous, Authenticator};
pub use transport::client::{ClientPage, client_page};
pub use transport::server::{RouterBuilder, router};
pub use transport::standard::{Connection, ConnectionHooks, DefaultHooks, ProtocolConfig, default_on_connect};

/// Internals that graphex's own integration tests and benchmark drive
/// directly. Not part of the API: they change without notice.
#[doc(hidden)]
pub mod __internals {
    pub use crate::change::announce::{Prepared, prepare};
    pub use crate::change::group;
    pub use crate::hub::{Added, Channel, Delivery, Subscription, SubscriptionKey};
    pub use crate::subscribe::filter::{Clause, Filter};
}

#[doc(hidden)]
pub mod __private {
    pub use async_graphql;
    pub use async_trait;
    pub use futures_util::Stream;
    pub use sea_orm;
    pub use serde_json;

    pub use crate::change::announce::{announce_deleted, announce_saved};
    pub use crate::model::{allow_authenticated, allow_public, no_scope};
    pub use crate::model::{canonical_value, field_value, parse_value};

    use crate::model::FieldsEnum;
    use crate::subscribe::two_channel::Confirmation;

    /// The requested projection as payload keys.
    pub fn projection<F: FieldsEnum>(data: Option<Vec<F>>) -> Option<Vec<&'static str>> {
        data.map(|fields| {
            let mut names: Vec<&'static str> = fields.into_iter().map(FieldsEnum::field_name).collect();
            names.dedup();
            names
        })
    }

    /// The one-item stream a two-channel subscribe answers with.
    pub fn confirm<T: From<Confirmation>>(confirmation: Confirmation) -> impl Stream<Item = T> {
        futures_util::stream::once(std::future::ready(T::from(confirmation)))
    }

    /// A stream with no items (placeholders).
    pub fn empty_stream<T>() -> impl Stream<Item = T> {
        futures_util::stream::empty()
    }
}

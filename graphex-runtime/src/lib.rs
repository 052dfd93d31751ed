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
//! Beside them, [`capture`] reads changes from the database's log instead
//! of the hooks (PostgreSQL, feature `postgres-capture`).
//!
//! Each folder's module documentation says what it owns and which others it
//! calls. Generated code reaches the runtime through `__private`.

#![warn(missing_debug_implementations)]

pub mod capture;
mod change;
mod config;
mod hub;
pub mod layer;
mod model;
mod subscribe;
mod transport;

#[cfg(test)]
mod proptests;

pub use change::announce::{announce, announce_many, set_global_hub};
pub use change::transaction::{savepoint, transaction};
pub use config::{Config, WritePacing};
pub use hub::{ChannelError, CloseReason, Hub, Stats, Stopped};
pub use model::{
    Action, ActionSubscription, Denied, Field, FieldsEnum, Lookup, ModelSubscription, OperationSubscription, Principal,
    Scope, SubscribeRequest,
};
pub use subscribe::custom::{BroadcastError, GroupReceiver, GroupStream, subscribe_groups};
pub use subscribe::filter::{FilterError, FilterLimits};
pub use subscribe::native::{ChangeStream, ChangesArgs, ModelChange, changes};
pub use subscribe::resume::ResumeError;
pub use subscribe::two_channel::{Confirmation, SubscribeArgs, SubscribeError, subscribe};
pub use transport::auth::{Anonymous, Authenticated, Authenticator};
pub use transport::client::{ClientPage, client_page};
pub use transport::limits::RequestLimits;
pub use transport::metrics::{METRICS_CONTENT_TYPE, metrics_router, render_metrics};
pub use transport::server::{RouterBuilder, router, shutdown_signal};
pub use transport::standard::{Connection, ConnectionHooks, DefaultHooks, ProtocolConfig, default_on_connect};

/// Internals that graphex's own integration tests and benchmark drive
/// directly. Not part of the API: they change without notice.
#[doc(hidden)]
pub mod __internals {
    pub use crate::capture::text::{CaptureError, values_from_text};
    pub use crate::change::announce::{Prepared, prepare, prepare_values};
    pub use crate::change::codec::Fetched;
    pub use crate::change::group;
    pub use crate::hub::{Added, Channel, Delivery, Dispatched, Implied, Subscription, SubscriptionKey};
    pub use crate::subscribe::filter::{Clause, Filter};
    pub use crate::subscribe::row::RowFetch;

    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::sync::mpsc;

    use crate::hub::{ChannelError, Hub};

    /// The hub's channel-level operations, which the transports and
    /// subscribe functions use inside the crate. Import this trait to drive
    /// a [`Hub`] directly from a test or the benchmark.
    #[allow(async_fn_in_trait)]
    pub trait HubInternals {
        /// Opens a channel owned by `owner`.
        fn open_channel(&self, owner: Option<String>)
        -> Result<(Arc<Channel>, mpsc::Receiver<Delivery>), ChannelError>;
        /// The open channel with this id.
        fn channel(&self, id: &str) -> Option<Arc<Channel>>;
        /// Adds one subscription to a channel.
        async fn add_subscription(
            &self,
            channel: &Arc<Channel>,
            subscription: Subscription,
        ) -> Result<Added, ChannelError>;
        /// Adds subscriptions to a channel, all or none.
        async fn add_subscriptions(
            &self,
            channel: &Arc<Channel>,
            subscriptions: Vec<Subscription>,
        ) -> Result<Vec<Added>, ChannelError>;
        /// Removes a subscription from a channel.
        fn remove_subscription(&self, channel: &Channel, key: &SubscriptionKey) -> Result<(), ChannelError>;
        /// Closes a channel.
        fn close_channel(&self, channel: &Channel);
        /// Publishes an encoded change to its groups.
        async fn publish(&self, groups: &[String], message: Bytes);
    }

    impl HubInternals for Hub {
        fn open_channel(
            &self,
            owner: Option<String>,
        ) -> Result<(Arc<Channel>, mpsc::Receiver<Delivery>), ChannelError> {
            Hub::open_channel(self, owner)
        }
        fn channel(&self, id: &str) -> Option<Arc<Channel>> {
            Hub::channel(self, id)
        }
        async fn add_subscription(
            &self,
            channel: &Arc<Channel>,
            subscription: Subscription,
        ) -> Result<Added, ChannelError> {
            Hub::add_subscription(self, channel, subscription).await
        }
        async fn add_subscriptions(
            &self,
            channel: &Arc<Channel>,
            subscriptions: Vec<Subscription>,
        ) -> Result<Vec<Added>, ChannelError> {
            Hub::add_subscriptions(self, channel, subscriptions).await
        }
        fn remove_subscription(&self, channel: &Channel, key: &SubscriptionKey) -> Result<(), ChannelError> {
            Hub::remove_subscription(self, channel, key)
        }
        fn close_channel(&self, channel: &Channel) {
            Hub::close_channel(self, channel)
        }
        async fn publish(&self, groups: &[String], message: Bytes) {
            Hub::publish(self, groups, message).await
        }
    }
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

    /// The requested projection as payload keys, each once, in the order of
    /// its first occurrence.
    pub fn projection<F: FieldsEnum>(data: Option<Vec<F>>) -> Option<Vec<&'static str>> {
        data.map(|fields| crate::subscribe::two_channel::unique_fields(fields.into_iter().map(FieldsEnum::field_name)))
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

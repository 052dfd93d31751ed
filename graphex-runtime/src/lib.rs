//! The run-time half of graphex: carries model changes through a channel
//! layer to subscribed WebSocket clients.
//!
//! The pipeline: a SeaORM hook ([`mod@announce`]) serializes a change once and
//! publishes it to its groups through a [`layer::ChannelLayer`]; the
//! [`Hub`] of each process fans it out to the channels in the group; each
//! channel's socket task applies its subscriptions' filters and projections
//! and writes frames ([`server`]).

pub mod announce;
pub mod broadcast;
pub mod client;
pub mod config;
pub mod filter;
pub mod forward;
pub mod group;
pub mod hub;
pub mod layer;
pub mod model;
pub mod native;
pub mod notification;
pub mod protocol;
pub mod scope;
pub mod server;
mod shard;
pub mod subscribe;

pub use announce::{announce, announce_many, savepoint, set_global_hub, transaction};
pub use broadcast::{BroadcastError, GroupReceiver, GroupStream, subscribe_groups};
pub use client::{ClientPage, client_page};
pub use config::{Config, WritePacing};
pub use filter::{Filter, FilterError, FilterLimits, Lookup};
pub use hub::{Hub, Stats};
pub use model::{Action, ActionSubscription, Field, FieldsEnum, ModelSubscription, OperationSubscription};
pub use native::{ChangeAction, ChangeStream, ChangesArgs, ModelChange, changes};
pub use protocol::{Connection, ConnectionHooks, DefaultHooks, ProtocolConfig};
pub use scope::{Denied, Principal, Scope, SubscribeRequest};
pub use server::RouterBuilder;
pub use server::{Anonymous, Authenticator, router};
pub use subscribe::{Confirmation, SubscribeArgs, SubscribeError, subscribe};

#[doc(hidden)]
pub mod __private {
    pub use async_graphql;
    pub use async_trait;
    pub use futures_util::Stream;
    pub use sea_orm;
    pub use serde_json;

    pub use crate::announce::{announce_deleted, announce_saved};
    pub use crate::model::{canonical_value, field_value, parse_value};
    pub use crate::scope::{allow_authenticated, allow_public, no_scope};

    use crate::model::FieldsEnum;
    use crate::subscribe::Confirmation;

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

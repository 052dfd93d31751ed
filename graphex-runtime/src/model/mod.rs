//! Stage 1 of the pipeline: what the derive tells the runtime about a
//! model (its stream, fields, primary key, index fields, scope and
//! authorization), with the types those name: who is asking
//! ([`Principal`], [`SubscribeRequest`]), what they may see ([`Scope`],
//! [`Lookup`]) and how a refusal reads ([`Denied`]).
//!
//! Calls nothing else in the crate: every other stage reads it.

mod access;
mod lookup;

pub use access::{Denied, Principal, Scope, SubscribeRequest, allow_authenticated, allow_public, no_scope};
pub use lookup::Lookup;

use async_graphql::Enum;
use sea_orm::{EntityTrait, Value as DbValue};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value as Json};

/// What happened to a row (GraphQL enum `Action`).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[graphql(name = "Action", rename_items = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A row was inserted.
    Create,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
}

impl Action {
    /// Every action, in wire order.
    pub const ALL: [Action; 3] = [Action::Create, Action::Update, Action::Delete];

    /// The lower-case wire name: `create`, `update` or `delete`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// The `action` argument of a model subscription (GraphQL `ActionSubscriptionEnum`).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(name = "ActionSubscriptionEnum", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum ActionSubscription {
    /// Rows created.
    Create,
    /// Rows updated.
    Update,
    /// Rows deleted.
    Delete,
    /// Create, update and delete.
    AllActions,
}

impl ActionSubscription {
    /// The concrete actions this argument stands for.
    pub fn actions(self) -> &'static [Action] {
        match self {
            ActionSubscription::Create => &[Action::Create],
            ActionSubscription::Update => &[Action::Update],
            ActionSubscription::Delete => &[Action::Delete],
            ActionSubscription::AllActions => &Action::ALL,
        }
    }
}

/// The `operation` argument of a model subscription (GraphQL `OperationSubscriptionEnum`).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[graphql(name = "OperationSubscriptionEnum", rename_items = "SCREAMING_SNAKE_CASE")]
pub enum OperationSubscription {
    /// Join the groups for these arguments.
    Subscribe,
    /// Leave the groups joined by a subscribe with the same arguments.
    Unsubscribe,
}

/// One payload field of a model: its wire name, its column, and how to read a
/// client-supplied JSON value as the field's own Rust type.
pub struct Field<E: EntityTrait> {
    /// The key in payloads and filters (the field name, or its `rename`).
    pub name: &'static str,
    /// The SeaORM column behind the field.
    pub column: E::Column,
    /// JSON -> typed database value, through the field's Rust type.
    pub parse: fn(Json) -> Result<DbValue, serde_json::Error>,
    /// JSON -> the JSON this field's Rust type serializes to (so that values
    /// from clients compare equal to values read from rows).
    pub canonical: fn(Json) -> Result<Json, serde_json::Error>,
}

impl<E: EntityTrait> std::fmt::Debug for Field<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Field").field("name", &self.name).finish_non_exhaustive()
    }
}

/// [`Field::parse`] for a field of type `T`.
pub fn parse_value<T>(json: Json) -> Result<DbValue, serde_json::Error>
where
    T: DeserializeOwned + Into<DbValue>,
{
    serde_json::from_value::<T>(json).map(Into::into)
}

/// [`Field::canonical`] for a field of type `T`.
pub fn canonical_value<T>(json: Json) -> Result<Json, serde_json::Error>
where
    T: DeserializeOwned + Serialize,
{
    serde_json::from_value::<T>(json).and_then(|value| serde_json::to_value(&value))
}

/// Serializes one field of a row. Serialization of plain column types cannot
/// fail; a custom type whose `Serialize` does is sent as `null` and logged.
pub fn field_value<T: Serialize + ?Sized>(name: &str, value: &T) -> Json {
    serde_json::to_value(value).unwrap_or_else(|error| {
        tracing::error!(field = name, %error, "field could not be serialized; sent as null");
        Json::Null
    })
}

/// A SeaORM model with a live subscription. Implemented by
/// `#[derive(Subscription)]`; everything here is read by the runtime's
/// generic functions, never written by hand.
pub trait ModelSubscription: sea_orm::FromQueryResult + Clone + Send + Sync + 'static {
    /// The model's entity.
    type Entity: EntityTrait<Model = Self>;

    /// The stream name notifications carry, and the prefix of every group.
    const STREAM: &'static str;
    /// The `model` label notifications carry.
    const LABEL: &'static str;
    /// Whether notifications carry the row (`true`) or only `{"id": pk}`.
    const FULL_PAYLOAD: bool;
    /// Index into [`ModelSubscription::FIELDS`] of the primary key.
    const PRIMARY_KEY: usize;
    /// Every payload field (skipped fields are absent).
    const FIELDS: &'static [Field<Self::Entity>];
    /// Names of the index fields, sorted.
    const INDEX_FIELDS: &'static [&'static str];

    /// The primary key as JSON.
    fn primary_key(&self) -> Json;
    /// Every payload field of this row, serialized once.
    fn values(&self) -> Map<String, Json>;
    /// The index field values, in [`ModelSubscription::INDEX_FIELDS`] order,
    /// read from the row itself (no query).
    fn index_values(&self) -> Vec<(&'static str, Json)>;
    /// Decides whether this request may subscribe.
    fn authorize(request: &SubscribeRequest<'_>) -> Result<(), Denied>;
    /// The server-forced filter for this request.
    fn scope(request: &SubscribeRequest<'_>) -> Result<Scope<Self::Entity>, Denied>;
}

/// Implemented by the generated `<Name>Fields` enum: the payload key of each item.
pub trait FieldsEnum: Copy + Send + Sync + 'static {
    /// The payload key this item selects.
    fn field_name(self) -> &'static str;
}

/// Finds a field by payload name.
pub(crate) fn field_index<M: ModelSubscription>(name: &str) -> Option<usize> {
    M::FIELDS.iter().position(|field| field.name == name)
}

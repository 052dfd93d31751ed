//! The two-channel subscribe: a `subscription { ... }` operation executed
//! once over HTTP joins (or leaves) groups for a WebSocket channel and
//! answers with a confirmation.

use std::sync::Arc;

use async_graphql::{Context, ID};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::Value as Json;

use crate::change::group;
use crate::hub::{Channel, ChannelError, Hub, RowCheck, Subscription, SubscriptionKey};
use crate::model::{ActionSubscription, ModelSubscription, OperationSubscription};
use crate::model::{Denied, Principal, SubscribeRequest};
use crate::subscribe::filter::{Filter, FilterError};

/// The arguments of a model subscription field.
#[derive(Clone, Debug)]
pub struct SubscribeArgs {
    /// The channel id from the WebSocket handshake.
    pub channel_id: String,
    /// Which actions.
    pub action: ActionSubscription,
    /// Subscribe or unsubscribe.
    pub operation: OperationSubscription,
    /// Only this primary key.
    pub id: Option<ID>,
    /// Client filters.
    pub filters: Option<Json>,
    /// Requested fields (full-payload mode only).
    pub projection: Option<Vec<&'static str>>,
}

impl SubscribeArgs {
    /// Collects the arguments (called by generated code).
    pub fn new(
        channel_id: String,
        action: ActionSubscription,
        operation: OperationSubscription,
        id: Option<ID>,
        filters: Option<async_graphql::Json<Json>>,
        projection: Option<Vec<&'static str>>,
    ) -> Self {
        SubscribeArgs { channel_id, action, operation, id, filters: filters.map(|json| json.0), projection }
    }
}

/// The answer to a subscribe or unsubscribe: `{ok, error, stream, operation, action}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmation {
    /// Whether it took effect.
    pub ok: bool,
    /// Why not.
    pub error: Option<String>,
    /// The model's stream.
    pub stream: String,
    /// The operation.
    pub operation: OperationSubscription,
    /// The action.
    pub action: ActionSubscription,
}

/// Why a subscribe or unsubscribe was refused; the message reaches the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The schema was built without a [`Hub`].
    #[error("subscriptions are not enabled on this server")]
    NoHub,
    /// The channel is unknown or foreign, or a limit was reached.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// Authorization or scope refused.
    #[error("not authorized: {0}")]
    Denied(#[from] Denied),
    /// The filter is invalid.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// `id` does not fit the primary key.
    #[error("invalid id `{0}`")]
    InvalidId(String),
    /// The filter needs a row check and the schema has no database.
    #[error("filters on fields other than the id need the server's database, which is not configured")]
    NoDatabase,
}

/// Runs a subscribe or unsubscribe for model `M` (called by generated code).
#[tracing::instrument(skip_all, fields(stream = M::STREAM, channel = %args.channel_id, operation = ?args.operation))]
pub async fn subscribe<M: ModelSubscription>(ctx: &Context<'_>, args: SubscribeArgs) -> Confirmation {
    let outcome = apply::<M>(ctx, &args).await;
    if let Err(error) = &outcome {
        tracing::debug!(%error, "subscription refused");
    }
    Confirmation {
        ok: outcome.is_ok(),
        error: outcome.err().map(|error| error.to_string()),
        stream: M::STREAM.to_owned(),
        operation: args.operation,
        action: args.action,
    }
}

async fn apply<M: ModelSubscription>(ctx: &Context<'_>, args: &SubscribeArgs) -> Result<(), SubscribeError> {
    let hub = ctx.data_opt::<Hub>().ok_or(SubscribeError::NoHub)?;
    let channel = hub.channel(&args.channel_id).ok_or(ChannelError::UnknownChannel)?;
    let principal = ctx.data_opt::<Principal>();
    if channel.owner() != principal.map(|principal| principal.id.as_str()) {
        return Err(ChannelError::ForeignChannel.into());
    }
    let id = args.id.as_ref().map(|id| canonical_id::<M>(id)).transpose()?;
    let keys = args.action.actions().iter().map(|&action| SubscriptionKey {
        stream: M::STREAM,
        action,
        id: id.clone(),
        filters: args.filters.clone(),
        projection: args.projection.clone(),
    });

    if args.operation == OperationSubscription::Unsubscribe {
        let mut removed = 0;
        for key in keys {
            match hub.remove_subscription(&channel, &key) {
                Ok(()) => removed += 1,
                Err(ChannelError::NotSubscribed) => {}
                Err(error) => return Err(error.into()),
            }
        }
        return if removed == 0 { Err(ChannelError::NotSubscribed.into()) } else { Ok(()) };
    }

    let subscriptions =
        build_subscriptions::<M>(ctx, hub, args.action, id, args.filters.as_ref(), args.projection.clone())?;
    add_all(hub, &channel, subscriptions).await
}

/// Checks authorization, scope and filters for model `M` and builds one
/// [`Subscription`] per action, each on its group. Shared by the
/// two-channel subscribe and the native `<name>Changes` fields.
pub(crate) fn build_subscriptions<M: ModelSubscription>(
    ctx: &Context<'_>,
    hub: &Hub,
    action: ActionSubscription,
    id: Option<Json>,
    filters: Option<&Json>,
    projection: Option<Vec<&'static str>>,
) -> Result<Vec<Subscription>, SubscribeError> {
    let request = SubscribeRequest::new(ctx);
    M::authorize(&request)?;
    let scope = Filter::from_scope::<M>(&M::scope(&request)?)?;
    let client = match filters {
        Some(filters) => Filter::parse::<M>(filters, &hub.config().filter_limits)?,
        None => Filter::default(),
    };
    let filter = Filter::merge(scope, client);
    let check = row_check::<M>(ctx, &filter)?;

    let pinned: Option<Vec<(&str, &Json)>> =
        M::INDEX_FIELDS.iter().map(|name| filter.pinned(name).map(|value| (*name, value))).collect();
    let subscriptions = action
        .actions()
        .iter()
        .map(|&action| {
            let key = SubscriptionKey {
                stream: M::STREAM,
                action,
                id: id.clone(),
                filters: filters.cloned(),
                projection: projection.clone(),
            };
            let group = match (&id, &pinned) {
                (Some(pk), _) => group::instance(M::STREAM, action, pk),
                (None, Some(pairs)) if !pairs.is_empty() => group::indexed(M::STREAM, action, pairs),
                _ => group::coarse(M::STREAM, action),
            };
            Subscription { key, group, filter: filter.clone(), check: check.clone() }
        })
        .collect();
    Ok(subscriptions)
}

/// Adds every subscription to the channel, or none of them, once the
/// layer delivers their groups here ([`Hub::add_subscriptions`]).
pub(crate) async fn add_all(
    hub: &Hub,
    channel: &Arc<Channel>,
    subscriptions: Vec<Subscription>,
) -> Result<(), SubscribeError> {
    hub.add_subscriptions(channel, subscriptions).await?;
    Ok(())
}

/// Reads `id` as the primary key's own type: as given, then as a number.
pub(crate) fn canonical_id<M: ModelSubscription>(id: &ID) -> Result<Json, SubscribeError> {
    let field = &M::FIELDS[M::PRIMARY_KEY];
    (field.canonical)(Json::String(id.to_string()))
        .or_else(|_| {
            let number: Json = serde_json::from_str(id.as_str()).map_err(|_| ())?;
            (field.canonical)(number).map_err(|_| ())
        })
        .map_err(|()| SubscribeError::InvalidId(id.to_string()))
}

/// In full-payload mode every clause is decided from the change. In id-only
/// mode a clause on another field needs one query per change, bounded by
/// the primary key.
fn row_check<M: ModelSubscription>(ctx: &Context<'_>, filter: &Filter) -> Result<Option<RowCheck>, SubscribeError> {
    let pk_name = M::FIELDS[M::PRIMARY_KEY].name;
    if M::FULL_PAYLOAD || filter.clauses().iter().all(|clause| clause.name == pk_name) {
        return Ok(None);
    }
    let db = ctx.data_opt::<DatabaseConnection>().ok_or(SubscribeError::NoDatabase)?.clone();
    let filter = filter.clone();
    let check: RowCheck = Arc::new(move |pk: Json| {
        let db = db.clone();
        let condition = filter.condition::<M>(db.get_database_backend());
        Box::pin(async move {
            let pk_field = &M::FIELDS[M::PRIMARY_KEY];
            let Ok(pk) = (pk_field.parse)(pk) else { return false };
            let row =
                <M::Entity as EntityTrait>::find().filter(pk_field.column.eq(pk)).filter(condition).one(&db).await;
            match row {
                Ok(row) => row.is_some(),
                Err(error) => {
                    tracing::warn!(%error, "row check failed; notification dropped");
                    false
                }
            }
        })
    });
    Ok(Some(check))
}

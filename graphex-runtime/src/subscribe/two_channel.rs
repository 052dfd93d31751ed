//! The two-channel subscribe: a `subscription { ... }` operation executed
//! once over HTTP joins (or leaves) groups for a WebSocket channel and
//! answers with a confirmation.

use std::collections::HashSet;
use std::sync::Arc;

use async_graphql::{Context, ID};
use sea_orm::DatabaseConnection;
use serde_json::Value as Json;

use crate::change::group;
use crate::hub::{Channel, ChannelError, Hub, Implied, Subscription, SubscriptionKey};
use crate::model::{Action, ActionSubscription, Lookup, ModelSubscription, OperationSubscription};
use crate::model::{Denied, Principal, SubscribeRequest};
use crate::subscribe::filter::{Filter, FilterError};
use crate::subscribe::row::{RowFetch, row_fetch};

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
    /// Requested fields (full-payload mode only), each once, in the order
    /// of its first occurrence.
    pub projection: Option<Arc<[&'static str]>>,
    /// Frames carry each change's cursor (`cursors: true`, or `after`).
    pub cursors: bool,
    /// Resume after this cursor.
    pub after: Option<String>,
}

/// Requested fields with each one once, in the order of its first
/// occurrence: the frame lists the fields in that order, and a request
/// repeating names costs no more than one naming each once.
pub(crate) fn unique_fields(fields: impl IntoIterator<Item = &'static str>) -> Vec<&'static str> {
    let mut seen = HashSet::new();
    fields.into_iter().filter(|field| seen.insert(*field)).collect()
}

/// The projection subscriptions keep: [`unique_fields`], one allocation
/// shared by the subscriptions of one subscribe.
pub(crate) fn shared_projection(fields: Vec<&'static str>) -> Arc<[&'static str]> {
    Arc::from(unique_fields(fields))
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
        let projection = projection.map(shared_projection);
        SubscribeArgs {
            channel_id,
            action,
            operation,
            id,
            filters: filters.map(|json| json.0),
            projection,
            cursors: false,
            after: None,
        }
    }

    /// Cursors in frames, and the cursor to resume after (which implies them).
    pub fn resume(mut self, cursors: bool, after: Option<String>) -> Self {
        self.cursors = cursors || after.is_some();
        self.after = after;
        self
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
    /// `after` is malformed, or the history cannot resume after it.
    #[error(transparent)]
    Resume(#[from] crate::subscribe::resume::ResumeError),
}

/// Runs a subscribe or unsubscribe for model `M` (called by generated code).
#[tracing::instrument(
    name = "subscribe",
    skip_all,
    fields(
        protocol = "two-channel",
        stream = M::STREAM,
        channel = %args.channel_id,
        operation = ?args.operation,
        action = ?args.action,
        principal = ctx.data_opt::<Principal>().map(|principal| principal.id.as_str()),
    )
)]
pub async fn subscribe<M: ModelSubscription>(ctx: &Context<'_>, args: SubscribeArgs) -> Confirmation {
    let outcome = apply::<M>(ctx, &args).await;
    match &outcome {
        Ok(()) => tracing::debug!("confirmed"),
        Err(error) => tracing::debug!(%error, "refused"),
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
    let filters = args.filters.clone().map(Arc::new);
    if args.operation == OperationSubscription::Unsubscribe {
        let keys = args.action.actions().iter().map(|&action| SubscriptionKey {
            stream: M::STREAM,
            action,
            id: id.clone(),
            filters: filters.clone(),
            projection: args.projection.clone(),
            cursors: args.cursors,
        });
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

    let after = args.after.as_deref().map(crate::subscribe::resume::parse_after).transpose()?;
    let mut subscriptions = build_subscriptions::<M>(ctx, hub, args.action, id, filters, args.projection.clone())?;
    for subscription in &mut subscriptions {
        subscription.key.cursors = args.cursors;
    }
    crate::subscribe::resume::add_resumed(hub, &channel, subscriptions, after).await
}

/// Checks authorization, scope and filters for model `M` and builds one
/// [`Subscription`] per action, each on its group. Shared by the
/// two-channel subscribe and the native `<name>Changes` fields.
pub(crate) fn build_subscriptions<M: ModelSubscription>(
    ctx: &Context<'_>,
    hub: &Hub,
    action: ActionSubscription,
    id: Option<Json>,
    filters: Option<Arc<Json>>,
    projection: Option<Arc<[&'static str]>>,
) -> Result<Vec<Subscription>, SubscribeError> {
    let request = SubscribeRequest::new(ctx);
    M::authorize(&request)?;
    let scope = Filter::from_scope::<M>(&M::scope(&request)?)?;
    let client = match &filters {
        Some(filters) => Filter::parse::<M>(filters, &hub.config().filter_limits)?,
        None => Filter::default(),
    };
    let filter = Filter::merge(scope, client);
    let row = if needs_row::<M>(&filter) {
        let db = ctx.data_opt::<DatabaseConnection>().ok_or(SubscribeError::NoDatabase)?;
        Some(row_fetch::<M>(db.clone()))
    } else {
        None
    };
    let shared = Shared { filters, filter: Arc::new(filter), projection, row };
    Ok(per_action(M::STREAM, M::INDEX_FIELDS, action.actions(), id, &shared))
}

/// What the subscriptions of one subscribe share: one allocation each,
/// however many actions.
struct Shared {
    filters: Option<Arc<Json>>,
    filter: Arc<Filter>,
    projection: Option<Arc<[&'static str]>>,
    row: Option<RowFetch>,
}

/// One subscription per action, on the group its `id` or pinned index
/// fields select.
fn per_action(
    stream: &'static str,
    index_fields: &[&'static str],
    actions: &[Action],
    id: Option<Json>,
    shared: &Shared,
) -> Vec<Subscription> {
    let pinned: Option<Vec<(&str, &Json)>> =
        index_fields.iter().map(|name| shared.filter.pinned(name).map(|value| (*name, value))).collect();
    actions
        .iter()
        .map(|&action| {
            let (group, implied) = match (&id, &pinned) {
                (Some(pk), _) => (group::instance(stream, action, pk), None),
                (None, Some(pairs)) if !pairs.is_empty() => {
                    let group = group::indexed(stream, action, pairs);
                    let implied = implied_by(&group, &shared.filter, pairs);
                    (group, implied)
                }
                _ => (group::coarse(stream, action), None),
            };
            let key = SubscriptionKey {
                stream,
                action,
                id: id.clone(),
                filters: shared.filters.clone(),
                projection: shared.projection.clone(),
                cursors: false,
            };
            Subscription {
                key,
                group: group.into(),
                filter: shared.filter.clone(),
                row: shared.row.clone(),
                resume: None,
                implied,
            }
        })
        .collect()
}

/// Whether `group`, named after `pairs` (the values `filter` pins the
/// index fields to), implies `filter`: one index field, and the filter is
/// its one equality clause ([`Implied`]). Not for a hashed name (`#`, too
/// long to spell out), whose text says nothing about the values.
fn implied_by(group: &str, filter: &Filter, pairs: &[(&str, &Json)]) -> Option<Implied> {
    let ([clause], [(name, value)]) = (filter.clauses(), pairs) else { return None };
    let same = clause.lookup == Lookup::Exact && clause.name == *name && std::ptr::eq(&clause.value, *value);
    (same && !group.contains('#')).then(|| Implied {
        field: clause.field,
        name: clause.name,
        string: value.is_string(),
    })
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
/// mode a clause on another field than the primary key needs the row, read
/// back once per change for every subscription of the process
/// ([`crate::subscribe::row`]).
fn needs_row<M: ModelSubscription>(filter: &Filter) -> bool {
    let pk_name = M::FIELDS[M::PRIMARY_KEY].name;
    !M::FULL_PAYLOAD && filter.clauses().iter().any(|clause| clause.name != pk_name)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::change::codec::Fetched;
    use crate::model::Lookup;
    use crate::subscribe::filter::Clause;

    #[test]
    fn repeated_fields_are_kept_once_in_the_order_of_their_first_occurrence() {
        let repeated = ["email", "username", "email", "id", "username", "id", "email"].repeat(1000);
        assert_eq!(unique_fields(repeated.clone()), ["email", "username", "id"]);
        assert_eq!(&*shared_projection(repeated), ["email", "username", "id"]);
        assert_eq!(unique_fields(["id", "email"]), ["id", "email"], "a list without repeats is unchanged");
        assert!(unique_fields([]).is_empty());
    }

    fn shared_filter(clauses: Vec<Clause>) -> Shared {
        Shared { filters: None, filter: Arc::new(Filter::of(clauses)), projection: None, row: None }
    }

    fn room(lookup: Lookup, value: Json) -> Clause {
        Clause { field: 1, name: "room", lookup, value }
    }

    #[test]
    fn a_value_indexed_group_implies_its_one_equality_clause_only() {
        let create = &[Action::Create][..];
        let implied =
            |shared: &Shared, id: Option<Json>| per_action("messages", &["room"], create, id, shared)[0].implied;
        let on_room = shared_filter(vec![room(Lookup::Exact, json!(5))]);
        assert_eq!(implied(&on_room, None), Some(Implied { field: 1, name: "room", string: false }));
        let on_text = shared_filter(vec![room(Lookup::Exact, json!("lobby"))]);
        assert_eq!(implied(&on_text, None), Some(Implied { field: 1, name: "room", string: true }));
        // Not implied: another clause beside it, another lookup (coarse
        // group), a subscription by id, a hashed group name.
        let author = Clause { field: 2, name: "author", lookup: Lookup::Exact, value: json!("neo") };
        assert_eq!(implied(&shared_filter(vec![room(Lookup::Exact, json!(5)), author]), None), None);
        assert_eq!(implied(&shared_filter(vec![room(Lookup::Gt, json!(5))]), None), None);
        assert_eq!(implied(&on_room, Some(json!(1))), None);
        let long = shared_filter(vec![room(Lookup::Exact, json!("x".repeat(400)))]);
        assert!(per_action("messages", &["room"], create, None, &long)[0].group.contains('#'));
        assert_eq!(implied(&long, None), None);
    }

    #[test]
    fn the_subscriptions_of_one_subscribe_share_one_allocation_of_each_argument() {
        let filter = Filter::of(vec![Clause { field: 1, name: "post", lookup: Lookup::Exact, value: json!(7) }]);
        let row: RowFetch = Arc::new(|_| Box::pin(async { Fetched::Gone }));
        let shared = Shared {
            filters: Some(Arc::new(json!({"post": 7}))),
            filter: Arc::new(filter),
            projection: Some(shared_projection(vec!["text", "id", "text"])),
            row: Some(row),
        };
        let subscriptions = per_action("comments", &[], ActionSubscription::AllActions.actions(), None, &shared);
        let groups: Vec<&str> = subscriptions.iter().map(|subscription| &*subscription.group).collect();
        assert_eq!(groups, ["comments-create", "comments-update", "comments-delete"]);
        for subscription in &subscriptions {
            assert!(Arc::ptr_eq(&subscription.filter, &shared.filter));
            assert!(Arc::ptr_eq(subscription.key.filters.as_ref().unwrap(), shared.filters.as_ref().unwrap()));
            assert!(Arc::ptr_eq(subscription.key.projection.as_ref().unwrap(), shared.projection.as_ref().unwrap()));
            assert!(Arc::ptr_eq(subscription.row.as_ref().unwrap(), shared.row.as_ref().unwrap()));
            assert_eq!(subscription.key.projection.as_deref(), Some(&["text", "id"][..]));
        }
        // Keys still compare by content: an equal subscribe made apart is recognised.
        let apart = SubscriptionKey {
            stream: "comments",
            action: Action::Update,
            id: None,
            filters: Some(Arc::new(json!({"post": 7}))),
            projection: Some(Arc::from(["text", "id"])),
            cursors: false,
        };
        assert_eq!(subscriptions[1].key, apart);
    }
}

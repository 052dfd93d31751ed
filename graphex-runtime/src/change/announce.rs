//! Announcing changes: from SeaORM hooks, after a transaction commits, or
//! by hand for bulk operations (which run no hooks).
//!
//! A change is serialized once, when it is announced, into one message that
//! is sent to each of its groups: coarse, per instance and, with index
//! fields, value-indexed.

use std::borrow::Cow;
use std::future::Future;
use std::sync::OnceLock;

use bytes::Bytes;
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, EntityTrait, TryIntoModel};
use serde_json::{Map, Value as Json};

use crate::change::codec::{Change, Handed};
use crate::change::group;
use crate::hub::Hub;
use crate::model::{Action, ModelSubscription};

use super::transaction;

tokio::task_local! {
    static CURRENT: Hub;
}

static GLOBAL: OnceLock<Hub> = OnceLock::new();

/// Makes `hub` the one changes are announced to when no [`Hub::scope`] is
/// active (background jobs, scripts). Returns false if one was already set.
pub fn set_global_hub(hub: Hub) -> bool {
    GLOBAL.set(hub).is_ok()
}

impl Hub {
    /// Runs `future` with changes announced to this hub. The server does this
    /// for every HTTP request; call it around other code that changes rows.
    pub async fn scope<F: Future>(&self, future: F) -> F::Output {
        CURRENT.scope(self.clone(), future).await
    }
}

pub(super) fn current_hub() -> Option<Hub> {
    CURRENT.try_with(Hub::clone).ok().or_else(|| GLOBAL.get().cloned())
}

/// A change serialized once, with the groups it goes to.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Groups to send to.
    pub groups: Vec<String>,
    /// The encoded change.
    pub message: Bytes,
    /// The change itself, handed to this process's dispatch when the layer
    /// delivers in the publisher's task (in memory), so that the message
    /// just encoded is not decoded again, nor its values serialized again
    /// for the frame.
    pub change: Option<Handed>,
}

impl Prepared {
    fn of(groups: Vec<String>, change: Change) -> Prepared {
        let (message, values_at) = change.encode_handed();
        Prepared { groups, message, change: Some(Handed { change, values_at }) }
    }
}

/// Serializes a change of `row` and names its groups.
pub fn prepare<M: ModelSubscription>(row: &M, action: Action) -> Prepared {
    let change = Change::of(row, action);
    let mut groups = key_groups::<M>(action, &change.pk);
    if !M::INDEX_FIELDS.is_empty() {
        let values = row.index_values();
        let group = match values.as_slice() {
            [(name, value)] => group::indexed(M::STREAM, action, &[(*name, value)]),
            values => {
                let pairs: Vec<(&str, &Json)> = values.iter().map(|(name, value)| (*name, value)).collect();
                group::indexed(M::STREAM, action, &pairs)
            }
        };
        groups.push(group);
    }
    Prepared::of(groups, change)
}

/// As [`prepare`], for a row known only by its payload values, as
/// `values()` gives them (a change captured from the database's log,
/// `capture::values_from_text`): the same groups and the same message.
pub fn prepare_values<M: ModelSubscription>(action: Action, values: Map<String, Json>) -> Prepared {
    let pk_field = M::FIELDS[M::PRIMARY_KEY].name;
    let pk = values.get(pk_field).cloned().unwrap_or(Json::Null);
    let mut groups = key_groups::<M>(action, &pk);
    if !M::INDEX_FIELDS.is_empty() {
        let pairs: Vec<(&str, &Json)> =
            M::INDEX_FIELDS.iter().map(|name| (*name, values.get(*name).unwrap_or(&Json::Null))).collect();
        groups.push(group::indexed(M::STREAM, action, &pairs));
    }
    let change = Change {
        version: Change::VERSION,
        stream: Cow::Borrowed(M::STREAM),
        model: Cow::Borrowed(M::LABEL),
        action,
        pk,
        pk_field: Cow::Borrowed(pk_field),
        values: M::FULL_PAYLOAD.then_some(values),
        nonce: Change::nonce(),
    };
    Prepared::of(groups, change)
}

/// The coarse and per-instance groups of a change.
fn key_groups<M: ModelSubscription>(action: Action, pk: &Json) -> Vec<String> {
    // Room for the value-indexed group: one allocation for the list.
    let mut groups = Vec::with_capacity(3);
    groups.push(group::coarse(M::STREAM, action));
    groups.push(group::instance(M::STREAM, action, pk));
    groups
}

/// Sends a prepared change now, or, inside [`transaction()`], after the
/// commit: it is buffered in the innermost open [`savepoint`] (or the
/// transaction itself), like a hook's change on that transaction.
///
/// [`transaction()`]: super::transaction::transaction
/// [`savepoint`]: super::transaction::savepoint
pub(crate) async fn send(prepared: Prepared) {
    if let Some(prepared) = transaction::buffer(prepared) {
        publish_now(prepared).await;
    }
}

/// Publishes a change to the hub in scope.
async fn publish_now(prepared: Prepared) {
    match current_hub() {
        Some(hub) => hub.publish_change(&prepared.groups, prepared.message, prepared.change).await,
        None => tracing::warn!("change not announced: no graphex hub in scope (see Hub::scope, set_global_hub)"),
    }
}

/// Sends a change a hook announced for a statement that ran on `db`: now,
/// buffered, or refused, as [`transaction::buffer_on`] decides.
/// Whether the hub in scope captures `stream` from the database's log: its
/// hooks then announce nothing (the log brings every committed change once).
fn captured(stream: &str) -> bool {
    current_hub().is_some_and(|hub| hub.is_captured(stream))
}

async fn send_on<C: ConnectionTrait>(db: &C, prepared: Prepared) -> Result<(), DbErr> {
    if let Some(prepared) = transaction::buffer_on(db, prepared)? {
        publish_now(prepared).await;
    }
    Ok(())
}

/// Announces one change of `row`.
pub async fn announce<M: ModelSubscription>(row: &M, action: Action) {
    send(prepare(row, action)).await;
}

/// Announces a change for each row: for `insert_many`, `update_many` and
/// `delete_many`, which run no SeaORM hooks. Read the rows first (for
/// deletes, before deleting them).
#[tracing::instrument(level = "debug", skip_all, fields(stream = M::STREAM, ?action, rows = rows.len()))]
pub async fn announce_many<M: ModelSubscription>(rows: &[M], action: Action) {
    for row in rows {
        announce(row, action).await;
    }
}

/// Hook entry point: a row was inserted (`insert`) or updated on `db`.
///
/// Errs only inside [`transaction()`](super::transaction::transaction), for a write on a connection graphex
/// cannot follow (see there); the hook returns the error.
#[tracing::instrument(level = "debug", name = "announce", skip_all, fields(stream = M::STREAM, insert))]
pub async fn announce_saved<M: ModelSubscription, C: ConnectionTrait>(
    row: &M,
    db: &C,
    insert: bool,
) -> Result<(), DbErr> {
    if captured(M::STREAM) {
        return Ok(());
    }
    send_on(db, prepare(row, if insert { Action::Create } else { Action::Update })).await
}

/// Hook entry point: a row was deleted on `db`. When the active model does
/// not hold every column, subscribers get the primary key only.
///
/// Errs like [`announce_saved`].
#[tracing::instrument(level = "debug", name = "announce", skip_all, fields(stream = <A::Entity as EntityTrait>::Model::STREAM, action = "delete"))]
pub async fn announce_deleted<A, C>(deleted: &A, db: &C) -> Result<(), DbErr>
where
    A: ActiveModelTrait + TryIntoModel<<A::Entity as EntityTrait>::Model> + Clone,
    <A::Entity as EntityTrait>::Model: ModelSubscription<Entity = A::Entity>,
    C: ConnectionTrait,
{
    if captured(<<A::Entity as EntityTrait>::Model as ModelSubscription>::STREAM) {
        return Ok(());
    }
    let prepared = match deleted.clone().try_into_model() {
        Ok(row) => prepare(&row, Action::Delete),
        Err(_) => {
            let field = &<<A::Entity as EntityTrait>::Model as ModelSubscription>::FIELDS
                [<<A::Entity as EntityTrait>::Model as ModelSubscription>::PRIMARY_KEY];
            let Some(pk) = deleted.get(field.column).into_value() else {
                tracing::warn!("deleted row has no primary key value; not announced");
                return Ok(());
            };
            prepare_pk::<<A::Entity as EntityTrait>::Model>(
                sea_orm::sea_query::sea_value_to_json_value(&pk),
                Action::Delete,
            )
        }
    };
    send_on(db, prepared).await
}

/// A change known only by its primary key: id-only payload, coarse and
/// per-instance groups (index values are unknown).
pub(crate) fn prepare_pk<M: ModelSubscription>(pk: Json, action: Action) -> Prepared {
    let pk = (M::FIELDS[M::PRIMARY_KEY].canonical)(pk.clone()).unwrap_or(pk);
    let change = Change {
        version: Change::VERSION,
        stream: Cow::Borrowed(M::STREAM),
        model: Cow::Borrowed(M::LABEL),
        action,
        pk_field: Cow::Borrowed(M::FIELDS[M::PRIMARY_KEY].name),
        values: None,
        pk,
        nonce: Change::nonce(),
    };
    Prepared::of(key_groups::<M>(action, &change.pk), change)
}

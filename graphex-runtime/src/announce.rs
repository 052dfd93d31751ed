//! Announcing changes: from SeaORM hooks, after a transaction commits, or
//! by hand for bulk operations (which run no hooks).
//!
//! A change is serialized once, when it is announced, into one message that
//! is sent to each of its groups: coarse, per instance and, with index
//! fields, value-indexed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, TransactionError, TransactionTrait,
    TryIntoModel,
};
use serde_json::Value as Json;

use crate::group;
use crate::hub::Hub;
use crate::model::{Action, ModelSubscription};
use crate::notification::Change;

tokio::task_local! {
    static CURRENT: Hub;
    static PENDING: Arc<Mutex<Vec<Prepared>>>;
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

fn current_hub() -> Option<Hub> {
    CURRENT.try_with(Hub::clone).ok().or_else(|| GLOBAL.get().cloned())
}

/// A change serialized once, with the groups it goes to.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Groups to send to.
    pub groups: Vec<String>,
    /// The encoded change.
    pub message: Bytes,
}

/// Serializes a change of `row` and names its groups.
pub fn prepare<M: ModelSubscription>(row: &M, action: Action) -> Prepared {
    let change = Change::of(row, action);
    let mut groups = key_groups::<M>(action, &change.pk);
    if !M::INDEX_FIELDS.is_empty() {
        let values = row.index_values();
        let pairs: Vec<(&str, &Json)> = values.iter().map(|(name, value)| (*name, value)).collect();
        groups.push(group::indexed(M::STREAM, action, &pairs));
    }
    Prepared { groups, message: change.encode() }
}

/// The coarse and per-instance groups of a change.
fn key_groups<M: ModelSubscription>(action: Action, pk: &Json) -> Vec<String> {
    vec![group::coarse(M::STREAM, action), group::instance(M::STREAM, action, pk)]
}

/// Sends a prepared change now, or, inside [`transaction`], after commit.
pub async fn send(prepared: Prepared) {
    let prepared = match PENDING
        .try_with(|pending| pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(prepared.clone()))
    {
        Ok(()) => return,
        Err(_) => prepared,
    };
    match current_hub() {
        Some(hub) => hub.publish(&prepared.groups, prepared.message).await,
        None => tracing::warn!("change not announced: no graphex hub in scope (see Hub::scope, set_global_hub)"),
    }
}

/// Announces one change of `row`.
pub async fn announce<M: ModelSubscription>(row: &M, action: Action) {
    send(prepare(row, action)).await;
}

/// Announces a change for each row: for `insert_many`, `update_many` and
/// `delete_many`, which run no SeaORM hooks. Read the rows first (for
/// deletes, before deleting them).
pub async fn announce_many<M: ModelSubscription>(rows: &[M], action: Action) {
    for row in rows {
        announce(row, action).await;
    }
}

/// Hook entry point: a row was inserted (`insert`) or updated.
pub async fn announce_saved<M: ModelSubscription>(row: &M, insert: bool) {
    announce(row, if insert { Action::Create } else { Action::Update }).await;
}

/// Hook entry point: a row was deleted. When the active model does not hold
/// every column, subscribers get the primary key only.
pub async fn announce_deleted<A>(deleted: &A)
where
    A: ActiveModelTrait + TryIntoModel<<A::Entity as EntityTrait>::Model> + Clone,
    <A::Entity as EntityTrait>::Model: ModelSubscription<Entity = A::Entity>,
{
    match deleted.clone().try_into_model() {
        Ok(row) => announce(&row, Action::Delete).await,
        Err(_) => {
            let field = &<<A::Entity as EntityTrait>::Model as ModelSubscription>::FIELDS
                [<<A::Entity as EntityTrait>::Model as ModelSubscription>::PRIMARY_KEY];
            let Some(pk) = deleted.get(field.column).into_value() else {
                tracing::warn!("deleted row has no primary key value; not announced");
                return;
            };
            send(prepare_pk::<<A::Entity as EntityTrait>::Model>(
                sea_orm::sea_query::sea_value_to_json_value(&pk),
                Action::Delete,
            ))
            .await;
        }
    }
}

/// A change known only by its primary key: id-only payload, coarse and
/// per-instance groups (index values are unknown).
pub fn prepare_pk<M: ModelSubscription>(pk: Json, action: Action) -> Prepared {
    let pk = (M::FIELDS[M::PRIMARY_KEY].canonical)(pk.clone()).unwrap_or(pk);
    let change = Change {
        stream: M::STREAM.to_owned(),
        model: M::LABEL.to_owned(),
        action,
        pk_field: M::FIELDS[M::PRIMARY_KEY].name.to_owned(),
        values: None,
        pk,
    };
    Prepared { groups: key_groups::<M>(action, &change.pk), message: change.encode() }
}

/// Runs `callback` in a database transaction; the changes its hooks announce
/// are sent after the commit, in order, and never if it rolls back.
///
/// A transaction begun with SeaORM's own `begin()` or `transaction()` is not
/// seen by graphex: its changes are announced as the hooks run.
pub async fn transaction<F, T, E>(db: &DatabaseConnection, callback: F) -> Result<T, TransactionError<E>>
where
    F: for<'c> FnOnce(&'c DatabaseTransaction) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>> + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    let pending: Arc<Mutex<Vec<Prepared>>> = Arc::default();
    let result = PENDING.scope(pending.clone(), db.transaction(callback)).await;
    let prepared = std::mem::take(&mut *pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    if result.is_ok() {
        for change in prepared {
            send(change).await;
        }
    }
    result
}

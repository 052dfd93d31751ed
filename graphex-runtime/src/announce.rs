//! Announcing changes: from SeaORM hooks, after a transaction commits, or
//! by hand for bulk operations (which run no hooks).
//!
//! A change is serialized once, when it is announced, into one message that
//! is sent to each of its groups: coarse, per instance and, with index
//! fields, value-indexed.

use std::any::type_name;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use bytes::Bytes;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, TransactionError,
    TransactionTrait, TryIntoModel,
};
use serde_json::Value as Json;

use crate::group;
use crate::hub::Hub;
use crate::model::{Action, ModelSubscription};
use crate::notification::Change;

tokio::task_local! {
    static CURRENT: Hub;
    static LEVELS: Levels;
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

/// Sends a prepared change now, or, inside [`transaction`], after the
/// commit: it is buffered in the innermost open [`savepoint`] (or the
/// transaction itself), like a hook's change on that transaction.
pub async fn send(prepared: Prepared) {
    let prepared = match LEVELS.try_with(Arc::clone) {
        Ok(levels) => match lock(&levels).last_mut() {
            Some(top) => {
                top.changes.push(prepared);
                return;
            }
            None => prepared,
        },
        Err(_) => prepared,
    };
    publish_now(prepared).await;
}

/// Publishes a change to the hub in scope.
async fn publish_now(prepared: Prepared) {
    match current_hub() {
        Some(hub) => hub.publish(&prepared.groups, prepared.message).await,
        None => tracing::warn!("change not announced: no graphex hub in scope (see Hub::scope, set_global_hub)"),
    }
}

/// Sends a change a hook announced for a statement that ran on `db`.
///
/// Outside [`transaction`]: now. Inside: on a transaction graphex knows
/// (the transaction's own or a [`savepoint`]'s), buffered in the innermost
/// open level; on a [`DatabaseConnection`] (autocommit: already committed),
/// now; on any other connection (a nested transaction begun with SeaORM's
/// `begin()` / `transaction()`, whose outcome graphex cannot see), refused
/// with an error the hook returns, so that the caller's `?` rolls the write
/// back.
async fn send_on<C: ConnectionTrait>(db: &C, prepared: Prepared) -> Result<(), DbErr> {
    let prepared = match LEVELS.try_with(Arc::clone) {
        Ok(levels) => {
            let mut levels = lock(&levels);
            let connection = type_name::<C>();
            let known =
                connection == type_name::<DatabaseTransaction>() && levels.iter().any(|level| level.txn == address(db));
            match levels.last_mut() {
                None => prepared,
                Some(top) if known => {
                    top.changes.push(prepared);
                    return Ok(());
                }
                Some(_) if connection == type_name::<DatabaseConnection>() => prepared,
                Some(_) => return Err(refusal(connection)),
            }
        }
        Err(_) => prepared,
    };
    publish_now(prepared).await;
    Ok(())
}

/// The error a hook returns for a change on a connection graphex cannot
/// follow inside [`transaction`].
fn refusal(connection: &str) -> DbErr {
    DbErr::Custom(format!(
        "graphex: change refused: saved inside graphex::transaction on a connection graphex does not know \
         ({connection}), such as a nested transaction begun with SeaORM's begin() or transaction(), whose \
         commit or rollback graphex cannot see; use graphex::savepoint(txn, ...) for nested transactions, \
         and save on the transaction graphex::transaction or graphex::savepoint gave"
    ))
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

/// Hook entry point: a row was inserted (`insert`) or updated on `db`.
///
/// Errs only inside [`transaction`], for a write on a connection graphex
/// cannot follow (see there); the hook returns the error.
pub async fn announce_saved<M: ModelSubscription, C: ConnectionTrait>(
    row: &M,
    db: &C,
    insert: bool,
) -> Result<(), DbErr> {
    send_on(db, prepare(row, if insert { Action::Create } else { Action::Update })).await
}

/// Hook entry point: a row was deleted on `db`. When the active model does
/// not hold every column, subscribers get the primary key only.
///
/// Errs like [`announce_saved`].
pub async fn announce_deleted<A, C>(deleted: &A, db: &C) -> Result<(), DbErr>
where
    A: ActiveModelTrait + TryIntoModel<<A::Entity as EntityTrait>::Model> + Clone,
    <A::Entity as EntityTrait>::Model: ModelSubscription<Entity = A::Entity>,
    C: ConnectionTrait,
{
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
/// Where a change goes depends on the connection the hook's statement ran
/// on:
///
/// - the `txn` given to `callback`, or a nested transaction begun with
///   [`savepoint`]: buffered, and sent after the commit unless the
///   transaction or a savepoint around the write rolls back;
/// - the [`DatabaseConnection`] itself (autocommit, another connection of
///   the pool): the write is already committed, so the change is sent at
///   once, whatever becomes of this transaction;
/// - anything else, notably a nested transaction begun with SeaORM's own
///   `begin()` or `transaction()`, whose commit or rollback graphex cannot
///   see: the hook fails with a [`DbErr::Custom`] that names
///   [`savepoint`], so that `?` rolls the write back instead of graphex
///   sending a change that may never have happened (or losing one that
///   did).
///
/// Changes announced by hand ([`announce`], [`announce_many`]) inside
/// `callback` are buffered in the innermost open savepoint.
///
/// Once the transaction has committed, its changes are published by a
/// spawned task (awaited here): if the caller's future is dropped during
/// the publish (a client that went away while a slow socket held the
/// publish back, a Redis round trip), the rest of the changes are still
/// sent, in order. The hub is the one in scope when the transaction
/// commits.
///
/// A `graphex::transaction` inside another one's callback is a separate
/// transaction on another connection: its changes are sent when it
/// commits. Outside `graphex::transaction`, hooks announce as they run,
/// whatever the connection.
pub async fn transaction<F, T, E>(db: &DatabaseConnection, callback: F) -> Result<T, TransactionError<E>>
where
    F: for<'c> FnOnce(&'c DatabaseTransaction) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>> + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    let levels: Levels = Arc::default();
    let result = LEVELS
        .scope(
            levels.clone(),
            db.transaction(|txn| {
                lock(&levels).push(Level { txn: address(txn), changes: Vec::new() });
                callback(txn)
            }),
        )
        .await;
    // The outer level is the first; a savepoint removes its own when it ends.
    let changes = std::mem::take(&mut *lock(&levels)).into_iter().next().map(|outer| outer.changes);
    if let (Ok(_), Some(changes)) = (&result, changes)
        && !changes.is_empty()
    {
        publish_committed(changes).await;
    }
    result
}

/// Publishes a committed transaction's changes, in order, from a task of
/// their own, so that they are all sent even if the caller goes away.
async fn publish_committed(changes: Vec<Prepared>) {
    // A spawned task does not inherit the task-local hub: resolve it here.
    let Some(hub) = current_hub() else {
        tracing::warn!(
            changes = changes.len(),
            "changes not announced: no graphex hub in scope (see Hub::scope, set_global_hub)"
        );
        return;
    };
    let publish = tokio::spawn(async move {
        for change in changes {
            hub.publish(&change.groups, change.message).await;
        }
    });
    if let Err(error) = publish.await
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Runs `callback` in a nested transaction of `txn` (a `SAVEPOINT`), the
/// same way SeaORM's `txn.transaction(callback)` does, and tells
/// [`transaction`] about it: if the nested transaction commits, the changes
/// its hooks announced join those of `txn`, in order (sent after the outer
/// commit, not before); if it rolls back (`callback` errs, or the release
/// fails), they are dropped. Savepoints nest.
///
/// Inside [`transaction`], begin nested transactions with this function:
/// a save on a nested transaction begun with SeaORM's own `begin()` or
/// `transaction()` is refused (see [`transaction`]), as is a `savepoint` of
/// such a transaction (a [`TransactionError::Connection`], before any
/// `SAVEPOINT`). Outside [`transaction`] it just runs the nested
/// transaction, and hooks announce as they run.
///
/// ```ignore
/// graphex::transaction(&db, |txn| {
///     Box::pin(async move {
///         order.insert(txn).await?;
///         // A failed reservation undoes its own rows (and their changes) only.
///         let reserved = graphex::savepoint(txn, |txn| Box::pin(async move { reserve(txn).await })).await;
///         Ok::<_, DbErr>(reserved.is_ok())
///     })
/// })
/// .await?;
/// ```
pub async fn savepoint<F, T, E>(txn: &DatabaseTransaction, callback: F) -> Result<T, TransactionError<E>>
where
    F: for<'c> FnOnce(&'c DatabaseTransaction) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>> + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    let levels = match LEVELS.try_with(Arc::clone) {
        Ok(levels) if !lock(&levels).is_empty() => levels,
        _ => return txn.transaction(callback).await,
    };
    if !lock(&levels).iter().any(|level| level.txn == address(txn)) {
        return Err(TransactionError::Connection(DbErr::Custom(
            "graphex: savepoint refused: its transaction is not one graphex::transaction or graphex::savepoint \
             gave (a nested transaction begun with SeaORM's begin() or transaction()?), so graphex cannot see \
             whether it commits; call graphex::savepoint on the transaction they gave"
                .to_owned(),
        )));
    }
    let mut level = LevelGuard { levels, txn: None };
    let result = txn
        .transaction(|nested| {
            level.push(address(nested));
            callback(nested)
        })
        .await;
    level.end(result.is_ok());
    result
}

/// The open levels of a [`transaction`]: the transaction itself, then each
/// open [`savepoint`], innermost last.
type Levels = Arc<Mutex<Vec<Level>>>;

/// A transaction or savepoint and the changes announced in it so far.
#[derive(Debug)]
struct Level {
    /// The address of its `DatabaseTransaction`: SeaORM lends the callback
    /// a reference for the whole callback, so it is stable while the
    /// level is open.
    txn: usize,
    /// Buffered changes, in order.
    changes: Vec<Prepared>,
}

/// A savepoint's level: removed when the savepoint ends, also if its future
/// is dropped (SeaORM then rolls the savepoint back).
struct LevelGuard {
    levels: Levels,
    txn: Option<usize>,
}

impl LevelGuard {
    fn push(&mut self, txn: usize) {
        lock(&self.levels).push(Level { txn, changes: Vec::new() });
        self.txn = Some(txn);
    }

    /// Removes the level; on commit its changes join the level below.
    fn end(&mut self, committed: bool) {
        let Some(txn) = self.txn.take() else { return };
        let mut levels = lock(&self.levels);
        let Some(index) = levels.iter().rposition(|level| level.txn == txn) else { return };
        let level = levels.remove(index);
        if committed && let Some(parent) = index.checked_sub(1).and_then(|parent| levels.get_mut(parent)) {
            parent.changes.extend(level.changes);
        }
    }
}

impl Drop for LevelGuard {
    fn drop(&mut self) {
        self.end(false);
    }
}

fn lock(levels: &Levels) -> MutexGuard<'_, Vec<Level>> {
    levels.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a connection lives, to recognize a transaction graphex lent out.
fn address<C>(db: &C) -> usize {
    std::ptr::from_ref(db).addr()
}

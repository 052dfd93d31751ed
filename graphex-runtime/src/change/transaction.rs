//! Transactions and savepoints: the changes announced inside
//! [`transaction`] are buffered per transaction level and sent after the
//! outer commit, never for a level that rolled back.

use std::any::type_name;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sea_orm::{ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, TransactionError, TransactionTrait};

use super::announce::{Prepared, current_hub};

tokio::task_local! {
    static LEVELS: Levels;
}

/// Buffers a change announced by hand in the innermost open level, or
/// gives it back when no [`transaction`] is running.
pub(super) fn buffer(prepared: Prepared) -> Option<Prepared> {
    let Ok(levels) = LEVELS.try_with(Arc::clone) else { return Some(prepared) };
    let mut levels = lock(&levels);
    match levels.last_mut() {
        Some(top) => {
            top.changes.push(prepared);
            None
        }
        None => Some(prepared),
    }
}

/// Where a change a hook announced for a statement on `db` goes.
///
/// Outside [`transaction`]: given back, to be sent now. Inside: on a
/// transaction graphex knows (the transaction's own or a [`savepoint`]'s),
/// buffered in the innermost open level; on a [`DatabaseConnection`]
/// (autocommit: already committed), given back; on any other connection
/// (a nested transaction begun with SeaORM's `begin()` / `transaction()`,
/// whose outcome graphex cannot see), refused with an error the hook
/// returns, so that the caller's `?` rolls the write back.
pub(super) fn buffer_on<C: ConnectionTrait>(db: &C, prepared: Prepared) -> Result<Option<Prepared>, DbErr> {
    let Ok(levels) = LEVELS.try_with(Arc::clone) else { return Ok(Some(prepared)) };
    let mut levels = lock(&levels);
    let connection = type_name::<C>();
    let known = connection == type_name::<DatabaseTransaction>() && levels.iter().any(|level| level.txn == address(db));
    match levels.last_mut() {
        None => Ok(Some(prepared)),
        Some(top) if known => {
            top.changes.push(prepared);
            Ok(None)
        }
        Some(_) if connection == type_name::<DatabaseConnection>() => Ok(Some(prepared)),
        Some(_) => Err(refusal(connection)),
    }
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
/// Changes announced by hand ([`announce`](super::announce::announce), [`announce_many`](super::announce::announce_many)) inside
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
#[tracing::instrument(level = "debug", name = "graphex_transaction", skip_all)]
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
    let publish = hub.clone().spawn(async move {
        for change in changes {
            hub.publish_change(&change.groups, change.message, change.change).await;
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
#[tracing::instrument(level = "debug", name = "graphex_savepoint", skip_all)]
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

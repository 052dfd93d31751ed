//! From decoded pgoutput messages to the changes to publish, one committed
//! transaction at a time: table descriptions are remembered per
//! connection, a transaction's changes wait for its commit (pgoutput sends
//! only committed transactions, in commit order, each whole), and each row
//! of a registered model's table becomes exactly the change its hooks would
//! have produced (`prepare_values`).
//!
//! Complete rows: an update that left a TOASTed column alone does not send
//! it; its value is taken from the old row, which the table sends only
//! under `REPLICA IDENTITY FULL`. A delete sends only the key unless the
//! table is `REPLICA IDENTITY FULL`; that suffices for an id-only model
//! without index fields (its change carries only the key), any other
//! model's delete needs `FULL`. A row that cannot be made whole is an error
//! naming its table and column, never a change with a field missing.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Map;

use super::pgoutput::{Message, Relation, Tuple};
use super::text::{CaptureError, values_from_text};
use crate::change::announce::{Prepared, prepare_values};
use crate::model::{Action, ModelSubscription};

/// Makes the change of one captured row: the action, the table's
/// description, the row (new, or old for a delete) and, for an update, the
/// old row if sent.
type CaptureRow =
    Arc<dyn Fn(Action, &Relation, &Tuple, Option<&Tuple>) -> Result<Prepared, CaptureError> + Send + Sync>;

/// The tables whose changes are captured, by `schema.table` (or `table`
/// for a model whose entity names no schema: any schema).
#[derive(Default, Clone)]
pub(crate) struct Tables {
    by_name: HashMap<String, CaptureRow>,
}

impl std::fmt::Debug for Tables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl Tables {
    /// Captures the changes of `M`'s table.
    pub(crate) fn register<M: ModelSubscription>(&mut self) {
        let entity = <M::Entity as Default>::default();
        let table = sea_orm::EntityName::table_name(&entity).to_owned();
        let name = match sea_orm::EntityName::schema_name(&entity) {
            Some(schema) => format!("{schema}.{table}"),
            None => table,
        };
        self.by_name.insert(name, Arc::new(capture_row::<M>));
    }

    fn of(&self, relation: &Relation) -> Option<&CaptureRow> {
        self.by_name.get(&relation.qualified()).or_else(|| self.by_name.get(&relation.name))
    }
}

/// The change of one captured row of `M`'s table.
fn capture_row<M: ModelSubscription>(
    action: Action,
    relation: &Relation,
    row: &Tuple,
    old: Option<&Tuple>,
) -> Result<Prepared, CaptureError> {
    let table = relation.qualified();
    let full_identity = relation.identity == b'f';
    let values = match action {
        Action::Delete if !full_identity && !M::FULL_PAYLOAD && M::INDEX_FIELDS.is_empty() => {
            // An id-only change without index groups carries only the key,
            // which every delete sends.
            key_only::<M>(&table, relation, row)?
        }
        Action::Delete if !full_identity => {
            return Err(CaptureError {
                table,
                column: String::new(),
                value: None,
                reason: "a delete sends only the key: this model's changes need the whole row (full payload or \
                         index fields), so its table needs REPLICA IDENTITY FULL"
                    .into(),
            });
        }
        _ => values_from_text::<M>(&table, relation.merged(row, old)).map_err(|mut error| {
            if error.reason == super::text::NOT_SENT {
                error.reason = format!(
                    "{}: an unchanged TOASTed value is sent only in the old row, under REPLICA IDENTITY FULL",
                    super::text::NOT_SENT
                );
            }
            error
        })?,
    };
    Ok(prepare_values::<M>(action, values))
}

/// `{pk: value}` of a delete's key.
fn key_only<M: ModelSubscription>(
    table: &str,
    relation: &Relation,
    row: &Tuple,
) -> Result<Map<String, serde_json::Value>, CaptureError> {
    let field = &M::FIELDS[M::PRIMARY_KEY];
    let column = sea_orm::IdenStatic::as_str(&field.column);
    let sent = relation.lookup(row)(column);
    if let Some((_, None)) = sent {
        let reason = "the key is null".to_owned();
        return Err(CaptureError { table: table.to_owned(), column: column.to_owned(), value: None, reason });
    }
    let key = super::text::field_from_text(table, field, sent)?;
    Ok(Map::from_iter([(field.name.to_owned(), key)]))
}

/// A committed transaction's changes, in order.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The position to confirm once they are published.
    pub(crate) end_lsn: u64,
    /// The changes of registered tables.
    pub(crate) changes: Vec<Prepared>,
    /// Rows that could not be made into changes (logged and counted by
    /// the caller; the transaction's other changes are published).
    pub(crate) errors: Vec<CaptureError>,
}

/// The replication stream broke pgoutput's rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamError {
    /// A change outside a transaction, or a transaction begun twice.
    #[error("pgoutput: {0} outside a transaction")]
    OutsideTransaction(&'static str),
    /// A change of a table not described on this connection.
    #[error("pgoutput: a change of relation {0}, never described on this connection")]
    UnknownRelation(u32),
}

/// Assembles one replication connection's messages into committed
/// transactions. Made anew for each connection (table descriptions are
/// per connection).
#[derive(Debug)]
pub(crate) struct Assembler {
    tables: Tables,
    relations: HashMap<u32, Relation>,
    open: Option<(Vec<Prepared>, Vec<CaptureError>)>,
    /// Truncates seen (no change per row is sent for them).
    pub(crate) truncates: u64,
}

impl Assembler {
    pub(crate) fn new(tables: Tables) -> Assembler {
        Assembler { tables, relations: HashMap::new(), open: None, truncates: 0 }
    }

    /// Inside a transaction (between its begin and its commit).
    pub(crate) fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Takes the next message; a commit returns its transaction's changes.
    pub(crate) fn feed(&mut self, message: Message) -> Result<Option<Committed>, StreamError> {
        match message {
            Message::Relation(relation) => {
                self.relations.insert(relation.id, relation);
            }
            Message::Begin { .. } => {
                if self.open.replace((Vec::new(), Vec::new())).is_some() {
                    return Err(StreamError::OutsideTransaction("a begin"));
                }
            }
            Message::Commit { end_lsn, .. } => {
                let (changes, errors) = self.open.take().ok_or(StreamError::OutsideTransaction("a commit"))?;
                return Ok(Some(Committed { end_lsn, changes, errors }));
            }
            Message::Insert { relation, new } => self.row(relation, Action::Create, &new, None)?,
            Message::Update { relation, old, new } => self.row(relation, Action::Update, &new, old.as_ref())?,
            Message::Delete { relation, old } => self.row(relation, Action::Delete, &old, None)?,
            Message::Truncate { relations } => {
                if relations
                    .iter()
                    .any(|id| self.relations.get(id).is_some_and(|relation| self.tables.of(relation).is_some()))
                {
                    self.truncates += 1;
                    tracing::warn!(?relations, "TRUNCATE of a captured table: no change is sent for its rows");
                }
            }
            Message::Other(_) => {}
        }
        Ok(None)
    }

    fn row(&mut self, id: u32, action: Action, row: &Tuple, old: Option<&Tuple>) -> Result<(), StreamError> {
        let relation = self.relations.get(&id).ok_or(StreamError::UnknownRelation(id))?;
        let (changes, errors) = self.open.as_mut().ok_or(StreamError::OutsideTransaction("a change"))?;
        let Some(capture) = self.tables.of(relation) else { return Ok(()) };
        match capture(action, relation, row, old) {
            Ok(prepared) => changes.push(prepared),
            Err(error) => errors.push(error),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value as Json, json};

    use super::*;
    use crate::capture::pgoutput::{Column, Value};
    use crate::change::codec::Change;
    use crate::proptests::person;

    fn people(identity: u8) -> Relation {
        let column = |key, name: &str, type_oid| Column { key, name: name.into(), type_oid };
        Relation {
            id: 7,
            namespace: "public".into(),
            name: "people".into(),
            identity,
            columns: vec![
                column(true, "id", 23),
                column(false, "name", 25),
                column(false, "nick", 25),
                column(false, "score", 701),
                column(false, "active", 16),
            ],
        }
    }

    fn row(id: &str, name: Value) -> Tuple {
        Tuple(vec![Value::Text(id.into()), name, Value::Null, Value::Text("2.5".into()), Value::Text("t".into())])
    }

    fn text(value: &str) -> Value {
        Value::Text(value.into())
    }

    fn assembler() -> Assembler {
        let mut tables = Tables::default();
        tables.register::<person::Model>();
        Assembler::new(tables)
    }

    fn begin() -> Message {
        Message::Begin { final_lsn: 1, xid: 1 }
    }

    fn commit(end_lsn: u64) -> Message {
        Message::Commit { commit_lsn: end_lsn - 1, end_lsn }
    }

    fn values(prepared: &Prepared) -> (Action, Json) {
        let change = Change::decode(&prepared.message).unwrap();
        (change.action, Json::Object(change.values.unwrap_or_default()))
    }

    #[test]
    fn a_transaction_becomes_its_changes_in_order_at_its_commit() {
        let mut assembler = assembler();
        assembler.feed(Message::Relation(people(b'f'))).unwrap();
        assert!(assembler.feed(begin()).unwrap().is_none());
        assembler.feed(Message::Insert { relation: 7, new: row("1", text("neo")) }).unwrap();
        let old = row("1", text("neo"));
        let new = row("1", Value::Unchanged);
        assembler.feed(Message::Update { relation: 7, old: Some(old.clone()), new }).unwrap();
        assembler.feed(Message::Delete { relation: 7, old }).unwrap();
        // A table no model is registered for.
        let mut other = people(b'd');
        other.id = 8;
        other.name = "elsewhere".into();
        assembler.feed(Message::Relation(other)).unwrap();
        assembler.feed(Message::Insert { relation: 8, new: row("2", text("x")) }).unwrap();
        let committed = assembler.feed(commit(100)).unwrap().expect("committed");
        assert_eq!(committed.end_lsn, 100);
        assert!(committed.errors.is_empty(), "{:?}", committed.errors);
        let neo = json!({"id": 1, "name": "neo", "nick": null, "score": 2.5, "active": true});
        let got: Vec<(Action, Json)> = committed.changes.iter().map(values).collect();
        assert_eq!(
            got,
            [(Action::Create, neo.clone()), (Action::Update, neo.clone()), (Action::Delete, neo)],
            "the unchanged TOASTed name taken from the old row"
        );
        assert_eq!(committed.changes[0].groups, ["people-create", "people-create-1"]);
    }

    #[test]
    fn rows_that_cannot_be_made_whole_are_errors_not_changes() {
        let mut assembler = assembler();
        assembler.feed(Message::Relation(people(b'd'))).unwrap();
        assembler.feed(begin()).unwrap();
        // Default identity: an unchanged TOASTed value has no old row to come from.
        assembler.feed(Message::Update { relation: 7, old: None, new: row("1", Value::Unchanged) }).unwrap();
        // A full-payload model's delete needs REPLICA IDENTITY FULL.
        let key_only = Tuple(vec![text("1"), Value::Null, Value::Null, Value::Null, Value::Null]);
        assembler.feed(Message::Delete { relation: 7, old: key_only }).unwrap();
        assembler.feed(Message::Insert { relation: 7, new: row("2", text("ok")) }).unwrap();
        let committed = assembler.feed(commit(9)).unwrap().unwrap();
        assert_eq!(committed.changes.len(), 1, "the whole row is published");
        assert_eq!(committed.errors.len(), 2);
        assert_eq!(
            (committed.errors[0].table.as_str(), committed.errors[0].column.as_str()),
            ("public.people", "name")
        );
        assert!(committed.errors[0].reason.contains("REPLICA IDENTITY FULL"), "{}", committed.errors[0]);
        assert!(committed.errors[1].reason.contains("REPLICA IDENTITY FULL"), "{}", committed.errors[1]);
    }

    #[test]
    fn protocol_violations_are_errors() {
        let mut assembler = assembler();
        assert!(matches!(
            assembler.feed(Message::Insert { relation: 7, new: row("1", text("x")) }),
            Err(StreamError::UnknownRelation(7))
        ));
        assembler.feed(Message::Relation(people(b'd'))).unwrap();
        assert!(matches!(
            assembler.feed(Message::Insert { relation: 7, new: row("1", text("x")) }),
            Err(StreamError::OutsideTransaction(_))
        ));
        assert!(matches!(assembler.feed(commit(5)), Err(StreamError::OutsideTransaction(_))));
        assembler.feed(begin()).unwrap();
        assert!(matches!(assembler.feed(begin()), Err(StreamError::OutsideTransaction(_))));
        assembler.feed(Message::Truncate { relations: vec![7] }).unwrap();
        assert_eq!(assembler.truncates, 1);
    }
}

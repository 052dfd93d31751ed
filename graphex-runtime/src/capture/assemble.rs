//! From decoded pgoutput messages to the changes to publish, row by row:
//! table descriptions are remembered per connection, and each row of a
//! registered model's table becomes exactly the change its hooks would have
//! produced (`prepare_values`) as soon as it arrives. That is after its
//! commit: pgoutput (protocol version 1) sends a transaction only once it
//! has committed, whole, in commit order; so nothing is held per
//! transaction and a statement touching millions of rows costs no memory
//! in proportion. Each change carries its position in the log (the
//! transaction's commit LSN from its begin, and its index among the
//! transaction's captured rows), by which a transaction sent again after a
//! lost confirmation is recognised; the commit gives the position to
//! confirm.
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
use crate::layer::LogPosition;
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

/// What one message makes.
#[derive(Debug)]
pub(crate) enum Step {
    /// A captured row of the open transaction: its change, or why it could
    /// not be made (logged and counted by the caller; the transaction's
    /// other changes are published).
    /// (Boxed: a prepared change is a few hundred bytes.)
    Row(LogPosition, Box<Result<Prepared, CaptureError>>),
    /// The open transaction's commit: every row of it has been stepped.
    Commit {
        /// Its commit LSN (as in its rows' positions).
        commit_lsn: u64,
        /// The position to confirm once its rows are published.
        end_lsn: u64,
    },
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

/// Turns one replication connection's messages into steps. Made anew for
/// each connection (table descriptions are per connection).
#[derive(Debug)]
pub(crate) struct Assembler {
    tables: Tables,
    relations: HashMap<u32, Relation>,
    /// The open transaction: its commit LSN and its captured rows so far.
    open: Option<(u64, u32)>,
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

    /// Takes the next message.
    pub(crate) fn feed(&mut self, message: Message) -> Result<Option<Step>, StreamError> {
        match message {
            Message::Relation(relation) => {
                self.relations.insert(relation.id, relation);
            }
            Message::Begin { final_lsn, .. } => {
                if self.open.replace((final_lsn, 0)).is_some() {
                    return Err(StreamError::OutsideTransaction("a begin"));
                }
            }
            Message::Commit { end_lsn, .. } => {
                let (commit_lsn, _) = self.open.take().ok_or(StreamError::OutsideTransaction("a commit"))?;
                return Ok(Some(Step::Commit { commit_lsn, end_lsn }));
            }
            Message::Insert { relation, new } => return self.row(relation, Action::Create, &new, None),
            Message::Update { relation, old, new } => return self.row(relation, Action::Update, &new, old.as_ref()),
            Message::Delete { relation, old } => return self.row(relation, Action::Delete, &old, None),
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

    fn row(&mut self, id: u32, action: Action, row: &Tuple, old: Option<&Tuple>) -> Result<Option<Step>, StreamError> {
        let relation = self.relations.get(&id).ok_or(StreamError::UnknownRelation(id))?;
        let (lsn, rows) = self.open.as_mut().ok_or(StreamError::OutsideTransaction("a change"))?;
        let Some(capture) = self.tables.of(relation) else { return Ok(None) };
        let position = LogPosition { lsn: *lsn, index: *rows };
        *rows += 1;
        Ok(Some(Step::Row(position, Box::new(capture(action, relation, row, old)))))
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
        Message::Begin { final_lsn: 90, xid: 1 }
    }

    /// Feeds `messages`; the steps they made, the last a commit.
    fn steps(assembler: &mut Assembler, messages: Vec<Message>) -> Vec<Step> {
        messages.into_iter().filter_map(|message| assembler.feed(message).unwrap()).collect()
    }

    /// The rows' changes and refusals, with their indexes; the commit's end.
    fn split(steps: Vec<Step>) -> (Vec<(u32, Prepared)>, Vec<CaptureError>, u64) {
        let (mut changes, mut errors, mut end) = (Vec::new(), Vec::new(), 0);
        for step in steps {
            match step {
                Step::Row(position, row) => match *row {
                    Ok(prepared) => {
                        assert_eq!(position.lsn, 90, "the transaction's commit LSN, from its begin");
                        changes.push((position.index, prepared));
                    }
                    Err(error) => errors.push(error),
                },
                Step::Commit { end_lsn, .. } => end = end_lsn,
            }
        }
        (changes, errors, end)
    }

    fn commit(end_lsn: u64) -> Message {
        Message::Commit { commit_lsn: end_lsn - 1, end_lsn }
    }

    fn values(prepared: &Prepared) -> (Action, Json) {
        let change = Change::decode(&prepared.message).unwrap();
        (change.action, Json::Object(change.values.unwrap_or_default()))
    }

    #[test]
    fn a_transaction_becomes_its_changes_in_order_then_its_commit() {
        let mut assembler = assembler();
        assembler.feed(Message::Relation(people(b'f'))).unwrap();
        assert!(assembler.feed(begin()).unwrap().is_none());
        assert!(assembler.in_transaction());
        let old = row("1", text("neo"));
        let mut other = people(b'd');
        other.id = 8;
        other.name = "elsewhere".into();
        let steps = steps(
            &mut assembler,
            vec![
                Message::Insert { relation: 7, new: row("1", text("neo")) },
                Message::Update { relation: 7, old: Some(old.clone()), new: row("1", Value::Unchanged) },
                // A table no model is registered for: no step, no index.
                Message::Relation(other),
                Message::Insert { relation: 8, new: row("2", text("x")) },
                Message::Delete { relation: 7, old },
                commit(100),
            ],
        );
        assert!(matches!(steps.last(), Some(Step::Commit { commit_lsn: 90, end_lsn: 100 })), "{steps:?}");
        assert!(!assembler.in_transaction());
        let (changes, errors, end) = split(steps);
        assert_eq!(end, 100);
        assert!(errors.is_empty(), "{errors:?}");
        let neo = json!({"id": 1, "name": "neo", "nick": null, "score": 2.5, "active": true});
        let got: Vec<(u32, (Action, Json))> =
            changes.iter().map(|(index, prepared)| (*index, values(prepared))).collect();
        assert_eq!(
            got,
            [(0, (Action::Create, neo.clone())), (1, (Action::Update, neo.clone())), (2, (Action::Delete, neo))],
            "in order, indexed in the transaction; the unchanged TOASTed name taken from the old row"
        );
        assert_eq!(changes[0].1.groups, ["people-create", "people-create-1"]);
    }

    #[test]
    fn rows_that_cannot_be_made_whole_are_errors_not_changes() {
        let mut assembler = assembler();
        assembler.feed(Message::Relation(people(b'd'))).unwrap();
        assembler.feed(begin()).unwrap();
        // A full-payload model's delete needs REPLICA IDENTITY FULL.
        let key_only = Tuple(vec![text("1"), Value::Null, Value::Null, Value::Null, Value::Null]);
        let steps = steps(
            &mut assembler,
            vec![
                // Default identity: an unchanged TOASTed value has no old row to come from.
                Message::Update { relation: 7, old: None, new: row("1", Value::Unchanged) },
                Message::Delete { relation: 7, old: key_only },
                Message::Insert { relation: 7, new: row("2", text("ok")) },
                commit(9),
            ],
        );
        let (changes, errors, _) = split(steps);
        assert_eq!(changes.len(), 1, "the whole row is published");
        assert_eq!(changes[0].0, 2, "refused rows keep their index");
        assert_eq!(errors.len(), 2);
        assert_eq!((errors[0].table.as_str(), errors[0].column.as_str()), ("public.people", "name"));
        assert!(errors[0].reason.contains("REPLICA IDENTITY FULL"), "{}", errors[0]);
        assert!(errors[1].reason.contains("REPLICA IDENTITY FULL"), "{}", errors[1]);
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

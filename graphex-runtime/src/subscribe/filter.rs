//! Subscription filters: parsed and type-checked once at subscribe time,
//! decided in memory against a change's values, or turned into a typed
//! SeaORM condition when a value is not in the change.
//!
//! A filter is a JSON object of `field` or `field__lookup` keys. No SQL text
//! is ever built from client input: conditions are SeaORM expressions with
//! bound values, and functions are named by graphex, not by the client.
//!
//! One cohesive job in one file (parse, check, decide in memory, build the
//! SQL condition): the four must agree lookup by lookup, so they sit together.

use std::cmp::Ordering;

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr, SimpleExpr};
use sea_orm::{ColumnTrait, ColumnType, Condition, DbBackend, EntityTrait, IdenStatic, Value};
use serde_json::{Map, Value as Json};

use crate::model::{Field, Lookup, ModelSubscription, Scope, field_index};

/// Bounds on what a client filter may ask for.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct FilterLimits {
    /// Most clauses in one filter.
    pub max_clauses: usize,
    /// Most values in one `__in` list.
    pub max_in_values: usize,
    /// Longest text value, in bytes.
    pub max_text_len: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits { max_clauses: 16, max_in_values: 100, max_text_len: 1024 }
    }
}

crate::config::setters!(FilterLimits {
    max_clauses: usize => with_max_clauses,
    max_in_values: usize => with_max_in_values,
    max_text_len: usize => with_max_text_len,
});

/// Why a filter was refused. The message is meant for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// `filters` was not a JSON object.
    #[error("filters must be a JSON object")]
    NotAnObject,
    /// The key names no payload field.
    #[error("unknown filter field `{field}`; fields: {available}")]
    UnknownField {
        /// The field named.
        field: String,
        /// The fields that exist.
        available: String,
    },
    /// The key's `__suffix` is not a lookup.
    #[error(
        "unknown lookup `{lookup}` on `{field}`; lookups: exact, iexact, contains, icontains, startswith, endswith, gt, gte, lt, lte, in, isnull"
    )]
    UnknownLookup {
        /// The field named.
        field: String,
        /// The suffix given.
        lookup: String,
    },
    /// The value does not fit the field or the lookup.
    #[error("invalid value for `{key}`: {reason}")]
    InvalidValue {
        /// The filter key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Too many clauses or values.
    #[error("filter too large: {0}")]
    TooLarge(String),
    /// A server scope names a field that is not in the payload (a server bug).
    #[error("scope column `{0}` is not a subscription field")]
    ScopeColumn(String),
}

/// One `field__lookup = value` test, validated against the model.
#[derive(Clone, Debug, PartialEq)]
pub struct Clause {
    /// Index into the model's fields.
    pub field: usize,
    /// The field's payload name.
    pub name: &'static str,
    /// The comparison.
    pub lookup: Lookup,
    /// The value, canonical for the field (a list for `in`, a bool for `isnull`).
    pub value: Json,
}

impl Clause {
    /// The filter key this clause was written as.
    pub fn key(&self) -> String {
        filter_key(self.name, self.lookup)
    }

    /// Decides the clause on a change's values; `None` when the field is not there.
    pub fn matches(&self, values: &Map<String, Json>) -> Option<bool> {
        Some(eval(self.lookup, field_value(values, self.field, self.name)?, &self.value))
    }
}

/// The value of field `name`, at position `field` of the model's fields,
/// in a change's values. They come in the model's field order (`values()`):
/// the field is looked for at its position first, by name only if another
/// field is there (hashing the name cost more than the test).
pub(crate) fn field_value<'a>(values: &'a Map<String, Json>, field: usize, name: &str) -> Option<&'a Json> {
    match values.iter().nth(field) {
        Some((key, value)) if key == name => Some(value),
        _ => values.get(name),
    }
}

/// The conjunction of a subscription's clauses: scope and client filters merged.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    clauses: Vec<Clause>,
}

impl Filter {
    /// The clauses, scope first.
    pub fn clauses(&self) -> &[Clause] {
        &self.clauses
    }

    /// Whether there is nothing to test.
    pub fn is_empty(&self) -> bool {
        self.clauses.is_empty()
    }

    /// Parses and type-checks a client `filters` object.
    pub fn parse<M: ModelSubscription>(filters: &Json, limits: &FilterLimits) -> Result<Filter, FilterError> {
        let object = filters.as_object().ok_or(FilterError::NotAnObject)?;
        if object.len() > limits.max_clauses {
            return Err(FilterError::TooLarge(format!("{} clauses, at most {}", object.len(), limits.max_clauses)));
        }
        let clauses = object
            .iter()
            .map(|(key, value)| parse_clause::<M>(key, value.clone(), limits))
            .collect::<Result<_, _>>()?;
        Ok(Filter { clauses })
    }

    /// The scope's clauses, checked like a client's (scopes are written by
    /// the server, so no size limits apply).
    pub fn from_scope<M: ModelSubscription>(scope: &Scope<M::Entity>) -> Result<Filter, FilterError> {
        let limits = FilterLimits { max_clauses: usize::MAX, max_in_values: usize::MAX, max_text_len: usize::MAX };
        let clauses = scope
            .clauses
            .iter()
            .map(|(column, lookup, value)| {
                let field = M::FIELDS
                    .iter()
                    .find(|field| field.column.as_str() == column.as_str())
                    .ok_or_else(|| FilterError::ScopeColumn(column.as_str().to_owned()))?;
                parse_clause::<M>(&filter_key(field.name, *lookup), value.clone(), &limits)
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { clauses })
    }

    /// A filter of these clauses, for tests of code that only evaluates filters.
    #[cfg(test)]
    pub(crate) fn of(clauses: Vec<Clause>) -> Filter {
        Filter { clauses }
    }

    /// Merges a server scope over a client filter: a client clause with the
    /// same key as a scope clause is dropped, everything else is ANDed. The
    /// result is never wider than the scope.
    pub fn merge(scope: Filter, client: Filter) -> Filter {
        let mut clauses = scope.clauses;
        let scope_keys: Vec<String> = clauses.iter().map(Clause::key).collect();
        clauses.extend(client.clauses.into_iter().filter(|clause| !scope_keys.contains(&clause.key())));
        Filter { clauses }
    }

    /// The value an equality clause pins `name` to, if any.
    pub fn pinned(&self, name: &str) -> Option<&Json> {
        self.clauses
            .iter()
            .find(|clause| clause.name == name && clause.lookup == Lookup::Exact)
            .map(|clause| &clause.value)
    }

    /// Decides the filter on a change's values: `Some(true/false)` when every
    /// clause's field is present, `None` when some field is missing.
    pub fn matches(&self, values: &Map<String, Json>) -> Option<bool> {
        let mut undecided = false;
        for clause in &self.clauses {
            match clause.matches(values) {
                Some(false) => return Some(false),
                Some(true) => {}
                None => undecided = true,
            }
        }
        if undecided { None } else { Some(true) }
    }

    /// The filter as a typed SeaORM condition for `backend`.
    pub fn condition<M: ModelSubscription>(&self, backend: DbBackend) -> Condition {
        self.clauses.iter().fold(Condition::all(), |condition, clause| {
            condition.add(clause_expr(&M::FIELDS[clause.field], clause, backend))
        })
    }
}

/// `field` for an exact test, `field__lookup` otherwise.
fn filter_key(name: &str, lookup: Lookup) -> String {
    if lookup == Lookup::Exact { name.to_owned() } else { format!("{name}__{}", lookup.suffix()) }
}

fn parse_clause<M: ModelSubscription>(key: &str, value: Json, limits: &FilterLimits) -> Result<Clause, FilterError> {
    let (name, lookup) = match key.split_once("__") {
        None => (key, Lookup::Exact),
        Some((name, suffix)) => {
            let lookup = Lookup::from_suffix(suffix)
                .ok_or_else(|| FilterError::UnknownLookup { field: name.to_owned(), lookup: suffix.to_owned() })?;
            (name, lookup)
        }
    };
    let index = field_index::<M>(name).ok_or_else(|| FilterError::UnknownField {
        field: name.to_owned(),
        available: M::FIELDS.iter().map(|field| field.name).collect::<Vec<_>>().join(", "),
    })?;
    let field = &M::FIELDS[index];
    let invalid = |reason: String| FilterError::InvalidValue { key: key.to_owned(), reason };
    let value = match lookup {
        Lookup::IsNull => match value {
            Json::Bool(_) => value,
            _ => return Err(invalid("isnull takes true or false".into())),
        },
        Lookup::In => {
            let Json::Array(items) = value else {
                return Err(invalid("in takes a list".into()));
            };
            if items.len() > limits.max_in_values {
                return Err(FilterError::TooLarge(format!(
                    "`{key}` has {} values, at most {}",
                    items.len(),
                    limits.max_in_values
                )));
            }
            let items = items.into_iter().map(|item| canonical(field, key, item, limits)).collect::<Result<_, _>>()?;
            Json::Array(items)
        }
        lookup if lookup.needs_text() => {
            if !is_text(field) {
                return Err(invalid(format!("{} applies to text fields only", lookup.suffix())));
            }
            match value {
                Json::String(ref text) => {
                    check_text_len(key, text, limits)?;
                    value
                }
                _ => return Err(invalid("expected a string".into())),
            }
        }
        _ => canonical(field, key, value, limits)?,
    };
    Ok(Clause { field: index, name: field.name, lookup, value })
}

fn check_text_len(key: &str, text: &str, limits: &FilterLimits) -> Result<(), FilterError> {
    if text.len() > limits.max_text_len {
        return Err(FilterError::TooLarge(format!(
            "`{key}` value has {} bytes, at most {}",
            text.len(),
            limits.max_text_len
        )));
    }
    Ok(())
}

/// `value` as the field's own type would serialize it.
fn canonical<E: EntityTrait>(
    field: &Field<E>,
    key: &str,
    value: Json,
    limits: &FilterLimits,
) -> Result<Json, FilterError> {
    if let Json::String(text) = &value {
        check_text_len(key, text, limits)?;
    }
    (field.canonical)(value)
        .map_err(|error| FilterError::InvalidValue { key: key.to_owned(), reason: error.to_string() })
}

fn is_text<E: EntityTrait>(field: &Field<E>) -> bool {
    matches!(field.column.def().get_column_type(), ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_))
}

fn is_temporal<E: EntityTrait>(field: &Field<E>) -> bool {
    matches!(
        field.column.def().get_column_type(),
        ColumnType::DateTime
            | ColumnType::Timestamp
            | ColumnType::TimestampWithTimeZone
            | ColumnType::Date
            | ColumnType::Time
    )
}

/// Evaluates one lookup in memory. Values are canonical JSON on both sides.
pub(crate) fn eval(lookup: Lookup, actual: &Json, expected: &Json) -> bool {
    match lookup {
        Lookup::Exact => actual == expected,
        Lookup::IsNull => actual.is_null() == expected.as_bool().unwrap_or(false),
        Lookup::In => expected.as_array().is_some_and(|items| items.contains(actual)),
        Lookup::Gt => compare(actual, expected) == Some(Ordering::Greater),
        Lookup::Gte => matches!(compare(actual, expected), Some(Ordering::Greater | Ordering::Equal)),
        Lookup::Lt => compare(actual, expected) == Some(Ordering::Less),
        Lookup::Lte => matches!(compare(actual, expected), Some(Ordering::Less | Ordering::Equal)),
        text_lookup => {
            let (Some(actual), Some(expected)) = (actual.as_str(), expected.as_str()) else {
                return false;
            };
            match text_lookup {
                Lookup::IExact => actual.eq_ignore_ascii_case(expected),
                Lookup::Contains => actual.contains(expected),
                Lookup::IContains => actual.to_ascii_lowercase().contains(&expected.to_ascii_lowercase()),
                Lookup::StartsWith => actual.starts_with(expected),
                Lookup::EndsWith => actual.ends_with(expected),
                _ => false,
            }
        }
    }
}

/// Orders two canonical values: numbers numerically, timestamps as instants,
/// other strings lexically. Null and mixed kinds are unordered.
fn compare(a: &Json, b: &Json) -> Option<Ordering> {
    match (a, b) {
        (Json::Number(a), Json::Number(b)) => {
            if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
                Some(a.cmp(&b))
            } else {
                a.as_f64()?.partial_cmp(&b.as_f64()?)
            }
        }
        (Json::String(a), Json::String(b)) => {
            match (chrono::DateTime::parse_from_rfc3339(a), chrono::DateTime::parse_from_rfc3339(b)) {
                (Ok(a), Ok(b)) => Some(a.cmp(&b)),
                _ => Some(a.cmp(b)),
            }
        }
        (Json::Bool(a), Json::Bool(b)) => Some(a.cmp(b)),
        _ => None,
    }
}

fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(ch);
    }
    escaped
}

/// The column for an order comparison: text by code point, as in memory.
/// PostgreSQL columns often carry a linguistic collation (en_US and the
/// like) that would order `bob` before `C`; MySQL's and MariaDB's default
/// collations also ignore case (and MariaDB's pad trailing spaces), so there
/// the column's UTF-8 bytes are compared, whose order is code-point order.
fn ordered<E: EntityTrait>(field: &Field<E>, backend: DbBackend) -> Expr {
    let column = field.column.into_expr();
    if !is_text(field) {
        return column;
    }
    match backend {
        DbBackend::Postgres => Expr::cust_with_expr("$1 COLLATE \"C\"", column),
        DbBackend::Sqlite => Expr::cust_with_expr("? COLLATE BINARY", column),
        DbBackend::MySql => utf8_bytes(column),
        _ => column,
    }
}

/// MySQL and MariaDB: a text expression as its UTF-8 bytes. A binary string
/// compares byte by byte: case-sensitively and without PAD SPACE (under every
/// `utf8mb4_*` collation of MariaDB, `utf8mb4_bin` included, `'a' = 'a '`),
/// whatever the column's character set and collation.
fn utf8_bytes(text: Expr) -> Expr {
    Expr::cust_with_expr("CAST(CONVERT(? USING utf8mb4) AS BINARY)", text)
}

/// A client's text as the binary string [`utf8_bytes`] is compared with
/// (bound as bytes, so the connection's character set plays no part).
fn bytes_of(text: &str) -> Expr {
    Expr::val(text.as_bytes().to_vec())
}

/// The value side of a comparison with [`ordered`]: bytes where the column
/// is compared as bytes.
fn comparable<E: EntityTrait>(field: &Field<E>, backend: DbBackend, value: Value) -> Expr {
    match (&value, backend) {
        (Value::String(Some(text)), DbBackend::MySql) if is_text(field) => bytes_of(text),
        _ => Expr::val(value),
    }
}

/// The column with ASCII letters lowered and no others, as in memory:
/// SQLite's `LOWER` does just that; PostgreSQL's lowers all of Unicode, hence
/// `TRANSLATE`; so do MySQL's and MariaDB's (and nothing at all to a binary
/// string), hence 26 nested `REPLACE`s on the column's UTF-8 bytes, which
/// touch ASCII letters only: every byte of a multi-byte UTF-8 sequence is
/// 0x80 or above.
fn ascii_lower<E: EntityTrait>(field: &Field<E>, backend: DbBackend) -> Expr {
    let column = field.column.into_expr();
    match backend {
        DbBackend::Postgres => Expr::expr(
            Func::cust("TRANSLATE").arg(column).arg("ABCDEFGHIJKLMNOPQRSTUVWXYZ").arg("abcdefghijklmnopqrstuvwxyz"),
        ),
        DbBackend::MySql => ('A'..='Z').fold(utf8_bytes(column), |text, upper| {
            let (upper, lower) =
                (Expr::cust(format!("'{upper}'")), Expr::cust(format!("'{}'", upper.to_ascii_lowercase())));
            Expr::expr(Func::cust("REPLACE").arg(text).arg(upper).arg(lower))
        }),
        _ => Expr::expr(Func::lower(column)),
    }
}

fn clause_expr<E: EntityTrait>(field: &Field<E>, clause: &Clause, backend: DbBackend) -> SimpleExpr {
    let column = field.column;
    // Canonical values came from the field's own type, so parsing cannot fail;
    // should it, the clause selects nothing rather than everything.
    let typed = |value: &Json| (field.parse)(value.clone()).ok();
    let text = clause.value.as_str().unwrap_or_default().to_owned();
    // An INT4: PostgreSQL has no SUBSTR or RIGHT taking a BIGINT length.
    let length = i32::try_from(text.chars().count()).unwrap_or(i32::MAX);
    // MySQL compares bytes (`utf8_bytes`), so its lengths count bytes.
    let byte_length = i32::try_from(text.len()).unwrap_or(i32::MAX);
    let never = || Expr::val(1).eq(0);
    // MySQL and MariaDB compare text as UTF-8 bytes ([`utf8_bytes`]).
    let mysql_text = backend == DbBackend::MySql && is_text(field);
    let compared = |value: Value| comparable(field, backend, value);
    match clause.lookup {
        Lookup::Exact if Json::is_null(&clause.value) => column.is_null(),
        Lookup::Exact if mysql_text => utf8_bytes(column.into_expr()).eq(bytes_of(&text)),
        Lookup::Exact => typed(&clause.value).map_or_else(never, |value| column.eq(value)),
        Lookup::Gt => typed(&clause.value).map_or_else(never, |value| ordered(field, backend).gt(compared(value))),
        Lookup::Gte => typed(&clause.value).map_or_else(never, |value| ordered(field, backend).gte(compared(value))),
        Lookup::Lt => typed(&clause.value).map_or_else(never, |value| ordered(field, backend).lt(compared(value))),
        Lookup::Lte => typed(&clause.value).map_or_else(never, |value| ordered(field, backend).lte(compared(value))),
        Lookup::In => {
            let items = clause.value.as_array().map(Vec::as_slice).unwrap_or_default();
            // SQL's IN never matches NULL; a null in the list does in memory.
            let (nulls, items): (Vec<&Json>, Vec<&Json>) = items.iter().partition(|item| item.is_null());
            let listed = if mysql_text {
                let texts: Option<Vec<Expr>> = items.into_iter().map(|item| item.as_str().map(bytes_of)).collect();
                texts.map(|texts| utf8_bytes(column.into_expr()).is_in(texts))
            } else if backend == DbBackend::MySql && is_temporal(field) {
                // MariaDB 10.11 matched only the first of several bound
                // date-times in `IN (...)` on a TIMESTAMP(6) column; one
                // equality each matches them all.
                let values: Option<Vec<_>> = items.into_iter().map(typed).collect();
                values.map(|values| {
                    values.into_iter().map(|value| column.eq(value)).reduce(Expr::or).unwrap_or_else(never)
                })
            } else {
                let values: Option<Vec<_>> = items.into_iter().map(typed).collect();
                values.map(|values| column.is_in(values))
            };
            match listed {
                None => never(),
                Some(listed) if nulls.is_empty() => listed,
                Some(listed) => listed.or(column.is_null()),
            }
        }
        Lookup::IsNull if clause.value.as_bool() == Some(true) => column.is_null(),
        Lookup::IsNull => column.is_not_null(),
        // Every text contains, starts and ends with "" (and SQLite's SUBSTR
        // has no empty suffix to compare it with).
        Lookup::Contains | Lookup::IContains | Lookup::StartsWith | Lookup::EndsWith if text.is_empty() => {
            column.is_not_null()
        }
        Lookup::IExact if mysql_text => ascii_lower(field, backend).eq(bytes_of(&text.to_ascii_lowercase())),
        Lookup::IExact => ascii_lower(field, backend).eq(text.to_ascii_lowercase()),
        // MySQL: a byte search in bytes, no LIKE (whose matching is the
        // column collation's).
        Lookup::IContains if mysql_text => {
            Expr::expr(Func::cust("INSTR").arg(ascii_lower(field, backend)).arg(bytes_of(&text.to_ascii_lowercase())))
                .gt(0)
        }
        Lookup::IContains => ascii_lower(field, backend)
            .like(LikeExpr::new(format!("%{}%", escape_like(&text.to_ascii_lowercase()))).escape('\\')),
        // LIKE ignores case on SQLite and MySQL, so the case-sensitive text
        // lookups use each backend's position and substring functions.
        Lookup::Contains => match backend {
            DbBackend::Sqlite => Expr::expr(Func::cust("INSTR").arg(column.into_expr()).arg(text)).gt(0),
            DbBackend::Postgres => Expr::expr(Func::cust("STRPOS").arg(column.into_expr()).arg(text)).gt(0),
            DbBackend::MySql => {
                Expr::expr(Func::cust("INSTR").arg(utf8_bytes(column.into_expr())).arg(bytes_of(&text))).gt(0)
            }
            _ => column.like(LikeExpr::new(format!("%{}%", escape_like(&text))).escape('\\')),
        },
        Lookup::StartsWith => match backend {
            DbBackend::Sqlite | DbBackend::Postgres => {
                Expr::expr(Func::cust("SUBSTR").arg(column.into_expr()).arg(1).arg(length)).eq(text)
            }
            DbBackend::MySql => {
                Expr::expr(Func::cust("LEFT").arg(utf8_bytes(column.into_expr())).arg(byte_length)).eq(bytes_of(&text))
            }
            _ => column.like(LikeExpr::new(format!("{}%", escape_like(&text))).escape('\\')),
        },
        Lookup::EndsWith => match backend {
            DbBackend::Sqlite => Expr::expr(Func::cust("SUBSTR").arg(column.into_expr()).arg(-length)).eq(text),
            DbBackend::Postgres => Expr::expr(Func::cust("RIGHT").arg(column.into_expr()).arg(length)).eq(text),
            DbBackend::MySql => {
                Expr::expr(Func::cust("RIGHT").arg(utf8_bytes(column.into_expr())).arg(byte_length)).eq(bytes_of(&text))
            }
            _ => column.like(LikeExpr::new(format!("%{}", escape_like(&text))).escape('\\')),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{EntityTrait, QueryFilter, QueryTrait};
    use serde_json::json;

    mod person {
        #![allow(unreachable_pub)]
        use sea_orm::entity::prelude::*;

        #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
        #[sea_orm(table_name = "people")]
        pub struct Model {
            #[sea_orm(primary_key)]
            pub id: i32,
            pub name: String,
            pub nick: Option<String>,
        }

        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}

        impl ActiveModelBehavior for ActiveModel {}
    }

    fn people_field(name: &'static str) -> Field<person::Entity> {
        use crate::model::{canonical_value, parse_value};
        match name {
            "id" => {
                Field { name, column: person::Column::Id, parse: parse_value::<i32>, canonical: canonical_value::<i32> }
            }
            "name" => Field {
                name,
                column: person::Column::Name,
                parse: parse_value::<String>,
                canonical: canonical_value::<String>,
            },
            _ => Field {
                name,
                column: person::Column::Nick,
                parse: parse_value::<Option<String>>,
                canonical: canonical_value::<Option<String>>,
            },
        }
    }

    /// The WHERE clause one lookup becomes on `backend`.
    fn sql(backend: DbBackend, field: &'static str, lookup: Lookup, value: Json) -> String {
        let clause = Clause { field: 0, name: field, lookup, value };
        let condition = Condition::all().add(clause_expr(&people_field(field), &clause, backend));
        let query = person::Entity::find().filter(condition).build(backend).to_string();
        query.split_once(" WHERE ").map(|(_, condition)| condition.to_owned()).unwrap_or(query)
    }

    #[test]
    fn text_orders_by_code_point_whatever_the_collation() {
        assert_eq!(sql(DbBackend::Postgres, "name", Lookup::Gt, json!("C")), r#"("people"."name" COLLATE "C") > 'C'"#);
        assert_eq!(
            sql(DbBackend::Sqlite, "name", Lookup::Lte, json!("C")),
            r#"("people"."name" COLLATE BINARY) <= 'C'"#
        );
        assert_eq!(sql(DbBackend::Postgres, "id", Lookup::Gt, json!(3)), r#""people"."id" > 3"#);
    }

    #[test]
    fn a_clause_finds_its_field_whatever_the_order_of_the_values() {
        let clause = Clause { field: 1, name: "name", lookup: Lookup::Exact, value: json!("Ann") };
        let in_field_order = json!({"id": 1, "name": "Ann", "nick": null});
        // Another order (a change encoded elsewhere), a missing field before it, none at all.
        let reordered = json!({"name": "Ann", "nick": null, "id": 1});
        let shifted = json!({"nick": null, "id": 1, "name": "Bob"});
        for (values, expected) in
            [(in_field_order, Some(true)), (reordered, Some(true)), (shifted, Some(false)), (json!({"id": 1}), None)]
        {
            let Json::Object(values) = values else { unreachable!() };
            assert_eq!(clause.matches(&values), expected, "{values:?}");
        }
    }

    #[test]
    fn a_null_in_an_in_list_matches_null() {
        assert!(eval(Lookup::In, &Json::Null, &json!(["a", null])));
        assert_eq!(
            sql(DbBackend::Sqlite, "nick", Lookup::In, json!(["a", null])),
            r#""people"."nick" IN ('a') OR "people"."nick" IS NULL"#
        );
        assert_eq!(sql(DbBackend::Sqlite, "nick", Lookup::In, json!(["a"])), r#""people"."nick" IN ('a')"#);
    }

    #[test]
    fn the_empty_string_is_in_every_text() {
        for lookup in [Lookup::Contains, Lookup::IContains, Lookup::StartsWith, Lookup::EndsWith] {
            assert!(eval(lookup, &json!("abc"), &json!("")), "{lookup:?}");
            assert!(!eval(lookup, &Json::Null, &json!("")), "{lookup:?}");
            for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
                assert_eq!(sql(backend, "nick", lookup, json!("")), r#""people"."nick" IS NOT NULL"#);
            }
            assert_eq!(sql(DbBackend::MySql, "nick", lookup, json!("")), "`people`.`nick` IS NOT NULL");
        }
    }

    #[test]
    fn case_is_folded_for_ascii_letters_only() {
        assert!(!eval(Lookup::IExact, &json!("Émile"), &json!("éMILE")));
        assert!(eval(Lookup::IExact, &json!("Émile"), &json!("ÉMILE")));
        assert!(!eval(Lookup::IContains, &json!("Émile"), &json!("ém")));
        assert_eq!(
            sql(DbBackend::Postgres, "name", Lookup::IExact, json!("ÉMILE")),
            r#"TRANSLATE("people"."name", 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz') = 'Émile'"#
        );
        assert_eq!(
            sql(DbBackend::Sqlite, "name", Lookup::IExact, json!("ÉMILE")),
            r#"LOWER("people"."name") = 'Émile'"#
        );
    }

    #[test]
    fn mysql_compares_text_as_utf8_bytes() {
        let bytes = "CAST(CONVERT(`people`.`name` USING utf8mb4) AS BINARY)";
        // "Bo" is 0x42 0x6F; "É" is two bytes, 0xC3 0x89.
        assert_eq!(sql(DbBackend::MySql, "name", Lookup::Exact, json!("Bo")), format!("({bytes}) = x'426F'"));
        assert_eq!(sql(DbBackend::MySql, "name", Lookup::Gt, json!("Bo")), format!("({bytes}) > x'426F'"));
        assert_eq!(
            sql(DbBackend::MySql, "nick", Lookup::In, json!(["Bo", null])),
            "(CAST(CONVERT(`people`.`nick` USING utf8mb4) AS BINARY)) IN (x'426F') OR `people`.`nick` IS NULL"
        );
        assert_eq!(
            sql(DbBackend::MySql, "name", Lookup::Contains, json!("Bo")),
            format!("INSTR({bytes}, x'426F') > 0")
        );
        assert_eq!(
            sql(DbBackend::MySql, "name", Lookup::StartsWith, json!("É")),
            format!("LEFT({bytes}, 2) = x'C389'")
        );
        assert_eq!(sql(DbBackend::MySql, "name", Lookup::EndsWith, json!("É")), format!("RIGHT({bytes}, 2) = x'C389'"));
        // Not text: the column as it is.
        assert_eq!(sql(DbBackend::MySql, "id", Lookup::Gt, json!(3)), "`people`.`id` > 3");
        assert_eq!(sql(DbBackend::MySql, "id", Lookup::In, json!([3])), "`people`.`id` IN (3)");
    }

    #[test]
    fn mysql_folds_ascii_letters_with_replace() {
        let folded = ('A'..='Z')
            .fold("CAST(CONVERT(`people`.`name` USING utf8mb4) AS BINARY)".to_owned(), |text, upper| {
                format!("REPLACE({text}, '{upper}', '{}')", upper.to_ascii_lowercase())
            });
        // "ÉMILE" lowered in ASCII only: "Émile", 0xC3 0x89 then "mile".
        assert_eq!(
            sql(DbBackend::MySql, "name", Lookup::IExact, json!("ÉMILE")),
            format!("{folded} = x'C3896D696C65'")
        );
        assert_eq!(
            sql(DbBackend::MySql, "name", Lookup::IContains, json!("MI")),
            format!("INSTR({folded}, x'6D69') > 0")
        );
    }

    #[test]
    fn lookup_suffixes_round_trip() {
        for (suffix, lookup) in Lookup::ALL {
            assert_eq!(Lookup::from_suffix(suffix), Some(lookup));
            assert_eq!(lookup.suffix(), suffix);
        }
        assert_eq!(Lookup::from_suffix("regex"), None);
    }

    #[test]
    fn eval_each_lookup() {
        assert!(eval(Lookup::Exact, &json!(7), &json!(7)));
        assert!(!eval(Lookup::Exact, &json!(7), &json!(8)));
        assert!(eval(Lookup::IExact, &json!("Neo"), &json!("nEO")));
        assert!(eval(Lookup::Contains, &json!("urgent task"), &json!("gent")));
        assert!(!eval(Lookup::Contains, &json!("urgent task"), &json!("GENT")));
        assert!(eval(Lookup::IContains, &json!("URGENT task"), &json!("gent")));
        assert!(eval(Lookup::StartsWith, &json!("hello"), &json!("he")));
        assert!(!eval(Lookup::StartsWith, &json!("hello"), &json!("He")));
        assert!(eval(Lookup::EndsWith, &json!("hello"), &json!("llo")));
        assert!(eval(Lookup::Gt, &json!(5), &json!(4)));
        assert!(!eval(Lookup::Gt, &json!(4), &json!(4)));
        assert!(eval(Lookup::Gte, &json!(4), &json!(4)));
        assert!(eval(Lookup::Lt, &json!(1.5), &json!(2)));
        assert!(eval(Lookup::Lte, &json!(2), &json!(2.0)));
        assert!(eval(Lookup::In, &json!("b"), &json!(["a", "b"])));
        assert!(!eval(Lookup::In, &json!("c"), &json!(["a", "b"])));
        assert!(eval(Lookup::IsNull, &Json::Null, &json!(true)));
        assert!(eval(Lookup::IsNull, &json!(1), &json!(false)));
        assert!(!eval(Lookup::IsNull, &json!(1), &json!(true)));
        // Null is unordered: never greater, never less.
        assert!(!eval(Lookup::Gt, &Json::Null, &json!(1)));
        assert!(!eval(Lookup::Lt, &Json::Null, &json!(1)));
    }

    #[test]
    fn timestamps_compare_as_instants() {
        let earlier = json!("2024-01-01T10:00:00+02:00");
        let later = json!("2024-01-01T09:00:00Z");
        assert!(eval(Lookup::Gt, &later, &earlier));
        assert!(eval(Lookup::Lt, &earlier, &later));
    }

    #[test]
    fn like_patterns_are_escaped() {
        assert_eq!(escape_like("50%_a\\b"), "50\\%\\_a\\\\b");
    }
}

//! Subscription filters: parsed and type-checked once at subscribe time,
//! decided in memory against a change's values, or turned into a typed
//! SeaORM condition when a value is not in the change.
//!
//! A filter is a JSON object of `field` or `field__lookup` keys. No SQL text
//! is ever built from client input: conditions are SeaORM expressions with
//! bound values, and functions are named by graphex, not by the client.

use std::cmp::Ordering;

use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr, SimpleExpr};
use sea_orm::{ColumnTrait, ColumnType, Condition, DbBackend, EntityTrait, IdenStatic};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::model::{Field, ModelSubscription, field_index};
use crate::scope::Scope;

/// A comparison between a field and a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookup {
    /// Equal (the default when a key has no `__lookup`).
    Exact,
    /// Equal, ignoring case (text fields).
    IExact,
    /// Contains the substring (text fields, case-sensitive).
    Contains,
    /// Contains the substring, ignoring case (text fields).
    IContains,
    /// Starts with (text fields, case-sensitive).
    StartsWith,
    /// Ends with (text fields, case-sensitive).
    EndsWith,
    /// Greater than.
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// One of a list of values.
    In,
    /// Is null (`true`) or is not null (`false`).
    IsNull,
}

impl Lookup {
    /// Every lookup with its key suffix.
    pub const ALL: [(&'static str, Lookup); 12] = [
        ("exact", Lookup::Exact),
        ("iexact", Lookup::IExact),
        ("contains", Lookup::Contains),
        ("icontains", Lookup::IContains),
        ("startswith", Lookup::StartsWith),
        ("endswith", Lookup::EndsWith),
        ("gt", Lookup::Gt),
        ("gte", Lookup::Gte),
        ("lt", Lookup::Lt),
        ("lte", Lookup::Lte),
        ("in", Lookup::In),
        ("isnull", Lookup::IsNull),
    ];

    /// The lookup named by a key suffix.
    pub fn from_suffix(suffix: &str) -> Option<Lookup> {
        Lookup::ALL.iter().find(|(name, _)| *name == suffix).map(|(_, lookup)| *lookup)
    }

    /// The key suffix of this lookup.
    pub fn suffix(self) -> &'static str {
        Lookup::ALL.iter().find(|(_, lookup)| *lookup == self).map(|(name, _)| *name).unwrap_or("exact")
    }

    fn needs_text(self) -> bool {
        matches!(
            self,
            Lookup::IExact | Lookup::Contains | Lookup::IContains | Lookup::StartsWith | Lookup::EndsWith
        )
    }
}

/// Bounds on what a client filter may ask for.
#[derive(Clone, Copy, Debug)]
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

/// Why a filter was refused. The message is meant for the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
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
    #[error("unknown lookup `{lookup}` on `{field}`; lookups: exact, iexact, contains, icontains, startswith, endswith, gt, gte, lt, lte, in, isnull")]
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
        if self.lookup == Lookup::Exact {
            self.name.to_owned()
        } else {
            format!("{}__{}", self.name, self.lookup.suffix())
        }
    }

    /// Decides the clause on a change's values; `None` when the field is not there.
    pub fn matches(&self, values: &Map<String, Json>) -> Option<bool> {
        let actual = values.get(self.name)?;
        Some(eval(self.lookup, actual, &self.value))
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
            return Err(FilterError::TooLarge(format!(
                "{} clauses, at most {}",
                object.len(),
                limits.max_clauses
            )));
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
                let key = if *lookup == Lookup::Exact {
                    field.name.to_owned()
                } else {
                    format!("{}__{}", field.name, lookup.suffix())
                };
                parse_clause::<M>(&key, value.clone(), &limits)
            })
            .collect::<Result<_, _>>()?;
        Ok(Filter { clauses })
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

fn parse_clause<M: ModelSubscription>(key: &str, value: Json, limits: &FilterLimits) -> Result<Clause, FilterError> {
    let (name, lookup) = match key.split_once("__") {
        None => (key, Lookup::Exact),
        Some((name, suffix)) => {
            let lookup = Lookup::from_suffix(suffix).ok_or_else(|| FilterError::UnknownLookup {
                field: name.to_owned(),
                lookup: suffix.to_owned(),
            })?;
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
            let items = items
                .into_iter()
                .map(|item| canonical(field, item, limits).map_err(&invalid))
                .collect::<Result<_, _>>()?;
            Json::Array(items)
        }
        lookup if lookup.needs_text() => {
            if !is_text(field) {
                return Err(invalid(format!("{} applies to text fields only", lookup.suffix())));
            }
            match value {
                Json::String(ref text) if text.len() <= limits.max_text_len => value,
                Json::String(_) => return Err(FilterError::TooLarge(format!("`{key}` value is too long"))),
                _ => return Err(invalid("expected a string".into())),
            }
        }
        _ => canonical(field, value, limits).map_err(invalid)?,
    };
    Ok(Clause { field: index, name: field.name, lookup, value })
}

fn canonical<E: EntityTrait>(field: &Field<E>, value: Json, limits: &FilterLimits) -> Result<Json, String> {
    if let Json::String(text) = &value
        && text.len() > limits.max_text_len
    {
        return Err("value is too long".into());
    }
    (field.canonical)(value).map_err(|error| error.to_string())
}

fn is_text<E: EntityTrait>(field: &Field<E>) -> bool {
    matches!(
        field.column.def().get_column_type(),
        ColumnType::String(_) | ColumnType::Text | ColumnType::Char(_)
    )
}

/// Evaluates one lookup in memory. Values are canonical JSON on both sides.
pub fn eval(lookup: Lookup, actual: &Json, expected: &Json) -> bool {
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
                Lookup::IExact => actual.to_lowercase() == expected.to_lowercase(),
                Lookup::Contains => actual.contains(expected),
                Lookup::IContains => actual.to_lowercase().contains(&expected.to_lowercase()),
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

fn clause_expr<E: EntityTrait>(field: &Field<E>, clause: &Clause, backend: DbBackend) -> SimpleExpr {
    let column = field.column;
    // Canonical values came from the field's own type, so parsing cannot fail;
    // should it, the clause selects nothing rather than everything.
    let typed = |value: &Json| (field.parse)(value.clone()).ok();
    let text = clause.value.as_str().unwrap_or_default().to_owned();
    // An INT4: PostgreSQL has no SUBSTR or RIGHT taking a BIGINT length.
    let length = i32::try_from(text.chars().count()).unwrap_or(i32::MAX);
    let never = || Expr::val(1).eq(0);
    match clause.lookup {
        Lookup::Exact if Json::is_null(&clause.value) => column.is_null(),
        Lookup::Exact => typed(&clause.value).map_or_else(never, |value| column.eq(value)),
        Lookup::Gt => typed(&clause.value).map_or_else(never, |value| column.gt(value)),
        Lookup::Gte => typed(&clause.value).map_or_else(never, |value| column.gte(value)),
        Lookup::Lt => typed(&clause.value).map_or_else(never, |value| column.lt(value)),
        Lookup::Lte => typed(&clause.value).map_or_else(never, |value| column.lte(value)),
        Lookup::In => {
            let values: Option<Vec<_>> =
                clause.value.as_array().map(|items| items.iter().map(typed).collect()).unwrap_or_default();
            values.map_or_else(never, |values| column.is_in(values))
        }
        Lookup::IsNull if clause.value.as_bool() == Some(true) => column.is_null(),
        Lookup::IsNull => column.is_not_null(),
        Lookup::IExact => Expr::expr(Func::lower(Expr::col(column))).eq(text.to_lowercase()),
        Lookup::IContains => Expr::expr(Func::lower(Expr::col(column)))
            .like(LikeExpr::new(format!("%{}%", escape_like(&text.to_lowercase()))).escape('\\')),
        // LIKE ignores case on SQLite and MySQL, so the case-sensitive text
        // lookups use each backend's position and substring functions.
        Lookup::Contains => match backend {
            DbBackend::Sqlite => Expr::expr(Func::cust("INSTR").arg(Expr::col(column)).arg(text)).gt(0),
            DbBackend::Postgres => Expr::expr(Func::cust("STRPOS").arg(Expr::col(column)).arg(text)).gt(0),
            _ => column.like(LikeExpr::new(format!("%{}%", escape_like(&text))).escape('\\')),
        },
        Lookup::StartsWith => match backend {
            DbBackend::Sqlite | DbBackend::Postgres => {
                Expr::expr(Func::cust("SUBSTR").arg(Expr::col(column)).arg(1).arg(length)).eq(text)
            }
            _ => column.like(LikeExpr::new(format!("{}%", escape_like(&text))).escape('\\')),
        },
        Lookup::EndsWith => match backend {
            DbBackend::Sqlite => Expr::expr(Func::cust("SUBSTR").arg(Expr::col(column)).arg(-length)).eq(text),
            DbBackend::Postgres => Expr::expr(Func::cust("RIGHT").arg(Expr::col(column)).arg(length)).eq(text),
            _ => column.like(LikeExpr::new(format!("%{}", escape_like(&text))).escape('\\')),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

//! The comparisons a filter or a scope can make.

use serde::{Deserialize, Serialize};

/// A comparison between a field and a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookup {
    /// Equal (the default when a key has no `__lookup`).
    Exact,
    /// Equal, ignoring ASCII case (text fields). Only ASCII letters are
    /// folded, on every database alike: SQLite's `LOWER` folds no others.
    IExact,
    /// Contains the substring (text fields, case-sensitive).
    Contains,
    /// Contains the substring, ignoring ASCII case (text fields).
    IContains,
    /// Starts with (text fields, case-sensitive).
    StartsWith,
    /// Ends with (text fields, case-sensitive).
    EndsWith,
    /// Greater than. Numbers compare numerically, timestamps as instants,
    /// text by code point (whatever the column's collation).
    Gt,
    /// Greater than or equal.
    Gte,
    /// Less than.
    Lt,
    /// Less than or equal.
    Lte,
    /// One of a list of values (`null` in the list matches null).
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

    pub(crate) fn needs_text(self) -> bool {
        matches!(self, Lookup::IExact | Lookup::Contains | Lookup::IContains | Lookup::StartsWith | Lookup::EndsWith)
    }
}

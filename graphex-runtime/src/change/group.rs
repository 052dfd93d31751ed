//! Group names. A subscription joins a group built from its arguments; a
//! change is sent to the groups built from the changed row. Both sides use
//! the functions here on canonical JSON values, so the names match by
//! construction.
//!
//! - coarse: `<stream>-<action>`
//! - per instance: `<stream>-<action>-<pk>`
//! - value-indexed: `<stream>-<action>:k1=v1&k2=v2` (keys sorted, values percent-encoded)
//!
//! A name longer than [`MAX_GROUP_LEN`] becomes `<stream>-<action>#<sha256 hex>`.
//!
//! Two other namespaces share the layer, and cannot meet a model group
//! (stream names are ASCII letters, digits, `_` and `.`):
//!
//! - custom groups (`subscribe_groups`, `Hub::broadcast`): `@<name>`;
//! - node requests and replies between processes (forwarded subscribes):
//!   `~node:<node id>` and `~reply:<node id>`;
//! - revocations (`Hub::revoke`), which every process listens to: `~revoke`.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::model::Action;

/// Longest group name sent to a channel layer as is.
pub const MAX_GROUP_LEN: usize = 100;

/// Characters left as they are in values: RFC 3986 unreserved.
const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The group of every change of `action` on `stream`.
pub fn coarse(stream: &str, action: Action) -> String {
    format!("{stream}-{}", action.as_str())
}

/// The group of changes of `action` on the row with primary key `pk`.
pub fn instance(stream: &str, action: Action, pk: &Json) -> String {
    bounded(stream, action, format!("{stream}-{}-{}", action.as_str(), encode(pk)))
}

/// The group of changes of `action` on rows whose index fields have these
/// values. `pairs` may come in any order.
pub fn indexed(stream: &str, action: Action, pairs: &[(&str, &Json)]) -> String {
    let mut pairs: Vec<_> = pairs.iter().map(|(key, value)| (*key, encode(value))).collect();
    pairs.sort_unstable();
    let suffix: Vec<String> = pairs.into_iter().map(|(key, value)| format!("{key}={value}")).collect();
    bounded(stream, action, format!("{stream}-{}:{}", action.as_str(), suffix.join("&")))
}

/// The stream of a model group: the name up to its first `-` (stream
/// names have none).
pub fn stream_of(group: &str) -> &str {
    group.split_once('-').map_or(group, |(stream, _)| stream)
}

/// First character of every custom group name.
pub(crate) const CUSTOM_PREFIX: char = '@';

/// Longest custom group name a subscriber or broadcaster may use.
pub(crate) const MAX_CUSTOM_NAME_LEN: usize = 200;

/// Whether a layer group name is a custom group.
pub(crate) fn is_custom(group: &str) -> bool {
    group.starts_with(CUSTOM_PREFIX)
}

/// The layer group of the custom group `name`; `None` unless `name` is 1 to
/// [`MAX_CUSTOM_NAME_LEN`] bytes without control characters.
pub(crate) fn custom(name: &str) -> Option<String> {
    let valid = !name.is_empty() && name.len() <= MAX_CUSTOM_NAME_LEN && !name.chars().any(char::is_control);
    valid.then(|| format!("{CUSTOM_PREFIX}{name}"))
}

/// First character of the groups processes use to talk to each other.
pub(crate) const NODE_MARK: char = '~';

/// Whether a layer group name is a node request or reply group.
pub(crate) fn is_node(group: &str) -> bool {
    group.starts_with(NODE_MARK)
}

/// The group every process listens to for revocations: the message is a
/// principal id ([`crate::Hub::revoke`]).
pub(crate) const REVOKE: &str = "~revoke";

/// The group a process receives requests on.
pub(crate) fn node_requests(node: &str) -> String {
    format!("{NODE_MARK}node:{node}")
}

/// The group a process receives replies on.
pub(crate) fn node_replies(node: &str) -> String {
    format!("{NODE_MARK}reply:{node}")
}

fn encode(value: &Json) -> String {
    match value {
        Json::String(text) => utf8_percent_encode(text, VALUE).to_string(),
        // Numbers, booleans and null print as JSON; objects and arrays (not
        // valid keys) are encoded whole so they still map to a stable name.
        other => utf8_percent_encode(&other.to_string(), VALUE).to_string(),
    }
}

fn bounded(stream: &str, action: Action, name: String) -> String {
    if name.len() <= MAX_GROUP_LEN {
        return name;
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{stream}-{}#{hex}", action.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn coarse_and_instance() {
        assert_eq!(coarse("users", Action::Create), "users-create");
        assert_eq!(instance("users", Action::Update, &json!(5)), "users-update-5");
        assert_eq!(instance("users", Action::Update, &json!("a b/c")), "users-update-a%20b%2Fc");
    }

    #[test]
    fn indexed_sorts_keys_and_encodes_values() {
        let name = indexed("messages", Action::Create, &[("tenant", &json!("acme&co")), ("room", &json!(42))]);
        assert_eq!(name, "messages-create:room=42&tenant=acme%26co");
        let same = indexed("messages", Action::Create, &[("room", &json!(42)), ("tenant", &json!("acme&co"))]);
        assert_eq!(name, same);
    }

    #[test]
    fn values_cannot_forge_separators() {
        let forged = indexed("m", Action::Create, &[("room", &json!("1&tenant=x"))]);
        let real = indexed("m", Action::Create, &[("room", &json!(1)), ("tenant", &json!("x"))]);
        assert_ne!(forged, real);
    }

    #[test]
    fn long_names_are_hashed_stably() {
        let long = "x".repeat(300);
        let a = instance("users", Action::Delete, &json!(long));
        let b = instance("users", Action::Delete, &json!(long));
        assert_eq!(a, b);
        assert!(a.len() <= MAX_GROUP_LEN);
        assert!(a.starts_with("users-delete#"));
        assert_ne!(a, instance("users", Action::Delete, &json!("y".repeat(300))));
    }
}

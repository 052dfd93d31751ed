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
pub(crate) const VALUE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The group of every change of `action` on `stream`.
pub fn coarse(stream: &str, action: Action) -> String {
    let mut name = head(stream, action, 0);
    name.shrink_to_fit();
    name
}

/// The group of changes of `action` on the row with primary key `pk`.
pub fn instance(stream: &str, action: Action, pk: &Json) -> String {
    let mut name = head(stream, action, 24);
    name.push('-');
    encode_into(&mut name, pk);
    bounded(stream, action, name)
}

/// The group of changes of `action` on rows whose index fields have these
/// values. `pairs` may come in any order.
pub fn indexed(stream: &str, action: Action, pairs: &[(&str, &Json)]) -> String {
    let mut name = head(stream, action, 32);
    name.push(':');
    if let [(key, value)] = pairs {
        // One index field (the usual case): nothing to sort.
        push_pair(&mut name, 0, key, |name| encode_into(name, value));
        return bounded(stream, action, name);
    }
    let mut sorted = pairs.to_vec();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if sorted.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        // One key twice (no model has that): ordered by encoded value too,
        // as the name has always been built.
        let mut encoded: Vec<(&str, String)> = sorted
            .iter()
            .map(|(key, value)| {
                let mut text = String::new();
                encode_into(&mut text, value);
                (*key, text)
            })
            .collect();
        encoded.sort_unstable();
        for (index, (key, value)) in encoded.iter().enumerate() {
            push_pair(&mut name, index, key, |name| name.push_str(value));
        }
    } else {
        for (index, (key, value)) in sorted.iter().enumerate() {
            push_pair(&mut name, index, key, |name| encode_into(name, value));
        }
    }
    bounded(stream, action, name)
}

/// `<stream>-<action>`, with room for `more` bytes after it.
fn head(stream: &str, action: Action, more: usize) -> String {
    let action = action.as_str();
    let mut name = String::with_capacity(stream.len() + 1 + action.len() + more);
    name.push_str(stream);
    name.push('-');
    name.push_str(action);
    name
}

/// `key=value`, after a `&` unless it is the first pair.
fn push_pair(name: &mut String, index: usize, key: &str, value: impl FnOnce(&mut String)) {
    if index > 0 {
        name.push('&');
    }
    name.push_str(key);
    name.push('=');
    value(name);
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

/// Appends `value` percent-encoded: a string's text, any other value as
/// JSON prints it.
fn encode_into(out: &mut String, value: &Json) {
    match value {
        Json::String(text) => out.extend(utf8_percent_encode(text, VALUE)),
        // Numbers, booleans and null print as JSON; objects and arrays (not
        // valid keys) are encoded whole so they still map to a stable name.
        other => {
            let start = out.len();
            {
                use std::fmt::Write;
                let _ = write!(out, "{other}");
            }
            // Usually (an integer) nothing needs encoding: the encoder's
            // first chunk is then the whole text. Otherwise (`+` of an
            // exponent, an object's punctuation) it is encoded as printed.
            let printed = &out[start..];
            if utf8_percent_encode(printed, VALUE).next() != Some(printed) {
                let printed = out.split_off(start);
                out.extend(utf8_percent_encode(&printed, VALUE));
            }
        }
    }
}

/// `name`, or its hash when it is longer than [`MAX_GROUP_LEN`].
pub(crate) fn bounded(stream: &str, action: Action, name: String) -> String {
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
    fn values_are_encoded_as_json_prints_them() {
        let name = |value: serde_json::Value| indexed("m", Action::Create, &[("k", &value)]);
        assert_eq!(name(json!(-1.5)), "m-create:k=-1.5");
        assert_eq!(name(json!(1e300)), "m-create:k=1e%2B300", "the exponent's `+` is encoded");
        assert_eq!(name(json!(null)), "m-create:k=null");
        assert_eq!(name(json!(true)), "m-create:k=true");
        assert_eq!(name(json!("null")), "m-create:k=null", "a string and a value that print alike meet");
        assert_eq!(name(json!({"a": [1, 2]})), "m-create:k=%7B%22a%22%3A%5B1%2C2%5D%7D");
        assert_eq!(name(json!("é &=")), "m-create:k=%C3%A9%20%26%3D");
        assert_eq!(coarse("m", Action::Delete), "m-delete");
    }

    #[test]
    fn a_key_given_twice_is_ordered_by_its_encoded_values() {
        let pairs = [("k", &json!("b")), ("a", &json!(1)), ("k", &json!("a"))];
        assert_eq!(indexed("m", Action::Create, &pairs), "m-create:a=1&k=a&k=b");
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

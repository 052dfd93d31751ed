//! A change as it travels: encoded once by the publisher, decoded once per
//! receiving process, and rendered to socket frames (once for subscribers
//! that take the whole payload, once per projection otherwise). In id-only
//! mode the decoded change also keeps the row read back for filters that
//! the change cannot decide, read once for every subscriber that needs it.

use std::borrow::Cow;
use std::future::Future;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::layer::Position;
use crate::model::{Action, ModelSubscription};

/// The message a channel layer carries for one change.
///
/// Versioned, so processes of two releases can share a layer during a
/// rolling deploy: a process reads its own version and the one before
/// ([`Change::VERSION`] − 1; version 1 is the message without `v`), and
/// refuses a newer one (counted in [`crate::Stats::unreadable`], logged,
/// never delivered) rather than guess what its new fields mean. Fields a
/// version adds are optional, so the previous release reads the new
/// messages too (it ignores what it does not know).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The message version ([`Change::VERSION`]; 1 when absent).
    #[serde(rename = "v", default = "version_one")]
    pub version: u32,
    /// Stream of the model (borrowed from the model's constants when
    /// made here: no allocation per change).
    pub stream: Cow<'static, str>,
    /// Model label.
    pub model: Cow<'static, str>,
    /// What happened.
    pub action: Action,
    /// Primary key.
    pub pk: Json,
    /// Name of the primary-key field.
    pub pk_field: Cow<'static, str>,
    /// Every payload field, in full-payload mode; absent in id-only mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Map<String, Json>>,
    /// Tells this change from an identical one (two updates of one id-only
    /// row look alike), so that a process receiving it through several
    /// groups decodes it, and reads its row back, once ([`Change::nonce`]).
    /// 0 (absent) for messages of older versions: never shared.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub nonce: u64,
}

fn is_zero(nonce: &u64) -> bool {
    *nonce == 0
}

fn version_one() -> u32 {
    1
}

/// Why a layer message is not a change this process delivers.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a change message at all.
    #[error("malformed change message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A change of a newer release, which this one cannot read safely.
    #[error("change message version {0} is newer than this process reads ({max})", max = Change::VERSION)]
    UnknownVersion(u32),
}

impl Change {
    /// The version this release writes: 2 added `nonce` (issue 15). It
    /// reads this one and the one before.
    pub const VERSION: u32 = 2;

    /// The change for `row`, serialized once.
    pub fn of<M: ModelSubscription>(row: &M, action: Action) -> Change {
        Change {
            version: Change::VERSION,
            stream: Cow::Borrowed(M::STREAM),
            model: Cow::Borrowed(M::LABEL),
            action,
            pk: row.primary_key(),
            pk_field: Cow::Borrowed(M::FIELDS[M::PRIMARY_KEY].name),
            values: M::FULL_PAYLOAD.then(|| row.values()),
            nonce: Change::nonce(),
        }
    }

    /// A fresh [`Change::nonce`]: a per-process counter from a random start
    /// (never 0), so changes of different processes do not meet either.
    pub(crate) fn nonce() -> u64 {
        static NEXT: std::sync::LazyLock<std::sync::atomic::AtomicU64> = std::sync::LazyLock::new(|| {
            let mut seed = [0u8; 8];
            getrandom::fill(&mut seed).expect("the OS random source is available");
            std::sync::atomic::AtomicU64::new(u64::from_le_bytes(seed))
        });
        loop {
            let nonce = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if nonce != 0 {
                return nonce;
            }
        }
    }

    /// Encodes for a channel layer.
    pub fn encode(&self) -> Bytes {
        self.encode_handed().0
    }

    /// Encodes for a channel layer, and says where the `values` object
    /// sits in the message: this process's frames take those bytes
    /// instead of serializing the values again ([`Handed`]). The same
    /// bytes as the derived `Serialize` writes (a test checks it).
    pub(crate) fn encode_handed(&self) -> (Bytes, Option<Range<usize>>) {
        /// Every field before `values`, in the order `Change` declares them.
        #[derive(Serialize)]
        struct Head<'a> {
            v: u32,
            stream: &'a str,
            model: &'a str,
            action: Action,
            pk: &'a Json,
            pk_field: &'a str,
        }
        let head = Head {
            v: self.version,
            stream: &self.stream,
            model: &self.model,
            action: self.action,
            pk: &self.pk,
            pk_field: &self.pk_field,
        };
        let mut out = Vec::with_capacity(256);
        serde_json::to_writer(&mut out, &head).expect("a change is plain JSON");
        // Reopened: the head's closing brace goes after the last field.
        out.pop();
        let mut values_at = None;
        if let Some(values) = &self.values {
            out.extend_from_slice(b",\"values\":");
            let start = out.len();
            serde_json::to_writer(&mut out, values).expect("a change is plain JSON");
            values_at = Some(start..out.len());
        }
        if self.nonce != 0 {
            use std::io::Write;
            write!(out, ",\"nonce\":{}", self.nonce).expect("writing to memory");
        }
        out.push(b'}');
        (Bytes::from(out), values_at)
    }

    /// Decodes a channel-layer message of this version or the one before.
    pub fn decode(bytes: &[u8]) -> Result<Change, DecodeError> {
        let change: Change = serde_json::from_slice(bytes)?;
        if change.version > Change::VERSION || change.version + 1 < Change::VERSION {
            return Err(DecodeError::UnknownVersion(change.version));
        }
        Ok(change)
    }
}

#[cfg(test)]
impl Change {
    /// The creation of user `pk` (stream `users`, label `user`), for unit tests.
    pub(crate) fn user_created(pk: i64, values: Option<Map<String, Json>>) -> Change {
        Change {
            version: Change::VERSION,
            stream: "users".into(),
            model: "user".into(),
            action: Action::Create,
            pk: pk.into(),
            pk_field: "id".into(),
            values,
            nonce: Change::nonce(),
        }
    }
}

/// A change as the process that made it hands it to its own dispatch,
/// beside its encoded message: the dispatch neither decodes the message
/// nor serializes the values again for the frame.
#[derive(Clone, Debug)]
pub struct Handed {
    /// The change the message encodes.
    pub change: Change,
    /// Where the change's `values` object sits in the message, as
    /// [`Change::encode_handed`] wrote it (`None`: not known, rendered).
    pub values_at: Option<Range<usize>>,
}

impl From<Change> for Handed {
    fn from(change: Change) -> Handed {
        Handed { change, values_at: None }
    }
}

/// A decoded change with what every subscriber of this process shares.
#[derive(Debug)]
pub struct Event {
    /// The change.
    pub change: Change,
    /// Where the layer put it in its stream (none from a layer that keeps
    /// no positions, or from a release before them).
    pub position: Option<Position>,
    /// `{pk_field: pk}` in id-only mode; empty in full mode, where
    /// [`Event::known`] is the row itself (not copied).
    key_only: Map<String, Json>,
    /// The frame for subscribers without a projection.
    pub frame: Bytes,
    /// Frames already rendered for projections, so that subscribers asking
    /// for the same fields share one (at most [`PROJECTIONS_SHARED`]).
    projections: Mutex<Vec<(Vec<&'static str>, Bytes)>>,
    /// The row read back by primary key (id-only mode), by the first
    /// subscriber whose filter needs it; the others await that read.
    row: tokio::sync::OnceCell<Fetched>,
}

/// The changed row as read back from the database for filters an id-only
/// change cannot decide.
#[derive(Debug)]
pub enum Fetched {
    /// The row, every payload field as the model's `values()` serializes it.
    Row(Map<String, Json>),
    /// No row has this primary key (any more).
    Gone,
    /// The read failed (logged once, where it ran).
    Failed,
}

/// Distinct projections whose frames one change keeps for sharing; a
/// further projection is rendered for each subscriber that asks for it.
const PROJECTIONS_SHARED: usize = 16;

impl Event {
    /// Prepares a decoded change for delivery.
    pub fn new(change: Change, position: Option<Position>) -> Event {
        let frame = render(&change, None);
        Event::with_frame(change, position, frame)
    }

    /// The event of `change` whose whole-payload frame is `frame`.
    fn with_frame(change: Change, position: Option<Position>, frame: Bytes) -> Event {
        let key_only = match &change.values {
            Some(_) => Map::new(),
            None => Map::from_iter([(change.pk_field.to_string(), change.pk.clone())]),
        };
        Event { change, position, key_only, frame, projections: Mutex::default(), row: tokio::sync::OnceCell::new() }
    }

    /// As [`Event::new`], for a change whose `values` object is already
    /// serialized as `values_json` (the bytes of its own message, where
    /// [`Change::encode_handed`] put them): the frame splices them in. The
    /// same bytes as rendering the values (a test checks it).
    pub(crate) fn with_values_json(change: Change, position: Option<Position>, values_json: &[u8]) -> Event {
        if change.values.is_none() {
            return Event::new(change, position);
        }
        let frame = splice(&change, values_json);
        Event::with_frame(change, position, frame)
    }

    /// The row read back for this change: the first caller runs `fetch`,
    /// callers meanwhile await its result, later ones get it at once. If
    /// the reading caller is cancelled, the next one reads.
    pub(crate) async fn row<F, Fut>(&self, fetch: F) -> &Fetched
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Fetched>,
    {
        self.row.get_or_init(fetch).await
    }

    /// The row, if already read back.
    pub(crate) fn fetched(&self) -> Option<&Fetched> {
        self.row.get()
    }

    /// Values filters are decided on: the full row, or just the primary key.
    pub fn known(&self) -> &Map<String, Json> {
        self.change.values.as_ref().unwrap_or(&self.key_only)
    }

    /// The frame for a subscriber that asked for these fields, rendered
    /// once per change and projection.
    pub fn projected(&self, fields: &[&'static str]) -> Bytes {
        if self.change.values.is_none() {
            // Id-only: every projection gets the same frame.
            return self.frame.clone();
        }
        let mut shared = self.projections.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, frame)) = shared.iter().find(|(known, _)| known.as_slice() == fields) {
            return frame.clone();
        }
        let frame = render(&self.change, Some(fields));
        if shared.len() < PROJECTIONS_SHARED {
            shared.push((fields.to_vec(), frame.clone()));
        }
        frame
    }
}

#[derive(Serialize)]
struct Frame<'a> {
    stream: &'a str,
    payload: Payload<'a>,
}

#[derive(Serialize)]
struct Payload<'a> {
    action: Action,
    model: &'a str,
    data: Data<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Data<'a> {
    Id { id: &'a Json },
    All(&'a Map<String, Json>),
    Some(Map<String, Json>),
}

/// `{"stream": S, "payload": {"action": A, "model": L, "data": {...}}}`.
fn render(change: &Change, fields: Option<&[&'static str]>) -> Bytes {
    let data = match (&change.values, fields) {
        (None, _) => Data::Id { id: &change.pk },
        (Some(values), None) => Data::All(values),
        (Some(values), Some(fields)) => Data::Some(
            fields
                .iter()
                .filter_map(|field| values.get(*field).map(|value| ((*field).to_owned(), value.clone())))
                .collect(),
        ),
    };
    let frame =
        Frame { stream: &change.stream, payload: Payload { action: change.action, model: &change.model, data } };
    Bytes::from(serde_json::to_vec(&frame).expect("a frame is plain JSON"))
}

/// The full frame of `change` around `values_json`, its values already
/// serialized: what [`render`] writes for it, without serializing them.
fn splice(change: &Change, values_json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(values_json.len() + change.stream.len() + change.model.len() + 64);
    let text = |out: &mut Vec<u8>, text: &str| serde_json::to_writer(out, text).expect("a string is plain JSON");
    out.extend_from_slice(b"{\"stream\":");
    text(&mut out, &change.stream);
    out.extend_from_slice(b",\"payload\":{\"action\":");
    serde_json::to_writer(&mut out, &change.action).expect("an action is plain JSON");
    out.extend_from_slice(b",\"model\":");
    text(&mut out, &change.model);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(values_json);
    out.extend_from_slice(b"}}");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Values that serialize with escapes, unicode, floats and nesting.
    fn tricky() -> Vec<Option<Map<String, Json>>> {
        let values = [
            json!({"id": 5, "username": "neo", "email": "neo@example.com"}),
            json!({"id": "a\"b\\c\n\u{1}", "név": "é😀\u{2028}", "x": -1.5e-7, "big": 18446744073709551615u64}),
            json!({"id": 1, "nested": {"a": [1, null, true, {"b": "</script>"}]}, "empty": {}, "list": []}),
            json!({}),
        ];
        let mut all: Vec<_> = values.into_iter().map(|values| values.as_object().cloned()).collect();
        all.push(None);
        all
    }

    #[test]
    fn the_handed_encoding_is_the_derived_one_and_its_values_span_splices_the_rendered_frame() {
        for values in tricky() {
            for (stream, model, nonce) in [("users", "user", 7), ("we\"ird.s", "mö\\del", 0)] {
                let mut change = change(values.clone());
                change.stream = stream.to_owned().into();
                change.model = model.to_owned().into();
                change.nonce = nonce;
                let (message, values_at) = change.encode_handed();
                assert_eq!(message, serde_json::to_vec(&change).unwrap(), "the derived bytes");
                assert_eq!(Change::decode(&message).unwrap(), change);
                assert_eq!(values_at.is_some(), change.values.is_some());
                let spliced = match &values_at {
                    Some(at) => Event::with_values_json(change.clone(), None, &message[at.clone()]),
                    None => Event::with_values_json(change.clone(), None, b""),
                };
                assert_eq!(spliced.frame, Event::new(change.clone(), None).frame, "{values:?}");
            }
        }
    }

    fn change(values: Option<Map<String, Json>>) -> Change {
        Change {
            version: Change::VERSION,
            stream: "users".into(),
            model: "user".into(),
            action: Action::Update,
            pk: json!(5),
            pk_field: "id".into(),
            values,
            nonce: 1,
        }
    }

    #[test]
    fn id_only_frame() {
        let event = Event::new(change(None), None);
        let frame: Json = serde_json::from_slice(&event.frame).unwrap();
        assert_eq!(
            frame,
            json!({"stream": "users", "payload": {"action": "update", "model": "user", "data": {"id": 5}}})
        );
        assert_eq!(event.known(), &Map::from_iter([("id".to_owned(), json!(5))]));
    }

    #[test]
    fn full_and_projected_frames() {
        let values = json!({"id": 5, "username": "neo", "email": "neo@example.com"});
        let event = Event::new(change(values.as_object().cloned()), None);
        let frame: Json = serde_json::from_slice(&event.frame).unwrap();
        assert_eq!(frame["payload"]["data"], values);
        assert_eq!(event.known(), values.as_object().unwrap(), "filters see the whole row");
        let projected: Json = serde_json::from_slice(&event.projected(&["email", "username"])).unwrap();
        assert_eq!(projected["payload"]["data"], json!({"email": "neo@example.com", "username": "neo"}));
    }

    #[test]
    fn a_projection_is_rendered_once_per_change() {
        let event = Event::new(change(json!({"id": 5, "username": "neo"}).as_object().cloned()), None);
        let first = event.projected(&["username"]);
        let again = event.projected(&["username"]);
        assert_eq!(first.as_ptr(), again.as_ptr(), "the second subscriber shares the first one's frame");
        let other = event.projected(&["id"]);
        assert_ne!(other, first);
        let id: Json = serde_json::from_slice(&other).unwrap();
        assert_eq!(id["payload"]["data"], json!({"id": 5}));
    }

    #[test]
    fn projections_beyond_the_shared_ones_are_still_rendered() {
        const FIELDS: [&str; 20] = [
            "f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9", "f10", "f11", "f12", "f13", "f14", "f15",
            "f16", "f17", "f18", "f19",
        ];
        let values: Map<String, Json> = FIELDS.iter().map(|name| ((*name).to_owned(), json!(name))).collect();
        let event = Event::new(change(Some(values)), None);
        for name in FIELDS {
            let frame: Json = serde_json::from_slice(&event.projected(&[name])).unwrap();
            assert_eq!(frame["payload"]["data"], json!({ name: name }));
        }
        assert_eq!(event.projections.lock().unwrap().len(), PROJECTIONS_SHARED, "the cache stays bounded");
    }

    #[test]
    fn id_only_projections_share_the_id_frame() {
        let event = Event::new(change(None), None);
        assert_eq!(event.projected(&["id"]), event.frame);
    }

    #[test]
    fn floats_survive_the_layer_message() {
        // Found by proptests: without serde_json's `float_roundtrip`, this
        // value came back one unit in the last place off.
        let float = json!(-4.717105653648541e64);
        let original = change(json!({"id": 5, "score": float}).as_object().cloned());
        let decoded = Change::decode(&original.encode()).unwrap();
        assert_eq!(decoded.values.unwrap()["score"], float);
    }

    #[test]
    fn change_round_trips() {
        let original = change(json!({"id": 5}).as_object().cloned());
        assert_eq!(Change::decode(&original.encode()).unwrap(), original);
    }
}

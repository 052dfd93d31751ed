//! Property tests of what arrives from outside: client filters
//! (`subscribe/filter.rs`), group names (`change/group.rs`) and layer
//! messages (`change/codec.rs`). Arbitrary input never panics and ends in a
//! value or a clear error; names stay in their namespace; encoding round-trips.
//! 256 cases per property, so the suite stays fast (`PROPTEST_CASES` for more).

use proptest::prelude::*;
use sea_orm::{DbBackend, EntityTrait, QueryFilter, QueryTrait};
use serde_json::{Map, Number, Value as Json};

use crate::change::codec::{Change, Event};
use crate::change::group;
use crate::model::{
    Action, Denied, Field, ModelSubscription, Scope, SubscribeRequest, canonical_value, field_value, parse_value,
};
use crate::subscribe::filter::{Filter, FilterError, FilterLimits};

pub(crate) mod person {
    #![allow(unreachable_pub, missing_docs)]
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "people")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        pub name: String,
        pub nick: Option<String>,
        pub score: f64,
        pub active: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// What the derive would generate for `person`, written out.
impl ModelSubscription for person::Model {
    type Entity = person::Entity;
    const STREAM: &'static str = "people";
    const LABEL: &'static str = "person";
    const FULL_PAYLOAD: bool = true;
    const PRIMARY_KEY: usize = 0;
    const FIELDS: &'static [Field<person::Entity>] = &[
        Field { name: "id", column: person::Column::Id, parse: parse_value::<i32>, canonical: canonical_value::<i32> },
        Field {
            name: "name",
            column: person::Column::Name,
            parse: parse_value::<String>,
            canonical: canonical_value::<String>,
        },
        Field {
            name: "nick",
            column: person::Column::Nick,
            parse: parse_value::<Option<String>>,
            canonical: canonical_value::<Option<String>>,
        },
        Field {
            name: "score",
            column: person::Column::Score,
            parse: parse_value::<f64>,
            canonical: canonical_value::<f64>,
        },
        Field {
            name: "active",
            column: person::Column::Active,
            parse: parse_value::<bool>,
            canonical: canonical_value::<bool>,
        },
    ];
    const INDEX_FIELDS: &'static [&'static str] = &[];

    fn primary_key(&self) -> Json {
        Json::from(self.id)
    }
    fn values(&self) -> Map<String, Json> {
        Map::from_iter([
            ("id".to_owned(), field_value("id", &self.id)),
            ("name".to_owned(), field_value("name", &self.name)),
            ("nick".to_owned(), field_value("nick", &self.nick)),
            ("score".to_owned(), field_value("score", &self.score)),
            ("active".to_owned(), field_value("active", &self.active)),
        ])
    }
    fn index_values(&self) -> Vec<(&'static str, Json)> {
        Vec::new()
    }
    fn authorize(_: &SubscribeRequest<'_>) -> Result<(), Denied> {
        Ok(())
    }
    fn scope(_: &SubscribeRequest<'_>) -> Result<Scope<person::Entity>, Denied> {
        Ok(Scope::new())
    }
}

/// 256 cases per property (proptest's default), or `PROPTEST_CASES`.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(256);
    ProptestConfig { cases, ..ProptestConfig::default() }
}

/// Any finite JSON number.
fn number() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_filter_map("finite", |float| Number::from_f64(float).map(Json::Number)),
    ]
}

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        number(),
        any::<String>().prop_map(Json::String)
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
            prop::collection::vec((any::<String>(), inner), 0..6).prop_map(|pairs| Json::Object(Map::from_iter(pairs))),
        ]
    })
}

/// Filter keys: real fields with real or made-up lookups, and anything else.
fn filter_key() -> impl Strategy<Value = String> {
    let field = prop::sample::select(vec!["id", "name", "nick", "score", "active", "unknown", ""]);
    let lookup = prop::sample::select(vec![
        "",
        "__exact",
        "__iexact",
        "__contains",
        "__icontains",
        "__startswith",
        "__endswith",
        "__gt",
        "__gte",
        "__lt",
        "__lte",
        "__in",
        "__isnull",
        "__regex",
        "__",
        "__in__in",
    ]);
    prop_oneof![(field, lookup).prop_map(|(field, lookup)| format!("{field}{lookup}")), any::<String>()]
}

/// Values a filter key might be given: well-typed ones often, anything else too.
fn filter_value() -> impl Strategy<Value = Json> {
    prop_oneof![
        any::<i32>().prop_map(Json::from),
        "[a-zA-Z %_\\\\]{0,12}".prop_map(Json::String),
        any::<bool>().prop_map(Json::Bool),
        prop::collection::vec(prop_oneof![any::<i32>().prop_map(Json::from), Just(Json::Null)], 0..4)
            .prop_map(Json::Array),
        json(),
    ]
}

fn filter_object() -> impl Strategy<Value = Json> {
    prop::collection::vec((filter_key(), filter_value()), 0..20).prop_map(|pairs| Json::Object(Map::from_iter(pairs)))
}

/// A row of `person` as its values, or a partial one.
fn person_values() -> impl Strategy<Value = Map<String, Json>> {
    (any::<i32>(), any::<String>(), proptest::option::of(any::<String>()), -1e9f64..1e9, any::<bool>(), any::<bool>())
        .prop_map(|(id, name, nick, score, active, partial)| {
            let row = person::Model { id, name, nick, score, active };
            let mut values = row.values();
            if partial {
                values.shift_remove("name");
            }
            values
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_json_filter_parses_or_is_refused_clearly(filters in json()) {
        match Filter::parse::<person::Model>(&filters, &FilterLimits::default()) {
            Ok(filter) => {
                let object = filters.as_object().expect("only objects parse");
                prop_assert_eq!(filter.clauses().len(), object.len());
            }
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn filter_objects_parse_to_clauses_that_evaluate_and_build(
        filters in filter_object(),
        values in person_values(),
    ) {
        let limits = FilterLimits::default();
        match Filter::parse::<person::Model>(&filters, &limits) {
            Ok(filter) => {
                let object = filters.as_object().expect("an object");
                for clause in filter.clauses() {
                    // `field__exact` is written back as `field`.
                    let given = object.contains_key(&clause.key())
                        || object.contains_key(&format!("{}__exact", clause.name));
                    prop_assert!(given, "{} is not a key given", clause.key());
                }
                // Deciding in memory and building the SQL never panic.
                let decided = filter.matches(&values);
                if values.len() == person::Model::FIELDS.len() {
                    prop_assert!(decided.is_some(), "a whole row decides every clause");
                }
                for backend in [DbBackend::Sqlite, DbBackend::Postgres, DbBackend::MySql] {
                    let condition = filter.condition::<person::Model>(backend);
                    let sql = person::Entity::find().filter(condition).build(backend).to_string();
                    prop_assert!(sql.starts_with("SELECT"));
                }
            }
            Err(FilterError::TooLarge(_)) => {}
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
    }

    #[test]
    fn too_many_clauses_are_refused(extra in 1usize..8) {
        let limits = FilterLimits::default();
        let object: Map<String, Json> =
            (0..limits.max_clauses + extra).map(|index| (format!("id__{index}"), Json::from(1))).collect();
        let refused = Filter::parse::<person::Model>(&Json::Object(object), &limits);
        prop_assert!(matches!(refused, Err(FilterError::TooLarge(_))));
    }

    #[test]
    fn custom_group_names_are_valid_or_refused(name in any::<String>()) {
        let valid = !name.is_empty()
            && name.len() <= group::MAX_CUSTOM_NAME_LEN
            && !name.chars().any(char::is_control);
        match group::custom(&name) {
            Some(layer_group) => {
                prop_assert!(valid);
                prop_assert_eq!(&layer_group[1..], name.as_str());
                prop_assert!(group::is_custom(&layer_group));
                prop_assert!(!group::is_node(&layer_group));
            }
            None => prop_assert!(!valid),
        }
    }

    #[test]
    fn model_groups_stay_out_of_the_other_namespaces(
        stream in "[A-Za-z0-9_.]{1,50}",
        action in prop::sample::select(Action::ALL.to_vec()),
        pk in json(),
        pairs in prop::collection::vec(("[a-z_]{1,10}", json()), 0..4),
    ) {
        let pairs: Vec<(&str, &Json)> = pairs.iter().map(|(key, value)| (key.as_str(), value)).collect();
        let mut reversed = pairs.clone();
        reversed.reverse();
        let names = [
            group::coarse(&stream, action),
            group::instance(&stream, action, &pk),
            group::indexed(&stream, action, &pairs),
        ];
        for name in &names {
            prop_assert!(!group::is_custom(name), "{name}");
            prop_assert!(!group::is_node(name), "{name}");
            prop_assert!(name.starts_with(&format!("{stream}-{}", action.as_str())), "{name}");
        }
        prop_assert_eq!(&names[1], &group::instance(&stream, action, &pk), "names are stable");
        prop_assert_eq!(&names[2], &group::indexed(&stream, action, &reversed), "pair order does not matter");
    }

    #[test]
    fn node_groups_stay_in_their_namespace(node in any::<String>()) {
        for name in [group::node_requests(&node), group::node_replies(&node)] {
            prop_assert!(group::is_node(&name));
            prop_assert!(!group::is_custom(&name));
        }
    }

    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(change) = Change::decode(&bytes) {
            let event = Event::new(change, None);
            prop_assert!(serde_json::from_slice::<Json>(&event.frame).is_ok());
        }
    }

    #[test]
    fn json_shaped_messages_decode_or_fail_without_panicking(
        message in json(),
        fields in prop::collection::vec(prop::sample::select(vec!["", "id", "a", "stream", "payload"]), 0..4),
    ) {
        let bytes = serde_json::to_vec(&message).expect("JSON");
        if let Ok(change) = Change::decode(&bytes) {
            let event = Event::new(change, None);
            prop_assert!(serde_json::from_slice::<Json>(&event.projected(&fields)).is_ok());
        }
    }

    #[test]
    fn changes_round_trip(
        stream in any::<String>(),
        model in any::<String>(),
        action in prop::sample::select(Action::ALL.to_vec()),
        pk in json(),
        pk_field in any::<String>(),
        values in proptest::option::of(prop::collection::vec((any::<String>(), json()), 0..8)),
        nonce in any::<u64>(),
    ) {
        let values = values.map(Map::from_iter);
        let change = Change {
            version: Change::VERSION,
            stream: stream.into(),
            model: model.into(),
            action,
            pk,
            pk_field: pk_field.into(),
            values,
            nonce,
        };
        prop_assert_eq!(Change::decode(&change.encode()).expect("decodes"), change.clone());
        // The handed encoding is the derived one, and the frame spliced
        // from its values is the one rendered from them.
        let (message, values_at) = change.encode_handed();
        prop_assert_eq!(&message[..], &serde_json::to_vec(&change).expect("JSON")[..]);
        let spliced = Event::with_values_json(change.clone(), None, values_at.map_or(&[][..], |at| &message[at]));
        prop_assert_eq!(spliced.frame, Event::new(change, None).frame);
    }

    #[test]
    fn group_names_are_those_of_the_previous_builder(
        stream in "[A-Za-z0-9_.]{1,30}",
        action in prop::sample::select(Action::ALL.to_vec()),
        pk in json(),
        pairs in prop::collection::vec(("[a-z_]{1,4}", json()), 0..4),
    ) {
        let pairs: Vec<(&str, &Json)> = pairs.iter().map(|(key, value)| (key.as_str(), value)).collect();
        prop_assert_eq!(group::coarse(&stream, action), format!("{stream}-{}", action.as_str()));
        prop_assert_eq!(group::instance(&stream, action, &pk), previous::instance(&stream, action, &pk));
        prop_assert_eq!(group::indexed(&stream, action, &pairs), previous::indexed(&stream, action, &pairs));
    }
}

/// Group names as they were built before session 17 (`format!` and a
/// `String` per encoded value): the names a running deployment's other
/// processes use, which the one-buffer builder must match exactly. The
/// hashing of long names (`group::bounded`) did not change and is shared.
mod previous {
    use percent_encoding::utf8_percent_encode;
    use serde_json::Value as Json;

    use crate::change::group::{VALUE, bounded};
    use crate::model::Action;

    pub(super) fn instance(stream: &str, action: Action, pk: &Json) -> String {
        bounded(stream, action, format!("{stream}-{}-{}", action.as_str(), encode(pk)))
    }

    pub(super) fn indexed(stream: &str, action: Action, pairs: &[(&str, &Json)]) -> String {
        let mut pairs: Vec<_> = pairs.iter().map(|(key, value)| (*key, encode(value))).collect();
        pairs.sort_unstable();
        let suffix: Vec<String> = pairs.into_iter().map(|(key, value)| format!("{key}={value}")).collect();
        bounded(stream, action, format!("{stream}-{}:{}", action.as_str(), suffix.join("&")))
    }

    fn encode(value: &Json) -> String {
        match value {
            Json::String(text) => utf8_percent_encode(text, VALUE).to_string(),
            other => utf8_percent_encode(&other.to_string(), VALUE).to_string(),
        }
    }
}

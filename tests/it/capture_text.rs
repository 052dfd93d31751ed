//! Change capture (issue 17, first part): a row's values in PostgreSQL's
//! text form, as pgoutput sends them, read through each field's Rust type
//! into exactly what the model's `values()` (the hooks' payload) gives.
//! The text forms come from each type's output function (`concat(column)`)
//! on a real PostgreSQL, under the
//! session settings capture will use (`TimeZone=UTC`, `DateStyle=ISO`).

use sea_orm::{ConnectionTrait, EntityTrait, Schema, Statement, TransactionTrait};
use serde_json::json;

use crate::support::databases::on_postgres;
use graphex::{Action, ModelSubscription};
use serde_json::Value as Json;

mod sample {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, graphex::ModelSubscription)]
    #[sea_orm(table_name = "samples")]
    #[graphex(stream = "samples", serialize_data = true, index_fields(flag, renamed))]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: i64,
        pub small: i16,
        pub count: i32,
        pub ratio: f32,
        pub score: f64,
        pub flag: bool,
        pub name: String,
        pub note: Option<String>,
        pub at: DateTimeUtc,
        pub local: DateTime,
        pub day: Date,
        pub clock: Time,
        pub doc: Json,
        #[sea_orm(column_type = "JsonBinary")]
        pub docb: Json,
        pub raw: Vec<u8>,
        #[sea_orm(column_name = "renamed_col")]
        #[graphex(rename = "label")]
        pub renamed: i32,
        #[graphex(skip)]
        pub secret: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn rows() -> Vec<sample::Model> {
    use chrono::{NaiveDate, NaiveTime, TimeZone, Utc};
    let day = NaiveDate::from_ymd_opt(2026, 12, 3).unwrap();
    let clock = NaiveTime::from_hms_micro_opt(15, 4, 5, 123_456).unwrap();
    vec![
        sample::Model {
            id: 1,
            small: 7,
            count: 42,
            ratio: 0.1,
            score: 2.5,
            flag: true,
            name: "neo".into(),
            note: Some("it's \"quoted\", with a \\ and ünïcödé".into()),
            at: Utc.from_utc_datetime(&day.and_time(clock)),
            local: day.and_time(clock),
            day,
            clock,
            doc: json!({"b": [1, 2.5, null], "a": "x"}),
            docb: json!({"z": {"nested": true}, "a": 1}),
            raw: vec![0, 255, 16],
            renamed: -3,
            secret: "never sent".into(),
        },
        sample::Model {
            id: i64::MAX,
            small: i16::MIN,
            count: i32::MIN,
            ratio: -3.4e38,
            score: f64::NAN,
            flag: false,
            name: String::new(),
            note: None,
            at: Utc.timestamp_opt(0, 0).unwrap(),
            local: NaiveDate::from_ymd_opt(1999, 1, 1).unwrap().and_hms_opt(0, 0, 0).unwrap(),
            day: NaiveDate::from_ymd_opt(1, 1, 1).unwrap(),
            clock: NaiveTime::from_hms_opt(23, 59, 59).unwrap(),
            doc: json!([]),
            docb: json!("just a string"),
            raw: Vec::new(),
            renamed: 0,
            secret: String::new(),
        },
    ]
}

#[tokio::test]
async fn text_values_read_as_the_hooks_serialize_them() {
    on_postgres("captured text values (PostgreSQL only)", |db| async move {
        let builder = Schema::new(db.get_database_backend());
        db.execute(&builder.create_table_from_entity(sample::Entity)).await.expect("table created");
        for row in rows() {
            let active: sample::ActiveModel = row.into();
            sample::Entity::insert(active).exec_without_returning(&db).await.expect("row saved");
        }
        let saved = sample::Entity::find().all(&db).await.expect("rows read");
        let saved = |id: i64| saved.iter().find(|row| row.id == id).expect("saved row");

        let txn = db.begin().await.unwrap();
        txn.execute_unprepared("SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO'").await.unwrap();
        let columns: Vec<(String, u32)> = txn
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT attname::text AS name, atttypid::int8 AS oid FROM pg_attribute \
                 WHERE attrelid = 'samples'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            ))
            .await
            .unwrap()
            .iter()
            .map(|row| (row.try_get("", "name").unwrap(), row.try_get::<i64>("", "oid").unwrap() as u32))
            .collect();
        assert!(columns.iter().any(|(name, _)| name == "renamed_col"));
        // Each value through its type's output function, as pgoutput sends
        // it (`concat`; a `::text` cast writes booleans as `true`, not `t`).
        let select: Vec<String> = columns
            .iter()
            .map(|(name, _)| {
                format!("CASE WHEN \"{name}\" IS NULL THEN NULL ELSE concat(\"{name}\") END AS \"{name}\"")
            })
            .collect();
        let texts = txn
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                format!("SELECT {} FROM samples ORDER BY id", select.join(", ")),
            ))
            .await
            .unwrap();
        txn.commit().await.unwrap();

        assert_eq!(texts.len(), 2);
        for text in &texts {
            let id: i64 = text.try_get::<Option<String>>("", "id").unwrap().unwrap().parse().unwrap();
            let values: Vec<(String, u32, Option<String>)> = columns
                .iter()
                .map(|(name, oid)| (name.clone(), *oid, text.try_get::<Option<String>>("", name).unwrap()))
                .collect();
            let column = |name: &str| {
                values.iter().find(|(known, ..)| known == name).map(|(_, oid, text)| (*oid, text.as_deref()))
            };
            let captured = graphex::__internals::values_from_text::<sample::Model>("samples", column)
                .unwrap_or_else(|error| panic!("row {id}: {error}"));
            let row = saved(id);
            assert_eq!(captured, row.values(), "row {id}: captured = the hooks' payload");
            assert!(
                captured.keys().eq(row.values().keys()),
                "row {id}: in the same order (frames are rendered from it)"
            );
            assert!(!captured.contains_key("secret"), "skipped fields are not sent");
            // The change made from those values is the hooks' change: same
            // groups, same message (but for the nonce), same frame.
            for action in [Action::Create, Action::Update, Action::Delete] {
                let hooks = graphex::__internals::prepare(row, action);
                let captured = graphex::__internals::prepare_values::<sample::Model>(action, captured.clone());
                assert_eq!(captured.groups, hooks.groups);
                let decode = |bytes: &[u8]| {
                    let mut change: Json = serde_json::from_slice(bytes).unwrap();
                    change.as_object_mut().unwrap().remove("nonce");
                    serde_json::to_vec(&change).unwrap()
                };
                assert_eq!(decode(&captured.message), decode(&hooks.message), "row {id}, {action:?}");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_value_that_does_not_fit_names_table_column_and_value() {
    let column = |name: &str| match name {
        "count" => Some((23, Some("12.5"))),
        "id" => Some((20, Some("1"))),
        _ => Some((25, Some("x"))),
    };
    let error = graphex::__internals::values_from_text::<sample::Model>("samples", column).unwrap_err();
    assert_eq!((error.table.as_str(), error.column.as_str()), ("samples", "small"));
    let text = error.to_string();
    assert!(text.contains("`samples`") && text.contains("`small`") && text.contains("\"x\""), "{text}");
    let missing = graphex::__internals::values_from_text::<sample::Model>("samples", |_| None).unwrap_err();
    assert_eq!(missing.reason, "the column was not sent");
    let null = graphex::__internals::values_from_text::<sample::Model>("samples", |name| match name {
        "note" => Some((25, None)),
        _ => None,
    });
    assert_eq!(null.unwrap_err().column, "id", "fields are read in order; a NULL fits an Option");
}

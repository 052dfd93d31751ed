//! Filter lookups decided both ways graphex decides them: as a SeaORM
//! condition the database runs, and in memory on a row's values. Over the
//! user entity's integer, text, optional text, float, bool and timestamp
//! columns, on SQLite, (with `GRAPHEX_TEST_POSTGRES_URL`) PostgreSQL and
//! (with `GRAPHEX_TEST_MYSQL_URL`) MySQL / MariaDB under MariaDB's default
//! collation (case-insensitive, PAD SPACE), both must select exactly the
//! expected rows. Then the filters graphex must refuse.

use std::hash::{BuildHasher, Hasher};

use crate::support::POSTGRES_ENV;
use crate::support::databases::MysqlDatabase;
use crate::support::entities::user;
use graphex::__internals::Filter;
use graphex::{FilterError, FilterLimits, ModelSubscription};
use sea_orm::{
    ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryFilter,
    QueryOrder, Schema,
};
use serde_json::{Value as Json, json};

fn at(timestamp: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("test timestamp").to_utc()
}

/// The rows every lookup runs over.
fn rows() -> Vec<user::Model> {
    let row = |id, username: &str, email: Option<&str>, tenant: &str, score, active, joined| user::Model {
        id,
        username: username.to_owned(),
        email: email.map(str::to_owned),
        tenant: tenant.to_owned(),
        score,
        active,
        joined: at(joined),
        password_hash: format!("hash-{id}"),
    };
    vec![
        row(1, "Alice", Some("alice@example.com"), "acme", 9.5, true, "2024-01-01T00:00:00Z"),
        row(2, "bob", None, "acme", 3.0, false, "2024-03-15T12:00:00Z"),
        row(3, "ALICIA", Some("Alicia@Example.ORG"), "globex", -1.25, true, "2023-12-31T23:59:59Z"),
        row(4, "carol_50%", Some("carol@example.com"), "globex", 0.0, true, "2024-06-01T08:30:00.250Z"),
        row(5, "dave", None, "initech", 100.0, false, "2025-01-01T00:00:00Z"),
        row(6, "Émile", Some("emile@exemple.fr"), "initech", 3.5, true, "2024-03-15T12:00:00.001Z"),
        // Row 2 with a trailing space: equal to it under PAD SPACE collations.
        row(7, "bob ", None, "acme", 3.0, false, "2024-03-15T12:00:00Z"),
    ]
}

const ALL: &[i32] = &[1, 2, 3, 4, 5, 6, 7];
const NONE: &[i32] = &[];

/// Each filter with the ids it selects from [`rows`].
fn cases() -> Vec<(Json, &'static [i32])> {
    vec![
        // Integer.
        (json!({"id": 3}), &[3]),
        (json!({"id__exact": 3}), &[3]),
        (json!({"id__gt": 4}), &[5, 6, 7]),
        (json!({"id__gte": 4}), &[4, 5, 6, 7]),
        (json!({"id__lt": 2}), &[1]),
        (json!({"id__lte": 2}), &[1, 2]),
        (json!({"id__in": [2, 4, 99]}), &[2, 4]),
        (json!({"id__in": []}), NONE),
        (json!({"id__isnull": true}), NONE),
        (json!({"id__isnull": false}), ALL),
        // Text: exact is case-sensitive, the i-lookups ignore ASCII case.
        (json!({"username": "bob"}), &[2]),
        (json!({"username": "Bob"}), NONE),
        (json!({"username__iexact": "alice"}), &[1]),
        (json!({"username__iexact": "ÉMILE"}), &[6]),
        (json!({"username__iexact": "émile"}), NONE),
        (json!({"username__icontains": "ÉM"}), &[6]),
        (json!({"username__icontains": "éM"}), NONE),
        (json!({"username__contains": "li"}), &[1]),
        (json!({"username__contains": "LI"}), &[3]),
        (json!({"username__contains": "_"}), &[4]),
        (json!({"username__contains": "mil"}), &[6]),
        (json!({"username__icontains": "li"}), &[1, 3]),
        (json!({"username__icontains": "_50%"}), &[4]),
        (json!({"username__icontains": "%"}), &[4]),
        (json!({"username__startswith": "A"}), &[1, 3]),
        (json!({"username__startswith": "al"}), NONE),
        (json!({"username__startswith": "É"}), &[6]),
        (json!({"username__endswith": "e"}), &[1, 5, 6]),
        (json!({"username__endswith": "%"}), &[4]),
        (json!({"username__endswith": "E"}), NONE),
        // The empty string is a prefix, suffix and substring of every text.
        (json!({"username__startswith": ""}), ALL),
        (json!({"username__endswith": ""}), ALL),
        (json!({"username__contains": ""}), ALL),
        (json!({"username__icontains": ""}), ALL),
        // Text order is by code point, whatever the column's collation.
        (json!({"username__gt": "C"}), &[2, 4, 5, 6, 7]),
        (json!({"username__gte": "bob"}), &[2, 4, 5, 6, 7]),
        (json!({"username__lt": "B"}), &[1, 3]),
        (json!({"username__lte": "ALICIA"}), &[3]),
        (json!({"username__in": ["bob", "dave", "zed"]}), &[2, 5]),
        (json!({"username__isnull": false}), ALL),
        // Trailing spaces count (no PAD SPACE), and so does case.
        (json!({"username": "bob "}), &[7]),
        (json!({"username__in": ["bob"]}), &[2]),
        (json!({"username__in": ["BOB", "bob "]}), &[7]),
        (json!({"username__iexact": "BOB"}), &[2]),
        (json!({"username__iexact": "BOB "}), &[7]),
        (json!({"username__contains": "b "}), &[7]),
        (json!({"username__startswith": "bob "}), &[7]),
        (json!({"username__endswith": " "}), &[7]),
        (json!({"username__gt": "bob"}), &[4, 5, 6, 7]),
        (json!({"username__gte": "bob "}), &[4, 5, 6, 7]),
        (json!({"username__lt": "bob "}), &[1, 2, 3]),
        // Optional text.
        (json!({"email": null}), &[2, 5, 7]),
        (json!({"email": "alice@example.com"}), &[1]),
        (json!({"email__isnull": true}), &[2, 5, 7]),
        (json!({"email__isnull": false}), &[1, 3, 4, 6]),
        (json!({"email__iexact": "ALICIA@example.org"}), &[3]),
        (json!({"email__contains": "example"}), &[1, 4]),
        (json!({"email__icontains": "EXAMPLE"}), &[1, 3, 4]),
        (json!({"email__startswith": "carol"}), &[4]),
        (json!({"email__endswith": ".com"}), &[1, 4]),
        (json!({"email__gt": "b"}), &[4, 6]),
        (json!({"email__lte": "alice@example.com"}), &[1, 3]),
        (json!({"email__in": ["carol@example.com", "nobody@example.com"]}), &[4]),
        (json!({"email__in": ["carol@example.com", null]}), &[2, 4, 5, 7]),
        // Float.
        (json!({"score": 3}), &[2, 7]),
        (json!({"score": 3.0}), &[2, 7]),
        (json!({"score__gt": 3}), &[1, 5, 6]),
        (json!({"score__gte": 3}), &[1, 2, 5, 6, 7]),
        (json!({"score__lt": 0}), &[3]),
        (json!({"score__lte": 0}), &[3, 4]),
        (json!({"score__in": [0, 9.5]}), &[1, 4]),
        (json!({"score__isnull": true}), NONE),
        // Bool.
        (json!({"active": true}), &[1, 3, 4, 6]),
        (json!({"active": false}), &[2, 5, 7]),
        (json!({"active__in": [false]}), &[2, 5, 7]),
        (json!({"active__gt": false}), &[1, 3, 4, 6]),
        (json!({"active__isnull": false}), ALL),
        // Timestamps compare as instants, whatever offset the client wrote.
        (json!({"joined": "2024-01-01T00:00:00Z"}), &[1]),
        (json!({"joined": "2024-01-01T01:00:00+01:00"}), &[1]),
        (json!({"joined__gt": "2024-03-15T12:00:00Z"}), &[4, 5, 6]),
        (json!({"joined__gte": "2024-03-15T14:00:00+02:00"}), &[2, 4, 5, 6, 7]),
        (json!({"joined__lt": "2024-01-01T00:00:00Z"}), &[3]),
        (json!({"joined__lte": "2024-01-01T00:00:00Z"}), &[1, 3]),
        (json!({"joined__in": ["2024-06-01T08:30:00.250Z", "2025-01-01T00:00:00Z"]}), &[4, 5]),
        (json!({"joined__in": ["2025-01-01T00:00:00Z"]}), &[5]),
        (json!({"joined__in": ["2025-01-01T00:00:00Z", "2024-06-01T08:30:00.250Z"]}), &[4, 5]),
        (json!({"joined__in": ["2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]}), &[1, 5]),
        (json!({"joined__in": ["2024-03-15T12:00:00.001Z", "2024-01-01T00:00:00Z"]}), &[1, 6]),
        (json!({"joined__isnull": false}), ALL),
        // Several clauses are ANDed.
        (json!({"tenant": "acme", "active": true}), &[1]),
        (json!({"tenant__in": ["globex", "initech"], "score__gte": 0}), &[4, 5, 6]),
        (json!({}), ALL),
    ]
}

/// Inserts [`rows`] and decides every case in SQL and in memory; returns
/// what went wrong, one line per mistake.
async fn check_lookups(db: &DatabaseConnection) -> Vec<String> {
    let inserted = rows();
    let active_models = inserted.iter().map(|row| user::ActiveModel {
        id: Set(row.id),
        username: Set(row.username.clone()),
        email: Set(row.email.clone()),
        tenant: Set(row.tenant.clone()),
        score: Set(row.score),
        active: Set(row.active),
        joined: Set(row.joined),
        password_hash: Set(row.password_hash.clone()),
    });
    // insert_many runs no hooks: nothing is announced.
    user::Entity::insert_many(active_models).exec(db).await.expect("rows inserted");
    let stored = user::Entity::find().order_by_asc(user::Column::Id).all(db).await.expect("rows read");
    assert_eq!(stored, inserted, "rows round-trip through the database");

    let backend = db.get_database_backend();
    let mut failures = Vec::new();
    for (filters, expected) in cases() {
        let filter = match Filter::parse::<user::Model>(&filters, &FilterLimits::default()) {
            Ok(filter) => filter,
            Err(error) => {
                failures.push(format!("{filters}: refused: {error}"));
                continue;
            }
        };
        let condition = filter.condition::<user::Model>(backend);
        let in_sql: Vec<i32> = match user::Entity::find().filter(condition).order_by_asc(user::Column::Id).all(db).await
        {
            Ok(found) => found.iter().map(|row| row.id).collect(),
            Err(error) => {
                failures.push(format!("{filters}: query failed: {error}"));
                continue;
            }
        };
        let mut in_memory = Vec::new();
        for row in &stored {
            match filter.matches(&row.values()) {
                Some(true) => in_memory.push(row.id),
                Some(false) => {}
                None => failures.push(format!("{filters}: undecided in memory on row {}", row.id)),
            }
        }
        if in_sql != expected || in_memory != expected {
            failures.push(format!("{filters}: expected {expected:?}, SQL selected {in_sql:?}, memory {in_memory:?}"));
        }
    }
    failures
}

async fn create_users_table(db: &DatabaseConnection) {
    let schema = Schema::new(db.get_database_backend());
    db.execute(&schema.create_table_from_entity(user::Entity)).await.expect("users table created");
}

#[tokio::test]
async fn lookups_agree_in_sql_and_in_memory_on_sqlite() {
    let mut options = ConnectOptions::new("sqlite::memory:");
    // One connection: each pooled connection would open its own empty database.
    options.max_connections(1);
    let db = Database::connect(options).await.expect("sqlite in memory");
    create_users_table(&db).await;
    let failures = check_lookups(&db).await;
    assert!(failures.is_empty(), "on SQLite:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn lookups_agree_in_sql_and_in_memory_on_postgres() {
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        println!("skipped: PostgreSQL condition tests (set {POSTGRES_ENV})");
        return;
    };
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let schema = format!("graphex_conditions_{}_{random:016x}", std::process::id());
    let admin = Database::connect(&url).await.expect("PostgreSQL reachable");
    admin.execute_unprepared(&format!("CREATE SCHEMA \"{schema}\"")).await.expect("schema created");

    let mut options = ConnectOptions::new(&url);
    options.set_schema_search_path(&schema);
    let db = Database::connect(options).await.expect("PostgreSQL reachable");
    create_users_table(&db).await;
    // Most production databases sort text linguistically (en_US.UTF-8 and the
    // like), not by code point; use such a collation where the server has ICU.
    let collation = "ALTER TABLE users ALTER COLUMN username TYPE varchar COLLATE \"en-x-icu\", \
                     ALTER COLUMN email TYPE varchar COLLATE \"en-x-icu\"";
    if let Err(error) = db.execute_unprepared(collation).await {
        println!("note: text columns keep the default collation ({error})");
    }
    let failures = check_lookups(&db).await;

    let _ = db.close().await;
    if let Err(error) = admin.execute_unprepared(&format!("DROP SCHEMA \"{schema}\" CASCADE")).await {
        eprintln!("could not drop schema {schema}: {error}");
    }
    let _ = admin.close().await;
    assert!(failures.is_empty(), "on PostgreSQL:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn lookups_agree_in_sql_and_in_memory_on_mysql() {
    let Some(database) = MysqlDatabase::create("MySQL condition tests").await else { return };
    let db = Database::connect(&database.url).await.expect("MySQL reachable");
    create_users_table(&db).await;
    // SeaORM creates a `timestamp` column, which keeps whole seconds; the
    // rows have milliseconds (what a user's DATETIME(6) / TIMESTAMP(6) keeps).
    db.execute_unprepared("ALTER TABLE users MODIFY joined TIMESTAMP(6) NOT NULL").await.expect("precision set");
    let failures = check_lookups(&db).await;
    let _ = db.close().await;
    database.drop().await;
    assert!(failures.is_empty(), "on MySQL:\n{}", failures.join("\n"));
}

fn refusal(filters: Json) -> FilterError {
    refusal_within(filters, &FilterLimits::default())
}

fn refusal_within(filters: Json, limits: &FilterLimits) -> FilterError {
    match Filter::parse::<user::Model>(&filters, limits) {
        Ok(filter) => panic!("{filters} was accepted: {:?}", filter.clauses()),
        Err(error) => error,
    }
}

#[test]
fn unknown_fields_and_lookups_are_refused() {
    assert_eq!(refusal(json!([{"id": 1}])), FilterError::NotAnObject);
    let FilterError::UnknownField { field, available } = refusal(json!({"nope": 1})) else { panic!() };
    assert_eq!(field, "nope");
    assert_eq!(available, "id, username, email, tenant, score, active, joined");
    // A skipped field is not a field of the subscription at all.
    assert!(matches!(
        refusal(json!({"password_hash": "x"})),
        FilterError::UnknownField { field, .. } if field == "password_hash"
    ));
    assert!(matches!(
        refusal(json!({"password_hash__isnull": true})),
        FilterError::UnknownField { field, .. } if field == "password_hash"
    ));
    assert_eq!(
        refusal(json!({"username__regex": "^a"})),
        FilterError::UnknownLookup { field: "username".into(), lookup: "regex".into() }
    );
    assert!(matches!(refusal(json!({"username__": "a"})), FilterError::UnknownLookup { .. }));
}

#[test]
fn values_of_the_wrong_type_are_refused() {
    for filters in [
        json!({"id": "1"}),
        json!({"id__gt": "one"}),
        json!({"id": 1.5}),
        json!({"id__in": [1, "2"]}),
        json!({"score": "high"}),
        json!({"active": "true"}),
        json!({"active": 1}),
        json!({"joined__gt": "yesterday"}),
        json!({"username": 5}),
        json!({"username__contains": 5}),
        json!({"score__contains": "1"}),
        json!({"id__contains": 1}),
        json!({"active__icontains": "t"}),
        json!({"joined__startswith": "2024"}),
        json!({"username__in": "bob"}),
        json!({"id__in": 1}),
        json!({"email__isnull": "yes"}),
        json!({"email__isnull": 1}),
        json!({"username__isnull": null}),
    ] {
        let error = refusal(filters.clone());
        let key = filters.as_object().unwrap().keys().next().unwrap().clone();
        assert!(
            matches!(&error, FilterError::InvalidValue { key: refused, .. } if *refused == key),
            "{filters}: {error:?}"
        );
    }
    assert_eq!(refusal(json!({"id__in": 1})).to_string(), "invalid value for `id__in`: in takes a list");
    assert_eq!(
        refusal(json!({"score__contains": "1"})).to_string(),
        "invalid value for `score__contains`: contains applies to text fields only"
    );
}

#[test]
fn oversized_filters_are_refused() {
    let limits = FilterLimits::default();
    let clauses = [
        ("id__gte", json!(1)),
        ("id__lte", json!(100)),
        ("id__in", json!([1, 2])),
        ("id__isnull", json!(false)),
        ("username__iexact", json!("alice")),
        ("username__contains", json!("li")),
        ("username__icontains", json!("LI")),
        ("username__startswith", json!("A")),
        ("username__endswith", json!("e")),
        ("email__isnull", json!(false)),
        ("tenant", json!("acme")),
        ("score__gt", json!(0)),
        ("score__lt", json!(10)),
        ("active", json!(true)),
        ("joined__gt", json!("2020-01-01T00:00:00Z")),
        ("joined__lt", json!("2030-01-01T00:00:00Z")),
        ("id__gt", json!(0)),
    ];
    assert_eq!(clauses.len(), limits.max_clauses + 1);
    let most: serde_json::Map<String, Json> =
        clauses[..limits.max_clauses].iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect();
    assert!(Filter::parse::<user::Model>(&Json::Object(most), &limits).is_ok());
    let too_many: serde_json::Map<String, Json> =
        clauses.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect();
    assert!(matches!(refusal(Json::Object(too_many)), FilterError::TooLarge(_)));

    let ids: Vec<i32> = (0..=limits.max_in_values as i32).collect();
    assert!(matches!(refusal(json!({"id__in": ids})), FilterError::TooLarge(_)));
    let exactly: Vec<i32> = (0..limits.max_in_values as i32).collect();
    assert!(Filter::parse::<user::Model>(&json!({"id__in": exactly}), &limits).is_ok());

    let long = "x".repeat(limits.max_text_len + 1);
    for key in ["username", "username__contains", "username__iexact", "username__in"] {
        let value = if key.ends_with("__in") { json!([long]) } else { json!(long) };
        assert!(matches!(refusal(json!({key: value})), FilterError::TooLarge(_)), "{key}");
    }
    let fits = "x".repeat(limits.max_text_len);
    assert!(Filter::parse::<user::Model>(&json!({"username__contains": fits}), &limits).is_ok());

    let tight = FilterLimits::default().with_max_clauses(1).with_max_in_values(2).with_max_text_len(3);
    assert!(matches!(refusal_within(json!({"id": 1, "active": true}), &tight), FilterError::TooLarge(_)));
    assert!(matches!(refusal_within(json!({"id__in": [1, 2, 3]}), &tight), FilterError::TooLarge(_)));
    assert!(matches!(refusal_within(json!({"tenant__startswith": "acme"}), &tight), FilterError::TooLarge(_)));
}

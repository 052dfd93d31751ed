//! What the derive generates: GraphQL pieces and the runtime binding.

use crate::support::entities::{comment, tag, user};
use async_graphql::{EmptyMutation, MergedSubscription, Object, Schema};
use graphex::ModelSubscription;
use serde_json::json;

struct Query;

#[Object]
impl Query {
    async fn ping(&self) -> bool {
        true
    }
}

#[derive(MergedSubscription, Default)]
struct Subscription(user::UserSubscriptionRoot, comment::CommentSubscriptionRoot, tag::LabelSubscriptionRoot);

/// The schema's SDL without descriptions, whitespace collapsed to single spaces.
fn sdl() -> String {
    crate::support::compact_sdl(&Schema::build(Query, EmptyMutation, Subscription::default()).finish().sdl())
}

#[test]
fn schema_has_the_reference_enums_and_types() {
    let sdl = sdl();
    assert!(sdl.contains("enum ActionSubscriptionEnum { CREATE UPDATE DELETE ALL_ACTIONS }"), "{sdl}");
    assert!(sdl.contains("enum OperationSubscriptionEnum { SUBSCRIBE UNSUBSCRIBE }"), "{sdl}");
    assert!(sdl.contains("enum UserFields { ID USERNAME EMAIL TENANT SCORE ACTIVE JOINED }"), "{sdl}");
    assert!(!sdl.contains("PASSWORD_HASH"), "skipped fields stay out of the Fields enum");
    assert!(sdl.contains("enum LabelFields { SLUG TITLE CREATED }"), "{sdl}");
    assert!(!sdl.contains("CommentFields"), "no Fields enum in id-only mode");
    for confirmation in ["UserSubscription", "CommentSubscription", "LabelSubscription"] {
        let expected = format!(
            "type {confirmation} {{ ok: Boolean! error: String stream: String! operation: OperationSubscriptionEnum! action: ActionSubscriptionEnum! }}"
        );
        assert!(sdl.contains(&expected), "missing {confirmation} in {sdl}");
    }
}

/// `name(arguments): Type` of a field.
fn field_line<'a>(sdl: &'a str, field: &str) -> &'a str {
    let start = sdl.find(&format!(" {field}(")).unwrap_or_else(|| panic!("no field {field} in {sdl}"));
    let close = start + sdl[start..].find(")").unwrap();
    let end = close + sdl[close..].find('!').unwrap() + 1;
    &sdl[start + 1..end]
}

#[test]
fn subscription_fields_have_the_reference_arguments() {
    let sdl = sdl();
    let user = field_line(&sdl, "userSubscription");
    for argument in [
        "channelId: String!",
        "action: ActionSubscriptionEnum!",
        "operation: OperationSubscriptionEnum!",
        "id: ID",
        "filters: JSON",
        "data: [UserFields!]",
    ] {
        assert!(user.contains(argument), "{argument} missing from {user}");
    }
    assert!(user.ends_with("): UserSubscription!"), "{user}");
    let comment = field_line(&sdl, "commentSubscription");
    assert!(comment.contains("filters: JSON"), "{comment}");
    assert!(!comment.contains("data:"), "no data argument in id-only mode: {comment}");
    assert!(field_line(&sdl, "labelSubscription").contains("data: [LabelFields!]"));
}

fn sample_user() -> user::Model {
    user::Model {
        id: 7,
        username: "neo".into(),
        email: None,
        tenant: "acme".into(),
        score: 2.5,
        active: true,
        joined: chrono::DateTime::parse_from_rfc3339("2024-05-01T12:30:00Z").unwrap().to_utc(),
        password_hash: "secret".into(),
    }
}

#[test]
fn binding_reads_rows() {
    assert_eq!(user::Model::STREAM, "users");
    assert_eq!(user::Model::LABEL, "user");
    const { assert!(user::Model::FULL_PAYLOAD) };
    const { assert!(!comment::Model::FULL_PAYLOAD) };
    assert_eq!(user::Model::INDEX_FIELDS, &["tenant"]);
    let row = sample_user();
    assert_eq!(row.primary_key(), json!(7));
    assert_eq!(
        serde_json::Value::Object(row.values()),
        json!({
            "id": 7, "username": "neo", "email": null, "tenant": "acme",
            "score": 2.5, "active": true, "joined": "2024-05-01T12:30:00Z"
        })
    );
    assert_eq!(row.index_values(), vec![("tenant", json!("acme"))]);

    let tag = tag::Model { slug: "rust".into(), name: "Rust".into(), created: None };
    assert_eq!(tag.primary_key(), json!("rust"));
    assert_eq!(serde_json::Value::Object(tag.values()), json!({"slug": "rust", "title": "Rust", "created": null}));
    assert_eq!(tag::Model::FIELDS[tag::Model::PRIMARY_KEY].name, "slug");
}

use super::*;

const SDL: &str = r#"
enum Action { CREATE UPDATE }
input Where { action: Action, actions: [Action!], name: String }
type Note { id: Int! title: String! }
type Query { notes(action: Action, where: Where, tags: [String!]): [Note!]! ok: Boolean! }
type Mutation { touch(action: Action!): Boolean! }
type Subscription { noteChanges(action: Action, name: String): Note! other: Int! }
schema { query: Query mutation: Mutation subscription: Subscription }
"#;

fn guard(limits: RequestLimits) -> Guard {
    Guard::new(limits, SDL)
}

fn check(limits: RequestLimits, query: &str) -> Result<Option<OperationType>, String> {
    let mut request = Request::new(query);
    guard(limits).check(&mut request).map_err(|error| {
        let code = error.extensions.as_ref().and_then(|e| e.get("code")).cloned();
        format!("{} [{}]", error.message, code.map(|c| c.to_string()).unwrap_or_default())
    })
}

#[test]
fn ordinary_requests_pass_and_stay_parsed() {
    let mut request =
        Request::new("query { notes(action: CREATE, where: {action: UPDATE, name: \"x\"}) { id title } }");
    let guard = guard(RequestLimits::default());
    assert_eq!(guard.check(&mut request).unwrap(), Some(OperationType::Query));
    assert!(request.parsed_query().is_ok());
    assert_eq!(
        check(RequestLimits::default(), "subscription { noteChanges { id } }").unwrap(),
        Some(OperationType::Subscription)
    );
    assert_eq!(
        check(RequestLimits::default(), "mutation { touch(action: CREATE) }").unwrap(),
        Some(OperationType::Mutation)
    );
}

#[test]
fn a_request_that_does_not_parse_is_left_to_async_graphql() {
    assert_eq!(check(RequestLimits::default(), "query {").unwrap(), None);
    assert_eq!(check(RequestLimits::default(), "query A { ok } query B { ok }").unwrap(), None, "no operation name");
    let named = "subscription S { noteChanges { id } }";
    assert_eq!(check(RequestLimits::default(), named).unwrap(), Some(OperationType::Subscription), "the only one");
}

#[test]
fn query_length() {
    let query = format!("query {{ ok }} # {}", "x".repeat(100));
    let error = check(RequestLimits::default().with_max_query_bytes(50), &query).unwrap_err();
    assert!(error.contains("above the limit of 50") && error.contains("LIMIT_REACHED"), "{error}");
}

#[test]
fn bracket_nesting_is_refused_before_parsing() {
    let deep = format!("query {{ notes(where: {}{}) {{ id }} }}", "{name: ".repeat(1_000), "}".repeat(1_000));
    let error = check(RequestLimits::default(), &deep).unwrap_err();
    assert!(error.contains("nests deeper"), "{error}");
    // Brackets inside strings and comments do not count.
    let quoted = format!("query {{ notes(where: {{name: \"{}\"}}) {{ id }} }} # {}", "{".repeat(500), "(".repeat(500));
    check(RequestLimits::default(), &quoted).unwrap();
    let block = format!("query {{ notes(where: {{name: \"\"\"{}\"\"\"}}) {{ id }} }}", "[".repeat(500));
    check(RequestLimits::default(), &block).unwrap();
}

#[test]
fn selection_depth() {
    let limits = RequestLimits::default().with_max_depth(3);
    check(limits.clone(), "{ a { b { c } } }").unwrap();
    let error = check(limits, "{ a { b { c { d } } } }").unwrap_err();
    assert!(error.contains("deeper than 3"), "{error}");
}

#[test]
fn fields_are_counted_through_fragments_and_the_walk_stops_at_the_bound() {
    let limits = RequestLimits::default().with_max_fields(10);
    check(limits.clone(), "{ notes { id title } ok }").unwrap();
    // Each level doubles: 2^30 fields if expanded, refused after 10.
    let mut bomb = String::from("query { notes { ...F0 } } fragment F30 on Note { id }");
    for level in 0..30 {
        bomb.push_str(&format!(" fragment F{level} on Note {{ ...F{next} ...F{next} }}", next = level + 1));
    }
    let error = check(limits, &bomb).unwrap_err();
    assert!(error.contains("more than 10 fields"), "{error}");
    // A fragment's fields count once per spread, not once more for its definition.
    let spread_once = "query { notes { ...F } } fragment F on Note { id title }";
    check(RequestLimits::default().with_max_fields(3), spread_once).unwrap();
    // A fragment cycle is not followed (async-graphql refuses it).
    check(
        RequestLimits::default(),
        "query { notes { ...A } } fragment A on Note { id ...B } fragment B on Note { ...A }",
    )
    .unwrap();
}

#[test]
fn aliases() {
    let query = format!("query {{ {} }}", (0..65).map(|i| format!("a{i}: ok")).collect::<Vec<_>>().join(" "));
    let error = check(RequestLimits::default(), &query).unwrap_err();
    assert!(error.contains("more than 64 aliases"), "{error}");
    let typenames =
        format!("query {{ {} }}", (0..2_000).map(|i| format!("t{i}: __typename")).collect::<Vec<_>>().join(" "));
    assert!(check(RequestLimits::default(), &typenames).is_err());
}

#[test]
fn a_subscription_selects_exactly_one_root_field() {
    let error =
        check(RequestLimits::default(), "subscription { a: noteChanges { id } b: noteChanges { id } }").unwrap_err();
    assert!(
        error.contains("exactly one root field, this one selects 2") && error.contains("GRAPHQL_VALIDATION_FAILED"),
        "{error}"
    );
    let error = check(
        RequestLimits::default(),
        "subscription { ...R } fragment R on Subscription { noteChanges { id } other }",
    )
    .unwrap_err();
    assert!(error.contains("selects 2"), "{error}");
    check(RequestLimits::default(), "subscription { ... on Subscription { noteChanges { id } } }").unwrap();
    // Queries may select several root fields.
    check(RequestLimits::default(), "query { ok notes { id } }").unwrap();
}

#[test]
fn enum_arguments_written_as_strings_are_refused() {
    for query in [
        r#"query { notes(action: "CREATE") { id } }"#,
        r#"query { notes(where: {action: "CREATE"}) { id } }"#,
        r#"query { notes(where: {actions: [CREATE, "UPDATE"]}) { id } }"#,
        r#"mutation { touch(action: "CREATE") }"#,
        r#"subscription { noteChanges(action: "CREATE") { id } }"#,
        r#"query ($a: Action = "CREATE") { notes(action: $a) { id } }"#,
        r#"query { ...Q } fragment Q on Query { notes(action: "CREATE") { id } }"#,
    ] {
        let error = check(RequestLimits::default(), query).unwrap_err();
        assert!(
            error.contains("enum type `Action`") && error.contains("GRAPHQL_VALIDATION_FAILED"),
            "{query}: {error}"
        );
    }
    // Strings where strings are due, enum values, and variables pass.
    for query in [
        r#"query { notes(action: CREATE, where: {name: "CREATE"}, tags: ["CREATE"]) { id } }"#,
        r#"query ($a: Action) { notes(action: $a) { id } }"#,
        r#"subscription { noteChanges(name: "CREATE") { id } }"#,
        r#"query { unknown(action: "CREATE") }"#,
    ] {
        check(RequestLimits::default(), query).unwrap();
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Any query text is checked without a panic: passed, or refused with a code.
    #[test]
    fn any_query_text_is_checked(query in "[{}()\\[\\]a-z:\"#.\\n $!@=,0-9]{0,400}") {
        let guard = guard(RequestLimits::default().with_max_depth(4).with_max_fields(20));
        let mut request = Request::new(query);
        if let Err(error) = guard.check(&mut request) {
            let code = error.extensions.as_ref().and_then(|e| e.get("code")).cloned();
            proptest::prop_assert!(code.is_some(), "{}", error.message);
        }
    }

    /// Nesting is counted the same however brackets mix with strings and comments.
    #[test]
    fn nesting_never_exceeds_the_bracket_count(query in "[{(\\[\"#\\n a]{0,200}") {
        let brackets = query.bytes().filter(|byte| matches!(byte, b'{' | b'(' | b'[')).count();
        proptest::prop_assert!(nesting(&query) <= brackets);
    }
}

#[test]
fn documents_that_passed_are_kept_and_reused_by_their_text() {
    let guard = guard(RequestLimits::default());
    let text = "query A { ok } mutation B { touch(action: CREATE) }";
    let mut first = Request::new(text).operation_name("A");
    assert_eq!(guard.check(&mut first).unwrap(), Some(OperationType::Query));
    assert_eq!(guard.kept_count(), 1);
    // The kept document: the operation is still chosen per request.
    let mut second = Request::new(text).operation_name("B");
    assert_eq!(guard.check(&mut second).unwrap(), Some(OperationType::Mutation));
    assert_eq!(guard.kept_count(), 1, "one document for one text");
    assert_eq!(
        format!("{:?}", second.parsed_query().unwrap()),
        format!("{:?}", first.parsed_query().unwrap()),
        "the request runs the kept document"
    );
}

#[test]
fn refused_long_and_excess_documents_are_not_kept() {
    let strict = RequestLimits { max_aliases: 0, ..RequestLimits::default() };
    let guard = guard(strict);
    for _ in 0..2 {
        let refused = guard.check(&mut Request::new("query { a: ok }")).expect_err("aliases refused");
        assert!(refused.message.contains("alias"), "{}", refused.message);
    }
    assert_eq!(guard.kept_count(), 0, "a refused document is never kept");
    let long = format!("query {{ ok }}{}", " ".repeat(CACHED_QUERY_BYTES));
    guard.check(&mut Request::new(long)).expect("passes");
    assert_eq!(guard.kept_count(), 0, "longer than CACHED_QUERY_BYTES");
    for n in 0..DOCUMENTS + 10 {
        guard.check(&mut Request::new(format!("query Q{n} {{ ok }}"))).expect("passes");
    }
    assert_eq!(guard.kept_count(), DOCUMENTS, "at most DOCUMENTS, the least recently used go");
}

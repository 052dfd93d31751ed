//! Hostile input (issue 15): each is refused or bounded with a clear error
//! or close code, while a well-behaved client on the same server keeps
//! receiving its notifications. The reference app, SQLite in memory.

use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Value as Json, json};
use tokio_tungstenite::tungstenite::Message;

use crate::app;
use crate::support::http::post_raw;
use crate::support::reference::{Server, USERS_CREATE, user_frame};
use crate::support::standard::{Client, Frame, Proto};
use crate::support::two_channel::Ws;
use graphex::Hub;

/// The reference app with one legitimate two-channel subscriber to user creations.
async fn server_with_bystander() -> (Server, Ws) {
    let server = Server::start(app::connect("sqlite::memory:", None).await, Hub::default()).await;
    let bystander = server.ws().await;
    bystander.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
    (server, bystander)
}

/// A user created now reaches the bystander, and is the next frame it gets.
async fn bystander_still_served(server: &Server, bystander: &mut Ws, name: &str) {
    let row = server.create_user(name, &format!("{name}@example.com"), "t").await;
    bystander.expect_in("the bystander's notification", &user_frame("create", &row)).await;
}

fn error_code(response: &Json) -> &str {
    response["errors"][0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {response}"))
}

#[tokio::test]
async fn http_bodies_are_bounded_and_need_a_graphql_media_type() {
    let (server, mut bystander) = server_with_bystander().await;
    let mutation =
        r#"{"query": "mutation { createUser(username: \"csrf\", email: \"c@example.com\", tenant: \"t\") { id } }"}"#;

    // A body over 1 MiB, announced or streamed, is refused before parsing.
    let big = Bytes::from(format!(r#"{{"query": "{{ __typename }}", "pad": "{}"}}"#, "x".repeat(2 << 20)));
    for chunked in [false, true] {
        let response = post_raw(server.addr, "/graphql", Some("application/json"), big.clone(), chunked).await;
        assert_eq!(response.status.as_u16(), 413, "chunked {chunked}: {}", response.text());
        assert!(response.text().contains("larger than 1048576 bytes"), "{}", response.text());
    }
    // Media types a cross-site form can send without a preflight, or none.
    for content_type in
        [Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("multipart/form-data; boundary=x"), None]
    {
        let response = post_raw(server.addr, "/graphql", content_type, Bytes::from(mutation), false).await;
        assert_eq!(response.status.as_u16(), 415, "{content_type:?}: {}", response.text());
        assert!(
            response.text().contains("a GraphQL POST is application/json or application/graphql"),
            "{}",
            response.text()
        );
    }
    // JSON with parameters, and the query as an application/graphql body, run.
    let response = post_raw(
        server.addr,
        "/graphql",
        Some("application/json; charset=utf-8"),
        Bytes::from(r#"{"query": "{ __typename }"}"#),
        false,
    )
    .await;
    assert_eq!(response.status.as_u16(), 200, "{}", response.text());
    let response =
        post_raw(server.addr, "/graphql", Some("application/graphql"), Bytes::from("{ __typename }"), false).await;
    assert_eq!(serde_json::from_slice::<Json>(&response.body).unwrap(), json!({"data": {"__typename": "Query"}}));
    // Nothing the refused mutations asked for happened: the next creation
    // is the bystander's next frame.
    bystander_still_served(&server, &mut bystander, "after-bodies").await;
}

#[tokio::test]
async fn query_cost_is_refused_on_every_entry_point() {
    let (server, mut bystander) = server_with_bystander().await;
    let aliased = format!(
        "subscription {{ {} }}",
        (0..20_000).map(|i| format!("a{i}: userChanges(action: CREATE) {{ id }}")).collect::<Vec<_>>().join(" ")
    );
    let two_roots = "subscription { a: userChanges(action: CREATE) { id } b: userChanges(action: DELETE) { id } }";
    let enum_string = r#"subscription { userChanges(action: "CREATE") { id } }"#;
    let typenames =
        format!("query {{ {} }}", (0..1_500).map(|i| format!("t{i}:__typename")).collect::<Vec<_>>().join(" "));
    // Fragments that double at each level: 2^20 fields once expanded.
    let mut bomb = String::from("query { ...F0 } fragment F20 on Query { __typename }");
    for level in 0..20 {
        bomb.push_str(&format!(" fragment F{level} on Query {{ ...F{next} ...F{next} }}", next = level + 1));
    }
    let deep =
        format!("query {{ {}__typename{} }}", "__schema { types { fields { type { ".repeat(10), " } } } }".repeat(10));

    // Over HTTP (JSON).
    for (query, code, text) in [
        (aliased.as_str(), "LIMIT_REACHED", "bytes, above the limit of 32768"),
        (two_roots, "GRAPHQL_VALIDATION_FAILED", "exactly one root field, this one selects 2"),
        (enum_string, "GRAPHQL_VALIDATION_FAILED", "of enum type `ActionSubscriptionEnum`"),
        (typenames.as_str(), "LIMIT_REACHED", "more than 64 aliases"),
        (bomb.as_str(), "LIMIT_REACHED", "more than 1000 fields"),
        (deep.as_str(), "LIMIT_REACHED", "deeper than 32"),
    ] {
        let response = server.graphql(None, query, json!({})).await;
        assert_eq!(error_code(&response), code, "{response}");
        assert!(response["errors"][0]["message"].as_str().unwrap().contains(text), "{response}");
    }
    // Over SSE: the refusal is the stream's only event.
    let mut sse = crate::support::http::Streamed::post(server.addr, "text/event-stream", two_roots).await;
    sse.read_until("event: complete").await;
    assert!(sse.text().contains("GRAPHQL_VALIDATION_FAILED"), "{}", sse.text());
    // Over both WebSocket protocols: an error for the operation, the connection stays.
    for proto in [Proto::Transport, Proto::Legacy] {
        let mut client = Client::connected(server.addr, proto, json!({})).await;
        // Refused before execution, as any invalid operation: an `error`
        // message (graphql-transport-ws), or `data` with errors and
        // `complete` (graphql-ws).
        let refusal = async |client: &mut Client, id: &str| match client.proto {
            Proto::Transport => client.expect_type("error").await,
            Proto::Legacy => client.expect_failure(id).await,
        };
        client.start("1", two_roots).await;
        let failure = refusal(&mut client, "1").await;
        assert!(failure.to_string().contains("exactly one root field"), "{proto:?}: {failure}");
        client.start("2", enum_string).await;
        let failure = refusal(&mut client, "2").await;
        assert!(failure.to_string().contains("of enum type `ActionSubscriptionEnum`"), "{proto:?}: {failure}");
        let (data, errors) = client.execute("3", "{ __typename }").await;
        assert_eq!((data, errors.len()), (json!({"__typename": "Query"}), 0), "{proto:?}");
        client.close().await;
    }
    server.wait_for("no channel but the bystander's", |hub| hub.channel_count() == 1).await;
    bystander_still_served(&server, &mut bystander, "after-cost").await;
}

#[tokio::test]
async fn operation_ids_and_websocket_messages_are_bounded() {
    let (server, mut bystander) = server_with_bystander().await;
    // graphql-transport-ws: an overlong id is an invalid message (4400).
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start(&"i".repeat(129), "subscription { userChanges(action: CREATE) { id } }").await;
    let reason = client.expect_close(4400).await;
    assert!(reason.contains("operation id longer than 128 bytes"), "{reason}");
    // graphql-ws: an error message, the connection stays.
    let mut legacy = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    legacy.start(&"i".repeat(129), "subscription { userChanges(action: CREATE) { id } }").await;
    let error = legacy.expect_type("error").await;
    assert!(error.to_string().contains("operation id longer than 128 bytes"), "{error}");
    let (data, _) = legacy.execute("ok", "{ __typename }").await;
    assert_eq!(data, json!({"__typename": "Query"}));
    // A message over 256 KiB ends the connection (1009, message too big).
    legacy
        .send_text(&format!(r#"{{"type": "start", "id": "big", "payload": {{"query": "{}"}}}}"#, " ".repeat(300 << 10)))
        .await;
    match legacy.frame().await {
        Frame::Close(code, _) => assert_eq!(code, 1009),
        Frame::Gone => {}
        other => panic!("expected the connection to end, got {other:?}"),
    }
    // The two-channel socket reads no data: 2 KiB of text ends it.
    let attacker = server.ws().await;
    let attacker_channel = attacker.channel_id.clone();
    let mut stream = attacker.into_inner();
    let _ = stream.send(Message::Text("x".repeat(2048).into())).await;
    server
        .wait_for("the attacker's channel closed", |hub| {
            use graphex::__internals::HubInternals;
            hub.channel(&attacker_channel).is_none()
        })
        .await;
    bystander_still_served(&server, &mut bystander, "after-messages").await;
}

#[tokio::test]
async fn each_client_holds_at_most_its_caps_and_others_are_untouched() {
    let config = graphex::Config::default().with_max_channels_per_client(2).with_max_streams_per_client(1);
    let server = Server::start(app::connect("sqlite::memory:", None).await, Hub::new(config)).await;
    server.create_user("ann", "ann@example.com", "t").await;
    // The bystander authenticated: it counts as `ann`, not as 127.0.0.1.
    let mut bystander = server.ws_as("ann").await;
    bystander.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;

    // Anonymous clients from one address: two channels, then refusals.
    let _first = server.ws().await;
    let _second = server.ws().await;
    // Refused before the handshake: an HTTP 429, not an upgrade.
    let url = format!("ws://{}/ws/graphql/", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 429);
            let body = String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned();
            assert_eq!(body, "too many open channels for this client (limit 2 per process)");
        }
        other => panic!("expected 429, got {:?}", other.map(|(_, response)| response.status())),
    }
    // A native operation opens a channel too: refused with LIMIT_REACHED.
    let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
    client.start("1", "subscription { userChanges(action: CREATE) { id } }").await;
    let errors = client.expect_failure("1").await;
    assert_eq!(errors[0]["extensions"]["code"], "LIMIT_REACHED", "{errors}");
    client.close().await;
    assert_eq!(server.hub.stats().client_limits, 2, "the upgrade and the native operation");

    // Streaming responses: one per client.
    drop((_first, _second));
    server.wait_for("the anonymous channels closed", |hub| hub.channel_count() == 1).await;
    let query = "subscription { userChanges(action: CREATE) { id } }";
    let _stream = crate::support::http::Streamed::post(server.addr, "text/event-stream", query).await;
    server.wait_for("the stream's channel", |hub| hub.channel_count() == 2).await;
    let mut second_stream = crate::support::http::Streamed::post(server.addr, "text/event-stream", query).await;
    second_stream.read_until("event: complete").await;
    assert!(second_stream.text().contains("too many streaming responses for this client (limit 1 per process)"));
    assert!(second_stream.text().contains("LIMIT_REACHED"), "{}", second_stream.text());
    bystander_still_served(&server, &mut bystander, "after-caps").await;
}

#[tokio::test]
async fn a_two_channel_peer_that_answers_no_ping_is_closed() {
    use std::time::Duration;
    let config = graphex::Config::default()
        .with_socket_ping(Some(Duration::from_millis(50)))
        .with_socket_idle_timeout(Duration::from_millis(200));
    let server = Server::start(app::connect("sqlite::memory:", None).await, Hub::new(config)).await;
    // A client that reads (and so answers pings) stays.
    let mut alive = server.ws().await;
    alive.subscribe_ok(&server, "userSubscription", USERS_CREATE, None).await;
    // A raw socket that never reads again never answers a ping.
    let url = format!("ws://{}/ws/graphql/", server.addr);
    let (mut dead, _) = tokio_tungstenite::connect_async(url).await.expect("upgrade");
    futures_util::StreamExt::next(&mut dead).await.expect("handshake").expect("handshake");
    server.wait_for("two channels", |hub| hub.channel_count() == 2).await;
    let reader = tokio::spawn(async move {
        // Keeps `alive` reading (its pongs) until the dead peer is gone.
        let mut frames = Vec::new();
        for _ in 0..1 {
            frames.push(alive.next_json().await);
        }
        (alive, frames)
    });
    server.wait_for("the silent peer closed", |hub| hub.channel_count() == 1).await;
    let row = server.create_user("after-idle", "i@example.com", "t").await;
    let (_alive, frames) = reader.await.unwrap();
    assert_eq!(frames, vec![user_frame("create", &row)]);
    drop(dead);
}

#[tokio::test]
async fn browser_pages_of_other_origins_cannot_stream() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let config = graphex::Config::default().with_allowed_origins(vec!["https://admin.example".into()]);
    let server = Server::start(app::connect("sqlite::memory:", None).await, Hub::new(config)).await;
    let upgrade = |path: &str, origin: &str, protocol: Option<&str>| {
        let mut request = format!("ws://{}{path}", server.addr).into_client_request().unwrap();
        request.headers_mut().insert("origin", origin.parse().unwrap());
        if let Some(protocol) = protocol {
            request.headers_mut().insert("sec-websocket-protocol", protocol.parse().unwrap());
        }
        tokio_tungstenite::connect_async(request)
    };
    let same_origin = format!("http://{}", server.addr);
    for (path, protocol) in [("/ws/graphql/", None), ("/graphql", Some("graphql-transport-ws"))] {
        match upgrade(path, "https://evil.example", protocol).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 403),
            other => panic!("{path}: expected 403, got {:?}", other.map(|(_, response)| response.status())),
        }
        for origin in [same_origin.as_str(), "https://admin.example"] {
            let (mut socket, _) =
                upgrade(path, origin, protocol).await.unwrap_or_else(|e| panic!("{path} {origin}: {e}"));
            let _ = socket.close(None).await;
        }
    }
    // A streaming response from another origin's page.
    let body = Bytes::from(r#"{"query": "subscription { userChanges(action: CREATE) { id } }"}"#);
    let request = axum::http::Request::post(format!("http://{}/graphql", server.addr))
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .header("origin", "https://evil.example")
        .body(http_body_util::Full::new(body))
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(server.hub.channel_count(), 0);
}

#[tokio::test]
async fn multipart_uploads_when_enabled_need_a_preflight_header() {
    let limits = graphex::RequestLimits::default().with_uploads(true);
    let hub = Hub::new(graphex::Config::default().with_request_limits(limits));
    let server = Server::start(app::connect("sqlite::memory:", None).await, hub).await;
    let body = "--X\r\nContent-Disposition: form-data; name=\"operations\"\r\n\r\n{\"query\": \"{ __typename }\"}\r\n\
                --X\r\nContent-Disposition: form-data; name=\"map\"\r\n\r\n{}\r\n--X--\r\n";
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    for preflight in [false, true] {
        let mut request = axum::http::Request::post(format!("http://{}/graphql", server.addr))
            .header("content-type", "multipart/form-data; boundary=X");
        if preflight {
            request = request.header("apollo-require-preflight", "true");
        }
        let response =
            client.request(request.body(http_body_util::Full::new(Bytes::from(body))).unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let bytes = http_body_util::BodyExt::collect(response.into_body()).await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        if preflight {
            assert_eq!((status, text.as_ref()), (200, r#"{"data":{"__typename":"Query"}}"#));
        } else {
            assert_eq!(status, 400, "{text}");
            assert!(text.contains("Apollo-Require-Preflight"), "{text}");
        }
    }
}

//! Shared execution (issue 18): standard-protocol subscribers of the same
//! operation with equal subscriptions share one execution, one hub channel
//! and one serialization per change, and receive exactly the bytes they
//! would receive alone. Subscribers whose scopes differ never share.

use crate::app;
use crate::support::http::Streamed;
use crate::support::standard::{Client, Proto, Served, serve, wait_for};
use std::sync::Arc;

use bytes::Bytes;
use graphex::layer::{ChannelLayer, History, Inbound, LayerError, MemoryLayer, Position};
use graphex::{Config, Hub, RouterBuilder};
use serde_json::{Value as Json, json};

/// The reference app (SQLite in memory) on a hub with `config`.
async fn start(config: Config) -> (Served, Hub) {
    let db = app::connect("sqlite::memory:", None).await;
    let hub = Hub::new(config);
    let router = RouterBuilder::new(app::schema(db.clone()), hub.clone()).authenticator(app::UsernameAuth(db)).build();
    (serve(router).await, hub)
}

/// Aliases, a fragment and `__typename`: the selection set is executed
/// once for every member, as each would have it executed alone.
const USERS: &str = "subscription Users { userChanges(data: [USERNAME, EMAIL]) { __typename action who: id \
                     ... on ModelChange { model stream } data } }";

fn create_user(name: &str, tenant: &str) -> String {
    format!(
        r#"mutation {{ createUser(username: "{name}", email: "{name}@example.com", tenant: "{tenant}") {{ id }} }}"#
    )
}

/// Runs `query` on a connection of its own (as `token`'s principal).
async fn run(server: &Served, token: Option<&str>, query: &str) -> Json {
    let payload = token.map(|token| json!({"token": token})).unwrap_or_else(|| json!({}));
    let mut client = Client::connected(server.addr, Proto::Transport, payload).await;
    let (data, _) = client.execute("run", query).await;
    client.close().await;
    data
}

async fn shared_joins(hub: &Hub, joins: u64) {
    wait_for(&format!("{joins} shared joins"), || hub.stats().shared_joins == joins).await;
}

#[tokio::test]
async fn equal_subscribers_share_one_execution_and_get_the_bytes_they_would_get_alone() {
    let mut received = Vec::new();
    for share in [false, true] {
        let (server, hub) = start(Config::default().with_share_executions(share)).await;
        let mut clients = Vec::new();
        for (n, proto) in [Proto::Transport, Proto::Legacy, Proto::Transport].into_iter().enumerate() {
            let mut client = Client::connected(server.addr, proto, json!({})).await;
            client.start(&format!("op-{n}"), USERS).await;
            clients.push(client);
        }
        if share {
            shared_joins(&hub, 2).await;
            assert_eq!((hub.shared_execution_count(), hub.channel_count()), (1, 1), "one execution, one channel");
            assert_eq!(hub.shared_subscriber_count(), 3);
        } else {
            wait_for("3 channels", || hub.channel_count() == 3).await;
            assert_eq!(hub.shared_execution_count(), 0);
        }
        run(&server, None, &create_user("neo", "acme")).await;
        run(&server, None, r#"mutation { updateUser(id: 1, email: "the.one@example.com") { id } }"#).await;
        run(&server, None, "mutation { deleteUser(id: 1) }").await;
        let mut texts = Vec::new();
        for client in &mut clients {
            for _ in 0..3 {
                texts.push(client.text().await);
            }
        }
        received.push(texts);
        drop(clients);
        wait_for("no channel", || hub.channel_count() == 0).await;
        assert_eq!(hub.shared_execution_count(), 0, "the last member's leaving ends the execution");
        assert_eq!(hub.shared_subscriber_count(), 0);
    }
    assert!(received[0][0].starts_with(r#"{"type":"next","id":"op-0","payload":{"data":{"userChanges":"#));
    assert!(received[0][3].starts_with(r#"{"type":"data","id":"op-1","payload":"#));
    assert_eq!(received[1], received[0], "shared frames are byte-identical to unshared ones");
}

#[tokio::test]
async fn principals_share_only_when_their_scopes_are_equal() {
    let (server, hub) = start(Config::default()).await;
    for (name, tenant) in [("neo", "acme"), ("trinity", "acme"), ("smith", "matrix")] {
        run(&server, None, &create_user(name, tenant)).await;
    }
    const NOTES: &str = "subscription { noteChanges(action: CREATE) { action data } }";
    const MESSAGES: &str = "subscription { messageChanges(action: CREATE) { action data } }";
    let mut clients = Vec::new();
    for name in ["neo", "trinity", "smith"] {
        let mut client = Client::connected(server.addr, Proto::Transport, json!({"token": name})).await;
        client.start("notes", NOTES).await;
        client.start("messages", MESSAGES).await;
        clients.push(client);
    }
    // Notes are scoped by owner: three executions. Messages by tenant: neo
    // and trinity (acme) share one, smith (matrix) has their own.
    shared_joins(&hub, 1).await;
    wait_for("5 executions", || hub.shared_execution_count() == 5).await;
    assert_eq!(hub.channel_count(), 5);

    run(&server, Some("neo"), r#"mutation { createNote(text: "neo's") { id } }"#).await;
    run(&server, Some("smith"), r#"mutation { createNote(text: "smith's") { id } }"#).await;
    run(&server, Some("trinity"), r#"mutation { createMessage(room: 1, text: "to acme") { id } }"#).await;
    run(&server, Some("smith"), r#"mutation { createMessage(room: 1, text: "to matrix") { id } }"#).await;
    // Each client's next two results: its own note (neo, smith) and its tenant's message.
    let mut got = Vec::new();
    for client in &mut clients {
        let mut texts = Vec::new();
        for _ in 0..if client_has_note(got.len()) { 2 } else { 1 } {
            let message = client.json().await;
            texts.push((message["id"].as_str().unwrap().to_owned(), message["payload"]["data"].clone()));
        }
        texts.sort_by(|a, b| a.0.cmp(&b.0));
        got.push(texts);
    }
    let note = |id: i32, owner: &str, text: &str| json!({"noteChanges": {"action": "CREATE", "data": {"id": id, "owner": owner, "text": text}}});
    let message = |id: i32, tenant: &str, text: &str| json!({"messageChanges": {"action": "CREATE", "data": {"id": id, "tenant": tenant, "room": 1, "text": text}}});
    assert_eq!(
        got[0],
        vec![("messages".into(), message(1, "acme", "to acme")), ("notes".into(), note(1, "neo", "neo's"))]
    );
    assert_eq!(got[1], vec![("messages".into(), message(1, "acme", "to acme"))]);
    assert_eq!(
        got[2],
        vec![("messages".into(), message(2, "matrix", "to matrix")), ("notes".into(), note(2, "smith", "smith's"))]
    );
    // Nothing else reached trinity: its next message is a later operation's.
    let (data, others) = clients[1].execute("probe", "query { __typename }").await;
    assert_eq!((data, others), (json!({"__typename": "Query"}), vec![]));
}

/// Whether the `index`-th client (neo, trinity, smith) made a note.
fn client_has_note(index: usize) -> bool {
    index != 1
}

#[tokio::test]
async fn a_late_member_takes_only_later_changes_and_leaving_keeps_the_others() {
    let (server, hub) = start(Config::default()).await;
    const CREATES: &str = "subscription { userChanges(action: CREATE, data: [USERNAME]) { data } }";
    let mut first = Client::connected(server.addr, Proto::Transport, json!({})).await;
    first.start("1", CREATES).await;
    wait_for("one execution", || hub.shared_execution_count() == 1).await;
    run(&server, None, &create_user("neo", "acme")).await;
    assert_eq!(first.json().await["payload"]["data"]["userChanges"]["data"]["username"], "neo");

    let mut late = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    late.start("1", CREATES).await;
    shared_joins(&hub, 1).await;
    run(&server, None, &create_user("trinity", "acme")).await;
    for client in [&mut first, &mut late] {
        assert_eq!(client.json().await["payload"]["data"]["userChanges"]["data"]["username"], "trinity");
    }

    // The first member leaves; the execution goes on for the other.
    first.stop("1").await;
    let (data, _) = first.execute("probe", "query { __typename }").await;
    assert_eq!(data, json!({"__typename": "Query"}));
    run(&server, None, &create_user("smith", "matrix")).await;
    assert_eq!(late.json().await["payload"]["data"]["userChanges"]["data"]["username"], "smith");
    let (_, others) = first.execute("probe", "query { __typename }").await;
    assert_eq!(others, Vec::<Json>::new(), "nothing after its complete");
    assert_eq!(hub.shared_execution_count(), 1);

    // An id reused for another operation gets that operation's results only.
    late.stop("1").await;
    assert_eq!(late.json().await, json!({"type": "complete", "id": "1"}));
    wait_for("no execution", || hub.shared_execution_count() == 0).await;
    late.start("1", "subscription { userChanges(action: DELETE) { action } }").await;
    wait_for("one execution", || hub.shared_execution_count() == 1).await;
    run(&server, None, &create_user("morpheus", "acme")).await;
    run(&server, None, "mutation { deleteUser(id: 1) }").await;
    assert_eq!(
        late.json().await,
        json!({"type": "data", "id": "1", "payload": {"data": {"userChanges": {"action": "DELETE"}}}})
    );
}

#[tokio::test]
async fn operations_that_cannot_share_run_alone() {
    let (server, hub) = start(Config::default()).await;
    let mut clients = Vec::new();
    // Resuming after a cursor replays for one subscriber: never shared.
    let cursor = {
        let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
        client.start("c", "subscription { userChanges(action: CREATE) { cursor } }").await;
        wait_for("an execution", || hub.shared_execution_count() == 1).await;
        run(&server, None, &create_user("trinity", "acme")).await;
        client.json().await["payload"]["data"]["userChanges"]["cursor"].as_str().unwrap().to_owned()
    };
    wait_for("no execution", || hub.shared_execution_count() == 0).await;
    let resume = format!(r#"subscription {{ userChanges(action: CREATE, after: "{cursor}") {{ cursor }} }}"#);
    for _ in 0..2 {
        let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
        client.start("r", &resume).await;
        clients.push(client);
    }
    wait_for("2 channels", || hub.channel_count() == 2).await;
    assert_eq!(hub.shared_execution_count(), 0);
}

#[tokio::test]
async fn streaming_responses_share_among_themselves_byte_for_byte() {
    const CREATES: &str = "subscription { userChanges(action: CREATE, data: [USERNAME]) { action model id data } }";
    const MULTIPART: &str = r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0", application/json"#;
    let mut bodies = Vec::new();
    for share in [false, true] {
        let (server, hub) = start(Config::default().with_share_executions(share)).await;
        let mut sse = Vec::new();
        for _ in 0..2 {
            sse.push(Streamed::post(server.addr, "text/event-stream", CREATES).await);
        }
        let mut multipart = Streamed::post(server.addr, MULTIPART, CREATES).await;
        let mut socket = Client::connected(server.addr, Proto::Transport, json!({})).await;
        socket.start("ws", CREATES).await;
        if share {
            // HTTP streams share one execution, WebSocket subscribers
            // another: at shutdown the first end with an error result, the
            // second wait for their connection's 1001.
            wait_for("4 shared subscribers", || hub.shared_subscriber_count() == 4).await;
            assert_eq!((hub.shared_execution_count(), hub.channel_count()), (2, 2));
        } else {
            wait_for("4 channels", || hub.channel_count() == 4).await;
        }
        run(&server, None, &create_user("neo", "acme")).await;
        run(&server, None, &create_user("trinity", "acme")).await;
        let mut texts = Vec::new();
        for stream in sse.iter_mut().chain([&mut multipart]) {
            stream.read_until("trinity").await;
            texts.push(stream.text());
        }
        texts.push(socket.text().await);
        texts.push(socket.text().await);
        bodies.push(texts);
        drop((sse, multipart, socket));
        wait_for("no channel", || hub.channel_count() == 0).await;
        assert_eq!((hub.shared_execution_count(), hub.shared_subscriber_count()), (0, 0));
    }
    assert!(bodies[0][0].starts_with("event: next\ndata: {\"data\":{\"userChanges\":"), "{}", bodies[0][0]);
    assert!(bodies[0][2].starts_with("--graphql\r\nContent-Type: application/json\r\n\r\n{"), "{}", bodies[0][2]);
    assert_eq!(bodies[1], bodies[0], "shared streams are byte-identical to unshared ones");
}

#[tokio::test]
async fn when_the_execution_ends_every_member_gets_its_end_as_alone() {
    const CREATES: &str = "subscription { userChanges(action: CREATE) { action } }";
    let mut ends = Vec::new();
    for share in [false, true] {
        let (server, hub) = start(Config::default().with_share_executions(share)).await;
        let mut clients = Vec::new();
        for (n, proto) in [Proto::Transport, Proto::Legacy].into_iter().enumerate() {
            let mut client = Client::connected(server.addr, proto, json!({})).await;
            client.start(&format!("op-{n}"), CREATES).await;
            clients.push(client);
        }
        wait_for("2 subscribers", || {
            hub.channel_count() - hub.shared_execution_count() + hub.shared_subscriber_count() == 2
        })
        .await;
        // Every native stream is closed (say, before a deploy): the error
        // result, then `complete`, on every member.
        hub.disconnect_all();
        let mut texts = Vec::new();
        for client in &mut clients {
            for _ in 0..2 {
                texts.push(client.text().await);
            }
        }
        wait_for("no channel", || hub.channel_count() == 0).await;
        assert_eq!((hub.shared_execution_count(), hub.shared_subscriber_count()), (0, 0));
        ends.push(texts);
    }
    assert!(ends[0][0].contains("disconnected by the server"), "{}", ends[0][0]);
    assert_eq!(ends[0][1], r#"{"type":"complete","id":"op-0"}"#);
    assert_eq!(ends[1], ends[0]);
}

/// The memory layer, whose groups are ready only after a while (as Redis's
/// are once the SUBSCRIBE is confirmed), or then fail to be when `fail`.
struct SlowReady(MemoryLayer, bool);

#[async_trait::async_trait]
impl ChannelLayer for SlowReady {
    fn start(&self, inbound: Inbound) {
        self.0.start(inbound);
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        self.0.publish(group, message).await
    }

    async fn publish_all(&self, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.0.publish_all(groups, message).await
    }

    async fn publish_change(&self, stream: &str, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.0.publish_change(stream, groups, message).await
    }

    async fn history(&self, stream: &str, after: Position) -> Result<History, LayerError> {
        self.0.history(stream, after).await
    }

    fn listen(&self, group: &str) {
        self.0.listen(group);
    }

    fn unlisten(&self, group: &str) {
        self.0.unlisten(group);
    }

    async fn ready(&self, group: &str) -> Result<(), LayerError> {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if self.1 {
            return Err(LayerError::unavailable("the test's layer refuses"));
        }
        self.0.ready(group).await
    }
}

#[tokio::test]
async fn subscribers_arriving_while_the_execution_starts_join_it() {
    let db = app::connect("sqlite::memory:", None).await;
    let hub = Hub::with_layer(Config::default(), Arc::new(SlowReady(MemoryLayer::new(), false)));
    let router = RouterBuilder::new(app::schema(db.clone()), hub.clone()).authenticator(app::UsernameAuth(db)).build();
    let server = serve(router).await;
    const CREATES: &str = "subscription { userChanges(action: CREATE, data: [USERNAME]) { data } }";
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
        client.start("1", CREATES).await;
        clients.push(client);
    }
    wait_for("5 shared subscribers", || hub.shared_subscriber_count() == 5).await;
    assert_eq!((hub.shared_execution_count(), hub.channel_count()), (1, 1), "one execution for all five");
    run(&server, None, &create_user("neo", "acme")).await;
    for client in &mut clients {
        assert_eq!(client.json().await["payload"]["data"]["userChanges"]["data"]["username"], "neo");
    }
}

#[tokio::test]
async fn subscribers_that_joined_a_refused_start_get_its_refusal() {
    const CREATES: &str = "subscription { userChanges(action: CREATE) { action } }";
    let mut answers = Vec::new();
    for share in [false, true] {
        let db = app::connect("sqlite::memory:", None).await;
        let layer = Arc::new(SlowReady(MemoryLayer::new(), true));
        let hub = Hub::with_layer(Config::default().with_share_executions(share), layer);
        let router =
            RouterBuilder::new(app::schema(db.clone()), hub.clone()).authenticator(app::UsernameAuth(db)).build();
        let server = serve(router).await;
        let mut clients = Vec::new();
        for _ in 0..3 {
            let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
            client.start("1", CREATES).await;
            clients.push(client);
        }
        if share {
            wait_for("2 joins", || hub.stats().shared_joins == 2).await;
        }
        let mut texts = Vec::new();
        for client in &mut clients {
            texts.push(client.text().await);
            texts.push(client.text().await);
        }
        assert_eq!((hub.shared_execution_count(), hub.shared_subscriber_count(), hub.channel_count()), (0, 0, 0));
        answers.push(texts);
    }
    assert!(answers[0][0].contains("the test's layer refuses"), "{}", answers[0][0]);
    assert_eq!(answers[0][1], r#"{"type":"complete","id":"1"}"#);
    assert_eq!(answers[1], answers[0], "each member gets the refusal it would get alone");
}

//! The `chat` and `blog` examples over `graphql-transport-ws` and the legacy
//! `graphql-ws`, served on port 0 with their embedded defaults.

use crate::support::standard::{Client, Proto, serve, wait_for};
use crate::{blog_app, chat_app};
use graphex::Hub;
use serde_json::{Value as Json, json};

/// The next result of operation `id`, taking it from `seen` first.
async fn next_of(client: &mut Client, seen: &mut Vec<Json>, id: &str) -> Json {
    let message = if seen.is_empty() { client.json().await } else { seen.remove(0) };
    assert_eq!(message["type"], client.proto.next(), "{message}");
    assert_eq!(message["id"], id, "{message}");
    message["payload"]["data"].clone()
}

#[tokio::test]
async fn chat_delivers_each_message_to_its_recipient_only() {
    let hub = Hub::default();
    let server = serve(chat_app::app(chat_app::connect("sqlite::memory:").await, hub.clone())).await;
    let mut alice = Client::connected(server.addr, Proto::Transport, json!({})).await;
    let mut ids = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let (data, _) = alice
            .execute(name, &format!(r#"mutation {{ createUser(username: "{name}") {{ success user {{ userId }} }} }}"#))
            .await;
        assert_eq!(data["createUser"]["success"], true);
        ids.push(data["createUser"]["user"]["userId"].as_str().unwrap().to_owned());
    }
    let (taken, _) = alice.execute("again", r#"mutation { createUser(username: "bob") { success errors } }"#).await;
    assert_eq!(taken, json!({"createUser": {"success": false, "errors": ["Username is taken"]}}));
    let [a, b, c] = [&ids[0], &ids[1], &ids[2]];

    let mut bob = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    let mut carol = Client::connected(server.addr, Proto::Transport, json!({})).await;
    bob.start("inbox", &format!(r#"subscription {{ messages(userId: "{b}") {{ content senderId recipientId }} }}"#))
        .await;
    bob.start("typing", &format!(r#"subscription {{ typing(userId: "{b}") {{ senderId }} }}"#)).await;
    carol.start("inbox", &format!(r#"subscription {{ messages(userId: "{c}") {{ content senderId }} }}"#)).await;
    wait_for("three subscriptions", || hub.channel_count() == 2 && hub.group_count() == 3).await;

    let send = |to: &str, text: &str| {
        format!(
            r#"mutation {{ createMessage(senderId: "{a}", recipientId: "{to}", content: "{text}") {{ success }} }}"#
        )
    };
    alice.execute("typing", &format!(r#"mutation {{ typing(senderId: "{a}", recipientId: "{b}") }}"#)).await;
    alice.execute("m1", &send(b, "hi bob")).await;
    alice.execute("m2", &send(c, "hi carol")).await;
    let mut none = Vec::new();
    assert_eq!(next_of(&mut bob, &mut none, "typing").await, json!({"typing": {"senderId": a}}));
    assert_eq!(
        next_of(&mut bob, &mut none, "inbox").await,
        json!({"messages": {"content": "hi bob", "senderId": a, "recipientId": b}})
    );
    // Carol's first message is hers: bob's never reached her.
    assert_eq!(
        next_of(&mut carol, &mut none, "inbox").await,
        json!({"messages": {"content": "hi carol", "senderId": a}})
    );

    let (history, _) =
        alice.execute("h", &format!(r#"{{ messages(userId: "{a}") {{ messages {{ content }} }} }}"#)).await;
    assert_eq!(history, json!({"messages": {"messages": [{"content": "hi bob"}, {"content": "hi carol"}]}}));
    bob.close().await;
    carol.close().await;
    wait_for("no subscriptions", || hub.channel_count() == 0 && hub.group_count() == 0).await;
}

#[tokio::test]
async fn blog_readers_hear_of_each_post_as_it_is_published() {
    let hub = Hub::default();
    let server = serve(blog_app::app(blog_app::connect("sqlite::memory:").await, hub.clone())).await;
    let mut writer = Client::connected(server.addr, Proto::Transport, json!({})).await;
    writer.execute("a", r#"mutation { createAuthor(username: "TheAlchemist", age: 30) { username } }"#).await;

    const LATEST: &str = "subscription LatestBlog { getLatestBlog { pk title content author { username age } } }";
    let mut early = Client::connected(server.addr, Proto::Transport, json!({})).await;
    early.start("latest", LATEST).await;
    wait_for("the early reader", || hub.channel_count() == 1).await;

    let post = |title: &str| {
        format!(
            r#"mutation {{ postBlog(input: {{authorUsername: "TheAlchemist", title: "{title}", content: "This is {title}"}}) {{ message blog {{ pk }} }} }}"#
        )
    };
    let (posted, _) = writer.execute("p1", &post("My first blog")).await;
    assert_eq!(posted, json!({"postBlog": {"message": "Blog posted", "blog": {"pk": 1}}}));
    let mut none = Vec::new();
    let first = json!({"getLatestBlog": {"pk": 1, "title": "My first blog", "content": "This is My first blog",
        "author": {"username": "TheAlchemist", "age": 30}}});
    assert_eq!(next_of(&mut early, &mut none, "latest").await, first);

    // A reader who arrives later gets the current latest first, then new posts.
    let mut late = Client::connected(server.addr, Proto::Legacy, json!({})).await;
    late.start("latest", LATEST).await;
    assert_eq!(next_of(&mut late, &mut none, "latest").await, first);
    writer.execute("p2", &post("My second blog")).await;
    for reader in [&mut early, &mut late] {
        let data = next_of(reader, &mut none, "latest").await;
        assert_eq!(data["getLatestBlog"]["pk"], 2);
        assert_eq!(data["getLatestBlog"]["title"], "My second blog");
    }

    let (refused, _) =
        writer.execute("bad", r#"mutation { createAuthor(username: "Other", age: 1) { username } }"#).await;
    assert_eq!(refused["createAuthor"]["username"], "Other");
    writer
        .start(
            "p3",
            r#"mutation { postBlog(input: {authorUsername: "nobody", title: "x", content: "y"}) { message } }"#,
        )
        .await;
    // An execution error is a result (`next` with errors), then `complete`.
    let result = writer.expect_type("next").await;
    assert_eq!(result["payload"]["data"], Json::Null);
    assert_eq!(result["payload"]["errors"][0]["message"], "Author does not exist");
    assert_eq!(writer.json().await, json!({"type": "complete", "id": "p3"}));
}

//! Native subscriptions over plain HTTP streaming, for clients without
//! WebSockets: `multipart/mixed` (Apollo's HTTP subscriptions) and
//! `text/event-stream` (GraphQL over SSE), on the reference app.
#![allow(unreachable_pub)]

#[path = "../examples/reference/app.rs"]
mod app;
mod standard;

use std::net::SocketAddr;

use graphex::Hub;
use serde_json::{Value as Json, json};
use standard::{Client, Proto, TIMEOUT, serve, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A streaming HTTP/1.1 response, de-chunked as it arrives.
struct Streamed {
    socket: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    head: Option<String>,
}

impl Streamed {
    async fn post(addr: SocketAddr, accept: &str, query: &str) -> Streamed {
        let body = json!({"query": query}).to_string();
        let request = format!(
            "POST /graphql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: {accept}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let mut socket = TcpStream::connect(addr).await.expect("connect");
        socket.write_all(request.as_bytes()).await.expect("write request");
        Streamed { socket, raw: Vec::new(), body: Vec::new(), head: None }
    }

    /// Reads until the de-chunked body contains `needle`; returns the head.
    async fn read_until(&mut self, needle: &str) -> String {
        let read = async {
            loop {
                self.parse();
                if String::from_utf8_lossy(&self.body).contains(needle) {
                    return;
                }
                let mut buffer = [0u8; 4096];
                let read = self.socket.read(&mut buffer).await.expect("read");
                assert!(read > 0, "stream ended before {needle:?}: {}", String::from_utf8_lossy(&self.body));
                self.raw.extend_from_slice(&buffer[..read]);
            }
        };
        tokio::time::timeout(TIMEOUT, read).await.unwrap_or_else(|_| panic!("no {needle:?} in time"));
        self.head.clone().expect("the head came first")
    }

    fn parse(&mut self) {
        if self.head.is_none() {
            let Some(end) = self.raw.windows(4).position(|window| window == b"\r\n\r\n") else { return };
            self.head = Some(String::from_utf8_lossy(&self.raw[..end]).into_owned());
            self.raw.drain(..end + 4);
        }
        let chunked =
            self.head.as_deref().is_some_and(|head| head.to_ascii_lowercase().contains("transfer-encoding: chunked"));
        if !chunked {
            self.body.append(&mut self.raw);
            return;
        }
        // Complete chunks only.
        loop {
            let Some(line_end) = self.raw.windows(2).position(|window| window == b"\r\n") else { return };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            self.body.extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

const SUBSCRIPTION: &str = "subscription { userChanges(action: CREATE, data: [USERNAME]) { action model id data } }";

async fn create_user(addr: SocketAddr, name: &str) {
    let mut client = Client::connected(addr, Proto::Transport, json!({})).await;
    let mutation =
        format!(r#"mutation {{ createUser(username: "{name}", email: "{name}@example.com", tenant: "t") {{ id }} }}"#);
    client.execute("m", &mutation).await;
    client.close().await;
}

#[tokio::test]
async fn server_sent_events_stream_changes_until_the_client_leaves() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let mut stream = Streamed::post(server.addr, "text/event-stream", SUBSCRIPTION).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    create_user(server.addr, "neo").await;
    let head = stream.read_until("\n\n").await;
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    let text = stream.text();
    let event = text.split("\n\n").next().unwrap();
    let mut lines = event.lines();
    assert_eq!(lines.next(), Some("event: next"), "{event}");
    let data: Json = serde_json::from_str(lines.next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(
        data,
        json!({"data": {"userChanges": {"action": "CREATE", "model": "user", "id": 1, "data": {"username": "neo"}}}})
    );
    drop(stream);
    wait_for("the channel freed", || hub.channel_count() == 0 && hub.group_count() == 0).await;
}

#[tokio::test]
async fn multipart_mixed_streams_changes_and_refusals_end_the_stream() {
    let hub = Hub::default();
    let server = serve(app::app(app::connect("sqlite::memory:", None).await, hub.clone())).await;
    let accept = r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0", application/json"#;
    let mut stream = Streamed::post(server.addr, accept, SUBSCRIPTION).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    create_user(server.addr, "trinity").await;
    let head = stream.read_until("trinity").await;
    assert!(head.to_ascii_lowercase().contains("content-type: multipart/mixed; boundary=graphql"), "{head}");
    let text = stream.text();
    let part = text.split("--graphql\r\nContent-Type: application/json\r\n\r\n").nth(1).expect("a part");
    let part: Json = serde_json::from_str(part.trim_end()).unwrap();
    assert_eq!(part["data"]["userChanges"]["data"], json!({"username": "trinity"}));
    drop(stream);
    wait_for("the channel freed", || hub.channel_count() == 0).await;

    // A refused subscription: one part with the error, then the end.
    let mut refused = Streamed::post(server.addr, accept, "subscription { noteChanges { id } }").await;
    refused.read_until("--graphql--").await;
    assert!(refused.text().contains("not authorized: authentication required"), "{}", refused.text());

    // Without a streaming Accept, a subscription still runs once (two-channel confirmations).
    let mut once = Streamed::post(server.addr, "application/json", "subscription { noteChanges { id } }").await;
    once.read_until("authentication required").await;
}

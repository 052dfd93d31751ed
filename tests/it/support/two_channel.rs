//! A client of the two-channel WebSocket protocol (`/ws/graphql/`).

use futures_util::StreamExt;
use serde_json::{Value as Json, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TIMEOUT;
use super::reference::Http;

/// Where the socket's token goes.
pub(super) enum TokenIn {
    /// `?token=` in the URL.
    Query,
    /// An `Authorization: Bearer` header on the upgrade.
    Header,
}

/// A two-channel WebSocket client.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The channel id from the handshake.
    pub channel_id: String,
    token: Option<String>,
}

impl Ws {
    /// Opens a socket and checks the handshake.
    pub(super) async fn connect(server: &Http, token: Option<&str>, token_in: TokenIn) -> Ws {
        let mut url = format!("ws://{}/ws/graphql/", server.addr);
        if let (Some(token), TokenIn::Query) = (token, &token_in) {
            url.push_str(&format!("?token={token}"));
        }
        let mut request = url.into_client_request().expect("valid ws url");
        if let (Some(token), TokenIn::Header) = (token, &token_in) {
            request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header value"));
        }
        let (stream, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        let mut ws = Ws { stream, channel_id: String::new(), token: token.map(str::to_owned) };
        let handshake = ws.next_json().await;
        let id = handshake["channel_id"].as_str().unwrap_or_else(|| panic!("bad handshake {handshake}")).to_owned();
        assert_eq!(handshake, json!({"channel_id": id, "connect": "success"}));
        ws.channel_id = id;
        ws
    }

    /// The token the socket was opened with.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Subscribes this channel (with its own token) and asserts it was accepted.
    pub async fn subscribe_ok(&self, server: &Http, field: &str, args: &str, filters: Option<Json>) {
        let confirmation = server.subscribe(self.token(), &self.channel_id, field, args, filters).await;
        assert_eq!(confirmation["ok"], json!(true), "subscribe {field}({args}) refused: {confirmation}");
    }

    /// Subscribes to every comment creation, for [`Server::comment_sentinel`].
    pub async fn arm_comment_sentinel(&self, server: &Http) {
        self.subscribe_ok(server, "commentSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    }

    /// Subscribes to every user creation, for [`Server::user_sentinel`].
    pub async fn arm_user_sentinel(&self, server: &Http) {
        self.subscribe_ok(server, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    }

    /// The next message, or `None` at end of stream; panics after [`TIMEOUT`].
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("timed out waiting for a WebSocket message");
            match message {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// The next text frame as JSON; panics on timeout, close or binary.
    pub async fn next_json(&mut self) -> Json {
        match self.next_message().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).expect("frames are JSON"),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// Asserts the next frame is `expected`.
    pub async fn expect(&mut self, expected: &Json) {
        self.expect_in("", expected).await;
    }

    /// Asserts the next frame is `expected`; `label` names the case in failures.
    pub async fn expect_in(&mut self, label: &str, expected: &Json) {
        let got = self.next_json().await;
        assert_eq!(&got, expected, "unexpected frame on channel {} {label}", self.channel_id);
    }

    /// Asserts the next frames are `expected`, in any order.
    pub async fn expect_unordered(&mut self, expected: &[Json]) {
        let mut got = Vec::new();
        for _ in expected {
            got.push(self.next_json().await);
        }
        let key = |frame: &Json| frame.to_string();
        let mut got_keys: Vec<String> = got.iter().map(key).collect();
        let mut expected_keys: Vec<String> = expected.iter().map(key).collect();
        got_keys.sort();
        expected_keys.sort();
        assert_eq!(got_keys, expected_keys, "unexpected frames on channel {}", self.channel_id);
    }

    /// Sends a close frame and waits for the server's reply.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let _ = tokio::time::timeout(TIMEOUT, async { while self.stream.next().await.is_some() {} }).await;
    }

    /// The underlying stream (e.g. to leave it unread).
    pub fn into_inner(self) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        self.stream
    }
}

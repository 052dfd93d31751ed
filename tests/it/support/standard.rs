//! Any router served on port 0, and a raw client of `graphql-transport-ws`
//! / `graphql-ws` over tokio-tungstenite that shows every frame, close codes
//! included.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::TIMEOUT;

/// A router served on `127.0.0.1:0` until dropped.
pub struct Served {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` on a fresh loopback port.
pub async fn serve(router: Router) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("bound address");
    let task = tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.expect("server runs");
    });
    Served { addr, task }
}

/// Polls `condition` until it holds, for at most [`TIMEOUT`].
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The two subprotocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// `graphql-transport-ws`.
    Transport,
    /// Legacy `graphql-ws` (subscriptions-transport-ws).
    Legacy,
}

impl Proto {
    /// The `Sec-WebSocket-Protocol` value.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Transport => "graphql-transport-ws",
            Proto::Legacy => "graphql-ws",
        }
    }

    /// The operation start message type.
    pub fn start(self) -> &'static str {
        match self {
            Proto::Transport => "subscribe",
            Proto::Legacy => "start",
        }
    }

    /// The client stop message type.
    pub fn stop(self) -> &'static str {
        match self {
            Proto::Transport => "complete",
            Proto::Legacy => "stop",
        }
    }

    /// The result message type.
    pub fn next(self) -> &'static str {
        match self {
            Proto::Transport => "next",
            Proto::Legacy => "data",
        }
    }
}

/// What the server sent.
#[derive(Debug, PartialEq)]
pub enum Frame {
    /// A JSON text message.
    Json(Json),
    /// A close frame: code and reason.
    Close(u16, String),
    /// The connection ended without a close frame.
    Gone,
}

/// A raw standard-protocol client.
pub struct Client {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The negotiated protocol.
    pub proto: Proto,
    /// Skip server keep-alives (`ka`, server `ping`) when reading.
    pub skip_keep_alives: bool,
}

impl Client {
    /// Opens a socket to `ws://addr/graphql` offering `proto`.
    pub async fn open(addr: SocketAddr, proto: Proto) -> Client {
        Client::open_with(addr, proto, None).await
    }

    /// Opens a socket with `Authorization: Bearer <token>` on the upgrade.
    pub async fn open_with(addr: SocketAddr, proto: Proto, token: Option<&str>) -> Client {
        let mut request = format!("ws://{addr}/graphql").into_client_request().expect("valid URL");
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(proto.name()));
        if let Some(token) = token {
            request.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        }
        let (stream, response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect in time")
            .expect("upgrade");
        assert_eq!(
            response.headers().get("sec-websocket-protocol").and_then(|value| value.to_str().ok()),
            Some(proto.name()),
            "the server selects the offered subprotocol"
        );
        Client { stream, proto, skip_keep_alives: true }
    }

    /// Opens and initialises with `payload`; expects the ack.
    pub async fn connected(addr: SocketAddr, proto: Proto, payload: Json) -> Client {
        let mut client = Client::open(addr, proto).await;
        client.send(json!({"type": "connection_init", "payload": payload})).await;
        client.expect_type("connection_ack").await;
        client
    }

    /// Sends a JSON message.
    pub async fn send(&mut self, message: Json) {
        self.stream.send(Message::Text(message.to_string().into())).await.expect("send");
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.to_owned().into())).await.expect("send");
    }

    /// Starts operation `id` with `query`.
    pub async fn start(&mut self, id: &str, query: &str) {
        let kind = self.proto.start();
        self.send(json!({"type": kind, "id": id, "payload": {"query": query}})).await;
    }

    /// Stops operation `id`.
    pub async fn stop(&mut self, id: &str) {
        let kind = self.proto.stop();
        self.send(json!({"type": kind, "id": id})).await;
    }

    /// The next frame (skipping keep-alives if asked), within [`TIMEOUT`].
    pub async fn frame(&mut self) -> Frame {
        self.frame_within(TIMEOUT).await.expect("a frame in time")
    }

    /// The next frame (skipping keep-alives if asked), or `None` when none
    /// came within `wait`.
    pub async fn frame_within(&mut self, wait: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next()).await.ok()?;
            let frame = match message {
                None | Some(Err(_)) => Frame::Gone,
                Some(Ok(Message::Text(text))) => Frame::Json(serde_json::from_str(&text).expect("JSON text")),
                Some(Ok(Message::Close(Some(frame)))) => Frame::Close(frame.code.into(), frame.reason.to_string()),
                Some(Ok(Message::Close(None))) => Frame::Close(1005, String::new()),
                Some(Ok(_)) => continue,
            };
            if let Frame::Json(json) = &frame
                && self.skip_keep_alives
                && (json["type"] == "ka" || json["type"] == "ping")
            {
                continue;
            }
            return Some(frame);
        }
    }

    /// The next text message as sent, byte for byte (keep-alives skipped).
    pub async fn text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(TIMEOUT, self.stream.next()).await.expect("a message in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let text = text.to_string();
                    if text == r#"{"type":"ka"}"# || text == r#"{"type":"ping"}"# {
                        continue;
                    }
                    return text;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// The next JSON message.
    pub async fn json(&mut self) -> Json {
        match self.frame().await {
            Frame::Json(json) => json,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// The next message must have this type.
    pub async fn expect_type(&mut self, kind: &str) -> Json {
        let json = self.json().await;
        assert_eq!(json["type"], kind, "message: {json}");
        json
    }

    /// Operation `id` must fail during execution: a result with `data: null`
    /// and errors, then `complete`. Returns the errors.
    pub async fn expect_failure(&mut self, id: &str) -> Json {
        let result = self.expect_type(self.proto.next()).await;
        assert_eq!(result["id"], id, "{result}");
        assert_eq!(result["payload"]["data"], Json::Null, "{result}");
        let errors = result["payload"]["errors"].clone();
        assert!(errors.as_array().is_some_and(|errors| !errors.is_empty()), "{result}");
        assert_eq!(self.json().await, json!({"type": "complete", "id": id}));
        errors
    }

    /// The next frame must be a close with this code; returns the reason.
    pub async fn expect_close(&mut self, code: u16) -> String {
        match self.frame().await {
            Frame::Close(got, reason) => {
                assert_eq!(got, code, "close reason: {reason}");
                reason
            }
            other => panic!("expected close {code}, got {other:?}"),
        }
    }

    /// Runs a query or mutation as operation `id` and returns its `data`
    /// (the result and the completion, skipping other operations' messages,
    /// which are returned as the second value).
    pub async fn execute(&mut self, id: &str, query: &str) -> (Json, Vec<Json>) {
        self.start(id, query).await;
        let mut data = None;
        let mut others = Vec::new();
        loop {
            let message = self.json().await;
            if message["id"] != id {
                others.push(message);
                continue;
            }
            if message["type"] == self.proto.next() {
                assert!(message["payload"].get("errors").is_none(), "errors: {message}");
                data = Some(message["payload"]["data"].clone());
            } else if message["type"] == "complete" {
                return (data.expect("a result before complete"), others);
            } else {
                panic!("unexpected message for {id}: {message}");
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

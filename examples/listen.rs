//! Opens a two-channel WebSocket and prints every frame it receives, the
//! handshake (with the `channel_id` to subscribe with) first.
//!
//! `cargo run --example listen -- ws://127.0.0.1:8000/ws/graphql/ [token]`

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "ws://127.0.0.1:8000/ws/graphql/".to_owned());
    let mut request = url.into_client_request().expect("a ws:// URL");
    if let Some(token) = args.next() {
        let value = format!("Bearer {token}").parse().expect("a header-safe token");
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("server reachable");
    while let Some(message) = socket.next().await {
        match message {
            Ok(message) if message.is_text() => println!("{}", message.into_text().expect("text")),
            Ok(message) if message.is_close() => {
                println!("closed: {message:?}");
                break;
            }
            Ok(_) => {}
            Err(error) => {
                eprintln!("socket error: {error}");
                break;
            }
        }
    }
}

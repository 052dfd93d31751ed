//! The chat example: `cargo run --example chat`.
//!
//! SQLite in memory and the in-process channel layer; `DATABASE_URL` and
//! `PORT` (default 8000) override them.
#![allow(unreachable_pub)]

mod app;
#[path = "../common/mod.rs"]
mod common;

#[tokio::main]
async fn main() {
    common::init_logs();
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let db = app::connect(&url).await;
    let hub = graphex::Hub::default();
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("port free");
    println!("graphex chat example on http://{}", listener.local_addr().expect("bound"));
    println!("  POST /graphql             createUser, createMessage, messages, userId");
    println!("  GET  /graphql (WebSocket) subscription {{ messages(userId: \"1\") {{ content senderId }} }}");
    let shutdown = async {
        graphex::shutdown_signal().await; // Ctrl-C or SIGTERM
    };
    // TCP_NODELAY: small frames leave at once instead of waiting for the
    // peer's delayed ACK (Nagle's algorithm), up to 40 ms on Linux.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app::app(db, hub.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown({
            let hub = hub.clone();
            async move {
                shutdown.await;
                hub.shutdown(); // sockets write what they hold, then close with 1001
            }
        })
        .await
        .expect("server ran");
    // axum waited for HTTP requests and streams; the hub's own tasks
    // (WebSocket connections, shards) end here.
    common::exit_unless_clean(hub.stopped().await);
}

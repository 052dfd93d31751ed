//! The reference example: `cargo run --example reference`.
//!
//! SQLite in memory by default; `DATABASE_URL` selects another database
//! (e.g. `postgres://postgres@127.0.0.1:5432/test`). `PORT` sets the port
//! (default 8000).
#![allow(unreachable_pub)]

mod app;

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".to_owned());
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".to_owned());
    let db = app::connect(&url, None).await;
    let hub = graphex::Hub::default();
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await.expect("port free");
    println!("graphex reference example on http://{}", listener.local_addr().expect("bound"));
    println!("  POST /graphql       queries, mutations, subscribe/unsubscribe");
    println!("  GET  /ws/graphql/   two-channel WebSocket");
    println!("  GET  /graphql/client/  browser client page");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    axum::serve(listener, app::app(db, hub.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            hub.shutdown();
        })
        .await
        .expect("server ran");
}

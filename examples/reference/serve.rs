//! Running the reference example as a process: settings from the
//! environment, the channel layer they name, capture from PostgreSQL's log
//! when asked, the server until Ctrl+C.

use std::sync::Arc;

use graphex::layer::{ChannelLayer, RedisLayer, RedisOptions};
use tokio_util::sync::CancellationToken;

use crate::app;

/// What the example process is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `DATABASE_URL`, default `sqlite::memory:`.
    pub database_url: String,
    /// `GRAPHEX_LAYER`, default `memory://`; `redis://host:port/db` shares changes between processes.
    pub layer_url: String,
    /// `GRAPHEX_PREFIX`, default `graphex:`: namespaces the Redis channels.
    pub prefix: String,
    /// `PORT`, default 8000 (0 picks a free port).
    pub port: u16,
    /// `GRAPHEX_SIGNING_KEY`, default none: with a Redis layer, signs the
    /// requests processes send each other (see the README's "Redis trust model").
    pub signing_key: Option<String>,
    /// `GRAPHEX_CAPTURE`, default none: `postgres` captures every committed
    /// write of the example's tables from PostgreSQL's log instead of
    /// announcing from SeaORM's hooks (`DATABASE_URL` must be PostgreSQL,
    /// with `wal_level = logical`).
    pub capture: Option<String>,
    /// `GRAPHEX_CAPTURE_SLOT`, default `graphex_reference`: the replication
    /// slot (and publication) capture reads.
    pub capture_slot: String,
}

impl Settings {
    /// Reads the settings from the environment.
    pub fn from_env() -> Settings {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        Settings {
            database_url: var("DATABASE_URL", "sqlite::memory:"),
            layer_url: var("GRAPHEX_LAYER", "memory://"),
            prefix: var("GRAPHEX_PREFIX", "graphex:"),
            port: var("PORT", "8000").parse().expect("PORT is a port number"),
            signing_key: std::env::var("GRAPHEX_SIGNING_KEY").ok().filter(|key| !key.is_empty()),
            capture: std::env::var("GRAPHEX_CAPTURE").ok().filter(|capture| !capture.is_empty()),
            capture_slot: var("GRAPHEX_CAPTURE_SLOT", "graphex_reference"),
        }
    }
}

/// Runs the example server until Ctrl+C. Prints its address first.
pub async fn serve(settings: Settings) {
    let db = app::connect(&settings.database_url, None).await;
    let layer = match &settings.signing_key {
        Some(key) => {
            let options = RedisOptions::default().with_prefix(settings.prefix.clone()).with_signing_key(key.as_str());
            RedisLayer::connect_with(&settings.layer_url, options)
                .await
                .map(|layer| Arc::new(layer) as Arc<dyn ChannelLayer>)
        }
        None => graphex::layer::connect(&settings.layer_url, &settings.prefix).await,
    };
    let layer = match layer {
        Ok(layer) => layer,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(2);
        }
    };
    let hub = graphex::Hub::with_layer(graphex::Config::default(), layer);
    let capture = match settings.capture.as_deref() {
        None => None,
        Some("postgres") => match capture(&settings, &db, &hub).await {
            Ok(stop) => Some(stop),
            Err(error) => {
                eprintln!("error: {error}");
                std::process::exit(2);
            }
        },
        Some(other) => {
            eprintln!("error: GRAPHEX_CAPTURE={other:?}: the only capture is `postgres`");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", settings.port)).await.expect("port free");
    println!("graphex reference example on http://{}", listener.local_addr().expect("bound"));
    println!("  POST /graphql       queries, mutations, subscribe/unsubscribe");
    println!("  GET  /ws/graphql/   two-channel WebSocket");
    println!("  GET  /graphql/client/  browser client page");
    println!("  channel layer       {}", settings.layer_url);
    if capture.is_some() {
        println!("  capture             PostgreSQL's log, slot {}", settings.capture_slot);
    }
    let shutdown = {
        let hub = hub.clone();
        async move {
            graphex::shutdown_signal().await; // Ctrl-C or SIGTERM
            if let Some(stop) = capture {
                stop.cancel();
            }
            hub.shutdown();
        }
    };
    // TCP_NODELAY: small frames leave at once instead of waiting for the
    // peer's delayed ACK (Nagle's algorithm), up to 40 ms on Linux.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app::app(db, hub.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
        .expect("server ran");
    // axum waited for HTTP requests and streams; the hub's own tasks
    // (WebSocket connections, shards, capture, the layer) end here.
    crate::common::exit_unless_clean(hub.stopped().await);
}

/// Captures the example's four tables from PostgreSQL's log into `hub`:
/// prepares the publication and the slot (named by `GRAPHEX_CAPTURE_SLOT`),
/// then reads it until the returned token is cancelled. Capture stopping on
/// its own (a refusal, a broken stream) ends the process: writes would
/// otherwise go unannounced.
async fn capture(
    settings: &Settings,
    db: &sea_orm::DatabaseConnection,
    hub: &graphex::Hub,
) -> Result<CancellationToken, graphex::capture::CaptureRunError> {
    use graphex::capture::{PostgresCapture, ReplicationTarget};
    let target = ReplicationTarget::from_url(&settings.database_url)?;
    let capture = PostgresCapture::new(hub.clone(), target)
        .slot(&settings.capture_slot)
        .publication(&settings.capture_slot)
        .table::<app::user::Model>()
        .table::<app::note::Model>()
        .table::<app::message::Model>()
        .table::<app::comment::Model>();
    capture.prepare(db).await?;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            if let Err(error) = capture.run(stop).await {
                eprintln!("error: {error}");
                std::process::exit(3);
            }
        }
    });
    Ok(stop)
}

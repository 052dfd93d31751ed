//! A test body run on a fresh in-memory SQLite database and, when
//! `GRAPHEX_TEST_POSTGRES_URL` is set, again on a PostgreSQL schema of its own.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};

use crate::app;

/// The environment variable naming the PostgreSQL server of the second variant.
pub const POSTGRES_ENV: &str = "GRAPHEX_TEST_POSTGRES_URL";

/// Runs `body` on a fresh in-memory SQLite database, then, when
/// `GRAPHEX_TEST_POSTGRES_URL` is set, on a fresh PostgreSQL schema
/// (dropped afterwards, even if the body panics).
pub async fn each_database<F, Fut>(body: F)
where
    F: Fn(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let db = app::connect("sqlite::memory:", None).await;
    run_variant("sqlite", body(db)).await;
    on_postgres("PostgreSQL variant", body).await;
}

/// Runs `body` on a fresh PostgreSQL schema (dropped afterwards) when
/// `GRAPHEX_TEST_POSTGRES_URL` is set; says `skipped:` otherwise. For what
/// only PostgreSQL has.
pub async fn on_postgres<F, Fut>(what: &str, body: F)
where
    F: FnOnce(DatabaseConnection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(url) = std::env::var(POSTGRES_ENV) else {
        println!("skipped: {what} (set {POSTGRES_ENV})");
        return;
    };
    let schema = unique_schema();
    let db = app::connect(&url, Some(&schema)).await;
    let outcome = tokio::spawn(body(db)).await;
    drop_schema(&url, &schema).await;
    if let Err(error) = outcome {
        eprintln!("failed on PostgreSQL (schema {schema})");
        std::panic::resume_unwind(error.into_panic());
    }
}

async fn run_variant(name: &str, body: impl Future<Output = ()> + Send + 'static) {
    if let Err(error) = tokio::spawn(body).await {
        eprintln!("failed on the {name} variant");
        std::panic::resume_unwind(error.into_panic());
    }
}

/// A schema name no other test (of this or another process) uses.
fn unique_schema() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("graphex_e2e_{}_{counter}_{random:016x}", std::process::id())
}

async fn drop_schema(url: &str, schema: &str) {
    let Ok(admin) = Database::connect(url).await else { return };
    if let Err(error) = admin.execute_unprepared(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        eprintln!("could not drop schema {schema}: {error}");
    }
    let _ = admin.close().await;
}

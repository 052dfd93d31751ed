//! A measurement, not a check (ignored by default): native `userChanges`
//! fan-out over graphql-transport-ws on loopback.
//!
//! `cargo test --release --test it fanout_bench -- --ignored --nocapture`
//! (`GRAPHEX_BENCH_CLIENTS`, `GRAPHEX_BENCH_CHANGES` override 50 and 200).

use std::time::Instant;

use crate::app;
use crate::support::standard::{Client, Proto, serve, wait_for};
use graphex::Hub;
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::json;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --ignored --nocapture"]
async fn native_fan_out() {
    let clients = setting("GRAPHEX_BENCH_CLIENTS", 50);
    let changes = setting("GRAPHEX_BENCH_CHANGES", 200);
    let db = app::connect("sqlite::memory:", None).await;
    let hub = Hub::default();
    let server = serve(app::app(db.clone(), hub.clone())).await;
    let mut readers = Vec::new();
    for _ in 0..clients {
        let mut client = Client::connected(server.addr, Proto::Transport, json!({})).await;
        client.start("1", "subscription { userChanges(action: CREATE, data: [USERNAME]) { id data } }").await;
        readers.push(client);
    }
    wait_for("every subscription", || hub.channel_count() == clients).await;

    let started = Instant::now();
    let readers: Vec<_> = readers
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..changes {
                    let message = client.json().await;
                    assert_eq!(message["type"], "next");
                }
            })
        })
        .collect();
    hub.scope(async {
        for n in 0..changes {
            let row = app::user::ActiveModel {
                username: Set(format!("user{n}")),
                email: Set(format!("user{n}@example.com")),
                tenant: Set("bench".into()),
                ..Default::default()
            };
            row.insert(&db).await.expect("insert");
        }
    })
    .await;
    let announced = started.elapsed();
    for reader in readers {
        reader.await.expect("reader");
    }
    let elapsed = started.elapsed();
    let deliveries = clients * changes;
    println!(
        "{clients} clients x {changes} changes = {deliveries} events in {:.3} s ({:.0} events/s; inserts done after {:.3} s)",
        elapsed.as_secs_f64(),
        deliveries as f64 / elapsed.as_secs_f64(),
        announced.as_secs_f64()
    );
}

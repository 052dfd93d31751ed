//! Token expiry end to end (issue 19): a connection whose token expires is
//! closed, and its client re-authenticates by reconnecting with a fresh
//! token and resumes after its last cursor, losing nothing.
//!
//! The per-protocol endings at the exact instant are tested on paused time
//! in the runtime (`transport::{socket, standard, streaming}`); this test
//! runs on real time and asserts no duration.

use std::time::{Duration, SystemTime};

use crate::app;
use crate::support::http::post_json;
use crate::support::standard::{Client, Proto, serve, wait_for};
use graphex::{Authenticated, Authenticator, Hub, Principal, RouterBuilder};
use serde_json::json;

/// Tokens are `<user>:<expiry in ms since the epoch>`.
struct Expiring;

#[async_trait::async_trait]
impl Authenticator for Expiring {
    async fn authenticate(&self, token: &str) -> Option<Principal> {
        self.authenticate_with_expiry(token).await.map(|authenticated| authenticated.principal)
    }

    async fn authenticate_with_expiry(&self, token: &str) -> Option<Authenticated> {
        let (user, expiry) = token.split_once(':')?;
        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_millis(expiry.parse().ok()?);
        Some(Authenticated::new(Principal::new(user)).expires_at(expires_at))
    }
}

fn token(user: &str, valid_for: Duration) -> String {
    let expiry = SystemTime::now() + valid_for;
    format!("{user}:{}", expiry.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis())
}

const CREATES: &str = "subscription { userChanges(action: CREATE) { id cursor } }";

#[tokio::test]
async fn after_its_token_expires_a_client_reconnects_and_resumes_without_loss() {
    let db = app::connect("sqlite::memory:", None).await;
    let hub = Hub::default();
    let server = serve(RouterBuilder::new(app::schema(db), hub.clone()).authenticator(Expiring).build()).await;
    let create = |name: &str| {
        let query =
            format!(r#"mutation {{ createUser(username: "{name}", email: "{name}@x.org", tenant: "acme") {{ id }} }}"#);
        async move {
            let (status, body) = post_json(server.addr, "/graphql", None, &json!({"query": query})).await;
            assert_eq!(status, 200, "{body}");
        }
    };

    let mut client =
        Client::connected(server.addr, Proto::Transport, json!({"token": token("neo", Duration::from_millis(800))}))
            .await;
    client.start("1", CREATES).await;
    wait_for("the subscription", || hub.channel_count() == 1).await;
    create("first").await;
    let first = client.expect_type("next").await;
    let cursor = first["payload"]["data"]["userChanges"]["cursor"].as_str().unwrap().to_owned();
    // The token runs out: the connection ends, the subscription with it.
    assert_eq!(client.expect_close(4403).await, "Forbidden: token expired");
    wait_for("the channel closed", || hub.channel_count() == 0).await;
    create("missed").await;

    // A fresh token, and the subscription resumed after the last cursor.
    let mut client =
        Client::connected(server.addr, Proto::Transport, json!({"token": token("neo", Duration::from_secs(600))}))
            .await;
    client.start("1", &format!(r#"subscription {{ userChanges(action: CREATE, after: "{cursor}") {{ id }} }}"#)).await;
    let missed = client.expect_type("next").await;
    assert_eq!(missed["payload"]["data"]["userChanges"]["id"], json!(2), "{missed}");
    create("live").await;
    let live = client.expect_type("next").await;
    assert_eq!(live["payload"]["data"]["userChanges"]["id"], json!(3), "{live}");
}

//! The Redis trust model (issue 15): what a request published straight to a
//! process's request channel can do, signed envelopes, TLS and ACL URLs.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use graphex::layer::{MAX_NODE_REPLY, MAX_NODE_REQUEST, NodeRequests, RequestHandler};

use super::*;

/// What a process answers to a forwarded request it refuses to run.
const ONLY_LOCAL_SUBSCRIBES: &str =
    "a forwarded request may only subscribe or unsubscribe a channel of the process it is sent to";

/// The two-channel subscribe the raw requests below send.
const SUBSCRIBE: &str = "subscription ($c: String!) { \
    userSubscription(channelId: $c, action: CREATE, operation: SUBSCRIBE) { ok error } }";

/// A mutation that leaves a trace: the user `mallory`.
const MUTATION: &str =
    "mutation { createUser(username: \"mallory\", email: \"m@example.com\", tenant: \"t1\") { id } }";

/// A request published straight to process A's request channel runs only
/// when it subscribes one of A's channels: a mutation (alone, or named
/// beside a subscription), a channel of process B or of no process, the
/// old format with the client's raw token (both framings) run nothing: no
/// user created, no Redis subscription. The same hand-built envelope, well
/// formed, does subscribe, so the refusals are not format errors.
pub async fn forwarded_requests_run_only_local_subscribes() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start(&url).await;
    let spy = Spy::start(&url, &cluster.prefix).await;
    let mut on_a = cluster.a.http.ws().await;
    let on_b = cluster.b.http.ws().await;
    let node_a = on_a.channel_id[..8].to_owned();
    let mut raw = RawNode::start(&url, &cluster.prefix, &node_a).await;

    // The framing before envelopes had versions: `<id>\n<node>\n<body>`,
    // with the client's raw token. Dropped, unanswered.
    let old = json!({"query": MUTATION, "operation_name": null, "variables": {}, "token": "ann"});
    raw.publish(format!("7\n{}\n{old}", raw.node).into_bytes()).await;

    let request = |query: &str, name: Option<&str>, channel: &str| json!({"query": query, "operation_name": name, "variables": {"c": channel}, "principal": null});
    let both = format!("{} mutation M {}", SUBSCRIBE.replacen("subscription", "subscription S", 1), &MUTATION[9..]);
    let unknown = format!("{node_a}{}", "0".repeat(32));
    let refused = [
        ("a mutation", request(MUTATION, None, &on_a.channel_id)),
        ("a mutation named beside a subscription", request(&both, Some("M"), &on_a.channel_id)),
        ("a channel of another process", request(SUBSCRIBE, None, &on_b.channel_id)),
        ("a channel of no process", request(SUBSCRIBE, None, &unknown)),
    ];
    for (what, body) in &refused {
        let reply = raw.request(body).await.unwrap_or_else(|| panic!("{what}: answered"));
        assert_eq!(reply["errors"][0]["message"], json!(ONLY_LOCAL_SUBSCRIBES), "{what}: {reply}");
        assert_eq!(reply["data"], Json::Null, "{what}: {reply}");
    }
    // The old body in the new envelope: the token field is refused, not ignored.
    let mut with_token = request(SUBSCRIBE, None, &on_a.channel_id);
    with_token["token"] = json!("ann");
    let reply = raw.request(&with_token).await.expect("answered");
    let message = reply["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("malformed forwarded request: unknown field `token`"), "{reply}");

    // Nothing ran.
    assert!(
        raw.reply_within(&"0".repeat(32), Duration::from_millis(300)).await.is_none(),
        "the old framing is dropped"
    );
    let users = cluster.b.http.execute(None, "{ users { username } }", json!({})).await;
    assert_eq!(users["users"], json!([]), "no mutation ran");
    assert_eq!(spy.subscribers(&["users-create"]).await, 0, "no subscription was added");

    // The same envelope, asking what a forwarded request may ask, is run (as anonymous).
    let reply = raw.request(&request(SUBSCRIBE, None, &on_a.channel_id)).await.expect("answered");
    assert_eq!(reply["data"]["userSubscription"], json!({"ok": true, "error": null}), "{reply}");
    assert_eq!(spy.subscribers(&["users-create"]).await, 1);
    let ann = cluster.b.http.create_user("ann", "ann@example.com", "t1").await;
    on_a.expect(&user_frame("create", &ann)).await;
    Some(())
}

/// With a signing key on both processes, subscribing through the other
/// process works as before (the principal and its claims arrive: the scoped
/// subscription), and an unsigned request, which an unsigned deployment
/// runs (above), is dropped unanswered and runs nothing.
pub async fn forwarding_with_a_signing_key() -> Option<()> {
    let url = redis_url()?;
    let cluster = Cluster::start_signed(&url, Some("a secret the two processes share")).await;
    through_another_process(&url, &cluster).await;

    let spy = Spy::start(&url, &cluster.prefix).await;
    let on_a = cluster.a.http.ws().await;
    let mut raw = RawNode::start(&url, &cluster.prefix, &on_a.channel_id[..8]).await;
    let unsigned =
        json!({"query": SUBSCRIBE, "operation_name": null, "variables": {"c": on_a.channel_id}, "principal": null});
    let id = raw.send(&unsigned).await;
    assert!(raw.reply_within(&id, Duration::from_secs(1)).await.is_none(), "an unsigned request is not answered");
    assert_eq!(spy.subscribers(&["users-create"]).await, 0, "an unsigned request runs nothing");
    // Signed through B, the same subscribe runs.
    on_a.subscribe_ok(&cluster.b.http, "userSubscription", "action: CREATE, operation: SUBSCRIBE", None).await;
    assert_eq!(spy.subscribers(&["users-create"]).await, 1);
    Some(())
}

/// Node requests between two layers that share a key: answered; a body
/// over the bound is not sent, a reply over its bound is not sent either;
/// a layer with another key, or none, is not answered; a signed request
/// published again verbatim (a replay) runs nothing. Each drop is counted.
pub async fn node_requests_are_signed_bounded_and_run_once() -> Option<()> {
    let url = redis_url()?;
    let prefix = unique_prefix();
    let key = "the deployment's key";
    let spy = Spy::start(&url, &prefix).await;
    let server = Arc::new(node_layer(&url, &prefix, Some(key)).await);
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let handler: RequestHandler = Arc::new(move |body: Bytes| {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if body.as_ref() == b"big" {
                return Bytes::from(vec![b'x'; MAX_NODE_REPLY + 1]);
            }
            Bytes::from([b"echo:".as_slice(), &body].concat())
        })
    });
    let server_node = "5e7e0001";
    server.serve_requests(server_node, handler);
    let client = node_layer(&url, &prefix, Some(key)).await;
    client.serve_requests("c1e00001", Arc::new(|_| Box::pin(async { Bytes::new() })));

    let reply = client.request(server_node, Bytes::from_static(b"hello")).await.expect("answered");
    assert_eq!(reply.as_deref(), Some(b"echo:hello".as_slice()));
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let error = client.request(server_node, Bytes::from(vec![b'x'; MAX_NODE_REQUEST + 1])).await.err();
    assert!(error.expect("refused").to_string().contains("too large"));
    assert_eq!(client.stats().envelopes_oversized, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "an oversized request is not sent");

    assert!(client.request(server_node, Bytes::from_static(b"big")).await.is_err(), "no reply over the bound");
    assert_eq!(server.stats().envelopes_oversized, 1);

    for (node, other) in [("c1e00002", Some("another key")), ("c1e00003", None)] {
        let outsider = node_layer(&url, &prefix, other).await;
        outsider.serve_requests(node, Arc::new(|_| Box::pin(async { Bytes::new() })));
        assert!(outsider.request(server_node, Bytes::from_static(b"hello")).await.is_err(), "{other:?}: unanswered");
    }
    assert_eq!(server.stats().envelopes_unverified, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "only the first request and `big` ran");

    // The first request, published again as it was.
    let channel = format!("{prefix}~node:{server_node}");
    let first = {
        let mut messages = spy.messages.lock().await;
        loop {
            let message = tokio::time::timeout(TIMEOUT, messages.next()).await.expect("seen").expect("open");
            if message.get_channel_name() == channel && message.get_payload_bytes().ends_with(b"\nhello") {
                break message.get_payload_bytes().to_vec();
            }
        }
    };
    let _: i64 = spy.publisher.clone().publish(&channel, first).await.expect("published");
    wait_until("the replay is dropped", || server.stats().envelopes_stale == 1).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a replayed request runs nothing");
    assert_eq!(client.stats().envelopes_unverified + client.stats().envelopes_malformed, 0, "replies verified");
    Some(())
}

/// `redis://user:password@host` logs in as an ACL user (created for the
/// test under a unique name, deleted after); a wrong password is refused.
pub async fn acl_credentials_in_the_url() -> Option<()> {
    let url = redis_url()?;
    let Some(address) = url.strip_prefix("redis://").filter(|address| !address.contains('@')) else {
        println!("skipped: {REDIS_ENV} must be a redis:// URL without credentials");
        return None;
    };
    let admin = redis::Client::open(url.as_str()).expect("Redis URL");
    let user = AclUser { name: unique_prefix().trim_end_matches(':').to_owned(), admin };
    let password = "an-acl-password";
    let prefix = unique_prefix();
    let mut connection = user.admin.get_multiplexed_async_connection().await.expect("Redis answers");
    // The rights the README lists: this prefix's channels and the commands the layer sends.
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg(&user.name).arg("reset").arg("on").arg(format!(">{password}"));
    setuser.arg("resetchannels").arg(format!("&{prefix}*"));
    setuser.arg(&["+publish", "+subscribe", "+unsubscribe", "+pubsub", "+ping"][..]);
    setuser.exec_async(&mut connection).await.expect("ACL SETUSER");
    let as_user = format!("redis://{}:{password}@{address}", user.name);
    let hub = || async {
        let options = RedisOptions::default().with_prefix(prefix.clone());
        let layer = RedisLayer::connect_with(&as_user, options).await.expect("the ACL user logs in");
        Hub::with_layer(Config::default(), Arc::new(layer))
    };
    let (a, b) = (hub().await, hub().await);
    let mut received = a.join_groups(["acl"]).await.expect("joined");
    b.broadcast("acl", json!({"text": "hi"})).await.expect("broadcast");
    let payload = tokio::time::timeout(TIMEOUT, received.next()).await.expect("in time").expect("open");
    assert_eq!(*payload, json!({"text": "hi"}));
    // Node requests too (PUBSUB NUMSUB, the request and reply channels).
    let server = node_layer(&as_user, &prefix, None).await;
    server.serve_requests("acc10001", Arc::new(|_| Box::pin(async { Bytes::from_static(b"pong") })));
    let client = node_layer(&as_user, &prefix, None).await;
    client.serve_requests("acc10002", Arc::new(|_| Box::pin(async { Bytes::new() })));
    let reply = client.request("acc10001", Bytes::from_static(b"ping")).await.expect("answered under the ACL");
    assert_eq!(reply.as_deref(), Some(b"pong".as_slice()));
    let whoami: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut connection).await.expect("WHOAMI");
    assert_eq!(whoami, "default", "the admin connection is not the one under test");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut connection).await.expect("CLIENT LIST");
    assert!(clients.contains(&format!("user={}", user.name)), "the layers are logged in as the ACL user");

    let wrong = format!("redis://{}:wrong@{address}", user.name);
    let error = RedisLayer::connect_with(&wrong, RedisOptions::default().with_prefix(prefix.clone())).await.err();
    assert!(matches!(error, Some(LayerError::Unavailable { .. })), "a wrong password is refused: {error:?}");
    Some(())
}

/// `rediss://` speaks TLS (rustls): against the plain-text test Redis the
/// handshake fails, instead of the URL being refused as unsupported.
pub async fn tls_urls_are_supported() -> Option<()> {
    let url = redis_url()?;
    let tls = url.replacen("redis://", "rediss://", 1);
    let options = RedisOptions::default().with_prefix(unique_prefix()).with_connect_timeout(Duration::from_secs(2));
    let error = RedisLayer::connect_with(&tls, options).await.expect_err("plain text is not TLS");
    let text = error.to_string();
    assert!(matches!(error, LayerError::Unavailable { .. }), "{text}");
    assert!(!text.contains("feature is not enabled") && !text.contains("invalid Redis URL"), "{text}");
    let layer = graphex::layer::connect(&tls, "x:").await.err().expect("plain text is not TLS");
    assert!(!matches!(layer, LayerError::Unsupported(_)), "{layer}");
    Some(())
}

/// A `rediss://` URL connects, publishes and receives over TLS: two hubs on
/// a TLS-only `redis-server` of the test's own (self-signed certificate,
/// hence `#insecure`, which only the tests compile in) exchange a broadcast.
pub async fn tls_connections_carry_messages() -> Option<()> {
    redis_url()?;
    let openssl = std::process::Command::new("openssl").arg("version").output().is_ok();
    let server = std::process::Command::new("redis-server").arg("--version").output().is_ok();
    if !openssl || !server {
        assert!(
            std::env::var_os(REDIS_ENV).is_none(),
            "openssl and redis-server must be installed when {REDIS_ENV} is set"
        );
        println!("skipped: needs openssl and redis-server");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("graphex-tls-{}", unique_prefix().trim_end_matches(':')));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "openssl: {}", String::from_utf8_lossy(&made.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("port").port();
    let _server = Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string(), "--bind", "127.0.0.1", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server starts");
    let url = format!("rediss://127.0.0.1:{port}/#insecure");
    let prefix = unique_prefix();
    let connect = || async {
        let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
        loop {
            let options =
                RedisOptions::default().with_prefix(prefix.clone()).with_connect_timeout(Duration::from_secs(2));
            match RedisLayer::connect_with(&url, options).await {
                Ok(layer) => return layer,
                Err(error) => {
                    assert!(tokio::time::Instant::now() < deadline, "no TLS connection: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };
    let receiving = Hub::with_layer(Config::default(), Arc::new(connect().await));
    let sending = Hub::with_layer(Config::default(), Arc::new(connect().await));
    let mut receiver = receiving.join_groups(["tls.room"]).await.expect("joined over TLS");
    sending.broadcast("tls.room", json!({"over": "tls"})).await.expect("broadcast over TLS");
    let payload = tokio::time::timeout(TIMEOUT, receiver.next()).await.expect("in time").expect("a payload");
    assert_eq!(*payload, json!({"over": "tls"}));
    let _ = std::fs::remove_dir_all(&dir);
    Some(())
}

// ---------------------------------------------------------------------------
// Fixtures

async fn node_layer(url: &str, prefix: &str, key: Option<&str>) -> RedisLayer {
    let mut options =
        RedisOptions::default().with_prefix(prefix.to_owned()).with_request_timeout(Duration::from_millis(500));
    if let Some(key) = key {
        options = options.with_signing_key(key);
    }
    RedisLayer::connect_with(url, options).await.expect("Redis answers")
}

/// An ACL user of the test Redis, deleted when dropped.
struct AclUser {
    name: String,
    admin: redis::Client,
}

impl Drop for AclUser {
    fn drop(&mut self) {
        match self.admin.get_connection() {
            Ok(mut connection) => {
                if let Err(error) = redis::cmd("ACL").arg("DELUSER").arg(&self.name).exec(&mut connection) {
                    eprintln!("ACL user {} not deleted: {error}", self.name);
                }
            }
            Err(error) => eprintln!("ACL user {} not deleted: {error}", self.name),
        }
    }
}

/// A hand-made process on Redis: publishes requests to a node's request
/// channel in the documented envelope (unsigned) and reads the replies on
/// its own reply channel.
struct RawNode {
    replies: futures_util::stream::BoxStream<'static, redis::Msg>,
    publisher: redis::aio::MultiplexedConnection,
    /// The target's request channel.
    requests: String,
    /// This fake process's node id.
    node: String,
}

impl RawNode {
    async fn start(url: &str, prefix: &str, target: &str) -> RawNode {
        let node = "7e570000".to_owned();
        let client = redis::Client::open(url).expect("Redis URL");
        let mut pubsub = client.get_async_pubsub().await.expect("Redis answers");
        pubsub.subscribe(format!("{prefix}~reply:{node}")).await.expect("subscribe");
        let publisher = client.get_multiplexed_async_connection().await.expect("Redis answers");
        RawNode {
            replies: pubsub.into_on_message().boxed(),
            publisher,
            requests: format!("{prefix}~node:{target}"),
            node,
        }
    }

    async fn publish(&mut self, payload: Vec<u8>) {
        let _: i64 = self.publisher.publish(&self.requests, payload).await.expect("published");
    }

    /// Sends `body` as an unsigned `graphex/1` request; returns its id.
    async fn send(&mut self, body: &Json) -> String {
        use std::hash::{BuildHasher, Hasher};
        let random = || std::collections::hash_map::RandomState::new().build_hasher().finish();
        let id = format!("{:016x}{:016x}", random(), random());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
        self.publish(format!("graphex/1 request {id} {} {now} -\n{body}", self.node).into_bytes()).await;
        id
    }

    /// Sends `body` and waits for its reply.
    async fn request(&mut self, body: &Json) -> Option<Json> {
        let id = self.send(body).await;
        self.reply_within(&id, TIMEOUT).await
    }

    /// The reply to request `id`, if it comes within `limit`.
    async fn reply_within(&mut self, id: &str, limit: Duration) -> Option<Json> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let message = tokio::time::timeout_at(deadline, self.replies.next()).await.ok()?.expect("open");
            let payload = message.get_payload_bytes();
            let (header, body) = payload.split_at(payload.iter().position(|byte| *byte == b'\n').expect("a header"));
            let header = std::str::from_utf8(header).expect("UTF-8 header");
            let fields: Vec<&str> = header.split(' ').collect();
            assert_eq!(fields[..2], ["graphex/1", "reply"], "{header}");
            if fields[2] == id {
                return Some(serde_json::from_slice(&body[1..]).expect("a JSON reply"));
            }
        }
    }
}

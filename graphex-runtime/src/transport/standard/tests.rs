use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};
use tokio_util::sync::PollSender;

use super::*;

struct Query;

#[Object(crate = "async_graphql")]
impl Query {
    async fn answer(&self) -> i32 {
        42
    }
}

/// Drives the loop over in-memory channels instead of a socket.
fn connect(
    config: ProtocolConfig,
) -> (mpsc::UnboundedSender<Result<Message, std::convert::Infallible>>, mpsc::Receiver<Message>) {
    let (client_tx, mut server_rx) = mpsc::unbounded_channel();
    let (server_tx, client_rx) = mpsc::channel(16);
    let server_rx = futures_util::stream::poll_fn(move |cx| server_rx.poll_recv(cx));
    let server_tx = PollSender::new(server_tx);
    let connection = Connection::new(
        1,
        "graphql-transport-ws",
        HeaderMap::new(),
        None,
        Arc::new(crate::transport::auth::Anonymous),
        None,
    );
    let schema = Schema::new(Query, EmptyMutation, EmptySubscription);
    tokio::spawn(serve_connection(
        schema,
        Hub::default(),
        Arc::new(DefaultHooks),
        config,
        connection,
        Protocols::GraphQLWS,
        server_tx,
        server_rx,
    ));
    (client_tx, client_rx)
}

fn text(message: Json) -> Result<Message, std::convert::Infallible> {
    Ok(Message::Text(message.to_string().into()))
}

async fn json(rx: &mut mpsc::Receiver<Message>) -> Json {
    match rx.recv().await {
        Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn a_query_over_channels() {
    let (tx, mut rx) = connect(ProtocolConfig::default());
    tx.send(text(json!({"type": "connection_init"}))).unwrap();
    assert_eq!(json(&mut rx).await, json!({"type": "connection_ack"}));
    tx.send(text(json!({"type": "subscribe", "id": "q", "payload": {"query": "{ answer }"}}))).unwrap();
    assert_eq!(json(&mut rx).await, json!({"type": "next", "id": "q", "payload": {"data": {"answer": 42}}}));
    assert_eq!(json(&mut rx).await, json!({"type": "complete", "id": "q"}));
    drop(tx);
    assert!(rx.recv().await.is_none(), "the loop ends with the client");
}

#[tokio::test]
async fn init_timeout_over_channels() {
    let (_tx, mut rx) = connect(ProtocolConfig { init_timeout: Duration::from_millis(20), ..Default::default() });
    match rx.recv().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CLOSE_INIT_TIMEOUT),
        other => panic!("expected a close, got {other:?}"),
    }
}

mod decoder {
    use proptest::prelude::*;

    use super::*;

    /// A client message: arbitrary bytes, or a protocol-shaped JSON
    /// object with arbitrary fields.
    fn message() -> impl Strategy<Value = Bytes> {
        let kind = prop_oneof![
            Just("connection_init".to_owned()),
            Just("subscribe".to_owned()),
            Just("start".to_owned()),
            Just("complete".to_owned()),
            Just("stop".to_owned()),
            Just("ping".to_owned()),
            Just("pong".to_owned()),
            Just("connection_terminate".to_owned()),
            ".{0,12}",
        ];
        let id = prop_oneof![
            Just(Json::Null),
            (0u32..4).prop_map(|n| Json::String(n.to_string())),
            (100usize..300).prop_map(|n| Json::String("i".repeat(n))),
            any::<i64>().prop_map(Json::from),
            ".{0,8}".prop_map(Json::String),
        ];
        let payload = prop_oneof![
            Just(Json::Null),
            Just(json!({"query": "{ answer }"})),
            Just(json!({"query": 5})),
            ".{0,16}".prop_map(|text| json!({"query": text, "variables": text})),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256).prop_map(Bytes::from),
            (kind, id, payload).prop_map(|(kind, id, payload)| {
                Bytes::from(json!({"type": kind, "id": id, "payload": payload}).to_string())
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of client messages is decided without a panic,
        /// and what a connection keeps stays within its bounds.
        #[test]
        fn any_client_input_is_decided_within_bounds(
            transport_ws: bool,
            messages in proptest::collection::vec(message(), 1..24),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let config = ProtocolConfig::default().with_max_operations(3).with_max_operation_id_bytes(150);
            let hooks: Arc<dyn ConnectionHooks> = Arc::new(DefaultHooks);
            let protocol = if transport_ws { "graphql-transport-ws" } else { "graphql-ws" };
            let connection =
                Connection::new(1, protocol, HeaderMap::new(), None, Arc::new(crate::transport::auth::Anonymous), None);
            let mut ops = Operations { transport_ws, ..Operations::default() };
            runtime.block_on(async {
                for message in messages {
                    if let Incoming::Forward(bytes) = incoming_message(&mut ops, &hooks, &connection, &config, None, message).await
                        && serde_json::from_slice::<ClientHead>(&bytes).is_ok_and(|head| head.kind == "connection_init")
                    {
                        // The ack async-graphql would send.
                        ops.acked = true;
                    }
                    prop_assert!(ops.active.len() <= config.max_operations);
                    prop_assert!(ops.active.iter().all(|id| id.len() <= config.max_operation_id_bytes));
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn gather_collects_until_the_deadline_or_enough() {
    let (tx, mut rx) = mpsc::unbounded_channel::<u32>();
    let start = tokio::time::Instant::now();
    let interval = Duration::from_millis(3);
    // Frames arriving within the hold join the batch; the hold ends at its deadline.
    let sender = tx.clone();
    tokio::spawn(async move {
        for frame in [2, 3] {
            tokio::time::sleep(Duration::from_millis(1)).await;
            sender.send(frame).unwrap();
        }
    });
    let mut batch = vec![1];
    gather(&mut rx, &mut batch, start + interval, 8).await;
    assert_eq!(batch, vec![1, 2, 3]);
    assert_eq!(tokio::time::Instant::now(), start + interval, "held until the deadline");
    // A batch that reaches `enough` goes at once.
    for frame in 4..=10 {
        tx.send(frame).unwrap();
    }
    let mut batch = Vec::new();
    let now = tokio::time::Instant::now();
    gather(&mut rx, &mut batch, now + interval, 4).await;
    assert_eq!(batch, vec![4, 5, 6, 7]);
    assert_eq!(tokio::time::Instant::now(), now, "no wait once enough is gathered");
    // A closed queue ends the hold.
    drop(tx);
    let mut batch = Vec::new();
    gather(&mut rx, &mut batch, now + interval, 8).await;
    assert_eq!(batch, vec![8, 9, 10]);
    assert_eq!(tokio::time::Instant::now(), now, "no wait on a closed queue");
}

mod expiry {
    use std::time::SystemTime;

    use async_graphql::Subscription;
    use futures_util::Stream;

    use super::*;
    use crate::transport::auth::Authenticated;

    /// How long `ann`'s tokens last; `bob`'s do not expire.
    const LIFETIME: Duration = Duration::from_secs(60);
    /// Below the deadline by more than the wall clock moves between the
    /// authentication and the deadline's computation.
    const MARGIN: Duration = Duration::from_millis(50);

    struct Tokens;

    #[async_trait::async_trait]
    impl Authenticator for Tokens {
        async fn authenticate(&self, token: &str) -> Option<Principal> {
            Some(Principal::new(token))
        }

        async fn authenticate_with_expiry(&self, token: &str) -> Option<Authenticated> {
            let authenticated = Authenticated::new(Principal::new(token));
            Some(if token == "ann" { authenticated.expires_at(SystemTime::now() + LIFETIME) } else { authenticated })
        }
    }

    struct Ticks;

    #[Subscription(crate = "async_graphql")]
    impl Ticks {
        /// One result, then nothing: the operation stays active.
        async fn ticks(&self) -> impl Stream<Item = i32> {
            futures_util::stream::iter([1]).chain(futures_util::stream::pending())
        }
    }

    type Client = (mpsc::UnboundedSender<Result<Message, std::convert::Infallible>>, mpsc::Receiver<Message>);

    /// A connection of `protocol` on `hub`, initialised with `token`, running `ticks` as operation `s`.
    async fn ticking(hub: &Hub, protocol: Protocols, token: &str) -> Client {
        let (client_tx, mut server_rx) = mpsc::unbounded_channel();
        let (server_tx, mut client_rx) = mpsc::channel(16);
        let server_rx = futures_util::stream::poll_fn(move |cx| server_rx.poll_recv(cx));
        let name = protocol.sec_websocket_protocol();
        let connection = Connection::new(1, name, HeaderMap::new(), None, Arc::new(Tokens), None);
        let schema = Schema::new(Query, EmptyMutation, Ticks);
        let config = ProtocolConfig::default().with_keep_alive(None);
        tokio::spawn(serve_connection(
            schema,
            hub.clone(),
            Arc::new(DefaultHooks),
            config,
            connection,
            protocol,
            PollSender::new(server_tx),
            server_rx,
        ));
        client_tx.send(text(json!({"type": "connection_init", "payload": {"token": token}}))).unwrap();
        assert_eq!(json(&mut client_rx).await["type"], "connection_ack");
        let start = if protocol == Protocols::GraphQLWS { "subscribe" } else { "start" };
        client_tx
            .send(text(json!({"type": start, "id": "s", "payload": {"query": "subscription { ticks }"}})))
            .unwrap();
        assert_eq!(json(&mut client_rx).await["payload"]["data"], json!({"ticks": 1}));
        (client_tx, client_rx)
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn close_of(message: Option<Message>) -> (u16, String) {
        match message {
            Some(Message::Close(Some(frame))) => (frame.code, frame.reason.to_string()),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn graphql_transport_ws_closes_4403_when_the_token_expires_and_not_before() {
        let hub = Hub::default();
        let (_tx, mut rx) = ticking(&hub, Protocols::GraphQLWS, "ann").await;
        tokio::time::advance(LIFETIME - MARGIN).await;
        settle().await;
        assert!(rx.try_recv().is_err(), "still open before the expiry");
        tokio::time::advance(MARGIN).await;
        settle().await;
        assert_eq!(close_of(rx.recv().await), (CLOSE_FORBIDDEN, "Forbidden: token expired".to_owned()));
        assert_eq!(hub.stats().tokens_expired, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_graphql_ws_ends_each_operation_with_an_error_then_complete() {
        let hub = Hub::default();
        let (_tx, mut rx) = ticking(&hub, Protocols::SubscriptionsTransportWS, "ann").await;
        tokio::time::advance(LIFETIME - MARGIN).await;
        settle().await;
        assert!(rx.try_recv().is_err(), "still open before the expiry");
        tokio::time::advance(MARGIN).await;
        settle().await;
        let error = json!({"message": "token expired", "extensions": {"code": "TOKEN_EXPIRED"}});
        assert_eq!(
            json(&mut rx).await,
            json!({"type": "data", "id": "s", "payload": {"data": null, "errors": [error]}})
        );
        assert_eq!(json(&mut rx).await, json!({"type": "complete", "id": "s"}));
        assert_eq!(close_of(rx.recv().await), (CLOSE_FORBIDDEN, "Forbidden: token expired".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn revoking_a_principal_ends_its_connections_of_both_protocols_only() {
        let hub = Hub::default();
        let (_ann_tx, mut ann) = ticking(&hub, Protocols::GraphQLWS, "ann").await;
        let (_legacy_tx, mut ann_legacy) = ticking(&hub, Protocols::SubscriptionsTransportWS, "ann").await;
        let (bob_tx, mut bob) = ticking(&hub, Protocols::GraphQLWS, "bob").await;
        assert_eq!(hub.session_count(), 3);
        hub.revoke("ann").await.unwrap();
        settle().await;
        assert_eq!(close_of(ann.recv().await), (CLOSE_FORBIDDEN, "Forbidden: revoked".to_owned()));
        let error = json!({"message": "revoked", "extensions": {"code": "REVOKED"}});
        assert_eq!(json(&mut ann_legacy).await["payload"]["errors"], json!([error]));
        assert_eq!(json(&mut ann_legacy).await, json!({"type": "complete", "id": "s"}));
        assert_eq!(close_of(ann_legacy.recv().await).0, CLOSE_FORBIDDEN);
        // Bob's connection goes on.
        bob_tx.send(text(json!({"type": "subscribe", "id": "q", "payload": {"query": "{ answer }"}}))).unwrap();
        assert_eq!(json(&mut bob).await["payload"]["data"], json!({"answer": 42}));
        assert_eq!(hub.stats().revoked, 2);
        assert_eq!(hub.session_count(), 1);
    }
}

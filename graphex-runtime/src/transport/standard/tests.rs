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

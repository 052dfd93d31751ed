//! Subscriptions over plain HTTP, for clients without WebSockets: which
//! streaming format a request asked for (`Accept`), the response body in
//! that format (multipart, server-sent events), and the slot each streaming
//! response holds in its client's count.
//!
//! Calls `hub` (the per-client count).

use std::time::Duration;

use std::sync::Arc;

use async_graphql::Response;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use crate::subscribe::shared::Frame;
use crate::transport::auth;

use crate::hub::{ClientKey, Hub, Resource};

/// How a client without WebSockets asked for a subscription's results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Streaming {
    /// `multipart/mixed; boundary="graphql"; subscriptionSpec="1.0"` (Apollo's HTTP subscriptions).
    Multipart,
    /// `text/event-stream` (GraphQL over SSE, distinct connections: `next` events, then `complete`).
    ServerSentEvents,
}

pub(crate) fn streaming(headers: &HeaderMap) -> Option<Streaming> {
    let accept = headers.get(axum::http::header::ACCEPT)?.to_str().ok()?;
    if async_graphql::http::is_accept_multipart_mixed(accept) {
        Some(Streaming::Multipart)
    } else if accept.split(',').any(|item| item.trim().starts_with("text/event-stream")) {
        Some(Streaming::ServerSentEvents)
    } else {
        None
    }
}

/// Whether the client takes nothing but an event stream (`Accept` lists
/// `text/event-stream` and no JSON type, nor `*/*`), as the graphql-sse
/// client asks in its distinct connections mode, for queries and mutations
/// too. A client that also takes JSON gets the JSON answer it always got.
pub(crate) fn event_stream_only(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(axum::http::header::ACCEPT).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    let types: Vec<&str> = accept.split(',').map(|item| item.split(';').next().unwrap_or("").trim()).collect();
    types.contains(&"text/event-stream")
        && !types
            .iter()
            .any(|ty| matches!(*ty, "*/*" | "application/*" | "application/json" | "application/graphql-response+json"))
}

/// One result of a streaming response: the operation's own (async-graphql
/// rendered it), or a shared execution's payload, serialized once for every
/// member (`subscribe/shared.rs`).
pub(crate) enum Part {
    Own(Box<Response>),
    Shared(Arc<str>),
}

impl Part {
    pub(crate) fn json(&self) -> Option<Bytes> {
        match self {
            Part::Own(response) => serde_json::to_vec(response).ok().map(Bytes::from),
            Part::Shared(payload) => Some(Bytes::copy_from_slice(payload.as_bytes())),
        }
    }
}

/// The operation's own results, with a shared execution's frames (when
/// it joined one) merged in order: queued frames go before anything the
/// operation yields, so the execution's last results precede the end.
pub(crate) fn parts(
    mut results: BoxStream<'static, Response>,
    outbox: Option<mpsc::UnboundedReceiver<Frame>>,
) -> BoxStream<'static, Part> {
    let Some(mut outbox) = outbox else { return results.map(|response| Part::Own(Box::new(response))).boxed() };
    let (tx, rx) = mpsc::channel::<Part>(1);
    let driver = async move {
        loop {
            tokio::select! {
                biased;
                Some(frame) = outbox.recv() => {
                    if !shared_part(&tx, frame).await {
                        return;
                    }
                }
                item = results.next() => {
                    while let Ok(frame) = outbox.try_recv() {
                        if !shared_part(&tx, frame).await {
                            return;
                        }
                    }
                    let Some(response) = item else { return };
                    if tx.send(Part::Own(Box::new(response))).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    driven(rx, driver)
}

/// The parts of a response opened with a principal's token, until the
/// token expires (`deadline`) or the principal is revoked (`session`):
/// then one error result, and the end (the operation is dropped with the
/// rest of the stream, which frees its channel).
pub(crate) fn until_ended(
    parts: BoxStream<'static, Part>,
    hub: &Hub,
    deadline: Option<tokio::time::Instant>,
    session: Option<crate::hub::Session>,
) -> BoxStream<'static, Part> {
    if deadline.is_none() && session.is_none() {
        return parts;
    }
    let hub = hub.clone();
    let ending = auth::Ending::new(session.as_ref(), auth::expiry(deadline));
    let state = Some((parts, ending, session));
    futures_util::stream::unfold(state, move |state| {
        let hub = hub.clone();
        async move {
            let (mut parts, mut ending, session) = state?;
            tokio::select! {
                biased;
                ended = &mut ending => {
                    if ended == auth::Ended::TokenExpired {
                        hub.counters().tokens_expired.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Some((Part::Own(Box::new(ended.response())), None))
                }
                part = parts.next() => part.map(|part| (part, Some((parts, ending, session)))),
            }
        }
    })
    .boxed()
}

/// Passes on a shared frame unless its member ended as a slow consumer;
/// false when the response is gone.
async fn shared_part(tx: &mpsc::Sender<Part>, frame: Frame) -> bool {
    frame.member.taken();
    !frame.member.live() || tx.send(Part::Shared(frame.payload)).await.is_ok()
}

/// The items `driver` sends to `rx`, as a stream that polls the driver
/// itself: dropping the stream drops both (no task outlives the response).
fn driven<T: Send + 'static>(
    rx: mpsc::Receiver<T>,
    driver: impl std::future::Future<Output = ()> + Send + 'static,
) -> BoxStream<'static, T> {
    let driver = futures_util::stream::once(driver).filter_map(|()| async { None::<T> });
    let received = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    futures_util::stream::select(received, driver).boxed()
}

/// A subscription's results as an HTTP stream. Dropping the response (the
/// client went away) drops the operation, which frees its hub channel.
pub(crate) fn stream_response(results: BoxStream<'static, Part>, format: Streaming) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    match format {
        Streaming::Multipart => {
            let body = multipart(results, HEARTBEAT).map(Ok::<_, std::convert::Infallible>);
            (
                [(axum::http::header::CONTENT_TYPE, "multipart/mixed; boundary=graphql")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Streaming::ServerSentEvents => {
            let events = results
                .map(|part| match part {
                    Part::Own(response) => Event::default().event("next").json_data(response),
                    // Compact JSON has no line break: one `data:` line, as json_data writes it.
                    Part::Shared(payload) => Ok(Event::default().event("next").data(&*payload)),
                })
                .chain(futures_util::stream::once(async { Ok(Event::default().event("complete").data("")) }));
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
    }
}

/// Interval of multipart heartbeats (`{}` parts).
const HEARTBEAT: Duration = Duration::from_secs(30);

const PART_HEADER: &[u8] = b"--graphql\r\nContent-Type: application/json\r\n\r\n";

/// Apollo's multipart subscription format, as async-graphql's
/// `create_multipart_mixed_stream` writes it (a part per result, a `{}`
/// part every `heartbeat`, the closing boundary at the end), over parts
/// that may be serialized already.
fn multipart(mut parts: BoxStream<'static, Part>, heartbeat: Duration) -> BoxStream<'static, Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let driver = async move {
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        loop {
            let chunk = tokio::select! {
                part = parts.next() => match part {
                    Some(part) => match part.json() {
                        Some(json) => {
                            let mut chunk = Vec::with_capacity(PART_HEADER.len() + json.len() + 2);
                            chunk.extend_from_slice(PART_HEADER);
                            chunk.extend_from_slice(&json);
                            chunk.extend_from_slice(b"\r\n");
                            Bytes::from(chunk)
                        }
                        None => continue,
                    },
                    None => break,
                },
                _ = beat.tick() => Bytes::from([PART_HEADER, b"{}\r\n"].concat()),
            };
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"--graphql--\r\n")).await;
    };
    driven(rx, driver)
}

/// A streaming response's place in its client's count, given back when
/// the response (and its subscription) is dropped.
pub(crate) struct StreamSlot {
    pub(crate) hub: Hub,
    pub(crate) client: Option<ClientKey>,
    /// Counts the response in `graphex_connections_open` while it lives.
    pub(crate) _open: crate::hub::Connected,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.hub.release(self.client.as_ref(), Resource::Streams, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn responses() -> Vec<Response> {
        vec![
            Response::new(async_graphql::Value::from_json(serde_json::json!({"userChanges": {"id": 1}})).unwrap()),
            Response::from_errors(vec![async_graphql::ServerError::new("slow consumer: outgoing queue full", None)]),
        ]
    }

    async fn body(stream: BoxStream<'static, Bytes>) -> Vec<u8> {
        stream.collect::<Vec<_>>().await.concat()
    }

    #[tokio::test]
    async fn multipart_parts_are_async_graphql_s_bytes_whether_shared_or_not() {
        let theirs = body(async_graphql::http::create_multipart_mixed_stream(
            futures_util::stream::iter(responses()),
            HEARTBEAT,
        ))
        .await;
        let own =
            futures_util::stream::iter(responses().into_iter().map(|response| Part::Own(Box::new(response)))).boxed();
        assert_eq!(
            String::from_utf8(body(multipart(own, HEARTBEAT)).await).unwrap(),
            String::from_utf8(theirs.clone()).unwrap()
        );
        let shared: Vec<Part> = responses()
            .iter()
            .map(|response| Part::Shared(Arc::from(serde_json::to_string(response).unwrap())))
            .collect();
        let shared = futures_util::stream::iter(shared).boxed();
        assert_eq!(body(multipart(shared, HEARTBEAT)).await, theirs);
    }

    #[tokio::test(start_paused = true)]
    async fn multipart_heartbeats_every_interval() {
        let (tx, rx) = mpsc::channel::<Part>(1);
        let parts =
            futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|part| (part, rx)) }).boxed();
        let mut chunks = multipart(parts, HEARTBEAT);
        let heartbeat = [PART_HEADER, b"{}\r\n"].concat();
        assert_eq!(chunks.next().await.unwrap(), heartbeat, "after one interval");
        assert_eq!(chunks.next().await.unwrap(), heartbeat);
        drop(tx);
        assert_eq!(&chunks.next().await.unwrap()[..], b"--graphql--\r\n");
        assert!(chunks.next().await.is_none());
    }

    /// An SSE body's text as it is written.
    async fn sse_text(parts: BoxStream<'static, Part>) -> String {
        let response = stream_response(parts, Streaming::ServerSentEvents);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    /// One result, then a stream that stays open.
    fn one_then_pending() -> BoxStream<'static, Part> {
        let first = Response::new(async_graphql::Value::from_json(serde_json::json!({"ticks": 1})).unwrap());
        futures_util::stream::iter([Part::Own(Box::new(first))]).chain(futures_util::stream::pending()).boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_whose_token_expires_ends_with_an_error_result_at_the_deadline() {
        let hub = Hub::default();
        let lifetime = Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + lifetime;
        let mut parts = until_ended(one_then_pending(), &hub, Some(deadline), None);
        assert!(matches!(parts.next().await, Some(Part::Own(_))));
        let next = tokio::time::timeout(lifetime - Duration::from_millis(1), parts.next()).await;
        assert!(next.is_err(), "nothing before the deadline");
        let Some(Part::Own(last)) = parts.next().await else { panic!("an error result at the deadline") };
        assert_eq!(tokio::time::Instant::now(), deadline);
        assert_eq!(serde_json::to_value(&*last).unwrap()["errors"][0]["extensions"]["code"], "TOKEN_EXPIRED");
        assert!(parts.next().await.is_none(), "then the end");
        assert_eq!(hub.stats().tokens_expired, 1);
        // As SSE: the result, the error, then `complete`.
        let deadline = tokio::time::Instant::now() + lifetime;
        let text = sse_text(until_ended(one_then_pending(), &hub, Some(deadline), None)).await;
        let events: Vec<&str> = text.lines().filter(|line| line.starts_with("event:")).collect();
        assert_eq!(events, ["event: next", "event: next", "event: complete"], "{text}");
        assert!(text.contains(r#""message":"token expired""#), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_of_a_revoked_principal_ends_with_an_error_result() {
        let hub = Hub::default();
        let ann = until_ended(one_then_pending(), &hub, None, Some(hub.session("ann")));
        let bob = until_ended(one_then_pending(), &hub, None, Some(hub.session("bob")));
        hub.revoke("ann").await.unwrap();
        // Revoked before its first result: the error result alone, then complete.
        let text = sse_text(ann).await;
        assert!(text.contains(r#""code":"REVOKED""#) && text.ends_with("event: complete\n\n"), "{text:?}");
        let mut bob = bob;
        assert!(matches!(bob.next().await, Some(Part::Own(_))));
        let next = tokio::time::timeout(Duration::from_secs(3600), bob.next()).await;
        assert!(next.is_err(), "bob's stream goes on");
        assert_eq!(hub.session_count(), 1);
    }
}

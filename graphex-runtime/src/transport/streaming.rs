//! Subscriptions over plain HTTP, for clients without WebSockets: which
//! streaming format a request asked for (`Accept`), the response body in
//! that format (multipart, server-sent events), and the slot each streaming
//! response holds in its client's count.
//!
//! Calls `hub` (the per-client count).

use std::time::Duration;

use async_graphql::Response;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use futures_util::StreamExt;

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

/// A subscription's results as an HTTP stream. Dropping the response (the
/// client went away) drops the operation, which frees its hub channel.
pub(crate) fn stream_response(
    results: futures_util::stream::BoxStream<'static, Response>,
    format: Streaming,
) -> axum::response::Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    match format {
        Streaming::Multipart => {
            let body = async_graphql::http::create_multipart_mixed_stream(results, Duration::from_secs(30))
                .map(Ok::<_, std::convert::Infallible>);
            (
                [(axum::http::header::CONTENT_TYPE, "multipart/mixed; boundary=graphql")],
                axum::body::Body::from_stream(body),
            )
                .into_response()
        }
        Streaming::ServerSentEvents => {
            let events = results
                .map(|result| Event::default().event("next").json_data(result))
                .chain(futures_util::stream::once(async { Ok(Event::default().event("complete").data("")) }));
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
    }
}

/// A streaming response's place in its client's count, given back when
/// the response (and its subscription) is dropped.
pub(crate) struct StreamSlot {
    pub(crate) hub: Hub,
    pub(crate) client: Option<ClientKey>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.hub.release(self.client.as_ref(), Resource::Streams, 1);
    }
}

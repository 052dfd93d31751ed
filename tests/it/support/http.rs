//! The tests' HTTP/1.1 client: hyper-util's legacy client (already in the
//! dependency graph through axum) with http-body-util, one fresh connection
//! per request so nothing outlives the test's runtime. No test needs to
//! send malformed HTTP, so there is no raw-socket client.

use std::net::SocketAddr;

use axum::http::{HeaderMap, Request, StatusCode, Version, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;
use tokio::task::JoinHandle;

use super::TIMEOUT;

/// A whole response.
pub struct Response {
    /// The status line as sent (`HTTP/1.1 200 OK`).
    pub status_line: String,
    /// The status code.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("UTF-8 body")
    }
}

/// Sends `request` over a fresh connection; returns the response head and
/// the body still streaming.
async fn send<B>(request: Request<B>) -> axum::http::Response<Incoming>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http();
    client.request(request).await.expect("HTTP request")
}

/// The status line hyper read: the version, the code and its reason phrase
/// (hyper keeps a reason only when it is not the canonical one).
fn status_line(response: &axum::http::Response<Incoming>) -> String {
    let version = match response.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        other => panic!("unexpected HTTP version {other:?}"),
    };
    let status = response.status();
    let reason = match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => String::from_utf8_lossy(reason.as_bytes()).into_owned(),
        None => status.canonical_reason().unwrap_or("").to_owned(),
    };
    format!("{version} {} {reason}", status.as_u16())
}

/// Sends `request` and reads the whole response, within twice [`TIMEOUT`].
async fn exchange<B>(request: Request<B>) -> Response
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exchange = async {
        let response = send(request).await;
        let status_line = status_line(&response);
        let (head, body) = response.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Response { status_line, status: head.status, headers: head.headers, body }
    };
    tokio::time::timeout(TIMEOUT * 2, exchange).await.expect("HTTP response in time")
}

/// A POST of `body` (JSON) to `path`, with an optional bearer token and an `Accept`.
fn post_request(addr: SocketAddr, path: &str, token: Option<&str>, accept: &str, body: &Json) -> Request<Full<Bytes>> {
    let mut request = Request::post(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, accept);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Full::new(Bytes::from(body.to_string()))).expect("valid request")
}

/// POSTs `body` as JSON and reads the whole response.
pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>, accept: &str, body: &Json) -> Response {
    exchange(post_request(addr, path, token, accept, body)).await
}

/// POSTs `body` as JSON and returns the status and the JSON body.
pub async fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &Json) -> (u16, Json) {
    let response = post(addr, path, token, "application/json", body).await;
    let json = serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!("response body is not JSON ({error}): {}", String::from_utf8_lossy(&response.body))
    });
    (response.status.as_u16(), json)
}

/// POSTs raw `body` to `path` with the given `Content-Type` (none if
/// `None`) and reads the whole response. `chunked`: without a
/// `Content-Length` (the body streams in 64 KiB chunks).
pub async fn post_raw(
    addr: SocketAddr,
    path: &str,
    content_type: Option<&str>,
    body: Bytes,
    chunked: bool,
) -> Response {
    let mut request = Request::post(format!("http://{addr}{path}")).header(header::ACCEPT, "application/json");
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if chunked {
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> =
            body.chunks(64 << 10).map(|chunk| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(chunk)))).collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
        exchange(request.body(body).expect("valid request")).await
    } else {
        exchange(request.body(Full::new(body)).expect("valid request")).await
    }
}

/// GETs `path` and reads the whole response.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    let request = Request::get(format!("http://{addr}{path}")).body(Empty::<Bytes>::new()).expect("valid request");
    exchange(request).await
}

/// Sends a `method` request to `path` with `headers` and an optional JSON
/// body, and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Json>,
) -> Response {
    let mut request = Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map(|body| Bytes::from(body.to_string())).unwrap_or_default();
    exchange(request.body(Full::new(body)).expect("valid request")).await
}

/// A streaming response (server-sent events, multipart), read as it arrives.
pub struct Streamed {
    /// The request, until its head arrived.
    pending: Option<JoinHandle<axum::http::Response<Incoming>>>,
    head: Option<(String, HeaderMap)>,
    body: Option<Incoming>,
    received: Vec<u8>,
}

impl Drop for Streamed {
    fn drop(&mut self) {
        // Dropping the body closes the connection; a request still waiting
        // for its head is cancelled with it.
        if let Some(pending) = &self.pending {
            pending.abort();
        }
    }
}

impl Streamed {
    /// POSTs `{"query": query}` to `/graphql` with `Accept: accept`; returns
    /// at once (the head is awaited by the reads).
    pub async fn post(addr: SocketAddr, accept: &str, query: &str) -> Streamed {
        let request = post_request(addr, "/graphql", None, accept, &serde_json::json!({"query": query}));
        Streamed { pending: Some(tokio::spawn(send(request))), head: None, body: None, received: Vec::new() }
    }

    /// GETs `path` with `headers`; returns at once (the head is awaited by
    /// the reads).
    pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Streamed {
        let mut request = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Empty::<Bytes>::new()).expect("valid request");
        Streamed { pending: Some(tokio::spawn(send(request))), head: None, body: None, received: Vec::new() }
    }

    /// The status line and headers, once the head arrived (within [`TIMEOUT`]).
    pub async fn head(&mut self) -> (&str, &HeaderMap) {
        if let Some(pending) = self.pending.take() {
            let response = tokio::time::timeout(TIMEOUT, pending).await.expect("response head in time").expect("sent");
            let status_line = status_line(&response);
            let (head, body) = response.into_parts();
            self.head = Some((status_line, head.headers));
            self.body = Some(body);
        }
        let (status_line, headers) = self.head.as_ref().expect("the head arrived");
        (status_line, headers)
    }

    /// The `Content-Type` header, once the head arrived.
    pub async fn content_type(&mut self) -> String {
        let (_, headers) = self.head().await;
        headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("").to_owned()
    }

    /// The next piece of the body, appended to [`Streamed::text`]; `false`
    /// at the end of the body. Panics after [`TIMEOUT`].
    pub async fn read_more(&mut self) -> bool {
        self.head().await;
        let body = self.body.as_mut().expect("the head arrived");
        loop {
            match tokio::time::timeout(TIMEOUT, body.frame()).await.expect("body data in time") {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received.extend_from_slice(&data);
                        return true;
                    }
                }
                Some(Err(error)) => panic!("the stream failed: {error}"),
                None => return false,
            }
        }
    }

    /// Reads until the body received so far contains `needle`; returns the
    /// `Content-Type`.
    pub async fn read_until(&mut self, needle: &str) -> String {
        while !self.text().contains(needle) {
            assert!(self.read_more().await, "stream ended before {needle:?}: {}", self.text());
        }
        self.content_type().await
    }

    /// The body received so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }

    /// Takes the first `len` bytes of what was received.
    pub fn take(&mut self, len: usize) -> String {
        String::from_utf8(self.received.drain(..len).collect()).expect("UTF-8 stream")
    }
}

//! Reading a GraphQL request from an HTTP `POST`: the body limit before
//! anything is parsed, and the media types a request may use.
//!
//! - `application/json` (the GraphQL over HTTP spec): a JSON request.
//! - `application/graphql`: the body is the query text.
//! - `multipart/form-data` (file uploads, the GraphQL multipart request
//!   spec): only with [`RequestLimits::uploads`], and then only with an
//!   `Apollo-Require-Preflight` or `GraphQL-Preflight` header, which a
//!   cross-site form cannot send without the browser asking the server
//!   first (CSRF).
//! - Anything else, `text/plain` included (a cross-site form could post it
//!   without a preflight): `415 Unsupported Media Type`.
//!
//! Calls `transport::limits` (the settings).

use async_graphql::Request;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::transport::limits::RequestLimits;

/// Why a body was not read as a request: the HTTP answer.
pub(crate) struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// The request a `POST` carries, read within `limits.max_body_bytes`.
pub(crate) async fn read(headers: &HeaderMap, body: Body, limits: &RequestLimits) -> Result<Request, Refused> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = match essence.as_str() {
        "application/json" => Kind::Json,
        "application/graphql" => Kind::Query,
        "multipart/form-data" if limits.uploads => {
            let preflighted =
                ["apollo-require-preflight", "graphql-preflight"].iter().any(|name| headers.contains_key(*name));
            if !preflighted {
                return Err(Refused(
                    StatusCode::BAD_REQUEST,
                    "multipart requests need an `Apollo-Require-Preflight` or `GraphQL-Preflight` header".into(),
                ));
            }
            Kind::Multipart
        }
        _ => {
            let accepted = if limits.uploads {
                "application/json, application/graphql or multipart/form-data"
            } else {
                "application/json or application/graphql"
            };
            let given = if essence.is_empty() { "no Content-Type".to_owned() } else { format!("`{essence}`") };
            return Err(Refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("{given}: a GraphQL POST is {accepted}")));
        }
    };
    if let Some(length) = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        && length > limits.max_body_bytes as u64
    {
        return Err(too_large(limits));
    }
    let bytes = axum::body::to_bytes(body, limits.max_body_bytes).await.map_err(|_| too_large(limits))?;
    match kind {
        Kind::Json => serde_json::from_slice::<Request>(&bytes)
            .map_err(|error| Refused(StatusCode::BAD_REQUEST, format!("invalid GraphQL request: {error}"))),
        Kind::Query => String::from_utf8(bytes.to_vec())
            .map(Request::new)
            .map_err(|_| Refused(StatusCode::BAD_REQUEST, "the query is not UTF-8".into())),
        Kind::Multipart => {
            let options = async_graphql::http::MultipartOptions::default().max_file_size(limits.max_body_bytes);
            async_graphql::http::receive_body(Some(content_type), futures_util::io::Cursor::new(bytes), options)
                .await
                .map_err(|error| Refused(StatusCode::BAD_REQUEST, format!("invalid multipart request: {error}")))
        }
    }
}

enum Kind {
    Json,
    Query,
    Multipart,
}

fn too_large(limits: &RequestLimits) -> Refused {
    Refused(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {} bytes", limits.max_body_bytes))
}

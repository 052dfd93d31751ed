//! Who is asking: a bearer token (header, or `?token=` on the two-channel
//! socket) turned into a [`Principal`] by the application's [`Authenticator`].

use axum::http::HeaderMap;

use crate::model::Principal;

/// Turns a bearer token into a principal. Requests without a token, or
/// whose token yields `None`, are anonymous.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The principal a token stands for.
    async fn authenticate(&self, token: &str) -> Option<Principal>;
}

/// Everyone is anonymous.
#[derive(Clone, Copy, Debug, Default)]
pub struct Anonymous;

#[async_trait::async_trait]
impl Authenticator for Anonymous {
    async fn authenticate(&self, _token: &str) -> Option<Principal> {
        None
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}

pub(crate) async fn principal(auth: &dyn Authenticator, token: Option<&str>) -> Option<Principal> {
    match token {
        Some(token) if !token.is_empty() => auth.authenticate(token).await,
        _ => None,
    }
}

//! Who is asking: a bearer token (header, or `?token=` on the two-channel
//! socket) turned into a [`Principal`] by the application's [`Authenticator`],
//! with the instant the token expires, if it does.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use axum::http::HeaderMap;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::model::Principal;
use crate::transport::gate::Gate;

/// Turns a bearer token into a principal. Requests without a token, or
/// whose token yields `None`, are anonymous.
#[async_trait::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// The principal a token stands for.
    async fn authenticate(&self, token: &str) -> Option<Principal>;

    /// The principal a token stands for, and when the token expires (its
    /// `exp`, wall clock). The connection or stream the token opens ends at
    /// that instant: a two-channel socket closes with 4401 `token expired`,
    /// a `graphql-transport-ws` connection with 4403 `Forbidden: token
    /// expired`, a legacy `graphql-ws` operation and an SSE or multipart
    /// response end with an error result. A token already expired counts as
    /// no principal at all (anonymous, or refused where an unknown token is).
    ///
    /// The default calls [`Authenticator::authenticate`]: no expiry.
    async fn authenticate_with_expiry(&self, token: &str) -> Option<Authenticated> {
        self.authenticate(token).await.map(Authenticated::new)
    }
}

/// A principal, and when the token it came from expires.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Authenticated {
    /// Who.
    pub principal: Principal,
    /// Until when (wall clock); `None`: the token does not expire.
    pub expires_at: Option<SystemTime>,
}

impl Authenticated {
    /// A principal whose token does not expire.
    pub fn new(principal: Principal) -> Authenticated {
        Authenticated { principal, expires_at: None }
    }

    /// The same, expiring at `expires_at`.
    pub fn expires_at(mut self, expires_at: SystemTime) -> Authenticated {
        self.expires_at = Some(expires_at);
        self
    }

    /// The expiry as a deadline on tokio's clock (so paused-time tests see
    /// it), read once at connect; `None` when the token does not expire.
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        deadline(self.expires_at)
    }

    /// Whether the token had expired already.
    fn expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= SystemTime::now())
    }
}

/// A wall-clock expiry as a deadline on tokio's clock, measured from now.
pub(crate) fn deadline(expires_at: Option<SystemTime>) -> Option<tokio::time::Instant> {
    let left = expires_at?.duration_since(SystemTime::now()).unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
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
    authenticated(auth, token).await.map(|authenticated| authenticated.principal)
}

/// The principal of a token and its expiry; an expired token is none.
pub(crate) async fn authenticated(auth: &dyn Authenticator, token: Option<&str>) -> Option<Authenticated> {
    match token {
        Some(token) if !token.is_empty() => auth.authenticate_with_expiry(token).await.filter(|found| !found.expired()),
        _ => None,
    }
}

/// A connection's expiry timer: boxed, and only for a token that expires
/// (a connection without one carries no timer).
pub(crate) type Expiry = Option<std::pin::Pin<Box<tokio::time::Sleep>>>;

/// The timer of a deadline.
pub(crate) fn expiry(deadline: Option<tokio::time::Instant>) -> Expiry {
    deadline.map(|deadline| Box::pin(tokio::time::sleep_until(deadline)))
}

/// Why a connection's authorization ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The token that opened it expired.
    TokenExpired,
    /// Its principal was revoked ([`crate::Hub::revoke`]).
    Revoked,
}

impl Ended {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Ended::TokenExpired => "token expired",
            Ended::Revoked => "revoked",
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Ended::TokenExpired => "TOKEN_EXPIRED",
            Ended::Revoked => "REVOKED",
        }
    }

    /// A legacy `graphql-ws` operation's last messages: an error result, then complete.
    pub(crate) fn legacy_frames(self, id: &str) -> [String; 2] {
        let error = serde_json::json!({"message": self.reason(), "extensions": {"code": self.code()}});
        [
            serde_json::json!({"type": "data", "id": id, "payload": {"data": null, "errors": [error]}}).to_string(),
            serde_json::json!({"type": "complete", "id": id}).to_string(),
        ]
    }

    /// The error result an SSE or multipart response ends with.
    pub(crate) fn response(self) -> async_graphql::Response {
        let error = async_graphql::ServerError::new(self.reason(), None);
        async_graphql::Response::from_errors(vec![crate::transport::limits::with_code(error, self.code())])
    }
}

/// Resolves when the connection's principal is revoked (first) or its
/// token expires; never for a connection without either. Made once and
/// polled at every turn of the connection's loop: the wait on the
/// revocation token registers once (with the token's lock), and both are
/// polled only once one of them woke the task (`Gate`).
pub(crate) struct Ending {
    revoked: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    expiry: Expiry,
    gate: Arc<Gate>,
}

impl Ending {
    /// The end of `session` (its revocation) and of the token `expiry` times.
    pub(crate) fn new(session: Option<&crate::hub::Session>, expiry: Expiry) -> Ending {
        let revoked =
            session.and_then(crate::hub::Session::revoked).map(|token| Box::pin(token.clone().cancelled_owned()));
        Ending { revoked, expiry, gate: Gate::new() }
    }
}

impl Future for Ending {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        let (revoked, expiry) = (&mut this.revoked, &mut this.expiry);
        this.gate.poll(cx, |cx| {
            if let Some(revocation) = revoked
                && revocation.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ended::Revoked);
            }
            if let Some(timer) = expiry
                && timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Ended::TokenExpired);
            }
            Poll::Pending
        })
    }
}

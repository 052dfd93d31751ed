//! Where a request comes from: the peer address axum's `ConnectInfo`
//! gives (when the router is served with
//! `into_make_service_with_connect_info::<SocketAddr>()`), or, when that
//! peer is a trusted proxy ([`crate::Config::trusted_proxies`]), the
//! rightmost `X-Forwarded-For` address that is not itself a trusted proxy.
//! Anonymous clients are counted by this address.
//!
//! Also the browser `Origin` check of WebSocket upgrades and streaming
//! responses ([`crate::Config::allowed_origins`]): a browser attaches any
//! site's cookies and credentials to a WebSocket upgrade it opens, so a
//! page of another origin could otherwise subscribe as its visitor.
//!
//! Calls nothing else in the crate.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;

/// The TCP peer of a request, when the server was started with connect info.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer(pub(crate) Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0)))
    }
}

/// The client's address: the peer's, or behind trusted proxies the
/// forwarded one.
pub(crate) fn client_address(peer: Peer, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = peer.0?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    // Each proxy appends the address it received from; walk back from the
    // nearest one, skipping trusted proxies.
    let forwarded = headers.get_all("x-forwarded-for").iter().filter_map(|value| value.to_str().ok());
    let hops: Vec<&str> = forwarded.flat_map(|value| value.split(',')).map(str::trim).collect();
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(address) if trusted.contains(&address) => continue,
            Ok(address) => return Some(address),
            // An unreadable hop: the chain cannot be trusted past it.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

/// Whether a request's `Origin` may use the streaming endpoints: no
/// `Origin` (not a browser), the server's own origin (the `Origin`'s host
/// and port are the `Host` header), an origin in `allowed` (exactly, as
/// `scheme://host[:port]`), or any origin when `allowed` holds `*`.
pub(crate) fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    if allowed.iter().any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get(axum::http::header::HOST).and_then(|host| host.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(origin), Some(host)) if origin.eq_ignore_ascii_case(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_peer_unless_it_is_a_trusted_proxy() {
        let peer = Peer(Some("10.0.0.9:5000".parse().unwrap()));
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let spoofed = headers(&["6.6.6.6"]);
        assert_eq!(client_address(peer, &spoofed, &[]), Some(proxy), "an untrusted peer's header is ignored");
        assert_eq!(client_address(peer, &spoofed, &[proxy]), Some("6.6.6.6".parse().unwrap()));
        // The client prepended a fake address; the proxy appended the real one.
        let chain = headers(&["1.1.1.1, 2.2.2.2", "10.0.0.8"]);
        let trusted = [proxy, "10.0.0.8".parse().unwrap()];
        assert_eq!(client_address(peer, &chain, &trusted), Some("2.2.2.2".parse().unwrap()));
        assert_eq!(client_address(peer, &headers(&["garbage"]), &[proxy]), Some(proxy));
        assert_eq!(client_address(peer, &HeaderMap::new(), &[proxy]), Some(proxy));
        assert_eq!(client_address(Peer(None), &spoofed, &[proxy]), None);
    }

    #[test]
    fn origins() {
        let request = |origin: Option<&str>| {
            let mut headers = HeaderMap::new();
            headers.insert("host", "app.example:8000".parse().unwrap());
            if let Some(origin) = origin {
                headers.insert("origin", origin.parse().unwrap());
            }
            headers
        };
        assert!(origin_allowed(&request(None), &[]), "not a browser");
        assert!(origin_allowed(&request(Some("http://app.example:8000")), &[]), "same origin");
        assert!(origin_allowed(&request(Some("https://APP.example:8000")), &[]), "same origin, any case");
        assert!(!origin_allowed(&request(Some("https://evil.example")), &[]));
        assert!(!origin_allowed(&request(Some("http://app.example:8001")), &[]), "another port");
        assert!(!origin_allowed(&request(Some("null")), &[]));
        let allowed = ["https://admin.example".to_owned()];
        assert!(origin_allowed(&request(Some("https://admin.example")), &allowed));
        assert!(!origin_allowed(&request(Some("http://admin.example")), &allowed), "another scheme");
        assert!(origin_allowed(&request(Some("https://evil.example")), &["*".to_owned()]));
    }
}

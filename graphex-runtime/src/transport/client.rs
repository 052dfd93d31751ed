//! The browser client page: one self-contained HTML file (inline CSS and
//! JavaScript, no CDN, no external fonts or scripts) that connects the
//! two-channel WebSocket, shows its `channel_id`, sends SUBSCRIBE and
//! UNSUBSCRIBE over HTTP and streams the notifications, with an editor that
//! completes from the schema's introspection.
//!
//! Mount it beside [`router`](crate::router):
//!
//! ```no_run
//! # fn app(graphql: axum::Router, hub: &graphex_runtime::Hub) -> axum::Router {
//! use graphex_runtime::{ClientPage, client_page};
//! graphql.merge(client_page(ClientPage::from_config(hub.config()))) // GET /graphql/client/
//! # }
//! ```
//!
//! The page resolves endpoint paths against its own host (`ws://` or
//! `wss://` following the page's scheme), so it works behind any host name;
//! an absolute URL (`ws://...`, `https://...`) is used as given.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde::Serialize;

use crate::config::Config;

/// The page, with a placeholder where the settings go.
const PAGE: &str = include_str!("client/page.html");

/// Where the settings are written into the page (inside a
/// `<script type="application/json">` element).
const SETTINGS_PLACEHOLDER: &str = "{\"graphex\":\"settings\"}";

/// Scripts and styles only from the page itself: anything loaded from
/// elsewhere is refused by the browser, so the page provably works offline.
/// `connect-src` stays open to any http(s)/ws(s) origin because the
/// endpoints may be configured on another host.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     img-src data:; connect-src 'self' http: https: ws: wss:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'self'";

/// Settings of the client page. Paths are resolved against the page's own
/// host; absolute URLs are used as given.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ClientPage {
    /// Where the page is served. Default `/graphql/client/`.
    #[serde(skip)]
    pub path: String,
    /// The two-channel WebSocket endpoint. Default `/ws/graphql/`.
    pub ws_path: String,
    /// The GraphQL HTTP endpoint (subscribe, unsubscribe, introspection).
    /// Default `/graphql`.
    pub http_path: String,
    /// The standard-protocol (`graphql-transport-ws`) WebSocket endpoint
    /// used by the page's protocol switch. `None`: the HTTP endpoint's path,
    /// upgraded (`ws://host/graphql`).
    pub standard_ws_path: Option<String>,
    /// The page title. Default `graphex client`.
    #[serde(skip)]
    pub title: String,
}

impl Default for ClientPage {
    fn default() -> Self {
        ClientPage {
            path: "/graphql/client/".into(),
            ws_path: "/ws/graphql/".into(),
            http_path: "/graphql".into(),
            standard_ws_path: None,
            title: "graphex client".into(),
        }
    }
}

crate::config::setters!(ClientPage {
    path: String => with_path,
    ws_path: String => with_ws_path,
    http_path: String => with_http_path,
    standard_ws_path: Option<String> => with_standard_ws_path,
    title: String => with_title,
});

impl ClientPage {
    /// The default page, pointed at the endpoints `config` serves.
    pub fn from_config(config: &Config) -> Self {
        ClientPage { ws_path: config.ws_path.clone(), http_path: config.http_path.clone(), ..ClientPage::default() }
    }

    /// The HTML the page is served as.
    pub fn render(&self) -> String {
        let settings = serde_json::to_string(self).expect("settings serialize");
        PAGE.replacen("<title>graphex client</title>", &format!("<title>{}</title>", escape_html(&self.title)), 1)
            .replacen(SETTINGS_PLACEHOLDER, &escape_script_json(&settings), 1)
    }
}

/// An axum router serving the page at `page.path` (plus a redirect from the
/// path without its trailing slash). Merge it into the app's router.
///
/// # Panics
///
/// If `page.path` does not start with `/` (axum refuses such routes).
pub fn client_page(page: ClientPage) -> Router {
    assert!(page.path.starts_with('/'), "the client page path must start with '/': {:?}", page.path);
    let html = page.render();
    let serve = move || {
        let html = html.clone();
        async move {
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                    (header::REFERRER_POLICY, "no-referrer"),
                ],
                html,
            )
                .into_response()
        }
    };
    let mut router = Router::new().route(&page.path, get(serve));
    if let Some(bare) = page.path.strip_suffix('/').filter(|bare| !bare.is_empty()) {
        let target = page.path.clone();
        router = router.route(bare, get(move || async move { Redirect::permanent(&target) }));
    }
    router
}

/// JSON made safe inside `<script>`: no `<` can close the element and the
/// line separators JavaScript once rejected are escaped.
fn escape_script_json(json: &str) -> String {
    json.replace('<', "\\u003c").replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029")
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_of(html: &str) -> serde_json::Value {
        let start = html.find("id=\"graphex-settings\">").expect("settings element") + "id=\"graphex-settings\">".len();
        let end = start + html[start..].find("</script>").expect("end of settings");
        serde_json::from_str(&html[start..end]).expect("settings are JSON")
    }

    #[test]
    fn defaults_point_at_the_default_endpoints() {
        let page = ClientPage::default();
        assert_eq!(page.path, "/graphql/client/");
        let settings = settings_of(&page.render());
        assert_eq!(
            settings,
            serde_json::json!({
                "ws_path": "/ws/graphql/",
                "http_path": "/graphql",
                "standard_ws_path": null,
            })
        );
    }

    #[test]
    fn from_config_follows_the_served_paths() {
        let config = Config { http_path: "/api/gql".into(), ws_path: "/live/".into(), ..Config::default() };
        let settings = settings_of(&ClientPage::from_config(&config).render());
        assert_eq!(settings["http_path"], "/api/gql");
        assert_eq!(settings["ws_path"], "/live/");
    }

    #[test]
    fn settings_cannot_close_the_script_element() {
        let page = ClientPage {
            http_path: "/x</script><script>alert(1)</script>".into(),
            title: "a <b> & \"c\"".into(),
            ..ClientPage::default()
        };
        let html = page.render();
        assert!(!html.contains("alert(1)</script>"), "settings escaped");
        assert_eq!(settings_of(&html)["http_path"], "/x</script><script>alert(1)</script>");
        assert!(html.contains("<title>a &lt;b&gt; &amp; &quot;c&quot;</title>"));
        assert_eq!(html.matches("<script").count(), PAGE.matches("<script").count());
    }

    /// The page must work offline: nothing it references may live elsewhere.
    #[test]
    fn page_loads_nothing_from_elsewhere() {
        let lower = PAGE.to_ascii_lowercase();
        for needle in ["src=", "@import", "<link rel=\"stylesheet", "@font-face", "http://", "https://", "//cdn"] {
            assert!(!lower.contains(needle), "the page references an external resource ({needle})");
        }
        // CSS `url(...)` (JavaScript's `new URL(...)` is upper case).
        assert!(!PAGE.contains("url("), "the page's CSS loads a resource");
        assert!(PAGE.contains(SETTINGS_PLACEHOLDER), "settings placeholder present");
    }
}

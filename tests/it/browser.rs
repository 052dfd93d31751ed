//! The browser client page, driven in Debian's headless Chromium by
//! `tests/browser/client.mjs` (playwright-core): the reference app is served
//! on port 0 (once as is, once with introspection disabled) and the script
//! uses the page as a person would. It asks this test for the server's side
//! of the story over its stdout/stdin (`@@ channel <id>`, `@@ owner <id>`,
//! `@@ drop`, `@@ forget`).
//!
//! The standard-protocol switch streams a native field (`userChanges`) over
//! graphql-transport-ws from the reference app's `ws://host/graphql`; the
//! script's refusal branch (a server without it) stays for servers mounted
//! without the standard protocols. `@@ drop` disconnects every socket
//! (`Hub::disconnect_all`) while the server goes on; the page resumes
//! after its last cursor. `@@ forget` makes the server's history refuse
//! every cursor from then on (as a restarted server would: another epoch),
//! so the page's next resume falls back to a plain subscribe.
//!
//! Needs `node`, `/usr/bin/chromium` (or `GRAPHEX_CHROMIUM`) and
//! `tests/browser/node_modules` (`npm ci` there). Without them the test
//! prints `skipped: ...`, unless `GRAPHEX_TEST_BROWSER=1` (set by `.ci/run`)
//! makes that a failure. Screenshots go to `target/test-output/browser/`.

use graphex::__internals::HubInternals;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use graphex::Hub;
use graphex::layer::{ChannelLayer, Expiry, History, Inbound, LayerError, MemoryLayer, Position};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::app;
use crate::support::{http, standard};

/// Bound on the whole browser run (the script has its own, shorter, watchdog).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const REQUIRED_ENV: &str = "GRAPHEX_TEST_BROWSER";

/// An app served on port 0, with its hub and layer.
struct Served {
    addr: SocketAddr,
    hub: Hub,
    layer: Arc<Forgetful>,
    _served: standard::Served,
}

async fn serve(make: fn(sea_orm::DatabaseConnection, Hub) -> Router) -> Served {
    let db = app::connect("sqlite::memory:", None).await;
    let layer = Arc::new(Forgetful { inner: MemoryLayer::new(), forgotten: AtomicBool::new(false) });
    let hub = Hub::with_layer(graphex::Config::default(), layer.clone());
    let served = standard::serve(make(db, hub.clone())).await;
    Served { addr: served.addr, hub, layer, _served: served }
}

/// The memory layer, whose history refuses every cursor once `forgotten`
/// (another epoch, as after a restart).
struct Forgetful {
    inner: MemoryLayer,
    forgotten: AtomicBool,
}

#[async_trait::async_trait]
impl ChannelLayer for Forgetful {
    fn start(&self, inbound: Inbound) {
        self.inner.start(inbound);
    }

    async fn publish(&self, group: &str, message: Bytes) -> Result<(), LayerError> {
        self.inner.publish(group, message).await
    }

    async fn publish_all(&self, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.inner.publish_all(groups, message).await
    }

    async fn publish_change(&self, stream: &str, groups: &[String], message: Bytes) -> Result<(), LayerError> {
        self.inner.publish_change(stream, groups, message).await
    }

    async fn history(&self, stream: &str, after: Position) -> Result<History, LayerError> {
        if self.forgotten.load(Ordering::SeqCst) {
            return Ok(History::Expired(Expiry::Epoch));
        }
        self.inner.history(stream, after).await
    }

    fn listen(&self, group: &str) {
        self.inner.listen(group);
    }

    fn unlisten(&self, group: &str) {
        self.inner.unlisten(group);
    }

    async fn ready(&self, group: &str) -> Result<(), LayerError> {
        self.inner.ready(group).await
    }
}

struct Tools {
    node: PathBuf,
    chromium: PathBuf,
    dir: PathBuf,
}

/// The tools the test needs, or why they are missing.
async fn tools() -> Result<Tools, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = PathBuf::from(std::env::var("GRAPHEX_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    let node = PathBuf::from("node");
    let version = Command::new(&node).arg("--version").output().await;
    if !matches!(&version, Ok(output) if output.status.success()) {
        return Err("node is not installed".into());
    }
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set GRAPHEX_CHROMIUM)",
            chromium.display()
        ));
    }
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        return Err(format!("playwright-core is not installed (npm ci in {})", dir.display()));
    }
    Ok(Tools { node, chromium, dir })
}

/// Whether the server answers a graphql-transport-ws handshake on the HTTP
/// endpoint's path (the standard protocols are another issue's work).
async fn standard_protocol_offered(addr: SocketAddr) -> bool {
    let mut request = format!("ws://{addr}/graphql").into_client_request().expect("valid ws url");
    request.headers_mut().insert("sec-websocket-protocol", "graphql-transport-ws".parse().expect("header value"));
    match tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((mut socket, response))) => {
            let _ = socket.close(None).await;
            response.headers().get("sec-websocket-protocol").is_some_and(|value| value == "graphql-transport-ws")
        }
        _ => false,
    }
}

/// Answers one `@@` request of the script.
async fn answer(request: &str, main: &Served) -> String {
    let mut words = request.split_whitespace();
    match (words.next(), words.next()) {
        (Some("channel"), Some(id)) => match main.hub.channel(id) {
            Some(channel) => channel.subscription_count().to_string(),
            None => "none".into(),
        },
        (Some("owner"), Some(id)) => match main.hub.channel(id) {
            Some(channel) => channel.owner().unwrap_or("anonymous").to_owned(),
            None => "none".into(),
        },
        (Some("drop"), None) => {
            main.hub.disconnect_all();
            "ok".into()
        }
        (Some("forget"), None) => {
            main.layer.forgotten.store(true, Ordering::SeqCst);
            "ok".into()
        }
        _ => format!("unknown request {request:?}"),
    }
}

/// Where the screenshots of `run` go (under the target directory).
fn output_dir(run: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("../test-output/browser").join(run)
}

/// The tools, or `None` after printing why the test is skipped (a failure
/// when `GRAPHEX_TEST_BROWSER=1`).
async fn tools_or_skip() -> Option<Tools> {
    match tools().await {
        Ok(tools) => Some(tools),
        Err(why) if std::env::var(REQUIRED_ENV).as_deref() == Ok("1") => {
            panic!("{REQUIRED_ENV}=1 but the browser test cannot run: {why}")
        }
        Err(why) => {
            println!("skipped: browser test: {why}");
            None
        }
    }
}

/// Runs `client.mjs` against `main` (and `keywords`, the same app without
/// introspection), answering its requests; asserts it passed and saved `screenshots`.
async fn run_script(
    tools: &Tools,
    main: &Served,
    keywords: SocketAddr,
    standard: &str,
    only: Option<&str>,
    output: &Path,
    screenshots: &[&str],
) {
    std::fs::create_dir_all(output).expect("output folder");
    for shot in screenshots.iter().chain(&["client-failure.png"]) {
        let _ = std::fs::remove_file(output.join(shot));
    }
    let mut command = Command::new(&tools.node);
    command
        .arg(tools.dir.join("client.mjs"))
        .arg(format!("http://{}", main.addr))
        .arg(format!("http://{keywords}"))
        .arg(output)
        .arg(standard)
        .env("GRAPHEX_CHROMIUM", &tools.chromium)
        .env_remove("GRAPHEX_BROWSER_ONLY")
        .current_dir(&tools.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(only) = only {
        command.env("GRAPHEX_BROWSER_ONLY", only);
    }
    let mut child = command.spawn().expect("node starts");
    let mut stdin = child.stdin.take().expect("stdin piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut stderr = child.stderr.take().expect("stderr piped");

    let run = async {
        let mut log = Vec::new();
        while let Some(line) = stdout.next_line().await.expect("read the script's output") {
            if let Some(request) = line.strip_prefix("@@ ") {
                let reply = answer(request, main).await;
                stdin.write_all(format!("{reply}\n").as_bytes()).await.expect("reply to the script");
                stdin.flush().await.expect("flush the reply");
            } else {
                println!("{line}");
                log.push(line);
            }
        }
        let mut errors = String::new();
        stderr.read_to_string(&mut errors).await.expect("read the script's errors");
        (child.wait().await.expect("node exits"), log, errors)
    };
    let (status, log, errors) =
        tokio::time::timeout(RUN_TIMEOUT, run).await.expect("the browser test is bounded in time");
    if !errors.is_empty() {
        eprintln!("{errors}");
    }
    assert!(status.success(), "the browser script failed ({status}): {errors}");
    assert!(log.last().is_some_and(|line| line.starts_with("browser: ")), "the script reported its steps: {log:?}");
    for shot in screenshots {
        assert!(output.join(shot).exists(), "screenshot {shot} saved in {}", output.display());
    }
    println!("screenshots in {}", output.canonicalize().unwrap_or_else(|_| output.to_owned()).display());
}

/// The reference app serves the page (no browser needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_app_serves_the_page() {
    let main = serve(app::app).await;
    let page = http::get(main.addr, "/graphql/client/").await;
    assert_eq!(page.status_line, "HTTP/1.1 200 OK");
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = page.header("content-security-policy").expect("a content security policy");
    assert!(csp.starts_with("default-src 'none'; script-src 'unsafe-inline'"), "{csp}");
    let body = page.text();
    assert!(body.contains(r#"{"ws_path":"/ws/graphql/","http_path":"/graphql","standard_ws_path":null"#), "settings");

    let redirect = http::get(main.addr, "/graphql/client").await;
    assert_eq!(redirect.status_line, "HTTP/1.1 308 Permanent Redirect");
    assert_eq!(redirect.header("location"), Some("/graphql/client/"));
}

/// The whole page against the reference app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_page_in_headless_chromium() {
    let Some(tools) = tools_or_skip().await else { return };
    let main = serve(app::app).await;
    let keywords = serve(app::app_without_introspection).await;
    assert!(standard_protocol_offered(main.addr).await, "the reference app serves graphql-transport-ws on /graphql");
    let standard = "available";
    let screenshots = ["client-light.png", "client-dark.png", "client-completion.png", "client-keywords.png"];
    run_script(&tools, &main, keywords.addr, standard, None, &output_dir("reference"), &screenshots).await;
}

/// Without Chromium the page's resume is not exercised; this checks only the
/// text of the served script (a weak check, not a run): its two-channel
/// subscribes ask for cursors, a re-subscribe passes the remembered cursor
/// as `after`, a refused cursor falls back to a plain subscribe with a
/// note, and graphql-transport-ws re-subscribes resume with `after` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_script_asks_for_cursors_and_resumes_with_after() {
    let main = serve(app::app).await;
    let body = http::get(main.addr, "/graphql/client/").await.text();
    for needle in [
        r#"missing.push(resume ? `after: ${JSON.stringify(after)}` : "cursors: true");"#,
        r#"await sendPrepared(sub.doc, sub.variables, "SUBSCRIBE", false, sub.cursor);"#,
        r#"if (after && outcome !== "ok" && cursorRefused(result.body)) return "expired";"#,
        "cursor expired for ${sub.label}: subscribed again without after",
        "if (sub.stream && sub.stream === frame.stream) sub.cursor = frame.cursor;",
        r#"e.extensions.code === "CURSOR_EXPIRED""#,
        "withArgument(doc, `after: ${JSON.stringify(cursor)}`",
    ] {
        assert!(body.contains(needle), "the page's script has {needle:?}");
    }
}

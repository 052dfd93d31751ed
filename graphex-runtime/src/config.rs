//! Server settings, with documented defaults.

use std::time::Duration;

use crate::subscribe::filter::FilterLimits;
use crate::transport::limits::RequestLimits;

/// Builder-style setters for a settings struct (`#[non_exhaustive]`: built
/// from `Default` and these, so fields can be added without breaking callers).
macro_rules! setters {
    ($ty:ident { $($field:ident: $t:ty => $with:ident),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets [`", stringify!($ty), "::", stringify!($field), "`].")]
                #[must_use]
                pub fn $with(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}
pub(crate) use setters;

/// Everything a graphex server can be tuned with.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Path of the GraphQL HTTP endpoint. Default `/graphql`.
    pub http_path: String,
    /// Path of the two-channel WebSocket endpoint. Default `/ws/graphql/`.
    pub ws_path: String,
    /// Frames queued for one socket before it is closed as a slow consumer.
    /// Default 1024.
    pub queue_capacity: usize,
    /// Subscriptions one channel may hold (ALL_ACTIONS counts three).
    /// Default 300.
    pub max_subscriptions_per_channel: usize,
    /// Open channels the server accepts. Default 100 000.
    pub max_channels: usize,
    /// Open channels one client may hold in this process: two-channel
    /// sockets, and native subscriptions (one channel per operation, SSE and
    /// multipart included). A client is its principal when it authenticated,
    /// else its remote address (see [`Config::trusted_proxies`]); serve the
    /// router with `into_make_service_with_connect_info::<SocketAddr>()`,
    /// or anonymous clients are not counted. Default 1 000.
    pub max_channels_per_client: usize,
    /// Subscriptions one client may hold in this process, over all its
    /// channels. Default 10 000.
    pub max_subscriptions_per_client: usize,
    /// Concurrent SSE and multipart responses one client may hold in this
    /// process, graphql-sse single-connection reservations included (each
    /// from its `PUT` until its stream ends, or until it expires unopened
    /// after 30 s). Default 100.
    pub max_streams_per_client: usize,
    /// Proxies whose `X-Forwarded-For` is believed: a request from one of
    /// these addresses counts as the rightmost address of that header that
    /// is not itself a trusted proxy. Default none (the peer address).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Browser origins (`scheme://host[:port]`, or `*` for any) besides the
    /// server's own that may open WebSockets and streaming (SSE, multipart)
    /// responses; other origins get `403`. Requests without an `Origin`
    /// header (non-browser clients) always pass. Default none: same-origin
    /// pages only.
    pub allowed_origins: Vec<String>,
    /// Bounds on client filters.
    pub filter_limits: FilterLimits,
    /// Bounds on every GraphQL request (body, query size, depth, fields,
    /// aliases), on every endpoint.
    pub request_limits: RequestLimits,
    /// Write batching under load on two-channel sockets; `None` writes
    /// every change as soon as its socket task runs. Default
    /// [`WritePacing::default`].
    pub write_pacing: Option<WritePacing>,
    /// Tasks the sockets (two-channel and standard-protocol) run in, each
    /// socket a future inside one of them (`transport/shard.rs`), so that a
    /// change to many sockets wakes a few tasks rather than one per socket
    /// and the rest of the process (the requests that save the next rows)
    /// is not queued behind the fan-out. Default 0: four per CPU (`std::thread::available_parallelism`).
    pub socket_shards: usize,
    /// Backpressure on the producers: a publish that leaves a local
    /// socket's queue seven eighths full or more waits, after publishing,
    /// until that queue is back to three quarters (or the socket closes),
    /// at most this long. A server whose producers outrun the fan-out then
    /// slows its writers instead of closing sockets that are merely behind
    /// as slow consumers; a socket that stopped reading costs each publish
    /// at most this bound until its queue overflows (an eighth of the
    /// queue's worth of changes). A server that keeps up never waits.
    /// `None`: never wait. Default 100 ms.
    pub publish_backpressure: Option<Duration>,
    /// Interval of the server's WebSocket pings on two-channel sockets;
    /// `None` sends none. Default 30 s.
    pub socket_ping: Option<Duration>,
    /// A two-channel socket from which nothing (not even a pong) arrived
    /// for this long is closed as dead (only while pings are sent).
    /// Default 75 s.
    pub socket_idle_timeout: Duration,
    /// A write to a socket or a standard-protocol connection that makes no
    /// progress for this long ends the connection (its peer stopped
    /// reading). Default 10 s.
    pub send_timeout: Duration,
    /// Standard-protocol subscribers (`graphql-transport-ws`, `graphql-ws`,
    /// SSE and multipart responses) of a generated `<name>Changes` field whose operation (document,
    /// operation name, variables, extensions) and subscriptions (groups,
    /// merged scope and filters, projection) are equal share one execution:
    /// each change is executed and serialized once for all of them, and
    /// each frame is that payload with the subscriber's operation id.
    /// The execution runs with the first subscriber's request data: turn
    /// this off if an async-graphql extension of yours writes per-request
    /// data into responses. Default `true`.
    pub share_executions: bool,
    /// How long [`crate::Hub::stopped`] waits for the hub's tasks to end
    /// after [`crate::Hub::shutdown`], and then as long again for the
    /// channel layer to stop. Connections write what their queues hold for
    /// at most 1 s of it. Default 5 s.
    pub stop_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_path: "/graphql".into(),
            ws_path: "/ws/graphql/".into(),
            queue_capacity: 1024,
            max_subscriptions_per_channel: 300,
            max_channels: 100_000,
            max_channels_per_client: 1_000,
            max_subscriptions_per_client: 10_000,
            max_streams_per_client: 100,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            filter_limits: FilterLimits::default(),
            request_limits: RequestLimits::default(),
            write_pacing: Some(WritePacing::default()),
            socket_shards: 0,
            publish_backpressure: Some(Duration::from_millis(100)),
            socket_ping: Some(Duration::from_secs(30)),
            socket_idle_timeout: Duration::from_secs(75),
            send_timeout: Duration::from_secs(10),
            share_executions: true,
            stop_timeout: Duration::from_secs(5),
        }
    }
}

/// How a two-channel socket batches its writes.
///
/// A socket writes a change at once when nothing calls for waiting. Two
/// things do:
///
/// - **The server is behind**: a change reaches its socket task later than
///   `busy_after` after the hub queued it (more sockets to write than the
///   CPUs can turn over). The socket then waits `window` before writing.
/// - **The socket is busy**: it wrote less than `min_interval` ago. It
///   then waits until `min_interval` has passed since that write, so that
///   one socket writes at most about once per `min_interval` while its
///   changes keep coming; a socket whose changes are further apart than
///   that never waits for this.
///
/// Every change that arrived meanwhile goes in that one write; a queue past
/// half full ends any wait at once (a busy runtime fires timers late). One
/// system call per batch instead of one per change frees the CPU for the
/// database and for the other sockets: on loopback a small write costs
/// several microseconds of kernel time, most of a delivery's cost. The
/// price is at most `window` (or `min_interval`) of added latency, paid only
/// under load. BENCHMARKS.md ("Write pacing") has the measurements behind
/// the defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WritePacing {
    /// Queueing delay past which the server counts as behind. Default 1 ms.
    pub busy_after: Duration,
    /// How long a socket of a server that is behind gathers changes before
    /// writing. Default 2 ms.
    pub window: Duration,
    /// Shortest time between two writes of one socket while changes keep
    /// coming; zero: no such wait. Default 2 ms.
    pub min_interval: Duration,
}

impl Default for WritePacing {
    fn default() -> Self {
        WritePacing {
            busy_after: Duration::from_millis(1),
            window: Duration::from_millis(2),
            min_interval: Duration::from_millis(2),
        }
    }
}

impl WritePacing {
    /// When a socket that last wrote at `last_write` and now took a change
    /// queued at `queued_at` should write it: `None` for now. Public so that
    /// a hand-written socket (the benchmark's ceiling) paces by the same rules.
    pub fn hold_until(
        &self,
        now: tokio::time::Instant,
        queued_at: Option<tokio::time::Instant>,
        last_write: Option<tokio::time::Instant>,
    ) -> Option<tokio::time::Instant> {
        let behind = queued_at.filter(|queued_at| now.saturating_duration_since(*queued_at) > self.busy_after);
        let behind = behind.map(|_| now + self.window);
        let busy = last_write.map(|last| last + self.min_interval).filter(|until| *until > now);
        behind.max(busy)
    }
}

setters!(Config {
    http_path: String => with_http_path,
    ws_path: String => with_ws_path,
    queue_capacity: usize => with_queue_capacity,
    max_subscriptions_per_channel: usize => with_max_subscriptions_per_channel,
    max_channels: usize => with_max_channels,
    max_channels_per_client: usize => with_max_channels_per_client,
    max_subscriptions_per_client: usize => with_max_subscriptions_per_client,
    max_streams_per_client: usize => with_max_streams_per_client,
    trusted_proxies: Vec<std::net::IpAddr> => with_trusted_proxies,
    allowed_origins: Vec<String> => with_allowed_origins,
    filter_limits: FilterLimits => with_filter_limits,
    request_limits: RequestLimits => with_request_limits,
    write_pacing: Option<WritePacing> => with_write_pacing,
    socket_shards: usize => with_socket_shards,
    publish_backpressure: Option<Duration> => with_publish_backpressure,
    socket_ping: Option<Duration> => with_socket_ping,
    socket_idle_timeout: Duration => with_socket_idle_timeout,
    send_timeout: Duration => with_send_timeout,
    share_executions: bool => with_share_executions,
    stop_timeout: Duration => with_stop_timeout,
});

setters!(WritePacing {
    busy_after: Duration => with_busy_after,
    window: Duration => with_window,
    min_interval: Duration => with_min_interval,
});

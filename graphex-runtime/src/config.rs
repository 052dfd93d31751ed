//! Server settings, with documented defaults.

use crate::filter::FilterLimits;

/// Everything a graphex server can be tuned with.
#[derive(Clone, Debug)]
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
    /// Bounds on client filters.
    pub filter_limits: FilterLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_path: "/graphql".into(),
            ws_path: "/ws/graphql/".into(),
            queue_capacity: 1024,
            max_subscriptions_per_channel: 300,
            max_channels: 100_000,
            filter_limits: FilterLimits::default(),
        }
    }
}

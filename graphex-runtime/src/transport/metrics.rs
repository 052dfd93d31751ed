//! A hub's Prometheus metrics, served at `GET /metrics` only where
//! [`metrics_router`] is mounted. Nothing here runs per delivery: a
//! collector reads the hub's counters (`hub/stats.rs`), its channels, its
//! layer ([`crate::layer::ChannelLayer::metrics`]) and its captures at each
//! scrape; the two histograms are recorded by the hub once per change
//! dispatched and by a socket once per write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::hub::{Hub, Transport};

/// The content type of `GET /metrics`: the OpenMetrics text format, which
/// Prometheus reads.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A router serving `hub`'s metrics at `GET /metrics`, in the OpenMetrics
/// text format ([`METRICS_CONTENT_TYPE`]). Not served unless mounted:
///
/// ```no_run
/// # fn app(hub: graphex_runtime::Hub, app: axum::Router) -> axum::Router {
/// app.merge(graphex_runtime::metrics_router(hub))
/// # }
/// ```
///
/// Each call makes its own registry (one per hub: hubs of one process,
/// such as tests, never share a series). The README's "Metrics" section
/// says what each metric means.
pub fn metrics_router(hub: Hub) -> Router {
    let registry = Arc::new(registry(hub));
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move { ([(CONTENT_TYPE, METRICS_CONTENT_TYPE)], encode(&registry)).into_response() }
        }),
    )
}

/// `hub`'s metrics in the OpenMetrics text format, as `GET /metrics` of
/// [`metrics_router`] answers, for a server that serves them its own way.
pub fn render_metrics(hub: &Hub) -> String {
    encode(&registry(hub.clone()))
}

fn registry(hub: Hub) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HubCollector(hub)));
    registry
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String does not fail");
    text
}

/// Reads a hub's values at scrape time.
struct HubCollector(Hub);

impl std::fmt::Debug for HubCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HubCollector").finish()
    }
}

/// Why a notification was not delivered: the `reason` label of
/// `graphex_notifications_dropped_total`.
const DROP_REASONS: [&str; 4] = ["filtered", "slow_consumer", "layer_failure", "undecodable"];

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    metric.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&value, None)
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    metric.encode_gauge(&value)
}

fn labelled<'a>(
    metric: &mut MetricEncoder<'_>,
    label: &'static str,
    series: impl IntoIterator<Item = (&'a str, Value)>,
) -> std::fmt::Result {
    for (value, reading) in series {
        let labels = [(label, value)];
        let mut family = metric.encode_family(&labels)?;
        match reading {
            Value::Counter(count) => {
                family.encode_counter::<prometheus_client::encoding::NoLabelSet, _, u64>(&count, None)?
            }
            Value::Gauge(level) => family.encode_gauge(&level)?,
        }
    }
    Ok(())
}

enum Value {
    Counter(u64),
    Gauge(i64),
}

fn level(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for HubCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let hub = &self.0;
        let counters = hub.counters();
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let stats = hub.stats();

        let mut metric = encoder.encode_descriptor(
            "graphex_connections_open",
            "Client connections open now, by protocol",
            None,
            MetricType::Gauge,
        )?;
        labelled(
            &mut metric,
            "protocol",
            Transport::ALL
                .iter()
                .map(|transport| (transport.label(), Value::Gauge(level(read(&counters.open[*transport as usize]))))),
        )?;
        gauge(
            &mut encoder,
            "graphex_channels",
            "Hub channels open now (one per two-channel socket or subscription stream)",
            None,
            level(hub.channel_count() as u64),
        )?;
        let by_stream = hub.subscriptions_by_stream();
        let mut metric = encoder.encode_descriptor(
            "graphex_subscriptions",
            "Subscriptions held now, by stream (one per subscribe and action)",
            None,
            MetricType::Gauge,
        )?;
        labelled(
            &mut metric,
            "stream",
            by_stream.iter().map(|(stream, count)| (*stream, Value::Gauge(level(*count)))),
        )?;

        counter(
            &mut encoder,
            "graphex_changes_published",
            "Changes published through this hub (one per change)",
            stats.published,
        )?;
        counter(
            &mut encoder,
            "graphex_changes_received",
            "Layer messages received for groups with local members",
            stats.received,
        )?;
        counter(
            &mut encoder,
            "graphex_deliveries",
            "Notifications queued to channels and shared subscribers",
            stats.delivered,
        )?;
        let mut metric = encoder.encode_descriptor(
            "graphex_notifications_dropped",
            "Notifications not delivered, by reason",
            None,
            MetricType::Counter,
        )?;
        let undecodable = stats.dropped.saturating_sub(read(&counters.publish_failures)) + stats.unreadable;
        let dropped =
            [read(&counters.filtered), read(&counters.overflowed), read(&counters.publish_failures), undecodable];
        labelled(&mut metric, "reason", DROP_REASONS.into_iter().zip(dropped.map(Value::Counter)))?;
        counter(
            &mut encoder,
            "graphex_slow_consumer_closes",
            "Channels and streams closed as slow consumers",
            stats.slow_consumers,
        )?;
        counter(
            &mut encoder,
            "graphex_backpressure_waits",
            "Publishes that waited for lagging sockets",
            stats.backpressure_waits,
        )?;
        counter(&mut encoder, "graphex_client_limit_refusals", "Refusals at a per-client cap", stats.client_limits)?;
        counter(
            &mut encoder,
            "graphex_cursor_expirations",
            "Channels closed because changes may have been lost (CURSOR_EXPIRED)",
            stats.expired,
        )?;
        let mut metric = encoder.encode_descriptor(
            "graphex_authorization_ends",
            "Connections and streams ended by their principal's authorization: token expired or revoked",
            None,
            MetricType::Counter,
        )?;
        let ends =
            [("token_expired", Value::Counter(stats.tokens_expired)), ("revoked", Value::Counter(stats.revoked))];
        labelled(&mut metric, "reason", ends)?;

        for (name, help, latency) in [
            (
                "graphex_publish_to_queue",
                "From a change's publish in this process to its queueing, once per change",
                &counters.publish_to_queue,
            ),
            (
                "graphex_queue_to_socket",
                "From queueing to a two-channel socket's write, once per write (oldest of the batch)",
                &counters.queue_to_socket,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
            let (sum, count, buckets) = latency.snapshot();
            metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }

        let layer = hub.layer().metrics();
        counter(
            &mut encoder,
            "graphex_layer_reconnects",
            "Channel layer reconnections to its backend",
            layer.reconnects,
        )?;
        counter(
            &mut encoder,
            "graphex_layer_publish_failures",
            "Messages the channel layer's backend refused or did not take in time",
            layer.publish_failures,
        )?;
        counter(
            &mut encoder,
            "graphex_layer_gap_repairs",
            "Changes delivered from history to repair a gap",
            layer.gap_repairs,
        )?;
        counter(&mut encoder, "graphex_layer_streams_lost", "Streams whose gap history could not repair", layer.lost)?;
        if let Some(history) = layer.history {
            gauge(
                &mut encoder,
                "graphex_layer_history",
                "Changes kept in history for resuming, every stream",
                None,
                level(history),
            )?;
        }
        if let Some(connected) = layer.connected {
            gauge(
                &mut encoder,
                "graphex_layer_connected",
                "1 while the channel layer is connected to its backend",
                None,
                i64::from(connected),
            )?;
        }

        let lags = hub.capture_lags();
        if !lags.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "graphex_capture_lag",
                "Bytes of the database's log not yet confirmed by this process's capture, by slot",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            labelled(&mut metric, "slot", lags.iter().map(|(slot, lag)| (slot.as_str(), Value::Gauge(level(*lag)))))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each sample line's name and labels, without its value.
    fn series(text: &str) -> Vec<String> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' ').map(|(series, _)| series.to_owned()))
            .collect()
    }

    #[tokio::test]
    async fn names_follow_prometheus_conventions_and_labels_are_bounded() {
        let hub = Hub::default();
        let text = render_metrics(&hub);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let series = series(&text);
        for expected in [
            "graphex_changes_published_total",
            "graphex_deliveries_total",
            "graphex_slow_consumer_closes_total",
            "graphex_backpressure_waits_total",
            "graphex_channels",
            "graphex_layer_history",
            "graphex_publish_to_queue_seconds_count",
            "graphex_queue_to_socket_seconds_bucket{le=\"0.001\"}",
            "graphex_connections_open{protocol=\"two-channel\"}",
            "graphex_connections_open{protocol=\"graphql-transport-ws\"}",
            "graphex_connections_open{protocol=\"graphql-ws\"}",
            "graphex_connections_open{protocol=\"sse\"}",
            "graphex_connections_open{protocol=\"multipart\"}",
            "graphex_notifications_dropped_total{reason=\"filtered\"}",
            "graphex_notifications_dropped_total{reason=\"slow_consumer\"}",
            "graphex_notifications_dropped_total{reason=\"layer_failure\"}",
            "graphex_notifications_dropped_total{reason=\"undecodable\"}",
        ] {
            assert!(series.iter().any(|line| line == expected), "{expected} missing from\n{text}");
        }
        for line in &series {
            assert!(line.starts_with("graphex_"), "{line}");
            // Bounded label sets only: no channel, group or user.
            for label in ["channel", "group", "user", "principal", "node"] {
                assert!(!line.contains(&format!("{label}=")), "{line}");
            }
        }
        // In memory, no capture runs and no backend connects.
        assert!(!text.contains("graphex_capture_lag"), "{text}");
        assert!(!text.contains("graphex_layer_connected"), "{text}");
    }

    #[tokio::test]
    async fn latency_histograms_are_cumulative_and_their_count_and_sum_agree() {
        let hub = Hub::default();
        let written = &hub.counters().queue_to_socket;
        for micros in [50, 300, 300, 2_000, 20_000_000] {
            written.observe(std::time::Duration::from_micros(micros));
        }
        let text = render_metrics(&hub);
        let value = |series: &str| {
            let line = text
                .lines()
                .find(|line| line.starts_with(&format!("{series} ")))
                .unwrap_or_else(|| panic!("{series} missing from\n{text}"));
            line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
        };
        assert_eq!(value("graphex_queue_to_socket_seconds_bucket{le=\"0.0001\"}"), 1.0);
        assert_eq!(value("graphex_queue_to_socket_seconds_bucket{le=\"0.00025\"}"), 1.0);
        assert_eq!(value("graphex_queue_to_socket_seconds_bucket{le=\"0.0005\"}"), 3.0);
        assert_eq!(value("graphex_queue_to_socket_seconds_bucket{le=\"0.0025\"}"), 4.0);
        assert_eq!(value("graphex_queue_to_socket_seconds_bucket{le=\"10.0\"}"), 4.0);
        assert_eq!(value("graphex_queue_to_socket_seconds_bucket{le=\"+Inf\"}"), 5.0);
        assert_eq!(value("graphex_queue_to_socket_seconds_count"), 5.0);
        assert!((value("graphex_queue_to_socket_seconds_sum") - 20.00265).abs() < 1e-9, "{text}");
        assert_eq!(value("graphex_publish_to_queue_seconds_count"), 0.0, "the other histogram is apart");
    }

    #[tokio::test]
    async fn a_connection_counts_while_its_guard_lives() {
        let hub = Hub::default();
        let open = |text: String| {
            text.lines().find(|line| line.starts_with("graphex_connections_open{protocol=\"sse\"}")).map(str::to_owned)
        };
        let guard = hub.connected(Transport::Sse);
        assert_eq!(open(render_metrics(&hub)).as_deref(), Some("graphex_connections_open{protocol=\"sse\"} 1"));
        drop(guard);
        assert_eq!(open(render_metrics(&hub)).as_deref(), Some("graphex_connections_open{protocol=\"sse\"} 0"));
    }
}

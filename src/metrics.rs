//! Process-wide counters and gauges, exported in Prometheus text format by the `prometheus`
//! crate. Hot paths touch them once per event or connection; the one per-delivery metric, the
//! latency histogram, is gathered locally per socket write when a write carries several events.

use crate::namespace::Namespaces;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// The hub's metrics.
pub struct Metrics {
    registry: Registry,
    /// Open connections.
    pub connections: IntGauge,
    /// Connections accepted since start.
    pub connections_total: IntCounter,
    /// Events published, by namespace (`broadcast`, `user`, `role`, or the channel prefix).
    pub events_by_namespace: IntCounterVec,
    /// `events_by_namespace` for `broadcast`, looked up once (the common case).
    pub events_broadcast: IntCounter,
    /// Events fanned out by this node's hub.
    pub events_published: IntCounter,
    /// Frames queued to connections.
    pub deliveries: IntCounter,
    /// Connections dropped because their queue stayed over its byte bound.
    pub slow_consumers: IntCounter,
    /// Refused tokens, by reason.
    pub auth_failures: IntCounterVec,
    /// Refused publishes, by reason.
    pub publish_rejected: IntCounterVec,
    /// Streams with local subscribers.
    pub channels: IntGauge,
    /// Bytes of history held.
    pub history_bytes: IntGauge,
    /// Bytes queued for writing in all connections' send queues.
    pub queue_bytes: IntGauge,
    /// Seconds from publish accepted (or received from Redis) to frame written to the socket, one
    /// sample per live event written (replays are not observed).
    pub delivery_latency: Histogram,
    /// Webhook requests answered with a 2xx.
    pub webhooks_sent: IntCounter,
    /// Webhooks given up on (retry time over, or dropped from a full queue).
    pub webhooks_failed: IntCounter,
    /// Failed webhook attempts that will be retried.
    pub webhooks_retried: IntCounter,
    /// Webhooks owed (queued per URL, not yet delivered or given up).
    pub webhooks_queued: IntGauge,
    /// Durable transactions written with `--data-dir` (one fsync each, shared by a group).
    pub store_commits: IntCounter,
    /// Seconds each durable transaction took, fsync included.
    pub store_commit_seconds: Histogram,
    /// Publishes waiting for their durable commit.
    pub store_waiting: IntGauge,
    /// TCP connections and upgrades refused by an abuse limit, by reason.
    pub connections_refused: IntCounterVec,
    /// HTTP requests refused for their `Origin` or `Host`, by reason.
    pub requests_refused: IntCounterVec,
    /// Client frames refused for exceeding the per-connection frame rate.
    pub frames_rate_limited: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let connections = IntGauge::new("wshub_connections", "Open WebSocket connections")?;
        let connections_total = IntCounter::new("wshub_connections_total", "Connections accepted since start")?;
        let events_by_namespace = IntCounterVec::new(
            Opts::new("wshub_events_published_total", "Events accepted for publishing, by namespace"),
            &["namespace"],
        )?;
        let events_published = IntCounter::new("wshub_events_fanned_out_total", "Events fanned out by this node")?;
        let deliveries = IntCounter::new("wshub_deliveries_total", "Frames queued to connections")?;
        let slow_consumers = IntCounter::new(
            "wshub_slow_consumer_disconnects_total",
            "Connections dropped for a send queue over its bound",
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new("wshub_auth_failures_total", "Refused client tokens, by reason"),
            &["reason"],
        )?;
        let publish_rejected =
            IntCounterVec::new(Opts::new("wshub_publish_rejected_total", "Refused publishes, by reason"), &["reason"])?;
        let channels = IntGauge::new("wshub_channels", "Streams with local subscribers")?;
        let history_bytes = IntGauge::new("wshub_history_bytes", "Bytes of event history held")?;
        let queue_bytes =
            IntGauge::new("wshub_queue_bytes", "Bytes queued in all send queues (shared frames counted per queue)")?;
        let delivery_latency = Histogram::with_opts(
            HistogramOpts::new(
                "wshub_delivery_latency_seconds",
                "Publish accepted to frame written to the socket, one sample per live event written",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        let webhooks_sent = IntCounter::new("wshub_webhooks_sent_total", "Webhook requests answered with a 2xx")?;
        let webhooks_failed =
            IntCounter::new("wshub_webhooks_failed_total", "Webhooks given up on (retry time over or queue full)")?;
        let webhooks_retried =
            IntCounter::new("wshub_webhooks_retried_total", "Failed webhook attempts scheduled for a retry")?;
        let webhooks_queued = IntGauge::new("wshub_webhooks_queued", "Webhooks owed, per URL, not yet delivered")?;
        registry.register(Box::new(webhooks_sent.clone()))?;
        registry.register(Box::new(webhooks_failed.clone()))?;
        registry.register(Box::new(webhooks_retried.clone()))?;
        registry.register(Box::new(webhooks_queued.clone()))?;
        let store_commits =
            IntCounter::new("wshub_store_commits_total", "Durable transactions written (one fsync each)")?;
        let store_commit_seconds = Histogram::with_opts(
            HistogramOpts::new("wshub_store_commit_seconds", "Time of one durable transaction, fsync included")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
        )?;
        let store_waiting = IntGauge::new("wshub_store_waiting", "Publishes waiting for their durable commit")?;
        let connections_refused = IntCounterVec::new(
            Opts::new("wshub_connections_refused_total", "Connections refused or closed by an abuse limit, by reason"),
            &["reason"],
        )?;
        let requests_refused = IntCounterVec::new(
            Opts::new("wshub_requests_refused_total", "HTTP requests refused for their Origin or Host, by reason"),
            &["reason"],
        )?;
        let frames_rate_limited = IntCounter::new(
            "wshub_frames_rate_limited_total",
            "Client frames refused by the per-connection frame rate",
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(requests_refused.clone()))?;
        registry.register(Box::new(frames_rate_limited.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(events_by_namespace.clone()))?;
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(slow_consumers.clone()))?;
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(publish_rejected.clone()))?;
        registry.register(Box::new(channels.clone()))?;
        registry.register(Box::new(history_bytes.clone()))?;
        registry.register(Box::new(queue_bytes.clone()))?;
        registry.register(Box::new(delivery_latency.clone()))?;
        registry.register(Box::new(store_commits.clone()))?;
        registry.register(Box::new(store_commit_seconds.clone()))?;
        registry.register(Box::new(store_waiting.clone()))?;
        Ok(Self {
            registry,
            connections,
            connections_total,
            events_broadcast: events_by_namespace.with_label_values(&["broadcast"]),
            events_by_namespace,
            events_published,
            deliveries,
            slow_consumers,
            auth_failures,
            publish_rejected,
            channels,
            history_bytes,
            queue_bytes,
            delivery_latency,
            webhooks_sent,
            webhooks_failed,
            webhooks_retried,
            webhooks_queued,
            store_commits,
            store_commit_seconds,
            store_waiting,
            connections_refused,
            requests_refused,
            frames_rate_limited,
        })
    }

    /// Renders every metric in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The namespace label of a stream: `user`, `role`, the prefix of its `--config` namespace
/// (without a trailing `:`), or `other`. Bounded by the configuration, never by what publishers
/// send: a label per channel name would grow without limit.
pub fn namespace_label<'a>(stream: &str, namespaces: &'a Namespaces) -> &'a str {
    if stream.starts_with("user:") {
        return "user";
    }
    if stream.starts_with("role:") {
        return "role";
    }
    namespaces.find(stream).map_or("other", |ns| ns.prefix.strip_suffix(':').unwrap_or(&ns.prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_come_from_the_configuration_only() {
        let ns =
            Namespaces::parse("[[namespace]]\nprefix = \"chat:\"\n[[namespace]]\nprefix = \"team-\"\n").expect("valid");
        assert_eq!(namespace_label("chat:42", &ns), "chat");
        assert_eq!(namespace_label("team-7", &ns), "team-");
        assert_eq!(namespace_label("user:9", &ns), "user");
        assert_eq!(namespace_label("role:admin", &ns), "role");
        assert_eq!(namespace_label("news", &ns), "other");
        assert_eq!(namespace_label("fresh:name-1", &ns), "other");
    }
}

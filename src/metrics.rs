//! Process-wide counters and gauges, exported in Prometheus text format by the `prometheus`
//! crate. Hot paths touch them once per event or connection, never once per delivery.

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
    /// Seconds from publish accepted to frame written to the socket.
    pub delivery_latency: Histogram,
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
            HistogramOpts::new("wshub_delivery_latency_seconds", "Publish accepted to frame written to the socket")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
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

/// The namespace label of a stream: `broadcast`, `user`, `role`, or the text before the first `:`.
pub fn namespace_of(stream: &str) -> &str {
    stream.split_once(':').map_or(stream, |(ns, _)| ns)
}

//! Live statistics: a sampler task that every second records connections, events published and
//! deliveries (from [`Metrics`]), keeps the last five minutes of samples with their per-second
//! rates, and pushes a `hub:stats` frame to the operators watching `admin:dashboard`. Also builds
//! the JSON of `GET /stats`, so the endpoint and the pushed frame always agree.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{Histogram, IntCounterVec};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::MissedTickBehavior;

use crate::app::AppState;
use crate::engine::EngineError;
use crate::hub::Command;
use crate::metrics::Metrics;
use crate::protocol::{Event, now_rfc3339, to_frame};

/// How often the sampler runs.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Samples kept: five minutes at one per second.
pub const KEEP: usize = 300;
/// The window of the `*_per_s` rates in `/stats`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// The operator-only stream the dashboard subscribes to.
pub const DASHBOARD_STREAM: &str = "admin:dashboard";
/// Recent events included in each pushed `hub:stats` frame.
pub const PUSHED_EVENTS: usize = 20;

/// One second of the hub's life.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Unix milliseconds of the sample.
    pub t_ms: u64,
    /// Open connections.
    pub connections: i64,
    /// Events fanned out since start.
    pub events: u64,
    /// Deliveries since start.
    pub deliveries: u64,
    /// Events per second since the previous sample.
    pub events_per_s: f64,
    /// Deliveries per second since the previous sample.
    pub deliveries_per_s: f64,
    #[serde(skip)]
    at: Instant,
}

/// Rates over [`RATE_WINDOW`] and over the last sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// Events per second, averaged over the last minute.
    pub events_per_s: f64,
    /// Deliveries per second, averaged over the last minute.
    pub deliveries_per_s: f64,
    /// Events per second over the last sample interval.
    pub events_per_s_now: f64,
    /// Deliveries per second over the last sample interval.
    pub deliveries_per_s_now: f64,
}

/// The ring of recent samples of one hub.
#[derive(Debug, Default)]
pub struct Sampler {
    samples: Mutex<VecDeque<Sample>>,
}

impl Sampler {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a sample of `metrics` now and keeps it (dropping samples older than [`KEEP`]).
    pub fn record(&self, metrics: &Metrics) -> Sample {
        let at = Instant::now();
        let (events, deliveries) = (metrics.events_published.get(), metrics.deliveries.get());
        let mut ring = self.lock();
        let (events_per_s, deliveries_per_s) = match ring.back() {
            Some(prev) => (per_s(events, prev.events, at - prev.at), per_s(deliveries, prev.deliveries, at - prev.at)),
            None => (0.0, 0.0),
        };
        let sample = Sample {
            t_ms: now_rfc3339().1,
            connections: metrics.connections.get(),
            events,
            deliveries,
            events_per_s,
            deliveries_per_s,
            at,
        };
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(sample);
        sample
    }

    /// Every kept sample, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<Sample> {
        self.lock().back().copied()
    }

    /// Rates from the counters now against the oldest sample within [`RATE_WINDOW`].
    pub fn rates(&self, metrics: &Metrics) -> Rates {
        let now = Instant::now();
        let ring = self.lock();
        let base = ring.iter().find(|s| now.duration_since(s.at) <= RATE_WINDOW);
        let (events_per_s, deliveries_per_s) = base.map_or((0.0, 0.0), |b| {
            let dt = now - b.at;
            (per_s(metrics.events_published.get(), b.events, dt), per_s(metrics.deliveries.get(), b.deliveries, dt))
        });
        let last = ring.back();
        Rates {
            events_per_s,
            deliveries_per_s,
            events_per_s_now: last.map_or(0.0, |s| s.events_per_s),
            deliveries_per_s_now: last.map_or(0.0, |s| s.deliveries_per_s),
        }
    }

    /// The kept samples as column arrays, compact for JSON: `{"t_ms":[..],"connections":[..],..}`.
    pub fn series(&self) -> Value {
        let ring = self.lock();
        json!({
            "t_ms": ring.iter().map(|s| s.t_ms).collect::<Vec<_>>(),
            "connections": ring.iter().map(|s| s.connections).collect::<Vec<_>>(),
            "events_per_s": ring.iter().map(|s| round2(s.events_per_s)).collect::<Vec<_>>(),
            "deliveries_per_s": ring.iter().map(|s| round2(s.deliveries_per_s)).collect::<Vec<_>>(),
        })
    }
}

fn per_s(now: u64, before: u64, dt: Duration) -> f64 {
    let secs = dt.as_secs_f64();
    if secs < 0.001 { 0.0 } else { now.saturating_sub(before) as f64 / secs }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Samples every [`SAMPLE_EVERY`] until shutdown, pushing `hub:stats` to dashboard watchers.
pub async fn run(app: Arc<AppState>) {
    let sampler = &app.sampler;
    sampler.record(&app.metrics);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + SAMPLE_EVERY, SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        let sample = sampler.record(&app.metrics);
        // In a task of its own, so that a bug in building one frame is logged and the next
        // second is sampled anyway, instead of freezing every dashboard.
        let pushing = Arc::clone(&app);
        match tokio::spawn(async move { push(&pushing, sample).await }).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "dashboard stats not pushed"),
            Err(e) => tracing::error!(error = %e, "building the dashboard stats failed; sampling goes on"),
        }
    }
}

/// Sends a `hub:stats` frame to the local watchers of [`DASHBOARD_STREAM`], if there are any.
async fn push(app: &AppState, sample: Sample) -> Result<(), EngineError> {
    let channel = DASHBOARD_STREAM.to_string();
    let (users, anonymous) = app.hub.ask(|reply| Command::Presence { channel, reply }).await?;
    if users.is_empty() && anonymous == 0 {
        return Ok(());
    }
    /// The pushed frame: the snapshot's fields, then the sample and the recent events.
    #[derive(Serialize)]
    struct StatsFrame {
        #[serde(flatten)]
        snapshot: Value,
        #[serde(rename = "type")]
        kind: &'static str,
        sample: Sample,
        recent_events: Vec<EventRow>,
    }
    let frame = StatsFrame {
        snapshot: snapshot(app).await?,
        kind: "hub:stats",
        sample,
        recent_events: recent_events(app, PUSHED_EVENTS).await?,
    };
    let frame = to_frame(&frame);
    app.hub.send(Command::Control { stream: DASHBOARD_STREAM.to_string(), frame }).await;
    Ok(())
}

/// The most recent events across streams, newest first, each with its receipt counts
/// (`recipients`: connections it was written to; `acked`).
pub async fn recent_events(app: &AppState, limit: usize) -> Result<Vec<EventRow>, EngineError> {
    let events = app.engine.recent(limit).await?;
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        let receipt = app.engine.receipt(Arc::clone(&event)).await;
        let counts = (receipt["written"].clone(), receipt["acked"].clone());
        rows.push(EventRow { event, receipt: Some(counts) });
    }
    Ok(rows)
}

/// An event as the admin endpoints show it, with its receipt counts where they were asked for.
/// Serialized straight from the event: its `data` is written as the publisher sent it and never
/// parsed again (a `serde_json::Value` cannot hold every valid JSON text, such as `1e400` or
/// nesting deeper than 128 levels, and converting one would fail).
pub struct EventRow {
    /// The event.
    pub event: Arc<Event>,
    /// `recipients` and `acked`, when included.
    pub receipt: Option<(Value, Value)>,
}

impl EventRow {
    /// A row without receipt counts.
    pub fn new(event: &Arc<Event>) -> Self {
        Self { event: Arc::clone(event), receipt: None }
    }
}

impl Serialize for EventRow {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = &self.event;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("id", &e.id)?;
        map.serialize_entry("seq", &e.seq)?;
        map.serialize_entry("type", &e.kind)?;
        map.serialize_entry("message", &e.message)?;
        map.serialize_entry("data", &e.data)?;
        map.serialize_entry("timestamp", &e.timestamp)?;
        map.serialize_entry("targets", &e.targets)?;
        map.serialize_entry("from", &e.from)?;
        if let Some((recipients, acked)) = &self.receipt {
            map.serialize_entry("recipients", recipients)?;
            map.serialize_entry("acked", acked)?;
        }
        map.end()
    }
}

/// The body of `GET /stats` (without the sample series): counts from the hub actor, counters
/// from [`Metrics`], rates from the sampler, memory, uptime, and cluster nodes with their totals.
pub async fn snapshot(app: &AppState) -> Result<Value, EngineError> {
    let hub = app.hub.ask(|reply| Command::Stats { reply }).await?;
    let m = &app.metrics;
    m.history_bytes.set(app.engine.history_bytes() as i64);
    let rates = app.sampler.rates(&app.metrics);
    let nodes = app.engine.cluster_nodes().await;
    let auth_failures = by_label(&m.auth_failures);
    let publish_rejected = by_label(&m.publish_rejected);
    Ok(json!({
        "node": app.hub.node(),
        "clients": hub.connections,
        "connections": hub.connections,
        "connections_total": m.connections_total.get(),
        "authenticated": hub.authenticated,
        "anonymous": hub.anonymous,
        "by_role": hub.by_role,
        "channels": hub.channels,
        "top_channels": hub.top_channels.iter().map(|(name, n)| json!({"channel": name, "subscribers": n})).collect::<Vec<_>>(),
        "events_published": m.events_published.get(),
        "events_by_namespace": by_label(&m.events_by_namespace),
        "events_per_s": round2(rates.events_per_s),
        "events_per_s_now": round2(rates.events_per_s_now),
        "deliveries": m.deliveries.get(),
        "deliveries_per_s": round2(rates.deliveries_per_s),
        "deliveries_per_s_now": round2(rates.deliveries_per_s_now),
        "delivery_latency": latency(&m.delivery_latency),
        "slow_consumer_disconnects": m.slow_consumers.get(),
        "auth_failures_total": auth_failures.values().sum::<u64>(),
        "auth_failures": auth_failures,
        "publish_rejected_total": publish_rejected.values().sum::<u64>(),
        "publish_rejected": publish_rejected,
        "history_bytes": m.history_bytes.get(),
        "queue_bytes": m.queue_bytes.get(),
        "rss_bytes": rss_bytes(),
        "uptime_s": app.started.elapsed().as_secs(),
        "engine": app.engine.health(),
        "cluster": cluster_totals(&nodes),
        "nodes": nodes,
    }))
}

/// The values of a labelled counter, by its one label.
fn by_label(vec: &IntCounterVec) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for family in vec.collect() {
        for metric in family.get_metric() {
            let label = metric.get_label().first().map_or("", |l| l.value()).to_string();
            *out.entry(label).or_default() += metric.get_counter().get_value() as u64;
        }
    }
    out
}

/// Count, mean and bucket-bound percentiles of the delivery latency histogram, in milliseconds.
fn latency(histogram: &Histogram) -> Value {
    let count = histogram.get_sample_count();
    let mean_ms = if count == 0 { 0.0 } else { histogram.get_sample_sum() * 1000.0 / count as f64 };
    let buckets: Vec<(f64, u64)> = histogram
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .flat_map(|m| m.get_histogram().get_bucket().iter().map(|b| (b.upper_bound(), b.cumulative_count())))
        .collect();
    let quantile = |q: f64| -> Option<f64> {
        let rank = (q * count as f64).ceil() as u64;
        buckets.iter().find(|(_, c)| *c >= rank.max(1)).map(|(bound, _)| round2(bound * 1000.0))
    };
    json!({
        "count": count,
        "mean_ms": round2(mean_ms),
        "p50_ms_at_most": if count == 0 { None } else { quantile(0.5) },
        "p99_ms_at_most": if count == 0 { None } else { quantile(0.99) },
    })
}

/// Totals over the cluster's node heartbeats; `null` outside cluster mode.
fn cluster_totals(nodes: &[Value]) -> Value {
    if nodes.is_empty() {
        return Value::Null;
    }
    let sum = |field: &str| nodes.iter().filter_map(|n| n["stats"][field].as_u64()).sum::<u64>();
    let mut by_role: BTreeMap<String, u64> = BTreeMap::new();
    for node in nodes {
        if let Some(roles) = node["stats"]["by_role"].as_object() {
            for (role, n) in roles {
                *by_role.entry(role.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    json!({
        "nodes": nodes.len(),
        "connections": sum("connections"),
        "authenticated": sum("authenticated"),
        "anonymous": sum("anonymous"),
        "by_role": by_role,
    })
}

/// Resident memory of this process from /proc (Linux); 0 elsewhere.
pub fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data that a `serde_json::Value` cannot hold (events stored by an older version, or
    /// arriving from another node) is shown as stored instead of panicking the reader.
    #[test]
    fn event_rows_show_any_valid_json_data_as_stored() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        for data in ["1e400", "-1e999", deep.as_str(), r#"{"a":1.5e308}"#] {
            let event = Arc::new(Event {
                id: "e1".into(),
                seq: 1,
                kind: "t".into(),
                message: String::new(),
                data: serde_json::value::RawValue::from_string(data.to_string()).expect("valid JSON text"),
                timestamp: String::new(),
                targets: vec!["c".into()],
                from: None,
                exclude: None,
                accepted_ms: 0,
                receipt: Default::default(),
                delivery: Default::default(),
            });
            let row = EventRow { event, receipt: Some((json!(2), json!(1))) };
            let text = serde_json::to_string(&row).expect("serializes");
            assert!(text.contains(&format!(r#""data":{data},"#)), "{text}");
            assert!(text.ends_with(r#""recipients":2,"acked":1}"#), "{text}");
        }
    }

    #[test]
    fn rates_come_from_counter_deltas() {
        let metrics = Metrics::new().expect("metrics");
        let sampler = Sampler::default();
        let first = sampler.record(&metrics);
        assert_eq!((first.events_per_s, first.deliveries_per_s), (0.0, 0.0));
        std::thread::sleep(Duration::from_millis(100));
        metrics.events_published.inc_by(10);
        metrics.deliveries.inc_by(30);
        let second = sampler.record(&metrics);
        assert!(second.events_per_s > 10.0 && second.events_per_s <= 100.0, "{second:?}");
        assert!((second.deliveries_per_s / second.events_per_s - 3.0).abs() < 1e-9);
        let rates = sampler.rates(&metrics);
        assert!(rates.events_per_s > 0.0 && rates.deliveries_per_s > rates.events_per_s, "{rates:?}");
        assert_eq!(sampler.samples().len(), 2);
        assert_eq!(sampler.series()["events_per_s"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn the_ring_keeps_five_minutes() {
        let metrics = Metrics::new().expect("metrics");
        let sampler = Sampler::default();
        for _ in 0..KEEP + 10 {
            sampler.record(&metrics);
        }
        assert_eq!(sampler.samples().len(), KEEP);
    }

    #[test]
    fn labelled_counters_and_latency_summaries() {
        let metrics = Metrics::new().expect("metrics");
        metrics.auth_failures.with_label_values(&["invalid"]).inc_by(2);
        metrics.auth_failures.with_label_values(&["expired"]).inc();
        let map = by_label(&metrics.auth_failures);
        assert_eq!(map.get("invalid"), Some(&2));
        assert_eq!(map.get("expired"), Some(&1));
        assert_eq!(latency(&metrics.delivery_latency)["count"], 0);
        for _ in 0..99 {
            metrics.delivery_latency.observe(0.0007);
        }
        metrics.delivery_latency.observe(0.3);
        let l = latency(&metrics.delivery_latency);
        assert_eq!(l["count"], 100);
        assert_eq!(l["p50_ms_at_most"], 1.0);
        assert_eq!(l["p99_ms_at_most"], 1.0);
    }
}

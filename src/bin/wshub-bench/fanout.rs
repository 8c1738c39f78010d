//! Phase 2: broadcast fan-out. M events through `POST /notify`, paced or back-to-back; every
//! connected client must receive every event. Each event's `data.t` is its send time (ns since
//! the run's epoch), so clients measure end-to-end latency on the same clock.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;

use crate::http::HttpConn;
use crate::hubproc::Hub;
use crate::measure::{CpuMark, aux_cpu_figures, await_deliveries, cpu_figures, describe_closed, latency_figures};
use crate::pool::Pool;
use crate::proc_stats::unix_nanos;
use crate::report::PhaseResult;

/// How events are spaced.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// A fixed number of events per second.
    Rate(f64),
    /// Back to back, each request sent when the previous one is answered.
    Burst,
}

/// Parameters of a fan-out phase.
pub struct FanoutPhase<'a> {
    /// Result key.
    pub key: &'a str,
    /// Result title.
    pub title: &'a str,
    /// Events to publish.
    pub events: usize,
    /// Spacing.
    pub pace: Pace,
    /// How long to wait for deliveries after the last publish.
    pub drain: Duration,
    /// Cores the load generator runs on.
    pub gen_cores: usize,
}

/// A broadcast event body carrying its send time.
pub fn event_body(epoch_ns: u64, i: usize) -> Bytes {
    let t = unix_nanos().saturating_sub(epoch_ns);
    Bytes::from(format!(r#"{{"type":"bench","message":"fan-out","data":{{"t":{t},"i":{i}}}}}"#))
}

/// Whose CPU a fan-out phase charges.
pub struct CpuSources<'a> {
    /// Hub processes; their CPU is summed into the `hub_cpu_*` figures.
    pub hubs: &'a [u32],
    /// A process reported separately as `redis_cpu_*` (the cluster's Redis).
    pub redis: Option<u32>,
}

/// Runs the phase against the clients already connected to `hub`.
pub async fn run(pool: &mut Pool, hub: &Hub, epoch_ns: u64, p: &FanoutPhase<'_>) -> Result<PhaseResult> {
    run_with(pool, hub, &CpuSources { hubs: &[hub.pid], redis: None }, epoch_ns, p).await
}

/// Runs the phase publishing to `hub` while the clients may be connected to other hubs too
/// (cluster mode), charging the CPU of `cpu`.
pub async fn run_with(
    pool: &mut Pool,
    hub: &Hub,
    cpu: &CpuSources<'_>,
    epoch_ns: u64,
    p: &FanoutPhase<'_>,
) -> Result<PhaseResult> {
    let mut r = PhaseResult::new(p.key, p.title, hub.kind.name());
    pool.take_latency().await?; // reset counters
    let clients = pool.totals().await?.open;
    let expected = clients * p.events as u64;
    let mut http = HttpConn::connect(hub.addr).await?;
    let a = CpuMark::take_of(pool, cpu.hubs, cpu.redis).await?;
    let first_send = unix_nanos();
    let mut errors = 0u64;
    let mut first_error = None;
    for i in 0..p.events {
        if let Pace::Rate(rate) = p.pace {
            tokio::time::sleep_until(tokio::time::Instant::from_std(a.at) + Duration::from_secs_f64(i as f64 / rate))
                .await;
        }
        match http.post_json("/notify", event_body(epoch_ns, i)).await {
            Ok((200, _)) => {}
            Ok((status, body)) => {
                errors += 1;
                first_error.get_or_insert(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
                http = HttpConn::connect(hub.addr).await?;
            }
        }
    }
    let send_s = (unix_nanos() - first_send) as f64 / 1e9;
    let totals = await_deliveries(pool, expected, Duration::from_secs(10), p.drain).await?;
    let b = CpuMark::take_of(pool, cpu.hubs, cpu.redis).await?;
    let (totals2, hist) = pool.take_latency().await?;
    let received = totals.received.max(totals2.received);
    let last = totals.last_recv_ns.max(totals2.last_recv_ns);
    let deliver_s = last.saturating_sub(first_send) as f64 / 1e9;

    let m = &mut r.metrics;
    m.push("clients", clients as f64, "");
    m.push("events", p.events as f64, "");
    match p.pace {
        Pace::Rate(rate) => m.push("offered_events_per_s", rate, "/s"),
        Pace::Burst => m.push("publish_events_per_s", p.events as f64 / send_s.max(1e-9), "/s"),
    }
    m.push("offered_deliveries_per_s", expected as f64 / send_s.max(1e-9), "/s");
    m.push("expected", expected as f64, "");
    m.push("received", received as f64, "");
    m.push("lost", expected.saturating_sub(received) as f64, "");
    m.push("publish_errors", errors as f64, "");
    m.push("send_s", send_s, "s");
    m.push("deliver_s", deliver_s, "s");
    m.push("deliveries_per_s", received as f64 / deliver_s.max(1e-9), "/s");
    latency_figures(m, &hist, "latency");
    if received > 0 {
        m.push("event_bytes", totals2.event_bytes.max(totals.event_bytes) as f64 / received as f64, "B");
    }
    cpu_figures(&mut r, a, b, received, "delivery", p.gen_cores);
    if cpu.redis.is_some() {
        // Redis works per event (one script run, one publish per subscribed node), not per delivery.
        aux_cpu_figures(&mut r, "redis", a, b, p.events as u64, "event");
    }
    if received < expected {
        r.fail(format!("{} of {expected} deliveries lost", expected - received));
    }
    if let Some(e) = first_error {
        r.fail(format!("{errors} publish errors, first: {e}"));
    }
    if let Some(d) = describe_closed(&totals2.closed) {
        r.fail(d);
    }
    Ok(r)
}

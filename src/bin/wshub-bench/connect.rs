//! Phase 1: connect N clients with bounded concurrency; connect rate and the hub's RSS per idle
//! connection.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::http;
use crate::hubproc::{Hub, HubKind};
use crate::measure::describe_closed;
use crate::pool::{ConnectRequest, Pool};
use crate::proc_stats;
use crate::report::PhaseResult;

/// Parameters of a connect phase.
pub struct ConnectPhase<'a> {
    /// Result key.
    pub key: &'a str,
    /// Result title.
    pub title: &'a str,
    /// Clients to open.
    pub clients: usize,
    /// Attempts in flight per worker.
    pub concurrency: usize,
    /// JWT (secret, user prefix) when each client is a distinct user.
    pub jwt: Option<(String, String)>,
}

/// Opens the clients and waits until the hub counts them all (via `GET /stats` or the
/// `hub:connected` frames), then measures RSS.
pub async fn run(pool: &mut Pool, hub: &Hub, p: &ConnectPhase<'_>) -> Result<PhaseResult> {
    let mut r = PhaseResult::new(p.key, p.title, hub.kind.name());
    let rss_before = proc_stats::rss_bytes(hub.pid)?;
    let cpu_before = proc_stats::cpu_seconds(hub.pid)?;
    let start = Instant::now();
    let out = pool
        .connect(&ConnectRequest {
            addr: hub.addr,
            path: "/ws".into(),
            count: p.clients,
            concurrency: p.concurrency,
            timeout_ms: 15_000,
            jwt: p.jwt.clone(),
        })
        .await?;
    let connect_s = start.elapsed().as_secs_f64();
    let registered = wait_registered(pool, hub, out.connected).await?;
    // Let allocator and runtime settle before reading RSS.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = proc_stats::rss_bytes(hub.pid)?;
    let cpu_after = proc_stats::cpu_seconds(hub.pid)?;
    let totals = pool.totals().await?;

    let m = &mut r.metrics;
    m.push("clients", p.clients as f64, "");
    m.push("connected", out.connected as f64, "");
    m.push("failed", out.failed as f64, "");
    m.push("connect_s", connect_s, "s");
    m.push("connects_per_s", out.connected as f64 / connect_s.max(1e-9), "/s");
    m.push("hub_rss_before", rss_before as f64 / 1048576.0, "MiB");
    m.push("hub_rss_after", rss_after as f64 / 1048576.0, "MiB");
    let per_conn = rss_after.saturating_sub(rss_before) as f64 / (out.connected.max(1)) as f64;
    m.push("rss_bytes_per_conn", per_conn, "B");
    m.push("hub_cpu_us_per_connect", (cpu_after - cpu_before) * 1e6 / out.connected.max(1) as f64, "µs");
    m.push("workers", pool.workers() as f64, "");
    if out.failed > 0 {
        r.fail(format!("{} of {} connections failed: {}", out.failed, p.clients, out.failures.join("; ")));
    }
    if let Some(n) = registered
        && n < out.connected
    {
        r.fail(format!("hub registered only {n} of {} clients", out.connected));
    }
    if let Some(d) = describe_closed(&totals.closed) {
        r.fail(d);
    }
    Ok(r)
}

/// Waits (up to 10 s) until the hub reports `expected` clients. Returns the count the hub
/// reported, or `None` when it offers no way to tell.
async fn wait_registered(pool: &mut Pool, hub: &Hub, expected: u64) -> Result<Option<u64>> {
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < Duration::from_secs(10) {
        let stats = http::hub_client_count(hub.addr).await;
        let ready = if hub.kind == HubKind::Wshub { Some(pool.totals().await?.ready) } else { None };
        seen = match (stats, ready) {
            (Some(s), Some(r)) => Some(s.max(r)),
            (s, r) => s.or(r.filter(|r| *r > 0)),
        };
        match seen {
            Some(n) if n >= expected => return Ok(seen),
            None if start.elapsed() > Duration::from_secs(1) => return Ok(None),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Ok(seen)
}

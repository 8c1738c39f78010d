//! Phase 3: targeted delivery. Every client is a distinct JWT user (`user:{sub}` stream); one
//! event per user goes out through batched `POST /notify` over a few keep-alive connections.

use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;

use crate::http::HttpConn;
use crate::hubproc::Hub;
use crate::measure::{CpuMark, await_deliveries, cpu_figures, describe_closed, latency_figures};
use crate::pool::Pool;
use crate::proc_stats::unix_nanos;
use crate::report::PhaseResult;

/// Parameters of the targeted phase.
pub struct TargetedPhase<'a> {
    /// Result key.
    pub key: &'a str,
    /// Result title.
    pub title: &'a str,
    /// Users (clients `{prefix}0 .. {prefix}{users-1}` are connected).
    pub users: usize,
    /// `sub` prefix.
    pub user_prefix: &'a str,
    /// Events per `POST /notify`.
    pub batch: usize,
    /// Keep-alive connections publishing in parallel.
    pub conns: usize,
    /// How long to wait for deliveries after the last publish.
    pub drain: Duration,
    /// Cores the load generator runs on.
    pub gen_cores: usize,
}

fn batch_body(epoch_ns: u64, prefix: &str, users: std::ops::Range<usize>) -> Bytes {
    let t = unix_nanos().saturating_sub(epoch_ns);
    let mut s = String::with_capacity(users.len() * 80 + 2);
    s.push('[');
    for (k, u) in users.enumerate() {
        if k > 0 {
            s.push(',');
        }
        s.push_str(&format!(r#"{{"type":"bench","user":"{prefix}{u}","data":{{"t":{t},"i":{u}}}}}"#));
    }
    s.push(']');
    Bytes::from(s)
}

/// Publishes one event to each user and waits for the deliveries.
pub async fn run(pool: &mut Pool, hub: &Hub, epoch_ns: u64, p: &TargetedPhase<'_>) -> Result<PhaseResult> {
    let mut r = PhaseResult::new(p.key, p.title, hub.kind.name());
    pool.take_latency().await?;
    let expected = p.users as u64;
    let mut conns = Vec::new();
    for _ in 0..p.conns.max(1) {
        conns.push(HttpConn::connect(hub.addr).await?);
    }
    let batches: Vec<std::ops::Range<usize>> =
        (0..p.users).step_by(p.batch.max(1)).map(|s| s.min(p.users)..(s + p.batch.max(1)).min(p.users)).collect();
    let a = CpuMark::take(pool, hub).await?;
    let first_send = unix_nanos();
    let n_conns = conns.len();
    let tasks = conns.into_iter().enumerate().map(|(c, mut http)| {
        let mine: Vec<_> = batches.iter().skip(c).step_by(n_conns).cloned().collect();
        async move {
            let mut errors = Vec::new();
            for range in mine {
                match http.post_json("/notify", batch_body(epoch_ns, p.user_prefix, range)).await {
                    Ok((200, _)) => {}
                    Ok((status, body)) => errors.push(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            errors
        }
    });
    let errors: Vec<String> = futures_util::future::join_all(tasks).await.into_iter().flatten().collect();
    let publish_s = (unix_nanos() - first_send) as f64 / 1e9;
    let totals = await_deliveries(pool, expected, Duration::from_secs(10), p.drain).await?;
    let b = CpuMark::take(pool, hub).await?;
    let (totals2, hist) = pool.take_latency().await?;
    let received = totals.received.max(totals2.received);
    let last = totals.last_recv_ns.max(totals2.last_recv_ns);

    let m = &mut r.metrics;
    m.push("users", p.users as f64, "");
    m.push("batch", p.batch as f64, "");
    m.push("http_conns", n_conns as f64, "");
    m.push("publish_s", publish_s, "s");
    m.push("publishes_per_s", p.users as f64 / publish_s.max(1e-9), "/s");
    m.push("expected", expected as f64, "");
    m.push("received", received as f64, "");
    m.push("lost", expected.saturating_sub(received) as f64, "");
    m.push("publish_errors", errors.len() as f64, "");
    m.push("deliver_s", last.saturating_sub(first_send) as f64 / 1e9, "s");
    latency_figures(m, &hist, "latency");
    cpu_figures(&mut r, a, b, received, "delivery", p.gen_cores);
    if received < expected {
        r.fail(format!("{} of {expected} deliveries lost", expected - received));
    }
    if let Some(e) = errors.first() {
        r.fail(format!("{} publish errors, first: {e}", errors.len()));
    }
    if let Some(d) = describe_closed(&totals2.closed) {
        r.fail(d);
    }
    Ok(r)
}

//! Phase 4: the publish API alone. `POST /notify` requests per second over K keep-alive
//! connections, single events or batches, with no client connected (so only the API is timed).

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;

use crate::hist::Histogram;
use crate::http::HttpConn;
use crate::hubproc::Hub;
use crate::proc_stats;
use crate::report::PhaseResult;

/// Parameters of a publish phase.
pub struct PublishPhase<'a> {
    /// Result key.
    pub key: &'a str,
    /// Result title.
    pub title: &'a str,
    /// Keep-alive connections.
    pub conns: usize,
    /// Events per request (1: a single object, not an array).
    pub batch: usize,
    /// How long to publish.
    pub duration: Duration,
    /// Cores the load generator runs on.
    pub gen_cores: usize,
    /// Each single event carries its send time as `data.t` (ns since the UNIX epoch), so a
    /// watching client can measure delivery latency.
    pub timestamped: bool,
}

fn timestamped_body() -> Bytes {
    Bytes::from(format!(r#"{{"type":"bench","message":"publish api","data":{{"t":{}}}}}"#, proc_stats::unix_nanos()))
}

fn body(batch: usize) -> Bytes {
    let one = r#"{"type":"bench","message":"publish api","data":{"k":1}}"#;
    if batch <= 1 {
        Bytes::from_static(one.as_bytes())
    } else {
        Bytes::from(format!("[{}]", vec![one; batch].join(",")))
    }
}

/// Runs the phase.
pub async fn run(hub: &Hub, p: &PublishPhase<'_>) -> Result<PhaseResult> {
    let mut r = PhaseResult::new(p.key, p.title, hub.kind.name());
    let mut conns = Vec::new();
    for _ in 0..p.conns.max(1) {
        conns.push(HttpConn::connect(hub.addr).await?);
    }
    let payload = body(p.batch);
    let hub_a = proc_stats::cpu_seconds(hub.pid)?;
    let gen_a = proc_stats::self_cpu_seconds();
    let machine_a = proc_stats::machine_busy_seconds();
    let start = Instant::now();
    let deadline = start + p.duration;
    let timestamped = p.timestamped;
    let tasks = conns.into_iter().map(|mut http| {
        let payload = payload.clone();
        async move {
            let (mut ok, mut errors, mut first_error, mut hist) = (0u64, 0u64, None, Histogram::default());
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let body = if timestamped { timestamped_body() } else { payload.clone() };
                match http.post_json("/notify", body).await {
                    Ok((200, _)) => ok += 1,
                    Ok((status, body)) => {
                        errors += 1;
                        first_error.get_or_insert(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(format!("{e:#}"));
                        break;
                    }
                }
                hist.record(t0.elapsed().as_micros() as u64);
            }
            (ok, errors, first_error, hist)
        }
    });
    let results = futures_util::future::join_all(tasks).await;
    let wall = start.elapsed().as_secs_f64();
    let hub_cpu = proc_stats::cpu_seconds(hub.pid)? - hub_a;
    let gen_cpu = proc_stats::self_cpu_seconds() - gen_a;
    let foreign = ((proc_stats::machine_busy_seconds() - machine_a) - hub_cpu - gen_cpu).max(0.0) / wall;
    let (mut ok, mut errors, mut first_error, mut hist) = (0u64, 0u64, None, Histogram::default());
    for (o, e, f, h) in results {
        ok += o;
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
        hist.merge_sparse(&h.to_sparse());
    }
    let events = ok * p.batch.max(1) as u64;
    let m = &mut r.metrics;
    m.push("http_conns", p.conns as f64, "");
    m.push("batch", p.batch as f64, "");
    m.push("requests", ok as f64, "");
    m.push("errors", errors as f64, "");
    m.push("requests_per_s", ok as f64 / wall, "/s");
    m.push("events_per_s", events as f64 / wall, "/s");
    m.push("request_p50_ms", hist.quantile(0.5) as f64 / 1000.0, "ms");
    m.push("request_p99_ms", hist.quantile(0.99) as f64 / 1000.0, "ms");
    m.push("hub_cpu_s", hub_cpu, "s");
    m.push("hub_cpu_us_per_event", hub_cpu * 1e6 / events.max(1) as f64, "µs");
    m.push("hub_cpu_util", 100.0 * hub_cpu / wall, "% of 1 core");
    let util = gen_cpu / wall / p.gen_cores.max(1) as f64;
    m.push("gen_cpu_util", 100.0 * util, "% of its cores");
    m.push("other_cpu_util", 100.0 * foreign, "% of 1 core");
    if foreign > 0.25 {
        r.notes.push(format!(
            "other processes (or the kernel) used {:.0}% of a core during this phase: the machine was not quiet",
            100.0 * foreign
        ));
    }
    if util > 0.85 {
        r.generator_saturated = true;
        r.notes
            .push(format!("load generator used {:.0}% of its core(s): requests/s bound the generator", 100.0 * util));
    }
    if let Some(e) = first_error {
        r.fail(format!("{errors} errors, first: {e}"));
    }
    Ok(r)
}

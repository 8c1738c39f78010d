//! Phase 5: the paced fan-out through a cluster. Two wshub nodes share one Redis the bench starts
//! (all three pinned to the hub core), the clients are split evenly between the nodes, and every
//! event is published to node A. Reported beside the single-node paced run of the same invocation
//! (or one this phase runs itself), with the extra latency of the Redis hop.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fanout::{self, CpuSources, FanoutPhase, Pace};
use crate::http::HttpConn;
use crate::hubproc::Hub;
use crate::measure::await_deliveries;
use crate::pool::{ConnectOutcome, ConnectRequest, Pool};
use crate::redisproc::{self, RedisServer};
use crate::report::{PhaseResult, Status};
use crate::suite::{Config, Target};

/// Result key of the phase.
pub const KEY: &str = "cluster";

/// Target name of the single-node comparison column.
pub const SINGLE: &str = "wshub-1node";

/// The paced run the cluster repeats: the first `--paced` item (2 ev/s by default).
pub fn pace(cfg: &Config) -> (f64, usize) {
    cfg.paced.first().copied().unwrap_or((2.0, 30))
}

/// Title of the phase.
pub fn title(cfg: &Config) -> String {
    let (rate, events) = pace(cfg);
    format!("Cluster fan-out (2 nodes + Redis): {events} events at {rate} ev/s to {} clients", cfg.clients)
}

/// Runs the phase against wshub target `t`. `single` is this invocation's single-node paced run
/// at the same rate and event count, if the fan-out scenario ran; otherwise one is run here.
/// Returns the single-node column, then the cluster's.
pub async fn run(pool: &mut Pool, cfg: &Config, t: &Target, single: Option<&PhaseResult>) -> Result<Vec<PhaseResult>> {
    let title = title(cfg);
    if redisproc::locate(&cfg.redis_bin).is_none() {
        let mut r = PhaseResult::new(KEY, &title, t.kind.name());
        let bin = cfg.redis_bin.display();
        r.fail(format!("{bin} not found (install Redis or pass --redis-bin): the cluster phase needs it"));
        return Ok(vec![r]);
    }
    let single = match single {
        Some(s) => {
            let mut s = s.clone();
            s.notes.insert(0, "the single-node paced run of the fan-out scenario above, for comparison".into());
            s
        }
        None => match single_node(pool, cfg, t, &title).await {
            Ok(mut s) => {
                s.notes
                    .insert(0, "single node, run by this phase for comparison (fan-out scenario not selected)".into());
                s
            }
            Err(e) => {
                let _ = pool.close_all().await;
                let mut s = PhaseResult::new(KEY, &title, SINGLE);
                s.fail(format!("single-node comparison run failed: {e:#}"));
                s
            }
        },
    };
    let mut single = single;
    single.key = KEY.into();
    single.title = title.clone();
    single.target = SINGLE.into();

    let mut cluster = match two_nodes(pool, cfg, t, &title).await {
        Ok(r) => r,
        Err(e) => {
            let _ = pool.close_all().await;
            let mut r = PhaseResult::new(KEY, &title, t.kind.name());
            r.fail(format!("cluster run failed: {e:#}"));
            r
        }
    };
    compare(&mut cluster, &single);
    Ok(vec![single, cluster])
}

/// The single-node paced run, on a fresh hub.
async fn single_node(pool: &mut Pool, cfg: &Config, t: &Target, title: &str) -> Result<PhaseResult> {
    let mut hub = t.start("cluster-single", &[])?;
    let out = connect(pool, cfg, &hub, cfg.clients).await?;
    wait_ready(pool, out.connected).await?;
    let r = fanout::run(pool, &hub, cfg.epoch_ns, &phase(cfg, title)).await?;
    pool.close_all().await?;
    hub.stop();
    Ok(check_connect(r, &out, cfg.clients))
}

/// Redis, two nodes, clients split between them, events published to node A.
async fn two_nodes(pool: &mut Pool, cfg: &Config, t: &Target, title: &str) -> Result<PhaseResult> {
    let log = match &t.spawn {
        Some(spec) => spec.log.with_file_name("redis-cluster.log"),
        None => "redis-cluster.log".into(),
    };
    let mut redis = RedisServer::spawn(&cfg.redis_bin, cfg.hub_core, &log)?;
    let args = vec!["--redis-url".to_string(), redis.url()];
    let mut a = t.start("cluster-a", &args)?;
    let mut b = t.start("cluster-b", &args)?;
    let on_b = cfg.clients / 2;
    let on_a = cfg.clients - on_b;
    let out_a = connect(pool, cfg, &a, on_a).await?;
    let out_b = connect(pool, cfg, &b, on_b).await?;
    let connected = out_a.connected + out_b.connected;
    wait_ready(pool, connected).await?;
    let warm = warm_up(pool, &a, cfg.epoch_ns, connected).await?;

    let cpu = CpuSources { hubs: &[a.pid, b.pid], redis: Some(redis.pid) };
    let mut r = fanout::run_with(pool, &a, &cpu, cfg.epoch_ns, &phase(cfg, title)).await?;
    pool.close_all().await?;
    a.stop();
    b.stop();
    redis.stop();

    r.metrics.push("clients_node_a", out_a.connected as f64, "");
    r.metrics.push("clients_node_b", out_b.connected as f64, "");
    r.notes.insert(
        0,
        format!(
            "{} clients on node A, {} on node B; events published to node A (POST /notify); \
             hub_cpu_* = both nodes, redis_cpu_* = redis-server alone",
            out_a.connected, out_b.connected
        ),
    );
    r.notes.insert(
        1,
        match cfg.hub_core {
            Some(core) => format!("nodes A and B and redis-server all pinned to core {core} (the hub core)"),
            None => "nothing pinned".into(),
        },
    );
    if let Some(w) = warm {
        r.notes.push(w);
    }
    let out = ConnectOutcome {
        connected,
        failed: out_a.failed + out_b.failed,
        failures: out_a.failures.into_iter().chain(out_b.failures).take(5).collect(),
    };
    Ok(check_connect(r, &out, cfg.clients))
}

fn phase<'a>(cfg: &Config, title: &'a str) -> FanoutPhase<'a> {
    let (rate, events) = pace(cfg);
    FanoutPhase { key: KEY, title, events, pace: Pace::Rate(rate), drain: cfg.drain, gen_cores: cfg.gen_cores }
}

async fn connect(pool: &mut Pool, cfg: &Config, hub: &Hub, count: usize) -> Result<ConnectOutcome> {
    pool.connect(&ConnectRequest {
        addr: hub.addr,
        path: "/ws".into(),
        count,
        concurrency: cfg.connect_concurrency,
        timeout_ms: 15_000,
        jwt: None,
    })
    .await
}

/// Fails `r` when some clients could not connect.
fn check_connect(mut r: PhaseResult, out: &ConnectOutcome, clients: usize) -> PhaseResult {
    if out.failed > 0 {
        r.fail(format!("{} of {clients} connections failed: {}", out.failed, out.failures.join("; ")));
    }
    r
}

/// Waits (up to 10 s) until `expected` clients got `hub:connected`.
async fn wait_ready(pool: &mut Pool, expected: u64) -> Result<()> {
    let start = Instant::now();
    while pool.totals().await?.ready < expected && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Publishes one warm-up event (not counted in the figures) to node A and waits until every
/// client got it, so both nodes are known to be subscribed before measuring. Returns a note when the cluster
/// did not look whole.
async fn warm_up(pool: &mut Pool, a: &Hub, epoch_ns: u64, clients: u64) -> Result<Option<String>> {
    pool.take_latency().await?;
    let mut http = HttpConn::connect(a.addr).await?;
    let (status, body) = http.post_json("/notify", fanout::event_body(epoch_ns, usize::MAX)).await?;
    if status != 200 {
        anyhow::bail!("warm-up publish to node A: HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let answer: serde_json::Value = serde_json::from_slice(&body).context("decoding the /notify answer")?;
    let nodes = answer.get("nodes").and_then(|n| n.as_u64());
    let got = await_deliveries(pool, clients, Duration::from_secs(5), Duration::from_secs(15)).await?.received;
    let mut issues = Vec::new();
    if nodes != Some(2) {
        issues.push(format!("/notify answered nodes = {}", nodes.map_or("none".into(), |n| n.to_string())));
    }
    if got < clients {
        issues.push(format!("{got} of {clients} clients received it"));
    }
    Ok((!issues.is_empty()).then(|| format!("warm-up event: {} (expected 2 nodes, every client)", issues.join(", "))))
}

/// Adds the extra latency of the hop (cluster minus single node) to `cluster`.
fn compare(cluster: &mut PhaseResult, single: &PhaseResult) {
    if cluster.status == Status::NotApplicable || cluster.metrics.0.is_empty() {
        return;
    }
    let mut parts = Vec::new();
    for q in ["p50", "p99"] {
        let name = format!("latency_{q}_ms");
        if let (Some(c), Some(s)) = (cluster.metrics.get(&name), single.metrics.get(&name)) {
            cluster.metrics.push(&format!("hop_latency_{q}_ms"), c - s, "ms");
            parts.push(format!("{q} {:+.2} ms ({s:.2} → {c:.2})", c - s));
        }
    }
    let line = if parts.is_empty() {
        "extra hop vs single node: n/a (no single-node latency to compare with)".to_string()
    } else {
        format!("extra hop vs single node (same clients, rate and events): {}", parts.join(", "))
    };
    cluster.notes.insert(0, line);
}

//! The standard suite: scenarios run against each target in turn (wshub, then the Go hub, per
//! scenario), each on a freshly started hub, then the kernel-floor probe; plus the summary of
//! the targets.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;

use crate::cluster;
use crate::connect::{self, ConnectPhase};
use crate::durable;
use crate::fanout::{self, FanoutPhase, Pace};
use crate::hubproc::{Hub, HubKind, HubSpec};
use crate::pool::Pool;
use crate::probe::{self, ProbePhase};
use crate::publish::{self, PublishPhase};
use crate::report::{PhaseResult, Report, Status, SummaryRow};
use crate::targeted::{self, TargetedPhase};

/// A hub to measure.
#[derive(Clone, Debug)]
pub struct Target {
    /// Implementation.
    pub kind: HubKind,
    /// How to start it (None: external).
    pub spawn: Option<HubSpec>,
    /// Address and pid of an external hub.
    pub external: Option<(SocketAddr, u32)>,
}

impl Target {
    /// Starts the hub (or wraps the external one) for `scenario`, with `extra` arguments; its log
    /// goes to `{kind}-{scenario}.log` beside the configured one.
    pub fn start(&self, scenario: &str, extra: &[String]) -> Result<Hub> {
        if let Some((addr, pid)) = self.external {
            return Ok(Hub::external(self.kind, addr, pid));
        }
        let mut spec = self.spawn.clone().ok_or_else(|| anyhow::anyhow!("no way to start hub"))?;
        spec.args.extend(extra.iter().cloned());
        let log = spec.log.with_file_name(format!("{}-{scenario}.log", self.kind.name()));
        spec.log = log;
        Hub::spawn(&spec)
    }
}

/// Everything the suite needs to know.
#[derive(Clone, Debug)]
pub struct Config {
    /// Hubs to measure, in the order they alternate.
    pub targets: Vec<Target>,
    /// Clients of the main fan-out scenario.
    pub clients: usize,
    /// Clients of the max-clients scenario (0: skip).
    pub max_clients: usize,
    /// Paced fan-out runs: (events per second, events).
    pub paced: Vec<(f64, usize)>,
    /// Events of the burst run (0: skip).
    pub burst: usize,
    /// Users of the targeted scenario.
    pub targeted_users: usize,
    /// Events per targeted `POST /notify`.
    pub targeted_batch: usize,
    /// Connections publishing targeted batches.
    pub targeted_conns: usize,
    /// JWT secret the hub is started with for the targeted scenario.
    pub jwt_secret: String,
    /// Connections of the publish phase.
    pub publish_conns: usize,
    /// Duration of each publish run.
    pub publish_time: Duration,
    /// Events per batched publish.
    pub publish_batch: usize,
    /// Probe rounds (0: skip).
    pub probe_rounds: usize,
    /// Time between probe rounds.
    pub probe_interval: Duration,
    /// Core the hubs and the probe are pinned to.
    pub hub_core: Option<usize>,
    /// Cores the load generator uses.
    pub gen_cores: usize,
    /// Connection attempts in flight per worker.
    pub connect_concurrency: usize,
    /// Drain limit after the last publish.
    pub drain: Duration,
    /// Phase groups to run: connect/fanout, targeted, publish, durable, max, probe, cluster.
    pub phases: Vec<String>,
    /// `redis-server` executable of the cluster phase (a bare name is looked up in `$PATH`).
    pub redis_bin: PathBuf,
    /// Sockets per worker process.
    pub per_worker: usize,
    /// Source addresses for client sockets.
    pub src_ips: Vec<Ipv4Addr>,
    /// Shared clock origin (UNIX ns).
    pub epoch_ns: u64,
}

impl Config {
    fn wants(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase || p == "all")
    }
}

/// Runs every selected scenario and builds the report.
pub async fn run(cfg: &Config, environment: serde_json::Value) -> Result<Report> {
    let max = if cfg.wants("max") { cfg.max_clients } else { 0 };
    let targeted = if cfg.wants("targeted") { cfg.targeted_users } else { 0 };
    let need = [cfg.clients, max, targeted].into_iter().max().unwrap_or(0).max(1);
    let workers = need.div_ceil(cfg.per_worker.max(1));
    let mut pool = Pool::spawn(workers, cfg.per_worker, cfg.epoch_ns, cfg.src_ips.clone()).await?;
    eprintln!("wshub-bench: {workers} worker process(es), up to {} sockets", pool.capacity());
    let mut results = Vec::new();

    if cfg.wants("fanout") || cfg.wants("connect") {
        for t in &cfg.targets {
            eprintln!("wshub-bench: scenario fanout against {}", t.kind.name());
            let r = fanout_scenario(&mut pool, cfg, t).await;
            let r = settle(&mut pool, "fanout", t.kind, r).await;
            results.extend(r);
        }
    }
    if cfg.wants("targeted") {
        for t in &cfg.targets {
            if t.kind == HubKind::Go {
                let why = "the Go hub has no JWT, user streams or batched /notify";
                results.push(PhaseResult::not_applicable("connect_jwt", &jwt_connect_title(cfg), "go", why));
                results.push(PhaseResult::not_applicable("targeted", &targeted_title(cfg), "go", why));
                continue;
            }
            eprintln!("wshub-bench: scenario targeted against {}", t.kind.name());
            let r = targeted_scenario(&mut pool, cfg, t).await;
            let r = settle(&mut pool, "targeted", t.kind, r).await;
            results.extend(r);
        }
    }
    if cfg.wants("publish") {
        for t in &cfg.targets {
            eprintln!("wshub-bench: scenario publish against {}", t.kind.name());
            let r = publish_scenario(cfg, t).await;
            let r = settle(&mut pool, "publish", t.kind, r).await;
            results.extend(r);
        }
    }
    if cfg.wants("durable") {
        for t in &cfg.targets {
            if t.kind != HubKind::Wshub || t.spawn.is_none() {
                let why = "needs a wshub it starts itself (the Go hub keeps no history)";
                results.push(PhaseResult::not_applicable(durable::KEY, &durable::title(cfg), t.kind.name(), why));
                continue;
            }
            eprintln!("wshub-bench: scenario durable against {}", t.kind.name());
            let r = durable::run(cfg, t).await;
            let r = settle(&mut pool, durable::KEY, t.kind, r).await;
            results.extend(r);
        }
    }
    if cfg.wants("max") && cfg.max_clients > 0 {
        for t in &cfg.targets {
            eprintln!("wshub-bench: scenario max against {}", t.kind.name());
            let r = max_scenario(&mut pool, cfg, t).await;
            let r = settle(&mut pool, "max", t.kind, r).await;
            results.extend(r);
        }
    }
    if cfg.wants("probe") && cfg.probe_rounds > 0 {
        let event_bytes = results
            .iter()
            .filter(|r| r.key.starts_with("fanout_paced") && r.target == "wshub")
            .chain(results.iter().filter(|r| r.key.starts_with("fanout_paced")))
            .find_map(|r| r.metrics.get("event_bytes"))
            .unwrap_or(200.0);
        eprintln!("wshub-bench: kernel-floor probe ({} sockets, {event_bytes:.0}-byte payload)", cfg.clients);
        let phase = ProbePhase {
            conns: cfg.clients,
            rounds: cfg.probe_rounds,
            interval: cfg.probe_interval,
            payload_bytes: event_bytes.round() as usize,
            core: cfg.hub_core,
        };
        match probe::run(&mut pool, &phase).await {
            Ok(r) => results.push(r),
            Err(e) => {
                let _ = pool.close_all().await;
                let mut r = PhaseResult::new("probe", "Kernel floor: one loopback send per delivery (probe)", "kernel");
                r.fail(format!("probe failed: {e:#}"));
                results.push(r);
            }
        }
    }
    if cfg.wants("cluster") {
        for t in &cfg.targets {
            let why = match (t.kind, &t.spawn) {
                (HubKind::Go, _) => Some("the Go hub has no cluster mode"),
                (HubKind::Wshub, None) => Some("an external hub (--hub-addr): the cluster phase starts its own nodes"),
                (HubKind::Wshub, Some(_)) => None,
            };
            if let Some(why) = why {
                results.push(PhaseResult::not_applicable(cluster::KEY, &cluster::title(cfg), t.kind.name(), why));
                continue;
            }
            eprintln!("wshub-bench: scenario cluster against {}", t.kind.name());
            let (rate, _) = cluster::pace(cfg);
            let key = format!("fanout_paced_{rate}");
            let single = results.iter().find(|r| r.key == key && r.target == t.kind.name() && !r.metrics.0.is_empty());
            let single = single.cloned();
            let r = cluster::run(&mut pool, cfg, t, single.as_ref()).await;
            let r = settle(&mut pool, cluster::KEY, t.kind, r).await;
            results.extend(r);
        }
    }
    pool.shutdown().await?;
    let mut report = Report { environment, results, summary: Vec::new() };
    report.summary = summary(&report, cfg);
    Ok(report)
}

/// Prints a scenario's outcome; on error records a failed result and resets the clients.
async fn settle(pool: &mut Pool, scenario: &str, kind: HubKind, outcome: Result<Vec<PhaseResult>>) -> Vec<PhaseResult> {
    match outcome {
        Ok(rs) => {
            for r in &rs {
                let note = r.notes.first().map(|n| format!(" ({n})")).unwrap_or_default();
                eprintln!("  {} / {}: {:?}{note}", r.key, r.target, r.status);
            }
            rs
        }
        Err(e) => {
            eprintln!("  {scenario} / {}: error: {e:#}", kind.name());
            let _ = pool.close_all().await;
            let mut r = PhaseResult::new(scenario, &format!("Scenario {scenario}"), kind.name());
            r.fail(format!("scenario failed: {e:#}"));
            vec![r]
        }
    }
}

fn jwt_connect_title(cfg: &Config) -> String {
    format!("Connect {} clients with a JWT each", cfg.targeted_users)
}

fn targeted_title(cfg: &Config) -> String {
    format!("Targeted: {} users, one event each, batches of {}", cfg.targeted_users, cfg.targeted_batch)
}

async fn fanout_scenario(pool: &mut Pool, cfg: &Config, t: &Target) -> Result<Vec<PhaseResult>> {
    let mut hub = t.start("fanout", &[])?;
    let mut out = Vec::new();
    let title = format!("Connect {} clients (idle RSS, connect rate)", cfg.clients);
    let phase = ConnectPhase {
        key: "connect",
        title: &title,
        clients: cfg.clients,
        concurrency: cfg.connect_concurrency,
        jwt: None,
    };
    out.push(connect::run(pool, &hub, &phase).await?);
    if cfg.wants("fanout") {
        for &(rate, events) in &cfg.paced {
            let key = format!("fanout_paced_{rate}");
            let title = format!("Fan-out paced: {events} events at {rate} ev/s to {} clients", cfg.clients);
            let p = FanoutPhase {
                key: &key,
                title: &title,
                events,
                pace: Pace::Rate(rate),
                drain: cfg.drain,
                gen_cores: cfg.gen_cores,
            };
            out.push(fanout::run(pool, &hub, cfg.epoch_ns, &p).await?);
        }
        if cfg.burst > 0 {
            let title = format!("Fan-out burst: {} events back to back to {} clients", cfg.burst, cfg.clients);
            let p = FanoutPhase {
                key: "fanout_burst",
                title: &title,
                events: cfg.burst,
                pace: Pace::Burst,
                drain: cfg.drain,
                gen_cores: cfg.gen_cores,
            };
            out.push(fanout::run(pool, &hub, cfg.epoch_ns, &p).await?);
        }
    }
    pool.close_all().await?;
    hub.stop();
    Ok(out)
}

async fn targeted_scenario(pool: &mut Pool, cfg: &Config, t: &Target) -> Result<Vec<PhaseResult>> {
    let args = vec!["--jwt-secret".to_string(), cfg.jwt_secret.clone()];
    let mut hub = t.start("targeted", &args)?;
    let mut out = Vec::new();
    let title = jwt_connect_title(cfg);
    let phase = ConnectPhase {
        key: "connect_jwt",
        title: &title,
        clients: cfg.targeted_users,
        concurrency: cfg.connect_concurrency,
        jwt: Some((cfg.jwt_secret.clone(), "u".into())),
    };
    out.push(connect::run(pool, &hub, &phase).await?);
    let title = targeted_title(cfg);
    let p = TargetedPhase {
        key: "targeted",
        title: &title,
        users: cfg.targeted_users,
        user_prefix: "u",
        batch: cfg.targeted_batch,
        conns: cfg.targeted_conns,
        drain: cfg.drain,
        gen_cores: cfg.gen_cores,
    };
    out.push(targeted::run(pool, &hub, cfg.epoch_ns, &p).await?);
    pool.close_all().await?;
    hub.stop();
    Ok(out)
}

async fn publish_scenario(cfg: &Config, t: &Target) -> Result<Vec<PhaseResult>> {
    let mut hub = t.start("publish", &[])?;
    let mut out = Vec::new();
    let title = format!("Publish API: single events over {} keep-alive connections", cfg.publish_conns);
    let p = PublishPhase {
        key: "publish_single",
        title: &title,
        conns: cfg.publish_conns,
        batch: 1,
        duration: cfg.publish_time,
        gen_cores: cfg.gen_cores,
        timestamped: false,
    };
    out.push(publish::run(&hub, &p).await?);
    let title =
        format!("Publish API: batches of {} over {} keep-alive connections", cfg.publish_batch, cfg.publish_conns);
    if t.kind == HubKind::Go {
        out.push(PhaseResult::not_applicable("publish_batch", &title, "go", "the Go hub takes one event per request"));
    } else {
        let p = PublishPhase {
            key: "publish_batch",
            title: &title,
            conns: cfg.publish_conns,
            batch: cfg.publish_batch,
            duration: cfg.publish_time,
            gen_cores: cfg.gen_cores,
            timestamped: false,
        };
        out.push(publish::run(&hub, &p).await?);
    }
    hub.stop();
    Ok(out)
}

async fn max_scenario(pool: &mut Pool, cfg: &Config, t: &Target) -> Result<Vec<PhaseResult>> {
    let mut hub = t.start("max", &[])?;
    let mut out = Vec::new();
    let title = format!("Max clients: connect {}", cfg.max_clients);
    let phase = ConnectPhase {
        key: "connect_max",
        title: &title,
        clients: cfg.max_clients,
        concurrency: cfg.connect_concurrency,
        jwt: None,
    };
    out.push(connect::run(pool, &hub, &phase).await?);
    let title = format!("Max clients: 5 events at 1 ev/s to {} clients", cfg.max_clients);
    let p = FanoutPhase {
        key: "fanout_max",
        title: &title,
        events: 5,
        pace: Pace::Rate(1.0),
        drain: cfg.drain,
        gen_cores: cfg.gen_cores,
    };
    out.push(fanout::run(pool, &hub, cfg.epoch_ns, &p).await?);
    pool.close_all().await?;
    hub.stop();
    Ok(out)
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".into(),
        Some(false) => "missed".into(),
        None => "n/a".into(),
    }
}

/// The targets, evaluated on this run's figures.
fn summary(rep: &Report, cfg: &Config) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    let mut ratio_row = |figure: String, key: &str, metric: &str, target: &str, ok: &dyn Fn(f64) -> bool| {
        let w = rep.value(key, "wshub", metric);
        let g = rep.value(key, "go", metric);
        let ratio = match (w, g) {
            (Some(w), Some(g)) if g != 0.0 => Some(w / g),
            _ => None,
        };
        rows.push(SummaryRow {
            figure,
            wshub: w,
            go: g,
            ratio,
            target: target.into(),
            verdict: verdict(ratio.map(ok)),
        });
    };
    ratio_row(
        format!("RSS per idle connection, {} clients (B)", cfg.clients),
        "connect",
        "rss_bytes_per_conn",
        "≤ 1/3 of Go",
        &|r| r <= 1.0 / 3.0,
    );
    ratio_row(
        format!("RSS per idle connection, {} clients (B)", cfg.max_clients),
        "connect_max",
        "rss_bytes_per_conn",
        "≤ 1/3 of Go",
        &|r| r <= 1.0 / 3.0,
    );
    ratio_row(
        "Hub CPU per delivery, burst (µs)".into(),
        "fanout_burst",
        "hub_cpu_us_per_delivery",
        "≤ 1/2.5 of Go",
        &|r| r <= 0.4,
    );
    if let Some(&(rate, _)) = cfg.paced.first() {
        ratio_row(
            format!("p99 latency at {rate} ev/s (ms)"),
            &format!("fanout_paced_{rate}"),
            "latency_p99_ms",
            "≤ 1/3 of Go",
            &|r| r <= 1.0 / 3.0,
        );
    }
    ratio_row("Connect rate (/s)".into(), "connect", "connects_per_s", "≥ 1.5x Go", &|r| r >= 1.5);
    ratio_row("/notify requests/s, single".into(), "publish_single", "requests_per_s", "≥ 2x Go", &|r| r >= 2.0);

    let floor = rep.value("probe", "kernel", "cpu_us_per_send");
    for &(rate, _) in &cfg.paced {
        let key = format!("fanout_paced_{rate}");
        let w = rep.value(&key, "wshub", "hub_cpu_us_per_delivery");
        let g = rep.value(&key, "go", "hub_cpu_us_per_delivery");
        let to_floor = match (w, floor) {
            (Some(w), Some(f)) if f > 0.0 => Some(w / f),
            _ => None,
        };
        rows.push(SummaryRow {
            figure: format!(
                "Hub CPU per delivery, paced {rate} ev/s (µs); floor {}",
                floor.map(crate::report::fmt_num).unwrap_or("n/a".into())
            ),
            wshub: w,
            go: g,
            ratio: match (w, g) {
                (Some(w), Some(g)) if g > 0.0 => Some(w / g),
                _ => None,
            },
            target: format!(
                "≤ 1.2x kernel floor (wshub/floor = {})",
                to_floor.map(|x| format!("{x:.2}")).unwrap_or("n/a".into())
            ),
            verdict: verdict(to_floor.map(|x| x <= 1.2)),
        });
    }
    let lost = |t: &str| -> Option<f64> {
        let rs: Vec<&PhaseResult> =
            rep.results.iter().filter(|r| r.target == t && r.status != Status::NotApplicable).collect();
        if rs.is_empty() { None } else { Some(rs.iter().filter_map(|r| r.metrics.get("lost")).fold(0.0, |a, b| a + b)) }
    };
    let (lw, lg) = (lost("wshub"), lost("go"));
    rows.push(SummaryRow {
        figure: "Lost deliveries, all phases".into(),
        wshub: lw,
        go: lg,
        ratio: None,
        target: "0".into(),
        verdict: verdict(lw.map(|l| l == 0.0)),
    });
    let tp = rep.value("targeted", "wshub", "publishes_per_s");
    rows.push(SummaryRow {
        figure: format!("Targeted publishes/s ({} users)", cfg.targeted_users),
        wshub: tp,
        go: None,
        ratio: None,
        target: "≥ 50,000/s".into(),
        verdict: verdict(tp.map(|v| v >= 50_000.0)),
    });
    let (rate, _) = cluster::pace(cfg);
    for q in ["p50", "p99"] {
        let hop = rep.value(cluster::KEY, "wshub", &format!("hop_latency_{q}_ms"));
        rows.push(SummaryRow {
            figure: format!("Cluster (2 nodes + Redis): extra {q} latency of the hop at {rate} ev/s (ms)"),
            wshub: hop,
            go: None,
            ratio: None,
            target: "stated (issue 6)".into(),
            verdict: if hop.is_some() { "stated".into() } else { "n/a".into() },
        });
    }
    let memory = rep.value(durable::KEY, "wshub", "requests_per_s");
    let disk = rep.value(durable::KEY, durable::DURABLE, "requests_per_s");
    rows.push(SummaryRow {
        figure: format!(
            "/notify requests/s with --data-dir (in memory, same run: {})",
            memory.map_or_else(|| "n/a".into(), crate::report::fmt_num)
        ),
        wshub: disk,
        go: None,
        ratio: None,
        target: "≥ 7,850/s (10x one commit per publish)".into(),
        verdict: verdict(disk.map(|d| d >= 7_850.0)),
    });
    for (metric, what) in [("delivery_p99_ms", "delivery"), ("ping_p99_ms", "ping"), ("connect_p99_ms", "connect")] {
        let (m, d) = (rep.value(durable::KEY, "wshub", metric), rep.value(durable::KEY, durable::DURABLE, metric));
        rows.push(SummaryRow {
            figure: format!(
                "p99 {what} latency under /notify load with --data-dir, ms (in memory: {})",
                m.map_or_else(|| "n/a".into(), crate::report::fmt_num)
            ),
            wshub: d,
            go: None,
            ratio: None,
            target: "stated (issue 10)".into(),
            verdict: if d.is_some() { "stated".into() } else { "n/a".into() },
        });
    }
    let mw = rep.value("connect_max", "wshub", "connected");
    let mg = rep.value("connect_max", "go", "connected");
    let all_delivered =
        rep.results.iter().find(|r| r.key == "fanout_max" && r.target == "wshub").map(|r| r.status == Status::Ok);
    rows.push(SummaryRow {
        figure: "Max concurrent clients, every broadcast delivered".into(),
        wshub: mw,
        go: mg,
        ratio: match (mw, mg) {
            (Some(w), Some(g)) if g > 0.0 => Some(w / g),
            _ => None,
        },
        target: format!("{} (fd limit - 100)", cfg.max_clients),
        verdict: verdict(mw.map(|m| m >= cfg.max_clients as f64 && all_delivered == Some(true))),
    });
    rows.retain(|r| r.wshub.is_some() || r.go.is_some());
    rows
}

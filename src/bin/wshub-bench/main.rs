//! `wshub-bench`: the load generator and benchmark suite for wshub (issue 7).
//!
//! It starts the hub under test itself (pinned to one core with `taskset`), pins itself and its
//! worker processes to another core, and measures over real loopback sockets: connect rate and
//! idle RSS, broadcast fan-out (paced and burst) with end-to-end latency and hub CPU per
//! delivery, targeted delivery to JWT users, the `/notify` API, the maximum client count, the
//! kernel's floor cost of one loopback send, and the paced fan-out through a two-node cluster
//! sharing a Redis it starts itself (the extra latency of the hop). `--compare` runs the same
//! scenarios against the reference Go hub, alternating, and reports wshub/go ratios.
//!
//! Results go to stdout as markdown and to `--json PATH`.

mod cluster;
mod connect;
mod durable;
mod fanout;
mod hist;
mod http;
mod hubproc;
mod measure;
mod pool;
mod probe;
mod proc_stats;
mod publish;
mod redisproc;
mod report;
mod suite;
mod targeted;
mod wire;
mod worker;
mod wsclient;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::hubproc::{HubKind, HubSpec};
use crate::suite::{Config, Target};

#[derive(Parser, Debug)]
#[command(name = "wshub-bench", version, about = "Benchmark wshub (and the reference Go hub) over loopback")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    sub: Option<Sub>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Internal: a load-generator worker process (JSON lines on stdin/stdout).
    #[command(hide = true)]
    Worker {
        /// Shared clock origin, ns since the UNIX epoch.
        #[arg(long)]
        epoch_ns: u64,
    },
    /// Internal: the kernel-floor probe server.
    #[command(hide = true)]
    ProbeServer {
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        rounds: usize,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long)]
        payload_bytes: usize,
    },
}

#[derive(Args, Debug)]
struct RunArgs {
    /// wshub binary to start.
    #[arg(long, default_value = "target/release/wshub")]
    hub_bin: PathBuf,
    /// Go hub binary to start (with --compare or --targets go).
    #[arg(long, default_value = "target/go-hub")]
    go_hub_bin: PathBuf,
    /// Run every scenario against wshub and the Go hub, alternating, and print ratios.
    #[arg(long)]
    compare: bool,
    /// Hubs to measure, comma-separated: wshub, go (default wshub; --compare means both).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// Measure an already running hub at this address instead of starting one.
    #[arg(long, requires = "hub_pid")]
    hub_addr: Option<SocketAddr>,
    /// PID of the running hub (for RSS and CPU from /proc).
    #[arg(long, requires = "hub_addr")]
    hub_pid: Option<u32>,
    /// Kind of the running hub given with --hub-addr: wshub or go.
    #[arg(long, default_value = "wshub")]
    hub_kind: String,
    /// Extra argument for wshub (repeatable), e.g. --hub-arg=--log-level=warn.
    #[arg(long, allow_hyphen_values = true)]
    hub_arg: Vec<String>,
    /// JWT secret wshub is started with for the targeted scenario.
    #[arg(long, default_value = "wshub-bench-secret")]
    jwt_secret: String,
    /// Small smoke run: 1000 clients, few events, no max-clients run; about a minute.
    #[arg(long)]
    quick: bool,
    /// Clients of the main scenario [default: 10000, quick 1000].
    #[arg(long)]
    clients: Option<usize>,
    /// Clients of the max-clients scenario, 0 to skip [default: fd hard limit - 100, quick 0].
    #[arg(long)]
    max_clients: Option<usize>,
    /// Paced fan-out runs as RATE:EVENTS,... [default: 2:30,20:100, quick 2:6,20:40].
    #[arg(long)]
    paced: Option<String>,
    /// Events of the burst run, 0 to skip [default: 100, quick 30].
    #[arg(long)]
    burst: Option<usize>,
    /// Users of the targeted scenario [default: same as --clients].
    #[arg(long)]
    targeted_users: Option<usize>,
    /// Events per targeted /notify batch.
    #[arg(long, default_value_t = 100)]
    targeted_batch: usize,
    /// Keep-alive connections sending targeted batches.
    #[arg(long, default_value_t = 4)]
    targeted_conns: usize,
    /// Keep-alive connections of the publish phase.
    #[arg(long, default_value_t = 8)]
    publish_conns: usize,
    /// Seconds of each publish run [default: 3, quick 1].
    #[arg(long)]
    publish_secs: Option<f64>,
    /// Events per batched /notify in the publish phase.
    #[arg(long, default_value_t = 100)]
    publish_batch: usize,
    /// Rounds of the kernel-floor probe, 0 to skip [default: 20, quick 5].
    #[arg(long)]
    probe_rounds: Option<usize>,
    /// Milliseconds between probe rounds.
    #[arg(long, default_value_t = 200)]
    probe_interval_ms: u64,
    /// Phase groups: connect, fanout, targeted, publish, durable, max, probe, cluster, or all.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    phases: Vec<String>,
    /// redis-server executable the cluster phase starts (a bare name is looked up in $PATH).
    #[arg(long, default_value = "redis-server")]
    redis_bin: PathBuf,
    /// Source addresses 127.0.0.2 .. 127.0.0.(K+1) for client sockets.
    #[arg(long, default_value_t = 32)]
    source_ips: u8,
    /// Connection attempts in flight per worker.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Sockets per worker process (capped by the fd limit).
    #[arg(long, default_value_t = 10_000)]
    clients_per_worker: usize,
    /// Core the hub (and the probe) is pinned to.
    #[arg(long, default_value_t = 0)]
    hub_core: usize,
    /// Core the load generator pins itself (and its workers) to.
    #[arg(long, default_value_t = 1)]
    gen_core: usize,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Seconds to wait for deliveries after the last publish.
    #[arg(long, default_value_t = 60)]
    drain_secs: u64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the markdown report here too.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Directory for hub logs.
    #[arg(long, default_value = "target/bench/logs")]
    log_dir: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.sub {
        Some(Sub::Worker { epoch_ns }) => worker::main(epoch_ns),
        Some(Sub::ProbeServer { conns, rounds, interval_ms, payload_bytes }) => {
            probe::serve(conns, rounds, Duration::from_millis(interval_ms), payload_bytes)
        }
        None => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building runtime")?;
            rt.block_on(run(cli.run))
        }
    }
}

fn parse_paced(s: &str) -> Result<Vec<(f64, usize)>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (rate, events) = p.split_once(':').with_context(|| format!("--paced item {p:?} is not RATE:EVENTS"))?;
            let rate: f64 = rate.trim().parse().with_context(|| format!("bad rate in {p:?}"))?;
            let events: usize = events.trim().parse().with_context(|| format!("bad event count in {p:?}"))?;
            if rate <= 0.0 {
                bail!("rate must be positive in {p:?}");
            }
            Ok((rate, events))
        })
        .collect()
}

fn file_text(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn environment(a: &RunArgs, nofile: u64, pinned: bool) -> serde_json::Value {
    let cpuinfo = file_text("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|m| m.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "mode": if a.quick { "quick" } else { "full" },
        "cpus": proc_stats::online_cpus(),
        "cpu_model": model,
        "kernel": file_text("/proc/sys/kernel/osrelease").trim(),
        "nofile_limit": nofile,
        "pinning": if pinned { format!("hub on core {}, generator on core {}", a.hub_core, a.gen_core) } else { "none".into() },
        "started_unix": proc_stats::unix_nanos() / 1_000_000_000,
    })
}

async fn run(a: RunArgs) -> Result<()> {
    let nofile = proc_stats::raise_nofile_limit()?;
    let cpus = proc_stats::online_cpus();
    let pinned = !a.no_pin && cpus > a.gen_core.max(a.hub_core) && a.gen_core != a.hub_core;
    if pinned {
        proc_stats::pin_to_core(a.gen_core)?;
    } else if !a.no_pin {
        eprintln!("wshub-bench: not pinning (cores {} and {} not both available)", a.hub_core, a.gen_core);
    }
    let epoch_ns = proc_stats::unix_nanos();

    let mut kinds: Vec<HubKind> = Vec::new();
    let names = if a.compare { vec!["wshub".to_string(), "go".to_string()] } else { a.targets.clone() };
    for n in if names.is_empty() { vec!["wshub".to_string()] } else { names } {
        let kind = match n.trim() {
            "wshub" => HubKind::Wshub,
            "go" => HubKind::Go,
            other => bail!("unknown target {other:?} (wshub, go)"),
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    let log = a.log_dir.join("hub.log");
    let targets: Vec<Target> = match (a.hub_addr, a.hub_pid) {
        (Some(addr), Some(pid)) => {
            let kind = if a.hub_kind == "go" { HubKind::Go } else { HubKind::Wshub };
            vec![Target { kind, spawn: None, external: Some((addr, pid)) }]
        }
        _ => kinds
            .into_iter()
            .map(|kind| {
                let (bin, args) = match kind {
                    HubKind::Wshub => (a.hub_bin.clone(), a.hub_arg.clone()),
                    HubKind::Go => (a.go_hub_bin.clone(), Vec::new()),
                };
                let spec = HubSpec { kind, bin, args, core: pinned.then_some(a.hub_core), log: log.clone() };
                Target { kind, spawn: Some(spec), external: None }
            })
            .collect(),
    };

    let q = a.quick;
    let clients = a.clients.unwrap_or(if q { 1000 } else { 10_000 });
    let fd_room = (nofile as usize).saturating_sub(100);
    let max_clients = a.max_clients.unwrap_or(if q { 0 } else { fd_room });
    let paced = parse_paced(a.paced.as_deref().unwrap_or(if q { "2:6,20:40" } else { "2:30,20:100" }))?;
    let per_worker = a.clients_per_worker.min((nofile as usize).saturating_sub(200)).max(1);
    let src_ips = (0..a.source_ips.clamp(1, 250)).map(|i| Ipv4Addr::new(127, 0, 0, 2 + i)).collect();
    let cfg = Config {
        targets,
        clients,
        max_clients,
        paced,
        burst: a.burst.unwrap_or(if q { 30 } else { 100 }),
        targeted_users: a.targeted_users.unwrap_or(clients),
        targeted_batch: a.targeted_batch,
        targeted_conns: a.targeted_conns,
        jwt_secret: a.jwt_secret.clone(),
        publish_conns: a.publish_conns,
        publish_time: Duration::from_secs_f64(a.publish_secs.unwrap_or(if q { 1.0 } else { 3.0 })),
        publish_batch: a.publish_batch,
        probe_rounds: a.probe_rounds.unwrap_or(if q { 5 } else { 20 }),
        probe_interval: Duration::from_millis(a.probe_interval_ms),
        hub_core: pinned.then_some(a.hub_core),
        gen_cores: if pinned { 1 } else { cpus },
        connect_concurrency: a.connect_concurrency,
        drain: Duration::from_secs(a.drain_secs),
        phases: a.phases.clone(),
        redis_bin: a.redis_bin.clone(),
        per_worker,
        src_ips,
        epoch_ns,
    };
    let started = std::time::Instant::now();
    let report = suite::run(&cfg, environment(&a, nofile, pinned)).await?;
    let md = report.to_markdown();
    // The report is this tool's output: write it to stdout explicitly.
    std::io::Write::write_all(&mut std::io::stdout().lock(), format!("{md}\n").as_bytes())?;
    if let Some(path) = &a.json {
        write_file(path, &serde_json::to_string_pretty(&report)?)?;
    }
    if let Some(path) = &a.md {
        write_file(path, &md)?;
    }
    eprintln!("wshub-bench: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn write_file(path: &PathBuf, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

//! Helpers shared by the delivery phases: CPU marks, waiting for deliveries, latency figures.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::hist::Histogram;
use crate::hubproc::Hub;
use crate::pool::{Pool, Totals};
use crate::proc_stats;
use crate::report::{Metrics, PhaseResult};

/// CPU counters of the hub and of the whole load generator at one instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuMark {
    /// Hub CPU seconds so far (summed over every node in cluster mode).
    pub hub: f64,
    /// CPU seconds so far of a helper process charged separately (Redis in cluster mode), else 0.
    pub aux: f64,
    /// Generator CPU seconds so far (this process plus its workers).
    pub gen_cpu: f64,
    /// Busy CPU seconds of the whole machine so far.
    pub machine: f64,
    /// When the mark was taken.
    pub at: Instant,
}

impl CpuMark {
    /// Takes a mark (asks the workers for their CPU time).
    pub async fn take(pool: &mut Pool, hub: &Hub) -> Result<Self> {
        Self::take_of(pool, &[hub.pid], None).await
    }

    /// Takes a mark charging the hub CPU of every pid in `hubs` and, separately, `aux`'s.
    pub async fn take_of(pool: &mut Pool, hubs: &[u32], aux: Option<u32>) -> Result<Self> {
        let workers = pool.totals().await?.cpu_s;
        let mut hub = 0.0;
        for &pid in hubs {
            hub += proc_stats::cpu_seconds(pid)?;
        }
        Ok(Self {
            hub,
            aux: aux.map(proc_stats::cpu_seconds).transpose()?.unwrap_or(0.0),
            gen_cpu: proc_stats::self_cpu_seconds() + workers,
            machine: proc_stats::machine_busy_seconds(),
            at: Instant::now(),
        })
    }
}

/// Adds hub and generator CPU figures between two marks; flags a saturated generator.
/// `work` is the number of deliveries (or requests) the CPU is divided by.
pub fn cpu_figures(r: &mut PhaseResult, a: CpuMark, b: CpuMark, work: u64, per: &str, gen_cores: usize) {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let hub = (b.hub - a.hub).max(0.0);
    let gen_cpu = (b.gen_cpu - a.gen_cpu).max(0.0);
    let util = gen_cpu / wall / gen_cores.max(1) as f64;
    r.metrics.push("hub_cpu_s", hub, "s");
    if work > 0 {
        r.metrics.push(&format!("hub_cpu_us_per_{per}"), hub * 1e6 / work as f64, "µs");
    }
    r.metrics.push("hub_cpu_util", 100.0 * hub / wall, "% of 1 core");
    r.metrics.push("gen_cpu_s", gen_cpu, "s");
    r.metrics.push("gen_cpu_util", 100.0 * util, "% of its cores");
    let aux = (b.aux - a.aux).max(0.0);
    let foreign = ((b.machine - a.machine) - hub - aux - gen_cpu).max(0.0) / wall;
    r.metrics.push("other_cpu_util", 100.0 * foreign, "% of 1 core");
    if foreign > 0.25 {
        r.notes.push(format!(
            "other processes (or the kernel) used {:.0}% of a core during this phase: the machine was not quiet",
            100.0 * foreign
        ));
    }
    if util > 0.85 {
        r.generator_saturated = true;
        r.notes.push(format!(
            "load generator used {:.0}% of its core(s): throughput and latency bound the generator, not the hub",
            100.0 * util
        ));
    }
}

/// Adds the CPU figures of the separately charged process (`aux` of the marks) as `{name}_cpu_*`.
pub fn aux_cpu_figures(r: &mut PhaseResult, name: &str, a: CpuMark, b: CpuMark, work: u64, per: &str) {
    let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let aux = (b.aux - a.aux).max(0.0);
    r.metrics.push(&format!("{name}_cpu_s"), aux, "s");
    if work > 0 {
        r.metrics.push(&format!("{name}_cpu_us_per_{per}"), aux * 1e6 / work as f64, "µs");
    }
    r.metrics.push(&format!("{name}_cpu_util"), 100.0 * aux / wall, "% of 1 core");
}

/// Latency percentiles in milliseconds (the histogram records microseconds).
pub fn latency_figures(m: &mut Metrics, h: &Histogram, prefix: &str) {
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        m.push(&format!("{prefix}_{name}_ms"), h.quantile(q) as f64 / 1000.0, "ms");
    }
    m.push(&format!("{prefix}_max_ms"), h.max() as f64 / 1000.0, "ms");
}

/// Polls the workers until `expected` timed events arrived, nothing arrived for `stall`, or
/// `limit` passed.
pub async fn await_deliveries(pool: &mut Pool, expected: u64, stall: Duration, limit: Duration) -> Result<Totals> {
    let start = Instant::now();
    let mut last = pool.totals().await?;
    let mut last_progress = Instant::now();
    while last.received < expected && start.elapsed() < limit && last_progress.elapsed() < stall {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = pool.totals().await?;
        if now.received > last.received {
            last_progress = Instant::now();
        }
        last = now;
    }
    Ok(last)
}

/// Describes connections that ended during a phase (close code → count).
pub fn describe_closed(closed: &[(u16, u64)]) -> Option<String> {
    let gone: Vec<String> = closed.iter().map(|(c, n)| format!("{n} closed with code {c}")).collect();
    if gone.is_empty() { None } else { Some(format!("clients lost: {}", gone.join(", "))) }
}

/// Polls the workers until their probe sockets read `expected` bytes or `limit` passes.
pub async fn await_probe_bytes(pool: &mut Pool, expected: u64, limit: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        let got = pool.totals().await?.probe_bytes;
        if got >= expected || start.elapsed() > limit {
            return Ok(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Phase 5: the kernel floor. A probe process pinned to the hub's core writes the same bytes as
//! one hub delivery (a WebSocket text frame of the measured event size) to N plain TCP sockets
//! that the load generator reads, one `write` per socket per round, paced like the fan-out. Its
//! CPU per send is the floor a paced hub delivery can approach.

use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::measure::await_probe_bytes;
use crate::pool::Pool;
use crate::proc_stats;
use crate::report::PhaseResult;
use crate::wsclient::server_text_frame;

/// What the probe server prints when done.
#[derive(Debug, Serialize, Deserialize)]
pub struct ProbeOutcome {
    /// Writes done.
    pub sends: u64,
    /// Writes that failed or were short.
    pub write_errors: u64,
    /// CPU seconds spent in the rounds.
    pub cpu_s: f64,
    /// Wall seconds of the rounds.
    pub wall_s: f64,
}

/// The hidden `probe-server` subcommand: listens, accepts `conns` sockets, waits for `go` on
/// stdin, writes `rounds` rounds of one frame per socket, prints a [`ProbeOutcome`].
pub fn serve(conns: usize, rounds: usize, interval: Duration, payload_bytes: usize) -> Result<()> {
    proc_stats::raise_nofile_limit()?;
    let listener = TcpListener::bind("127.0.0.1:0").context("probe bind")?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout();
    writeln!(out, "port {port}")?;
    out.flush()?;
    let mut sockets = Vec::with_capacity(conns);
    while sockets.len() < conns {
        let (s, _) = listener.accept().context("probe accept")?;
        s.set_nodelay(true)?;
        sockets.push(s);
    }
    writeln!(out, "ready")?;
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("waiting for go")?;
    let frame = server_text_frame(&vec![b'x'; payload_bytes]);
    let (mut sends, mut write_errors) = (0u64, 0u64);
    let cpu0 = proc_stats::self_cpu_seconds();
    let start = Instant::now();
    for round in 0..rounds {
        let due = start + interval * round as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for s in &mut sockets {
            match std::io::Write::write(s, &frame) {
                Ok(n) if n == frame.len() => sends += 1,
                _ => write_errors += 1,
            }
        }
    }
    let outcome = ProbeOutcome {
        sends,
        write_errors,
        cpu_s: proc_stats::self_cpu_seconds() - cpu0,
        wall_s: start.elapsed().as_secs_f64(),
    };
    writeln!(out, "{}", serde_json::to_string(&outcome)?)?;
    out.flush()?;
    Ok(())
}

/// Parameters of the probe phase.
pub struct ProbePhase {
    /// Sockets.
    pub conns: usize,
    /// Rounds (one write per socket each).
    pub rounds: usize,
    /// Time between rounds.
    pub interval: Duration,
    /// Payload size of the frame (the hub's event size).
    pub payload_bytes: usize,
    /// Core to pin the probe to (the hub's core).
    pub core: Option<usize>,
}

/// Runs the probe server and the readers; returns the `kernel` result.
pub async fn run(pool: &mut Pool, p: &ProbePhase) -> Result<PhaseResult> {
    let mut r = PhaseResult::new("probe", "Kernel floor: one loopback send per delivery (probe)", "kernel");
    let exe = std::env::current_exe().context("locating own executable")?;
    let mut cmd = match p.core {
        Some(core) => {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(core.to_string()).arg(&exe);
            c
        }
        None => tokio::process::Command::new(&exe),
    };
    let mut child = cmd
        .arg("probe-server")
        .args(["--conns", &p.conns.to_string(), "--rounds", &p.rounds.to_string()])
        .args(["--interval-ms", &p.interval.as_millis().to_string()])
        .args(["--payload-bytes", &p.payload_bytes.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting probe server")?;
    let mut stdin = child.stdin.take().context("probe stdin")?;
    let mut lines = BufReader::new(child.stdout.take().context("probe stdout")?).lines();
    let first = lines.next_line().await?.context("probe exited")?;
    let port: u16 = first.strip_prefix("port ").context("probe did not print its port")?.parse()?;
    let out = pool.probe_connect(([127, 0, 0, 1], port).into(), p.conns).await?;
    if out.failed > 0 {
        bail!("probe: {} sockets failed: {}", out.failed, out.failures.join("; "));
    }
    let ready = lines.next_line().await?.context("probe exited")?;
    if ready != "ready" {
        bail!("probe said {ready:?}");
    }
    stdin.write_all(b"go\n").await?;
    stdin.flush().await?;
    let done = lines.next_line().await?.context("probe exited")?;
    let o: ProbeOutcome = serde_json::from_str(&done).context("probe outcome")?;
    let _ = child.wait().await;
    let frame_len = server_text_frame(&vec![b'x'; p.payload_bytes]).len() as u64;
    let expected = o.sends * frame_len;
    let got = await_probe_bytes(pool, expected, Duration::from_secs(20)).await?;
    pool.close_all().await?;

    let m = &mut r.metrics;
    m.push("sockets", p.conns as f64, "");
    m.push("rounds", p.rounds as f64, "");
    m.push("interval_ms", p.interval.as_millis() as f64, "ms");
    m.push("frame_bytes", frame_len as f64, "B");
    m.push("sends", o.sends as f64, "");
    m.push("cpu_s", o.cpu_s, "s");
    m.push("cpu_us_per_send", o.cpu_s * 1e6 / o.sends.max(1) as f64, "µs");
    m.push("sends_per_s_of_cpu", o.sends as f64 / o.cpu_s.max(1e-9), "/s");
    if o.write_errors > 0 {
        r.fail(format!("{} writes failed or were short", o.write_errors));
    }
    if got < expected {
        r.fail(format!("readers got {got} of {expected} bytes"));
    }
    Ok(r)
}

//! The durable phase: `POST /notify` throughput of wshub in memory and with `--data-dir`, side
//! by side in one run, while a watcher connection measures delivery latency and WebSocket ping
//! round trips and a prober times fresh connects up to `hub:connected`. A hub whose actor waits
//! for the disk shows in those three; the request rate shows what group commit buys.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

use crate::hist::Histogram;
use crate::hubproc::Hub;
use crate::proc_stats::unix_nanos;
use crate::publish::{self, PublishPhase};
use crate::report::PhaseResult;
use crate::suite::{Config, Target};
use crate::wsclient::{client_frame, connect_ws, parse_frame};

/// Result key of the phase.
pub const KEY: &str = "durable";
/// The column of the run with `--data-dir`.
pub const DURABLE: &str = "wshub --data-dir";
/// Time between two pings of the watcher.
const PING_EVERY: Duration = Duration::from_millis(10);
/// Time between two connects of the prober.
const CONNECT_EVERY: Duration = Duration::from_millis(50);
/// How long deliveries may trail the last publish.
const DRAIN: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The phase title.
pub fn title(cfg: &Config) -> String {
    format!(
        "Durable publishes: single events over {} keep-alive connections, in memory and with --data-dir",
        cfg.publish_conns
    )
}

/// Runs the phase against wshub, first in memory, then with a fresh data dir.
pub async fn run(cfg: &Config, t: &Target) -> Result<Vec<PhaseResult>> {
    let dir = std::env::temp_dir().join(format!("wshub-bench-durable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = Vec::new();
    let data_dir = format!("--data-dir={}", dir.display());
    for (label, extra) in [("wshub", Vec::new()), (DURABLE, vec![data_dir])] {
        let mut hub = t.start(if extra.is_empty() { "durable-memory" } else { "durable-disk" }, &extra)?;
        let result = measure(cfg, &hub, label).await;
        hub.stop();
        out.push(result?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// What the watcher saw.
#[derive(Default)]
struct Watched {
    delivered: u64,
    delivery_us: Histogram,
    ping_us: Histogram,
}

async fn measure(cfg: &Config, hub: &Hub, label: &str) -> Result<PhaseResult> {
    let (stream, rest) = connect_ws(hub.addr, None, "/ws", CONNECT_TIMEOUT).await.context("watcher connect")?;
    let (read, mut write) = stream.into_split();
    let stop = Arc::new(AtomicBool::new(false));
    let watched = Arc::new(Mutex::new(Watched::default()));
    let watcher = tokio::spawn(watch(read, rest, Arc::clone(&watched)));
    let pinger = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let frame = client_frame(9, &unix_nanos().to_be_bytes());
                if write.write_all(&frame).await.is_err() {
                    break;
                }
                tokio::time::sleep(PING_EVERY).await;
            }
            write
        })
    };
    let prober = tokio::spawn(probe_connects(hub.addr, Arc::clone(&stop)));
    let title = title(cfg);
    let p = PublishPhase {
        key: KEY,
        title: &title,
        conns: cfg.publish_conns,
        batch: 1,
        duration: cfg.publish_time,
        gen_cores: cfg.gen_cores,
        timestamped: true,
    };
    let mut r = publish::run(hub, &p).await?;
    r.target = label.to_string();
    let requests = r.metrics.get("requests").unwrap_or(0.0) as u64;
    // Every accepted event reaches the watcher (a broadcast); give the tail time to arrive.
    let deadline = Instant::now() + DRAIN;
    let delivered = || watched.lock().map_or(0, |w| w.delivered);
    while Instant::now() < deadline && delivered() < requests {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let connects = prober.await.context("prober")?;
    let write = pinger.await.context("pinger")?;
    drop(write);
    watcher.abort();
    let watched = std::mem::take(&mut *watched.lock().map_err(|_| anyhow::anyhow!("watcher panicked"))?);
    let m = &mut r.metrics;
    m.push("delivered", watched.delivered as f64, "");
    m.push("lost", requests.saturating_sub(watched.delivered) as f64, "");
    m.push("delivery_p50_ms", watched.delivery_us.quantile(0.5) as f64 / 1000.0, "ms");
    m.push("delivery_p99_ms", watched.delivery_us.quantile(0.99) as f64 / 1000.0, "ms");
    m.push("ping_p50_ms", watched.ping_us.quantile(0.5) as f64 / 1000.0, "ms");
    m.push("ping_p99_ms", watched.ping_us.quantile(0.99) as f64 / 1000.0, "ms");
    m.push("connects", connects.count() as f64, "");
    m.push("connect_p99_ms", connects.quantile(0.99) as f64 / 1000.0, "ms");
    if requests > watched.delivered {
        r.fail(format!("{} accepted events never reached the watcher", requests - watched.delivered));
    }
    Ok(r)
}

/// Reads the watcher's frames: events carry their send time (`"t":` nanoseconds), pongs carry
/// the ping's.
async fn watch(mut read: OwnedReadHalf, mut buf: Vec<u8>, watched: Arc<Mutex<Watched>>) {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some(frame)) = parse_frame(&mut buf) {
            let payload = &buf[frame.payload.clone()];
            let now = unix_nanos();
            if let Ok(mut w) = watched.lock() {
                match frame.opcode {
                    1 => {
                        if let Some(sent) = sent_at(payload) {
                            w.delivered += 1;
                            w.delivery_us.record(now.saturating_sub(sent) / 1000);
                        }
                    }
                    10 if payload.len() == 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(payload);
                        w.ping_us.record(now.saturating_sub(u64::from_be_bytes(b)) / 1000);
                    }
                    _ => {}
                }
            }
            buf.drain(..frame.len);
        }
        match read.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The `"t":` send time in an event's data.
fn sent_at(payload: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(payload, br#""t":"#)? + 4;
    let digits = payload[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&payload[at..at + digits]).ok()?.parse().ok()
}

/// Opens a connection every [`CONNECT_EVERY`] and times it up to its first frame.
async fn probe_connects(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) -> Histogram {
    let mut hist = Histogram::default();
    while !stop.load(Ordering::Relaxed) {
        let t0 = Instant::now();
        if let Ok((stream, rest)) = connect_ws(addr, None, "/ws", CONNECT_TIMEOUT).await {
            let (mut read, _write) = stream.into_split();
            let mut buf = rest;
            let mut chunk = [0u8; 4096];
            loop {
                if let Ok(Some(_)) = parse_frame(&mut buf) {
                    hist.record(t0.elapsed().as_micros() as u64);
                    break;
                }
                match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        }
        tokio::time::sleep(CONNECT_EVERY).await;
    }
    hist
}

//! Messages between the coordinator and its worker processes: one JSON object per line, commands
//! on the worker's stdin and replies on its stdout.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::hist::SparseHistogram;

/// A command sent to a worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Open WebSocket clients and keep them reading.
    Connect(ConnectSpec),
    /// Open plain TCP sockets to the kernel-floor probe and count the bytes they read.
    ProbeConnect(ProbeSpec),
    /// Report counters (cheap; polled while a phase drains).
    Stats,
    /// Report counters and the latency histogram, then reset both.
    TakeLatency,
    /// Close every client and probe socket.
    CloseAll,
    /// Close everything and exit.
    Exit,
}

/// How a worker opens its share of WebSocket clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConnectSpec {
    /// Hub address.
    pub addr: SocketAddr,
    /// Path of the WebSocket endpoint, e.g. `/ws`.
    pub path: String,
    /// Clients to open.
    pub count: usize,
    /// Index of this worker's first connection in the whole run; picks the source address.
    pub first_conn: u64,
    /// Source addresses to spread connections over (round robin).
    pub src_ips: Vec<Ipv4Addr>,
    /// Connection attempts in flight at once.
    pub concurrency: usize,
    /// Per-connection timeout (TCP connect + upgrade), milliseconds.
    pub timeout_ms: u64,
    /// When set, each client sends a JWT for user `{user_prefix}{first_user + i}`.
    pub jwt: Option<JwtSpec>,
}

/// JWT settings for targeted clients.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JwtSpec {
    /// HS256 secret the hub was started with.
    pub secret: String,
    /// Prefix of the `sub` claim.
    pub user_prefix: String,
    /// User index of this worker's first client.
    pub first_user: u64,
}

/// How a worker opens its share of probe sockets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeSpec {
    /// Probe server address.
    pub addr: SocketAddr,
    /// Sockets to open.
    pub count: usize,
    /// Index of this worker's first connection in the whole run; picks the source address.
    pub first_conn: u64,
    /// Source addresses to spread connections over.
    pub src_ips: Vec<Ipv4Addr>,
}

/// Counters of one worker (cumulative since its start or the last `TakeLatency`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    /// WebSocket clients currently open.
    pub open: u64,
    /// Clients that received a `hub:connected` frame.
    pub ready: u64,
    /// Timed events received (frames whose data carries `t`).
    pub received: u64,
    /// Other non-control frames received.
    pub other_frames: u64,
    /// Payload bytes of the timed events received.
    pub event_bytes: u64,
    /// Clients whose connection ended, by close code (0: closed without a close frame / error).
    pub closed: Vec<(u16, u64)>,
    /// Wall clock (UNIX ns) of the last timed event received.
    pub last_recv_ns: u64,
    /// Probe sockets open.
    pub probe_open: u64,
    /// Bytes read on probe sockets.
    pub probe_bytes: u64,
    /// This worker's CPU seconds so far (getrusage).
    pub cpu_s: f64,
}

/// A worker's answer to one command.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Set when the command failed as a whole.
    pub error: Option<String>,
    /// Connections opened by `Connect` / `ProbeConnect`.
    pub connected: u64,
    /// Connections that failed.
    pub failed: u64,
    /// A few failure messages.
    pub failures: Vec<String>,
    /// Time the connect command took, seconds.
    pub elapsed_s: f64,
    /// Counters (every reply).
    pub stats: Stats,
    /// Latency histogram in microseconds (`TakeLatency`).
    pub hist: Option<SparseHistogram>,
}

//! The hidden `worker` subcommand: a load-generator process that holds a share of the WebSocket
//! clients (and probe sockets) on a single-threaded runtime and answers the coordinator's
//! commands (see [`crate::wire`]) over stdin/stdout.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::hist::Histogram;
use crate::proc_stats;
use crate::wire::{Command, ConnectSpec, JwtSpec, ProbeSpec, Reply, Stats};
use crate::wsclient::{self, Classified};

/// Counters shared by the client tasks of one worker.
#[derive(Default)]
struct State {
    hist: Histogram,
    stats: Stats,
    closed: BTreeMap<u16, u64>,
}

type Shared = Rc<RefCell<State>>;

/// Runs a worker until its stdin closes or it is told to exit.
pub fn main(epoch_ns: u64) -> Result<()> {
    proc_stats::raise_nofile_limit()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("building runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(epoch_ns))
}

struct Worker {
    state: Shared,
    epoch_ns: u64,
    clients: Vec<JoinHandle<()>>,
    probes: Vec<JoinHandle<()>>,
}

async fn serve(epoch_ns: u64) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut worker =
        Worker { state: Rc::new(RefCell::new(State::default())), epoch_ns, clients: Vec::new(), probes: Vec::new() };
    while let Some(line) = lines.next_line().await.context("reading command")? {
        let (reply, exit) = match serde_json::from_str::<Command>(&line) {
            Ok(Command::Exit) => (worker.close_all().await, true),
            Ok(cmd) => (worker.handle(cmd).await, false),
            Err(e) => (Reply { error: Some(format!("bad command: {e}")), ..Reply::default() }, false),
        };
        let mut out = serde_json::to_vec(&reply).context("encoding reply")?;
        out.push(b'\n');
        stdout.write_all(&out).await.context("writing reply")?;
        stdout.flush().await.context("flushing reply")?;
        if exit {
            break;
        }
    }
    Ok(())
}

impl Worker {
    async fn handle(&mut self, cmd: Command) -> Reply {
        match cmd {
            Command::Connect(spec) => self.connect(spec).await,
            Command::ProbeConnect(spec) => self.probe_connect(spec).await,
            Command::Stats => self.reply(false),
            Command::TakeLatency => self.reply(true),
            Command::CloseAll | Command::Exit => self.close_all().await,
        }
    }

    fn reply(&self, take: bool) -> Reply {
        let mut st = self.state.borrow_mut();
        let mut stats = st.stats.clone();
        stats.closed = st.closed.iter().map(|(k, v)| (*k, *v)).collect();
        stats.cpu_s = proc_stats::self_cpu_seconds();
        let hist = if take {
            let h = st.hist.to_sparse();
            st.hist = Histogram::default();
            st.stats.received = 0;
            st.stats.other_frames = 0;
            st.stats.event_bytes = 0;
            st.stats.last_recv_ns = 0;
            Some(h)
        } else {
            None
        };
        Reply { stats, hist, ..Reply::default() }
    }

    async fn close_all(&mut self) -> Reply {
        for h in self.clients.drain(..).chain(self.probes.drain(..)) {
            h.abort();
            let _ = h.await;
        }
        {
            let mut st = self.state.borrow_mut();
            st.stats.open = 0;
            st.stats.ready = 0;
            st.stats.probe_open = 0;
            st.stats.probe_bytes = 0;
            st.closed.clear();
        }
        self.reply(false)
    }

    async fn connect(&mut self, spec: ConnectSpec) -> Reply {
        let start = Instant::now();
        let timeout = Duration::from_millis(spec.timeout_ms);
        let base_path = spec.path.clone();
        let jobs = (0..spec.count as u64).map(|i| {
            let src = pick_ip(&spec.src_ips, spec.first_conn + i);
            let path = match &spec.jwt {
                Some(jwt) => make_token(jwt, i).map(|t| format!("{base_path}?token={t}")),
                None => Ok(base_path.clone()),
            };
            let addr = spec.addr;
            async move { wsclient::connect_ws(addr, src, &path?, timeout).await }
        });
        let mut results = futures_util::stream::iter(jobs).buffer_unordered(spec.concurrency.max(1));
        let (mut connected, mut failed, mut failures) = (0u64, 0u64, Vec::new());
        while let Some(result) = results.next().await {
            match result {
                Ok((stream, rest)) => {
                    connected += 1;
                    self.state.borrow_mut().stats.open += 1;
                    let task = client_loop(stream, rest, self.state.clone(), self.epoch_ns);
                    self.clients.push(tokio::task::spawn_local(task));
                }
                Err(e) => {
                    failed += 1;
                    if failures.len() < 5 {
                        failures.push(format!("{e:#}"));
                    }
                }
            }
        }
        let mut reply = self.reply(false);
        reply.connected = connected;
        reply.failed = failed;
        reply.failures = failures;
        reply.elapsed_s = start.elapsed().as_secs_f64();
        reply
    }

    async fn probe_connect(&mut self, spec: ProbeSpec) -> Reply {
        let start = Instant::now();
        let (mut connected, mut failed, mut failures) = (0u64, 0u64, Vec::new());
        for i in 0..spec.count as u64 {
            let src = pick_ip(&spec.src_ips, spec.first_conn + i);
            match wsclient::tcp_connect(spec.addr, src).await {
                Ok(stream) => {
                    connected += 1;
                    self.state.borrow_mut().stats.probe_open += 1;
                    let task = probe_reader(stream, self.state.clone());
                    self.probes.push(tokio::task::spawn_local(task));
                }
                Err(e) => {
                    failed += 1;
                    if failures.len() < 5 {
                        failures.push(format!("{e:#}"));
                    }
                }
            }
        }
        let mut reply = self.reply(false);
        reply.connected = connected;
        reply.failed = failed;
        reply.failures = failures;
        reply.elapsed_s = start.elapsed().as_secs_f64();
        reply
    }
}

fn pick_ip(ips: &[Ipv4Addr], n: u64) -> Option<Ipv4Addr> {
    if ips.is_empty() { None } else { Some(ips[(n % ips.len() as u64) as usize]) }
}

#[derive(Serialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// An HS256 token for user `{prefix}{first_user + i}`, valid for an hour.
fn make_token(jwt: &JwtSpec, i: u64) -> Result<String> {
    let now = proc_stats::unix_nanos() / 1_000_000_000;
    let claims = Claims { sub: format!("{}{}", jwt.user_prefix, jwt.first_user + i), iat: now, exp: now + 3600 };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(jwt.secret.as_bytes()),
    )
    .context("encoding JWT")
}

/// Reads frames until the connection ends; records timed events; answers pings and closes.
async fn client_loop(mut stream: TcpStream, rest: Vec<u8>, state: Shared, epoch_ns: u64) {
    let mut buf = rest;
    let mut end = buf.len();
    buf.resize(end.max(2048), 0);
    let mut frag: Vec<u8> = Vec::new();
    let code = 'conn: loop {
        let mut start = 0;
        loop {
            let frame = match wsclient::parse_frame(&mut buf[start..end]) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => break 'conn 1002,
            };
            let payload = start + frame.payload.start..start + frame.payload.end;
            start += frame.len;
            match frame.opcode {
                1 if frame.fin => on_message(&buf[payload], &state, epoch_ns),
                1 | 2 => frag = buf[payload].to_vec(),
                0 => {
                    frag.extend_from_slice(&buf[payload]);
                    if frame.fin {
                        on_message(&frag, &state, epoch_ns);
                        frag.clear();
                    }
                }
                8 => {
                    let p = &buf[payload];
                    let code = if p.len() >= 2 { u16::from_be_bytes([p[0], p[1]]) } else { 1005 };
                    let close = wsclient::client_frame(8, &code.to_be_bytes());
                    let _ = stream.write_all(&close).await;
                    break 'conn code;
                }
                9 => {
                    let pong = wsclient::client_frame(10, &buf[payload]);
                    if stream.write_all(&pong).await.is_err() {
                        break 'conn 0;
                    }
                }
                _ => {}
            }
        }
        if start > 0 {
            buf.copy_within(start..end, 0);
            end -= start;
        }
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => break 0,
            Ok(n) => end += n,
        }
    };
    let mut st = state.borrow_mut();
    st.stats.open = st.stats.open.saturating_sub(1);
    *st.closed.entry(code).or_default() += 1;
}

fn on_message(msg: &[u8], state: &Shared, epoch_ns: u64) {
    // The Go hub's optional "coalesce" mode joins several events with newlines.
    for line in msg.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let kind = wsclient::classify(line);
        let mut st = state.borrow_mut();
        match kind {
            Classified::Timed(t) => {
                let now = proc_stats::unix_nanos();
                let latency_us = now.saturating_sub(epoch_ns + t) / 1000;
                st.hist.record(latency_us);
                st.stats.received += 1;
                st.stats.event_bytes += line.len() as u64;
                st.stats.last_recv_ns = now;
            }
            Classified::Control(true) => st.stats.ready += 1,
            Classified::Control(false) => {}
            Classified::Other => st.stats.other_frames += 1,
        }
    }
}

async fn probe_reader(mut stream: TcpStream, state: Shared) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        state.borrow_mut().stats.probe_bytes += n as u64;
    }
    let mut st = state.borrow_mut();
    st.stats.probe_open = st.stats.probe_open.saturating_sub(1);
}

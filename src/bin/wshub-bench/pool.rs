//! The coordinator's side of the worker processes: spawns them (the same binary, hidden `worker`
//! subcommand), splits clients between them, and sums their counters.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::hist::Histogram;
use crate::wire::{Command, ConnectSpec, JwtSpec, ProbeSpec, Reply, Stats};

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Clients (or probe sockets) this worker holds now.
    load: usize,
}

impl Worker {
    async fn call(&mut self, cmd: &Command) -> Result<Reply> {
        let mut line = serde_json::to_vec(cmd).context("encoding command")?;
        line.push(b'\n');
        self.stdin.write_all(&line).await.context("writing to worker")?;
        self.stdin.flush().await.context("flushing to worker")?;
        let reply = self.lines.next_line().await.context("reading from worker")?.context("worker exited")?;
        let reply: Reply = serde_json::from_str(&reply).context("decoding worker reply")?;
        if let Some(e) = &reply.error {
            bail!("worker: {e}");
        }
        Ok(reply)
    }
}

/// Sum of every worker's counters.
#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Clients open.
    pub open: u64,
    /// Clients that got `hub:connected`.
    pub ready: u64,
    /// Timed events received.
    pub received: u64,
    /// Payload bytes of the timed events.
    pub event_bytes: u64,
    /// Latest receive time (UNIX ns) over all workers.
    pub last_recv_ns: u64,
    /// Connections that ended, by close code.
    pub closed: Vec<(u16, u64)>,
    /// Bytes read by probe sockets.
    pub probe_bytes: u64,
    /// Workers' CPU seconds.
    pub cpu_s: f64,
}

impl Totals {
    fn add(&mut self, s: &Stats) {
        self.open += s.open;
        self.ready += s.ready;
        self.received += s.received;
        self.event_bytes += s.event_bytes;
        self.last_recv_ns = self.last_recv_ns.max(s.last_recv_ns);
        self.probe_bytes += s.probe_bytes;
        self.cpu_s += s.cpu_s;
        for (code, n) in &s.closed {
            match self.closed.iter_mut().find(|(c, _)| c == code) {
                Some(slot) => slot.1 += n,
                None => self.closed.push((*code, *n)),
            }
        }
    }
}

/// Result of opening clients across the workers.
#[derive(Clone, Debug, Default)]
pub struct ConnectOutcome {
    /// Connections opened.
    pub connected: u64,
    /// Connections that failed.
    pub failed: u64,
    /// A few failure messages.
    pub failures: Vec<String>,
}

/// Where and how to open clients.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    /// Hub address.
    pub addr: SocketAddr,
    /// WebSocket path.
    pub path: String,
    /// Clients to open in total.
    pub count: usize,
    /// Connection attempts in flight per worker.
    pub concurrency: usize,
    /// Per-connection timeout, ms.
    pub timeout_ms: u64,
    /// JWT per client (targeted phase).
    pub jwt: Option<(String, String)>,
}

/// The worker processes of a run.
pub struct Pool {
    workers: Vec<Worker>,
    per_worker: usize,
    src_ips: Vec<Ipv4Addr>,
    conn_counter: u64,
}

impl Pool {
    /// Spawns `n` workers that each hold at most `per_worker` sockets.
    pub async fn spawn(n: usize, per_worker: usize, epoch_ns: u64, src_ips: Vec<Ipv4Addr>) -> Result<Self> {
        let exe = std::env::current_exe().context("locating own executable")?;
        let mut workers = Vec::with_capacity(n);
        for _ in 0..n {
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .arg("--epoch-ns")
                .arg(epoch_ns.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("spawning worker")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            workers.push(Worker { child, stdin, lines: BufReader::new(stdout).lines(), load: 0 });
        }
        Ok(Self { workers, per_worker, src_ips, conn_counter: 0 })
    }

    /// Number of worker processes.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Sockets the pool can hold in total.
    pub fn capacity(&self) -> usize {
        self.workers.len() * self.per_worker
    }

    /// Splits `count` sockets over the workers with free capacity; returns (worker index, share).
    fn plan(&self, count: usize) -> Result<Vec<(usize, usize)>> {
        let free: Vec<usize> = self.workers.iter().map(|w| self.per_worker.saturating_sub(w.load)).collect();
        if free.iter().sum::<usize>() < count {
            bail!("{count} sockets exceed the workers' free capacity ({})", free.iter().sum::<usize>());
        }
        // Spread evenly: each worker gets its share of what is left, capped by its free room.
        let mut plan = Vec::new();
        let mut left = count;
        let mut order: Vec<usize> = (0..self.workers.len()).collect();
        order.sort_by_key(|i| free[*i]);
        for (k, i) in order.iter().enumerate() {
            let remaining_workers = order.len() - k;
            let share = left.div_ceil(remaining_workers).min(free[*i]);
            if share > 0 {
                plan.push((*i, share));
                left -= share;
            }
        }
        Ok(plan)
    }

    async fn call_each(&mut self, cmds: Vec<(usize, Command)>) -> Result<Vec<(usize, Reply)>> {
        let mut futs = Vec::new();
        let mut cmds = cmds.into_iter().peekable();
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Some((_, cmd)) = cmds.next_if(|(j, _)| *j == i) {
                futs.push(async move { w.call(&cmd).await.map(|r| (i, r)) });
            }
        }
        futures_util::future::join_all(futs).await.into_iter().collect()
    }

    async fn call_all(&mut self, cmd: Command) -> Result<Vec<Reply>> {
        let cmds = (0..self.workers.len()).map(|i| (i, cmd.clone())).collect();
        Ok(self.call_each(cmds).await?.into_iter().map(|(_, r)| r).collect())
    }

    /// Opens WebSocket clients across the workers, concurrently in every worker.
    pub async fn connect(&mut self, req: &ConnectRequest) -> Result<ConnectOutcome> {
        let mut plan = self.plan(req.count)?;
        plan.sort_by_key(|(i, _)| *i);
        let mut first_user = 0u64;
        let mut cmds = Vec::new();
        for (i, share) in plan {
            let jwt = req.jwt.as_ref().map(|(secret, prefix)| JwtSpec {
                secret: secret.clone(),
                user_prefix: prefix.clone(),
                first_user,
            });
            cmds.push((
                i,
                Command::Connect(ConnectSpec {
                    addr: req.addr,
                    path: req.path.clone(),
                    count: share,
                    first_conn: self.conn_counter,
                    src_ips: self.src_ips.clone(),
                    concurrency: req.concurrency,
                    timeout_ms: req.timeout_ms,
                    jwt,
                }),
            ));
            first_user += share as u64;
            self.conn_counter += share as u64;
        }
        let mut out = ConnectOutcome::default();
        for (i, r) in self.call_each(cmds).await? {
            self.workers[i].load += r.connected as usize;
            out.connected += r.connected;
            out.failed += r.failed;
            out.failures.extend(r.failures);
        }
        out.failures.truncate(5);
        Ok(out)
    }

    /// Opens plain TCP sockets to the probe server across the workers.
    pub async fn probe_connect(&mut self, addr: SocketAddr, count: usize) -> Result<ConnectOutcome> {
        let mut plan = self.plan(count)?;
        plan.sort_by_key(|(i, _)| *i);
        let mut cmds = Vec::new();
        for (i, share) in plan {
            cmds.push((
                i,
                Command::ProbeConnect(ProbeSpec {
                    addr,
                    count: share,
                    first_conn: self.conn_counter,
                    src_ips: self.src_ips.clone(),
                }),
            ));
            self.conn_counter += share as u64;
        }
        let mut out = ConnectOutcome::default();
        for (i, r) in self.call_each(cmds).await? {
            self.workers[i].load += r.connected as usize;
            out.connected += r.connected;
            out.failed += r.failed;
            out.failures.extend(r.failures);
        }
        out.failures.truncate(5);
        Ok(out)
    }

    /// Current counters summed over the workers.
    pub async fn totals(&mut self) -> Result<Totals> {
        let mut t = Totals::default();
        for r in self.call_all(Command::Stats).await? {
            t.add(&r.stats);
        }
        Ok(t)
    }

    /// Counters and merged latency histogram; resets both in every worker.
    pub async fn take_latency(&mut self) -> Result<(Totals, Histogram)> {
        let mut t = Totals::default();
        let mut h = Histogram::default();
        for r in self.call_all(Command::TakeLatency).await? {
            t.add(&r.stats);
            if let Some(s) = &r.hist {
                h.merge_sparse(s);
            }
        }
        Ok((t, h))
    }

    /// Closes every client and probe socket.
    pub async fn close_all(&mut self) -> Result<()> {
        self.call_all(Command::CloseAll).await?;
        for w in &mut self.workers {
            w.load = 0;
        }
        Ok(())
    }

    /// Tells every worker to exit and waits for them.
    pub async fn shutdown(mut self) -> Result<()> {
        let _ = self.call_all(Command::Exit).await;
        for w in &mut self.workers {
            let _ = w.child.wait().await;
        }
        Ok(())
    }
}

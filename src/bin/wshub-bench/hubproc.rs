//! Starting and stopping the hub under test (pinned to a core with `taskset`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Which hub implementation a target is; decides its command line and its capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HubKind {
    /// This project's hub.
    Wshub,
    /// The reference Go hub (broadcast only, no JWT, no batches).
    Go,
}

impl HubKind {
    /// Short name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            HubKind::Wshub => "wshub",
            HubKind::Go => "go",
        }
    }
}

/// A hub the bench talks to: spawned by it (killed on drop) or external.
pub struct Hub {
    /// Implementation.
    pub kind: HubKind,
    /// Listening address.
    pub addr: SocketAddr,
    /// Process id, for `/proc` statistics.
    pub pid: u32,
    child: Option<Child>,
}

/// How to spawn a hub.
#[derive(Clone, Debug)]
pub struct HubSpec {
    /// Implementation.
    pub kind: HubKind,
    /// Executable.
    pub bin: PathBuf,
    /// Extra arguments.
    pub args: Vec<String>,
    /// Core to pin it to (`taskset -c`), if any.
    pub core: Option<usize>,
    /// File that receives its stdout and stderr.
    pub log: PathBuf,
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Hub {
    /// Starts a hub and waits until it accepts connections.
    pub fn spawn(spec: &HubSpec) -> Result<Self> {
        if !Path::new(&spec.bin).exists() {
            bail!("hub binary {} not found", spec.bin.display());
        }
        let port = free_port()?;
        let addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = match spec.core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&spec.bin);
                c
            }
            None => Command::new(&spec.bin),
        };
        match spec.kind {
            HubKind::Wshub => cmd.arg("--addr").arg(addr.to_string()),
            HubKind::Go => cmd.arg("-addr").arg(addr.to_string()),
        };
        cmd.args(&spec.args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "warn");
        }
        if let Some(dir) = spec.log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let log = std::fs::File::create(&spec.log).with_context(|| format!("creating {}", spec.log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("dup log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", spec.bin.display()))?;
        let pid = child.id();
        let mut hub = Hub { kind: spec.kind, addr, pid, child: Some(child) };
        hub.wait_listening(Duration::from_secs(20))
            .with_context(|| format!("{} did not start (log: {})", spec.bin.display(), spec.log.display()))?;
        Ok(hub)
    }

    /// A hub started by someone else.
    pub fn external(kind: HubKind, addr: SocketAddr, pid: u32) -> Self {
        Hub { kind, addr, pid, child: None }
    }

    fn wait_listening(&mut self, limit: Duration) -> Result<()> {
        let addr = self.addr;
        let listening = || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        wait_until_ready(self.child.as_mut(), "hub", limit, listening).with_context(|| format!("hub on {addr}"))
    }

    /// Stops the hub if the bench started it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `ready` until it holds, failing if the child process exits or `limit` passes first.
pub fn wait_until_ready(
    mut child: Option<&mut Child>,
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(child) = child.as_deref_mut()
            && let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))?
        {
            bail!("{what} exited with {status}");
        }
        if start.elapsed() > limit {
            bail!("{what} not ready after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop();
    }
}

//! The Redis server of the cluster phase: started on a free loopback port without persistence
//! (pinned like the hubs), killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::hubproc::wait_until_ready;

/// A `redis-server` the bench started.
pub struct RedisServer {
    /// Listening address.
    pub addr: SocketAddr,
    /// Process id, for `/proc` statistics.
    pub pid: u32,
    child: Option<Child>,
}

/// Resolves `bin` like a shell would: a path as is, a bare name through `$PATH`.
pub fn locate(bin: &Path) -> Option<PathBuf> {
    if bin.components().count() > 1 {
        return bin.is_file().then(|| bin.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(bin)).find(|p| p.is_file())
}

impl RedisServer {
    /// Starts `bin` on a free port (pinned to `core` with `taskset` if given), output to `log`,
    /// and waits until it answers `PING`.
    pub fn spawn(bin: &Path, core: Option<usize>, log: &Path) -> Result<Self> {
        let Some(bin) = locate(bin) else {
            bail!("{} not found (install Redis or pass --redis-bin): the cluster phase needs it", bin.display());
        };
        let port = TcpListener::bind("127.0.0.1:0").context("finding a free port")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = match core {
            Some(core) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(core.to_string()).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("dup log")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut redis = RedisServer { addr, pid: child.id(), child: Some(child) };
        redis
            .wait_ready(Duration::from_secs(10))
            .with_context(|| format!("{} did not start (log: {})", bin.display(), log.display()))?;
        Ok(redis)
    }

    /// `redis://` URL of database 0.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let addr = self.addr;
        wait_until_ready(self.child.as_mut(), "redis-server", limit, || ping(addr).unwrap_or(false))
            .with_context(|| format!("redis-server answering PING on {addr}"))
    }

    /// Stops the server.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `PING`; true when the answer is `+PONG`.
fn ping(addr: SocketAddr) -> Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf)?;
    Ok(buf[..n].starts_with(b"+PONG"))
}

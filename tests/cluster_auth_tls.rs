//! Cluster mode on a Redis that wants a password, and on a Redis reached over TLS (`rediss://`).
//! Real `redis-server` processes started by the test (Debian's build has TLS compiled in), a
//! throwaway CA and server certificate made with the `openssl` CLI, and wshub nodes run as child
//! processes of the real binary. See docs/CLUSTER.md, "Authentication and TLS".

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ChildHub, Client, TempDir, free_port, post_json};
use serde_json::{Value, json};

const PASSWORD: &str = "s3cret";
/// Longest wait for a redis-server to start or a wshub to give up on a Redis.
const SLOW_WAIT: Duration = Duration::from_secs(20);

/// A `redis-server` with extra arguments (password, TLS), logging to a file in `dir`; waits
/// until the log says it is ready. Killed on drop. Panics, never skips, when it cannot start.
struct Redis {
    child: Child,
}

impl Redis {
    fn start(dir: &TempDir, args: &[&str]) -> Self {
        let log = dir.file("redis.log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: these tests need a real Redis. Install Debian's \
                 `redis-server` package (sudo apt-get install redis-server; scripts/test.sh installs it)"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let deadline = Instant::now() + SLOW_WAIT;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                return Self { child };
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut stderr = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                }
                let out = format!("{text}{stderr}");
                // A build without TLS does not know the `tls-*` directives at all.
                if args.iter().any(|a| a.starts_with("--tls")) && out.contains("Bad directive") && out.contains("tls-")
                {
                    panic!(
                        "this redis-server was built without TLS support: it refused the tls-* options \
                         ({status}). The TLS test needs a redis-server built with TLS, such as Debian's \
                         `redis-server` package. Its output:\n{out}"
                    );
                }
                panic!("redis-server {args:?} exited at start with {status}:\n{out}");
            }
            assert!(Instant::now() < deadline, "redis-server {args:?} not ready within {SLOW_WAIT:?}:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its output on failure.
fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir.path()).stdin(Stdio::null()).output();
    let out = match out {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "the openssl CLI is not on PATH: the TLS test makes its certificates with it. Install \
             Debian's `openssl` package (sudo apt-get install openssl)"
        ),
        Err(e) => panic!("could not run openssl: {e}"),
    };
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes a throwaway CA (`ca.crt`) and a server certificate for 127.0.0.1 signed by it
/// (`server.crt`, `server.key`) in `dir`, valid for a day.
fn make_certs(dir: &TempDir) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca = [&["req", "-x509"][..], &ec, &["-keyout", "ca.key", "-out", "ca.crt", "-days", "1"]].concat();
    openssl(dir, &[&ca[..], &["-subj", "/CN=wshub test CA"]].concat());
    let csr = [&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]].concat();
    openssl(dir, &csr);
    std::fs::write(dir.file("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("write ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "server.ext",
        ],
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Starts a wshub node on `redis_url`.
async fn node(redis_url: &str) -> ChildHub {
    ChildHub::start(&["--redis-url", redis_url, "--node-ttl", "3s"]).await
}

/// Connects an anonymous client to `/ws` of `hub` and reads `hub:connected`.
async fn connect(hub: &ChildHub) -> Client {
    let mut client = Client::connect(&hub.ws_url("/ws")).await;
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "first frame: {hello}");
    client.hello = hello;
    client
}

/// Two nodes on `redis_url`: a broadcast posted to either reaches the clients of both, once.
async fn assert_cross_node_delivery(redis_url: &str) {
    let (a, b) = (node(redis_url).await, node(redis_url).await);
    let health: Value = reqwest::get(a.url("/health")).await.expect("health").json().await.expect("json");
    assert_eq!(health["engine"]["kind"], "redis", "node runs the Redis engine: {health}");
    let (mut on_a, mut on_b) = (connect(&a).await, connect(&b).await);
    for (from, to) in [(&a, "b"), (&b, "a")] {
        let body = json!({"type": "news", "message": format!("for {to}")});
        let (status, answer) = post_json(&from.url("/notify"), &body, &[]).await;
        assert_eq!(status, 200, "POST /notify answered {answer}");
        assert_eq!(answer["nodes"], 2, "both nodes listen to broadcast: {answer}");
        for (name, client) in [("client on a", &mut on_a), ("client on b", &mut on_b)] {
            let event = client.next_event().await;
            assert_eq!(event["id"], answer["id"], "{name} got {event}");
            assert_eq!(event["message"], body["message"], "{name} got {event}");
        }
    }
    on_a.assert_no_event().await;
    on_b.assert_no_event().await;
}

/// Runs wshub on `redis_url`, expecting it to give up at startup: returns its stderr.
async fn startup_failure(redis_url: &str) -> String {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--addr", &addr, "--redis-url", redis_url])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wshub");
    let deadline = Instant::now() + SLOW_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wshub on {redis_url} was expected to exit at startup, but still runs after {SLOW_WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    assert!(!status.success(), "wshub on {redis_url} exited with {status}, expected a failure; stderr:\n{stderr}");
    assert!(stderr.to_lowercase().contains("redis"), "the error should name Redis; stderr:\n{stderr}");
    stderr
}

#[tokio::test]
async fn password_in_the_url_links_nodes_and_a_wrong_password_stops_wshub_at_startup() {
    let dir = TempDir::new("redis-auth");
    let port = free_port();
    let _redis = Redis::start(&dir, &["--port", &port.to_string(), "--requirepass", PASSWORD]);

    assert_cross_node_delivery(&format!("redis://:{PASSWORD}@127.0.0.1:{port}/0")).await;

    let wrong = startup_failure(&format!("redis://:wrong-pass@127.0.0.1:{port}/0")).await;
    assert!(!wrong.contains("wrong-pass"), "the error must not print the password; stderr:\n{wrong}");
    let lower = wrong.to_lowercase();
    assert!(
        lower.contains("wrongpass") || lower.contains("auth") || lower.contains("password"),
        "the error should say the password was refused; stderr:\n{wrong}"
    );
    startup_failure(&format!("redis://127.0.0.1:{port}/0")).await;
}

#[tokio::test]
async fn rediss_url_links_nodes_over_tls_and_a_self_signed_server_needs_insecure() {
    let dir = TempDir::new("redis-tls");
    make_certs(&dir);
    let tls_port = free_port().to_string();
    let (cert, key, ca) = (dir.file("server.crt"), dir.file("server.key"), dir.file("ca.crt"));
    let _redis = Redis::start(
        &dir,
        &[
            "--port",
            "0",
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            path_str(&cert),
            "--tls-key-file",
            path_str(&key),
            "--tls-ca-cert-file",
            path_str(&ca),
            "--tls-auth-clients",
            "no",
        ],
    );

    // The server has no plain-text port: every byte goes over TLS.
    assert_cross_node_delivery(&format!("rediss://127.0.0.1:{tls_port}/#insecure")).await;

    // Without `#insecure` the certificate is verified, and a CA nobody trusts is refused.
    let refused = startup_failure(&format!("rediss://127.0.0.1:{tls_port}/0")).await;
    assert!(refused.contains("certificate"), "the error should say the certificate was refused; stderr:\n{refused}");
}

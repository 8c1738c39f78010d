//! Shared helpers for integration tests: start a real hub on 127.0.0.1:0 (in-process, or as a
//! child process), WebSocket clients that await frames with a deadline, and HTTP helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use wshub::config::Config;

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long a test waits to be fairly sure something does not happen.
pub const QUIET: Duration = Duration::from_millis(300);

/// A hub running in this process.
pub struct TestHub {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), wshub::Error>>,
}

impl TestHub {
    /// Starts a hub with extra command-line flags on a free loopback port.
    pub async fn start(flags: &[&str]) -> Self {
        let mut args = vec!["wshub", "--addr", "127.0.0.1:0"];
        args.extend_from_slice(flags);
        let config = Config::parse_from(args).finish().expect("valid test config");
        let listener = tokio::net::TcpListener::bind(config.addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(wshub::run(listener, config, shutdown.clone()));
        Self { addr, shutdown, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// Connects a client to `/ws` and reads its `hub:connected` frame.
    pub async fn client(&self) -> Client {
        self.client_at("/ws").await
    }

    /// Connects to a path such as `/ws?token=...` and reads `hub:connected`.
    pub async fn client_at(&self, path: &str) -> Client {
        let mut client = Client::connect(&self.ws_url(path)).await;
        let hello = client.next_json().await;
        assert_eq!(hello["type"], "hub:connected", "first frame: {hello}");
        client.hello = hello;
        client
    }

    /// Posts a notification body to `/notify` from loopback.
    pub async fn notify(&self, body: Value) -> (u16, Value) {
        post_json(&self.url("/notify"), &body, &[]).await
    }

    /// Stops the hub and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.task).await;
    }
}

/// A hub running as a child process of the real binary.
pub struct ChildHub {
    pub addr: SocketAddr,
    pub child: Child,
}

impl ChildHub {
    /// Starts `target/.../wshub` on a free port with extra flags; waits for `/health`.
    pub async fn start(flags: &[&str]) -> Self {
        let port = free_port();
        Self::start_on(port, flags).await
    }

    /// Starts it on a given port (to restart a hub where clients expect it).
    pub async fn start_on(port: u16, flags: &[&str]) -> Self {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let child = Command::new(env!("CARGO_BIN_EXE_wshub"))
            .arg("--addr")
            .arg(addr.to_string())
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wshub");
        let hub = Self { addr, child };
        hub.wait_healthy().await;
        hub
    }

    async fn wait_healthy(&self) {
        let url = format!("http://{}/health", self.addr);
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::time::Instant::now() < deadline {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("wshub at {} did not become healthy", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    /// Sends a signal (e.g. "TERM", "KILL") to the process.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit and returns whether it exited successfully.
    pub async fn wait_exit(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.success();
            }
            assert!(tokio::time::Instant::now() < deadline, "wshub did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A WebSocket test client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub hello: Value,
}

/// How a connection ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16),
    ClosedWithoutCode,
    Dropped,
}

impl Client {
    /// Connects without reading anything.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("websocket connect");
        Self { ws, hello: Value::Null }
    }

    /// The next text frame as JSON, failing the test after [`WAIT`].
    pub async fn next_json(&mut self) -> Value {
        match tokio::time::timeout(WAIT, self.next_text()).await {
            Ok(Some(text)) => serde_json::from_str(&text).expect("frame is JSON"),
            Ok(None) => panic!("connection ended while waiting for a frame"),
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    async fn next_text(&mut self) -> Option<String> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(t)) => return Some(t.to_string()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next notification, skipping `hub:*` control frames.
    pub async fn next_event(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if !v["type"].as_str().unwrap_or("").starts_with("hub:") {
                return v;
            }
        }
    }

    /// The next frame of a given `type`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Asserts that no notification arrives within [`QUIET`].
    pub async fn assert_no_event(&mut self) {
        if let Ok(Some(text)) = tokio::time::timeout(QUIET, self.next_text()).await {
            let v: Value = serde_json::from_str(&text).expect("json");
            assert!(v["type"].as_str().unwrap_or("").starts_with("hub:"), "unexpected frame: {v}");
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.to_string().into())).await.expect("send");
    }

    /// Sends `subscribe` and returns the answer (`hub:subscribed` or `hub:error`).
    pub async fn subscribe(&mut self, channel: &str) -> Value {
        self.send_json(json!({"type": "subscribe", "channel": channel})).await;
        self.next_reply().await
    }

    /// The next control frame that answers a request (skips notifications).
    pub async fn next_reply(&mut self) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"].as_str().unwrap_or("").starts_with("hub:") {
                return v;
            }
        }
    }

    /// Reads until the connection ends and reports how.
    pub async fn ended(&mut self) -> Ended {
        let read = async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Close(Some(frame)))) => {
                        return Ended::Closed(u16::from(frame.code));
                    }
                    Some(Ok(Message::Close(None))) => return Ended::ClosedWithoutCode,
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Ended::Dropped,
                }
            }
        };
        tokio::time::timeout(WAIT, read).await.expect("connection did not end in time")
    }
}

/// The numeric value of a close code, for readable assertions.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// POSTs JSON with extra headers and returns status and JSON body.
pub async fn post_json(url: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("http request");
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

/// GETs JSON and returns status and body.
pub async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("http request");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// An HS256 token for tests.
pub fn token(secret: &str, sub: &str, roles: &[&str], ttl_s: i64) -> String {
    token_with(secret, json!({"sub": sub, "roles": roles}), ttl_s)
}

/// An HS256 token with arbitrary claims plus `exp = now + ttl_s`.
pub fn token_with(secret: &str, mut claims: Value, ttl_s: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    claims["exp"] = json!(now + ttl_s);
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("encode token")
}

// ---- Helpers for identity and channel tests (tests/channels_auth.rs) ----

impl Client {
    /// Connects with extra request headers (e.g. `Authorization: Bearer <jwt>`), reading nothing.
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> Self {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
        let mut request = url.into_client_request().expect("websocket request");
        for (name, value) in headers {
            request.headers_mut().insert(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await.expect("websocket connect");
        Self { ws, hello: Value::Null }
    }

    /// Sends `ping` and expects `hub:pong`: the connection is up and answering.
    pub async fn assert_alive(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        let pong = self.next_reply().await;
        assert_eq!(pong["type"], "hub:pong", "expected hub:pong, got {pong}");
    }
}

/// Unpadded base64url, as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

/// A JWT built by hand with header `{"alg":"none"}` and an empty signature (claims get
/// `exp = now + ttl_s`). Must never be accepted.
pub fn unsigned_token(mut claims: Value, ttl_s: i64) -> String {
    claims["exp"] = json!(unix_now() + ttl_s);
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let body = base64url(claims.to_string().as_bytes());
    format!("{header}.{body}.")
}

/// A token with claims plus `exp = now + ttl_s`, signed with any algorithm and key.
pub fn token_signed(
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    mut claims: Value,
    ttl_s: i64,
) -> String {
    claims["exp"] = json!(unix_now() + ttl_s);
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).expect("encode token")
}

// ---- A real redis-server for cluster tests (tests/cluster.rs) ----

/// A `redis-server` of our own on a free loopback port, without persistence. Killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers PING. Panics (never skips)
    /// when `redis-server` is not installed.
    pub fn start() -> Self {
        let mut server = Self { port: free_port(), child: None };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server with SIGKILL (its data is gone: no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a fresh, empty server on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH: the cluster tests need a real Redis. Install Debian's \
                 `redis-server` package (sudo apt-get install redis-server; scripts/test.sh installs it)"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if self.answers_ping() {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("redis-server on port {} exited at start: {status}", self.port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer PING within {WAIT:?}", self.port);
    }

    /// True when the server answers `PING` with `+PONG` (raw RESP over TCP).
    pub fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        let mut got = 0;
        while got < 7 {
            match stream.read(&mut buf[got..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        buf[..got].starts_with(b"+PONG")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Performs a WebSocket handshake on a raw TCP socket and then never reads again.
pub async fn never_reading_client(hub: &TestHub) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(hub.addr).await.expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        hub.addr
    );
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.expect("handshake");
    let mut buf = [0u8; 1024];
    let n = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"), "upgrade refused");
    s
}

/// A scratch directory under the system temp dir, removed when dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
        let dir = std::env::temp_dir().join(format!("wshub-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    /// The directory as a string, for command-line flags.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }

    /// A file inside the directory.
    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

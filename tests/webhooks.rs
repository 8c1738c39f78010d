//! Issue 13: signed webhooks (presence, channel, client publish, unread fallback), delivery
//! that survives a dead backend and a restart, `GET /presence/users`, and `exclude_client`.
//! A real hub and a real receiver that verifies every signature with the Standard Webhooks
//! algorithm (the `standardwebhooks` crate) and rejects anything it cannot verify.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const JWT: &str = "webhook-test-jwt-secret";
/// A secret in the Standard Webhooks form.
const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// A grace short enough for end-to-end tests (the default 5 s is tested with paused time in
/// `webhook::presence`); a reconnect on loopback takes milliseconds.
const GRACE: &str = "2s";
/// [`GRACE`] as a duration.
const GRACE_TIME: Duration = Duration::from_secs(2);

/// One verified hook as the receiver accepted it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    kind: String,
    data: Value,
}

/// A webhook endpoint on a free port: verifies each request, answers 503 while `down`.
struct Receiver {
    addr: SocketAddr,
    hooks: mpsc::UnboundedReceiver<Received>,
    rejected: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

#[derive(Clone)]
struct ReceiverState {
    verifier: Arc<standardwebhooks::Webhook>,
    hooks: mpsc::UnboundedSender<Received>,
    rejected: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

async fn receive(State(s): State<ReceiverState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if s.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if s.verifier.verify(&body, &headers).is_err() {
        s.rejected.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let v: Value = serde_json::from_slice(&body).expect("hook body is JSON");
    assert!(v["timestamp"].is_string(), "body has a timestamp: {v}");
    let id = headers["webhook-id"].to_str().expect("id").to_string();
    let _ = s.hooks.send(Received { id, kind: v["type"].as_str().expect("type").to_string(), data: v["data"].clone() });
    StatusCode::NO_CONTENT
}

impl Receiver {
    async fn start(secret: &str) -> Self {
        let (tx, hooks) = mpsc::unbounded_channel();
        let state = ReceiverState {
            verifier: Arc::new(standardwebhooks::Webhook::new(secret).expect("secret")),
            hooks: tx,
            rejected: Arc::default(),
            down: Arc::default(),
        };
        let (rejected, down) = (Arc::clone(&state.rejected), Arc::clone(&state.down));
        let app = axum::Router::new().route("/hooks", post(receive)).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, hooks, rejected, down }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    /// The next verified hook.
    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.hooks.recv()).await.expect("a hook in time").expect("receiver runs")
    }

    /// The next hook, which must be of `kind`.
    async fn expect(&mut self, kind: &str) -> Received {
        let hook = self.next().await;
        assert_eq!(hook.kind, kind, "unexpected hook {hook:?}");
        hook
    }
}

async fn hub_for(receiver: &Receiver, extra: &[&str]) -> TestHub {
    let url = receiver.url();
    let mut flags =
        vec!["--jwt-secret", JWT, "--webhook-url", &url, "--webhook-secret", SECRET, "--offline-grace", GRACE];
    flags.extend_from_slice(extra);
    TestHub::start(&flags).await
}

async fn user(hub: &TestHub, id: &str) -> Client {
    hub.client_at(&format!("/ws?token={}", token(JWT, id, &[], 600))).await
}

/// A metric's value from `/metrics`.
async fn metric(hub: &TestHub, name: &str) -> f64 {
    let text = reqwest::get(hub.url("/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// Waits until at least `n` hooks are owed.
async fn wait_queued(hub: &TestHub, n: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(hub, "wshub_webhooks_queued").await < n {
        assert!(tokio::time::Instant::now() < deadline, "{n} hooks were not queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn presence_hooks_are_signed_debounced_and_alternate() {
    let mut rx = Receiver::start(SECRET).await;
    let hub = hub_for(&rx, &[]).await;
    let mut first = user(&hub, "ann").await;
    let online = rx.expect("user.online").await;
    assert_eq!(online.data, json!({"user": "ann", "connections": 1}));
    assert!(online.id.starts_with("msg_"));

    // A second tab, a reload and a quick reconnect: no hook while ann always comes back in time.
    let second = user(&hub, "ann").await;
    drop(second);
    first.ws.close(None).await.expect("close");
    let mut again = user(&hub, "ann").await;
    tokio::time::sleep(GRACE_TIME + Duration::from_millis(500)).await;
    assert!(rx.hooks.try_recv().is_err(), "a reconnect within the grace sends nothing");
    let (status, users) = get_json(&hub.url("/presence/users"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(users["users"][0]["user"], "ann", "{users}");

    // A real disconnect: exactly one offline, after the grace, then online again on return.
    again.ws.close(None).await.expect("close");
    let offline = rx.expect("user.offline").await;
    assert_eq!(offline.data["user"], "ann");
    assert!(offline.data["last_seen"].is_string());
    let (_, users) = get_json(&hub.url("/presence/users"), &[]).await;
    assert_eq!(users, json!({"count": 0, "users": []}));
    let _back = user(&hub, "ann").await;
    assert_eq!(rx.expect("user.online").await.data["user"], "ann");
    assert_eq!(rx.rejected.load(Ordering::SeqCst), 0);
    assert!(metric(&hub, "wshub_webhooks_sent_total").await >= 3.0);
    hub.stop().await;
}

#[tokio::test]
async fn channel_hooks_client_publish_forwarding_and_unread_fallback() {
    let dir = TempDir::new("hooks-ns");
    let ns = dir.file("ns.toml");
    std::fs::write(&ns, "[[namespace]]\nprefix = \"room:\"\npublish = true\nforward = true\n").expect("write");
    let mut rx = Receiver::start(SECRET).await;
    let hub = hub_for(&rx, &["--config", ns.to_str().expect("path")]).await;
    let mut bob = user(&hub, "bob").await;
    rx.expect("user.online").await;
    assert_eq!(bob.subscribe("room:1").await["type"], "hub:subscribed");
    assert_eq!(rx.expect("channel.occupied").await.data, json!({"channel": "room:1"}));

    bob.send_json(json!({"type": "publish", "channel": "room:1", "event": "typing", "data": {"x": 1}})).await;
    let published = bob.next_of("hub:published").await;
    let forwarded = rx.expect("client.published").await.data;
    assert_eq!(forwarded["channel"], "room:1");
    assert_eq!(forwarded["user"], "bob");
    assert_eq!(forwarded["client_id"], bob.hello["client_id"]);
    assert_eq!(forwarded["type"], "typing");
    assert_eq!(forwarded["data"], json!({"x": 1}));
    assert_eq!(forwarded["id"], published["id"]);

    let (status, answer) =
        hub.notify(json!({"type": "invoice", "message": "paid", "user": ["bob", "cy"], "fallback": "webhook"})).await;
    assert_eq!(status, 200, "{answer}");
    let mut unread = [rx.expect("notification.unread").await.data, rx.expect("notification.unread").await.data];
    unread.sort_by_key(|d| d["user"].as_str().map(str::to_string));
    assert_eq!(unread[0]["user"], "bob");
    assert_eq!(unread[1]["user"], "cy");
    assert_eq!(unread[0]["notification"]["id"], answer["id"]);
    assert_eq!(unread[0]["notification"]["type"], "invoice");
    assert_eq!(unread[0]["notification"]["message"], "paid");

    bob.send_json(json!({"type": "unsubscribe", "channel": "room:1"})).await;
    assert_eq!(rx.expect("channel.vacated").await.data, json!({"channel": "room:1"}));
    hub.stop().await;
}

#[tokio::test]
async fn fallback_without_webhooks_is_a_clear_error() {
    let hub = TestHub::start(&[]).await;
    let (status, body) = hub.notify(json!({"type": "t", "user": "1", "fallback": "webhook"})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap_or("").contains("--webhook-url"), "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn a_wrong_secret_is_rejected_by_the_receiver_and_retried() {
    let mut rx = Receiver::start("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").await;
    let hub = hub_for(&rx, &[]).await;
    let _dan = user(&hub, "dan").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.rejected.load(Ordering::SeqCst) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the receiver saw no signed attempts");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rx.hooks.try_recv().is_err(), "nothing verifies with the wrong secret");
    assert!(metric(&hub, "wshub_webhooks_retried_total").await >= 1.0);
    assert_eq!(metric(&hub, "wshub_webhooks_queued").await, 1.0);
    hub.stop().await;
}

#[tokio::test]
async fn hooks_owed_while_the_receiver_is_down_arrive_once_when_it_returns() {
    let mut rx = Receiver::start(SECRET).await;
    rx.down.store(true, Ordering::SeqCst);
    let hub = hub_for(&rx, &[]).await;
    let mut clients = Vec::new();
    for name in ["u1", "u2", "u3"] {
        clients.push(user(&hub, name).await);
    }
    drop(clients.pop());
    let (status, _) = hub.notify(json!({"type": "t", "user": "u1", "fallback": "webhook"})).await;
    assert_eq!(status, 200);
    // 3 online, 1 offline (after the grace) and 1 unread are owed; the head is being retried.
    wait_queued(&hub, 5.0).await;
    assert!(metric(&hub, "wshub_webhooks_retried_total").await >= 1.0);
    rx.down.store(false, Ordering::SeqCst);
    let mut kinds = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let hook = rx.next().await;
        assert!(ids.insert(hook.id.clone()), "webhook-id {} delivered twice", hook.id);
        kinds.push(hook.kind);
    }
    assert_eq!(kinds.iter().filter(|k| *k == "user.online").count(), 3, "{kinds:?}");
    assert!(kinds.contains(&"user.offline".to_string()) && kinds.contains(&"notification.unread".to_string()));
    tokio::time::sleep(QUIET).await;
    assert!(rx.hooks.try_recv().is_err(), "nothing delivered twice");
    assert_eq!(metric(&hub, "wshub_webhooks_queued").await, 0.0);
    hub.stop().await;
}

#[tokio::test]
async fn owed_hooks_survive_a_restart_with_data_dir() {
    let dir = TempDir::new("hooks-restart");
    let mut rx = Receiver::start(SECRET).await;
    rx.down.store(true, Ordering::SeqCst);
    let hub = hub_for(&rx, &["--data-dir", dir.path()]).await;
    let eve = user(&hub, "eve").await;
    let (status, answer) = hub.notify(json!({"type": "t", "user": "eve", "fallback": "webhook"})).await;
    assert_eq!(status, 200);
    wait_queued(&hub, 2.0).await;
    drop(eve);
    hub.stop().await;

    // Restarted with the receiver back: the owed hooks arrive with their ids; eve, announced
    // online before the restart and not back within the grace, gets exactly one offline.
    rx.down.store(false, Ordering::SeqCst);
    let hub = hub_for(&rx, &["--data-dir", dir.path()]).await;
    let online = rx.expect("user.online").await;
    let unread = rx.expect("notification.unread").await;
    assert_eq!(unread.data["notification"]["id"], answer["id"]);
    let offline = rx.expect("user.offline").await;
    assert_eq!(offline.data["user"], "eve");
    assert_ne!(online.id, unread.id);
    tokio::time::sleep(QUIET).await;
    assert!(rx.hooks.try_recv().is_err(), "each owed hook once");
    hub.stop().await;
}

#[tokio::test]
async fn exclude_client_skips_only_that_connection() {
    let hub = TestHub::start(&[]).await;
    let mut sender = hub.client().await;
    let mut other = hub.client().await;
    let client_id = sender.hello["client_id"].as_str().expect("client_id").to_string();
    let (status, _) = hub.notify(json!({"type": "mine", "exclude_client": client_id})).await;
    assert_eq!(status, 200);
    let (status, _) =
        hub.notify(json!([{"type": "batch-mine", "exclude_client": client_id}, {"type": "for-all"}])).await;
    assert_eq!(status, 200);
    assert_eq!(other.next_event().await["type"], "mine");
    assert_eq!(other.next_event().await["type"], "batch-mine");
    assert_eq!(other.next_event().await["type"], "for-all");
    assert_eq!(sender.next_event().await["type"], "for-all", "the excluded events never reach the sender");

    let (status, body) = hub.notify(json!({"type": "t", "exclude_client": ["x"]})).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap_or("").contains("exclude_client"), "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn webhook_flags_are_checked_at_startup() {
    use clap::Parser;
    use wshub::config::{Config, ConfigError};
    let parse = |extra: &[&str]| {
        let mut args = vec!["wshub"];
        args.extend_from_slice(extra);
        Config::parse_from(args).finish()
    };
    assert!(matches!(parse(&["--webhook-url", "http://a/"]), Err(ConfigError::WebhookWithoutSecret)));
    assert!(matches!(
        parse(&["--webhook-url", "ftp://a/", "--webhook-secret", SECRET]),
        Err(ConfigError::BadWebhookUrl { .. })
    ));
    assert!(matches!(
        parse(&["--webhook-url", "http://a/", "--webhook-secret", "short"]),
        Err(ConfigError::WebhookSecret(_))
    ));
    let c = parse(&[]).expect("defaults");
    assert_eq!(c.offline_grace, Duration::from_secs(5));
    assert_eq!(c.webhook_retry_for, Duration::from_secs(3600));
}

/// `--node-ttl` (the presence lease) of the cluster nodes in these tests.
const LEASE: Duration = Duration::from_secs(2);

/// A cluster node (the real binary) sending hooks to `receiver`.
async fn cluster_node(redis: &RedisServer, receiver: &Receiver) -> ChildHub {
    let (redis_url, url) = (redis.url(), receiver.url());
    ChildHub::start(&[
        "--redis-url",
        &redis_url,
        "--node-ttl",
        "2s",
        "--jwt-secret",
        JWT,
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--offline-grace",
        GRACE,
    ])
    .await
}

async fn cluster_user(hub: &ChildHub, id: &str) -> Client {
    let mut client = Client::connect(&hub.ws_url(&format!("/ws?token={}", token(JWT, id, &[], 600)))).await;
    client.hello = client.next_json().await;
    assert_eq!(client.hello["type"], "hub:connected");
    client
}

impl Receiver {
    /// Asserts that no hook arrives for a grace and a lease.
    async fn assert_quiet(&mut self) {
        tokio::time::sleep(GRACE_TIME + LEASE).await;
        assert!(self.hooks.try_recv().is_err(), "unexpected hook");
    }
}

#[tokio::test]
async fn cluster_presence_is_one_online_and_one_offline_across_nodes() {
    let redis = RedisServer::start();
    let mut rx = Receiver::start(SECRET).await;
    let (a, b) = (cluster_node(&redis, &rx).await, cluster_node(&redis, &rx).await);
    let on_a = cluster_user(&a, "xia").await;
    assert_eq!(rx.expect("user.online").await.data, json!({"user": "xia", "connections": 1}));
    let mut on_b = cluster_user(&b, "xia").await;
    drop(on_a);
    rx.assert_quiet().await;
    let (_, users) = get_json(&a.url("/presence/users"), &[]).await;
    assert_eq!(users["users"], json!([{"user": "xia", "connections": 1}]), "cluster-wide, read on the node she left");
    on_b.ws.close(None).await.expect("close");
    assert_eq!(rx.expect("user.offline").await.data["user"], "xia");
    rx.assert_quiet().await;
}

#[tokio::test]
async fn a_killed_nodes_users_get_one_offline_each_from_a_survivor() {
    let redis = RedisServer::start();
    let mut rx = Receiver::start(SECRET).await;
    let victim = cluster_node(&redis, &rx).await;
    let survivors = [cluster_node(&redis, &rx).await, cluster_node(&redis, &rx).await];
    let _k1 = cluster_user(&victim, "k1").await;
    let _k2 = cluster_user(&victim, "k2").await;
    let _s = cluster_user(&survivors[0], "s").await;
    let mut online: Vec<String> = Vec::new();
    for _ in 0..3 {
        online.push(rx.expect("user.online").await.data["user"].as_str().expect("user").to_string());
    }
    online.sort();
    assert_eq!(online, ["k1", "k2", "s"]);

    victim.signal("KILL");
    let killed = tokio::time::Instant::now();
    let mut offline: Vec<String> = Vec::new();
    for _ in 0..2 {
        offline.push(rx.expect("user.offline").await.data["user"].as_str().expect("user").to_string());
    }
    offline.sort();
    assert_eq!(offline, ["k1", "k2"]);
    let bound = LEASE + GRACE_TIME + Duration::from_secs(2);
    assert!(killed.elapsed() <= bound, "took {:?}, more than lease + grace + margin", killed.elapsed());
    rx.assert_quiet().await;
    drop(victim);
}

#[tokio::test]
async fn hooks_owed_by_a_killed_node_are_delivered_by_a_survivor() {
    let redis = RedisServer::start();
    let mut rx = Receiver::start(SECRET).await;
    rx.down.store(true, Ordering::SeqCst);
    let victim = cluster_node(&redis, &rx).await;
    let _survivor = cluster_node(&redis, &rx).await;
    let _v = cluster_user(&victim, "vic").await;
    let (status, answer) =
        post_json(&victim.url("/notify"), &json!({"type": "t", "user": "vic", "fallback": "webhook"}), &[]).await;
    assert_eq!(status, 200, "{answer}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while rx.rejected.load(Ordering::SeqCst) == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    victim.signal("KILL");
    rx.down.store(false, Ordering::SeqCst);
    let mut kinds = Vec::new();
    let mut ids = HashSet::new();
    for _ in 0..3 {
        let hook = rx.next().await;
        assert!(ids.insert(hook.id.clone()), "{} twice", hook.id);
        kinds.push(hook.kind);
    }
    kinds.sort();
    assert_eq!(kinds, ["notification.unread", "user.offline", "user.online"]);
    rx.assert_quiet().await;
    drop(victim);
}

#[tokio::test]
async fn exclude_client_works_across_two_nodes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let a = ChildHub::start(&["--redis-url", &url]).await;
    let b = ChildHub::start(&["--redis-url", &url]).await;
    let mut sender = Client::connect(&a.ws_url("/ws")).await;
    let sender_id = sender.next_json().await["client_id"].as_str().expect("client_id").to_string();
    let mut other = Client::connect(&b.ws_url("/ws")).await;
    other.next_json().await;
    let (status, _) = post_json(&b.url("/notify"), &json!({"type": "echo", "exclude_client": sender_id}), &[]).await;
    assert_eq!(status, 200);
    let (status, _) = post_json(&b.url("/notify"), &json!({"type": "after"}), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(other.next_event().await["type"], "echo");
    assert_eq!(sender.next_event().await["type"], "after", "the sender on the other node skipped its echo");
}

#[tokio::test]
async fn a_backend_that_never_answers_delays_no_websocket_delivery() {
    // Accepts connections and never answers: every attempt waits for its 10 s timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hooks", silent.local_addr().expect("addr"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let hub = TestHub::start(&["--jwt-secret", JWT, "--webhook-url", &url, "--webhook-secret", SECRET]).await;
    let mut users = Vec::new();
    for i in 0..20 {
        users.push(user(&hub, &format!("p{i}")).await);
    }
    let (status, _) = hub.notify(json!({"type": "live"})).await;
    assert_eq!(status, 200);
    for client in &mut users {
        assert_eq!(client.next_event().await["type"], "live");
    }
    // The outbox kept taking hooks while its first attempt hangs: all 20 are owed, none lost.
    wait_queued(&hub, 20.0).await;
    assert_eq!(metric(&hub, "wshub_webhooks_failed_total").await, 0.0);
    hub.stop().await;
}

/// The process id of the Redis server on `port` (from `INFO server`, raw RESP).
fn redis_pid(port: u16) -> u32 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect redis");
    stream.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n").expect("send INFO");
    stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("process_id:") || !text[text.find("process_id:").unwrap_or(0)..].contains("\r\n") {
        let n = stream.read(&mut buf).expect("read INFO");
        assert!(n > 0, "redis closed while answering INFO");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let line = text.lines().find_map(|l| l.strip_prefix("process_id:")).expect("process_id");
    line.trim().parse().expect("pid")
}

fn signal(pid: u32, name: &str) {
    let status =
        std::process::Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

#[tokio::test]
async fn a_disconnect_while_redis_is_unreachable_still_gets_its_offline() {
    let redis = RedisServer::start();
    let mut rx = Receiver::start(SECRET).await;
    let node = cluster_node(&redis, &rx).await;
    let mut ola = cluster_user(&node, "ola").await;
    rx.expect("user.online").await;
    let pid = redis_pid(redis.port);
    signal(pid, "STOP");
    ola.ws.close(None).await.expect("close");
    // Longer than a Redis command's timeout: the count cannot be published now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    signal(pid, "CONT");
    assert_eq!(rx.expect("user.offline").await.data["user"], "ola");
}

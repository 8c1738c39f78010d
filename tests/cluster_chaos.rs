//! Fault injection for cluster mode (docs/CLUSTER.md, docs/RELIABILITY.md): three real wshub
//! nodes on one real `redis-server`, publishers on every node (single, batch, targeted, with and
//! without idempotency keys), resuming clients on every node, and faults injected at random from
//! outside: `CLIENT KILL TYPE pubsub`, Redis restarts that keep the data (`SHUTDOWN SAVE`) and one
//! that loses it, `DEBUG SLEEP` stalls longer than the command timeout, node SIGKILLs and restarts,
//! and client reconnects. Then, per client: every accepted event for its streams arrived exactly
//! once, or the client was told to resync (close 4006 or `recovered: false`); every 200 is in
//! history; no idempotency key was delivered twice.
//!
//! Bounded for CI (about 25 s of faults); `WSHUB_CHAOS_SECS=600` (scripts/chaos-cluster.sh) runs
//! it longer, `WSHUB_CHAOS_SEED` replays a schedule.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ChildHub, TempDir, free_port, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "chaos-secret";
const NODES: usize = 3;
const CLIENTS: usize = 9;
const ROOMS: usize = 3;
const HISTORY_SIZE: &str = "300";
/// Longest wait for the cluster to deliver everything once faults stop.
const DRAIN: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift64*), so a failing schedule can be replayed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A `redis-server` with a data directory, so it can restart with its data (`SHUTDOWN SAVE`)
/// or without (SIGKILL, snapshot deleted). DEBUG is enabled for `DEBUG SLEEP`.
struct Redis {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Self {
        let mut redis = Self { port: free_port(), dir: TempDir::new("chaos-redis"), child: None };
        redis.spawn();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", self.dir.path(), "--enable-debug-command", "yes", "--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (the cluster tests need a real Redis)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command(&["PING"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    fn command(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut conn)
    }

    /// Restarts keeping every acknowledged write (a clean shutdown that saves a snapshot).
    fn restart_keeping_data(&mut self) {
        let _ = self.command(&["SHUTDOWN", "SAVE"]);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        self.spawn();
    }

    /// Restarts empty: killed without saving, any older snapshot deleted.
    fn restart_losing_data(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.file("dump.rdb"));
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One event that got a 200.
#[derive(Clone, Debug)]
struct Accepted {
    id: String,
    seq: u64,
    streams: Vec<String>,
    key: Option<String>,
    /// Redis data losses before the publish was sent (events of a lost era are not checked).
    era: u64,
}

/// One stretch of a client's life in which it claims to have every event: from a fresh connect
/// until it is told to resync (or the end).
#[derive(Default, Debug)]
struct Segment {
    era: u64,
    /// Auto streams (`broadcast`, `user:*`): everything after this seq is expected.
    start_auto: u64,
    /// The room: everything after this seq is expected.
    start_room: Option<u64>,
    /// (id, seq, idempotency key, how it came: connection number, label, node).
    received: Vec<(String, u64, Option<String>, String)>,
    resynced: bool,
}

#[derive(Default)]
struct ClientLog {
    segments: Vec<Segment>,
}

struct Shared {
    ports: Vec<u16>,
    accepted: Mutex<Vec<Accepted>>,
    clients: Vec<Mutex<ClientLog>>,
    /// Per client: drop the connection and resume elsewhere.
    bounce: Vec<AtomicBool>,
    era: AtomicU64,
    stop_publishing: AtomicBool,
    stop_clients: AtomicBool,
    publishes_failed: AtomicUsize,
    idempotent_retries: AtomicUsize,
    resyncs: AtomicUsize,
    resumes: AtomicUsize,
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().expect("http client")
}

fn room(k: usize) -> String {
    format!("room-{}", k % ROOMS)
}

/// Publishes until told to stop, through `home` first and any node when it is down.
async fn publisher(shared: Arc<Shared>, p: usize, mut rng: Rng) {
    let http = http();
    let mut n = 0u64;
    while !shared.stop_publishing.load(Ordering::Acquire) {
        n += 1;
        let key = (rng.below(10) < 3).then(|| format!("p{p}-{n}"));
        let count = if rng.below(4) == 0 { 1 + rng.below(3) } else { 1 };
        let mut items = Vec::new();
        let mut streams = Vec::new();
        for i in 0..count {
            // The key of one item of the (possibly batched) publish.
            let data = json!({"p": p, "n": n, "i": i, "key": key.as_ref().map(|k| format!("{k}/{i}"))});
            let (item, item_streams) = match rng.below(3) {
                0 => (json!({"type": "all", "data": data}), vec!["broadcast".to_string()]),
                1 => {
                    let u = rng.below(CLIENTS);
                    (json!({"type": "dm", "user": format!("u{u}"), "data": data}), vec![format!("user:u{u}")])
                }
                _ => {
                    let r = room(rng.below(ROOMS));
                    (json!({"type": "chat", "channel": r, "data": data}), vec![r])
                }
            };
            items.push(item);
            streams.push(item_streams);
        }
        let body = if count == 1 { items[0].clone() } else { Value::Array(items) };
        let started = Instant::now();
        let mut node = p % NODES;
        loop {
            let era = shared.era.load(Ordering::Acquire);
            let url = format!("http://127.0.0.1:{}/notify", shared.ports[node]);
            let mut request = http.post(&url).json(&body);
            if let Some(key) = &key {
                request = request.header("Idempotency-Key", key);
            }
            let answer = match request.send().await {
                Ok(resp) if resp.status().as_u16() == 200 => resp.json::<Value>().await.ok(),
                _ => None,
            };
            if let Some(answer) = answer {
                let answers =
                    if answer.is_array() { answer.as_array().cloned().unwrap_or_default() } else { vec![answer] };
                let now_era = shared.era.load(Ordering::Acquire);
                let mut accepted = shared.accepted.lock().expect("lock");
                for (a, s) in answers.iter().zip(&streams) {
                    accepted.push(Accepted {
                        id: a["id"].as_str().expect("id").to_string(),
                        seq: a["seq"].as_u64().expect("seq"),
                        streams: s.clone(),
                        key: key.clone(),
                        era: if now_era == era { era } else { u64::MAX },
                    });
                }
                break;
            }
            shared.publishes_failed.fetch_add(1, Ordering::Relaxed);
            // Without a key the outcome is unknown (it may be published): move on. With a key,
            // retry until it is answered: the first result if it was published, else a publish.
            if key.is_none() || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            shared.idempotent_retries.fetch_add(1, Ordering::Relaxed);
            node = (node + 1) % NODES;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(15 + rng.below(30) as u64)).await;
    }
}

/// What a connection attempt ended with.
enum Outcome {
    /// Resume where it left off (connection dropped, node down, asked to bounce).
    Resume,
    /// Told to resync: start a fresh segment.
    Resync,
    Stop,
}

/// A client that keeps its streams across any number of reconnects, resuming on any node.
async fn client(shared: Arc<Shared>, k: usize, mut rng: Rng) {
    let jwt = token(SECRET, &format!("u{k}"), &[], 3600);
    let mut node = k % NODES;
    let mut resume: Option<(u64, Option<u64>, String)> = None; // (auto since, room since, epoch)
    let mut conns = 0;
    while !shared.stop_clients.load(Ordering::Acquire) {
        conns += 1;
        match connection(&shared, k, &jwt, node, &mut resume, conns).await {
            Outcome::Stop => return,
            Outcome::Resync => {
                shared.resyncs.fetch_add(1, Ordering::Relaxed);
                if let Some(segment) = shared.clients[k].lock().expect("lock").segments.last_mut() {
                    segment.resynced = true;
                }
                resume = None;
            }
            Outcome::Resume => {}
        }
        node = rng.below(NODES);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connection(
    shared: &Shared,
    k: usize,
    jwt: &str,
    node: usize,
    resume: &mut Option<(u64, Option<u64>, String)>,
    conn: usize,
) -> Outcome {
    let port = shared.ports[node];
    let url = match resume {
        Some((since, _, epoch)) => format!("ws://127.0.0.1:{port}/ws?token={jwt}&since={since}&epoch={epoch}"),
        None => format!("ws://127.0.0.1:{port}/ws?token={jwt}"),
    };
    let Ok(Ok((mut ws, _))) =
        tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(&url)).await
    else {
        return Outcome::Resume;
    };
    let room = room(k);
    let mut hello: Option<Value> = None;
    let log = &shared.clients[k];
    loop {
        if shared.stop_clients.load(Ordering::Acquire) {
            return Outcome::Stop;
        }
        if shared.bounce[k].swap(false, Ordering::AcqRel) {
            return Outcome::Resume;
        }
        let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(text)))) => text,
            Ok(Some(Ok(Message::Close(Some(close))))) if u16::from(close.code) == 4006 => return Outcome::Resync,
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => return Outcome::Resume,
            Ok(Some(Ok(_))) => continue,
        };
        let v: Value = serde_json::from_str(&frame).expect("frame is JSON");
        let kind = v["type"].as_str().unwrap_or("");
        match kind {
            "hub:connected" => {
                let epoch = v["epoch"].as_str().expect("epoch").to_string();
                match resume {
                    Some(_) if v["recovered"] != true => return Outcome::Resync,
                    Some(r) => {
                        shared.resumes.fetch_add(1, Ordering::Relaxed);
                        let body =
                            json!({"type": "subscribe", "channel": room, "since": r.1.unwrap_or(r.0), "epoch": epoch});
                        if ws.send(Message::Text(body.to_string().into())).await.is_err() {
                            return Outcome::Resume;
                        }
                    }
                    None => {
                        let seq = v["seq"].as_u64().expect("seq");
                        let era = shared.era.load(Ordering::Acquire);
                        log.lock().expect("lock").segments.push(Segment { era, start_auto: seq, ..Segment::default() });
                        *resume = Some((seq, None, epoch));
                        let body = json!({"type": "subscribe", "channel": room});
                        if ws.send(Message::Text(body.to_string().into())).await.is_err() {
                            return Outcome::Resume;
                        }
                    }
                }
                hello = Some(v);
            }
            "hub:subscribed" => {
                if v.get("recovered").is_some() && v["recovered"] != true {
                    return Outcome::Resync;
                }
                let seq = v["seq"].as_u64().expect("seq");
                let mut log = log.lock().expect("lock");
                let segment = log.segments.last_mut().expect("segment");
                if segment.start_room.is_none() {
                    segment.start_room = Some(seq);
                }
                if let Some(r) = resume.as_mut()
                    && r.1.is_none()
                {
                    r.1 = Some(seq);
                }
            }
            "hub:error" => panic!("client u{k}: {v}"),
            _ if kind.starts_with("hub:") => {}
            _ => {
                assert!(hello.is_some(), "event before hub:connected: {v}");
                let seq = v["seq"].as_u64().expect("seq");
                let id = v["id"].as_str().expect("id").to_string();
                let key = v["data"]["key"].as_str().map(str::to_string);
                let label = v["channel"].as_str().unwrap_or("");
                let how = format!("conn {conn} via {label} on node {node}");
                log.lock().expect("lock").segments.last_mut().expect("segment").received.push((id, seq, key, how));
                if let Some(r) = resume.as_mut() {
                    if label == room {
                        r.1 = Some(r.1.map_or(seq, |s| s.max(seq)));
                    } else {
                        r.0 = r.0.max(seq);
                    }
                }
            }
        }
    }
}

/// Faults, one at a time, each followed by recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fault {
    KillPubsub,
    RedisRestartKeepingData,
    RedisRestartLosingData,
    DebugSleep,
    NodeKill,
    ClientBounce,
}

fn node_flags(redis_url: &str) -> Vec<String> {
    ["--redis-url", redis_url, "--jwt-secret", SECRET, "--node-ttl", "3s", "--history-size", HISTORY_SIZE]
        .map(str::to_string)
        .to_vec()
}

async fn start_node(port: u16, url: &str) -> ChildHub {
    let flags = node_flags(url);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ChildHub::start_on(port, &flags).await
}

async fn wait_all_healthy(shared: &Shared) {
    let http = http();
    let deadline = Instant::now() + Duration::from_secs(20);
    for port in &shared.ports {
        loop {
            let url = format!("http://127.0.0.1:{port}/health");
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "node {port} did not recover");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_under_redis_node_and_client_faults_loses_nothing_silently_and_duplicates_nothing() {
    let secs: u64 = std::env::var("WSHUB_CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(25);
    let seed: u64 = std::env::var("WSHUB_CHAOS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    });
    eprintln!("chaos: seed {seed}, {secs} s of faults");
    let mut rng = Rng(seed);

    let mut redis = Redis::start();
    let url = redis.url();
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
    let mut nodes = Vec::new();
    for port in &ports {
        nodes.push(Some(start_node(*port, &url).await));
    }
    let shared = Arc::new(Shared {
        ports,
        accepted: Mutex::new(Vec::new()),
        clients: (0..CLIENTS).map(|_| Mutex::new(ClientLog::default())).collect(),
        bounce: (0..CLIENTS).map(|_| AtomicBool::new(false)).collect(),
        era: AtomicU64::new(0),
        stop_publishing: AtomicBool::new(false),
        stop_clients: AtomicBool::new(false),
        publishes_failed: AtomicUsize::new(0),
        idempotent_retries: AtomicUsize::new(0),
        resyncs: AtomicUsize::new(0),
        resumes: AtomicUsize::new(0),
    });
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        clients.push(tokio::spawn(client(Arc::clone(&shared), k, Rng(rng.next() | 1))));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut publishers = Vec::new();
    for p in 0..NODES {
        publishers.push(tokio::spawn(publisher(Arc::clone(&shared), p, Rng(rng.next() | 1))));
    }

    // The schedule: every kind at least once, then at random. A data loss only now and then:
    // it makes every client resync, which checks less.
    let mut schedule = vec![
        Fault::KillPubsub,
        Fault::DebugSleep,
        Fault::RedisRestartKeepingData,
        Fault::NodeKill,
        Fault::ClientBounce,
        Fault::KillPubsub,
        Fault::RedisRestartLosingData,
    ];
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut injected: HashMap<Fault, usize> = HashMap::new();
    let mut step = 0;
    while Instant::now() < deadline {
        let fault = match schedule.get(step) {
            Some(f) => *f,
            None => {
                let roll = rng.below(100);
                match roll {
                    0..30 => Fault::KillPubsub,
                    30..45 => Fault::RedisRestartKeepingData,
                    45..47 => Fault::RedisRestartLosingData,
                    47..62 => Fault::DebugSleep,
                    62..77 => Fault::NodeKill,
                    _ => Fault::ClientBounce,
                }
            }
        };
        step += 1;
        tokio::time::sleep(Duration::from_millis(500 + rng.below(1500) as u64)).await;
        match fault {
            Fault::KillPubsub => {
                let _ = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
            }
            Fault::RedisRestartKeepingData => redis.restart_keeping_data(),
            Fault::RedisRestartLosingData => {
                shared.era.fetch_add(1, Ordering::AcqRel);
                redis.restart_losing_data();
            }
            Fault::DebugSleep => {
                let port = redis.port;
                // Longer than the 2 s command timeout: publishes answer 503 although Redis
                // runs them afterwards.
                tokio::task::spawn_blocking(move || {
                    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("url");
                    if let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
                        let _ = redis::cmd("DEBUG").arg("SLEEP").arg("2.5").query::<redis::Value>(&mut conn);
                    }
                })
                .await
                .expect("debug sleep");
            }
            Fault::NodeKill => {
                let n = rng.below(NODES);
                if let Some(node) = nodes[n].take() {
                    node.signal("KILL");
                    drop(node);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                nodes[n] = Some(start_node(shared.ports[n], &url).await);
            }
            Fault::ClientBounce => {
                for k in 0..CLIENTS {
                    if rng.below(2) == 0 {
                        shared.bounce[k].store(true, Ordering::Release);
                    }
                }
            }
        }
        *injected.entry(fault).or_default() += 1;
        wait_all_healthy(&shared).await;
        if step == schedule.len() {
            schedule.clear();
            step = usize::MAX / 2;
        }
    }

    shared.stop_publishing.store(true, Ordering::Release);
    for p in publishers {
        p.await.expect("publisher");
    }
    wait_all_healthy(&shared).await;
    let accepted: Vec<Accepted> = shared.accepted.lock().expect("lock").clone();
    let final_era = shared.era.load(Ordering::Acquire);

    // Drain: wait until every client's current segment holds everything expected of it.
    let expected_of = |k: usize, segment: &Segment| -> HashSet<String> {
        let user = format!("user:u{k}");
        accepted
            .iter()
            .filter(|a| a.era == segment.era)
            .filter(|a| {
                let auto = a.streams.iter().any(|s| s == "broadcast" || *s == user) && a.seq > segment.start_auto;
                let in_room = a.streams.contains(&room(k)) && segment.start_room.is_some_and(|s| a.seq > s);
                auto || in_room
            })
            .map(|a| a.id.clone())
            .collect()
    };
    let drain_deadline = Instant::now() + DRAIN;
    loop {
        let missing: usize = (0..CLIENTS)
            .map(|k| {
                let log = shared.clients[k].lock().expect("lock");
                log.segments.last().filter(|s| !s.resynced).map_or(0, |s| {
                    let got: HashSet<&String> = s.received.iter().map(|r| &r.0).collect();
                    expected_of(k, s).iter().filter(|id| !got.contains(id)).count()
                })
            })
            .sum();
        if missing == 0 || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // late duplicates would show now
    shared.stop_clients.store(true, Ordering::Release);
    for c in clients {
        c.await.expect("client");
    }

    // Per client and segment: exactly once, or told to resync; no key twice.
    let mut lost = Vec::new();
    let mut duplicated = Vec::new();
    let mut keys_twice = Vec::new();
    let mut deliveries = 0;
    let mut resynced_segments = 0;
    let mut checked_segments = 0;
    for k in 0..CLIENTS {
        let log = shared.clients[k].lock().expect("lock");
        for segment in &log.segments {
            deliveries += segment.received.len();
            let mut ids = HashSet::new();
            let mut key_ids: HashMap<&str, &str> = HashMap::new();
            for (id, seq, key, how) in &segment.received {
                if !ids.insert(id) {
                    let first = segment.received.iter().find(|r| &r.0 == id).map_or("", |r| r.3.as_str());
                    duplicated.push(format!("u{k}: {id} (seq {seq}) first {first}, again {how}"));
                }
                if let Some(key) = key
                    && let Some(other) = key_ids.insert(key, id)
                    && other != id
                {
                    keys_twice.push(format!("u{k}: key {key} as {other} and {id}"));
                }
            }
            // A segment that ended in a resync must still hold everything up to the newest
            // event it received: the resync is told before anything after the gap.
            let upto = if segment.resynced {
                resynced_segments += 1;
                segment.received.iter().map(|r| r.1).max().unwrap_or(0)
            } else {
                checked_segments += 1;
                u64::MAX
            };
            let seqs: HashMap<&String, u64> = accepted.iter().map(|a| (&a.id, a.seq)).collect();
            for id in expected_of(k, segment) {
                if !ids.contains(&id) && seqs.get(&id).is_some_and(|seq| *seq <= upto) {
                    lost.push(format!("u{k}: {id}"));
                }
            }
        }
    }

    // Every 200 of the current era is in history.
    let http = http();
    let mut not_in_history = Vec::new();
    for a in accepted.iter().filter(|a| a.era == final_era) {
        let url = format!("http://127.0.0.1:{}/events/{}", shared.ports[0], a.id);
        let ok = http.get(&url).send().await.is_ok_and(|r| r.status().as_u16() == 200);
        if !ok {
            not_in_history.push(a.id.clone());
        }
    }

    let mut faults: Vec<String> = injected.iter().map(|(f, n)| format!("{f:?}={n}")).collect();
    faults.sort();
    eprintln!(
        "chaos: faults {} [{}]; accepted {} events ({} with idempotency keys), {} failed publishes, {} idempotent \
         retries; {} deliveries, {} resumes, {} resyncs ({} segments resynced, {} checked); lost {}, duplicated {}, \
         keys delivered twice {}, accepted but not in history {}",
        injected.values().sum::<usize>(),
        faults.join(" "),
        accepted.len(),
        accepted.iter().filter(|a| a.key.is_some()).count(),
        shared.publishes_failed.load(Ordering::Relaxed),
        shared.idempotent_retries.load(Ordering::Relaxed),
        deliveries,
        shared.resumes.load(Ordering::Relaxed),
        shared.resyncs.load(Ordering::Relaxed),
        resynced_segments,
        checked_segments,
        lost.len(),
        duplicated.len(),
        keys_twice.len(),
        not_in_history.len(),
    );
    let first = |v: &[String]| v.iter().take(20).cloned().collect::<Vec<_>>();
    assert!(lost.is_empty(), "lost without a resync (first 20): {:?}", first(&lost));
    assert!(duplicated.is_empty(), "delivered twice (first 20): {:?}", first(&duplicated));
    assert!(keys_twice.is_empty(), "idempotency key delivered twice (first 20): {:?}", first(&keys_twice));
    assert!(not_in_history.is_empty(), "answered 200 but not in history (first 20): {:?}", first(&not_in_history));
    assert!(accepted.len() > 100, "too few events published to mean anything: {}", accepted.len());
    assert!(checked_segments >= CLIENTS, "every client ends in a checked segment");
    drop(nodes);
}

// ---- Single faults, each checked exactly ----

async fn hub_client(node: &ChildHub, path: &str) -> common::Client {
    let mut client = common::Client::connect(&node.ws_url(path)).await;
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "{hello}");
    client.hello = hello;
    client
}

async fn notify(node: &ChildHub, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
    common::post_json(&node.url("/notify"), &body, headers).await
}

async fn start_small_node(redis: &Redis, history_size: &str) -> ChildHub {
    let url = redis.url();
    ChildHub::start(&["--redis-url", &url, "--jwt-secret", SECRET, "--node-ttl", "3s", "--history-size", history_size])
        .await
}

/// Cuts one node's pub/sub link and keeps it down (Redis refuses new connections) while `during`
/// runs, then lets it reconnect.
async fn with_pubsub_link_down<F: std::future::Future<Output = ()>>(redis: &Redis, during: F) {
    let client = redis::Client::open(redis.url()).expect("url");
    let mut admin = client.get_connection_with_timeout(Duration::from_secs(1)).expect("admin connection");
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxclients").arg("1").query(&mut admin).expect("maxclients");
    let _: redis::Value = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut admin).expect("kill");
    during.await;
    let _: () = redis::cmd("CONFIG").arg("SET").arg("maxclients").arg("10000").query(&mut admin).expect("maxclients");
}

#[tokio::test]
async fn events_missed_while_the_link_was_down_arrive_once_within_history_and_beyond_it_only_their_clients_resync() {
    let redis = Redis::start();
    let (a, b) = (start_small_node(&redis, "5").await, start_small_node(&redis, "5").await);
    let alice_jwt = token(SECRET, "alice", &[], 3600);
    let mut alice = hub_client(&a, &format!("/ws?token={alice_jwt}")).await;
    let mut bob = hub_client(&a, &format!("/ws?token={}", token(SECRET, "bob", &[], 3600))).await;

    // Within history: three events for alice and one broadcast while node A hears nothing.
    let mut within = Vec::new();
    with_pubsub_link_down(&redis, async {
        for i in 0..3 {
            let (status, answer) = notify(&b, json!({"type": "dm", "user": "alice", "data": {"i": i}}), &[]).await;
            assert_eq!(status, 200, "{answer}");
            within.push(answer["id"].clone());
        }
        let (status, answer) = notify(&b, json!({"type": "all"}), &[]).await;
        assert_eq!(status, 200, "{answer}");
        within.push(answer["id"].clone());
    })
    .await;
    let mut alice_since = 0;
    for id in &within {
        let event = alice.next_event().await;
        assert_eq!(&event["id"], id, "alice gets what node A missed, once, in order");
        alice_since = event["seq"].as_u64().expect("seq");
    }
    assert_eq!(bob.next_event().await["id"], within[3]);
    alice.assert_no_event().await;

    // Beyond history: 8 events for alice, the stream keeps 5. Only alice is told; bob stays.
    let mut last_seen = 0;
    with_pubsub_link_down(&redis, async {
        for i in 0..8 {
            let (status, answer) = notify(&b, json!({"type": "dm", "user": "alice", "data": {"i": i}}), &[]).await;
            assert_eq!(status, 200, "{answer}");
            last_seen = answer["seq"].as_u64().expect("seq");
        }
    })
    .await;
    assert_eq!(alice.ended().await, common::Ended::Closed(4006), "alice is told to resync");
    bob.assert_alive().await;
    let epoch = alice.hello["epoch"].as_str().expect("epoch").to_string();
    let resumed = hub_client(&a, &format!("/ws?token={alice_jwt}&since={alice_since}&epoch={epoch}")).await;
    assert_eq!(resumed.hello["recovered"], false, "{}", resumed.hello);
    assert!(resumed.hello["seq"].as_u64().expect("seq") >= last_seen, "{}", resumed.hello);
}

#[tokio::test]
async fn an_idempotent_retry_after_a_redis_stall_returns_the_first_result_and_delivers_once() {
    let redis = Redis::start();
    let node = start_small_node(&redis, "100").await;
    let mut alice = hub_client(&node, &format!("/ws?token={}", token(SECRET, "alice", &[], 3600))).await;

    // A first publish loads the script into Redis (a script call behind the stall would
    // otherwise only learn NOSCRIPT afterwards, and not run).
    let (status, warm) = notify(&node, json!({"type": "warm", "user": "alice"}), &[]).await;
    assert_eq!(status, 200, "{warm}");
    assert_eq!(alice.next_event().await["id"], warm["id"]);

    // Redis stalls longer than the 2 s command timeout; the publish is queued behind the stall,
    // answered 503, and runs once Redis wakes up.
    let port = redis.port;
    let stall = tokio::task::spawn_blocking(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("url");
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(1)).expect("connection");
        let _: redis::Value = redis::cmd("DEBUG").arg("SLEEP").arg("3").query(&mut conn).expect("debug sleep");
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let headers = [("Idempotency-Key", "order-1")];
    let body = json!({"type": "order", "user": "alice"});
    let (status, answer) = notify(&node, body.clone(), &headers).await;
    assert_eq!(status, 503, "the stall outlasts the command timeout: {answer}");
    stall.await.expect("stall");
    let delivered = alice.next_event().await;
    assert_eq!(delivered["type"], "order", "the first attempt was published after all");

    // The retry (on any node) answers the first result and publishes nothing.
    let (status, retry) = notify(&node, body, &headers).await;
    assert_eq!(status, 200, "{retry}");
    assert_eq!((&retry["id"], &retry["seq"]), (&delivered["id"], &delivered["seq"]), "{retry}");
    alice.assert_no_event().await;

    // A key whose first attempt never reached Redis publishes on the retry, at once.
    let headers = [("Idempotency-Key", "order-2")];
    let (status, fresh) = notify(&node, json!({"type": "order2", "user": "alice"}), &headers).await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(alice.next_event().await["id"], fresh["id"]);
}

#[tokio::test]
async fn stats_and_presence_cost_a_few_redis_commands_whatever_the_keyspace_holds() {
    let redis = Redis::start();
    let node = start_small_node(&redis, "100").await;
    let mut alice = hub_client(&node, &format!("/ws?token={}", token(SECRET, "alice", &[], 3600))).await;
    alice.send_json(json!({"type": "subscribe", "channel": "room"})).await;
    assert_eq!(alice.next_reply().await["type"], "hub:subscribed");
    redis.command(&["DEBUG", "POPULATE", "200000", "filler"]).expect("populate");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, stats) = common::get_json(&node.url("/stats"), &[]).await;
        if stats["nodes"].as_array().is_some_and(|n| n.len() == 1) {
            break;
        }
        assert!(Instant::now() < deadline, "the node's heartbeat never showed in /stats: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, stats) = common::get_json(&node.url("/stats"), &[]).await;
    assert_eq!(status, 200, "{stats}");
    redis.command(&["CONFIG", "RESETSTAT"]).expect("resetstat");
    for _ in 0..5 {
        let (status, stats) = common::get_json(&node.url("/stats"), &[]).await;
        assert_eq!(status, 200, "{stats}");
        assert_eq!(stats["nodes"].as_array().map(Vec::len), Some(1), "{stats}");
        let (status, presence) = common::get_json(&node.url("/channels/room/presence"), &[]).await;
        assert_eq!(status, 200, "{presence}");
    }
    let info = redis.command(&["INFO", "commandstats"]).expect("info");
    let info: String = redis::from_redis_value(info).expect("text");
    let calls: HashMap<String, u64> = info
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_string(), calls))
        })
        .collect();
    assert!(!calls.contains_key("scan") && !calls.contains_key("keys"), "no keyspace scans: {calls:?}");
    // Five /stats and five presence reads, plus at most a few heartbeats meanwhile.
    let total: u64 = calls.iter().filter(|(name, _)| *name != "info" && *name != "config").map(|(_, n)| n).sum();
    assert!(total <= 60, "{total} Redis commands for 10 reads over 200k keys: {calls:?}");
}

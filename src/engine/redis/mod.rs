//! The cluster engine: several wshub processes share one Redis and act as one hub.
//!
//! - Positions: one `INCR` counter; epoch in a key (a Redis that lost its data gets a new epoch,
//!   so clients are told `recovered: false` instead of resuming wrongly).
//! - History: a Redis Stream per stream (`wshub:h:{stream}`), entry id = seq, trimmed to the
//!   history size, expired after twice the TTL; per-stream trim and last positions in hashes.
//! - Live fan-out: `PUBLISH wshub:c:{stream}` from one Lua script that also assigns the seq and
//!   writes history, so order is the same everywhere. Each node subscribes only to the streams its
//!   own clients are in (plus `broadcast`), on one pub/sub connection, so it receives events in seq
//!   order; an event matching several of its streams arrives once per stream and is passed on once.
//! - Idempotency keys, receipts, node heartbeats and presence snapshots are keys with expiry.
//! - Reconnect: the node counts as linked (`/health` ok) only once it has resubscribed and
//!   delivered, from the history, what it missed since its last seq (since the start of a new
//!   epoch if Redis lost its data); seqs already delivered are skipped, so nothing comes twice.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Engine, EngineError, EngineHealth, NewEvent, Published};
use crate::config::Config;
use crate::history::Replay;
use crate::hub::{Command, HubHandle, PresenceSnapshot};
use crate::namespace::Namespaces;
use crate::protocol::{Delivery, Event, now_rfc3339};

mod pubsub;

use pubsub::{SubRequest, subscription_manager};

const KEY_EPOCH: &str = "wshub:epoch";
const KEY_SEQ: &str = "wshub:seq";
const KEY_TRIM: &str = "wshub:trim";
const KEY_LAST: &str = "wshub:last";
const KEY_RECENT: &str = "wshub:recent";
/// Events kept in the cluster-wide recent list (`GET /events`).
const RECENT_LEN: usize = 1000;
/// Events whose local write counts are flushed to Redis at each heartbeat.
const RECEIPT_WINDOW: usize = 10_000;
/// Longest wait for the first publisher of an idempotency key to finish.
const IDEMPOTENCY_WAIT: Duration = Duration::from_secs(5);
/// Redis command timeout: a publish fails with 503 rather than hang while Redis is away.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Assigns seqs, writes history and publishes a batch atomically. See the module doc.
const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// Recently received events with the write count already flushed to Redis.
type RecentEvents = Mutex<VecDeque<(Arc<Event>, u32)>>;

/// What a node shares with the others through the publish payload.
#[derive(Deserialize)]
struct EpochOf {
    epoch: String,
}

/// The Redis engine.
pub struct RedisEngine {
    conn: ConnectionManager,
    node: String,
    epoch: Mutex<String>,
    last_seq: AtomicU64,
    linked: Arc<AtomicBool>,
    subs: mpsc::UnboundedSender<SubRequest>,
    history_size: usize,
    ttl: Duration,
    idempotency_ttl: Duration,
    node_ttl: Duration,
    namespaces: Namespaces,
    /// The publish script (sent by hash, loaded on first use).
    script: redis::Script,
    /// Recently received events, whose local write counts are flushed to Redis.
    recent: Arc<RecentEvents>,
}

fn unavailable(e: impl std::fmt::Display) -> EngineError {
    EngineError::Unavailable(format!("redis: {e}"))
}

impl RedisEngine {
    /// Connects to Redis and starts the subscription manager and the heartbeat.
    pub async fn connect(hub: HubHandle, config: &Config, url: &str) -> Result<Arc<Self>, EngineError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let mut conn = client.get_connection_manager_with_config(manager_config).await.map_err(unavailable)?;
        let candidate = super::memory::new_epoch();
        let _: bool = conn.set_nx(KEY_EPOCH, &candidate).await.map_err(unavailable)?;
        let epoch: String = conn.get(KEY_EPOCH).await.map_err(unavailable)?;
        // Start from the cluster's current position: a catch-up after a reconnect must know
        // where this node started listening, even before it delivered anything.
        let seq: Option<u64> = conn.get(KEY_SEQ).await.map_err(unavailable)?;
        let (subs, requests) = mpsc::unbounded_channel();
        let linked = Arc::new(AtomicBool::new(false));
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        let engine = Arc::new(Self {
            conn,
            node: hub.node().to_string(),
            epoch: Mutex::new(epoch),
            last_seq: AtomicU64::new(seq.unwrap_or(0)),
            linked: Arc::clone(&linked),
            subs,
            history_size: config.history_size,
            ttl: config.history_ttl,
            idempotency_ttl: config.idempotency_ttl,
            node_ttl: config.node_ttl,
            namespaces: config.namespaces.clone(),
            script: redis::Script::new(PUBLISH_SCRIPT),
            recent,
        });
        let weak = Arc::downgrade(&engine);
        tokio::spawn(subscription_manager(client, hub.clone(), weak.clone(), requests, linked));
        tokio::spawn(heartbeat(hub, weak));
        engine.wait_linked().await;
        Ok(engine)
    }

    async fn wait_linked(&self) {
        for _ in 0..100 {
            if self.sync().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!("redis pub/sub is not connected yet; the node will catch up when it is");
    }

    /// True once every earlier subscribe is confirmed by Redis.
    async fn sync(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.subs.send(SubRequest::Sync(tx)).is_ok() && rx.await.unwrap_or(false)
    }

    /// Adopts a new epoch (Redis lost its data). Positions start again, so the newest seq seen
    /// is forgotten too, under the same lock: whichever of a publish answer or a pub/sub message
    /// sees the new epoch first, the new epoch's events are not taken for ones already delivered.
    fn set_epoch(&self, epoch: &str) {
        if let Ok(mut current) = self.epoch.lock() {
            self.adopt(&mut current, epoch);
        }
    }

    /// Switches to `epoch` if it is new; seqs start over with it.
    fn adopt(&self, current: &mut String, epoch: &str) {
        if *current != epoch {
            tracing::warn!(old = %current, new = %epoch, "redis epoch changed (its data was reset)");
            *current = epoch.to_string();
            self.last_seq.store(0, Ordering::Release);
        }
    }

    /// Adopts `epoch` if it is new and claims `seq` if not delivered yet, under the epoch lock so
    /// a concurrent epoch change cannot be undone by a seq stored from the old one.
    fn accept(&self, epoch: &str, seq: u64) -> bool {
        let Ok(mut current) = self.epoch.lock() else { return false };
        self.adopt(&mut current, epoch);
        if seq <= self.last_seq.load(Ordering::Acquire) {
            return false;
        }
        self.last_seq.store(seq, Ordering::Release);
        true
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn max_len(&self, stream: &str) -> usize {
        self.namespaces.find(stream).and_then(|ns| ns.history_size).unwrap_or(self.history_size).max(1)
    }

    async fn publish_now(&self, batch: Vec<NewEvent>) -> Result<Vec<Published>, EngineError> {
        let (timestamp, accepted_ms) = now_rfc3339();
        let mut script = self.script.prepare_invoke();
        script.arg(self.ttl_ms()).arg(super::memory::new_epoch()).arg(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for new in batch {
            let event = super::memory::stamp(new, 0, &timestamp, accepted_ms);
            let body =
                serde_json::to_string(&WireBody::from(&event)).map_err(|e| EngineError::Storage(e.to_string()))?;
            script.arg(&event.id).arg(body).arg(event.targets.len());
            for target in &event.targets {
                script.arg(target).arg(self.max_len(target));
            }
            ids.push(event.id);
        }
        script.arg(RECENT_LEN);
        let mut conn = self.conn.clone();
        let out: Vec<redis::Value> = script.invoke_async(&mut conn).await.map_err(unavailable)?;
        let mut values = out.into_iter();
        let epoch: String =
            values.next().map(redis::from_redis_value).transpose().map_err(unavailable)?.unwrap_or_default();
        self.set_epoch(&epoch);
        let numbers: Vec<u64> = values.map(redis::from_redis_value).collect::<Result<_, _>>().map_err(unavailable)?;
        Ok(ids
            .into_iter()
            .zip(numbers.chunks(2))
            .map(|(id, pair)| Published {
                id,
                seq: pair.first().copied().unwrap_or(0),
                recipients: None,
                nodes: pair.get(1).map(|n| *n as usize),
            })
            .collect())
    }

    async fn read_streams(&self, streams: &[String], since: Option<u64>) -> Result<Replay, EngineError> {
        let mut conn = self.conn.clone();
        let lasts: Vec<Option<u64>> =
            redis::cmd("HMGET").arg(KEY_LAST).arg(streams).query_async(&mut conn).await.map_err(unavailable)?;
        let head = lasts.iter().flatten().copied().max().unwrap_or(0);
        let Some(since) = since else {
            return Ok(Replay { events: Vec::new(), recovered: true, head });
        };
        let trims: Vec<Option<u64>> =
            redis::cmd("HMGET").arg(KEY_TRIM).arg(streams).query_async(&mut conn).await.map_err(unavailable)?;
        let cutoff = now_rfc3339().1.saturating_sub(self.ttl_ms());
        let mut recovered = true;
        let mut events: Vec<Arc<Event>> = Vec::new();
        for (i, stream) in streams.iter().enumerate() {
            let entries: Vec<(String, HashMap<String, String>)> =
                conn.xrange(format!("wshub:h:{stream}"), format!("{}-0", since + 1), "+").await.map_err(unavailable)?;
            recovered &= trims[i].is_none_or(|t| since >= t);
            if entries.is_empty() && lasts[i].is_some_and(|last| last > since) {
                recovered = false; // the stream expired with events the client has not seen
            }
            for (_, fields) in entries {
                let Some(event) = fields.get("e").and_then(|p| serde_json::from_str::<Event>(p).ok()) else { continue };
                if event.accepted_ms < cutoff {
                    recovered = false;
                } else {
                    events.push(Arc::new(event));
                }
            }
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Ok(Replay { events, recovered, head })
    }

    /// Waits for the first publisher of `key` (or becomes it). `None`: we are the first.
    async fn idempotent(&self, key: &str) -> Result<Option<Vec<Published>>, EngineError> {
        let mut conn = self.conn.clone();
        let redis_key = format!("wshub:idem:{key}");
        let deadline = tokio::time::Instant::now() + IDEMPOTENCY_WAIT;
        loop {
            let claimed: bool = redis::cmd("SET")
                .arg(&redis_key)
                .arg("pending")
                .arg("NX")
                .arg("PX")
                .arg(self.idempotency_ttl.as_millis() as u64)
                .query_async::<Option<String>>(&mut conn)
                .await
                .map_err(unavailable)?
                .is_some();
            if claimed {
                return Ok(None);
            }
            let value: Option<String> = conn.get(&redis_key).await.map_err(unavailable)?;
            match value.as_deref() {
                Some("pending") | None => {}
                Some(done) => {
                    return serde_json::from_str(done).map(Some).map_err(|e| EngineError::Storage(e.to_string()));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(EngineError::Unavailable(
                    "an earlier publish with this idempotency key is still running".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn publish_once(&self, batch: Vec<NewEvent>, key: Option<String>) -> Result<Vec<Published>, EngineError> {
        let Some(key) = key else { return self.publish_now(batch).await };
        if let Some(done) = self.idempotent(&key).await? {
            return Ok(done);
        }
        let redis_key = format!("wshub:idem:{key}");
        let mut conn = self.conn.clone();
        match self.publish_now(batch).await {
            Ok(published) => {
                let text = serde_json::to_string(&published).map_err(|e| EngineError::Storage(e.to_string()))?;
                let ttl = self.idempotency_ttl.as_millis() as u64;
                // The event is published: answer 200 even if its result cannot be recorded (the
                // key then stays `pending`, and a retry gets 503 rather than a second copy).
                if let Err(e) = conn.pset_ex::<_, _, ()>(&redis_key, text, ttl).await {
                    tracing::warn!(error = %e, key = %key, "published, but the idempotency result was not stored");
                }
                Ok(published)
            }
            Err(e) => {
                let _: Result<(), _> = conn.del(&redis_key).await;
                Err(e)
            }
        }
    }

    /// Turns a pub/sub payload into a delivery for the local hub, once per seq: an event matching
    /// several of this node's streams arrives once per stream, and catch-up may overlap live ones.
    fn on_message(&self, payload: &str, hub: &HubHandle) {
        let (Ok(event), Ok(EpochOf { epoch })) =
            (serde_json::from_str::<Event>(payload), serde_json::from_str(payload))
        else {
            tracing::warn!("unreadable event from redis");
            return;
        };
        self.deliver(Arc::new(event), &epoch, hub);
    }

    fn deliver(&self, event: Arc<Event>, epoch: &str, hub: &HubHandle) {
        if !self.accept(epoch, event.seq) {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECEIPT_WINDOW {
                recent.pop_front();
            }
            recent.push_back((Arc::clone(&event), 0));
        }
        if hub.deliver(vec![Arc::new(Delivery::new(event, epoch))], None).is_err() {
            tracing::debug!("hub stopped; dropping event from redis");
        }
    }

    /// After a (re)connect: deliver what was published while this node was not listening. If
    /// Redis lost its data, that is everything of the new epoch so far. False when Redis could
    /// not be read: the node then stays unlinked and tries again, rather than skip events.
    async fn catch_up(&self, interest: &HashSet<String>, hub: &HubHandle) -> bool {
        let mut conn = self.conn.clone();
        let epoch = match conn.set_nx::<_, _, bool>(KEY_EPOCH, super::memory::new_epoch()).await {
            Ok(_) => conn.get::<_, Option<String>>(KEY_EPOCH).await,
            Err(e) => Err(e),
        };
        let epoch = match epoch {
            Ok(Some(epoch)) => epoch,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "catch-up after reconnect: redis not ready");
                return false;
            }
        };
        self.set_epoch(&epoch);
        let since = self.last_seq.load(Ordering::Acquire);
        let streams: Vec<String> = interest.iter().cloned().collect();
        match self.read_streams(&streams, Some(since)).await {
            Ok(replay) => {
                if !replay.events.is_empty() {
                    tracing::info!(events = replay.events.len(), "caught up on events missed while disconnected");
                }
                for event in replay.events {
                    self.deliver(event, &epoch, hub);
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "catch-up after reconnect failed");
                false
            }
        }
    }

    fn unflushed_written(&self, id: &str) -> u64 {
        let Ok(recent) = self.recent.lock() else { return 0 };
        recent
            .iter()
            .find(|(e, _)| e.id == id)
            .map_or(0, |(e, flushed)| u64::from(e.receipt.written.load(Ordering::Relaxed).saturating_sub(*flushed)))
    }

    /// Pushes local write counts to Redis, and this node's heartbeat.
    async fn beat(&self, hub: &HubHandle) -> Result<(), EngineError> {
        let mut conn = self.conn.clone();
        let deltas: Vec<(String, u32)> = match self.recent.lock() {
            Ok(mut recent) => recent
                .iter_mut()
                .filter_map(|(event, flushed)| {
                    let written = event.receipt.written.load(Ordering::Relaxed);
                    let delta = written.saturating_sub(*flushed);
                    *flushed = written;
                    (delta > 0).then(|| (event.id.clone(), delta))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let ttl = self.ttl_ms();
        let mut pipe = redis::pipe();
        for (id, delta) in &deltas {
            let key = format!("wshub:r:{id}");
            pipe.hincr(&key, "written", *delta).ignore().pexpire(&key, ttl as i64).ignore();
        }
        let (stats, presence) = hub.ask(|reply| Command::Snapshot { reply }).await?;
        let node_ms = self.node_ttl.as_millis() as u64;
        let beat = json!({"node": self.node, "stats": stats, "at_ms": now_rfc3339().1});
        pipe.pset_ex(format!("wshub:node:{}", self.node), beat.to_string(), node_ms).ignore();
        let presence_key = format!("wshub:presence:{}", self.node);
        // Atomic, so a reader never sees this node's presence between DEL and HSET.
        pipe.atomic();
        pipe.del(&presence_key).ignore();
        for (stream, entry) in &presence {
            pipe.hset(&presence_key, stream, json!(entry).to_string()).ignore();
        }
        pipe.pexpire(&presence_key, node_ms as i64).ignore();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn node_keys(&self, pattern: &str) -> Result<Vec<String>, EngineError> {
        let mut conn = self.conn.clone();
        let mut keys = Vec::new();
        let mut iter: redis::AsyncIter<String> = conn.scan_match(pattern).await.map_err(unavailable)?;
        while let Some(key) = iter.next().await {
            keys.push(key.map_err(unavailable)?);
        }
        Ok(keys)
    }
}

/// An event as written into Redis: everything but the seq and epoch, which the script adds.
#[derive(serde::Serialize)]
struct WireBody<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    data: &'a serde_json::value::RawValue,
    timestamp: &'a str,
    targets: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclude: Option<&'a str>,
    accepted_ms: u64,
}

impl<'a> From<&'a Event> for WireBody<'a> {
    fn from(e: &'a Event) -> Self {
        Self {
            id: &e.id,
            kind: &e.kind,
            message: &e.message,
            data: &e.data,
            timestamp: &e.timestamp,
            targets: &e.targets,
            from: e.from.as_deref(),
            exclude: e.exclude.as_deref(),
            accepted_ms: e.accepted_ms,
        }
    }
}

/// Flushes receipts and writes this node's heartbeat every third of `--node-ttl`.
async fn heartbeat(hub: HubHandle, engine: Weak<RedisEngine>) {
    loop {
        let Some(period) = engine.upgrade().map(|e| e.node_ttl / 3) else { return };
        tokio::time::sleep(period).await;
        let Some(engine) = engine.upgrade() else { return };
        if let Err(e) = engine.beat(&hub).await {
            tracing::debug!(error = %e, "heartbeat failed");
        }
    }
}

impl Engine for RedisEngine {
    fn epoch(&self) -> String {
        self.epoch.lock().map(|e| e.clone()).unwrap_or_default()
    }

    fn current_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    fn publish(&self, batch: Vec<NewEvent>, key: Option<String>) -> BoxFuture<'_, Result<Vec<Published>, EngineError>> {
        self.publish_once(batch, key).boxed()
    }

    fn replay(&self, streams: Vec<String>, since: Option<u64>) -> BoxFuture<'_, Result<Replay, EngineError>> {
        async move {
            // Live delivery for these streams must be on before history is read.
            if !self.sync().await {
                return Err(EngineError::Unavailable("redis pub/sub is not connected".into()));
            }
            self.read_streams(&streams, since).await
        }
        .boxed()
    }

    fn history(&self, stream: String, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        async move {
            let mut conn = self.conn.clone();
            let entries: Vec<(String, HashMap<String, String>)> = conn
                .xrange_count(format!("wshub:h:{stream}"), format!("{}-0", since + 1), "+", limit)
                .await
                .map_err(unavailable)?;
            Ok(entries.iter().filter_map(|(_, f)| f.get("e")).filter_map(|p| parse_event(p)).collect())
        }
        .boxed()
    }

    fn recent(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        async move {
            let mut conn = self.conn.clone();
            let stop = isize::try_from(limit).unwrap_or(isize::MAX).saturating_sub(1);
            let payloads: Vec<String> = conn.lrange(KEY_RECENT, 0, stop).await.map_err(unavailable)?;
            Ok(payloads.iter().filter_map(|p| parse_event(p)).collect())
        }
        .boxed()
    }

    fn find(&self, id: String) -> BoxFuture<'_, Result<Option<Arc<Event>>, EngineError>> {
        async move {
            let mut conn = self.conn.clone();
            let payload: Option<String> = conn.get(format!("wshub:ev:{id}")).await.map_err(unavailable)?;
            Ok(payload.as_deref().and_then(parse_event))
        }
        .boxed()
    }

    fn ack(&self, ids: Vec<String>, user: Option<String>) -> BoxFuture<'_, ()> {
        async move {
            let mut conn = self.conn.clone();
            let ttl = self.ttl_ms() as i64;
            let mut pipe = redis::pipe();
            for id in &ids {
                let key = format!("wshub:r:{id}");
                pipe.hincr(&key, "acked", 1).ignore().pexpire(&key, ttl).ignore();
                if let Some(user) = &user {
                    let users = format!("wshub:ru:{id}");
                    pipe.sadd(&users, user).ignore().pexpire(&users, ttl).ignore();
                }
            }
            if let Err(e) = pipe.query_async::<()>(&mut conn).await {
                tracing::debug!(error = %e, "receipts not recorded");
            }
        }
        .boxed()
    }

    fn receipt(&self, event: Arc<Event>) -> BoxFuture<'_, Value> {
        async move {
            let mut conn = self.conn.clone();
            let counts: HashMap<String, u64> = conn.hgetall(format!("wshub:r:{}", event.id)).await.unwrap_or_default();
            let users: Vec<String> = conn.smembers(format!("wshub:ru:{}", event.id)).await.unwrap_or_default();
            let local_unflushed = self.unflushed_written(&event.id);
            json!({
                "written": counts.get("written").copied().unwrap_or(0) + local_unflushed,
                "acked": counts.get("acked").copied().unwrap_or(0),
                "acked_users": users,
            })
        }
        .boxed()
    }

    fn confirms_subscriptions(&self) -> bool {
        true
    }

    fn stream_opened(&self, stream: &str) {
        let _ = self.subs.send(SubRequest::Open(stream.to_string()));
    }

    fn stream_closed(&self, stream: &str) {
        let _ = self.subs.send(SubRequest::Close(stream.to_string()));
    }

    fn cluster_presence(&self, stream: String) -> BoxFuture<'_, Option<PresenceSnapshot>> {
        async move {
            let keys = self.node_keys("wshub:presence:*").await.ok()?;
            let mut conn = self.conn.clone();
            let mut users: HashMap<String, usize> = HashMap::new();
            let mut anonymous = 0;
            for key in keys {
                let Ok(Some(text)) = conn.hget::<_, _, Option<String>>(&key, &stream).await else { continue };
                let Ok(entry) = serde_json::from_str::<PresenceSnapshot>(&text) else { continue };
                for (user, n) in entry.users {
                    *users.entry(user).or_default() += n;
                }
                anonymous += entry.anonymous;
            }
            let mut users: Vec<(String, usize)> = users.into_iter().collect();
            users.sort();
            Some(PresenceSnapshot { users, anonymous })
        }
        .boxed()
    }

    fn cluster_nodes(&self) -> BoxFuture<'_, Vec<Value>> {
        async move {
            let Ok(keys) = self.node_keys("wshub:node:*").await else { return Vec::new() };
            let mut conn = self.conn.clone();
            let mut nodes = Vec::new();
            for key in keys {
                if let Ok(Some(text)) = conn.get::<_, Option<String>>(&key).await
                    && let Ok(beat) = serde_json::from_str::<Value>(&text)
                {
                    nodes.push(beat);
                }
            }
            nodes.sort_by(|a, b| a["node"].as_str().cmp(&b["node"].as_str()));
            nodes
        }
        .boxed()
    }

    fn history_bytes(&self) -> usize {
        0
    }

    fn health(&self) -> EngineHealth {
        let ok = self.linked.load(Ordering::Acquire);
        EngineHealth { kind: "redis", ok, detail: (!ok).then(|| "redis unreachable: publishes answer 503".to_string()) }
    }
}

fn parse_event(payload: &str) -> Option<Arc<Event>> {
    serde_json::from_str::<Event>(payload).ok().map(Arc::new)
}

//! The cluster engine: several wshub processes share one Redis and act as one hub.
//!
//! - Positions: one `INCR` counter; epoch in a key (a Redis that lost its data gets a new epoch,
//!   and every node closes its clients with the resync code, so they learn `recovered: false`).
//! - History: a Redis Stream per stream (`wshub:h:{stream}`), entry id = seq, trimmed to the
//!   history size, expired after twice the TTL; the stream's newest seq in `wshub:l:{stream}`.
//! - Every event carries, per target, the previous seq of that stream (`prev`): a chain per
//!   stream, so a node (or a resume) knows exactly whether it holds everything of a stream.
//! - Live fan-out: `PUBLISH wshub:c:{stream}` from one Lua script that also claims the
//!   idempotency key, assigns the seq and writes history, so order is the same everywhere and a
//!   retried publish is answered from the first result. Each node subscribes only to the
//!   streams its own clients are in (plus `broadcast`), on one pub/sub connection.
//! - Gaps (see `pubsub`): the node keeps a position per stream; after every (re)connect it reads
//!   all its streams in one atomic snapshot and delivers what it missed, and a live event whose
//!   `prev` is ahead of the position is preceded by the missing ones. What history no longer
//!   holds is never skipped silently: the stream's clients are closed with 4006 (resync).
//! - Receipts, node heartbeats and presence are keys with expiry; live nodes are listed in a
//!   sorted set scored by expiry, so nothing ever scans the keyspace.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
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
/// Sorted set of live nodes, scored by when their heartbeat expires (Unix ms).
const KEY_NODES: &str = "wshub:nodes";
const KEY_RECENT: &str = "wshub:recent";
/// Events kept in the cluster-wide recent list (`GET /events`).
const RECENT_LEN: usize = 1000;
/// Events whose local write counts are flushed to Redis at each heartbeat.
const RECEIPT_WINDOW: usize = 10_000;
/// Redis command timeout: a publish fails with 503 rather than hang while Redis is away.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// Assigns seqs, writes history and publishes a batch atomically. See the module doc.
const PUBLISH_SCRIPT: &str = include_str!("publish.lua");

/// Recently received events with the write count already flushed to Redis.
type RecentEvents = Mutex<VecDeque<(Arc<Event>, u32)>>;

/// The position fields of a published payload, next to the event itself.
#[derive(Deserialize)]
struct Chain {
    epoch: String,
    /// Per entry of the event's `targets`: that stream's previous seq (0: none kept).
    #[serde(default)]
    prev: Vec<u64>,
}

/// An event read from Redis with its position fields.
pub(super) struct Entry {
    event: Arc<Event>,
    epoch: String,
    prev: Vec<u64>,
}

impl Entry {
    fn parse(payload: &str) -> Option<Self> {
        let event: Event = serde_json::from_str(payload).ok()?;
        let Chain { epoch, prev } = serde_json::from_str(payload).ok()?;
        Some(Self { event: Arc::new(event), epoch, prev })
    }

    /// The previous seq of `stream` before this event (0 when `stream` is not a target).
    fn prev_in(&self, stream: &str) -> u64 {
        let index = self.event.targets.iter().position(|t| t == stream);
        index.and_then(|i| self.prev.get(i)).copied().unwrap_or(0)
    }
}

/// One stream in a [`RedisEngine::snapshot`]: its newest seq and the entries read.
pub(super) struct StreamRead {
    stream: String,
    last: Option<u64>,
    entries: Vec<Entry>,
}

impl StreamRead {
    /// True when these entries are everything of the stream after position `from`: the first
    /// one follows `from` (or nothing came after it), and the stream did not go back.
    fn continues_from(&self, from: u64) -> bool {
        let last = self.last.unwrap_or(0);
        match self.entries.first() {
            Some(first) => first.prev_in(&self.stream) <= from,
            None => last <= from,
        }
    }
}

/// An atomic read of several streams.
pub(super) struct Snapshot {
    epoch: String,
    streams: Vec<StreamRead>,
}

fn history_key(stream: &str) -> String {
    format!("wshub:h:{stream}")
}

fn last_key(stream: &str) -> String {
    format!("wshub:l:{stream}")
}

fn node_key(node: &str) -> String {
    format!("wshub:node:{node}")
}

fn presence_key(node: &str) -> String {
    format!("wshub:presence:{node}")
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
        if !self.linked_within(Duration::from_secs(5)).await {
            tracing::warn!("redis pub/sub is not connected yet; the node will catch up when it is");
        }
    }

    /// True once every earlier subscribe is confirmed, waiting up to `limit` for the link.
    async fn linked_within(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.sync().await {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
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

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX)
    }

    fn max_len(&self, stream: &str) -> usize {
        self.namespaces.find(stream).and_then(|ns| ns.history_size).unwrap_or(self.history_size).max(1)
    }

    async fn publish_now(&self, batch: Vec<NewEvent>, key: Option<String>) -> Result<Vec<Published>, EngineError> {
        let (timestamp, accepted_ms) = now_rfc3339();
        let mut script = self.script.prepare_invoke();
        script
            .arg(self.ttl_ms())
            .arg(super::memory::new_epoch())
            .arg(key.as_deref().unwrap_or(""))
            .arg(millis(self.idempotency_ttl))
            .arg(RECENT_LEN)
            .arg(batch.len());
        for new in batch {
            let event = super::memory::stamp(new, 0, &timestamp, accepted_ms);
            let body =
                serde_json::to_string(&WireBody::from(&event)).map_err(|e| EngineError::Storage(e.to_string()))?;
            script.arg(&event.id).arg(body).arg(event.targets.len());
            for target in &event.targets {
                script.arg(target).arg(self.max_len(target));
            }
        }
        let mut conn = self.conn.clone();
        let out: Vec<redis::Value> = script.invoke_async(&mut conn).await.map_err(unavailable)?;
        let mut values = out.into_iter();
        let epoch: String =
            values.next().map(redis::from_redis_value).transpose().map_err(unavailable)?.unwrap_or_default();
        self.set_epoch(&epoch);
        let rest: Vec<redis::Value> = values.collect();
        rest.chunks(3)
            .map(|triple| match triple {
                [id, seq, nodes] => Ok(Published {
                    id: redis::from_redis_value(id.clone()).map_err(unavailable)?,
                    seq: redis::from_redis_value(seq.clone()).map_err(unavailable)?,
                    recipients: None,
                    nodes: Some(redis::from_redis_value(nodes.clone()).map_err(unavailable)?),
                }),
                _ => Err(EngineError::Storage("redis: malformed publish result".into())),
            })
            .collect()
    }

    /// One atomic read of several streams' newest seqs and their history after a position each
    /// (`None`: the newest seq only), with the epoch, so nothing published meanwhile can fall
    /// between two streams' reads.
    async fn snapshot(&self, reads: &[(String, Option<u64>)]) -> Result<Snapshot, EngineError> {
        let mut conn = self.conn.clone();
        let _: bool = conn.set_nx(KEY_EPOCH, super::memory::new_epoch()).await.map_err(unavailable)?;
        let mut pipe = redis::pipe();
        pipe.atomic().get(KEY_EPOCH);
        for (stream, from) in reads {
            pipe.get(last_key(stream));
            if let Some(from) = from {
                pipe.xrange(history_key(stream), format!("{}-0", from + 1), "+");
            }
        }
        let values: Vec<redis::Value> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        let mut values = values.into_iter();
        let epoch: Option<String> =
            values.next().map(redis::from_redis_value).transpose().map_err(unavailable)?.flatten();
        let mut streams = Vec::with_capacity(reads.len());
        for (stream, from) in reads {
            let last: Option<u64> =
                values.next().map(redis::from_redis_value).transpose().map_err(unavailable)?.flatten();
            let mut entries = Vec::new();
            if from.is_some() {
                let raw: Vec<(String, HashMap<String, String>)> =
                    values.next().map(redis::from_redis_value).transpose().map_err(unavailable)?.unwrap_or_default();
                for (_, fields) in raw {
                    if let Some(entry) = fields.get("e").and_then(|p| Entry::parse(p)) {
                        entries.push(entry);
                    }
                }
            }
            streams.push(StreamRead { stream: stream.clone(), last, entries });
        }
        Ok(Snapshot { epoch: epoch.unwrap_or_default(), streams })
    }

    /// A resume's history read, and the streams' newest seqs at the moment of the read.
    async fn read_streams(
        &self,
        streams: &[String],
        since: Option<u64>,
    ) -> Result<(Replay, Vec<(String, u64)>), EngineError> {
        let reads: Vec<(String, Option<u64>)> = streams.iter().map(|s| (s.clone(), since)).collect();
        let snapshot = self.snapshot(&reads).await?;
        let lasts: Vec<(String, u64)> =
            snapshot.streams.iter().map(|s| (s.stream.clone(), s.last.unwrap_or(0))).collect();
        let head = lasts.iter().map(|(_, last)| *last).max().unwrap_or(0);
        let Some(since) = since else {
            return Ok((Replay { events: Vec::new(), recovered: true, head }, lasts));
        };
        let cutoff = now_rfc3339().1.saturating_sub(self.ttl_ms());
        let mut recovered = true;
        let mut events: Vec<Arc<Event>> = Vec::new();
        for read in snapshot.streams {
            recovered &= read.continues_from(since);
            for entry in read.entries {
                if entry.event.accepted_ms < cutoff {
                    recovered = false;
                } else {
                    events.push(entry.event);
                }
            }
        }
        events.sort_by_key(|e| e.seq);
        events.dedup_by_key(|e| e.seq);
        Ok((Replay { events, recovered, head }, lasts))
    }

    /// Waits until this node has handed the hub every event up to `lasts`, so the live copy of
    /// anything a resume read from history reaches the hub before the replay does (the hub then
    /// skips it) and never after it (a duplicate).
    async fn reached(&self, lasts: Vec<(String, u64)>) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        if self.subs.send(SubRequest::Reached(lasts, tx)).is_err() {
            return Err(EngineError::Stopped);
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(true)) => Ok(()),
            _ => Err(EngineError::Unavailable("redis pub/sub is behind or not connected".into())),
        }
    }

    /// Hands one event to the local hub (the subscription manager already made sure it is new)
    /// and keeps it for the receipt counts.
    fn deliver(&self, event: Arc<Event>, epoch: &str, hub: &HubHandle) {
        self.last_seq.fetch_max(event.seq, Ordering::AcqRel);
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
        let node_ms = millis(self.node_ttl);
        let now_ms = now_rfc3339().1;
        let beat = json!({"node": self.node, "stats": stats, "at_ms": now_ms});
        pipe.pset_ex(node_key(&self.node), beat.to_string(), node_ms).ignore();
        // The live-node index: score = when this node's entry expires; stale members go here.
        pipe.zadd(KEY_NODES, &self.node, now_ms + node_ms).ignore();
        pipe.zrembyscore(KEY_NODES, "-inf", now_ms).ignore();
        pipe.pexpire(KEY_NODES, node_ms as i64).ignore();
        let presence_key = presence_key(&self.node);
        // Atomic, so a reader never sees this node's presence between DEL and HSET.
        pipe.atomic();
        pipe.del(&presence_key).ignore();
        for (stream, entry) in &presence {
            pipe.hset(&presence_key, stream, json!(entry).to_string()).ignore();
        }
        pipe.pexpire(&presence_key, node_ms as i64).ignore();
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    /// Ids of the nodes whose heartbeat has not expired: one read of the node index.
    async fn live_nodes(&self) -> Result<Vec<String>, EngineError> {
        let mut conn = self.conn.clone();
        let now_ms = now_rfc3339().1;
        conn.zrangebyscore(KEY_NODES, now_ms, "+inf").await.map_err(unavailable)
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
        self.publish_now(batch, key).boxed()
    }

    fn replay(&self, streams: Vec<String>, since: Option<u64>) -> BoxFuture<'_, Result<Replay, EngineError>> {
        async move {
            // Live delivery for these streams must be on before history is read. A link that is
            // reconnecting gets the command timeout to come back, rather than fail the resume.
            if !self.linked_within(COMMAND_TIMEOUT).await {
                return Err(EngineError::Unavailable("redis pub/sub is not connected".into()));
            }
            let (replay, lasts) = self.read_streams(&streams, since).await?;
            self.reached(lasts).await?;
            Ok(replay)
        }
        .boxed()
    }

    fn history(&self, stream: String, since: u64, limit: usize) -> BoxFuture<'_, Result<Vec<Arc<Event>>, EngineError>> {
        async move {
            let mut conn = self.conn.clone();
            let entries: Vec<(String, HashMap<String, String>)> = conn
                .xrange_count(history_key(&stream), format!("{}-0", since + 1), "+", limit)
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
            let nodes = self.live_nodes().await.ok()?;
            let mut pipe = redis::pipe();
            for node in &nodes {
                pipe.hget(presence_key(node), &stream);
            }
            let mut conn = self.conn.clone();
            let entries: Vec<Option<String>> = pipe.query_async(&mut conn).await.ok()?;
            let mut users: HashMap<String, usize> = HashMap::new();
            let mut anonymous = 0;
            for text in entries.iter().flatten() {
                let Ok(entry) = serde_json::from_str::<PresenceSnapshot>(text) else { continue };
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
            let Ok(nodes) = self.live_nodes().await else { return Vec::new() };
            if nodes.is_empty() {
                return Vec::new();
            }
            let keys: Vec<String> = nodes.iter().map(|n| node_key(n)).collect();
            let mut conn = self.conn.clone();
            let Ok(beats) = conn.mget::<_, Vec<Option<String>>>(&keys).await else { return Vec::new() };
            let mut nodes: Vec<Value> =
                beats.iter().flatten().filter_map(|text| serde_json::from_str::<Value>(text).ok()).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, targets: &[&str], prev: &[u64]) -> Entry {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let payload = json!({
            "seq": seq, "epoch": "e1", "prev": prev, "id": format!("id{seq}"), "type": "t", "message": "",
            "data": {}, "timestamp": "2026-01-01T00:00:00Z", "targets": targets, "accepted_ms": 1,
        });
        Entry::parse(&payload.to_string()).expect("entry parses")
    }

    fn read(stream: &str, last: Option<u64>, entries: Vec<Entry>) -> StreamRead {
        StreamRead { stream: stream.into(), last, entries }
    }

    #[test]
    fn an_entry_knows_the_previous_seq_of_each_of_its_streams() {
        let e = entry(9, &["room", "user:a"], &[4, 7]);
        assert_eq!((e.prev_in("room"), e.prev_in("user:a"), e.prev_in("other")), (4, 7, 0));
        assert_eq!(e.epoch, "e1");
    }

    #[test]
    fn history_continues_from_a_position_only_when_its_first_entry_follows_it() {
        // room: 4 → 9 → 12, and only [9, 12] is still kept.
        let full = || read("room", Some(12), vec![entry(9, &["room"], &[4]), entry(12, &["room"], &[9])]);
        assert!(full().continues_from(4));
        assert!(full().continues_from(5), "a global position between two of the stream's events");
        assert!(!full().continues_from(3), "event 4 is gone (trimmed)");
        // Nothing after the position: complete unless the stream has a newer seq.
        assert!(read("room", Some(12), vec![]).continues_from(12));
        assert!(!read("room", Some(12), vec![]).continues_from(10), "expired with unseen events");
        assert!(read("room", None, vec![]).continues_from(10), "nothing ever published or all expired");
    }
}

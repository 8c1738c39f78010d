//! The node's one pub/sub connection: (re)connects with backoff, (re)subscribes the streams its
//! clients need, keeps a position per stream, fills every gap from history before going on, and
//! forwards each event to the hub once. One task does all of it in order, so a catch-up can never
//! race live delivery.
//!
//! Positions: each published payload carries, per target stream, that stream's previous seq
//! (`prev`). The node holds, per subscribed stream, the newest seq it has accounted for. A live
//! event whose `prev` is ahead of that position means events were missed: they are read from the
//! stream's history and delivered first. After each (re)connect every stream is read in one atomic
//! snapshot from its position. When history no longer holds what was missed (trimmed, expired, a
//! Redis that lost its data, a stream opened while the link was down) the stream's local clients
//! are closed with 4006 (resync) before anything newer reaches them, so their resume answers
//! `recovered: false` rather than skip the loss.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::PubSubSink;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{COMMAND_TIMEOUT, Entry, RedisEngine, Snapshot};
use crate::engine::EngineError;
use crate::hub::{Command, HubHandle};
use crate::protocol::BROADCAST;

/// Requests to the subscription manager, processed in order.
pub(super) enum SubRequest {
    Open(String),
    Close(String),
    /// Replies once every earlier request is confirmed by Redis (false while disconnected).
    Sync(oneshot::Sender<bool>),
    /// Replies true once this node has handed the hub every event up to these positions (a
    /// resume read them from history: the hub must get their live copies first, to skip them),
    /// false if the link is lost first.
    Reached(Want, oneshot::Sender<bool>),
}

/// Stream positions a resume waits for.
type Want = Vec<(String, u64)>;

/// Resumes waiting for the node's positions to reach what they read from history.
#[derive(Default)]
struct Waiters(Vec<(Want, oneshot::Sender<bool>)>);

impl Waiters {
    /// Answers every waiter whose positions are reached.
    fn release(&mut self, positions: &Positions) {
        if self.0.is_empty() {
            return;
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.0).into_iter().partition(|(want, _)| positions.reached(want));
        self.0 = waiting;
        for (_, reply) in done {
            let _ = reply.send(true);
        }
    }

    /// The link is lost: nobody's positions will be reached on it.
    fn fail(&mut self) {
        for (_, reply) in self.0.drain(..) {
            let _ = reply.send(false);
        }
    }
}

/// Seqs delivered lately, so an event that arrives through several streams, or again in a
/// catch-up, reaches the hub once.
const DELIVERED_WINDOW: usize = 65_536;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the node knows of each stream it listens to.
struct Positions {
    /// Epoch the positions belong to (`None` before the first connect).
    epoch: Option<String>,
    /// Subscribed stream → newest seq accounted for (`None`: not known yet).
    streams: HashMap<String, Option<u64>>,
    /// Streams opened while the link was down: what they missed meanwhile cannot be known.
    opened_offline: HashSet<String>,
    /// Seqs recently handed to the hub, oldest first.
    delivered: VecDeque<u64>,
    delivered_set: HashSet<u64>,
    /// When the link was lost (history older than its TTL may be gone without a trace).
    lost_at: Option<Instant>,
}

impl Positions {
    fn new() -> Self {
        Self {
            epoch: None,
            streams: HashMap::from([(BROADCAST.to_string(), None)]),
            opened_offline: HashSet::new(),
            delivered: VecDeque::new(),
            delivered_set: HashSet::new(),
            lost_at: None,
        }
    }

    /// True the first time `seq` is seen (in this epoch).
    fn first_time(&mut self, seq: u64) -> bool {
        if !self.delivered_set.insert(seq) {
            return false;
        }
        self.delivered.push_back(seq);
        if self.delivered.len() > DELIVERED_WINDOW
            && let Some(old) = self.delivered.pop_front()
        {
            self.delivered_set.remove(&old);
        }
        true
    }

    /// True when every stream's position is at least the given seq.
    fn reached(&self, want: &[(String, u64)]) -> bool {
        want.iter().all(|(s, seq)| self.streams.get(s).copied().flatten().is_some_and(|p| p >= *seq))
    }

    fn advance(&mut self, stream: &str, seq: u64) {
        if let Some(pos) = self.streams.get_mut(stream) {
            *pos = Some(pos.map_or(seq, |p| p.max(seq)));
        }
    }

    /// A new epoch: Redis lost its data, every position starts again.
    fn reset(&mut self, epoch: &str) {
        self.epoch = Some(epoch.to_string());
        for pos in self.streams.values_mut() {
            *pos = Some(0);
        }
        self.delivered.clear();
        self.delivered_set.clear();
    }
}

/// Owns the pub/sub connection. See the module doc.
pub(super) async fn subscription_manager(
    client: redis::Client,
    hub: HubHandle,
    engine: Weak<RedisEngine>,
    mut requests: mpsc::UnboundedReceiver<SubRequest>,
    linked: Arc<AtomicBool>,
) {
    let mut positions = Positions::new();
    let mut waiters = Waiters::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut connected = connect_pubsub(&client, positions.streams.keys()).await;
        if connected.is_some() {
            let Some(engine) = engine.upgrade() else { return };
            if let Err(e) = catch_up(&engine, &mut positions, &hub).await {
                tracing::warn!(error = %e, "catch-up after reconnect failed; retrying");
                connected = None;
            }
        }
        let Some((mut sink, mut stream)) = connected else {
            linked.store(false, Ordering::Release);
            waiters.fail();
            positions.lost_at.get_or_insert_with(Instant::now);
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    request = requests.recv() => match request {
                        None => return,
                        Some(request) => note_offline(&mut positions, request),
                    },
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        };
        backoff = MIN_BACKOFF;
        positions.lost_at = None;
        linked.store(true, Ordering::Release);
        tracing::info!(streams = positions.streams.len(), "redis pub/sub connected");
        loop {
            tokio::select! {
                biased;
                message = stream.next() => match message {
                    Some(message) => {
                        let (Ok(channel), Ok(payload)) =
                            (message.get_channel::<String>(), message.get_payload::<String>())
                        else {
                            continue;
                        };
                        let Some(engine) = engine.upgrade() else { return };
                        let stream_name = channel.strip_prefix(CHANNEL_PREFIX).unwrap_or(&channel);
                        if let Err(e) = on_message(&engine, &mut positions, &hub, stream_name, &payload).await {
                            tracing::warn!(error = %e, "filling a gap failed; reconnecting to catch up");
                            break;
                        }
                        waiters.release(&positions);
                    }
                    None => break,
                },
                request = requests.recv() => match request {
                    None => return,
                    Some(SubRequest::Open(s)) => {
                        if positions.streams.contains_key(&s) {
                            continue;
                        }
                        if sink.subscribe(channel_key(&s)).await.is_err() {
                            positions.streams.insert(s.clone(), None);
                            positions.opened_offline.insert(s);
                            break;
                        }
                        // Subscribed: everything after this read arrives live (and anything
                        // live it already covers is still delivered, once).
                        let Some(engine) = engine.upgrade() else { return };
                        match engine.snapshot(&[(s.clone(), None)]).await {
                            Ok(snapshot) => {
                                let last = snapshot.streams.first().and_then(|r| r.last).unwrap_or(0);
                                positions.streams.insert(s, Some(last));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "reading a new stream's position failed");
                                positions.streams.insert(s.clone(), None);
                                positions.opened_offline.insert(s);
                                break;
                            }
                        }
                    }
                    Some(SubRequest::Close(s)) => {
                        if s != BROADCAST
                            && positions.streams.remove(&s).is_some()
                            && sink.unsubscribe(channel_key(&s)).await.is_err()
                        {
                            break;
                        }
                    }
                    Some(SubRequest::Sync(reply)) => {
                        let _ = reply.send(true);
                    }
                    Some(SubRequest::Reached(want, reply)) => {
                        waiters.0.push((want, reply));
                        waiters.release(&positions);
                    }
                },
            }
        }
        linked.store(false, Ordering::Release);
        waiters.fail();
        positions.lost_at.get_or_insert_with(Instant::now);
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

/// A live event: fills the gap before it if its stream's `prev` is ahead of the position, then
/// delivers it unless it was already.
async fn on_message(
    engine: &RedisEngine,
    positions: &mut Positions,
    hub: &HubHandle,
    stream: &str,
    payload: &str,
) -> Result<(), EngineError> {
    let Some(entry) = Entry::parse(payload) else {
        tracing::warn!("unreadable event from redis");
        return Ok(());
    };
    if positions.epoch.as_deref() != Some(entry.epoch.as_str()) {
        // Redis lost its data under a live link (FLUSHALL): nothing before can be trusted.
        new_epoch(engine, positions, hub, &entry.epoch).await;
    }
    let seq = entry.event.seq;
    let prev = entry.prev_in(stream);
    if let Some(Some(pos)) = positions.streams.get(stream).copied()
        && prev > pos
        && seq > pos
    {
        let mut read = engine.snapshot(&[(stream.to_string(), Some(pos))]).await?;
        // Newer entries arrive live after this one, in order.
        for stream_read in &mut read.streams {
            stream_read.entries.retain(|e| e.event.seq < seq);
        }
        tracing::info!(stream, from = pos, to = prev, "filling a gap from history");
        deliver_snapshot(engine, positions, hub, read, &[(stream.to_string(), Some(pos))]).await;
    }
    positions.advance(stream, seq);
    if positions.first_time(seq) {
        engine.deliver(entry.event, &entry.epoch, hub);
    }
    Ok(())
}

/// After a (re)connect: one atomic read of every stream from its position; what history still
/// holds is delivered in seq order, the rest is resynced.
async fn catch_up(engine: &RedisEngine, positions: &mut Positions, hub: &HubHandle) -> Result<(), EngineError> {
    let reads: Vec<(String, Option<u64>)> = positions.streams.iter().map(|(s, p)| (s.clone(), *p)).collect();
    let snapshot = engine.snapshot(&reads).await?;
    if positions.epoch.as_deref() != Some(snapshot.epoch.as_str()) {
        let first = positions.epoch.is_none();
        if first {
            positions.epoch = Some(snapshot.epoch.clone());
            engine.set_epoch(&snapshot.epoch);
        } else {
            new_epoch(engine, positions, hub, &snapshot.epoch).await;
            // Every client was closed: only the new positions matter.
            for read in &snapshot.streams {
                positions.streams.insert(read.stream.clone(), Some(read.last.unwrap_or(0)));
            }
            positions.opened_offline.clear();
            return Ok(());
        }
    }
    let outage_beyond_ttl = positions.lost_at.is_some_and(|t| t.elapsed() > engine.ttl);
    let mut resync: Vec<String> = std::mem::take(&mut positions.opened_offline).into_iter().collect();
    if outage_beyond_ttl {
        // History and positions of an idle stream may have expired without a trace.
        resync.extend(positions.streams.iter().filter(|(_, p)| p.is_some()).map(|(s, _)| s.clone()));
    }
    if !resync.is_empty() {
        resync_streams(hub, resync).await;
    }
    deliver_snapshot(engine, positions, hub, snapshot, &reads).await;
    Ok(())
}

/// Delivers the entries of a snapshot in seq order, once each, after closing the clients of any
/// stream whose history does not continue from its position; then advances the positions.
async fn deliver_snapshot(
    engine: &RedisEngine,
    positions: &mut Positions,
    hub: &HubHandle,
    snapshot: Snapshot,
    reads: &[(String, Option<u64>)],
) {
    let mut broken = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut lasts = Vec::new();
    for (read, (_, from)) in snapshot.streams.into_iter().zip(reads) {
        let last = read.last.unwrap_or(0);
        match from {
            // Position not known (a stream opened before this read): start from its newest seq.
            None => lasts.push((read.stream, last)),
            Some(from) => {
                if !read.continues_from(*from) || last < *from {
                    tracing::warn!(stream = %read.stream, from, last, "events missed beyond history: resync");
                    broken.push(read.stream.clone());
                }
                let newest = read.entries.last().map_or(last, |e| e.event.seq).max(*from);
                lasts.push((read.stream, newest));
                entries.extend(read.entries);
            }
        }
    }
    if !broken.is_empty() {
        resync_streams(hub, broken).await;
    }
    entries.sort_by_key(|e| e.event.seq);
    if !entries.is_empty() {
        tracing::info!(events = entries.len(), "caught up from history");
    }
    for entry in entries {
        if positions.first_time(entry.event.seq) {
            engine.deliver(entry.event, &entry.epoch, hub);
        }
    }
    for (stream, last) in lasts {
        if let Some(pos) = positions.streams.get_mut(&stream) {
            *pos = Some(last);
        }
    }
}

/// Redis lost its data: every local client is told, and positions start over.
async fn new_epoch(engine: &RedisEngine, positions: &mut Positions, hub: &HubHandle, epoch: &str) {
    tracing::warn!(epoch, "redis epoch changed (its data was reset): every client must resync");
    positions.reset(epoch);
    engine.set_epoch(epoch);
    resync_streams(hub, vec![BROADCAST.to_string()]).await;
}

/// Closes the local clients of `streams` with the resync code, and waits until the hub did, so
/// nothing newer reaches them first.
async fn resync_streams(hub: &HubHandle, streams: Vec<String>) {
    match hub.ask(|reply| Command::Resync { streams: streams.clone(), reply }).await {
        Ok(closed) => tracing::warn!(?streams, closed, "clients told to resync"),
        Err(e) => tracing::debug!(error = %e, "hub gone"),
    }
}

const CHANNEL_PREFIX: &str = "wshub:c:";

fn channel_key(stream: &str) -> String {
    format!("{CHANNEL_PREFIX}{stream}")
}

async fn connect_pubsub<'a>(
    client: &redis::Client,
    streams: impl Iterator<Item = &'a String>,
) -> Option<(PubSubSink, redis::aio::PubSubStream)> {
    let pubsub = match tokio::time::timeout(COMMAND_TIMEOUT, client.get_async_pubsub()).await {
        Ok(Ok(pubsub)) => pubsub,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "redis pub/sub connect failed");
            return None;
        }
        Err(_) => return None,
    };
    let (mut sink, stream) = pubsub.split();
    let channels: Vec<String> = streams.map(|s| channel_key(s)).collect();
    match tokio::time::timeout(COMMAND_TIMEOUT, sink.subscribe(&channels)).await {
        Ok(Ok(())) => Some((sink, stream)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "redis subscribe failed");
            None
        }
        Err(_) => None,
    }
}

/// While disconnected, requests only change what to subscribe on reconnect.
fn note_offline(positions: &mut Positions, request: SubRequest) {
    match request {
        SubRequest::Open(s) => {
            if !positions.streams.contains_key(&s) {
                positions.streams.insert(s.clone(), None);
                positions.opened_offline.insert(s);
            }
        }
        SubRequest::Close(s) => {
            if s != BROADCAST {
                positions.streams.remove(&s);
                positions.opened_offline.remove(&s);
            }
        }
        SubRequest::Sync(reply) | SubRequest::Reached(_, reply) => {
            let _ = reply.send(false);
        }
    }
}

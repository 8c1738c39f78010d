//! The hub actor: owns every connection's queue and every stream's subscriber set, and fans
//! events out. It is fed by two channels: commands (bounded; from connections and HTTP handlers)
//! and deliveries (unbounded, so the engine can hand over events in seq order without awaiting).
//!
//! The hub never awaits a client: it pushes into each send queue (bounded in bytes, see `queue`)
//! without waiting, and a queue over its bound means a slow consumer, dropped with close code 4003.
//!
//! Resume is exact because subscribing and replaying are one step per stream (see `resume`);
//! `queries` answers the admin endpoints.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::Utf8Bytes;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use crate::auth::{Identity, may_subscribe};
use crate::connection::ConnShared;
use crate::engine::{Engine, EngineError};
use crate::history::Replay;
use crate::metrics::Metrics;
use crate::namespace::Namespaces;
use crate::protocol::{BROADCAST, CloseReason, Delivery, error_frame, now_rfc3339, to_frame};
use crate::queue::PushError;

mod queries;
mod resume;

pub use queries::{ClientInfo, HubStats, PresenceSnapshot};
pub use resume::Resume;
use resume::{PendingKind, Resuming};

/// A connection's number, unique in this process.
pub type ConnId = u64;

/// Most channels one connection may subscribe to (besides its automatic streams).
pub const MAX_SUBSCRIPTIONS: usize = 256;

/// Capacity of the command channel.
const COMMAND_QUEUE: usize = 4096;

/// Bytes a queued item costs besides its frame: its slot, and the box or the frame's header.
pub const ITEM_OVERHEAD: usize = 64;

/// What goes into a connection's send queue.
#[derive(Debug)]
pub enum Outbound {
    /// A control frame (`hub:*`). Boxed to keep queue slots at 16 bytes.
    Frame(Box<Utf8Bytes>),
    /// A live event: frame `index` of the delivery (announced by the fan-out), shared with every
    /// other connection that receives it; the writer counts it as written and samples its latency.
    Event(Arc<Delivery>, u32),
    /// A replayed event: like `Event`, shared the same way, but not a latency sample.
    Replayed(Arc<Delivery>, u32),
}

impl Outbound {
    /// A single control frame.
    pub fn frame(frame: Utf8Bytes) -> Self {
        Self::Frame(Box::new(frame))
    }

    /// A replayed event: frame `index` of the event's shared delivery, announced to it so the
    /// frame is serialized once for every connection that replays or receives it.
    pub fn replayed(delivery: Arc<Delivery>, index: u32) -> Self {
        delivery.expect(index, 1);
        Self::Replayed(delivery, index)
    }

    /// The event this item carries, if any.
    pub fn delivery(&self) -> Option<(&Arc<Delivery>, u32)> {
        match self {
            Self::Frame(_) => None,
            Self::Event(delivery, index) | Self::Replayed(delivery, index) => Some((delivery, *index)),
        }
    }

    /// Bytes this item counts for in a send queue: the frame's length plus [`ITEM_OVERHEAD`],
    /// so that many tiny frames are bounded too.
    pub fn cost(&self) -> usize {
        ITEM_OVERHEAD
            + match self {
                Self::Frame(frame) => frame.len(),
                Self::Event(delivery, index) | Self::Replayed(delivery, index) => delivery.frame_len(*index),
            }
    }
}

/// A connection being handed to the hub.
pub struct NewConn {
    /// Its number.
    pub id: ConnId,
    /// Who it is.
    pub identity: Arc<Identity>,
    /// Close signal and activity shared with its tasks.
    pub shared: Arc<ConnShared>,
    /// Peer address.
    pub remote: SocketAddr,
    /// Resume of the automatic streams, if asked.
    pub resume: Option<Resume>,
}

/// Requests to the hub.
pub enum Command {
    /// A new connection.
    Register(NewConn),
    /// A connection ended.
    Unregister(ConnId),
    /// Join a channel (already permission-checked), optionally resuming.
    Subscribe {
        /// Connection.
        id: ConnId,
        /// Channel.
        channel: String,
        /// Resume point.
        resume: Option<Resume>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Connection.
        id: ConnId,
        /// Channel.
        channel: String,
    },
    /// A connection proved a (new) identity with an `auth` frame.
    Identify {
        /// Connection.
        id: ConnId,
        /// The new identity.
        identity: Arc<Identity>,
    },
    /// History for a pending resume arrived.
    Replayed {
        /// Connection.
        id: ConnId,
        /// Which pending resume.
        ticket: u64,
        /// The history, or why it could not be read.
        result: Result<Replay, EngineError>,
    },
    /// Disconnect by client id or user; replies with how many were closed.
    Kick {
        /// Client id to close.
        client_id: Option<String>,
        /// User whose connections to close.
        user: Option<String>,
        /// Reply.
        reply: oneshot::Sender<usize>,
    },
    /// List connections.
    Clients {
        /// Rows to skip.
        offset: usize,
        /// Rows to return.
        limit: usize,
        /// Reply: total and the page.
        reply: oneshot::Sender<(usize, Vec<ClientInfo>)>,
    },
    /// Streams and their local subscriber counts.
    Channels {
        /// Reply.
        reply: oneshot::Sender<Vec<(String, usize)>>,
    },
    /// Users in a stream with their connection counts, and anonymous connections.
    Presence {
        /// Stream.
        channel: String,
        /// Reply: (user, connections) and the anonymous count.
        reply: oneshot::Sender<(Vec<(String, usize)>, usize)>,
    },
    /// Counts.
    Stats {
        /// Reply.
        reply: oneshot::Sender<HubStats>,
    },
    /// Counts and per-stream presence (users and anonymous count), for cluster heartbeats.
    Snapshot {
        /// Reply.
        reply: oneshot::Sender<(HubStats, HashMap<String, PresenceSnapshot>)>,
    },
    /// Sends a control frame to the local subscribers of a stream, bypassing the engine (no seq,
    /// no history): live operator data such as the dashboard's `hub:stats`.
    Control {
        /// Stream.
        stream: String,
        /// The frame.
        frame: Utf8Bytes,
    },
    /// Cluster mode: closes every connection in any of `streams` (`broadcast`: all) with
    /// [`CloseReason::Resync`], because the node missed events of them; replies when done, so the
    /// engine delivers nothing newer before the affected clients are closed.
    Resync {
        /// Streams whose events were missed.
        streams: Vec<String>,
        /// Reply: connections closed.
        reply: oneshot::Sender<usize>,
    },
    /// Close every connection with 1001 and stop.
    Shutdown,
}

/// Events handed over by the engine, with an optional reply of recipients per event.
pub struct DeliverMsg {
    /// The events, in seq order.
    pub deliveries: Vec<Arc<Delivery>>,
    /// Recipients per event.
    pub reply: Option<oneshot::Sender<Vec<usize>>>,
}

/// A stream's local subscriber count after a change, for an observer such as webhooks: every
/// change of a `user:` stream (a user's connections), the first join and last leave of others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCount {
    /// The stream.
    pub stream: String,
    /// Local subscribers now.
    pub subscribers: usize,
}

/// Cloneable handle to the hub.
#[derive(Clone)]
pub struct HubHandle {
    commands: mpsc::Sender<Command>,
    deliveries: mpsc::UnboundedSender<DeliverMsg>,
    next_id: Arc<AtomicU64>,
    node: Arc<str>,
}

impl HubHandle {
    /// Sends a command; false when the hub has stopped. Tries without waiting first; the
    /// waiting send is boxed because its future is large and would otherwise sit in the state of
    /// every connection task.
    pub async fn send(&self, command: Command) -> bool {
        match self.commands.try_send(command) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(command)) => Box::pin(self.commands.send(command)).await.is_ok(),
        }
    }

    /// Sends a query and waits for its reply.
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        if !self.send(make(tx)).await {
            return Err(EngineError::Stopped);
        }
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Hands events to the hub in order without waiting.
    pub fn deliver(
        &self,
        deliveries: Vec<Arc<Delivery>>,
        reply: Option<oneshot::Sender<Vec<usize>>>,
    ) -> Result<(), EngineError> {
        self.deliveries.send(DeliverMsg { deliveries, reply }).map_err(|_| EngineError::Stopped)
    }

    /// A fresh connection number.
    pub fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The public client id of a connection.
    pub fn client_id(&self, id: ConnId) -> String {
        format!("{}-{id}", self.node)
    }

    /// This process's node id (the client-id prefix).
    pub fn node(&self) -> &str {
        &self.node
    }
}

/// The receiving ends of the hub's channels, consumed by [`Hub::run`].
pub struct HubInbox {
    commands: mpsc::Receiver<Command>,
    deliveries: mpsc::UnboundedReceiver<DeliverMsg>,
}

/// Creates the hub's channels: the handle for everyone, the inbox for the actor.
pub fn channel(node: &str) -> (HubHandle, HubInbox) {
    let (ctx, crx) = mpsc::channel(COMMAND_QUEUE);
    let (dtx, drx) = mpsc::unbounded_channel();
    let handle = HubHandle { commands: ctx, deliveries: dtx, next_id: Arc::new(AtomicU64::new(0)), node: node.into() };
    (handle, HubInbox { commands: crx, deliveries: drx })
}

struct Conn {
    shared: Arc<ConnShared>,
    identity: Arc<Identity>,
    remote: SocketAddr,
    connected_at_ms: u64,
    channels: Vec<String>,
    /// The fan-out round of the last event offered, so an event matching several of the
    /// connection's streams goes out once (rounds never repeat, unlike seqs after a reset).
    last_round: u64,
    /// Resumes in progress; boxed because most connections never have one.
    resuming: Option<Box<Resuming>>,
    /// Events of the automatic streams after this seq reached this connection through them
    /// (live or by the connect replay), so a channel replay must not send them again.
    auto_floor: u64,
}

enum Offer {
    Skipped,
    Sent,
    Dropped(CloseReason),
}

impl From<Result<(), PushError>> for Offer {
    fn from(result: Result<(), PushError>) -> Self {
        match result {
            Ok(()) => Self::Sent,
            Err(PushError::Full) => Self::Dropped(CloseReason::SlowConsumer),
            Err(PushError::Closed) => Self::Dropped(CloseReason::GoingAway),
        }
    }
}

impl Conn {
    /// Offers one event through `stream`; at most once per event however many streams match.
    fn offer(&mut self, delivery: &Arc<Delivery>, index: u32, stream: &str, round: u64) -> Offer {
        let seq = delivery.event.seq;
        if self.last_round == round {
            return Offer::Skipped;
        }
        self.last_round = round;
        if let Some(resuming) = &mut self.resuming {
            if let Some(p) = resuming.pending.iter_mut().find(|p| p.streams.iter().any(|s| s == stream)) {
                p.buffer.push((Arc::clone(delivery), index));
                return Offer::Sent;
            }
            resuming.live_seqs.push(seq);
        }
        self.push(Outbound::Event(Arc::clone(delivery), index))
    }

    fn push(&self, out: Outbound) -> Offer {
        Offer::from(self.shared.queue.push(out))
    }

    /// Queues a resume reply with its events (see [`crate::queue::SendQueue::push_reply`]).
    fn push_reply(&self, items: Vec<Outbound>) -> Offer {
        Offer::from(self.shared.queue.push_reply(items))
    }

    /// Ends the resume bookkeeping once no resume is pending, so nothing (such as the seqs
    /// sent live meanwhile) keeps growing for a connection that has nothing left to resume.
    fn settle_resuming(&mut self) {
        if self.resuming.as_ref().is_some_and(|r| r.pending.is_empty() && r.deferred.is_empty()) {
            self.resuming = None;
        }
    }

    fn in_stream(&self, stream: &str) -> bool {
        self.channels.iter().any(|c| c == stream) || self.identity.auto_streams().iter().any(|s| s == stream)
    }
}

/// The hub actor's state.
pub struct Hub {
    conns: HashMap<ConnId, Conn>,
    streams: HashMap<String, HashSet<ConnId>>,
    engine: Arc<dyn Engine>,
    handle: HubHandle,
    metrics: Arc<Metrics>,
    namespaces: Namespaces,
    next_ticket: u64,
    /// Fan-out rounds so far (one per delivered event).
    round: u64,
    /// Told of stream counts without waiting (see [`StreamCount`]).
    observer: Option<mpsc::Sender<StreamCount>>,
}

impl Hub {
    /// A hub delivering for `engine`.
    pub fn new(handle: HubHandle, engine: Arc<dyn Engine>, metrics: Arc<Metrics>, namespaces: Namespaces) -> Self {
        Self {
            conns: HashMap::new(),
            streams: HashMap::new(),
            engine,
            handle,
            metrics,
            namespaces,
            next_ticket: 0,
            round: 0,
            observer: None,
        }
    }

    /// Reports stream counts to `observer` with `try_send`: the hub never waits for it.
    pub fn with_observer(mut self, observer: mpsc::Sender<StreamCount>) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, stream: &str, subscribers: usize) {
        let Some(observer) = &self.observer else {
            return;
        };
        if subscribers > 1 && !stream.starts_with("user:") {
            return;
        }
        if observer.try_send(StreamCount { stream: stream.to_string(), subscribers }).is_err() {
            tracing::warn!(stream, "presence observer queue full: a stream count was not reported");
        }
    }

    /// Runs until a `Shutdown` command or until every handle is dropped.
    pub async fn run(mut self, mut inbox: HubInbox) {
        loop {
            tokio::select! {
                biased;
                Some(msg) = inbox.deliveries.recv() => self.on_deliver(msg),
                command = inbox.commands.recv() => match command {
                    Some(Command::Shutdown) | None => break,
                    Some(command) => self.on_command(command),
                },
            }
        }
        for (_, conn) in self.conns.drain() {
            conn.shared.close(CloseReason::GoingAway);
        }
        self.metrics.connections.set(0);
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Register(new) => self.register(new),
            Command::Unregister(id) => self.drop_conn(id, None),
            Command::Subscribe { id, channel, resume } => self.subscribe(id, channel, resume),
            Command::Unsubscribe { id, channel } => self.unsubscribe(id, &channel),
            Command::Identify { id, identity } => self.identify(id, identity),
            Command::Replayed { id, ticket, result } => self.replayed(id, ticket, result),
            Command::Kick { client_id, user, reply } => {
                let _ = reply.send(self.kick(client_id.as_deref(), user.as_deref()));
            }
            Command::Clients { offset, limit, reply } => {
                let _ = reply.send(self.clients(offset, limit));
            }
            Command::Channels { reply } => {
                let _ = reply.send(self.channel_counts());
            }
            Command::Presence { channel, reply } => {
                let _ = reply.send(self.presence(&channel));
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Snapshot { reply } => {
                let presence = self
                    .streams
                    .keys()
                    .map(String::as_str)
                    .chain([BROADCAST])
                    .map(|s| {
                        let (users, anonymous) = self.presence(s);
                        (s.to_string(), PresenceSnapshot { users, anonymous })
                    })
                    .collect();
                let _ = reply.send((self.stats(), presence));
            }
            Command::Control { stream, frame } => self.control(&stream, &frame),
            Command::Resync { streams, reply } => {
                let _ = reply.send(self.resync(&streams));
            }
            Command::Shutdown => {}
        }
    }

    fn on_deliver(&mut self, msg: DeliverMsg) {
        let counts: Vec<usize> = msg.deliveries.iter().map(|d| self.deliver(d)).collect();
        if let Some(reply) = msg.reply {
            let _ = reply.send(counts);
        }
    }

    /// Fans one event out to every connection in any of its target streams, once each.
    fn deliver(&mut self, d: &Arc<Delivery>) -> usize {
        self.round += 1;
        let round = self.round;
        let skip = d.event.exclude.as_deref().and_then(|c| self.local_id(c));
        let mut sent = 0;
        let mut dropped = Vec::new();
        let mut offer = |id: ConnId, conn: &mut Conn, stream: &str, index: u32| {
            if Some(id) == skip {
                return;
            }
            match conn.offer(d, index, stream, round) {
                Offer::Skipped => {}
                Offer::Sent => sent += 1,
                Offer::Dropped(reason) => dropped.push((id, reason)),
            }
        };
        for (index, target) in (0u32..).zip(&d.event.targets) {
            // Announced before fanning out; a frame for several connections is serialized here,
            // once, and each writer takes a pointer to it.
            let local =
                if target == BROADCAST { self.conns.len() } else { self.streams.get(target).map_or(0, HashSet::len) };
            d.expect(index, u32::try_from(local).unwrap_or(u32::MAX));
            if local > 1 {
                d.prepare(index);
            }
            if target == BROADCAST {
                for (id, conn) in &mut self.conns {
                    offer(*id, conn, target, index);
                }
            } else if let Some(subscribers) = self.streams.get(target) {
                for id in subscribers {
                    if let Some(conn) = self.conns.get_mut(id) {
                        offer(*id, conn, target, index);
                    }
                }
            }
        }
        for (id, reason) in dropped {
            self.drop_conn(id, Some(reason));
        }
        self.metrics.events_published.inc();
        self.metrics.deliveries.inc_by(sent as u64);
        sent
    }

    fn local_id(&self, client_id: &str) -> Option<ConnId> {
        let rest = client_id.strip_prefix(self.handle.node())?.strip_prefix('-')?;
        rest.parse().ok()
    }

    fn register(&mut self, new: NewConn) {
        let id = new.id;
        let (_, now_ms) = now_rfc3339();
        let conn = Conn {
            shared: new.shared,
            identity: new.identity,
            remote: new.remote,
            connected_at_ms: now_ms,
            channels: Vec::new(),
            last_round: 0,
            resuming: None,
            auto_floor: match &new.resume {
                Some(r) if r.epoch.as_deref() == Some(self.engine.epoch().as_str()) => r.since,
                _ => self.engine.current_seq(),
            },
        };
        let auto = conn.identity.auto_streams();
        self.conns.insert(id, conn);
        for stream in auto.iter().filter(|s| *s != BROADCAST) {
            self.join(id, stream);
        }
        self.metrics.connections.set(self.conns.len() as i64);
        self.metrics.connections_total.inc();
        match new.resume {
            Some(resume) => self.start_pending(id, PendingKind::Connect, auto, resume),
            // A clustered engine confirms the node's subscriptions first, so nothing published
            // after `hub:connected` can be missed.
            None if self.engine.confirms_subscriptions() => {
                self.start_pending_since(id, PendingKind::Connect, auto, None, true);
            }
            None => {
                let frame = self.connected_frame(id, None, 0);
                self.push_or_drop(id, Outbound::frame(frame));
                self.mark_greeted(id);
            }
        }
    }

    fn subscribe(&mut self, id: ConnId, channel: String, resume: Option<Resume>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(resuming) = conn.resuming.as_mut()
            && resuming.pending.iter().any(|p| matches!(p.kind, PendingKind::Connect))
        {
            resuming.deferred.push((channel, resume));
            return;
        }
        let in_progress = conn
            .resuming
            .as_ref()
            .is_some_and(|r| r.pending.iter().any(|p| matches!(&p.kind, PendingKind::Subscribe(c) if *c == channel)));
        if in_progress {
            let msg = "a subscribe to this channel is still being answered";
            self.push_or_drop(id, Outbound::frame(error_frame("busy", msg, Some(&channel))));
            return;
        }
        let known = conn.in_stream(&channel);
        if !known && conn.channels.len() >= MAX_SUBSCRIPTIONS {
            let msg = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
            self.push_or_drop(id, Outbound::frame(error_frame("limit", &msg, Some(&channel))));
            return;
        }
        if !known {
            conn.channels.push(channel.clone());
            self.join(id, &channel);
        }
        let (since, epoch_ok) = match &resume {
            Some(r) => (Some(r.since), r.epoch.as_deref() == Some(self.engine.epoch().as_str())),
            None => (None, true),
        };
        self.start_pending_since(id, PendingKind::Subscribe(channel.clone()), vec![channel], since, epoch_ok);
    }

    fn unsubscribe(&mut self, id: ConnId, channel: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let frame = match conn.channels.iter().position(|c| c == channel) {
            Some(index) => {
                conn.channels.swap_remove(index);
                if let Some(resuming) = &mut conn.resuming {
                    resuming.pending.retain(|p| !matches!(&p.kind, PendingKind::Subscribe(c) if c == channel));
                }
                conn.settle_resuming();
                self.leave(id, channel);
                to_frame(&json!({"type": "hub:unsubscribed", "channel": channel}))
            }
            None if conn.identity.auto_streams().iter().any(|s| s == channel) => {
                error_frame("forbidden", "automatic streams cannot be left", Some(channel))
            }
            None => error_frame("not_subscribed", "not subscribed to this channel", Some(channel)),
        };
        self.push_or_drop(id, Outbound::frame(frame));
    }

    fn identify(&mut self, id: ConnId, identity: Arc<Identity>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let old: HashSet<String> = conn.identity.auto_streams().into_iter().collect();
        let new: HashSet<String> = identity.auto_streams().into_iter().collect();
        if new.difference(&old).next().is_some() {
            // The new automatic streams' earlier events never reached this connection.
            conn.auto_floor = conn.auto_floor.max(self.engine.current_seq());
        }
        conn.identity = identity;
        // The new token may allow less: leave what it no longer permits.
        let revoked: Vec<String> = conn
            .channels
            .iter()
            .filter(|c| may_subscribe(&conn.identity, c, &self.namespaces).is_err())
            .cloned()
            .collect();
        conn.channels.retain(|c| !revoked.contains(c));
        let frame = to_frame(&json!({
            "type": "hub:authenticated",
            "user": conn.identity.user,
            "role": conn.identity.role(),
            "roles": conn.identity.roles,
            "exp": conn.identity.exp,
            "channels": conn.identity.auto_streams(),
        }));
        for stream in old.difference(&new) {
            self.leave(id, stream);
        }
        for stream in new.difference(&old) {
            self.join(id, stream);
        }
        self.push_or_drop(id, Outbound::frame(frame));
        for channel in revoked {
            self.leave(id, &channel);
            let frame = to_frame(
                &json!({"type": "hub:unsubscribed", "channel": channel, "reason": "forbidden by the new token"}),
            );
            self.push_or_drop(id, Outbound::frame(frame));
        }
    }

    fn join(&mut self, id: ConnId, stream: &str) {
        if stream == BROADCAST {
            return;
        }
        let subscribers = self.streams.entry(stream.to_string()).or_default();
        let changed = subscribers.insert(id);
        let count = subscribers.len();
        if count == 1 {
            self.engine.stream_opened(stream);
            self.metrics.channels.set(self.streams.len() as i64);
        }
        if changed {
            self.observe(stream, count);
        }
        self.presence_event("hub:join", id, stream);
    }

    fn leave(&mut self, id: ConnId, stream: &str) {
        let Some(subscribers) = self.streams.get_mut(stream) else {
            return;
        };
        let changed = subscribers.remove(&id);
        let count = subscribers.len();
        if count == 0 {
            self.streams.remove(stream);
            self.engine.stream_closed(stream);
            self.metrics.channels.set(self.streams.len() as i64);
        }
        if changed {
            self.observe(stream, count);
        }
        self.presence_event("hub:leave", id, stream);
    }

    /// Tells a presence-enabled channel that a user's first connection joined or last one left.
    fn presence_event(&mut self, kind: &str, id: ConnId, stream: &str) {
        if !self.namespaces.find(stream).is_some_and(|ns| ns.presence) {
            return;
        }
        let Some(user) = self.conns.get(&id).and_then(|c| c.identity.user.clone()) else {
            return;
        };
        let Some(subscribers) = self.streams.get(stream) else {
            return;
        };
        let others = subscribers.iter().filter(|s| **s != id);
        let user_count =
            others.clone().filter(|s| self.conns.get(s).and_then(|c| c.identity.user.as_ref()) == Some(&user)).count();
        if user_count > 0 {
            return;
        }
        let frame = to_frame(&json!({"type": kind, "channel": stream, "user": user}));
        let targets: Vec<ConnId> = others.copied().collect();
        for target in targets {
            self.push_or_drop(target, Outbound::frame(frame.clone()));
        }
    }

    /// Queues a control frame to every local subscriber of `stream`.
    fn control(&mut self, stream: &str, frame: &Utf8Bytes) {
        let targets: Vec<ConnId> = self.streams.get(stream).map(|s| s.iter().copied().collect()).unwrap_or_default();
        for id in targets {
            self.push_or_drop(id, Outbound::frame(frame.clone()));
        }
    }

    fn resync(&mut self, streams: &[String]) -> usize {
        let ids: Vec<ConnId> = if streams.iter().any(|s| s == BROADCAST) {
            self.conns.keys().copied().collect()
        } else {
            let ids: HashSet<ConnId> = streams.iter().filter_map(|s| self.streams.get(s)).flatten().copied().collect();
            ids.into_iter().collect()
        };
        for id in &ids {
            self.drop_conn(*id, Some(CloseReason::Resync));
        }
        ids.len()
    }

    fn push_or_drop(&mut self, id: ConnId, out: Outbound) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let Offer::Dropped(reason) = conn.push(out) {
            self.drop_conn(id, Some(reason));
        }
    }

    /// Lets the connection's reader answer frames, now that `hub:connected` is queued first.
    fn mark_greeted(&self, id: ConnId) {
        if let Some(conn) = self.conns.get(&id) {
            conn.shared.mark_greeted();
        }
    }

    fn push_reply_or_drop(&mut self, id: ConnId, items: Vec<Outbound>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let Offer::Dropped(reason) = conn.push_reply(items) {
            self.drop_conn(id, Some(reason));
        }
    }

    /// The one exit point of a connection: out of every stream, closed with `reason` if given.
    fn drop_conn(&mut self, id: ConnId, reason: Option<CloseReason>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let streams: Vec<String> =
            conn.identity.auto_streams().into_iter().chain(conn.channels.iter().cloned()).collect();
        // Leave while still registered: presence events need the leaver's identity.
        for stream in &streams {
            self.leave(id, stream);
        }
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        if let Some(reason) = reason {
            if reason == CloseReason::SlowConsumer {
                self.metrics.slow_consumers.inc();
                tracing::warn!(client = %self.handle.client_id(id), user = ?conn.identity.user, "slow consumer disconnected");
            }
            conn.shared.close(reason);
        }
        self.metrics.connections.set(self.conns.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::NewEvent;
    use crate::engine::memory::{MemoryEngine, stamp};

    #[tokio::test]
    async fn unsubscribing_before_the_resume_answer_leaves_no_state_that_grows_per_event() {
        let config = Config::for_tests();
        let (handle, _inbox) = channel("test");
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let engine = Arc::new(MemoryEngine::new(handle.clone(), &config, Arc::clone(&metrics)).expect("engine"));
        let epoch = engine.epoch();
        let mut hub = Hub::new(handle, engine, metrics, config.namespaces.clone());
        let shared = Arc::new(ConnShared::new(crate::queue::test_limits(1 << 20)));
        let remote = SocketAddr::from(([127, 0, 0, 1], 1));
        hub.register(NewConn { id: 1, identity: Identity::default().shared(), shared, remote, resume: None });
        hub.subscribe(1, "gone".into(), Some(Resume { since: 0, epoch: Some(epoch.clone()) }));
        assert!(hub.conns[&1].resuming.is_some(), "the resume is pending");
        hub.unsubscribe(1, "gone");
        for seq in 1..=1000 {
            let new = NewEvent {
                kind: "tick".into(),
                message: String::new(),
                data: crate::protocol::empty_object(),
                targets: Vec::new(),
                from: None,
                exclude: None,
            };
            let event = Arc::new(stamp(new, seq, "2026-01-01T00:00:00Z", 0));
            assert_eq!(hub.deliver(&Delivery::shared(&event, &epoch)), 1);
        }
        assert!(hub.conns[&1].resuming.is_none(), "resume state outlived the last pending resume");
    }
}

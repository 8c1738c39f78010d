//! One WebSocket connection: a reader (this task) and a writer (spawned). Only the writer writes.
//! The reader enforces the size limit and keep-alive deadline and turns frames into hub commands;
//! the writer drains the bounded send queue, flushing a backlog with one write, and pings.
//! Either side ending stops the other through the shared close signal.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, StreamExt};
use serde_json::json;
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument;

use crate::app::AppState;
use crate::auth::{AuthError, EXP_LEEWAY_S, Identity, check_operator, may_subscribe};
use crate::engine::{NewEvent, Published};
use crate::hub::{Command, ConnId, NewConn, Outbound, Resume};
use crate::metrics::Metrics;
use crate::protocol::{ClientMessage, CloseReason, error_frame, now_rfc3339, to_frame, validate_channel};
use crate::queue::{PushError, QueueLimits, SendQueue};

/// The keep-alive and write timings of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often to ping.
    pub ping_interval: Duration,
    /// Silence after which the client is dropped.
    pub pong_timeout: Duration,
    /// Longest time one socket write may take.
    pub write_timeout: Duration,
}

/// Runs a write, arming the timeout only if it does not complete at once (most writes to a
/// socket with buffer space do, and a timer per write costs more than the write).
async fn bounded<F>(limit: Duration, write: F) -> Result<(), ()>
where
    F: Future<Output = Result<(), axum::Error>>,
{
    tokio::pin!(write);
    match futures_util::poll!(&mut write) {
        std::task::Poll::Ready(result) => result.map_err(|_| ()),
        std::task::Poll::Pending => match timeout(limit, write).await {
            Ok(result) => result.map_err(|_| ()),
            Err(_) => Err(()),
        },
    }
}

/// Most frames the writer sends with one flush ...
const MAX_BATCH: usize = 64;
/// ... and most bytes (or one frame, if larger): what a connection holds outside its queue.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Client frames a connection may send per second on average ...
const FRAMES_PER_S: f64 = 50.0;
/// ... and in a burst (a page resubscribing many channels after a reconnect).
const FRAME_BURST: f64 = 300.0;
/// Event ids a connection remembers having acknowledged.
const ACK_MEMORY: usize = 256;
/// Time allowed for the close frame once a connection is being closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Seqs of the last events written to a connection; only those can be acknowledged by it.
const WRITTEN_MEMORY: usize = 64;

/// State shared by a connection's two tasks and the hub: the close signal, last activity, and
/// the recently written events. Kept small: every idle connection holds one.
pub struct ConnShared {
    /// Frames waiting for the writer.
    pub queue: SendQueue,
    stopped: AtomicBool,
    /// The peer sent a close frame: the writer must flush the echo tungstenite queued for it.
    peer_closed: AtomicBool,
    /// The hub queued `hub:connected`: until then the reader answers nothing, so it stays first.
    greeted: AtomicBool,
    wake: Notify,
    reason: AtomicU16,
    /// When the connection opened, on tokio's clock (keep-alive is tested with paused time).
    opened: Instant,
    /// Milliseconds after `opened` at which the last frame was received.
    heard_ms: AtomicU64,
    written: Mutex<VecDeque<u64>>,
}

impl ConnShared {
    pub(crate) fn new(limits: Arc<QueueLimits>) -> Self {
        Self {
            queue: SendQueue::new(limits),
            stopped: AtomicBool::new(false),
            peer_closed: AtomicBool::new(false),
            greeted: AtomicBool::new(false),
            wake: Notify::new(),
            reason: AtomicU16::new(0),
            opened: Instant::now(),
            heard_ms: AtomicU64::new(0),
            written: Mutex::new(VecDeque::new()),
        }
    }

    /// Closes the connection with `reason` (the first reason given wins). A slow consumer's
    /// queue is released at once: it will never read it, and its writer may still be blocked.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.reason.compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        if reason == CloseReason::SlowConsumer {
            self.queue.close();
        }
        self.stop();
    }

    /// Ends both tasks without a close frame (the peer is gone).
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Resolves once the connection is stopping.
    async fn stopping(&self) {
        self.wait_for(&self.stopped).await;
    }

    /// Called by the hub once `hub:connected` is queued: the reader may answer frames now.
    pub(crate) fn mark_greeted(&self) {
        self.greeted.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    /// Resolves once `hub:connected` is queued.
    async fn greeted(&self) {
        self.wait_for(&self.greeted).await;
    }

    /// Resolves once `flag` is set (every setter notifies `wake`).
    async fn wait_for(&self, flag: &AtomicBool) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// Remembers the seqs of events just written (one lock per write, not per event).
    fn record_written(&self, seqs: impl Iterator<Item = u64>) {
        if let Ok(mut written) = self.written.lock() {
            for seq in seqs {
                if written.len() == WRITTEN_MEMORY {
                    written.pop_front();
                }
                written.push_back(seq);
            }
        }
    }

    fn was_written(&self, seq: u64) -> bool {
        self.written.lock().is_ok_and(|w| w.contains(&seq))
    }

    fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.reason.load(Ordering::Acquire))
    }

    /// Records that a frame (of any kind, pongs included) was just received.
    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.heard_ms.store(ms, Ordering::Relaxed);
    }

    /// When the last frame was received (the connection's opening if none was).
    fn last_heard(&self) -> Instant {
        self.opened + Duration::from_millis(self.heard_ms.load(Ordering::Relaxed))
    }

    /// Unix ms of the last frame received.
    pub fn last_activity_ms(&self) -> u64 {
        let ago = u64::try_from(self.last_heard().elapsed().as_millis()).unwrap_or(u64::MAX);
        unix_ms().saturating_sub(ago)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How the upgrade request identified the client.
pub enum Handshake {
    /// A verified token, or anonymous (`None`) where that is allowed.
    Identified(Option<Identity>),
    /// No token, and one is required: wait for an `auth` frame.
    AwaitAuth,
    /// A token that failed verification.
    Refused(AuthError),
}

/// Serves one upgraded socket until it closes. The socket is split (moved to the heap) before
/// the connection's future is built, so idle connections do not carry it twice. `trusted_origin`
/// says whether the upgrade came from an origin that may become an operator connection.
pub fn serve(
    socket: WebSocket,
    app: Arc<AppState>,
    handshake: Handshake,
    (remote, resume, trusted_origin): (SocketAddr, Option<Resume>, bool),
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    let id = app.hub.next_id();
    let span =
        tracing::info_span!("conn", client = %app.hub.client_id(id), peer = %remote, user = tracing::field::Empty);
    serve_inner(sink, stream, app, handshake, (remote, resume, id, trusted_origin)).instrument(span)
}

async fn serve_inner(
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    app: Arc<AppState>,
    handshake: Handshake,
    (remote, resume, id, trusted_origin): (SocketAddr, Option<Resume>, ConnId, bool),
) {
    let started = Instant::now();
    let identity = match handshake {
        Handshake::Identified(identity) => identity.unwrap_or_default(),
        Handshake::Refused(err) => return Box::pin(refuse(&app, &mut sink, &err)).await,
        Handshake::AwaitAuth => match Box::pin(await_auth(&app, &mut stream, trusted_origin)).await {
            Ok(identity) => identity,
            Err(err) => return Box::pin(refuse(&app, &mut sink, &err)).await,
        },
    };
    if let Some(user) = &identity.user {
        tracing::Span::current().record("user", user.as_str());
    }
    let shared = Arc::new(ConnShared::new(Arc::clone(&app.queue_limits)));
    let identity = identity.shared();
    let new = NewConn { id, identity: Arc::clone(&identity), shared: Arc::clone(&shared), remote, resume };
    if !app.hub.send(Command::Register(new)).await {
        let _ = sink.send(close_message(CloseReason::GoingAway)).await;
        return;
    }
    tracing::info!("connection open");
    let writer = tokio::spawn(write_loop(
        sink,
        Arc::clone(&shared),
        Arc::clone(&app.metrics),
        Timing {
            ping_interval: app.config.ping_interval,
            pong_timeout: app.config.pong_timeout,
            write_timeout: app.config.write_timeout,
        },
    ));
    let mut reader = Reader {
        app: Arc::clone(&app),
        id,
        identity,
        shared: Arc::clone(&shared),
        acked: VecDeque::new(),
        budget: (FRAME_BURST, Instant::now()),
        trusted_origin,
    };
    reader.run(&mut stream).await;
    shared.stop();
    app.hub.send(Command::Unregister(id)).await;
    let _ = writer.await;
    shared.queue.close();
    if shared.reason().is_some() {
        Box::pin(drain_until_closed(&mut stream)).await;
    }
    let reason = shared.reason().map_or("peer closed", CloseReason::text);
    tracing::info!(reason, duration_ms = started.elapsed().as_millis() as u64, "connection closed");
}

/// Sends `hub:error unauthorized` and closes with 4001.
async fn refuse(app: &AppState, sink: &mut SplitSink<WebSocket, Message>, err: &AuthError) {
    let reason = match err {
        AuthError::Expired => "expired",
        AuthError::NotConfigured => "not_configured",
        _ => "invalid",
    };
    app.metrics.auth_failures.with_label_values(&[reason]).inc();
    tracing::info!(error = %err, "connection refused");
    let frame = error_frame("unauthorized", &err.to_string(), None);
    let _ = timeout(CLOSE_WAIT, async {
        sink.send(Message::Text(frame)).await?;
        sink.send(close_message(CloseReason::Unauthorized)).await
    })
    .await;
}

/// Waits for the first frame to be a valid `auth` within the configured time.
/// An `auth` frame with `api_key` makes an operator connection instead.
async fn await_auth(
    app: &AppState,
    stream: &mut SplitStream<WebSocket>,
    trusted_origin: bool,
) -> Result<Identity, AuthError> {
    let missing = || {
        AuthError::Invalid(
            "a token is required: pass ?token=, Authorization: Bearer, or send {\"type\":\"auth\",\"token\":...} first"
                .into(),
        )
    };
    let first = timeout(app.config.auth_timeout, stream.next()).await.map_err(|_| missing())?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(missing());
    };
    match serde_json::from_str::<ClientMessage>(&text) {
        Ok(ClientMessage::Auth { api_key: Some(key), .. }) => {
            check_operator(app.config.api_key.as_deref(), &key, trusted_origin)?;
            Ok(Identity { operator: true, ..Identity::default() })
        }
        Ok(ClientMessage::Auth { token: Some(token), .. }) => {
            app.verifier.as_ref().ok_or(AuthError::NotConfigured)?.verify(&token)
        }
        _ => Err(missing()),
    }
}

/// After our close frame, reads until the peer's close (at most [`CLOSE_WAIT`]) so that closing
/// the socket with unread data does not reset the connection before the peer reads our frame.
async fn drain_until_closed(stream: &mut SplitStream<WebSocket>) {
    let _ = timeout(CLOSE_WAIT, async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame { code: reason.code(), reason: Utf8Bytes::from_static(reason.text()) }))
}

/// The keep-alive schedule of one connection, on tokio's clock: a ping every `ping_interval`
/// from the connection's start, and a drop once nothing at all (not even a pong) was received for
/// `pong_timeout`. Because `ping_interval < pong_timeout` (checked at startup), every client is
/// pinged before it can reach the timeout, so answering pings is enough to stay connected.
struct KeepAlive {
    next_ping: Instant,
    ping_interval: Duration,
    pong_timeout: Duration,
}

/// What the keep-alive timer asks the writer to do when it fires.
#[derive(Debug, PartialEq, Eq)]
enum KeepAliveAction {
    /// Nothing is due yet (the client was heard from since the timer was set).
    Wait,
    /// Send a ping now.
    Ping,
    /// The client was silent for the pong timeout: close it with 4005.
    Drop,
}

impl KeepAlive {
    fn new(timing: &Timing, opened: Instant) -> Self {
        Self {
            next_ping: opened + timing.ping_interval,
            ping_interval: timing.ping_interval,
            pong_timeout: timing.pong_timeout,
        }
    }

    /// When the timer must next fire: the next ping or the silence deadline, whichever is first.
    fn next_wake(&self, last_heard: Instant) -> Instant {
        self.next_ping.min(last_heard + self.pong_timeout)
    }

    /// Decides what is due at `now`; a ping moves the schedule on by one interval.
    fn on_wake(&mut self, now: Instant, last_heard: Instant) -> KeepAliveAction {
        if now >= last_heard + self.pong_timeout {
            return KeepAliveAction::Drop;
        }
        if now < self.next_ping {
            return KeepAliveAction::Wait;
        }
        // Skip pings missed while the writer was busy: one ping now, the next a full interval on.
        while self.next_ping <= now {
            self.next_ping += self.ping_interval;
        }
        KeepAliveAction::Ping
    }
}

/// Drains the send queue to the socket; pings on schedule; sends the close frame at the end.
/// Generic over the sink so it can be driven in tests without a socket.
async fn write_loop<S>(mut sink: S, shared: Arc<ConnShared>, metrics: Arc<Metrics>, timing: Timing)
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    // One timer per connection does both keep-alive jobs, so the reader needs none.
    let mut keep_alive = KeepAlive::new(&timing, shared.opened);
    let timer = sleep_until(keep_alive.next_wake(shared.last_heard()));
    tokio::pin!(timer);
    let mut batch: Vec<Outbound> = Vec::new();
    let stopping = shared.stopping();
    tokio::pin!(stopping);
    loop {
        let result = tokio::select! {
            biased;
            _ = &mut stopping => break,
            more = shared.queue.pop_into(&mut batch, MAX_BATCH, MAX_BATCH_BYTES) => {
                if !more {
                    break;
                }
                let sent = bounded(timing.write_timeout, send_all(&mut sink, &batch)).await;
                if sent.is_ok() {
                    count_written(&batch, &metrics, &shared);
                }
                batch.clear();
                sent
            }
            () = &mut timer => {
                let action = keep_alive.on_wake(Instant::now(), shared.last_heard());
                timer.as_mut().reset(keep_alive.next_wake(shared.last_heard()));
                match action {
                    KeepAliveAction::Drop => {
                        shared.close(CloseReason::KeepAliveTimeout);
                        break;
                    }
                    KeepAliveAction::Ping => {
                        bounded(timing.write_timeout, sink.send(Message::Ping(Default::default()))).await
                    }
                    KeepAliveAction::Wait => Ok(()),
                }
            }
        };
        if result.is_err() {
            tracing::debug!("write failed or timed out");
            shared.stop();
            return;
        }
    }
    if let Some(reason) = shared.reason() {
        // Frames queued before the close (such as the hub:error that explains it) go first,
        // unless the reason is that the client does not read them.
        if reason != CloseReason::SlowConsumer {
            batch.clear();
            shared.queue.take_all(&mut batch);
            let _ = timeout(CLOSE_WAIT, send_all(&mut sink, &batch)).await;
        }
        let _ = timeout(CLOSE_WAIT, sink.send(close_message(reason))).await;
    } else if shared.peer_closed.load(Ordering::Acquire) {
        // RFC 6455 §5.5.1: a close frame is answered with one. tungstenite queued the echo (the
        // peer's code, or 1002 for a code not allowed on the wire) when it read the close; closing
        // the sink writes it before the socket is shut.
        let _ = timeout(CLOSE_WAIT, sink.close()).await;
    }
}

async fn send_all<S>(sink: &mut S, batch: &[Outbound]) -> Result<(), axum::Error>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    for item in batch {
        let frame = match item {
            Outbound::Frame(frame) => Utf8Bytes::clone(frame),
            // Serialized here, by the writer, unless another connection already did it.
            Outbound::Event(delivery, index) | Outbound::Replayed(delivery, index) => delivery.take_frame(*index),
        };
        sink.feed(Message::Text(frame)).await?;
    }
    sink.flush().await
}

/// Live events in one write above which latencies are gathered locally and added to the shared
/// histogram at once (a few atomic adds instead of four per event).
const LOCAL_LATENCY_BATCH: usize = 4;

/// Counts written events for receipts, and observes the delivery latency of each live event once
/// (replays are not observed: see `Delivery::received`).
fn count_written(batch: &[Outbound], metrics: &Metrics, shared: &ConnShared) {
    let events = || batch.iter().filter_map(|item| item.delivery().map(|(delivery, _)| delivery));
    // One latency sample per live event (replays measure the client's absence, not the hub).
    let live = || {
        batch.iter().filter_map(|item| match item {
            Outbound::Event(delivery, _) => Some(delivery),
            _ => None,
        })
    };
    if live().next().is_some() {
        let now = std::time::Instant::now();
        let latencies = live().map(|d| now.saturating_duration_since(d.received).as_secs_f64());
        if live().nth(LOCAL_LATENCY_BATCH).is_some() {
            let local = metrics.delivery_latency.local();
            latencies.for_each(|s| local.observe(s));
            local.flush();
        } else {
            latencies.for_each(|s| metrics.delivery_latency.observe(s));
        }
    }
    for delivery in events() {
        delivery.event.receipt.written.fetch_add(1, Ordering::Relaxed);
    }
    shared.record_written(events().map(|d| d.event.seq));
}

/// The reading half: turns client frames into hub commands and answers.
struct Reader {
    app: Arc<AppState>,
    id: ConnId,
    identity: Arc<Identity>,
    shared: Arc<ConnShared>,
    /// Recently acknowledged event ids, so a repeated ack is not counted twice.
    acked: VecDeque<String>,
    /// Token bucket for client frames: (tokens, last refill).
    budget: (f64, Instant),
    /// The upgrade came from an origin allowed to make operator connections.
    trusted_origin: bool,
}

impl Reader {
    async fn run(&mut self, stream: &mut SplitStream<WebSocket>) {
        let shared = Arc::clone(&self.shared);
        let stopping = shared.stopping();
        tokio::pin!(stopping);
        // Only connections whose token expires carry a timer, boxed so the others pay nothing.
        let mut expiry = expiry_deadline(&self.identity).map(|at| Box::pin(sleep_until(at)));
        // `hub:connected` is the first frame (PROTOCOL.md): a frame read before the hub queued it
        // could be answered (hub:pong, hub:error) ahead of it.
        tokio::select! {
            biased;
            _ = &mut stopping => return,
            () = shared.greeted() => {}
        }
        loop {
            let next = tokio::select! {
                biased;
                _ = &mut stopping => return,
                _ = async {
                    match expiry.as_mut() {
                        Some(at) => at.await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.send(error_frame("token_expired", "token expired; send a fresh auth before exp", None));
                    self.shared.close(CloseReason::TokenExpired);
                    return;
                }
                next = stream.next() => next,
            };
            let message = match next {
                None => return,
                Some(Err(err)) => return self.read_error(err),
                Some(Ok(message)) => message,
            };
            self.shared.touch();
            // Every frame counts, pings and pongs included: a flood of any kind costs the hub.
            if !matches!(message, Message::Close(_)) && !self.allow_frame() {
                self.app.metrics.frames_rate_limited.inc();
                if matches!(message, Message::Text(_)) {
                    self.send(error_frame("rate_limited", "too many frames; slow down", None));
                }
                continue;
            }
            match message {
                // Boxed: client frames are rare for a listening client, and keeping this future out
                // of the connection's state machine saves memory on every idle connection.
                Message::Text(text) => {
                    Box::pin(self.on_text(&text)).await;
                    expiry = expiry_deadline(&self.identity).map(|at| Box::pin(sleep_until(at)));
                }
                Message::Binary(_) => return self.shared.close(CloseReason::Policy),
                Message::Close(_) => return self.shared.peer_closed.store(true, Ordering::Release),
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    /// Takes one token from the frame budget; false when the client sends too fast.
    fn allow_frame(&mut self) -> bool {
        let (tokens, last) = &mut self.budget;
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * FRAMES_PER_S).min(FRAME_BURST);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn read_error(&self, err: axum::Error) {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let reason = match err.into_inner().downcast::<WsError>() {
            Ok(ws) => match *ws {
                WsError::Capacity(_) => Some(CloseReason::TooBig),
                WsError::Utf8(_) => Some(CloseReason::InvalidUtf8),
                WsError::Protocol(_) => Some(CloseReason::ProtocolError),
                _ => None,
            },
            Err(_) => None,
        };
        match reason {
            Some(reason) => self.shared.close(reason),
            None => self.shared.stop(),
        }
    }

    /// Queues an answer; a full queue means the client is not reading, so it is dropped.
    fn send(&self, frame: Utf8Bytes) {
        if let Err(PushError::Full) = self.shared.queue.push(Outbound::frame(frame)) {
            self.shared.close(CloseReason::SlowConsumer);
        }
    }

    async fn on_text(&mut self, text: &str) {
        let message = match serde_json::from_str::<ClientMessage>(text) {
            Ok(message) => message,
            Err(err) => {
                let code =
                    if serde_json::from_str::<serde_json::Value>(text).is_ok() { "bad_message" } else { "bad_json" };
                return self.send(error_frame(code, &crate::json_error::describe(&err), None));
            }
        };
        match message {
            ClientMessage::Ping => {
                let (timestamp, _) = now_rfc3339();
                self.send(to_frame(&json!({"type": "hub:pong", "timestamp": timestamp})));
            }
            ClientMessage::Subscribe { channel, since, epoch } => self.subscribe(channel, since, epoch).await,
            ClientMessage::Unsubscribe { channel } => match validate_channel(&channel) {
                Ok(()) => {
                    self.app.hub.send(Command::Unsubscribe { id: self.id, channel }).await;
                }
                Err(err) => self.send(error_frame("bad_channel", &err.to_string(), Some(&channel))),
            },
            ClientMessage::Auth { api_key: Some(key), .. } => self.become_operator(&key).await,
            ClientMessage::Auth { token: Some(token), .. } => self.reauthenticate(&token).await,
            ClientMessage::Auth { token: None, api_key: None } => {
                self.send(error_frame("bad_message", "auth needs `token` or `api_key`", None))
            }
            ClientMessage::Publish { channel, event, message, data } => {
                self.publish(channel, event, message, data).await
            }
            ClientMessage::Ack { id, ids } => self.ack(id.into_iter().chain(ids).collect()).await,
        }
    }

    async fn subscribe(&mut self, channel: String, since: Option<u64>, epoch: Option<String>) {
        if let Err(err) = may_subscribe(&self.identity, &channel, &self.app.config.namespaces) {
            return self.send(error_frame(err.code(), &err.to_string(), Some(&channel)));
        }
        let resume = since.map(|since| Resume { since, epoch });
        self.app.hub.send(Command::Subscribe { id: self.id, channel, resume }).await;
    }

    /// Records receipts: only for events written to this connection (among its last
    /// [`WRITTEN_MEMORY`]), each at most once (within the last [`ACK_MEMORY`]).
    async fn ack(&mut self, ids: Vec<String>) {
        let mut fresh = Vec::with_capacity(ids.len());
        for id in ids.into_iter().take(ACK_MEMORY) {
            let written = match self.app.engine.find(id.clone()).await {
                Ok(Some(event)) => self.shared.was_written(event.seq),
                _ => false,
            };
            if written && !self.acked.contains(&id) {
                if self.acked.len() == ACK_MEMORY {
                    self.acked.pop_front();
                }
                self.acked.push_back(id.clone());
                fresh.push(id);
            }
        }
        if !fresh.is_empty() {
            self.app.engine.ack(fresh, self.identity.user.clone()).await;
        }
    }

    /// First-frame operator auth (`{"type":"auth","api_key":...}`), so the key stays out of URLs
    /// and access logs. Answered with `hub:authenticated`, or `hub:error unauthorized`.
    async fn become_operator(&mut self, key: &str) {
        if let Err(err) = check_operator(self.app.config.api_key.as_deref(), key, self.trusted_origin) {
            self.app.metrics.auth_failures.with_label_values(&["invalid"]).inc();
            return self.send(error_frame("unauthorized", &err.to_string(), None));
        }
        // The hub answers `hub:authenticated`, as for a refreshed token.
        let identity = Identity { operator: true, ..Identity::clone(&self.identity) }.shared();
        self.identity = Arc::clone(&identity);
        self.app.hub.send(Command::Identify { id: self.id, identity }).await;
    }

    async fn reauthenticate(&mut self, token: &str) {
        let Some(verifier) = &self.app.verifier else {
            return self.send(error_frame("unauthorized", "this hub has no JWT key configured", None));
        };
        match verifier.verify(token) {
            Ok(identity) if self.identity.user.is_some() && identity.user != self.identity.user => {
                self.send(error_frame("unauthorized", "a connection cannot change its user; reconnect instead", None));
            }
            Ok(mut identity) => {
                // Operator rights came with the upgrade (the API key), not with the token.
                identity.operator = self.identity.operator;
                let identity = identity.shared();
                self.identity = Arc::clone(&identity);
                self.app.hub.send(Command::Identify { id: self.id, identity }).await;
            }
            Err(err) => {
                self.app.metrics.auth_failures.with_label_values(&["invalid"]).inc();
                self.send(error_frame("unauthorized", &err.to_string(), None));
            }
        }
    }

    async fn publish(&mut self, channel: String, event: String, message: String, data: Option<serde_json::Value>) {
        let allowed = self.app.config.namespaces.find(&channel).is_some_and(|ns| ns.publish)
            && may_subscribe(&self.identity, &channel, &self.app.config.namespaces).is_ok();
        if !allowed {
            self.app.metrics.publish_rejected.with_label_values(&["client_forbidden"]).inc();
            return self.send(error_frame(
                "publish_forbidden",
                "clients may not publish to this channel",
                Some(&channel),
            ));
        }
        if event.is_empty() || event.starts_with("hub:") {
            return self.send(error_frame(
                "bad_message",
                "event must be non-empty and not start with hub:",
                Some(&channel),
            ));
        }
        let new = NewEvent {
            kind: event,
            message,
            data: data
                .filter(|d| !d.is_null())
                .and_then(|d| serde_json::value::to_raw_value(&d).ok())
                .unwrap_or_else(crate::protocol::empty_object),
            targets: vec![channel.clone()],
            from: self.identity.user.clone(),
            exclude: Some(self.app.hub.client_id(self.id)),
        };
        let forward = self.app.config.namespaces.find(&channel).is_some_and(|ns| ns.forward);
        let copy = forward.then(|| (new.kind.clone(), new.message.clone(), new.data.clone()));
        match self.app.engine.publish(vec![new], None).await {
            Ok(published) => {
                if let (Some((kind, message, data)), Some(p)) = (copy, published.first()) {
                    self.forward(&channel, p, &kind, &message, &data);
                }
                // Counted like `/notify` publishes, so every publish route is in the metric.
                let namespace = crate::metrics::namespace_label(&channel, &self.app.config.namespaces);
                self.app.metrics.events_by_namespace.with_label_values(&[namespace]).inc();
                let id = published.first().map(|p| p.id.clone());
                self.send(to_frame(&json!({"type": "hub:published", "channel": channel, "id": id})));
            }
            Err(err) => self.send(error_frame("internal", &err.to_string(), Some(&channel))),
        }
    }

    /// `client.published`: a client publish in a namespace with `forward = true`.
    fn forward(&self, channel: &str, published: &Published, kind: &str, message: &str, data: &RawValue) {
        let client_id = self.app.hub.client_id(self.id);
        self.app.webhooks.emit(
            "client.published",
            json!({
                "channel": channel,
                "user": self.identity.user,
                "client_id": client_id,
                "id": published.id,
                "seq": published.seq,
                "type": kind,
                "message": message,
                "data": data,
            }),
        );
    }
}

/// When the connection's token stops being valid (exp plus leeway), as a tokio instant.
/// An `exp` too far ahead to add to the clock (such as 1e19) means no expiry timer at all.
pub fn expiry_deadline(identity: &Identity) -> Option<Instant> {
    let exp = identity.exp?;
    let now = unix_ms() / 1000;
    let left = exp.saturating_add(EXP_LEEWAY_S).saturating_sub(now);
    Instant::now().checked_add(Duration::from_secs(left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// The documented defaults: `--ping-interval 54s --pong-timeout 60s --write-timeout 10s`.
    const DEFAULTS: Timing = Timing {
        ping_interval: Duration::from_secs(54),
        pong_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(10),
    };

    /// Runs a writer over an in-memory sink; everything it writes arrives on the receiver.
    fn spawn_writer(shared: &Arc<ConnShared>) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = futures_util::sink::unfold(tx, |tx, message: Message| async move {
            tx.send(message).map_err(axum::Error::new)?;
            Ok::<_, axum::Error>(tx)
        });
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        tokio::spawn(write_loop(Box::pin(sink), Arc::clone(shared), metrics, DEFAULTS));
        rx
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_stays_connected_for_ten_minutes_at_default_timings() {
        let shared = Arc::new(ConnShared::new(crate::queue::test_limits(1 << 20)));
        let opened = Instant::now();
        let mut socket = spawn_writer(&shared);
        let mut pings = Vec::new();
        while opened.elapsed() < Duration::from_secs(600) {
            match socket.recv().await.expect("writer alive") {
                Message::Ping(_) => {
                    pings.push(opened.elapsed().as_secs());
                    // What the reader does when the pong arrives.
                    shared.touch();
                }
                other => panic!("unexpected frame {other:?} at {:?}", opened.elapsed()),
            }
        }
        assert_eq!(pings[..4], [54, 108, 162, 216]);
        assert!(shared.reason().is_none(), "closed with {:?}", shared.reason());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_at_54s_then_dropped_with_4005_at_60s() {
        let shared = Arc::new(ConnShared::new(crate::queue::test_limits(1 << 20)));
        let opened = Instant::now();
        let mut socket = spawn_writer(&shared);
        let first = socket.recv().await.expect("a ping");
        assert!(matches!(first, Message::Ping(_)), "{first:?}");
        assert_eq!(opened.elapsed(), Duration::from_secs(54));
        let close = socket.recv().await.expect("a close frame");
        assert_eq!(opened.elapsed(), Duration::from_secs(60));
        let Message::Close(Some(frame)) = close else { panic!("{close:?}") };
        assert_eq!(frame.code, CloseReason::KeepAliveTimeout.code());
    }

    #[tokio::test(start_paused = true)]
    async fn any_frame_from_the_client_moves_the_silence_deadline() {
        let shared = Arc::new(ConnShared::new(crate::queue::test_limits(1 << 20)));
        let opened = Instant::now();
        let mut socket = spawn_writer(&shared);
        // The client talks at 50 s but ignores the pings at 54 s and 108 s: dropped 60 s after
        // it talked.
        tokio::time::sleep(Duration::from_secs(50)).await;
        shared.touch();
        let mut pings = Vec::new();
        let close = loop {
            match socket.recv().await.expect("a frame") {
                Message::Ping(_) => pings.push(opened.elapsed().as_secs()),
                other => break other,
            }
        };
        assert_eq!(pings, [54, 108]);
        assert_eq!(opened.elapsed(), Duration::from_secs(110));
        assert!(matches!(close, Message::Close(Some(ref f)) if f.code == 4005), "{close:?}");
    }

    #[test]
    fn pings_missed_while_busy_are_not_sent_in_a_burst() {
        let opened = Instant::now();
        let mut keep_alive = KeepAlive::new(&DEFAULTS, opened);
        let late = opened + Duration::from_secs(165);
        // Heard recently, three intervals late: one ping, the next one a whole interval away.
        assert_eq!(keep_alive.on_wake(opened + Duration::from_secs(170), late), KeepAliveAction::Ping);
        assert_eq!(keep_alive.next_ping, opened + Duration::from_secs(216));
        assert_eq!(keep_alive.on_wake(opened + Duration::from_secs(171), late), KeepAliveAction::Wait);
        assert_eq!(keep_alive.on_wake(late + Duration::from_secs(60), late), KeepAliveAction::Drop);
    }
}

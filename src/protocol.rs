//! The wire protocol: client frames, server control frames, notifications and close codes.
//! docs/PROTOCOL.md is the reference; this module is its code.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The stream every connection is in; untargeted events go here.
pub const BROADCAST: &str = "broadcast";
/// Longest accepted channel name.
pub const MAX_CHANNEL_LEN: usize = 128;
/// Prefixes clients cannot use for ordinary channels.
pub const RESERVED_PREFIXES: [&str; 5] = ["user:", "role:", "private:", "hub:", "admin:"];

/// Why a channel name is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    /// Empty or longer than [`MAX_CHANNEL_LEN`].
    #[error("channel names are 1 to {MAX_CHANNEL_LEN} characters")]
    Length,
    /// A character outside `A-Z a-z 0-9 _ - . : @ = /`.
    #[error("channel names may only contain A-Z a-z 0-9 _ - . : @ = /")]
    Character,
}

/// Checks a channel name against the documented character set and length.
pub fn validate_channel(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
        return Err(ChannelNameError::Length);
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_-.:@=/".contains(c);
    if name.chars().all(allowed) { Ok(()) } else { Err(ChannelNameError::Character) }
}

/// A frame sent by a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Keep-alive at the application level; answered with `hub:pong`.
    Ping,
    /// Join a channel, optionally resuming after `since` under `epoch`.
    Subscribe {
        /// Channel name.
        channel: String,
        /// Last seq the client saw in this channel.
        since: Option<u64>,
        /// Epoch that `since` belongs to.
        epoch: Option<String>,
    },
    /// Leave a channel.
    Unsubscribe {
        /// Channel name.
        channel: String,
    },
    /// Authenticate (first frame) or refresh the token of a live connection; or, with `api_key`,
    /// become an operator connection without putting the key in the URL.
    Auth {
        /// The JWT.
        #[serde(default)]
        token: Option<String>,
        /// The hub's API key (operator connections).
        #[serde(default)]
        api_key: Option<String>,
    },
    /// Publish to a channel whose namespace allows client publishing.
    Publish {
        /// Channel name.
        channel: String,
        /// Notification type.
        event: String,
        /// Optional text.
        #[serde(default)]
        message: String,
        /// Optional payload (a `Value`: serde cannot buffer a `RawValue` in a tagged enum).
        data: Option<serde_json::Value>,
    },
    /// Delivery receipt for one or several notifications.
    Ack {
        /// One event id.
        id: Option<String>,
        /// Several event ids.
        #[serde(default)]
        ids: Vec<String>,
    },
}

/// Why the hub closes a connection; each has a documented close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The hub is shutting down.
    GoingAway,
    /// A text frame was not valid UTF-8.
    InvalidUtf8,
    /// A frame that breaks the WebSocket protocol (unmasked, bad opcode, reserved bits...).
    ProtocolError,
    /// A binary frame.
    Policy,
    /// A frame over the size limit.
    TooBig,
    /// Bad, missing or expired token at connect.
    Unauthorized,
    /// The token expired while connected.
    TokenExpired,
    /// The send queue stayed over its byte bound (or would have passed its hard cap).
    SlowConsumer,
    /// An operator disconnected the client.
    Kicked,
    /// Nothing received within the pong timeout.
    KeepAliveTimeout,
    /// Cluster mode: the node missed events of one of the connection's streams that history no
    /// longer holds (or Redis lost its data); a resume tells the client `recovered: false`.
    Resync,
}

impl CloseReason {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidUtf8 => 1007,
            Self::Policy => 1008,
            Self::TooBig => 1009,
            Self::Unauthorized => 4001,
            Self::TokenExpired => 4002,
            Self::SlowConsumer => 4003,
            Self::Kicked => 4004,
            Self::KeepAliveTimeout => 4005,
            Self::Resync => 4006,
        }
    }

    /// The reason text sent in the close frame.
    pub fn text(self) -> &'static str {
        match self {
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "WebSocket protocol error",
            Self::InvalidUtf8 => "invalid UTF-8 in text frame",
            Self::Policy => "binary frames are not accepted",
            Self::TooBig => "frame too large",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token expired",
            Self::SlowConsumer => "slow consumer: send queue full",
            Self::Kicked => "disconnected by operator",
            Self::KeepAliveTimeout => "keep-alive timeout",
            Self::Resync => "events missed: resume to resync",
        }
    }

    /// Inverse of [`CloseReason::code`].
    pub fn from_code(code: u16) -> Option<Self> {
        ALL_REASONS.into_iter().find(|r| r.code() == code)
    }
}

const ALL_REASONS: [CloseReason; 11] = [
    CloseReason::GoingAway,
    CloseReason::ProtocolError,
    CloseReason::InvalidUtf8,
    CloseReason::Policy,
    CloseReason::TooBig,
    CloseReason::Unauthorized,
    CloseReason::TokenExpired,
    CloseReason::SlowConsumer,
    CloseReason::Kicked,
    CloseReason::KeepAliveTimeout,
    CloseReason::Resync,
];

/// A published notification with its position; shared by every recipient through an `Arc`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Event {
    /// Unique id.
    pub id: String,
    /// Position, increasing across the hub (or cluster).
    pub seq: u64,
    /// Publisher's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Publisher's text.
    pub message: String,
    /// Publisher's payload, kept as raw JSON so it is never re-parsed.
    pub data: Box<RawValue>,
    /// Server time of acceptance, RFC 3339 UTC.
    pub timestamp: String,
    /// Streams the event was published to (`broadcast` when untargeted).
    pub targets: Vec<String>,
    /// User id of a client publisher, set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Client id that does not receive this event (a client's own publish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<String>,
    /// Unix milliseconds of acceptance, for history TTL.
    pub accepted_ms: u64,
    /// Delivery receipt counters (local to this process).
    #[serde(skip)]
    pub receipt: Receipt,
    /// The delivery currently carrying this event's frames, so a replay shares them with live
    /// recipients and with other replays instead of serializing its own copies.
    #[serde(skip)]
    pub delivery: Mutex<Weak<Delivery>>,
}

/// How far an event got: connections it was written to and acknowledged by.
#[derive(Debug, Default)]
pub struct Receipt {
    /// Connections the frame was written to.
    pub written: AtomicU32,
    /// Connections that acknowledged it.
    pub acked: AtomicU32,
    /// Users who acknowledged it (each once).
    pub acked_users: Mutex<Vec<String>>,
}

impl Receipt {
    /// Records one acknowledgement, by `user` when the connection has one.
    pub fn ack(&self, user: Option<&str>) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        if let (Some(user), Ok(mut users)) = (user, self.acked_users.lock())
            && !users.iter().any(|u| u == user)
        {
            users.push(user.to_string());
        }
    }

    /// A JSON summary: `{"written","acked","acked_users"}`.
    pub fn summary(&self) -> serde_json::Value {
        let users = self.acked_users.lock().map(|u| u.clone()).unwrap_or_default();
        serde_json::json!({
            "written": self.written.load(Ordering::Relaxed),
            "acked": self.acked.load(Ordering::Relaxed),
            "acked_users": users,
        })
    }
}

/// The notification frame as clients see it (the Go hub's shape plus resume fields).
#[derive(Serialize)]
struct EventFrame<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    data: &'a RawValue,
    timestamp: &'a str,
    channel: &'a str,
    seq: u64,
    epoch: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<&'a str>,
}

impl Event {
    /// Serializes the client frame for delivery through `channel`.
    pub fn frame(&self, channel: &str, epoch: &str) -> Utf8Bytes {
        to_frame(&self.frame_fields(channel, epoch))
    }

    fn frame_fields<'a>(&'a self, channel: &'a str, epoch: &'a str) -> EventFrame<'a> {
        EventFrame {
            id: &self.id,
            kind: &self.kind,
            message: &self.message,
            data: &self.data,
            timestamp: &self.timestamp,
            channel,
            seq: self.seq,
            epoch,
            from: self.from.as_deref(),
        }
    }

    /// Approximate heap bytes held by this event (for history accounting).
    pub fn heap_bytes(&self) -> usize {
        self.id.len()
            + self.kind.len()
            + self.message.len()
            + self.data.get().len()
            + self.timestamp.len()
            + self.targets.iter().map(|t| t.len() + 24).sum::<usize>()
            + self.from.as_ref().map_or(0, String::len)
            + std::mem::size_of::<Self>()
    }
}

/// An event with its frames, one per target stream, serialized when first needed (by the first
/// writer) and shared by every recipient of that stream. A frame is kept only while more than one
/// queued item may still take it: a publish to 1,000 users, each with one connection, never
/// holds 1,000 frames at once, and a target with no local recipient is never serialized.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Arc<Event>,
    /// The epoch written into the frames.
    epoch: Box<str>,
    /// One slot per entry of `event.targets`, in the same order.
    slots: Box<[FrameSlot]>,
    /// Frame length without the `channel` value, computed once.
    base_len: OnceLock<usize>,
    /// When this process got the event, for the delivery-latency histogram.
    pub received: std::time::Instant,
}

/// One target's frame, kept while more than one queued item may still take it.
#[derive(Debug, Default)]
struct FrameSlot {
    frame: Mutex<Option<Utf8Bytes>>,
    /// Queued items that may still take this frame.
    waiting: AtomicU32,
    /// The frame's length once computed (0: not yet); queues ask for it on every push and take.
    len: AtomicUsize,
}

impl Delivery {
    /// A delivery of `event` whose frames carry `epoch`; nothing is serialized yet.
    pub fn new(event: Arc<Event>, epoch: &str) -> Self {
        let slots = event.targets.iter().map(|_| FrameSlot::default()).collect();
        Self { event, epoch: epoch.into(), slots, base_len: OnceLock::new(), received: std::time::Instant::now() }
    }

    /// The delivery carrying `event` now (live or replayed), or a new one that later replays
    /// will share: one set of frames per event and stream however many connections need it.
    pub fn shared(event: &Arc<Event>, epoch: &str) -> Arc<Self> {
        let mut slot = event.delivery.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = slot.upgrade().filter(|d| *d.epoch == *epoch) {
            return existing;
        }
        let delivery = Arc::new(Self::new(Arc::clone(event), epoch));
        *slot = Arc::downgrade(&delivery);
        delivery
    }

    /// Index of `stream` among the event's targets (0 when it is not one, e.g. `broadcast`).
    pub fn index_of(&self, stream: &str) -> u32 {
        let found = self.event.targets.iter().position(|t| t == stream).unwrap_or(0);
        u32::try_from(found).unwrap_or(0)
    }

    /// Exact length of frame `index`, without serializing it.
    pub fn frame_len(&self, index: u32) -> usize {
        let base = || {
            *self.base_len.get_or_init(|| {
                let mut counter = ByteCounter(0);
                let _ = serde_json::to_writer(&mut counter, &self.event.frame_fields("", &self.epoch));
                counter.0
            })
        };
        let Some(slot) = self.slots.get(index as usize) else { return base() };
        match slot.len.load(Ordering::Relaxed) {
            0 => {
                let len = base() + self.target(index).map_or(0, |t| json_string_len(t) - 2);
                slot.len.store(len, Ordering::Relaxed);
                len
            }
            len => len,
        }
    }

    /// Announces `items` more queued items that may take frame `index` (the hub announces a
    /// stream's local subscribers before fanning out, so the first writer knows to keep it).
    pub fn expect(&self, index: u32, items: u32) {
        if let Some(slot) = self.slots.get(index as usize) {
            slot.waiting.fetch_add(items, Ordering::AcqRel);
        }
    }

    /// Serializes frame `index` now when several queued items will take it, so the writers
    /// only copy a pointer (the hub calls this before fanning a shared stream out).
    pub fn prepare(&self, index: u32) {
        let Some(slot) = self.slots.get(index as usize) else { return };
        let mut cached = slot.frame.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.is_none() && slot.waiting.load(Ordering::Acquire) > 1 {
            *cached = Some(self.event.frame(self.target(index).unwrap_or(BROADCAST), &self.epoch));
        }
    }

    /// Frame `index` for one queued item (announced with [`Delivery::expect`]): serialized once
    /// and kept while other items may still take it, dropped when the last one has. A frame for
    /// a single recipient is never kept, so it lives only while that connection writes it.
    pub fn take_frame(&self, index: u32) -> Utf8Bytes {
        let Some(slot) = self.slots.get(index as usize) else {
            return self.event.frame(BROADCAST, &self.epoch);
        };
        let mut cached = slot.frame.lock().unwrap_or_else(PoisonError::into_inner);
        let frame = match cached.as_ref() {
            Some(frame) => frame.clone(),
            None => {
                let frame = self.event.frame(self.target(index).unwrap_or(BROADCAST), &self.epoch);
                if slot.waiting.load(Ordering::Acquire) > 1 {
                    *cached = Some(frame.clone());
                }
                frame
            }
        };
        let before = slot.waiting.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| Some(w.saturating_sub(1)));
        if before.unwrap_or(0) <= 1 {
            *cached = None;
        }
        frame
    }

    /// Frame `index` without taking part in the sharing (tests, diagnostics).
    pub fn frame(&self, index: u32) -> Utf8Bytes {
        self.event.frame(self.target(index).unwrap_or(BROADCAST), &self.epoch)
    }

    /// Serialized frames currently kept for sharing (for tests of the memory bound).
    pub fn kept_frames(&self) -> usize {
        self.slots.iter().filter(|s| s.frame.lock().is_ok_and(|f| f.is_some())).count()
    }

    fn target(&self, index: u32) -> Option<&str> {
        self.event.targets.get(index as usize).map(String::as_str)
    }
}

/// Counts bytes written through it.
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Length of `s` as a JSON string literal, quotes included.
fn json_string_len(s: &str) -> usize {
    let mut counter = ByteCounter(0);
    let _ = serde_json::to_writer(&mut counter, s);
    counter.0
}

/// Serializes a value that cannot fail to serialize (plain structs of strings and numbers).
pub fn to_frame<T: Serialize>(value: &T) -> Utf8Bytes {
    match serde_json::to_string(value) {
        Ok(s) => Utf8Bytes::from(s),
        Err(e) => {
            tracing::error!(error = %e, "frame serialization failed");
            Utf8Bytes::from_static(r#"{"type":"hub:error","code":"internal","message":"serialization failed"}"#)
        }
    }
}

/// The payload `{}` used when a publisher sends no `data`.
pub fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("{} is valid JSON")
}

/// A `hub:error` frame.
pub fn error_frame(code: &str, message: &str, channel: Option<&str>) -> Utf8Bytes {
    #[derive(Serialize)]
    struct ErrorFrame<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<&'a str>,
    }
    to_frame(&ErrorFrame { kind: "hub:error", code, message, channel })
}

/// Current time as RFC 3339 UTC with milliseconds, and as Unix milliseconds.
pub fn now_rfc3339() -> (String, u64) {
    let now = time::OffsetDateTime::now_utc();
    let ms = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    // RFC 3339 in UTC with exactly three fractional digits, as documented (`...12:00:00.123Z`).
    let text = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.millisecond()
    );
    (text, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        let (text, ms) = now_rfc3339();
        assert_eq!(text.len(), "2026-01-01T12:00:00.123Z".len(), "{text}");
        let parsed =
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
        assert_eq!(u64::try_from(parsed.unix_timestamp_nanos() / 1_000_000).expect("after 1970"), ms);
    }

    #[test]
    fn channel_names() {
        assert!(validate_channel("service:12").is_ok());
        assert!(validate_channel("a/b@c=d.e_f-g").is_ok());
        assert_eq!(validate_channel(""), Err(ChannelNameError::Length));
        assert_eq!(validate_channel(&"a".repeat(129)), Err(ChannelNameError::Length));
        assert_eq!(validate_channel("sp ace"), Err(ChannelNameError::Character));
        assert_eq!(validate_channel("ñ"), Err(ChannelNameError::Character));
    }

    #[test]
    fn close_codes_round_trip() {
        for r in ALL_REASONS {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
    }

    #[test]
    fn client_messages_parse_and_reject_unknown() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"subscribe","channel":"x","since":3}"#).expect("ok");
        assert!(matches!(m, ClientMessage::Subscribe { since: Some(3), .. }));
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"dance"}"#).is_err());
    }

    fn event_to(targets: Vec<String>, data: &str) -> Arc<Event> {
        Arc::new(Event {
            id: "e1".into(),
            seq: 7,
            kind: "test".into(),
            message: String::new(),
            data: RawValue::from_string(data.into()).expect("raw"),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            targets,
            from: None,
            exclude: None,
            accepted_ms: 0,
            receipt: Receipt::default(),
            delivery: Default::default(),
        })
    }

    #[test]
    fn a_publish_to_many_single_recipients_never_keeps_their_frames() {
        let users: Vec<String> = (0..1000).map(|u| format!("user:u{u}")).collect();
        let d = Delivery::new(event_to(users, r#"{"blob":"xxxxxxxx"}"#), "ep");
        assert_eq!(d.kept_frames(), 0, "nothing is serialized before a recipient needs it");
        for index in 0..1000 {
            d.expect(index, 1);
            let frame = d.take_frame(index);
            assert_eq!(frame.len(), d.frame_len(index), "the queue's byte count is exact");
            assert_eq!(d.kept_frames(), 0, "a frame for one recipient lives only while written");
        }
    }

    #[test]
    fn a_shared_frame_is_serialized_once_and_replays_reuse_it() {
        let event = event_to(vec![BROADCAST.into()], "{}");
        let live = Delivery::shared(&event, "ep");
        live.expect(0, 2);
        let first = live.take_frame(0);
        // A replay announced before the second live recipient took it shares the same frame.
        let replay = Delivery::shared(&event, "ep");
        assert!(Arc::ptr_eq(&live, &replay), "a replay shares the live delivery");
        replay.expect(0, 1);
        let second = live.take_frame(0);
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr(), "one copy for every recipient");
        assert_eq!(replay.take_frame(0).as_str().as_ptr(), first.as_str().as_ptr());
        assert_eq!(live.kept_frames(), 0, "dropped once the last recipient took it");
    }

    #[test]
    fn frame_has_go_hub_fields_and_position() {
        let data = RawValue::from_string(r#"{"a":1}"#.into()).expect("raw");
        let ev = Event {
            id: "e1".into(),
            seq: 7,
            kind: "test".into(),
            message: "hi".into(),
            data,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            targets: vec![BROADCAST.into()],
            from: None,
            exclude: None,
            accepted_ms: 0,
            receipt: Receipt::default(),
            delivery: Default::default(),
        };
        let v: serde_json::Value = serde_json::from_str(&ev.frame(BROADCAST, "ep")).expect("json");
        assert_eq!(v["type"], "test");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["epoch"], "ep");
        assert_eq!(v["channel"], "broadcast");
    }
}

//! The wire protocol: client frames, server control frames, notifications and close codes.
//! docs/PROTOCOL.md is the reference; this module is its code.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The send queue filled up.
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
        let frame = EventFrame {
            id: &self.id,
            kind: &self.kind,
            message: &self.message,
            data: &self.data,
            timestamp: &self.timestamp,
            channel,
            seq: self.seq,
            epoch,
            from: self.from.as_deref(),
        };
        to_frame(&frame)
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

/// An event with its frames serialized once per target stream.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Arc<Event>,
    /// One frame per entry of `event.targets`, in the same order.
    pub frames: Vec<Utf8Bytes>,
    /// When this process accepted the event (or got it from Redis), for the delivery-latency
    /// histogram; `None` for a replayed event, whose delay is the client's absence, not the hub's.
    pub received: Option<std::time::Instant>,
}

impl Delivery {
    /// Serializes the frames of `event` for each of its targets.
    pub fn new(event: Arc<Event>, epoch: &str) -> Self {
        let frames = event.targets.iter().map(|t| event.frame(t, epoch)).collect();
        Self { event, frames, received: Some(std::time::Instant::now()) }
    }

    /// A delivery with one already serialized frame (a replayed event), at index 0.
    pub fn with_frame(event: Arc<Event>, frame: Utf8Bytes) -> Self {
        Self { event, frames: vec![frame], received: None }
    }
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
    let text = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
    (text, ms)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        let v: serde_json::Value = serde_json::from_str(&ev.frame(BROADCAST, "ep")).expect("json");
        assert_eq!(v["type"], "test");
        assert_eq!(v["data"]["a"], 1);
        assert_eq!(v["seq"], 7);
        assert_eq!(v["epoch"], "ep");
        assert_eq!(v["channel"], "broadcast");
    }
}

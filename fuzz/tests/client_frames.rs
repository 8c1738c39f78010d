//! Fuzz target: client WebSocket frames (`protocol::ClientMessage`). Any text must parse or be
//! refused without a panic; a frame with a field the protocol does not define (such as a
//! client-supplied `from`; `ping` takes no fields and ignores extras) or an unknown `type` is
//! refused; a published `data` survives a round
//! trip to the text the hub sends on.

mod strategies;

use proptest::prelude::*;
use strategies::{json_string, json_value, name};
use wshub::protocol::ClientMessage;

/// Field names of client frames, plus ones no frame has.
const FIELDS: &[&str] =
    &["channel", "since", "epoch", "token", "event", "message", "data", "id", "ids", "from", "extra", "type"];
const TYPES: &[&str] =
    &["ping", "subscribe", "unsubscribe", "auth", "publish", "ack", "hub:subscribed", "Ping", "", "sub"];

/// A frame object with a `type` (usually a real one) and random fields with random values.
fn frame() -> impl Strategy<Value = (String, String, Vec<String>)> {
    let kind = prop_oneof![4 => prop::sample::select(TYPES).prop_map(str::to_string), 1 => name()];
    let fields = prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6);
    (kind, fields).prop_map(|(kind, fields)| {
        let kind_json = serde_json::Value::String(kind.clone()).to_string();
        let mut parts = vec![format!("\"type\":{kind_json}")];
        let mut names = Vec::new();
        for (field, value) in fields {
            parts.push(format!("\"{field}\":{value}"));
            names.push(field.to_string());
        }
        (format!("{{{}}}", parts.join(",")), kind, names)
    })
}

proptest! {
    /// Arbitrary text never panics the frame parser.
    #[test]
    fn any_text_parses_or_is_refused(text in prop_oneof![any::<String>(), json_value(), json_string()]) {
        let _ = serde_json::from_str::<ClientMessage>(&text);
    }

    /// Structured frames: unknown types and unknown fields are refused; what is accepted is
    /// well formed.
    #[test]
    fn frames_follow_the_protocol((text, kind, fields) in frame()) {
        let parsed = serde_json::from_str::<ClientMessage>(&text);
        if !["ping", "subscribe", "unsubscribe", "auth", "publish", "ack"].contains(&kind.as_str()) {
            prop_assert!(parsed.is_err(), "unknown type {kind:?} accepted: {text}");
        }
        // serde cannot deny fields of a unit variant in a tagged enum: `ping` ignores extras.
        if kind != "ping" && fields.iter().any(|f| f == "from" || f == "extra") {
            prop_assert!(parsed.is_err(), "unknown field accepted: {text}");
        }
        if let Ok(ClientMessage::Publish { data: Some(data), .. }) = parsed {
            let sent = serde_json::to_string(&data);
            prop_assert!(sent.is_ok(), "published data cannot be serialized again: {text}");
            let again: serde_json::Value = serde_json::from_str(&sent.unwrap_or_default()).expect("reparse");
            prop_assert_eq!(again, data);
        }
    }

    /// A frame that is valid JSON followed by anything but whitespace is refused.
    #[test]
    fn trailing_bytes_are_refused(garbage in "[^ \t\r\n]{1,8}") {
        let text = format!("{{\"type\":\"ping\"}}{garbage}");
        prop_assert!(serde_json::from_str::<ClientMessage>(&text).is_err(), "accepted {text:?}");
    }
}

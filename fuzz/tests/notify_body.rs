//! Fuzz target: the `POST /notify` body (`http::notify::parse_body`). Arbitrary bytes never
//! panic; an accepted notification is valid by the documented rules (type, targets, batch
//! limit), its `data` can be rendered wherever the hub shows it (`/events`, the history route,
//! the dashboard turn it into a `serde_json::Value`), its frame is valid JSON, and a body with
//! trailing bytes after the JSON is refused.

mod strategies;

use std::sync::Arc;

use proptest::prelude::*;
use strategies::{json_string, json_value, name};
use wshub::http::notify::{Accepted, parse_body};
use wshub::protocol::{Event, validate_channel};

const FIELDS: &[&str] =
    &["type", "message", "data", "channel", "user", "role", "idempotency_key", "timestamp", "users", "seq"];

/// A target value: a name, a list of names, a number, or something of the wrong shape.
fn target() -> impl Strategy<Value = String> {
    let quoted = || name().prop_map(|n| serde_json::Value::String(n).to_string());
    prop_oneof![
        3 => quoted(),
        2 => prop::collection::vec(quoted(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
        1 => json_value(),
    ]
}

/// One notification object: usually a valid `type`, then random fields.
fn notification() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        4 => "[a-z_]{1,12}".prop_map(|k| format!("\"{k}\"")),
        1 => Just("\"hub:x\"".to_string()),
        1 => Just("\"\"".to_string()),
        1 => json_value(),
    ];
    let field = prop::sample::select(FIELDS).prop_flat_map(|f| {
        let value = if ["channel", "user", "role"].contains(&f) { target().boxed() } else { json_value().boxed() };
        value.prop_map(move |v| format!("\"{f}\":{v}"))
    });
    (kind, prop::collection::vec(field, 0..5), any::<bool>()).prop_map(|(kind, mut fields, typed)| {
        if typed {
            fields.insert(0, format!("\"type\":{kind}"));
        }
        format!("{{{}}}", fields.join(","))
    })
}

/// A body: one notification, a batch, or a batch of around the 1,000 limit.
fn body() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => notification(),
        2 => prop::collection::vec(notification(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
        1 => (995usize..1005).prop_map(|n| format!("[{}]", vec![r#"{"type":"t"}"#; n].join(","))),
    ]
}

/// Checks everything an accepted body promises.
fn check_accepted(text: &str, accepted: &[Accepted], batch: bool) -> Result<(), TestCaseError> {
    prop_assert!(!accepted.is_empty() && accepted.len() <= 1000, "{} notifications accepted", accepted.len());
    prop_assert_eq!(batch, text.trim_start().starts_with('['));
    for a in accepted {
        let e = &a.event;
        prop_assert!(!e.kind.is_empty() && !e.kind.starts_with("hub:"), "type {:?} accepted", e.kind);
        for (i, t) in e.targets.iter().enumerate() {
            prop_assert!(validate_channel(t).is_ok(), "invalid target {t:?} accepted");
            prop_assert!(!e.targets[..i].contains(t), "target {t:?} twice");
        }
        let shown = serde_json::to_value(&*e.data);
        prop_assert!(shown.is_ok(), "accepted data cannot be shown as JSON ({:?}): {}", shown.err(), e.data.get());
        let event = Event {
            id: "id".into(),
            seq: 1,
            kind: e.kind.clone(),
            message: e.message.clone(),
            data: e.data.clone(),
            timestamp: "2026-01-01T00:00:00Z".into(),
            targets: e.targets.clone(),
            from: None,
            exclude: None,
            accepted_ms: 0,
            receipt: Default::default(),
            delivery: Default::default(),
        };
        let frame = Arc::new(event).frame("broadcast", "e");
        prop_assert!(serde_json::from_str::<serde_json::Value>(&frame).is_ok(), "frame is not JSON: {}", &*frame);
    }
    Ok(())
}

proptest! {
    /// Arbitrary bytes never panic the parser.
    #[test]
    fn any_bytes_parse_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_body(&bytes);
    }

    /// Structured bodies: whatever is accepted keeps the documented promises.
    #[test]
    fn accepted_bodies_are_valid(text in body()) {
        if let Ok((accepted, batch)) = parse_body(text.as_bytes()) {
            check_accepted(&text, &accepted, batch)?;
        }
    }

    /// A valid body followed by bytes that are not whitespace is refused (400), never
    /// published with the garbage silently dropped.
    #[test]
    fn trailing_bytes_are_refused(garbage in "[^ \t\r\n]{1,8}", batch in any::<bool>()) {
        let valid = if batch { r#"[{"type":"t"}]"# } else { r#"{"type":"t"}"# };
        prop_assert!(parse_body(valid.as_bytes()).is_ok());
        let text = format!("{valid}{garbage}");
        prop_assert!(parse_body(text.as_bytes()).is_err(), "accepted {text:?}");
    }

    /// Any `data` value: accepted data is always renderable (or the body is refused).
    #[test]
    fn any_data_is_renderable_or_refused(data in json_value(), message in json_string()) {
        let text = format!(r#"{{"type":"t","message":{message},"data":{data}}}"#);
        if let Ok((accepted, batch)) = parse_body(text.as_bytes()) {
            check_accepted(&text, &accepted, batch)?;
        }
    }
}

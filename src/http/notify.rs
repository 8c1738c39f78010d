//! `POST /notify`: parse and validate one notification or a batch, then publish through the
//! engine. Every rejection names the field (and the batch index) that is wrong.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::ApiError;
use crate::app::AppState;
use crate::engine::{NewEvent, Published};
use crate::metrics::namespace_of;
use crate::protocol::{empty_object, validate_channel};

/// Most notifications in one batch.
pub const MAX_BATCH: usize = 1000;

pub(super) fn routes(max_body_bytes: usize) -> Router<Arc<AppState>> {
    Router::new().route("/notify", post(notify).layer(DefaultBodyLimit::max(max_body_bytes)))
}

/// One notification as a publisher sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    #[serde(rename = "type")]
    kind: Option<Value>,
    message: Option<Value>,
    data: Option<Box<RawValue>>,
    channel: Option<Value>,
    user: Option<Value>,
    role: Option<Value>,
    idempotency_key: Option<String>,
    /// Accepted and ignored: Go hub publishers may send one; the hub sets its own.
    #[serde(rename = "timestamp")]
    _timestamp: Option<Value>,
}

/// A validated notification and its idempotency key.
pub struct Accepted {
    /// The notification as the engine publishes it.
    pub event: NewEvent,
    /// Its `idempotency_key` field, if any.
    pub key: Option<String>,
}

async fn notify(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let reject = |reason: &str, err: ApiError| {
        app.metrics.publish_rejected.with_label_values(&[reason]).inc();
        err
    };
    require_json(&headers).map_err(|e| reject("unsupported_media_type", e))?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            let msg = format!("body over {} bytes (--max-body-bytes)", app.config.max_body_bytes);
            reject("too_large", ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, msg))
        }
        status => reject("bad_body", ApiError::new(status, e.body_text())),
    })?;
    let header_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let (accepted, batch) = parse_body(&body).map_err(|e| reject("invalid", e))?;
    let key = match (&header_key, batch) {
        (Some(key), _) => Some(key.clone()),
        (None, false) => accepted.first().and_then(|a| a.key.clone()),
        (None, true) => None,
    };
    if batch && accepted.iter().any(|a| a.key.is_some()) {
        return Err(reject(
            "invalid",
            ApiError::bad_request(
                "idempotency_key inside a batch is not supported: send an Idempotency-Key header for the whole batch",
            ),
        ));
    }
    for a in &accepted {
        count_namespaces(&app, &a.event);
    }
    let described: Option<Vec<(String, Vec<String>)>> = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| accepted.iter().map(|a| (a.event.kind.clone(), a.event.targets.clone())).collect());
    let events = accepted.into_iter().map(|a| a.event).collect();
    let published = publish_detached(&app, events, key).await?;
    if let Some(described) = described {
        for (p, (kind, targets)) in published.iter().zip(&described) {
            tracing::debug!(id = %p.id, seq = p.seq, kind, ?targets, recipients = ?p.recipients, %peer, "published");
        }
    }
    let answers: Vec<Answer> = published.iter().map(Answer::from).collect();
    Ok(if batch { Json(answers).into_response() } else { Json(&answers[0]).into_response() })
}

/// The answer for one published event (`nodes` only in cluster mode).
#[derive(serde::Serialize)]
struct Answer<'a> {
    success: bool,
    id: &'a str,
    seq: u64,
    recipients: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
}

impl<'a> From<&'a Published> for Answer<'a> {
    fn from(p: &'a Published) -> Self {
        Self { success: true, id: &p.id, seq: p.seq, recipients: p.recipients, nodes: p.nodes }
    }
}

fn count_namespaces(app: &AppState, event: &NewEvent) {
    if event.targets.is_empty() {
        app.metrics.events_broadcast.inc();
    }
    for target in &event.targets {
        app.metrics.events_by_namespace.with_label_values(&[namespace_of(target)]).inc();
    }
}

/// Publishes in a task of its own, so a publisher that hangs up mid-request cannot cancel a publish
/// halfway (events handed to the hub, idempotency result not recorded).
pub(crate) async fn publish_detached(
    app: &Arc<AppState>,
    events: Vec<NewEvent>,
    key: Option<String>,
) -> Result<Vec<Published>, ApiError> {
    let engine = Arc::clone(&app.engine);
    let task = tokio::spawn(async move { engine.publish(events, key).await });
    match task.await {
        Ok(result) => Ok(result?),
        Err(e) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("publish failed: {e}"))),
    }
}

/// 415 unless the request says it is JSON.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if essence == "application/json" || essence.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json (got {:?})", content_type),
        ))
    }
}

/// Parses one object or an array of them; returns the notifications and whether it was a batch.
pub fn parse_body(body: &[u8]) -> Result<(Vec<Accepted>, bool), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let items: Vec<Box<RawValue>> =
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
        if items.is_empty() {
            return Err(ApiError::bad_request("empty batch: send at least one notification"));
        }
        if items.len() > MAX_BATCH {
            return Err(ApiError::bad_request(format!("batch of {} notifications; at most {MAX_BATCH}", items.len())));
        }
        let accepted = items
            .iter()
            .enumerate()
            .map(|(i, raw)| {
                parse_one(raw.get().as_bytes()).map_err(|e| ApiError::bad_request(format!("item {i}: {}", e.message)))
            })
            .collect::<Result<_, _>>()?;
        Ok((accepted, true))
    } else {
        Ok((vec![parse_one(body)?], false))
    }
}

/// Parses and validates one notification object.
pub(crate) fn parse_one(json: &[u8]) -> Result<Accepted, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let body: NotifyBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_data() && path != "." {
            ApiError::bad_request(format!("field `{path}`: {inner}"))
        } else if inner.is_data() {
            ApiError::bad_request(format!("body must be a JSON object (or an array of them): {inner}"))
        } else {
            ApiError::bad_request(format!("invalid JSON: {inner}"))
        }
    })?;
    let kind = match body.kind {
        Some(Value::String(s)) if s.is_empty() => {
            return Err(ApiError::bad_request("field `type` must not be empty"));
        }
        Some(Value::String(s)) if s.starts_with("hub:") => {
            return Err(ApiError::bad_request(
                "field `type` must not start with `hub:` (reserved for control messages)",
            ));
        }
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::bad_request("field `type` must be a string")),
        None => return Err(ApiError::bad_request("field `type` is required")),
    };
    let message = match body.message {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(ApiError::bad_request("field `message` must be a string")),
    };
    let data = match body.data {
        Some(raw) if raw.get() != "null" => raw,
        _ => empty_object(),
    };
    let mut targets = Vec::new();
    targets_of("channel", body.channel, "", &mut targets)?;
    targets_of("user", body.user, "user:", &mut targets)?;
    targets_of("role", body.role, "role:", &mut targets)?;
    let event = NewEvent { kind, message, data, targets, from: None, exclude: None };
    Ok(Accepted { event, key: body.idempotency_key })
}

/// Adds the streams named by a target field (a string or an array of strings).
fn targets_of(field: &str, value: Option<Value>, prefix: &str, out: &mut Vec<String>) -> Result<(), ApiError> {
    let names = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => vec![s],
        Some(Value::Number(n)) if prefix == "user:" => vec![n.to_string()],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) if prefix == "user:" => Ok(n.to_string()),
                _ => Err(ApiError::bad_request(format!("field `{field}` must be a string or an array of strings"))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad_request(format!("field `{field}` must be a string or an array of strings")));
        }
    };
    if names.is_empty() {
        // An empty list must not fall back to "no target", which means everyone.
        return Err(ApiError::bad_request(format!(
            "field `{field}` is an empty list: give at least one name or leave it out"
        )));
    }
    for name in names {
        let stream = format!("{prefix}{name}");
        if name.is_empty() {
            return Err(ApiError::bad_request(format!("field `{field}` has an empty name")));
        }
        validate_channel(&stream).map_err(|e| ApiError::bad_request(format!("field `{field}`: {name:?}: {e}")))?;
        if !out.contains(&stream) {
            out.push(stream);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        match parse_body(body.as_bytes()) {
            Err(e) => e.message,
            Ok(_) => panic!("{body} should be rejected"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert!(err(r#"{"message":"x"}"#).contains("`type` is required"));
        assert!(err(r#"{"type":""}"#).contains("`type` must not be empty"));
        assert!(err(r#"{"type":5}"#).contains("`type` must be a string"));
        assert!(err(r#"{"type":"hub:x"}"#).contains("hub:"));
        assert!(err(r#"{"type":"t","users":"1"}"#).contains("users"));
        assert!(err(r#"{"type":"t","user":{}}"#).contains("`user`"));
        assert!(err(r#"{"type":"t","channel":"bad name"}"#).contains("`channel`"));
        assert!(err(r#"[{"type":"t"},{"type":""}]"#).starts_with("item 1:"));
        assert!(err("not json").contains("invalid JSON"));
        assert!(err("[]").contains("empty batch"));
        assert!(err(r#"{"type":"t","user":[]}"#).contains("empty list"));
    }

    #[test]
    fn targets_are_deduplicated_and_prefixed() {
        let (a, batch) =
            parse_body(br#"{"type":"t","user":["1",2,"1"],"role":"admin","channel":"news"}"#).expect("valid");
        assert!(!batch);
        assert_eq!(a[0].event.targets, vec!["news", "user:1", "user:2", "role:admin"]);
    }

    #[test]
    fn go_hub_body_is_accepted() {
        let (a, _) = parse_body(br#"{"type":"test","message":"Hola mundo","data":{},"timestamp":"x"}"#).expect("valid");
        assert_eq!(a[0].event.kind, "test");
        assert!(a[0].event.targets.is_empty());
    }
}

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
use crate::idempotency::validate_key;
use crate::json_error::{describe, describe_at};
use crate::metrics::namespace_label;
use crate::protocol::{empty_object, validate_channel};
use crate::push::{EventInfo, PushMessage, PushRequest};
use crate::webhook::Notification;

/// Most notifications in one batch.
pub const MAX_BATCH: usize = 1000;

pub(super) fn routes(max_body_bytes: usize) -> Router<Arc<AppState>> {
    Router::new().route("/notify", post(notify).layer(DefaultBodyLimit::max(max_body_bytes)))
}

/// `--notify-rate`: 429 with `Retry-After` before the body is read, counted as
/// `wshub_publish_rejected_total{reason="rate_limited"}`.
pub(super) async fn rate_limit(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match app.notify_rate.check(peer.ip()) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            app.metrics.publish_rejected.with_label_values(&["rate_limited"]).inc();
            let secs = wait.as_secs().max(1);
            let message = format!(
                "more than {} publish requests per second from your address (--notify-rate); retry after {secs} s, or send batches",
                app.config.notify_rate
            );
            let error = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message);
            super::closing(([(header::RETRY_AFTER, secs.to_string())], error).into_response())
        }
    }
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
    /// The `client_id` (from `hub:connected`) of a connection that must not get this event.
    exclude_client: Option<Value>,
    /// `"webhook"`: also send a `notification.unread` webhook for each target user.
    fallback: Option<Value>,
    /// Web Push fallback: what the notification shows (`title`, `body`, `url`, `tag`).
    push: Option<Value>,
    /// When to push: to users who did not ack within this long, or (`"0s"`, the default) to
    /// users without a live connection.
    fallback_after: Option<Value>,
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
    /// Whether `notification.unread` webhooks were asked for.
    pub fallback_webhook: bool,
    /// The Web Push fallback asked for.
    pub push: Option<PushRequest>,
}

/// Longest accepted `exclude_client`.
const MAX_CLIENT_ID_LEN: usize = 64;

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
        // The body timeout of the router (tower-http) surfaces as a failed read.
        _ if std::error::Error::source(&e).is_some_and(|cause| cause.to_string().contains("not received within")) => {
            let msg = format!(
                "the request body did not arrive within {:?} (--header-read-timeout)",
                app.config.header_read_timeout
            );
            reject("body_timeout", ApiError::new(StatusCode::REQUEST_TIMEOUT, msg))
        }
        status => reject("bad_body", ApiError::new(status, e.body_text())),
    })?;
    let max_key = app.config.max_idempotency_key_bytes as usize;
    let mut header_keys = headers.get_all("idempotency-key").iter();
    let header_key = match header_keys.next() {
        Some(_) if header_keys.next().is_some() => {
            return Err(reject("idempotency_key", ApiError::bad_request("more than one Idempotency-Key header")));
        }
        Some(value) => {
            validate_key(value.as_bytes(), max_key)
                .map_err(|e| reject("idempotency_key", ApiError::bad_request(e.to_string())))?;
            value.to_str().ok().map(str::to_string)
        }
        None => None,
    };
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
    if let (Some(header), Some(field)) = (&header_key, accepted.first().and_then(|a| a.key.as_ref()))
        && header != field
    {
        return Err(reject(
            "idempotency_key",
            ApiError::bad_request("the Idempotency-Key header and the `idempotency_key` field differ: send one"),
        ));
    }
    if header_key.is_none()
        && let Some(key) = &key
    {
        validate_key(key.as_bytes(), max_key)
            .map_err(|e| reject("idempotency_key", ApiError::bad_request(format!("field `idempotency_key`: {e}"))))?;
    }
    let claimed = match &key {
        Some(key) => Some(app.idempotency.claim(key, &canonical_body(&body)).map_err(|e| {
            reject("idempotency_conflict", ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))
        })?),
        None => None,
    };
    for a in &accepted {
        count_namespaces(&app, &a.event);
    }
    if accepted.iter().any(|a| a.fallback_webhook) && !app.webhooks.enabled() {
        return Err(reject(
            "invalid",
            ApiError::bad_request("fallback \"webhook\" needs --webhook-url (no webhook is configured)"),
        ));
    }
    if accepted.iter().any(|a| a.push.is_some()) && !app.push.has_room() {
        return Err(reject(
            "busy",
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many push fallbacks waiting; try again later"),
        ));
    }
    let unread: Vec<Option<Unread>> = accepted.iter().map(Unread::of).collect();
    let pushes: Vec<Option<PendingPush>> = accepted.iter().map(PendingPush::of).collect();
    let described: Option<Vec<(String, Vec<String>)>> = tracing::enabled!(tracing::Level::DEBUG)
        .then(|| accepted.iter().map(|a| (a.event.kind.clone(), a.event.targets.clone())).collect());
    let events = accepted.into_iter().map(|a| a.event).collect();
    let published = match publish_detached(&app, events, key.clone()).await {
        Ok(published) => published,
        Err(e) => {
            // Not accepted: a retry with this key may carry another body.
            if let (Some(key), Some(fingerprint)) = (&key, claimed) {
                app.idempotency.forget(key, fingerprint);
            }
            return Err(e);
        }
    };
    if let Some(described) = described {
        for (p, (kind, targets)) in published.iter().zip(&described) {
            tracing::debug!(id = %p.id, seq = p.seq, kind, ?targets, recipients = ?p.recipients, %peer, "published");
        }
    }
    for (p, unread) in published.iter().zip(&unread) {
        if let Some(unread) = unread {
            unread.emit(&app, p);
        }
    }
    for (p, push) in published.iter().zip(pushes) {
        if let Some(push) = push {
            push.schedule(&app, p);
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

/// What a `notification.unread` webhook needs of an event with `fallback: "webhook"`, kept
/// because the event itself is moved into the engine.
struct Unread {
    users: Vec<String>,
    kind: String,
    message: String,
    data: Box<RawValue>,
}

impl Unread {
    fn of(a: &Accepted) -> Option<Self> {
        a.fallback_webhook.then(|| Self {
            users: a.event.targets.iter().filter_map(|t| t.strip_prefix("user:")).map(str::to_string).collect(),
            kind: a.event.kind.clone(),
            message: a.event.message.clone(),
            data: a.event.data.clone(),
        })
    }

    fn emit(&self, app: &AppState, published: &Published) {
        let notification = Notification {
            id: &published.id,
            seq: published.seq,
            kind: &self.kind,
            message: &self.message,
            data: &self.data,
        };
        for user in &self.users {
            app.webhooks.notification_unread(user, &notification);
        }
    }
}

/// A Web Push fallback to schedule once the event is published.
struct PendingPush {
    users: Vec<String>,
    kind: String,
    message: String,
    data: Box<RawValue>,
    request: PushRequest,
}

impl PendingPush {
    fn of(a: &Accepted) -> Option<Self> {
        let request = a.push.clone()?;
        Some(Self {
            users: a.event.targets.iter().filter_map(|t| t.strip_prefix("user:")).map(str::to_string).collect(),
            kind: a.event.kind.clone(),
            message: a.event.message.clone(),
            data: a.event.data.clone(),
            request,
        })
    }

    fn schedule(self, app: &Arc<AppState>, published: &Published) {
        let event = EventInfo {
            id: published.id.clone(),
            seq: published.seq,
            kind: self.kind,
            message: self.message,
            data: self.data,
        };
        app.push.schedule(app, event, self.users, self.request);
    }
}

/// Counts an accepted event in `wshub_events_published_total` (every publish route calls it).
pub(crate) fn count_namespaces(app: &AppState, event: &NewEvent) {
    if event.targets.is_empty() {
        app.metrics.events_broadcast.inc();
    }
    for target in &event.targets {
        app.metrics.events_by_namespace.with_label_values(&[namespace_label(target, &app.config.namespaces)]).inc();
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
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(describe(&e)))?;
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
        if inner.is_data() && path == "." {
            ApiError::bad_request(format!("body must be a JSON object (or an array of them): {}", describe(&inner)))
        } else {
            ApiError::bad_request(describe_at(&path, &inner))
        }
    })?;
    de.end().map_err(|e| ApiError::bad_request(format!("invalid JSON: bytes after the notification ({e})")))?;
    if let Some(data) = &body.data {
        let mut de = serde_json::Deserializer::from_str(data.get());
        serde::de::DeserializeSeed::deserialize(WellFormed { levels: MAX_DATA_DEPTH }, &mut de)
            .map_err(|e| ApiError::bad_request(format!("field `data`: {e}")))?;
    }
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
    let mut seen = std::collections::HashSet::with_capacity(targets.len());
    targets.retain(|t| seen.insert(t.clone()));
    if targets.len() > MAX_TARGETS {
        return Err(ApiError::bad_request(format!(
            "{} targets in one notification; at most {MAX_TARGETS} (channel, user and role together): \
             split it into a batch",
            targets.len()
        )));
    }
    let exclude = match body.exclude_client {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if is_client_id(&s) => Some(s),
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `exclude_client` must be a client_id from hub:connected (like \"a1b2c3-42\")",
            ));
        }
    };
    let fallback_webhook = match body.fallback {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "webhook" => true,
        Some(_) => return Err(ApiError::bad_request("field `fallback` must be \"webhook\"")),
    };
    if fallback_webhook && !targets.iter().any(|t| t.starts_with("user:")) {
        return Err(ApiError::bad_request("field `fallback` needs a `user` target: unread is per user"));
    }
    let push = parse_push(body.push, body.fallback_after, &targets)?;
    let event = NewEvent { kind, message, data, targets, from: None, exclude };
    Ok(Accepted { event, key: body.idempotency_key, fallback_webhook, push })
}

/// `push` and `fallback_after`: a Web Push fallback for the event's `user` targets.
fn parse_push(push: Option<Value>, after: Option<Value>, targets: &[String]) -> Result<Option<PushRequest>, ApiError> {
    let push = push.filter(|v| !v.is_null());
    let after = after.filter(|v| !v.is_null());
    let Some(push) = push else {
        return match after {
            Some(_) => Err(ApiError::bad_request("field `fallback_after` needs `push` (what to show)")),
            None => Ok(None),
        };
    };
    if serde_json::to_vec(&push).map_or(0, |v| v.len()) > crate::push::MAX_PAYLOAD_BYTES {
        return Err(ApiError::bad_request(format!(
            "field `push` over {} bytes (push services take about 4 KiB)",
            crate::push::MAX_PAYLOAD_BYTES
        )));
    }
    let message: PushMessage = serde_json::from_value(push)
        .map_err(|e| ApiError::bad_request(format!("field `push`: {e} (keys: title, body, url, tag; strings)")))?;
    let after = match after {
        None => std::time::Duration::ZERO,
        Some(Value::String(s)) => {
            crate::push::parse_after(&s).map_err(|e| ApiError::bad_request(format!("field `fallback_after`: {e}")))?
        }
        Some(_) => return Err(ApiError::bad_request("field `fallback_after` must be a duration string like \"30s\"")),
    };
    if !targets.iter().any(|t| t.starts_with("user:")) {
        return Err(ApiError::bad_request("field `push` needs a `user` target: push subscriptions are per user"));
    }
    Ok(Some(PushRequest { message, after }))
}

/// True for a `client_id` as `hub:connected` gives it: node id, `-`, connection number.
fn is_client_id(s: &str) -> bool {
    s.len() <= MAX_CLIENT_ID_LEN
        && s.split_once('-').is_some_and(|(node, n)| {
            !node.is_empty()
                && node.chars().all(|c| c.is_ascii_alphanumeric())
                && !n.is_empty()
                && n.chars().all(|c| c.is_ascii_digit())
        })
}

/// What a retry must repeat for its `Idempotency-Key` to match: the body's JSON with object keys
/// sorted and white space dropped, without `timestamp` (replaced by the hub, and set afresh by
/// Go-hub-style clients on each retry) and `idempotency_key`. Called only for a body that parsed.
fn canonical_body(body: &[u8]) -> Vec<u8> {
    fn strip(value: &mut Value) {
        if let Value::Object(fields) = value {
            fields.remove("timestamp");
            fields.remove("idempotency_key");
        }
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(mut value) => {
            match &mut value {
                Value::Array(items) => items.iter_mut().for_each(strip),
                other => strip(other),
            }
            canonical_json(&value).into_bytes()
        }
        Err(_) => body.to_vec(),
    }
}

/// JSON text with every object's keys in sorted order, whatever map type serde_json was built with.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&fields[k.as_str()])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        scalar => scalar.to_string(),
    }
}

/// Most distinct streams one notification may target. Every target costs the hub a stream
/// lookup, a history entry and a frame, so a body at the size limit (over 100,000 short names)
/// must not be one event; a batch spreads the work over events the hub serves one by one.
pub const MAX_TARGETS: usize = 10_000;

/// Deepest nesting accepted in `data`. Frames wrap `data` in their envelope (and `hub:*` replies
/// wrap events once more), so this leaves room below the 128 levels that serde_json and many other
/// parsers refuse, and every client can parse every frame.
pub const MAX_DATA_DEPTH: usize = 100;

/// Accepts any JSON value that every reader can handle: numbers within the range of a double and
/// nesting at most `levels` deep. Walks the value without building it.
#[derive(Clone, Copy)]
struct WellFormed {
    levels: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for WellFormed {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl WellFormed {
    /// The check for the values nested one level down, or an error past the limit.
    fn inner<E: serde::de::Error>(self) -> Result<Self, E> {
        match self.levels.checked_sub(1) {
            Some(levels) => Ok(Self { levels }),
            None => Err(E::custom(format!("nested deeper than {MAX_DATA_DEPTH} levels"))),
        }
    }
}

impl<'de> serde::de::Visitor<'de> for WellFormed {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// Adds the streams named by a target field (a string or an array of strings).
fn targets_of(field: &str, value: Option<Value>, prefix: &str, out: &mut Vec<String>) -> Result<(), ApiError> {
    let names = match value {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => vec![s],
        Some(Value::Number(n)) if prefix == "user:" && (n.is_u64() || n.is_i64()) => vec![n.to_string()],
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                Value::Number(n) if prefix == "user:" && (n.is_u64() || n.is_i64()) => Ok(n.to_string()),
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
        out.push(stream);
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
        assert_eq!(
            err("5"),
            "body must be a JSON object (or an array of them): got integer `5`, expected a JSON object"
        );
        assert!(
            err("not json").starts_with("invalid JSON at line 1, column 2: expected a value"),
            "{}",
            err("not json")
        );
        assert!(err(r#"{"type":"t","idempotency_key":5}"#).contains("got integer `5`, expected a string"));
        assert!(
            err(r#"{"type":"t","users":"1"}"#).starts_with("unknown field `users`"),
            "{}",
            err(r#"{"type":"t","users":"1"}"#)
        );
        assert!(err("[]").contains("empty batch"));
        assert!(err(r#"{"type":"t","user":[]}"#).contains("empty list"));
        assert!(err(r#"{"type":"t","exclude_client":5}"#).contains("`exclude_client`"));
        assert!(err(r#"{"type":"t","exclude_client":"nodash"}"#).contains("`exclude_client`"));
        assert!(err(r#"[{"type":"t"},{"type":"t","exclude_client":"a-b"}]"#).starts_with("item 1:"));
        assert!(err(r#"{"type":"t","fallback":"email"}"#).contains("`fallback`"));
        assert!(err(r#"{"type":"t","channel":"news","fallback":"webhook"}"#).contains("`user` target"));
        assert!(err(r#"{"type":"t"} trailing"#).contains("bytes after"));
        assert!(err(r#"{"type":"t"}{"type":"u"}"#).contains("bytes after"));
        assert!(err(r#"{"type":"t","data":{"x":1e400}}"#).starts_with("field `data`"));
        let deep = format!(r#"{{"type":"t","data":{}1{}}}"#, "[".repeat(129), "]".repeat(129));
        assert!(err(&deep).starts_with("field `data`"), "{}", err(&deep));
        let ok = format!(r#"{{"type":"t","data":{}1{}}}"#, "[".repeat(100), "]".repeat(100));
        let over = format!(r#"{{"type":"t","data":{}1{}}}"#, "[".repeat(101), "]".repeat(101));
        assert!(err(&over).contains("deeper than 100"), "{}", err(&over));
        let names: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("c{i}")).collect();
        let many = serde_json::json!({"type": "t", "channel": names}).to_string();
        assert!(err(&many).contains("at most 10000"), "{}", err(&many));
        assert!(parse_body(ok.as_bytes()).is_ok(), "100 levels are fine");
    }

    #[test]
    fn a_retry_matches_its_key_whatever_its_spacing_key_order_or_timestamp() {
        let first = canonical_body(br#"{"type":"t","data":{"a":1,"b":[1,2]},"timestamp":"2026-01-01T00:00:00Z"}"#);
        let retry = canonical_body(b"{ \"data\" : {\"b\":[1, 2],\"a\":1}, \"type\":\"t\", \"timestamp\":\"later\" } ");
        assert_eq!(first, retry);
        assert_ne!(first, canonical_body(br#"{"type":"t","data":{"a":2,"b":[1,2]}}"#));
    }

    #[test]
    fn targets_are_deduplicated_and_prefixed() {
        let (a, batch) =
            parse_body(br#"{"type":"t","user":["1",2,"1"],"role":"admin","channel":"news"}"#).expect("valid");
        assert!(!batch);
        assert_eq!(a[0].event.targets, vec!["news", "user:1", "user:2", "role:admin"]);
    }

    #[test]
    fn exclude_client_and_fallback_are_carried() {
        let (a, _) =
            parse_body(br#"[{"type":"t","exclude_client":"k3x9Qa-17"},{"type":"t","user":"9","fallback":"webhook"}]"#)
                .expect("valid");
        assert_eq!(a[0].event.exclude.as_deref(), Some("k3x9Qa-17"));
        assert!(!a[0].fallback_webhook);
        assert!(a[1].fallback_webhook && a[1].event.exclude.is_none());
    }

    #[test]
    fn go_hub_body_is_accepted() {
        let (a, _) = parse_body(br#"{"type":"test","message":"Hola mundo","data":{},"timestamp":"x"}"#).expect("valid");
        assert_eq!(a[0].event.kind, "test");
        assert!(a[0].event.targets.is_empty());
    }
}

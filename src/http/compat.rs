//! Compatibility routes for backends written against the NestJS gateway of the same family of
//! apps: `/api/dashboard/*` publish endpoints answering 202.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::ApiError;
use super::notify::{count_namespaces, parse_one, require_json};
use crate::app::AppState;

pub(super) fn routes(max_body_bytes: usize) -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/dashboard/emit-event", post(emit_event))
        .route("/api/dashboard/notify-role", post(notify_role))
        .route("/api/dashboard/notify-user", post(notify_user))
        .route("/api/dashboard/update-dashboard", post(update_dashboard))
        .layer(axum::extract::DefaultBodyLimit::max(max_body_bytes))
}

/// Publishes a notification built from the gateway-shaped body; 202 with the event id.
async fn publish(app: &Arc<AppState>, notification: Value) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bytes = serde_json::to_vec(&notification).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let accepted = parse_one(&bytes).map_err(|e| rejected(app, "invalid", e))?;
    count_namespaces(app, &accepted.event);
    let published = super::notify::publish_detached(app, vec![accepted.event], None).await?;
    let first =
        published.first().ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "nothing published"))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"success": true, "id": first.id, "recipients": first.recipients}))))
}

/// Counts a refused publish in `wshub_publish_rejected_total`, as `/notify` does.
fn rejected(app: &AppState, reason: &str, err: ApiError) -> ApiError {
    app.metrics.publish_rejected.with_label_values(&[reason]).inc();
    err
}

/// Checks the content type, then parses the body as one JSON object (the API-key rule already ran
/// as a layer).
fn gateway_body(app: &AppState, headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    require_json(headers).map_err(|e| rejected(app, "unsupported_media_type", e))?;
    let body = body.map_err(|e| rejected(app, "bad_body", ApiError::new(e.status(), e.body_text())))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| rejected(app, "invalid", ApiError::bad_request(crate::json_error::describe(&e))))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(rejected(app, "invalid", ApiError::bad_request("body must be a JSON object")))
    }
}

fn field<'a>(app: &AppState, body: &'a Value, name: &str) -> Result<&'a Value, ApiError> {
    body.get(name)
        .filter(|v| !v.is_null())
        .ok_or_else(|| rejected(app, "invalid", ApiError::bad_request(format!("field `{name}` is required"))))
}

/// `{type, data, timestamp}` → broadcast.
async fn emit_event(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = gateway_body(&app, &headers, body)?;
    let n = json!({"type": field(&app, &body, "type")?, "data": body.get("data")});
    publish(&app, n).await
}

/// `{role, event, payload}` → `role:{role}`.
async fn notify_role(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = gateway_body(&app, &headers, body)?;
    let n =
        json!({"type": field(&app, &body, "event")?, "data": body.get("payload"), "role": field(&app, &body, "role")?});
    publish(&app, n).await
}

/// `{userId, event, payload}` → `user:{userId}`.
async fn notify_user(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = gateway_body(&app, &headers, body)?;
    let n = json!({"type": field(&app, &body, "event")?, "data": body.get("payload"), "user": field(&app, &body, "userId")?});
    publish(&app, n).await
}

/// Any object → the `dashboard` channel, type `event` (default `dashboard_update`), data `payload`
/// (default: the whole body).
async fn update_dashboard(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = gateway_body(&app, &headers, body)?;
    let kind = body.get("event").cloned().unwrap_or_else(|| json!("dashboard_update"));
    let data = body.get("payload").cloned().unwrap_or_else(|| body.clone());
    publish(&app, json!({"type": kind, "data": data, "channel": "dashboard"})).await
}

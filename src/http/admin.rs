//! Operator endpoints behind the API-key rule: stats, metrics, channels, presence, online users, history,
//! clients, recent events, disconnect; plus `POST /dev/token` in `--dev` mode.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use crate::app::AppState;
use crate::hub::Command;
use crate::protocol::validate_channel;
use crate::stats::{self, EventRow};

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .route("/channels", get(channels))
        .route("/channels/{name}/presence", get(presence))
        .route("/presence/users", get(presence_users))
        .route("/channels/{name}/history", get(history))
        .route("/clients", get(clients))
        .route("/events", get(recent_events))
        .route("/events/{id}", get(event_by_id))
        .route("/admin/disconnect", post(disconnect))
}

/// `POST /dev/token`: outside the API-key rule (it checks its own conditions) and without CORS.
pub(super) fn dev_routes() -> Router<Arc<AppState>> {
    Router::new().route("/dev/token", post(dev_token))
}

async fn stats(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let mut body = stats::snapshot(&app).await?;
    body["series"] = app.sampler.series();
    Ok(Json(body))
}

async fn metrics(State(app): State<Arc<AppState>>) -> Result<impl IntoResponse, ApiError> {
    app.metrics.history_bytes.set(app.engine.history_bytes() as i64);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()))
}

async fn channels(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let list = app.hub.ask(|reply| Command::Channels { reply }).await?;
    let rows: Vec<Value> = list.into_iter().map(|(name, n)| json!({"channel": name, "subscribers": n})).collect();
    Ok(Json(json!({ "channels": rows })))
}

/// Users announced online by webhooks (not yet announced offline), so a backend can reconcile.
async fn presence_users(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let users = app.presence.users().await.ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "presence is unavailable (stopping, or Redis)")
    })?;
    Ok(Json(json!({"count": users.len(), "users": users})))
}

async fn presence(State(app): State<Arc<AppState>>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    validate_channel(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (users, anonymous) = match app.engine.cluster_presence(name.clone()).await {
        Some(cluster) => (cluster.users, cluster.anonymous),
        None => app.hub.ask(|reply| Command::Presence { channel: name.clone(), reply }).await?,
    };
    let users: Vec<Value> = users.into_iter().map(|(user, n)| json!({"user": user, "connections": n})).collect();
    Ok(Json(json!({ "channel": name, "users": users, "anonymous": anonymous })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

async fn history(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    validate_channel(&name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let events = app.engine.history(name.clone(), q.since, limit).await?;
    #[derive(serde::Serialize)]
    struct History {
        channel: String,
        epoch: String,
        events: Vec<EventRow>,
    }
    let events = events.iter().map(EventRow::new).collect();
    Ok(Json(History { channel: name, epoch: app.engine.epoch(), events }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

async fn clients(
    State(app): State<Arc<AppState>>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    let limit = q.limit.unwrap_or(100).min(1000);
    let (total, page) = app.hub.ask(|reply| Command::Clients { offset: q.offset, limit, reply }).await?;
    Ok(Json(json!({ "total": total, "offset": q.offset, "limit": limit, "clients": page })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitQuery {
    limit: Option<usize>,
}

async fn recent_events(
    State(app): State<Arc<AppState>>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    #[derive(serde::Serialize)]
    struct Recent {
        events: Vec<EventRow>,
    }
    Ok(Json(Recent { events: stats::recent_events(&app, q.limit.unwrap_or(50).min(1000)).await? }))
}

async fn event_by_id(State(app): State<Arc<AppState>>, Path(id): Path<String>) -> Result<impl IntoResponse, ApiError> {
    #[derive(serde::Serialize)]
    struct Found {
        event: EventRow,
        targets: Vec<String>,
        receipts: Value,
    }
    match app.engine.find(id.clone()).await? {
        Some(event) => {
            let mut receipts = app.engine.receipt(Arc::clone(&event)).await;
            if let (Some(push), Some(obj)) = (app.push.report(&event.id), receipts.as_object_mut()) {
                obj.insert("push".into(), push);
            }
            Ok(Json(Found { targets: event.targets.clone(), event: EventRow::new(&event), receipts }))
        }
        None => Err(ApiError::new(StatusCode::NOT_FOUND, format!("no event {id:?} in the kept history"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    client_id: Option<String>,
    user: Option<String>,
}

async fn disconnect(
    State(app): State<Arc<AppState>>,
    body: Result<Json<DisconnectBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(super::json_rejection)?;
    if body.client_id.is_none() && body.user.is_none() {
        return Err(ApiError::bad_request("give `client_id` or `user`"));
    }
    let n = app.hub.ask(|reply| Command::Kick { client_id: body.client_id, user: body.user, reply }).await?;
    Ok(Json(json!({ "disconnected": n })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevTokenBody {
    sub: Value,
    role: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
    ttl_s: Option<u64>,
}

/// Mints a token for trying users and roles from the test page (`--dev` on loopback only).
async fn dev_token(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<DevTokenBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let dev_allowed = app.config.dev && app.config.addr.ip().is_loopback() && peer.ip().is_loopback();
    let Some(secret) = app.config.jwt_secret.as_deref().filter(|_| dev_allowed) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "POST /dev/token exists only with --dev, --jwt-secret and a loopback --addr",
        ));
    };
    let Json(body) = body.map_err(super::json_rejection)?;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
        + body.ttl_s.unwrap_or(3600);
    let claims =
        json!({"sub": body.sub, "role": body.role, "roles": body.roles, "channels": body.channels, "exp": exp});
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({ "token": token, "exp": exp })))
}

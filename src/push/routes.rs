//! `GET /push/vapid-public-key`, `POST` / `DELETE /push/subscriptions` (the user's JWT as
//! `Authorization: Bearer`).

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Subscription;
use crate::app::AppState;
use crate::http::ApiError;

/// Largest subscription body.
const MAX_BODY_BYTES: usize = 8 * 1024;

/// The push routes (public: the JWT authorizes, not the API key).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new().route("/push/vapid-public-key", get(public_key)).route(
        "/push/subscriptions",
        axum::routing::post(subscribe).delete(unsubscribe).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)),
    )
}

async fn public_key(State(app): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "public_key": app.push.public_key() }))
}

/// The `sub` of the bearer token.
fn user_of(app: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let verifier = app.verifier.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "push subscriptions need user identity: start the hub with --jwt-secret or --jwt-public-key",
        )
    })?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "send the user's JWT as Authorization: Bearer <token>")
        })?;
    let identity = verifier.verify(token.trim()).map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.to_string()))?;
    identity.user.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "the token has no `sub`: push is per user"))
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(b)| b).map_err(|e| ApiError::new(e.status(), e.body_text()))
}

async fn subscribe(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Subscription>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let user = user_of(&app, &headers)?;
    let subscription = json_body(body)?;
    subscription.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
    app.push.subscribe(&user, subscription);
    Ok((StatusCode::CREATED, Json(json!({ "success": true, "user": user }))))
}

#[derive(Deserialize)]
struct Unsubscribe {
    endpoint: String,
}

async fn unsubscribe(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Json<Unsubscribe>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let user = user_of(&app, &headers)?;
    let Unsubscribe { endpoint } = json_body(body)?;
    Ok(Json(json!({ "removed": app.push.unsubscribe(&user, &endpoint) })))
}

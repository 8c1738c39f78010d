//! HTTP surface: the router, the WebSocket upgrade, health, static assets and JSON errors.
//! Handlers are thin: parse, authorize, hand to the hub or the engine.

mod admin;
mod compat;
pub mod notify;
pub mod origin;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::app::AppState;
use crate::auth::{ApiKeyError, Identity, check_api_key, check_operator};
use crate::connection::{self, Handshake};
use crate::hub::Resume;

/// Bytes of tungstenite's per-connection read buffer. Clients mostly listen, so it is small and
/// grows only for a larger frame (up to `--max-message-bytes`).
const READ_BUFFER_BYTES: usize = 256;
/// Bytes of outgoing frames gathered before a socket write.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;

/// An HTTP error with a JSON body `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with a status and a message for the caller.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

/// A rejected JSON body in the caller's words (axum's own text names the Rust type it wanted).
pub(crate) fn json_rejection(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
    let status = rejection.status();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&rejection);
    while let Some(err) = source {
        if let Some(at) = err.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            return ApiError::new(status, crate::json_error::describe_at(&at.path().to_string(), at.inner()));
        }
        if let Some(json) = err.downcast_ref::<serde_json::Error>() {
            return ApiError::new(status, crate::json_error::describe(json));
        }
        source = err.source();
    }
    ApiError::new(status, rejection.body_text())
}

impl From<ApiKeyError> for ApiError {
    fn from(err: ApiKeyError) -> Self {
        let status = match err {
            ApiKeyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiKeyError::NotLoopback => StatusCode::FORBIDDEN,
        };
        Self::new(status, err.to_string())
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(err: crate::engine::EngineError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
    }
}

/// Builds the router with every route and the CORS layer.
pub fn router(app: Arc<AppState>) -> Router {
    let cors = cors_layer(&app.config.allowed_origins);
    // Publishing and admin routes: the API-key rule runs before the body is read. Without a key
    // they trust loopback, so they get no CORS headers then: a web page open on the hub's machine
    // must not be able to publish or administer through the browser.
    let publishing = Router::new()
        .merge(notify::routes(app.config.max_body_bytes as usize))
        .merge(compat::routes(app.config.max_body_bytes as usize))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), notify::rate_limit));
    let protected = Router::new()
        .merge(publishing)
        .merge(admin::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(Arc::clone(&app), require_api_key))
        // A body that stops arriving must not hold a connection (and a connection slot) forever.
        .layer(RequestBodyTimeoutLayer::new(app.config.header_read_timeout));
    let protected = if app.config.api_key.is_some() { protected.layer(cors.clone()) } else { protected };
    let public = Router::new()
        .route("/", get(index))
        .route("/wshub.js", get(wshub_js))
        .route("/wshub.mjs", get(wshub_mjs))
        .route("/wshub-sw.js", get(wshub_sw_js))
        .route("/dashboard", get(dashboard))
        .route("/ws", get(ws))
        .route("/health", get(health))
        .route("/api/health", get(health))
        .merge(crate::push::routes())
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors);
    // `/dev/token` trusts loopback: no CORS headers, and the Host and Origin checks.
    let dev = admin::dev_routes().route_layer(middleware::from_fn_with_state(Arc::clone(&app), require_local_host));
    public.merge(protected).merge(dev).fallback(not_found).with_state(app)
}

/// The publisher/admin rule as a layer, so it runs before any handler reads the body.
async fn require_api_key(
    State(app): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Result<Response, ApiError> {
    let checked = authorize(&app, request.headers(), peer).and_then(|()| match app.config.api_key {
        None => check_local_host(&app, request.headers()),
        Some(_) => Ok(()),
    });
    match checked {
        Ok(()) => Ok(next.run(request).await),
        Err(err) => Ok(closing(err.into_response())),
    }
}

/// Marks an answer sent before the request body was read: the connection cannot carry another
/// request (the unread body is still on it), so the client is told to open a new one instead of
/// finding it dropped under its next request.
pub(crate) fn closing(mut response: Response) -> Response {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// For routes trusted from loopback: the layer form of [`check_local_host`].
async fn require_local_host(
    State(app): State<Arc<AppState>>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Result<Response, ApiError> {
    check_local_host(&app, request.headers())?;
    Ok(next.run(request).await)
}

/// A request trusted because it comes from loopback must also name a loopback or configured host
/// (not a DNS-rebinding page's name) and come from no page, the hub's own, or an allowed origin.
fn check_local_host(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if origin::forwarded(headers) {
        app.metrics.requests_refused.with_label_values(&["forwarded"]).inc();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this request came through a proxy, so loopback proves nothing: start wshub with --api-key",
        ));
    }
    if !origin::host_allowed(&app.config, headers) {
        app.metrics.requests_refused.with_label_values(&["host"]).inc();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Host is not a loopback name or one of --public-hosts; requests trusted from loopback must name this machine",
        ));
    }
    if !origin::trusted_origin(&app.config, headers) {
        app.metrics.requests_refused.with_label_values(&["origin"]).inc();
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Origin is not allowed (--allowed-origins) for requests trusted from loopback",
        ));
    }
    Ok(())
}

fn cors_layer(origins: &[String]) -> CorsLayer {
    let allow = if origins.is_empty() {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            "x-api-key".parse().expect("valid header name"),
            "idempotency-key".parse().expect("valid header name"),
        ])
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/PROTOCOL.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; see the Allow header")
}

async fn dashboard() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../../static/dashboard.html"))
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], include_str!("../../static/index.html"))
}

async fn wshub_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], include_str!("../../static/wshub.js"))
}

async fn wshub_mjs() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], include_str!("../../static/wshub.mjs"))
}

/// The Web Push service worker (docs/PUSH.md); apps serve their own copy from their origin.
async fn wshub_sw_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/javascript; charset=utf-8")], include_str!("../../static/wshub-sw.js"))
}

async fn health(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let engine = app.engine.health();
    let status = if app.shutdown.is_cancelled() {
        "draining"
    } else if engine.ok {
        "ok"
    } else {
        "degraded"
    };
    let code = if status == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": status,
        "connections": app.metrics.connections.get(),
        "uptime_s": app.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "engine": engine,
        "epoch": app.engine.epoch(),
        "history_bytes": app.engine.history_bytes(),
    });
    (code, Json(body))
}

/// Query parameters of `GET /ws`.
/// Other parameters (a cache-buster, say) are ignored, as the Go hub did.
#[derive(Debug, Deserialize)]
struct WsQuery {
    token: Option<String>,
    since: Option<u64>,
    epoch: Option<String>,
    /// Asks for an operator connection (see [`check_operator`]).
    api_key: Option<String>,
}

async fn ws(
    State(app): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if app.shutdown.is_cancelled() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the hub is shutting down"));
    }
    let upgrade = upgrade.map_err(|e| ApiError::new(e.status(), format!("{e}: connect with a WebSocket client")))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    if !origin::origin_allowed(&app.config, &headers) {
        app.metrics.connections_refused.with_label_values(&["origin"]).inc();
        return Err(ApiError::new(StatusCode::FORBIDDEN, "this Origin may not connect: add it to --allowed-origins"));
    }
    let trusted_origin = origin::trusted_origin(&app.config, &headers);
    let token = query.token.or_else(|| bearer(&headers).map(str::to_string));
    let operator = query.api_key.map(|key| check_operator(app.config.api_key.as_deref(), &key, trusted_origin));
    let handshake = match (token, &app.verifier, operator) {
        (_, _, Some(Err(err))) => Handshake::Refused(err),
        (Some(token), Some(verifier), operator) => match verifier.verify(&token) {
            Ok(identity) => Handshake::Identified(Some(Identity { operator: operator.is_some(), ..identity })),
            Err(err) => Handshake::Refused(err),
        },
        (_, _, Some(Ok(()))) => Handshake::Identified(Some(Identity { operator: true, ..Identity::default() })),
        (None, Some(_), None) if app.config.require_auth => Handshake::AwaitAuth,
        _ => Handshake::Identified(None),
    };
    let resume = query.since.map(|since| Resume { since, epoch: query.epoch });
    let max = app.config.max_message_bytes as usize;
    let tracker = app.connections.clone();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            // A task of our own, so the upgrade task (and its state) ends right away.
            tracker.spawn(connection::serve(socket, app, handshake, (remote, resume, trusted_origin)));
            std::future::ready(())
        }))
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Applies the publisher/admin rule to a request.
pub fn authorize(app: &AppState, headers: &HeaderMap, peer: SocketAddr) -> Result<(), ApiError> {
    let presented = bearer(headers).or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    check_api_key(app.config.api_key.as_deref(), presented, peer).map_err(|err| {
        let reason = if err == ApiKeyError::Unauthorized { "unauthorized" } else { "forbidden" };
        app.metrics.publish_rejected.with_label_values(&[reason]).inc();
        ApiError::from(err)
    })
}

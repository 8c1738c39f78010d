//! wshub: a single-binary real-time notification hub. Backends `POST /notify`; clients on
//! `/ws` receive the events at once, targeted by channel, user or role, with resume.
//!
//! # Layout
//! - [`config`]: the clap configuration (every flag also a `WSHUB_*` variable).
//! - [`cli`]: the command line around it: the server and the operator subcommands.
//! - [`namespace`]: per-prefix channel rules from `--config`.
//! - [`protocol`]: client and server frames, events, close codes.
//! - [`auth`]: JWT identity, subscribe permissions, the API-key rule.
//! - [`hub`]: the actor owning connections and streams; fan-out and exact resume.
//! - [`connection`]: one socket's reader and writer tasks.
//! - [`engine`]: where positions, history and delivery live (`memory`; Redis for clusters).
//! - [`history`]: per-stream in-memory history.
//! - [`idempotency`]: once-only publish by key.
//! - [`limits`]: connection limits and the `/notify` rate per address.
//! - [`json_error`]: JSON errors in the caller's words, never Rust type names.
//! - [`store`]: durable history on disk for `--data-dir`.
//! - [`queue`]: a connection's send queue, bounded in bytes.
//! - [`metrics`]: Prometheus counters.
//! - [`stats`]: per-second samples for `/stats` and the live dashboard.
//! - [`push`]: Web Push fallback: VAPID keys, users' push subscriptions, the push sender.
//! - [`webhook`]: signed webhooks to the backend, debounced presence, `/presence/users`.
//! - [`http`]: the router and handlers; `http::serve` is the accept loop (header-read timeout,
//!   connection limits, lingering close) and `http::origin` the Origin and Host checks.
//! - [`app`]: state shared by handlers and connections.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connection;
pub mod engine;
pub mod history;
pub mod http;
pub mod hub;
pub mod idempotency;
pub mod json_error;
pub mod limits;
pub mod metrics;
pub mod namespace;
pub mod protocol;
pub mod push;
pub mod queue;
pub mod stats;
pub mod store;
pub mod webhook;

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::AppState;
use crate::auth::Verifier;
use crate::config::Config;
use crate::engine::Engine;
use crate::engine::memory::MemoryEngine;
use crate::engine::redis::RedisEngine;
use crate::hub::{Command, Hub};
use crate::metrics::Metrics;

/// Why the hub could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The JWT key could not be loaded.
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The durable history could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// Redis could not be reached at startup.
    #[error("cluster engine: {0}")]
    Engine(#[from] engine::EngineError),
    /// The VAPID key for Web Push could not be loaded or created.
    #[error(transparent)]
    Vapid(#[from] push::VapidError),
    /// Webhooks could not start.
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Serves the hub on `listener` until `shutdown` is cancelled, then closes every connection with
/// 1001 and waits for them (at most `--shutdown-timeout`).
pub async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let verifier = match (&config.jwt_secret, &config.jwt_public_key) {
        (Some(secret), _) => Some(Verifier::hs256(secret)),
        (None, Some(path)) => Some(Verifier::from_pem_file(path)?),
        (None, None) => None,
    };
    let metrics = Arc::new(Metrics::new()?);
    let node = engine::memory::new_epoch()[..6].to_string();
    let (hub, inbox) = hub::channel(&node);
    let engine: Arc<dyn Engine> = match &config.redis_url {
        Some(url) => RedisEngine::connect(hub.clone(), &config, url).await?,
        None => Arc::new(MemoryEngine::new(hub.clone(), &config, Arc::clone(&metrics))?),
    };
    let hooks = webhook::start(&config, &node, Arc::clone(&metrics), shutdown.clone()).await?;
    let actor = Hub::new(hub.clone(), Arc::clone(&engine), Arc::clone(&metrics), config.namespaces.clone())
        .with_observer(hooks.observer);
    let hub_task = tokio::spawn(actor.run(inbox));
    let shutdown_timeout = config.shutdown_timeout;
    let (config_notify_rate, idempotency_ttl) = (config.notify_rate, config.idempotency_ttl);
    if let Some(frames) = config.send_queue {
        tracing::warn!(
            frames,
            "--send-queue (WSHUB_SEND_QUEUE) is deprecated and ignored: send queues are bounded in bytes by --max-queue-bytes"
        );
    }
    let queue_limits = Arc::new(queue::QueueLimits::new(
        usize::try_from(config.max_queue_bytes).unwrap_or(usize::MAX),
        config.max_body_bytes as usize,
        config.write_timeout,
        metrics.queue_bytes.clone(),
    ));
    let push = push::Push::start(
        config.vapid_key.as_deref(),
        config.data_dir.as_deref(),
        &config.vapid_subject,
        shutdown.clone(),
    )?;
    let app = Arc::new(AppState {
        config,
        hub: hub.clone(),
        engine,
        verifier,
        metrics,
        started: Instant::now(),
        shutdown: shutdown.clone(),
        connections: TaskTracker::new(),
        sampler: stats::Sampler::default(),
        webhooks: hooks.webhooks,
        presence: hooks.presence,
        notify_rate: limits::RateLimiter::new(config_notify_rate),
        idempotency: idempotency::Fingerprints::new(idempotency_ttl),
        queue_limits,
        push,
    });
    tokio::spawn(stats::run(Arc::clone(&app)));
    let router = http::router(Arc::clone(&app));
    let server_stop = CancellationToken::new();
    let options = http::serve::ServeOptions {
        header_read_timeout: app.config.header_read_timeout,
        limits: limits::ConnLimits::new(app.config.max_connections as usize, app.config.max_connections_per_ip),
        metrics: Arc::clone(&app.metrics),
    };
    let server = tokio::spawn(http::serve::serve(listener, router, options, server_stop.clone()));
    shutdown.cancelled().await;
    tracing::info!("shutting down: closing connections with 1001");
    hub.send(Command::Shutdown).await;
    let _ = hub_task.await;
    app.connections.close();
    if tokio::time::timeout(shutdown_timeout, app.connections.wait()).await.is_err() {
        tracing::warn!("some connections did not close within {shutdown_timeout:?}");
    }
    server_stop.cancel();
    match tokio::time::timeout(shutdown_timeout, server).await {
        Ok(Ok(())) => {}
        Ok(Err(join)) => tracing::error!(error = %join, "server task failed"),
        Err(_) => tracing::warn!("HTTP server did not stop within {shutdown_timeout:?}"),
    }
    // Publishes still in flight were answered above; what they wrote is now closed cleanly.
    app.engine.close().await;
    Ok(())
}

//! State shared by the HTTP handlers and the connection tasks.

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;
use crate::config::Config;
use crate::engine::Engine;
use crate::hub::HubHandle;
use crate::idempotency::Fingerprints;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::push::Push;
use crate::queue::QueueLimits;
use crate::stats::Sampler;
use crate::webhook::Webhooks;
use crate::webhook::presence::PresenceHandle;

/// Everything a handler or connection needs, behind one `Arc`.
pub struct AppState {
    /// The configuration.
    pub config: Config,
    /// The hub actor.
    pub hub: HubHandle,
    /// Where publishes and history go.
    pub engine: Arc<dyn Engine>,
    /// JWT verifier, when a key is configured.
    pub verifier: Option<Verifier>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Start time, for uptime.
    pub started: Instant,
    /// Cancelled when shutdown begins: new requests get 503.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks so shutdown can wait for them.
    pub connections: TaskTracker,
    /// Per-second samples for `/stats` and the dashboard.
    pub sampler: Sampler,
    /// Signed webhooks to the backend.
    pub webhooks: Webhooks,
    /// Users online, for `GET /presence/users`.
    pub presence: PresenceHandle,
    /// `--notify-rate` per address.
    pub notify_rate: RateLimiter,
    /// Which body each `Idempotency-Key` was first used with.
    pub idempotency: Fingerprints,
    /// Byte limits of every connection's send queue.
    pub queue_limits: Arc<QueueLimits>,
    /// Web Push fallback.
    pub push: Push,
}

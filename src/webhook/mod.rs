//! Webhooks: tells the backend what happened, signed by the Standard Webhooks specification so
//! its published verification libraries work (see docs/WEBHOOKS.md).
//!
//! - [`presence`] turns the hub's stream counts into debounced `user.online`/`user.offline`
//!   and `channel.occupied`/`channel.vacated` hooks and answers `GET /presence/users`.
//! - [`outbox`] delivers each hook to each URL at least once, in order, with backoff, from a
//!   bounded queue of its own, so a slow backend never delays WebSocket delivery.
//! - [`store`] keeps owed hooks in `--data-dir` across restarts; [`redis`] keeps presence and
//!   owed hooks in Redis in cluster mode; [`sign`] signs requests.
//!
//! The hub only `try_send`s to [`presence`]; nothing here is ever awaited by the hub.

pub mod outbox;
pub mod presence;
pub mod redis;
pub mod sign;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::hub::StreamCount;
use crate::metrics::Metrics;
use crate::protocol::{Event, now_rfc3339};
use outbox::Persist;
use presence::{PresenceHandle, Tracker};
use redis::ClusterPresence;
use sign::{SecretError, Signer};
use store::{HookStore, HookStoreError};

/// Hooks handed over to one URL's outbox but not yet taken by it.
const HANDOVER_QUEUE: usize = 1024;
/// Stream-count changes the hub may hand over before the tracker takes them.
const OBSERVER_QUEUE: usize = 65_536;

/// Why webhooks could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The secret is unusable.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// `--data-dir` could not hold the owed hooks.
    #[error(transparent)]
    Store(#[from] HookStoreError),
    /// Cluster presence could not reach Redis.
    #[error(transparent)]
    Cluster(#[from] redis::ClusterError),
    /// The HTTP client could not be built.
    #[error("webhook client: {0}")]
    Client(String),
}

/// One webhook: a stable id (the backend dedupes on it) and the JSON body, serialized once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// The `webhook-id` header, the same on every attempt.
    pub id: String,
    /// `{"type","timestamp","data"}`.
    pub body: String,
    /// Unix milliseconds of creation; retries stop `--webhook-retry-for` after it.
    pub created_ms: u64,
}

impl Hook {
    /// A new hook of `kind` carrying `data`.
    pub fn new(kind: &str, data: Value) -> Self {
        let (timestamp, created_ms) = now_rfc3339();
        let body = json!({"type": kind, "timestamp": timestamp, "data": data}).to_string();
        Self { id: format!("msg_{}", uuid::Uuid::now_v7().simple()), body, created_ms }
    }

    /// Bytes it holds, for the queue budget.
    pub fn bytes(&self) -> usize {
        self.id.len() + self.body.len() + std::mem::size_of::<Self>()
    }
}

/// The event a `notification.unread` hook is about.
#[derive(Debug, Serialize)]
pub struct Notification<'a> {
    /// Event id.
    pub id: &'a str,
    /// Event seq.
    pub seq: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Event text.
    pub message: &'a str,
    /// Event payload.
    pub data: &'a serde_json::value::RawValue,
}

impl<'a> From<&'a Event> for Notification<'a> {
    fn from(event: &'a Event) -> Self {
        Self { id: &event.id, seq: event.seq, kind: &event.kind, message: &event.message, data: &event.data }
    }
}

/// Hands hooks to every URL's outbox without waiting; cheap to clone. Without `--webhook-url`
/// it drops everything.
#[derive(Clone)]
pub struct Webhooks {
    /// (URL, its outbox), in flag order.
    outboxes: Arc<Vec<(String, mpsc::Sender<Arc<Hook>>)>>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Webhooks that go nowhere.
    pub fn disabled(metrics: Arc<Metrics>) -> Self {
        Self { outboxes: Arc::new(Vec::new()), metrics }
    }

    /// True when at least one `--webhook-url` is configured.
    pub fn enabled(&self) -> bool {
        !self.outboxes.is_empty()
    }

    /// Queues a hook of `kind` for every URL; a full hand-over queue loses it (counted as failed).
    pub fn emit(&self, kind: &str, data: Value) {
        if !self.enabled() {
            return;
        }
        let hook = Arc::new(Hook::new(kind, data));
        for (_, outbox) in self.outboxes.iter() {
            self.hand_over(outbox, Arc::clone(&hook));
        }
    }

    /// Queues an existing hook (owed by a node that died) for `url`, keeping its id.
    pub fn requeue(&self, url: &str, hook: Hook) {
        match self.outboxes.iter().find(|(u, _)| u == url) {
            Some((_, outbox)) => self.hand_over(outbox, Arc::new(hook)),
            None => tracing::warn!(url, id = %hook.id, "owed webhook for a URL this node does not have: dropped"),
        }
    }

    fn hand_over(&self, outbox: &mpsc::Sender<Arc<Hook>>, hook: Arc<Hook>) {
        if outbox.try_send(Arc::clone(&hook)).is_err() {
            self.metrics.webhooks_failed.inc();
            tracing::warn!(id = %hook.id, "webhook hand-over queue full or closed: hook dropped");
        }
    }

    /// `notification.unread`: `user` has not read `notification` (asked by `/notify` with
    /// `fallback: "webhook"`; Web Push's `fallback_after` calls the same).
    pub fn notification_unread(&self, user: &str, notification: &Notification<'_>) {
        self.emit("notification.unread", json!({"user": user, "notification": notification}));
    }
}

/// What [`start`] returns: the handles for the app and the hub.
pub struct Started {
    /// Emits hooks.
    pub webhooks: Webhooks,
    /// Answers `GET /presence/users`.
    pub presence: PresenceHandle,
    /// Where the hub reports stream counts (see [`crate::hub::Hub::with_observer`]).
    pub observer: mpsc::Sender<StreamCount>,
}

/// Starts the presence tracker and one outbox per `--webhook-url`; they stop with `shutdown`.
/// In cluster mode (`--redis-url`) presence and owed hooks live in Redis under `node`'s lease.
pub async fn start(
    config: &Config,
    node: &str,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Started, WebhookError> {
    let (observer, counts) = mpsc::channel(OBSERVER_QUEUE);
    let Some(secret) = config.webhook_secret.as_deref().filter(|_| !config.webhook_url.is_empty()) else {
        let webhooks = Webhooks::disabled(metrics);
        let (presence, tracker) = Tracker::new(config.offline_grace, webhooks.clone(), None, Vec::new());
        tokio::spawn(tracker.run(counts, shutdown));
        return Ok(Started { webhooks, presence, observer });
    };
    let signer = Arc::new(Signer::new(secret)?);
    let (store, owed) = match &config.data_dir {
        Some(dir) => {
            let (store, owed) = HookStore::open(dir)?;
            (Some(store), owed)
        }
        None => (None, store::Owed::default()),
    };
    let cluster = match &config.redis_url {
        Some(url) => Some(ClusterPresence::connect(url, node, config.node_ttl, config.offline_grace).await?),
        None => None,
    };
    let persist = match (&cluster, &store) {
        (Some(cluster), _) => Persist::Redis(cluster.clone()),
        (None, Some(store)) => Persist::Disk(store.clone()),
        (None, None) => Persist::Nowhere,
    };
    let client = reqwest::Client::builder()
        .timeout(outbox::ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("wshub/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| WebhookError::Client(e.to_string()))?;
    let next_order = Arc::new(AtomicU64::new(owed.pending.iter().map(|(_, o, _)| o + 1).max().unwrap_or(0)));
    let mut outboxes = Vec::new();
    for url in &config.webhook_url {
        let (tx, rx) = mpsc::channel(HANDOVER_QUEUE);
        let restored: Vec<(u64, Arc<Hook>)> =
            owed.pending.iter().filter(|(u, _, _)| u == url).map(|(_, o, h)| (*o, Arc::new(h.clone()))).collect();
        let outbox = outbox::Outbox {
            url: url.clone(),
            client: client.clone(),
            signer: Arc::clone(&signer),
            retry_for: config.webhook_retry_for,
            persist: persist.clone(),
            metrics: Arc::clone(&metrics),
            next_order: Arc::clone(&next_order),
        };
        tokio::spawn(outbox.run(restored, rx, shutdown.clone()));
        outboxes.push((url.clone(), tx));
    }
    for (url, _, hook) in &owed.pending {
        if !config.webhook_url.contains(url) {
            tracing::warn!(url, id = %hook.id, "owed webhook for a URL no longer configured: kept, not sent");
        }
    }
    let webhooks = Webhooks { outboxes: Arc::new(outboxes), metrics };
    let (presence, mut tracker) = Tracker::new(config.offline_grace, webhooks.clone(), store, owed.online);
    if let Some(cluster) = cluster {
        tracker = tracker.with_cluster(cluster);
    }
    tokio::spawn(tracker.run(counts, shutdown));
    Ok(Started { webhooks, presence, observer })
}

#[cfg(test)]
impl Webhooks {
    /// Webhooks whose single outbox is the returned receiver.
    pub fn capture(metrics: Arc<Metrics>) -> (Self, mpsc::Receiver<Arc<Hook>>) {
        let (tx, rx) = mpsc::channel(HANDOVER_QUEUE);
        (Self { outboxes: Arc::new(vec![("test".into(), tx)]), metrics }, rx)
    }
}

//! Web Push fallback (RFC 8030 delivery, RFC 8291 message encryption, RFC 8292 VAPID).
//!
//! Owns the users' push subscriptions (`POST`/`DELETE /push/subscriptions`, kept in memory and in
//! `--data-dir`), the per-event outcome reported in receipts, and the sender: a `/notify` with
//! `push` and `fallback_after` schedules a check; when it fires, every targeted user who did not
//! acknowledge the event (or, for `0s`, who has no live connection) gets the push on each of their
//! subscriptions, or a `notification.unread` webhook when they have none. Sending runs in its own
//! task behind a bounded queue, so a slow or dead push service never delays WebSocket delivery.

mod routes;
mod vapid;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::AppState;
use crate::hub::Command;
use crate::webhook::Notification;

pub use routes::routes;
pub use vapid::{Vapid, VapidError};

/// Sends waiting for the sender task; more fail at once as `push_failed` (queue full).
pub const QUEUE_LEN: usize = 1024;
/// Pushes in flight at once.
const CONCURRENCY: usize = 8;
/// Tries per subscription for 429 / 5xx / network errors (the first included).
pub const MAX_ATTEMPTS: u32 = 4;
/// First retry delay; doubled each time, or the service's `Retry-After` (at most `MAX_RETRY_AFTER`).
const RETRY_BASE: Duration = Duration::from_millis(500);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// Whole-request deadline at the push service.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the push service keeps an undelivered message (RFC 8030 `TTL`).
const PUSH_TTL_SECS: u64 = 24 * 3600;
/// Subscriptions kept per user (a phone, a laptop, ...); the oldest goes first.
pub const MAX_PER_USER: usize = 16;
/// Longest accepted subscription endpoint.
const MAX_ENDPOINT_LEN: usize = 2048;
/// Events whose push outcome is kept for receipts (the oldest are forgotten).
const OUTCOMES_KEPT: usize = 10_000;
/// Fallback checks waiting for their `fallback_after` at once; more are refused (429).
pub const MAX_PENDING: usize = 10_000;
/// Largest `push` object: the encrypted payload must stay under the 4 KiB push services accept.
pub const MAX_PAYLOAD_BYTES: usize = 3000;
/// Longest `fallback_after`.
pub const MAX_FALLBACK_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The file subscriptions are kept in, inside `--data-dir`.
const SUBSCRIPTIONS_FILE: &str = "push-subscriptions.json";

/// A browser's `PushSubscription` as `subscription.toJSON()` gives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Subscription {
    /// The push service URL for this browser.
    pub endpoint: String,
    /// The browser's keys.
    pub keys: Keys,
}

/// `p256dh` (the browser's P-256 public key) and `auth` (16 bytes), base64url.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Keys {
    /// Uncompressed P-256 point.
    pub p256dh: String,
    /// Authentication secret.
    pub auth: String,
}

/// What `/notify` asked to show (`push`), as the service worker gets it.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PushMessage {
    /// Notification title.
    #[serde(default)]
    pub title: Option<String>,
    /// Notification body.
    #[serde(default)]
    pub body: Option<String>,
    /// Opened (or focused) when the notification is clicked.
    #[serde(default)]
    pub url: Option<String>,
    /// A later notification with the same tag replaces an earlier one.
    #[serde(default)]
    pub tag: Option<String>,
}

/// A `/notify` item's push request: what to show and when to fall back.
#[derive(Debug, Clone)]
pub struct PushRequest {
    /// What to show.
    pub message: PushMessage,
    /// `0s`: push to users without a live connection at once; otherwise to users who did not
    /// acknowledge within this time.
    pub after: Duration,
}

/// Per user, how the push fallback of an event ended (reported by `GET /events/{id}`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Waiting for `fallback_after`.
    Pending,
    /// A connection of the user acknowledged the event: no push.
    Acked,
    /// `0s`: the user had a live connection: no push.
    Online,
    /// Being sent.
    Sending,
    /// At least one of the user's subscriptions accepted it.
    Pushed,
    /// No subscription accepted it.
    PushFailed,
    /// The user has no push subscription: a `notification.unread` webhook was sent instead.
    Webhook,
    /// The user has no push subscription and no webhook is configured.
    NoSubscription,
}

/// Why a push subscription was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The endpoint is not an http(s) URL of reasonable length.
    #[error("`endpoint` must be an https URL of at most {MAX_ENDPOINT_LEN} bytes")]
    Endpoint,
    /// `keys.p256dh` is not a P-256 public key in base64url.
    #[error("`keys.p256dh` must be the browser's P-256 public key (65 bytes, base64url)")]
    P256dh,
    /// `keys.auth` is not 16 bytes of base64url.
    #[error("`keys.auth` must be 16 bytes, base64url")]
    Auth,
}

impl Subscription {
    /// Checks the endpoint and keys (so a bad one fails here, not at send time).
    pub fn validate(&self) -> Result<(), SubscriptionError> {
        let url = reqwest::Url::parse(&self.endpoint).map_err(|_| SubscriptionError::Endpoint)?;
        if self.endpoint.len() > MAX_ENDPOINT_LEN || !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
            return Err(SubscriptionError::Endpoint);
        }
        self.public_key()?;
        self.auth()?;
        Ok(())
    }

    fn public_key(&self) -> Result<p256::PublicKey, SubscriptionError> {
        let bytes = decode_b64url(&self.keys.p256dh).ok_or(SubscriptionError::P256dh)?;
        p256::PublicKey::from_sec1_bytes(&bytes).map_err(|_| SubscriptionError::P256dh)
    }

    fn auth(&self) -> Result<web_push_native::Auth, SubscriptionError> {
        let bytes = decode_b64url(&self.keys.auth).ok_or(SubscriptionError::Auth)?;
        if bytes.len() != 16 {
            return Err(SubscriptionError::Auth);
        }
        Ok(web_push_native::Auth::clone_from_slice(&bytes))
    }
}

/// Browsers give base64url without padding; accept it with padding too.
fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).or_else(|_| URL_SAFE.decode(s)).ok()
}

/// One push to one subscription.
struct Job {
    event: String,
    user: String,
    subscription: Subscription,
    payload: Arc<Vec<u8>>,
    topic: Option<String>,
}

/// The push fallback: keys, subscriptions, outcomes and the sender's queue. Cheap to clone.
#[derive(Clone)]
pub struct Push {
    inner: Arc<Inner>,
}

struct Inner {
    vapid: Vapid,
    subscriptions: Mutex<HashMap<String, Vec<Subscription>>>,
    file: Option<PathBuf>,
    outcomes: Mutex<Outcomes>,
    queue: mpsc::Sender<Job>,
    pending: AtomicUsize,
}

/// Per event, per user outcome; at most `OUTCOMES_KEPT` events, the oldest forgotten first.
#[derive(Default)]
struct Outcomes {
    by_event: HashMap<String, HashMap<String, Outcome>>,
    order: VecDeque<String>,
}

impl Outcomes {
    fn set(&mut self, event: &str, user: &str, outcome: Outcome) {
        if !self.by_event.contains_key(event) {
            self.order.push_back(event.to_string());
            while self.order.len() > OUTCOMES_KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.by_event.remove(&old);
                }
            }
        }
        let users = self.by_event.entry(event.to_string()).or_default();
        // A user pushed on one subscription stays pushed when another one fails.
        if !(outcome == Outcome::PushFailed && users.get(user) == Some(&Outcome::Pushed)) {
            users.insert(user.to_string(), outcome);
        }
    }
}

impl Push {
    /// Loads (or creates) the VAPID key and the kept subscriptions, and starts the sender.
    pub fn start(
        key_file: Option<&std::path::Path>,
        data_dir: Option<&std::path::Path>,
        subject: &str,
        shutdown: CancellationToken,
    ) -> Result<Self, VapidError> {
        // reqwest's rustls needs a process-wide provider; ring is the one redis' TLS uses too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let vapid = Vapid::load(key_file, data_dir, subject)?;
        let file = data_dir.map(|d| d.join(SUBSCRIPTIONS_FILE));
        let subscriptions = file.as_deref().map(load_subscriptions).unwrap_or_default();
        let (queue, jobs) = mpsc::channel(QUEUE_LEN);
        let inner = Arc::new(Inner {
            vapid,
            subscriptions: Mutex::new(subscriptions),
            file,
            outcomes: Mutex::new(Outcomes::default()),
            queue,
            pending: AtomicUsize::new(0),
        });
        match https_client() {
            Ok(client) => {
                tokio::spawn(send_loop(Arc::clone(&inner), client, jobs, shutdown));
            }
            // Without root certificates every push fails (queue closed: push_failed); the hub runs.
            Err(e) => tracing::error!(error = %e, "Web Push disabled: no TLS client"),
        }
        Ok(Self { inner })
    }

    /// The VAPID public key (base64url), for `pushManager.subscribe({applicationServerKey})`.
    pub fn public_key(&self) -> &str {
        &self.inner.vapid.public_key
    }

    /// Stores `subscription` for `user` (replacing one with the same endpoint).
    pub fn subscribe(&self, user: &str, subscription: Subscription) {
        self.change(|all| {
            let list = all.entry(user.to_string()).or_default();
            list.retain(|s| s.endpoint != subscription.endpoint);
            list.push(subscription);
            if list.len() > MAX_PER_USER {
                list.remove(0);
            }
        });
    }

    /// Removes `user`'s subscription with `endpoint`; whether there was one.
    pub fn unsubscribe(&self, user: &str, endpoint: &str) -> bool {
        let mut removed = false;
        self.change(|all| {
            if let Some(list) = all.get_mut(user) {
                let before = list.len();
                list.retain(|s| s.endpoint != endpoint);
                removed = list.len() != before;
                if list.is_empty() {
                    all.remove(user);
                }
            }
        });
        removed
    }

    /// `user`'s subscriptions.
    pub fn subscriptions_of(&self, user: &str) -> Vec<Subscription> {
        self.inner.subscriptions.lock().map(|all| all.get(user).cloned().unwrap_or_default()).unwrap_or_default()
    }

    fn change(&self, f: impl FnOnce(&mut HashMap<String, Vec<Subscription>>)) {
        change_subscriptions(&self.inner, f);
    }

    /// Per user outcome of `event`'s push fallback, when it had one.
    pub fn report(&self, event: &str) -> Option<Value> {
        let outcomes = self.inner.outcomes.lock().ok()?;
        outcomes.by_event.get(event).map(|users| json!(users))
    }

    /// Whether another fallback check may be scheduled (at most `MAX_PENDING` wait at once).
    pub fn has_room(&self) -> bool {
        self.inner.pending.load(Ordering::Relaxed) < MAX_PENDING
    }

    /// After `request.after`, pushes `event` to each of `users` that did not acknowledge it (or,
    /// for `0s`, that has no live connection on this node).
    pub fn schedule(&self, app: &Arc<AppState>, event: EventInfo, users: Vec<String>, request: PushRequest) {
        if users.is_empty() {
            return;
        }
        if let Ok(mut o) = self.inner.outcomes.lock() {
            for user in &users {
                o.set(&event.id, user, Outcome::Pending);
            }
        }
        let inner = Arc::clone(&self.inner);
        inner.pending.fetch_add(1, Ordering::Relaxed);
        let app = Arc::clone(app);
        tokio::spawn(async move {
            let stop = app.shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(request.after) => fall_back(&inner, &app, &event, users, &request).await,
                _ = stop.cancelled() => {}
            }
            inner.pending.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// What the fallback needs of a published event.
#[derive(Debug, Clone)]
pub struct EventInfo {
    /// Event id.
    pub id: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its type.
    pub kind: String,
    /// Its message.
    pub message: String,
    /// Its data.
    pub data: Box<serde_json::value::RawValue>,
}

async fn fall_back(inner: &Arc<Inner>, app: &AppState, event: &EventInfo, users: Vec<String>, request: &PushRequest) {
    let skip: Vec<String> =
        if request.after.is_zero() { online_users(app, &users).await } else { acked_users(app, &event.id).await };
    let skipped = if request.after.is_zero() { Outcome::Online } else { Outcome::Acked };
    let payload = Arc::new(payload(event, &request.message));
    let topic = request.message.tag.as_deref().and_then(topic_of);
    for user in users {
        let set = |o: Outcome| {
            if let Ok(mut outcomes) = inner.outcomes.lock() {
                outcomes.set(&event.id, &user, o);
            }
        };
        if skip.contains(&user) {
            set(skipped);
            continue;
        }
        let subscriptions =
            inner.subscriptions.lock().map(|all| all.get(&user).cloned().unwrap_or_default()).unwrap_or_default();
        if subscriptions.is_empty() {
            if app.webhooks.enabled() {
                let n = Notification {
                    id: &event.id,
                    seq: event.seq,
                    kind: &event.kind,
                    message: &event.message,
                    data: &event.data,
                };
                app.webhooks.notification_unread(&user, &n);
                set(Outcome::Webhook);
            } else {
                set(Outcome::NoSubscription);
            }
            continue;
        }
        set(Outcome::Sending);
        for subscription in subscriptions {
            let job = Job {
                event: event.id.clone(),
                user: user.clone(),
                subscription,
                payload: Arc::clone(&payload),
                topic: topic.clone(),
            };
            if inner.queue.try_send(job).is_err() {
                tracing::warn!(user, event = %event.id, "push queue full: push dropped");
                set(Outcome::PushFailed);
            }
        }
    }
}

/// Users among `users` with a live connection on this node.
async fn online_users(app: &AppState, users: &[String]) -> Vec<String> {
    let mut online = Vec::new();
    for user in users {
        let stream = format!("user:{user}");
        if let Ok((present, _)) = app.hub.ask(|reply| Command::Presence { channel: stream, reply }).await
            && present.iter().any(|(u, n)| u == user && *n > 0)
        {
            online.push(user.clone());
        }
    }
    online
}

/// Users whose connections acknowledged `event` (from the engine's receipt, cluster-wide).
async fn acked_users(app: &AppState, event: &str) -> Vec<String> {
    let Ok(Some(found)) = app.engine.find(event.to_string()).await else { return Vec::new() };
    let receipt = app.engine.receipt(found).await;
    receipt["acked_users"]
        .as_array()
        .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// The JSON the service worker decrypts: the event and what to show.
fn payload(event: &EventInfo, message: &PushMessage) -> Vec<u8> {
    let data: &serde_json::value::RawValue = &event.data;
    serde_json::to_vec(&json!({
        "id": event.id,
        "type": event.kind,
        "title": message.title.clone().unwrap_or_else(|| event.kind.clone()),
        "body": message.body.clone().unwrap_or_else(|| event.message.clone()),
        "url": message.url,
        "tag": message.tag,
        "data": data,
    }))
    .unwrap_or_default()
}

/// RFC 8030 `Topic` (replaces an undelivered message with the same topic): the tag when it is
/// at most 32 base64url characters.
fn topic_of(tag: &str) -> Option<String> {
    let ok =
        !tag.is_empty() && tag.len() <= 32 && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    ok.then(|| tag.to_string())
}

/// The client for push services: HTTPS (rustls with ring, the system's roots) or plain HTTP.
type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<bytes::Bytes>,
>;

fn https_client() -> std::io::Result<HttpsClient> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

async fn send_loop(inner: Arc<Inner>, client: HttpsClient, mut jobs: mpsc::Receiver<Job>, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job { Some(job) => job, None => return },
            _ = shutdown.cancelled() => return,
        };
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let (inner, client) = (Arc::clone(&inner), client.clone());
        tokio::spawn(async move {
            let outcome = send_with_retries(&inner, &client, &job).await;
            if let Ok(mut o) = inner.outcomes.lock() {
                o.set(&job.event, &job.user, outcome);
            }
            drop(permit);
        });
    }
}

/// What one attempt at the push service came to.
enum Attempt {
    Delivered,
    Gone,
    Retry(Option<Duration>),
    Failed,
}

async fn send_with_retries(inner: &Inner, client: &HttpsClient, job: &Job) -> Outcome {
    let mut delay = RETRY_BASE;
    for attempt in 1..=MAX_ATTEMPTS {
        match send_once(inner, client, job).await {
            Attempt::Delivered => return Outcome::Pushed,
            Attempt::Gone => {
                tracing::info!(
                    user = job.user,
                    endpoint = job.subscription.endpoint,
                    "push subscription gone: removed"
                );
                change_subscriptions(inner, |all| {
                    if let Some(list) = all.get_mut(&job.user) {
                        list.retain(|s| s.endpoint != job.subscription.endpoint);
                        if list.is_empty() {
                            all.remove(&job.user);
                        }
                    }
                });
                return Outcome::PushFailed;
            }
            Attempt::Failed => return Outcome::PushFailed,
            Attempt::Retry(after) if attempt < MAX_ATTEMPTS => {
                tokio::time::sleep(after.unwrap_or(delay).min(MAX_RETRY_AFTER)).await;
                delay *= 2;
            }
            Attempt::Retry(_) => {}
        }
    }
    Outcome::PushFailed
}

async fn send_once(inner: &Inner, client: &HttpsClient, job: &Job) -> Attempt {
    let s = &job.subscription;
    let (Ok(url), Ok(public), Ok(auth)) = (reqwest::Url::parse(&s.endpoint), s.public_key(), s.auth()) else {
        return Attempt::Failed;
    };
    let body = match web_push_native::encrypt(job.payload.to_vec(), &public, &auth) {
        Ok(body) => body,
        Err(e) => {
            tracing::warn!(error = %e, "push encryption failed");
            return Attempt::Failed;
        }
    };
    let authorization = match inner.vapid.authorization(&url) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "VAPID signing failed");
            return Attempt::Failed;
        }
    };
    let mut request = hyper::Request::post(s.endpoint.as_str())
        .header("TTL", PUSH_TTL_SECS)
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .header("Urgency", "high")
        .header("Authorization", authorization);
    if let Some(topic) = &job.topic {
        request = request.header("Topic", topic);
    }
    let Ok(request) = request.body(http_body_util::Full::new(bytes::Bytes::from(body))) else {
        return Attempt::Failed;
    };
    let response = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, endpoint = s.endpoint, "push service unreachable");
            return Attempt::Retry(None);
        }
        Err(_) => {
            tracing::debug!(endpoint = s.endpoint, "push service timed out");
            return Attempt::Retry(None);
        }
    };
    let status = response.status();
    match status.as_u16() {
        _ if status.is_success() => Attempt::Delivered,
        404 | 410 => Attempt::Gone,
        429 | 500..=599 => {
            let after =
                response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            Attempt::Retry(after.map(Duration::from_secs))
        }
        _ => {
            tracing::warn!(%status, endpoint = s.endpoint, "push service refused the push");
            Attempt::Failed
        }
    }
}

fn change_subscriptions(inner: &Inner, f: impl FnOnce(&mut HashMap<String, Vec<Subscription>>)) {
    let Ok(mut all) = inner.subscriptions.lock() else { return };
    f(&mut all);
    if let Some(path) = &inner.file
        && let Err(e) = save_subscriptions(path, &all)
    {
        tracing::warn!(error = %e, path = %path.display(), "cannot save push subscriptions");
    }
}

fn load_subscriptions(path: &std::path::Path) -> HashMap<String, Vec<Subscription>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(error = %e, path = %path.display(), "unreadable push subscriptions: starting empty");
            HashMap::new()
        }),
        Err(_) => HashMap::new(),
    }
}

fn save_subscriptions(path: &std::path::Path, all: &HashMap<String, Vec<Subscription>>) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(all)?)?;
    std::fs::rename(&tmp, path)
}

/// Parses `fallback_after` ("30s", "2m", "0s").
pub fn parse_after(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like \"30s\": {e}"))?;
    if d > MAX_FALLBACK_AFTER {
        return Err(format!("at most {}", humantime::format_duration(MAX_FALLBACK_AFTER)));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_bounded_and_pushed_wins_over_a_failed_second_subscription() {
        let mut o = Outcomes::default();
        o.set("e", "u", Outcome::Pushed);
        o.set("e", "u", Outcome::PushFailed);
        assert_eq!(o.by_event["e"]["u"], Outcome::Pushed);
        for i in 0..OUTCOMES_KEPT + 5 {
            o.set(&format!("x{i}"), "u", Outcome::Pending);
        }
        assert_eq!(o.by_event.len(), OUTCOMES_KEPT);
        assert!(!o.by_event.contains_key("e"));
    }

    #[test]
    fn subscriptions_are_validated() {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let p256dh = URL_SAFE_NO_PAD.encode(key.public_key().to_encoded_point(false).as_bytes());
        let good = Subscription {
            endpoint: "https://push.example/abc".into(),
            keys: Keys { p256dh, auth: URL_SAFE_NO_PAD.encode([7u8; 16]) },
        };
        assert!(good.validate().is_ok());
        let mut bad = good.clone();
        bad.endpoint = "ftp://x/y".into();
        assert!(matches!(bad.validate(), Err(SubscriptionError::Endpoint)));
        let mut bad = good.clone();
        bad.keys.auth = URL_SAFE_NO_PAD.encode([7u8; 15]);
        assert!(matches!(bad.validate(), Err(SubscriptionError::Auth)));
        let mut bad = good;
        bad.keys.p256dh = "AAAA".into();
        assert!(matches!(bad.validate(), Err(SubscriptionError::P256dh)));
    }

    #[test]
    fn fallback_after_and_topic() {
        assert_eq!(parse_after("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_after("30s").unwrap(), Duration::from_secs(30));
        assert!(parse_after("soon").is_err());
        assert!(parse_after("2d").is_err());
        assert_eq!(topic_of("chat-12"), Some("chat-12".into()));
        assert_eq!(topic_of("has space"), None);
    }
}

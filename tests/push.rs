//! Issue 14: the Web Push fallback end to end. A real hub, and a local HTTP server standing in
//! for the browser vendor's push service: it records each push, the test decrypts the body with
//! the subscription's private key (RFC 8291) and checks the VAPID JWT (RFC 8292) against the
//! hub's public key from `GET /push/vapid-public-key`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const JWT: &str = "push-test-jwt-secret";
const SUBJECT: &str = "mailto:ops@example.com";

/// One request the push service received.
struct Received {
    name: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The stand-in push service: answers each subscription `name` with the queued statuses
/// (201 once they run out) and reports every request.
struct PushService {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<Received>,
    answers: Arc<Mutex<HashMap<String, Vec<u16>>>>,
}

type ServiceState = (mpsc::UnboundedSender<Received>, Arc<Mutex<HashMap<String, Vec<u16>>>>);

async fn receive(
    State((tx, answers)): State<ServiceState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = answers
        .lock()
        .expect("push test")
        .get_mut(&name)
        .and_then(|q| (!q.is_empty()).then(|| q.remove(0)))
        .unwrap_or(201);
    let _ = tx.send(Received { name, headers, body: body.to_vec() });
    StatusCode::from_u16(status).expect("push test")
}

/// Webhooks (`notification.unread`) arrive here, reported as name `hook:<type>`.
async fn hook(State((tx, _)): State<ServiceState>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let v: Value = serde_json::from_slice(&body).expect("webhook JSON");
    let name = format!("hook:{}", v["type"].as_str().expect("webhook type"));
    let _ = tx.send(Received { name, headers, body: serde_json::to_vec(&v["data"]).expect("JSON") });
    StatusCode::NO_CONTENT
}

impl PushService {
    async fn start() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let answers = Arc::new(Mutex::new(HashMap::new()));
        let app = axum::Router::new()
            .route("/push/{name}", post(receive))
            .route("/hook", post(hook))
            .with_state((tx, Arc::clone(&answers)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("push test");
        let addr = listener.local_addr().expect("push test");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, rx, answers }
    }

    fn answer(&self, name: &str, statuses: &[u16]) {
        self.answers.lock().expect("push test").insert(name.into(), statuses.to_vec());
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.rx.recv()).await.expect("a push within the wait").expect("service running")
    }

    /// Nothing more arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(Some(r)) = tokio::time::timeout(QUIET * 3, self.rx.recv()).await {
            panic!("unexpected push to {}", r.name);
        }
    }
}

/// A browser's side of a subscription: its private key and auth secret.
struct Browser {
    secret: p256::SecretKey,
    auth: [u8; 16],
    endpoint: String,
}

impl Browser {
    fn new(service: &PushService, name: &str) -> Self {
        let auth: [u8; 16] =
            rand_core::RngCore::next_u64(&mut rand_core::OsRng).to_le_bytes().repeat(2).try_into().expect("push test");
        Self {
            secret: p256::SecretKey::random(&mut rand_core::OsRng),
            auth,
            endpoint: format!("http://{}/push/{name}", service.addr),
        }
    }

    /// The PushSubscription JSON a browser gives (`subscription.toJSON()`).
    fn subscription(&self) -> Value {
        json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes()),
                "auth": URL_SAFE_NO_PAD.encode(self.auth),
            }
        })
    }

    fn decrypt(&self, body: &[u8]) -> Value {
        let auth = web_push_native::Auth::clone_from_slice(&self.auth);
        let plain =
            web_push_native::decrypt(body.to_vec(), &self.secret, &auth).expect("decrypts with the browser's key");
        serde_json::from_slice(&plain).expect("JSON payload")
    }
}

async fn hub() -> TestHub {
    TestHub::start(&["--jwt-secret", JWT, "--vapid-subject", SUBJECT]).await
}

async fn register(hub: &TestHub, user: &str, browser: &Browser) {
    let auth = format!("Bearer {}", token(JWT, user, &[], 600));
    let (status, body) =
        post_json(&hub.url("/push/subscriptions"), &browser.subscription(), &[("Authorization", &auth)]).await;
    assert_eq!(status, 201, "{body}");
}

async fn receipt_push(hub: &TestHub, id: &str) -> Value {
    let (status, body) = get_json(&hub.url(&format!("/events/{id}")), &[]).await;
    assert_eq!(status, 200, "{body}");
    body["receipts"]["push"].clone()
}

/// Waits until the receipt's push outcome for `user` is `want`.
async fn wait_outcome(hub: &TestHub, id: &str, user: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let push = receipt_push(hub, id).await;
        if push[user] == want {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "outcome of {user}: {push}, want {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks the VAPID `Authorization` header against the hub's public key; returns the claims.
fn check_vapid(headers: &HeaderMap, public_key: &str, audience: &str) -> Value {
    let value = headers["authorization"].to_str().expect("push test");
    let rest = value.strip_prefix("vapid ").expect("vapid scheme");
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v);
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v);
        }
    }
    assert_eq!(k, Some(public_key), "k= is the hub's VAPID public key");
    let point = URL_SAFE_NO_PAD.decode(public_key).expect("push test");
    assert_eq!((point.len(), point[0]), (65, 4), "uncompressed P-256 point");
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .expect("push test");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Value>(t.expect("t="), &key, &validation)
        .expect("VAPID JWT verifies with the hub's key");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("push test").as_secs();
    let exp = data.claims["exp"].as_u64().expect("push test");
    assert!(exp > now && exp <= now + 24 * 3600, "exp within 24 h (RFC 8292): {exp} vs {now}");
    assert_eq!(data.claims["sub"], SUBJECT);
    data.claims
}

#[tokio::test]
async fn push_to_an_offline_user_is_encrypted_and_vapid_signed() {
    let hub = hub().await;
    let mut service = PushService::start().await;
    let (_, key) = get_json(&hub.url("/push/vapid-public-key"), &[]).await;
    let public_key = key["public_key"].as_str().expect("push test").to_string();
    let phone = Browser::new(&service, "ana-phone");
    register(&hub, "ana", &phone).await;

    let push =
        json!({"title": "New booking", "body": "Table for 2 at 20:00", "url": "/bookings/7", "tag": "booking-7"});
    let (status, sent) = hub
        .notify(json!({"type": "booking", "message": "m", "user": "ana", "data": {"id": 7}, "push": push, "fallback_after": "0s"}))
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["id"].as_str().expect("push test");

    let r = service.next().await;
    assert_eq!(r.name, "ana-phone");
    assert_eq!(r.headers["content-encoding"], "aes128gcm");
    assert_eq!(r.headers["topic"], "booking-7", "the tag replaces an earlier undelivered push");
    assert!(r.headers["ttl"].to_str().expect("push test").parse::<u64>().expect("push test") > 0);
    check_vapid(&r.headers, &public_key, &format!("http://{}", service.addr));
    let payload = phone.decrypt(&r.body);
    assert_eq!(payload["id"], id);
    assert_eq!(payload["type"], "booking");
    assert_eq!(payload["title"], "New booking");
    assert_eq!(payload["body"], "Table for 2 at 20:00");
    assert_eq!(payload["url"], "/bookings/7");
    assert_eq!(payload["tag"], "booking-7");
    assert_eq!(payload["data"], json!({"id": 7}));
    wait_outcome(&hub, id, "ana", "pushed").await;
    service.quiet().await;
    hub.stop().await;
}

#[tokio::test]
async fn zero_fallback_pushes_only_to_users_without_a_live_connection() {
    let hub = hub().await;
    let mut service = PushService::start().await;
    register(&hub, "on", &Browser::new(&service, "on")).await;
    register(&hub, "off", &Browser::new(&service, "off")).await;
    let mut online = hub.client_at(&format!("/ws?token={}", token(JWT, "on", &[], 600))).await;

    let (_, sent) =
        hub.notify(json!({"type": "t", "user": ["on", "off"], "push": {"title": "x"}, "fallback_after": "0s"})).await;
    let id = sent["id"].as_str().expect("push test");
    assert_eq!(online.next_event().await["id"], id);
    assert_eq!(service.next().await.name, "off");
    service.quiet().await;
    wait_outcome(&hub, id, "off", "pushed").await;
    assert_eq!(receipt_push(&hub, id).await["on"], "online");
    hub.stop().await;
}

#[tokio::test]
async fn fallback_after_pushes_to_users_who_did_not_ack_and_never_to_those_who_did() {
    let hub = hub().await;
    let mut service = PushService::start().await;
    register(&hub, "reader", &Browser::new(&service, "reader")).await;
    register(&hub, "away", &Browser::new(&service, "away")).await;
    let mut reader = hub.client_at(&format!("/ws?token={}", token(JWT, "reader", &[], 600))).await;
    // connected but never acks (a tab in the background whose app did not take the event)
    let mut away = hub.client_at(&format!("/ws?token={}", token(JWT, "away", &[], 600))).await;

    let (_, sent) = hub
        .notify(json!({"type": "t", "user": ["reader", "away"], "push": {"title": "x"}, "fallback_after": "1s"}))
        .await;
    let id = sent["id"].as_str().expect("push test");
    assert_eq!(reader.next_event().await["id"], id);
    reader.send_json(json!({"type": "ack", "ids": [id]})).await;
    assert_eq!(away.next_event().await["id"], id);
    assert_eq!(receipt_push(&hub, id).await["away"], "pending", "nothing before fallback_after");

    assert_eq!(service.next().await.name, "away");
    service.quiet().await;
    wait_outcome(&hub, id, "away", "pushed").await;
    assert_eq!(receipt_push(&hub, id).await["reader"], "acked");
    hub.stop().await;
}

#[tokio::test]
async fn gone_subscription_is_removed_and_5xx_is_retried() {
    let hub = hub().await;
    let mut service = PushService::start().await;
    register(&hub, "u", &Browser::new(&service, "old")).await;
    register(&hub, "u", &Browser::new(&service, "new")).await;
    service.answer("old", &[410]);
    service.answer("new", &[503]);

    let (_, sent) = hub.notify(json!({"type": "t", "user": "u", "push": {"title": "x"}})).await;
    let id = sent["id"].as_str().expect("push test");
    let mut names: Vec<String> = Vec::new();
    for _ in 0..3 {
        names.push(service.next().await.name);
    }
    names.sort();
    assert_eq!(names, ["new", "new", "old"], "503 retried once, 410 not");
    wait_outcome(&hub, id, "u", "pushed").await;

    // the 410 subscription is gone: the next push reaches only the other one
    let (_, sent) = hub.notify(json!({"type": "t", "user": "u", "push": {"title": "y"}})).await;
    assert_eq!(service.next().await.name, "new");
    service.quiet().await;
    wait_outcome(&hub, sent["id"].as_str().expect("push test"), "u", "pushed").await;
    hub.stop().await;
}

#[tokio::test]
async fn subscriptions_need_the_users_jwt_and_can_be_deleted() {
    let hub = hub().await;
    let mut service = PushService::start().await;
    let b = Browser::new(&service, "b");
    let url = hub.url("/push/subscriptions");
    let (status, _) = post_json(&url, &b.subscription(), &[]).await;
    assert_eq!(status, 401, "no token");
    let (status, _) = post_json(&url, &b.subscription(), &[("Authorization", "Bearer nope")]).await;
    assert_eq!(status, 401, "bad token");
    let auth = format!("Bearer {}", token(JWT, "d", &[], 600));
    let (status, body) = post_json(
        &url,
        &json!({"endpoint": "ftp://x", "keys": {"p256dh": "", "auth": ""}}),
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().expect("push test").contains("endpoint"), "{body}");
    register(&hub, "d", &b).await;

    let resp = reqwest::Client::new()
        .delete(&url)
        .header("Authorization", &auth)
        .json(&json!({"endpoint": b.endpoint}))
        .send()
        .await
        .expect("push test");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.expect("push test")["removed"], true);

    // no subscription left and no webhook configured: nothing is sent, the receipt says why
    let (_, sent) = hub.notify(json!({"type": "t", "user": "d", "push": {"title": "x"}})).await;
    wait_outcome(&hub, sent["id"].as_str().expect("push test"), "d", "no_subscription").await;
    service.quiet().await;

    // bad push requests are refused with the field named
    let (status, body) = hub.notify(json!({"type": "t", "channel": "news", "push": {"title": "x"}})).await;
    assert_eq!((status, body["error"].as_str().expect("push test").contains("`user` target")), (400, true), "{body}");
    let (status, body) = hub.notify(json!({"type": "t", "user": "d", "fallback_after": "30s"})).await;
    assert_eq!((status, body["error"].as_str().expect("push test").contains("needs `push`")), (400, true), "{body}");
    let (status, body) =
        hub.notify(json!({"type": "t", "user": "d", "push": {"title": "x"}, "fallback_after": "soon"})).await;
    assert_eq!((status, body["error"].as_str().expect("push test").contains("fallback_after")), (400, true), "{body}");
    let (status, _) = hub.notify(json!({"type": "t", "user": "d", "push": {"icon": "x"}})).await;
    assert_eq!(status, 400, "unknown push key");
    hub.stop().await;
}

#[tokio::test]
async fn a_user_without_subscription_gets_the_unread_webhook_instead() {
    let mut service = PushService::start().await;
    let hook_url = format!("http://{}/hook", service.addr);
    let hub = TestHub::start(&[
        "--jwt-secret",
        JWT,
        "--webhook-url",
        &hook_url,
        "--webhook-secret",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ])
    .await;
    register(&hub, "with", &Browser::new(&service, "with")).await;

    let (_, sent) = hub
        .notify(json!({"type": "invoice", "message": "paid", "user": ["with", "without"], "push": {"title": "x"}}))
        .await;
    let id = sent["id"].as_str().expect("id");
    let mut names = [service.next().await, service.next().await];
    names.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(names[0].name, "hook:notification.unread");
    let data: Value = serde_json::from_slice(&names[0].body).expect("JSON");
    assert_eq!(data["user"], "without");
    assert_eq!(data["notification"]["id"], id);
    assert_eq!(names[1].name, "with");
    service.quiet().await;
    wait_outcome(&hub, id, "without", "webhook").await;
    wait_outcome(&hub, id, "with", "pushed").await;
    hub.stop().await;
}

//! Issue 5: observability. `GET /stats`, `/metrics` (parsed with a real Prometheus text parser),
//! `/events`, `/clients`, `/channels`, `POST /admin/disconnect`, operator connections and the
//! pushed `hub:stats` frames, and JSON logs from the real binary. Every count is checked against
//! what the test itself did.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{Value, json};

const SECRET: &str = "observability-test-secret";
const KEY: &str = "observability-api-key";
const AUTH: (&str, &str) = ("authorization", "Bearer observability-api-key");

fn tok(sub: &str, roles: &[&str]) -> String {
    token(SECRET, sub, roles, 3600)
}

/// A hub with a JWT secret and an API key, plus extra flags.
async fn keyed_hub(extra: &[&str]) -> TestHub {
    let mut flags = vec!["--jwt-secret", SECRET, "--api-key", KEY];
    flags.extend_from_slice(extra);
    TestHub::start(&flags).await
}

async fn get(hub: &TestHub, path: &str) -> Value {
    let (status, body) = get_json(&hub.url(path), &[AUTH]).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

async fn notify_keyed(hub: &TestHub, body: Value) -> Value {
    let (status, answer) = post_json(&hub.url("/notify"), &body, &[AUTH]).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

/// Polls `/stats` until `done` holds.
async fn stats_until(hub: &TestHub, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = get(hub, "/stats").await;
        if done(&stats) {
            return stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn scrape(hub: &TestHub) -> Scrape {
    let resp = reqwest::Client::new().get(hub.url("/metrics")).header(AUTH.0, AUTH.1).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().expect("ascii").to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = resp.text().await.expect("body");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text format")
}

fn samples<'a>(scrape: &'a Scrape, metric: &str) -> Vec<&'a Sample> {
    scrape.samples.iter().filter(|s| s.metric == metric).collect()
}

/// The value of a counter or gauge with the given labels (0 when the series does not exist yet).
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(scrape, metric)
        .into_iter()
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) && s.labels.len() == labels.len());
    match found.map(|s| &s.value) {
        None => 0.0,
        Some(PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v)) => *v,
        Some(other) => panic!("{metric} is not a scalar: {other:?}"),
    }
}

/// Connects with a token that must be refused and waits for the 4001 close.
async fn refused(hub: &TestHub, token: &str) {
    let mut c = Client::connect(&hub.ws_url(&format!("/ws?token={token}"))).await;
    assert_eq!(c.next_json().await["code"], "unauthorized");
    assert_eq!(c.ended().await, Ended::Closed(4001));
}

#[tokio::test]
async fn every_admin_endpoint_needs_the_api_key() {
    let hub = keyed_hub(&[]).await;
    for path in ["/stats", "/metrics", "/events?limit=5", "/clients", "/channels"] {
        let (status, body) = get_json(&hub.url(path), &[]).await;
        assert_eq!(status, 401, "{path} without a key: {body}");
        let (status, _) = get_json(&hub.url(path), &[("x-api-key", "wrong")]).await;
        assert_eq!(status, 401, "{path} with a wrong key");
        let (status, _) = get_json(&hub.url(path), &[("x-api-key", KEY)]).await;
        assert_eq!(status, 200, "{path} with X-API-Key");
    }
    let (status, _) = post_json(&hub.url("/admin/disconnect"), &json!({"user": "x"}), &[]).await;
    assert_eq!(status, 401);
    // The dashboard page itself is public; its data is not.
    let page = reqwest::get(hub.url("/dashboard")).await.expect("GET /dashboard");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().expect("ascii").starts_with("text/html"));
    assert!(page.text().await.expect("body").contains("admin:dashboard"));
    hub.stop().await;
}

#[tokio::test]
async fn stats_report_what_the_clients_did() {
    let hub = keyed_hub(&[]).await;
    let mut alice = hub.client_at(&format!("/ws?token={}", tok("alice", &["customer"]))).await;
    let mut bob = hub.client_at(&format!("/ws?token={}", tok("bob", &["customer"]))).await;
    let mut carol = hub.client_at(&format!("/ws?token={}", tok("carol", &["staff", "customer"]))).await;
    let mut anon = hub.client().await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.subscribe("news").await["type"], "hub:subscribed");
    }
    assert_eq!(anon.subscribe("sports").await["type"], "hub:subscribed");
    // One short-lived connection: counted in the total, not in the open ones.
    let gone = hub.client().await;
    drop(gone);
    refused(&hub, "not-a-jwt").await;
    refused(&hub, &token(SECRET, "late", &[], -3600)).await;

    let mut recipients = 0;
    for body in [
        json!({"type": "all", "message": "hello everyone"}),
        json!({"type": "headline", "channel": "news"}),
        json!({"type": "dm", "user": "alice"}),
        json!({"type": "shift", "role": "staff"}),
    ] {
        recipients += notify_keyed(&hub, body).await["recipients"].as_u64().expect("recipients");
    }
    assert_eq!(recipients, 4 + 3 + 1 + 1);
    for c in [&mut alice, &mut bob, &mut carol, &mut anon] {
        assert_eq!(c.next_event().await["type"], "all");
    }
    // Rejected publishes, by reason.
    let (status, _) = post_json(&hub.url("/notify"), &json!({"message": "no type"}), &[AUTH]).await;
    assert_eq!(status, 400);
    let (status, _) = post_json(&hub.url("/notify"), &json!({"type": "t"}), &[]).await;
    assert_eq!(status, 401);

    let stats = stats_until(&hub, "the closed connection is gone", |s| s["connections"] == 4).await;
    assert_eq!(stats["connections_total"], 5, "{stats}");
    assert_eq!(stats["authenticated"], 3);
    assert_eq!(stats["anonymous"], 1);
    assert_eq!(stats["by_role"], json!({"customer": 3, "staff": 1}));
    let top = stats["top_channels"].as_array().expect("top_channels");
    let subscribers = |name: &str| top.iter().find(|c| c["channel"] == name).map(|c| c["subscribers"].clone());
    assert_eq!(subscribers("broadcast"), Some(json!(4)), "{top:?}");
    assert_eq!(subscribers("news"), Some(json!(3)));
    assert_eq!(subscribers("sports"), Some(json!(1)));
    assert_eq!(subscribers("role:customer"), Some(json!(3)));
    assert_eq!(subscribers("user:alice"), Some(json!(1)));
    // news, sports, three user streams, two role streams, and broadcast
    assert_eq!(stats["channels"], 8);
    assert_eq!(stats["events_published"], 4);
    // Channel names outside a `--config` namespace share the `other` label.
    assert_eq!(stats["events_by_namespace"], json!({"broadcast": 1, "other": 1, "user": 1, "role": 1}));
    assert_eq!(stats["deliveries"], recipients);
    assert!(stats["events_per_s"].as_f64().expect("events_per_s") > 0.0, "{stats}");
    assert!(stats["deliveries_per_s"].as_f64() > stats["events_per_s"].as_f64());
    assert_eq!(stats["slow_consumer_disconnects"], 0);
    assert_eq!(stats["auth_failures"], json!({"invalid": 1, "expired": 1}));
    assert_eq!(stats["auth_failures_total"], 2);
    assert_eq!(stats["publish_rejected"], json!({"invalid": 1, "unauthorized": 1}));
    assert_eq!(stats["publish_rejected_total"], 2);
    assert!(stats["delivery_latency"]["count"].as_u64().expect("latency count") >= 4, "{stats}");
    assert!(stats["history_bytes"].as_u64().expect("history_bytes") > 0);
    assert!(stats["rss_bytes"].as_u64().expect("rss_bytes") > 1_000_000);
    assert!(stats["uptime_s"].is_u64());
    assert_eq!(stats["nodes"], json!([]), "no cluster");
    assert_eq!(stats["cluster"], Value::Null);

    // The sampler fills the series once a second.
    let stats = stats_until(&hub, "samples", |s| s["series"]["t_ms"].as_array().is_some_and(|a| a.len() >= 2)).await;
    let series = &stats["series"];
    let n = series["t_ms"].as_array().map(Vec::len);
    for column in ["connections", "events_per_s", "deliveries_per_s"] {
        assert_eq!(series[column].as_array().map(Vec::len), n, "{column}");
    }
    assert_eq!(series["connections"].as_array().and_then(|a| a.last()), Some(&json!(4)), "{series}");
    hub.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_count_what_the_test_did() {
    let hub = keyed_hub(&["--max-queue-bytes", "65536", "--write-timeout", "30s"]).await;
    // A slow consumer first, while it is the only connection: 60 kB broadcasts until it is dropped.
    let _slow = never_reading_client(&hub).await;
    let blob = "x".repeat(60_000);
    let mut recipients = 0;
    let mut broadcasts = 0;
    loop {
        let answer = notify_keyed(&hub, json!({"type": "big", "data": {"blob": blob}})).await;
        broadcasts += 1;
        recipients += answer["recipients"].as_u64().expect("recipients");
        if answer["recipients"] == 0 {
            break;
        }
        assert!(broadcasts < 2000, "the never-reading client was not dropped");
    }
    stats_until(&hub, "slow consumer gone", |s| s["connections"] == 0).await;

    let mut alice = hub.client_at(&format!("/ws?token={}", tok("alice", &["customer"]))).await;
    let mut anon = hub.client().await;
    assert_eq!(anon.subscribe("orders:7").await["type"], "hub:subscribed");
    refused(&hub, "not-a-jwt").await;
    refused(&hub, "still.not.valid").await;
    refused(&hub, &token(SECRET, "late", &[], -3600)).await;
    refused(&hub, &token("some-other-secret", "mallory", &[], 3600)).await;
    for body in [
        json!({"type": "a", "channel": "orders:7"}),
        json!({"type": "b", "channel": "orders:7"}),
        json!({"type": "c", "user": "alice"}),
        json!({"type": "d"}),
    ] {
        recipients += notify_keyed(&hub, body).await["recipients"].as_u64().expect("recipients");
    }
    assert_eq!(anon.next_event().await["type"], "a");
    assert_eq!(anon.next_event().await["type"], "b");
    assert_eq!(alice.next_event().await["type"], "c");
    assert_eq!(anon.next_event().await["type"], "d");
    assert_eq!(alice.next_event().await["type"], "d");
    let (status, _) = post_json(&hub.url("/notify"), &json!({"type": ""}), &[AUTH]).await;
    assert_eq!(status, 400);
    let (status, _) = post_json(&hub.url("/notify"), &json!({"type": "x"}), &[("x-api-key", "nope")]).await;
    assert_eq!(status, 401);
    let resp = reqwest::Client::new()
        .post(hub.url("/notify"))
        .header(AUTH.0, AUTH.1)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 415);

    let m = scrape(&hub).await;
    assert_eq!(value(&m, "wshub_connections", &[]), 2.0);
    assert_eq!(value(&m, "wshub_connections_total", &[]), 3.0, "slow, alice, anon; refused ones never register");
    assert_eq!(value(&m, "wshub_events_published_total", &[("namespace", "broadcast")]), f64::from(broadcasts + 1));
    assert_eq!(value(&m, "wshub_events_published_total", &[("namespace", "other")]), 2.0);
    assert_eq!(value(&m, "wshub_events_published_total", &[("namespace", "user")]), 1.0);
    assert_eq!(value(&m, "wshub_deliveries_total", &[]), recipients as f64);
    assert_eq!(value(&m, "wshub_slow_consumer_disconnects_total", &[]), 1.0);
    assert_eq!(value(&m, "wshub_auth_failures_total", &[("reason", "invalid")]), 3.0);
    assert_eq!(value(&m, "wshub_auth_failures_total", &[("reason", "expired")]), 1.0);
    assert_eq!(value(&m, "wshub_publish_rejected_total", &[("reason", "invalid")]), 1.0);
    assert_eq!(value(&m, "wshub_publish_rejected_total", &[("reason", "unauthorized")]), 1.0);
    assert_eq!(value(&m, "wshub_publish_rejected_total", &[("reason", "unsupported_media_type")]), 1.0);
    // orders:7, user:alice, role:customer
    assert_eq!(value(&m, "wshub_channels", &[]), 3.0);
    assert!(value(&m, "wshub_history_bytes", &[]) > 120_000.0, "the big events are in history");
    let latency = samples(&m, "wshub_delivery_latency_seconds");
    let Some(PromValue::Histogram(buckets)) = latency.first().map(|s| &s.value) else {
        panic!("wshub_delivery_latency_seconds is not a histogram: {latency:?}");
    };
    let count = buckets.iter().find(|b| b.less_than.is_infinite()).map_or(0.0, |b| b.count);
    assert!(count > 0.0, "latency observed: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets");
    assert_eq!(value(&m, "wshub_delivery_latency_seconds_count", &[]), count);
    for (name, doc) in &m.docs {
        assert!(!doc.is_empty(), "{name} has HELP text");
    }

    // /stats agrees with /metrics.
    let stats = get(&hub, "/stats").await;
    assert_eq!(stats["deliveries"], recipients);
    assert_eq!(stats["slow_consumer_disconnects"], 1);
    assert_eq!(stats["auth_failures"], json!({"invalid": 3, "expired": 1}));
    assert_eq!(stats["delivery_latency"]["count"].as_f64(), Some(count));
    hub.stop().await;
}

/// Scrapes until `metric` (without labels) reaches `expected`.
async fn metric_reaches(hub: &TestHub, metric: &str, expected: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = value(&scrape(hub).await, metric, &[]);
        if got == expected {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{metric} is {got}, expected {expected}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn compat_publishes_are_counted_and_latency_has_one_sample_per_live_delivery() {
    let hub = keyed_hub(&[]).await;
    let mut alice = hub.client_at(&format!("/ws?token={}", tok("alice", &[]))).await;
    let mut anon = hub.client().await;
    notify_keyed(&hub, json!({"type": "n1"})).await;
    notify_keyed(&hub, json!({"type": "n2"})).await;
    for (path, body) in [
        ("/api/dashboard/emit-event", json!({"type": "c1", "data": {}})),
        ("/api/dashboard/emit-event", json!({"type": "c2"})),
        ("/api/dashboard/notify-user", json!({"userId": "alice", "event": "c3", "payload": {}})),
    ] {
        let (status, answer) = post_json(&hub.url(path), &body, &[AUTH]).await;
        assert_eq!(status, 202, "{path}: {answer}");
    }
    let (status, _) = post_json(&hub.url("/api/dashboard/emit-event"), &json!({"data": {}}), &[AUTH]).await;
    assert_eq!(status, 400);
    for kind in ["n1", "n2", "c1", "c2", "c3"] {
        assert_eq!(alice.next_event().await["type"], kind);
    }
    for kind in ["n1", "n2", "c1", "c2"] {
        assert_eq!(anon.next_event().await["type"], kind);
    }
    // 4 broadcasts to 2 clients and 1 event to alice: 9 live deliveries, 9 samples.
    metric_reaches(&hub, "wshub_delivery_latency_seconds_count", 9.0).await;
    let m = scrape(&hub).await;
    assert_eq!(value(&m, "wshub_events_published_total", &[("namespace", "broadcast")]), 4.0);
    assert_eq!(value(&m, "wshub_events_published_total", &[("namespace", "user")]), 1.0);
    assert_eq!(value(&m, "wshub_publish_rejected_total", &[("reason", "invalid")]), 1.0);

    // A resume replays 4 events: history, not delivery latency, so no new samples.
    let epoch = anon.hello["epoch"].as_str().expect("epoch").to_string();
    let mut back = hub.client_at(&format!("/ws?since=0&epoch={epoch}")).await;
    for kind in ["n1", "n2", "c1", "c2"] {
        assert_eq!(back.next_event().await["type"], kind);
    }
    notify_keyed(&hub, json!({"type": "n3"})).await;
    for client in [&mut alice, &mut anon, &mut back] {
        assert_eq!(client.next_event().await["type"], "n3");
    }
    metric_reaches(&hub, "wshub_delivery_latency_seconds_count", 12.0).await;
    hub.stop().await;
}

#[tokio::test]
async fn events_clients_and_channels_list_the_live_hub() {
    let hub = keyed_hub(&[]).await;
    let mut alice = hub.client_at(&format!("/ws?token={}", tok("alice", &["customer"]))).await;
    let mut anon = hub.client().await;
    assert_eq!(anon.subscribe("orders:7").await["type"], "hub:subscribed");
    assert_eq!(alice.subscribe("orders:7").await["type"], "hub:subscribed");
    let first = notify_keyed(&hub, json!({"type": "shipped", "channel": "orders:7", "message": "on its way"})).await;
    let second = notify_keyed(&hub, json!({"type": "dm", "user": "alice"})).await;
    let third = notify_keyed(&hub, json!({"type": "nobody", "channel": "empty"})).await;
    assert_eq!(alice.next_event().await["type"], "shipped");
    assert_eq!(anon.next_event().await["type"], "shipped");
    assert_eq!(alice.next_event().await["type"], "dm");

    let events = get(&hub, "/events?limit=20").await;
    let list = events["events"].as_array().expect("events");
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["id"], third["id"], "newest first");
    assert_eq!(list[1]["id"], second["id"]);
    assert_eq!(list[2]["id"], first["id"]);
    assert_eq!(list[2]["targets"], json!(["orders:7"]));
    assert_eq!(list[2]["message"], "on its way");
    assert_eq!(list[1]["targets"], json!(["user:alice"]));
    assert_eq!(list[0]["recipients"], 0);
    assert_eq!(list[1]["recipients"], 1);
    assert_eq!(list[2]["recipients"], 2, "written to both subscribers");
    assert_eq!(get(&hub, "/events?limit=1").await["events"].as_array().map(Vec::len), Some(1));

    let clients = get(&hub, "/clients").await;
    assert_eq!(clients["total"], 2);
    let rows = clients["clients"].as_array().expect("clients");
    let alice_row = rows.iter().find(|r| r["user"] == "alice").expect("alice listed");
    assert_eq!(alice_row["client_id"], alice.hello["client_id"]);
    assert_eq!(alice_row["roles"], json!(["customer"]));
    assert_eq!(alice_row["channels"], json!(["orders:7"]));
    let anon_row = rows.iter().find(|r| r["user"].is_null()).expect("anonymous listed");
    assert_eq!(anon_row["client_id"], anon.hello["client_id"]);

    let channels = get(&hub, "/channels").await;
    let rows = channels["channels"].as_array().expect("channels");
    let count = |name: &str| rows.iter().find(|r| r["channel"] == name).map(|r| r["subscribers"].clone());
    assert_eq!(count("orders:7"), Some(json!(2)));
    assert_eq!(count("broadcast"), Some(json!(2)));
    assert_eq!(count("user:alice"), Some(json!(1)));
    assert_eq!(count("empty"), None);
    hub.stop().await;
}

#[tokio::test]
async fn an_operator_disconnects_by_client_id_and_by_user() {
    let hub = keyed_hub(&[]).await;
    let mut a1 = hub.client_at(&format!("/ws?token={}", tok("alice", &[]))).await;
    let mut a2 = hub.client_at(&format!("/ws?token={}", tok("alice", &[]))).await;
    let mut bob = hub.client_at(&format!("/ws?token={}", tok("bob", &[]))).await;
    let mut anon = hub.client().await;
    let url = hub.url("/admin/disconnect");
    let id = anon.hello["client_id"].as_str().expect("client_id").to_string();
    let (status, body) = post_json(&url, &json!({"client_id": id}), &[AUTH]).await;
    assert_eq!((status, body), (200, json!({"disconnected": 1})));
    assert_eq!(anon.ended().await, Ended::Closed(4004));
    let (status, body) = post_json(&url, &json!({"user": "alice"}), &[AUTH]).await;
    assert_eq!((status, body), (200, json!({"disconnected": 2})));
    assert_eq!(a1.ended().await, Ended::Closed(4004));
    assert_eq!(a2.ended().await, Ended::Closed(4004));
    let (status, body) = post_json(&url, &json!({"user": "nobody"}), &[AUTH]).await;
    assert_eq!((status, body), (200, json!({"disconnected": 0})));
    let (status, _) = post_json(&url, &json!({}), &[AUTH]).await;
    assert_eq!(status, 400, "a target is required");
    let (status, _) = post_json(&url, &json!({"user": "bob"}), &[]).await;
    assert_eq!(status, 401);
    bob.assert_alive().await;
    let stats = stats_until(&hub, "only bob left", |s| s["connections"] == 1).await;
    assert_eq!(stats["connections_total"], 4);
    hub.stop().await;
}

#[tokio::test]
async fn operators_with_the_api_key_get_live_stats_on_the_dashboard_stream() {
    let hub = keyed_hub(&[]).await;
    let mut customer = hub.client_at(&format!("/ws?token={}", tok("alice", &["customer"]))).await;
    let mut anon = hub.client().await;
    assert_eq!(customer.subscribe("admin:dashboard").await["code"], "forbidden");
    assert_eq!(anon.subscribe("admin:dashboard").await["code"], "forbidden");
    // A wrong key is refused like a bad token.
    let mut wrong = Client::connect(&hub.ws_url("/ws?api_key=nope")).await;
    let err = wrong.next_json().await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("hub:error"), Some("unauthorized")), "{err}");
    assert_eq!(wrong.ended().await, Ended::Closed(4001));

    let mut operator = hub.client_at(&format!("/ws?api_key={KEY}")).await;
    assert_eq!(operator.hello["user"], Value::Null);
    assert_eq!(operator.subscribe("admin:dashboard").await["type"], "hub:subscribed");
    assert_eq!(operator.subscribe("admin:audit").await["type"], "hub:subscribed");
    assert_eq!(operator.subscribe("user:alice").await["code"], "forbidden", "operator opens admin:* only");
    // An operator with a token keeps the token's identity.
    let mut both = hub.client_at(&format!("/ws?api_key={KEY}&token={}", tok("root", &["customer"]))).await;
    assert_eq!(both.hello["user"], "root");
    assert_eq!(both.subscribe("admin:dashboard").await["type"], "hub:subscribed");
    // A JWT admin still may, as before.
    let mut admin = hub.client_at(&format!("/ws?token={}", tok("boss", &["admin"]))).await;
    assert_eq!(admin.subscribe("admin:dashboard").await["type"], "hub:subscribed");

    let sent = notify_keyed(&hub, json!({"type": "order", "channel": "orders:1", "message": "new order"})).await;
    let deliveries_before = get(&hub, "/stats").await["deliveries"].clone();
    let frame = loop {
        let frame = operator.next_of("hub:stats").await;
        if frame["recent_events"].as_array().is_some_and(|e| !e.is_empty()) {
            break frame;
        }
    };
    assert!(frame.get("seq").is_none() && frame.get("epoch").is_none(), "control frames have no position: {frame}");
    assert_eq!(frame["connections"], 5, "{frame}");
    assert_eq!(frame["sample"]["connections"], 5);
    assert!(frame["sample"]["t_ms"].as_u64().is_some());
    assert_eq!(frame["events_published"], 1);
    assert!(frame["uptime_s"].is_u64() && frame["rss_bytes"].is_u64() && frame["by_role"].is_object());
    assert_eq!(frame["recent_events"][0]["id"], sent["id"]);
    assert_eq!(frame["recent_events"][0]["targets"], json!(["orders:1"]));
    assert_eq!(frame["recent_events"][0]["recipients"], 0);
    // Frames keep coming, once a second, to every watcher.
    let next = operator.next_of("hub:stats").await;
    assert!(next["sample"]["t_ms"].as_u64() > frame["sample"]["t_ms"].as_u64());
    assert_eq!(admin.next_of("hub:stats").await["type"], "hub:stats");
    // Pushed frames are not events: no history, no deliveries counted, nothing for others.
    assert_eq!(get(&hub, "/events?limit=50").await["events"].as_array().map(Vec::len), Some(1));
    assert_eq!(get(&hub, "/stats").await["deliveries"], deliveries_before);
    customer.assert_no_event().await;
    anon.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn without_an_api_key_no_connection_is_an_operator_not_even_from_loopback() {
    let hub = TestHub::start(&[]).await;
    let mut plain = hub.client().await;
    assert_eq!(plain.subscribe("admin:dashboard").await["code"], "forbidden", "operators must ask");
    // Any web page on this machine could open this socket: loopback proves nothing.
    for path in ["/ws?api_key=", "/ws?api_key=anything"] {
        let mut asked = Client::connect(&hub.ws_url(path)).await;
        let refused = asked.next_json().await;
        assert_eq!(refused["code"], "unauthorized", "{refused}");
        assert!(refused["message"].as_str().expect("message").contains("--api-key"), "{refused}");
        assert_eq!(asked.ended().await, Ended::Closed(4001));
    }
    plain.send_json(json!({"type": "auth", "api_key": "anything"})).await;
    assert_eq!(plain.next_reply().await["code"], "unauthorized");
    assert_eq!(plain.subscribe("admin:dashboard").await["code"], "forbidden");
    // The admin endpoints still answer loopback clients that name this machine.
    assert_eq!(get_json(&hub.url("/stats"), &[]).await.0, 200);
    hub.stop().await;
}

#[tokio::test]
async fn require_auth_lets_operators_in_without_a_token() {
    let hub = keyed_hub(&["--require-auth"]).await;
    let mut operator = hub.client_at(&format!("/ws?api_key={KEY}")).await;
    assert_eq!(operator.subscribe("admin:dashboard").await["type"], "hub:subscribed");
    hub.stop().await;
}

/// Runs the real binary with `--log-format json` and returns its stderr lines after a connection
/// opened, a notification was published and the connection closed.
#[tokio::test]
async fn json_logs_have_one_line_per_connection_open_and_close_and_a_debug_line_per_publish() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--addr", &addr, "--log-format", "json"])
        .env("RUST_LOG", "info,wshub=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wshub");
    let base = format!("http://{addr}");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !reqwest::get(format!("{base}/health")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "wshub did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    let hello = client.next_json().await;
    let client_id = hello["client_id"].as_str().expect("client_id").to_string();
    let (status, published) = post_json(&format!("{base}/notify"), &json!({"type": "t", "channel": "c"}), &[]).await;
    assert_eq!(status, 200);
    client.ws.close(None).await.expect("close");
    let _ = client.ended().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read stderr");
    assert!(child.wait().expect("wait").success(), "clean exit on SIGTERM");

    let lines: Vec<Value> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["timestamp"].is_string() && l["fields"].is_object()));
    let find = |message: &str| {
        lines.iter().find(|l| l["fields"]["message"] == message).unwrap_or_else(|| panic!("no {message:?} in {stderr}"))
    };
    let open = find("connection open");
    assert_eq!(open["level"], "INFO");
    assert_eq!(open["span"]["client"], client_id.as_str(), "{open}");
    assert!(open["span"]["peer"].as_str().is_some_and(|p| p.starts_with("127.0.0.1:")), "{open}");
    let closed = find("connection closed");
    assert_eq!(closed["level"], "INFO");
    assert_eq!(closed["span"]["client"], client_id.as_str());
    assert_eq!(closed["fields"]["reason"], "peer closed", "{closed}");
    assert!(closed["fields"]["duration_ms"].is_u64(), "{closed}");
    let publish = find("published");
    assert_eq!(publish["level"], "DEBUG");
    assert_eq!(publish["fields"]["id"], published["id"], "{publish}");
    assert_eq!(publish["fields"]["kind"], "t");
    assert!(publish["fields"]["targets"].as_str().is_some_and(|t| t.contains("\"c\"")), "{publish}");
}

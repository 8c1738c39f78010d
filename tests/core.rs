//! Issue 2: the Go hub's interface, done right. Real server, real sockets.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

#[tokio::test]
async fn every_client_receives_a_notification_with_id_and_timestamp() {
    let hub = TestHub::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(hub.client().await);
    }
    let (status, answer) =
        hub.notify(json!({"type": "reserva_creada", "message": "Nueva reserva", "data": {"id": 7}})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["recipients"], 5);
    assert_eq!(answer["success"], true);
    let id = answer["id"].as_str().expect("id").to_string();
    for c in &mut clients {
        let ev = c.next_event().await;
        assert_eq!(ev["id"], id.as_str());
        assert_eq!(ev["type"], "reserva_creada");
        assert_eq!(ev["message"], "Nueva reserva");
        assert_eq!(ev["data"], json!({"id": 7}));
        assert_eq!(ev["channel"], "broadcast");
        let ts = ev["timestamp"].as_str().expect("timestamp");
        assert!(ts.ends_with('Z') && ts.contains('T'), "RFC 3339 UTC: {ts}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn missing_message_and_data_get_defaults() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let (status, _) = hub.notify(json!({"type": "ping"})).await;
    assert_eq!(status, 200);
    let ev = c.next_event().await;
    assert_eq!(ev["message"], "");
    assert_eq!(ev["data"], json!({}));
    hub.stop().await;
}

#[tokio::test]
async fn a_batch_is_published_in_order_with_one_result_each() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let batch: Vec<Value> = (0..20).map(|i| json!({"type": "n", "data": {"i": i}})).collect();
    let (status, answer) = hub.notify(Value::Array(batch)).await;
    assert_eq!(status, 200);
    let results = answer.as_array().expect("array of results");
    assert_eq!(results.len(), 20);
    for (i, r) in results.iter().enumerate() {
        let ev = c.next_event().await;
        assert_eq!(ev["data"]["i"], i);
        assert_eq!(ev["id"], r["id"]);
        assert_eq!(r["recipients"], 1);
    }
    hub.stop().await;
}

async fn raw_post(
    hub: &TestHub,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = reqwest::Client::new().request(method, hub.url(path)).body(body.to_string());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_json_error_and_publishes_nothing() {
    let hub = TestHub::start(&["--max-body-bytes", "1024"]).await;
    let mut c = hub.client().await;
    let json_ct = Some("application/json");
    // (method, path, content type, body, status, text the error mentions)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, u16, &'a str);
    let cases: &[Case] = &[
        ("POST", "/notify", json_ct, "not json", 400, "invalid JSON"),
        ("POST", "/notify", json_ct, r#"{"message":"x"}"#, 400, "`type` is required"),
        ("POST", "/notify", json_ct, r#"{"type":""}"#, 400, "`type` must not be empty"),
        ("POST", "/notify", json_ct, r#"{"type":3}"#, 400, "`type` must be a string"),
        ("POST", "/notify", json_ct, r#"{"type":"t","message":5}"#, 400, "`message` must be a string"),
        ("POST", "/notify", json_ct, r#""just a string""#, 400, "JSON object"),
        ("POST", "/notify", json_ct, r#"{"type":"hub:connected"}"#, 400, "hub:"),
        ("POST", "/notify", json_ct, r#"[{"type":"ok"},{"type":"ok"},{"nope":1}]"#, 400, "item 2"),
        ("POST", "/notify", Some("text/plain"), r#"{"type":"t"}"#, 415, "application/json"),
        ("POST", "/notify", None, r#"{"type":"t"}"#, 415, "application/json"),
        ("GET", "/notify", None, "", 405, "method not allowed"),
        ("POST", "/nowhere", json_ct, "{}", 404, "no such endpoint"),
    ];
    for (method, path, ct, body, status, text) in cases {
        let (got, headers, answer) = raw_post(&hub, method, path, *ct, body).await;
        assert_eq!(got, *status, "{method} {path} {body}: {answer}");
        let error = answer["error"].as_str().unwrap_or_else(|| panic!("JSON error for {body}: {answer}"));
        assert!(error.contains(text), "{body}: {error:?} should mention {text:?}");
        if *status == 405 {
            assert_eq!(headers.get("allow").and_then(|v| v.to_str().ok()), Some("POST"));
        }
    }
    let big = format!(r#"{{"type":"t","message":"{}"}}"#, "x".repeat(2000));
    let (got, _, answer) = raw_post(&hub, "POST", "/notify", json_ct, &big).await;
    assert_eq!(got, 413, "{answer}");
    assert!(answer["error"].as_str().expect("error").contains("--max-body-bytes"));
    c.assert_no_event().await;
    let (status, _) = hub.notify(json!({"type": "after"})).await;
    assert_eq!(status, 200);
    assert_eq!(c.next_event().await["type"], "after");
    hub.stop().await;
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009_and_others_are_unaffected() {
    let hub = TestHub::start(&["--max-message-bytes", "128"]).await;
    let mut bad = hub.client().await;
    let mut good = hub.client().await;
    bad.send_text(&"x".repeat(1000)).await;
    assert_eq!(bad.ended().await, Ended::Closed(1009));
    hub.notify(json!({"type": "still-here"})).await;
    assert_eq!(good.next_event().await["type"], "still-here");
    hub.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_binary_with_1008() {
    let hub = TestHub::start(&[]).await;
    let mut bad = hub.client().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    bad.ws.send(Message::Frame(frame)).await.expect("send raw frame");
    assert_eq!(bad.ended().await, Ended::Closed(1007));
    let mut binary = hub.client().await;
    binary.ws.send(Message::Binary(vec![1, 2, 3].into())).await.expect("send");
    assert_eq!(binary.ended().await, Ended::Closed(1008));
    let mut good = hub.client().await;
    hub.notify(json!({"type": "fine"})).await;
    assert_eq!(good.next_event().await["type"], "fine");
    hub.stop().await;
}

#[tokio::test]
async fn garbage_frames_get_hub_errors_and_the_connection_stays_up() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    c.send_text("{not json").await;
    let e = c.next_reply().await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("hub:error"), Some("bad_json")));
    c.send_json(json!({"type": "dance"})).await;
    assert_eq!(c.next_reply().await["code"], "bad_message");
    c.send_json(json!({"type": "ping"})).await;
    let pong = c.next_reply().await;
    assert_eq!(pong["type"], "hub:pong");
    assert!(pong["timestamp"].is_string());
    hub.notify(json!({"type": "ok"})).await;
    assert_eq!(c.next_event().await["type"], "ok");
    hub.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_dropped_while_others_keep_receiving() {
    let hub = TestHub::start(&["--max-queue-bytes", "65536", "--write-timeout", "30s"]).await;
    let _slow = never_reading_client(&hub).await;
    let mut fast = hub.client().await;
    let blob = "x".repeat(60_000);
    let mut dropped = false;
    for i in 0..2000 {
        let (status, answer) = hub.notify(json!({"type": "big", "data": {"i": i, "blob": blob}})).await;
        assert_eq!(status, 200);
        assert_eq!(fast.next_event().await["data"]["i"], i, "the fast client gets every event in order");
        if answer["recipients"] == 1 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the never-reading client was not dropped");
    let (_, stats) = get_json(&hub.url("/stats"), &[]).await;
    assert_eq!(stats["slow_consumer_disconnects"], 1, "{stats}");
    assert_eq!(stats["connections"], 1);
    hub.stop().await;
}

#[tokio::test]
async fn keep_alive_drops_a_silent_client_with_4005() {
    let hub = TestHub::start(&["--ping-interval", "100ms", "--pong-timeout", "400ms"]).await;
    let mut silent = hub.client().await;
    let mut alive = hub.client().await;
    // The silent client stops reading (so it answers no pings); the live one keeps reading.
    let keep_reading = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_millis(1200), alive.next_json()).await;
        alive
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(silent.ended().await, Ended::Closed(4005));
    let mut alive = keep_reading.await.expect("join");
    hub.notify(json!({"type": "still"})).await;
    assert_eq!(alive.next_event().await["type"], "still");
    hub.stop().await;
}

#[tokio::test]
async fn a_listening_client_that_answers_pings_outlives_several_pong_timeouts() {
    // The defaults' 54:60 ratio, scaled down: the first ping is due 100 ms before the timeout.
    let hub = TestHub::start(&["--ping-interval", "900ms", "--pong-timeout", "1s"]).await;
    let mut listener = hub.client().await;
    // Reading only: tungstenite answers each ping with a pong while it waits for frames.
    let quiet = tokio::time::timeout(Duration::from_millis(3500), listener.next_json()).await;
    assert!(quiet.is_err(), "no frame was expected while listening: {quiet:?}");
    hub.notify(json!({"type": "after-three-timeouts"})).await;
    assert_eq!(listener.next_event().await["type"], "after-three-timeouts");
    hub.stop().await;
}

#[tokio::test]
async fn health_reports_connections_uptime_and_version() {
    let hub = TestHub::start(&[]).await;
    let _a = hub.client().await;
    let _b = hub.client().await;
    let (status, h) = get_json(&hub.url("/health"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["connections"], 2);
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    hub.stop().await;
}

#[tokio::test]
async fn the_test_page_and_client_library_are_served_from_the_binary() {
    let hub = TestHub::start(&[]).await;
    let page = reqwest::get(hub.url("/")).await.expect("get /");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().expect("ct").starts_with("text/html"));
    assert!(page.text().await.expect("body").contains("/wshub.js"));
    let js = reqwest::get(hub.url("/wshub.js")).await.expect("get js");
    assert!(js.headers()["content-type"].to_str().expect("ct").contains("javascript"));
    hub.stop().await;
}

#[tokio::test]
async fn shutdown_in_process_sends_1001_to_every_client() {
    let hub = TestHub::start(&[]).await;
    let mut a = hub.client().await;
    let mut b = hub.client().await;
    hub.shutdown.cancel();
    assert_eq!(a.ended().await, Ended::Closed(1001));
    assert_eq!(b.ended().await, Ended::Closed(1001));
    let result = tokio::time::timeout(WAIT, hub.task).await.expect("run returns").expect("join");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    let mut hub = ChildHub::start(&[]).await;
    let mut c = Client::connect(&hub.ws_url("/ws")).await;
    assert_eq!(c.next_json().await["type"], "hub:connected");
    hub.signal("TERM");
    assert_eq!(c.ended().await, Ended::Closed(1001));
    assert!(hub.wait_exit().await, "wshub exits with status 0 after SIGTERM");
}

#[tokio::test]
async fn bad_configuration_stops_startup_with_a_clear_message() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--ping-interval", "soon"])
        .output()
        .expect("run wshub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ping-interval") && err.contains("54s"), "{err}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .env("WSHUB_PING_INTERVAL", "90s")
        .output()
        .expect("run wshub");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shorter than --pong-timeout"));
}

#[tokio::test]
async fn without_an_api_key_publish_routes_send_no_cors_headers_but_pages_do() {
    let hub = TestHub::start(&[]).await;
    let preflight = |path: &str| {
        reqwest::Client::new()
            .request(reqwest::Method::OPTIONS, hub.url(path))
            .header("origin", "http://elsewhere.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let notify = preflight("/notify").await.expect("preflight");
    assert!(notify.headers().get("access-control-allow-origin").is_none(), "a local web page must not publish");
    let health = preflight("/health").await.expect("preflight");
    assert!(health.headers().get("access-control-allow-origin").is_some());
    hub.stop().await;
}

#[tokio::test]
async fn with_an_api_key_the_key_is_checked_before_the_body_is_read() {
    let hub = TestHub::start(&["--api-key", "k", "--max-body-bytes", "1024"]).await;
    let big = format!(r#"{{"type":"t","message":"{}"}}"#, "x".repeat(5000));
    let resp = reqwest::Client::new()
        .post(hub.url("/notify"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 401, "no key: 401 before the 413 of the body");
    hub.stop().await;
}

#[tokio::test]
async fn a_client_flooding_frames_is_rate_limited_and_stays_connected() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    for _ in 0..400 {
        c.send_json(json!({"type": "ping"})).await;
    }
    let mut limited = false;
    for _ in 0..400 {
        let frame = c.next_json().await;
        if frame["code"] == "rate_limited" {
            limited = true;
            break;
        }
    }
    assert!(limited, "400 frames at once exceed the burst of 300");
    hub.notify(json!({"type": "after"})).await;
    assert_eq!(c.next_event().await["type"], "after");
    hub.stop().await;
}

#[tokio::test]
async fn an_empty_target_list_is_refused_instead_of_broadcast() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    for field in ["user", "role", "channel"] {
        let (status, answer) = hub.notify(json!({"type": "secret", field: []})).await;
        assert_eq!(status, 400, "{field}: {answer}");
        assert!(answer["error"].as_str().expect("error").contains("empty list"));
    }
    c.assert_no_event().await;
    hub.stop().await;
}

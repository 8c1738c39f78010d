//! Issue 4, second half: delivery receipts (`ack` frames, `GET /events/{id}`) and durable history
//! with `--data-dir` across hub restarts. Real hub, real sockets.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SECRET: &str = "receipts-test-secret";

/// Publishes one notification from loopback and returns its id and seq.
async fn publish(base: &str, body: Value) -> (String, u64) {
    let (status, answer) = post_json(&format!("{base}/notify"), &body, &[]).await;
    assert_eq!(status, 200, "publish {body}: {answer}");
    (answer["id"].as_str().expect("id").to_string(), answer["seq"].as_u64().expect("seq"))
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// The next frame, which must be a notification.
async fn next_notification(c: &mut Client) -> Value {
    let v = c.next_json().await;
    assert!(!v["type"].as_str().unwrap_or("hub:").starts_with("hub:"), "expected a notification, got {v}");
    v
}

async fn ack(c: &mut Client, id: &str) {
    c.send_json(json!({"type": "ack", "ids": [id]})).await;
}

/// `GET /events/{id}` until `done(receipts)` holds (acks have no answer, so the test polls the
/// receipt), failing after [`WAIT`]; returns the whole answer.
async fn receipt_when(base: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let url = format!("{base}/events/{id}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get_json(&url, &[]).await;
        assert_eq!(status, 200, "{body}");
        if done(&body["receipts"]) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "receipt never reached the expected state: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count(receipts: &Value, field: &str) -> u64 {
    receipts[field].as_u64().unwrap_or(0)
}

/// Waits until the hub reports `n` open connections.
async fn connections_become(base: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, stats) = get_json(&format!("{base}/stats"), &[]).await;
        if stats["connections"].as_u64() == Some(n) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "connections never became {n}: {stats}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Receipts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn receipts_count_connections_written_to_and_acked_but_not_a_client_disconnected_before_publish() {
    let hub = TestHub::start(&[]).await;
    let base = format!("http://{}", hub.addr);
    let mut a = hub.client().await;
    let mut b = hub.client().await;
    let mut c = hub.client().await;
    let mut gone = hub.client().await;
    gone.ws.close(None).await.expect("close");
    drop(gone);
    connections_become(&base, 3).await;

    let (status, answer) = hub.notify(json!({"type": "booking", "message": "confirmed"})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["recipients"], 3);
    let id = id_of(&answer);
    for client in [&mut a, &mut b, &mut c] {
        assert_eq!(id_of(&next_notification(client).await), id);
    }
    ack(&mut a, &id).await;
    b.send_json(json!({"type": "ack", "id": id})).await;

    let body = receipt_when(&base, &id, |r| count(r, "written") >= 3 && count(r, "acked") >= 2).await;
    assert_eq!(body["event"]["id"], id.as_str(), "{body}");
    assert_eq!(body["event"]["type"], "booking", "{body}");
    assert_eq!(body["targets"], json!(["broadcast"]), "{body}");
    // Give a stray count time to show up before checking exact numbers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = get_json(&format!("{base}/events/{id}"), &[]).await;
    assert_eq!(count(&body["receipts"], "written"), 3, "the disconnected client is not counted: {body}");
    assert_eq!(count(&body["receipts"], "acked"), 2, "{body}");
    assert_eq!(body["receipts"]["acked_users"], json!([]), "anonymous clients have no user: {body}");
    hub.stop().await;
}

#[tokio::test]
async fn a_connection_acking_the_same_event_twice_is_counted_once() {
    let hub = TestHub::start(&[]).await;
    let base = format!("http://{}", hub.addr);
    let mut a = hub.client().await;
    let mut b = hub.client().await;
    let (id, _) = publish(&base, json!({"type": "t"})).await;
    next_notification(&mut a).await;
    next_notification(&mut b).await;
    ack(&mut a, &id).await;
    ack(&mut a, &id).await;
    a.send_json(json!({"type": "ack", "ids": [id, id]})).await;
    ack(&mut b, &id).await;
    receipt_when(&base, &id, |r| count(r, "acked") >= 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = get_json(&format!("{base}/events/{id}"), &[]).await;
    assert_eq!(count(&body["receipts"], "acked"), 2, "acked counts connections, not ack frames: {body}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_clients_acking_concurrently_are_all_counted() {
    const N: usize = 20;
    let hub = TestHub::start(&["--jwt-secret", SECRET]).await;
    let base = format!("http://{}", hub.addr);
    let mut clients = Vec::new();
    for i in 0..N {
        let tok = token(SECRET, &format!("u{i}"), &["staff"], 3600);
        clients.push(hub.client_at(&format!("/ws?token={tok}")).await);
    }
    let (status, answer) = hub.notify(json!({"type": "shift", "role": "staff"})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["recipients"], N);
    let id = id_of(&answer);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let id = id.clone();
            tokio::spawn(async move {
                assert_eq!(id_of(&next_notification(&mut c).await), id);
                ack(&mut c, &id).await;
                c
            })
        })
        .collect();
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    let body = receipt_when(&base, &id, |r| count(r, "acked") >= N as u64 && count(r, "written") >= N as u64).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body2) = get_json(&format!("{base}/events/{id}"), &[]).await;
    assert_eq!(count(&body2["receipts"], "written"), N as u64, "{body2}");
    assert_eq!(count(&body2["receipts"], "acked"), N as u64, "{body2}");
    assert_eq!(body["targets"], json!(["role:staff"]), "{body}");
    drop(clients);
    hub.stop().await;
}

#[tokio::test]
async fn receipts_of_a_user_targeted_event_list_the_users_who_acked() {
    let hub = TestHub::start(&["--jwt-secret", SECRET]).await;
    let base = format!("http://{}", hub.addr);
    let connect = |sub: &str| format!("/ws?token={}", token(SECRET, sub, &[], 3600));
    let mut alice1 = hub.client_at(&connect("alice")).await;
    let mut alice2 = hub.client_at(&connect("alice")).await;
    let mut bob = hub.client_at(&connect("bob")).await;
    let mut carol = hub.client_at(&connect("carol")).await;
    let mut dave = hub.client_at(&connect("dave")).await;

    let (status, answer) = hub.notify(json!({"type": "dm", "user": ["alice", "bob", "dave"]})).await;
    assert_eq!(status, 200);
    assert_eq!(answer["recipients"], 4);
    let id = id_of(&answer);
    for c in [&mut alice1, &mut alice2, &mut bob, &mut dave] {
        assert_eq!(id_of(&next_notification(c).await), id);
    }
    carol.assert_no_event().await;
    ack(&mut alice1, &id).await;
    ack(&mut alice2, &id).await;
    ack(&mut bob, &id).await;
    // dave never acks.

    receipt_when(&base, &id, |r| count(r, "acked") >= 3 && count(r, "written") >= 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = get_json(&format!("{base}/events/{id}"), &[]).await;
    let r = &body["receipts"];
    assert_eq!(count(r, "written"), 4, "{body}");
    assert_eq!(count(r, "acked"), 3, "alice twice (two connections) and bob: {body}");
    let users: HashSet<&str> =
        r["acked_users"].as_array().expect("acked_users").iter().map(|u| u.as_str().expect("user")).collect();
    assert_eq!(users, HashSet::from(["alice", "bob"]), "{body}");
    assert_eq!(r["acked_users"].as_array().map(Vec::len), Some(2), "each user once: {body}");
    let targets: HashSet<&str> =
        body["targets"].as_array().expect("targets").iter().map(|t| t.as_str().expect("target")).collect();
    assert_eq!(targets, HashSet::from(["user:alice", "user:bob", "user:dave"]));
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Durable history (--data-dir)
// ---------------------------------------------------------------------------------------------

async fn child_client(hub: &ChildHub, path: &str) -> Client {
    let mut c = Client::connect(&hub.ws_url(path)).await;
    c.hello = c.next_json().await;
    assert_eq!(c.hello["type"], "hub:connected", "first frame: {}", c.hello);
    c
}

/// Publishes `k` events to each of user:u1, role:staff, broadcast and svc:1 (plus noise), and
/// returns the (id, seq) of the ones for the automatic streams and for svc:1, each in seq order.
async fn publish_round(base: &str, tag: &str, k: usize) -> (Vec<(String, u64)>, Vec<(String, u64)>) {
    let mut auto = Vec::new();
    let mut svc = Vec::new();
    for i in 0..k {
        auto.push(publish(base, json!({"type": tag, "user": "u1", "data": {"i": i}})).await);
        auto.push(publish(base, json!({"type": tag, "role": "staff", "data": {"i": i}})).await);
        auto.push(publish(base, json!({"type": tag, "data": {"i": i}})).await);
        svc.push(publish(base, json!({"type": tag, "channel": "svc:1", "data": {"i": i}})).await);
        publish(base, json!({"type": "noise", "user": "u2"})).await;
        publish(base, json!({"type": "noise", "channel": "svc:2"})).await;
    }
    (auto, svc)
}

/// Runs the durable-history scenario, stopping the hub with `signal` in the middle.
async fn durable_resume_across_restart(signal: &str) {
    const K: usize = 4;
    let dir = TempDir::new("durable");
    let flags = ["--jwt-secret", SECRET, "--data-dir", dir.path()];
    let mut hub = ChildHub::start(&flags).await;
    let port = hub.addr.port();
    let base = format!("http://{}", hub.addr);
    let tok = token(SECRET, "u1", &["staff"], 3600);

    let mut c = child_client(&hub, &format!("/ws?token={tok}")).await;
    let epoch = c.hello["epoch"].as_str().expect("epoch").to_string();
    let sub = c.subscribe("svc:1").await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    let (seen_auto, seen_svc) = publish_round(&base, "seen", 1).await;
    let mut auto_pos = 0;
    let mut svc_pos = 0;
    for _ in 0..seen_auto.len() + seen_svc.len() {
        let ev = next_notification(&mut c).await;
        if ev["channel"] == "svc:1" {
            svc_pos = svc_pos.max(seq_of(&ev));
        } else {
            auto_pos = auto_pos.max(seq_of(&ev));
        }
    }
    c.ws.close(None).await.expect("close");
    drop(c);

    // Missed before the restart (accepted with 200), then the hub goes down and comes back.
    let (mut missed_auto, mut missed_svc) = publish_round(&base, "before-restart", K).await;
    hub.signal(signal);
    let graceful = hub.wait_exit().await;
    if signal == "TERM" {
        assert!(graceful, "SIGTERM exits cleanly");
    }
    drop(hub);
    let hub = ChildHub::start_on(port, &flags).await;
    let (status, health) = get_json(&hub.url("/health"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(health["epoch"], epoch.as_str(), "--data-dir keeps the epoch across restarts: {health}");

    // Missed after the restart too.
    let (after_auto, after_svc) = publish_round(&base, "after-restart", K).await;
    let last_before = missed_auto.iter().chain(&missed_svc).map(|(_, s)| *s).max().expect("seqs");
    let first_after = after_auto.iter().chain(&after_svc).map(|(_, s)| *s).min().expect("seqs");
    assert!(first_after > last_before, "seq keeps growing across the restart: {first_after} after {last_before}");
    missed_auto.extend(after_auto);
    missed_svc.extend(after_svc);

    let mut c = child_client(&hub, &format!("/ws?token={tok}&since={auto_pos}&epoch={epoch}")).await;
    assert_eq!(c.hello["epoch"], epoch.as_str(), "{}", c.hello);
    assert_eq!(c.hello["recovered"], true, "{}", c.hello);
    assert_eq!(c.hello["replayed"], missed_auto.len(), "{}", c.hello);
    let mut got = Vec::new();
    for _ in 0..missed_auto.len() {
        let ev = next_notification(&mut c).await;
        assert_eq!(ev["epoch"], epoch.as_str());
        got.push((id_of(&ev), seq_of(&ev)));
    }
    assert_eq!(got, missed_auto, "the automatic streams' missed events, in order, once");

    c.send_json(json!({"type": "subscribe", "channel": "svc:1", "since": svc_pos, "epoch": epoch})).await;
    let sub = c.next_json().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["replayed"], missed_svc.len(), "{sub}");
    let mut got = Vec::new();
    for _ in 0..missed_svc.len() {
        let ev = next_notification(&mut c).await;
        assert_eq!(ev["channel"], "svc:1");
        got.push((id_of(&ev), seq_of(&ev)));
    }
    assert_eq!(got, missed_svc, "svc:1's missed events, in order, once");
    c.assert_no_event().await;

    let (live, _) = publish(&base, json!({"type": "live", "user": "u1"})).await;
    assert_eq!(id_of(&next_notification(&mut c).await), live);

    // The history endpoint serves the restored events as well.
    let (status, page) = get_json(&hub.url("/channels/svc:1/history?since=0"), &[]).await;
    assert_eq!(status, 200, "{page}");
    let ids: HashMap<String, u64> =
        page["events"].as_array().expect("events").iter().map(|e| (id_of(e), seq_of(e))).collect();
    for (id, seq) in seen_svc.iter().chain(&missed_svc) {
        assert_eq!(ids.get(id), Some(seq), "{id} missing from svc:1 history: {page}");
    }
}

#[tokio::test]
async fn with_a_data_dir_resume_after_a_graceful_restart_recovers_exactly_the_missed_events() {
    durable_resume_across_restart("TERM").await;
}

#[tokio::test]
async fn with_a_data_dir_nothing_accepted_with_200_is_lost_when_the_hub_is_killed() {
    durable_resume_across_restart("KILL").await;
}

#[tokio::test]
async fn an_ack_from_a_connection_the_event_was_never_written_to_is_not_counted() {
    let hub = TestHub::start(&["--jwt-secret", SECRET]).await;
    let base = format!("http://{}", hub.addr);
    let connect = |sub: &str| format!("/ws?token={}", token(SECRET, sub, &[], 3600));
    let mut alice = hub.client_at(&connect("alice")).await;
    let mut carol = hub.client_at(&connect("carol")).await;
    let (id, _) = publish(&base, json!({"type": "dm", "user": "alice"})).await;
    assert_eq!(id_of(&next_notification(&mut alice).await), id);
    ack(&mut carol, &id).await;
    ack(&mut alice, &id).await;
    receipt_when(&base, &id, |r| count(r, "acked") >= 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, body) = get_json(&format!("{base}/events/{id}"), &[]).await;
    assert_eq!(count(&body["receipts"], "written"), 1, "{body}");
    assert_eq!(count(&body["receipts"], "acked"), 1, "carol was never sent it: {body}");
    assert_eq!(body["receipts"]["acked_users"], json!(["alice"]), "{body}");
    hub.stop().await;
}

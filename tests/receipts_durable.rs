//! Issue 4, second half: delivery receipts (`ack` frames, `GET /events/{id}`) and durable history
//! with `--data-dir` across hub restarts. Real hub, real sockets.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
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

// ---------------------------------------------------------------------------------------------
// Durable commits off the hub's path, group commit, and shutdown (--data-dir)
// ---------------------------------------------------------------------------------------------

/// Polls `cond` until it holds, failing after [`WAIT`].
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A metric's value from `/metrics` (0 when absent).
async fn metric(base: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.expect("metrics").text().await.expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |v| v.trim().parse().expect("metric value"))
}

/// Posts to `/notify`; `None` when the request failed (the hub went away).
async fn try_publish(url: &str, body: &Value, headers: &[(&str, &str)]) -> Option<(u16, Value)> {
    let mut req = reqwest::Client::new().post(url).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json::<Value>().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn with_a_data_dir_a_stalled_disk_commit_delays_no_connect_and_no_resume() {
    let dir = TempDir::new("stall");
    let hub = TestHub::start(&["--data-dir", dir.path()]).await;
    let mut early = hub.client().await;
    let epoch = early.hello["epoch"].as_str().expect("epoch").to_string();
    let (status, first) = hub.notify(json!({"type": "before-stall"})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(early.next_event().await["type"], "before-stall");

    let stall = wshub::store::stall::hold(std::path::Path::new(dir.path()));
    let url = hub.url("/notify");
    let stalled = tokio::spawn(async move { post_json(&url, &json!({"type": "stalled"}), &[]).await });
    until("the publish's commit waits on the disk", || stall.waiting() == 1).await;

    // The disk is stuck, the hub is not: a new connection, a connect resume and a subscribe
    // resume are all answered, at the last position that is on disk.
    let fresh = hub.client().await;
    assert_eq!(fresh.hello["seq"], first["seq"], "{}", fresh.hello);
    let mut resumed = hub.client_at(&format!("/ws?since=0&epoch={epoch}")).await;
    assert_eq!(resumed.hello["recovered"], true, "{}", resumed.hello);
    assert_eq!(resumed.hello["replayed"], 1, "{}", resumed.hello);
    assert_eq!(resumed.next_event().await["type"], "before-stall");
    resumed.send_json(json!({"type": "subscribe", "channel": "news", "since": 0, "epoch": epoch})).await;
    let sub = resumed.next_reply().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["recovered"], true, "{sub}");
    // Not on disk yet, so not delivered and not answered.
    early.assert_no_event().await;
    assert!(!stalled.is_finished(), "answered before the event was on disk");

    drop(stall);
    let (status, answer) = stalled.await.expect("publisher");
    assert_eq!(status, 200, "{answer}");
    for client in [&mut early, &mut resumed] {
        let ev = client.next_event().await;
        assert_eq!((ev["type"].as_str(), ev["seq"].as_u64()), (Some("stalled"), answer["seq"].as_u64()), "{ev}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn with_a_data_dir_publishes_queued_during_a_commit_share_the_next_one() {
    const QUEUED: usize = 20;
    let dir = TempDir::new("group");
    let hub = TestHub::start(&["--data-dir", dir.path()]).await;
    let base = format!("http://{}", hub.addr);
    let mut client = hub.client().await;
    let stall = wshub::store::stall::hold(std::path::Path::new(dir.path()));
    let spawn_publish = |i: usize| {
        let url = format!("{base}/notify");
        tokio::spawn(async move { post_json(&url, &json!({"type": "grouped", "data": {"i": i}}), &[]).await })
    };
    let mut publishers = vec![spawn_publish(0)];
    until("the first commit waits on the disk", || stall.waiting() == 1).await;
    let commits_before = metric(&base, "wshub_store_commits_total").await;
    publishers.extend((1..=QUEUED).map(spawn_publish));
    let deadline = tokio::time::Instant::now() + WAIT;
    while metric(&base, "wshub_store_waiting").await < (QUEUED + 1) as f64 {
        assert!(tokio::time::Instant::now() < deadline, "the publishes never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    drop(stall);
    let mut seqs = Vec::new();
    for publisher in publishers {
        let (status, answer) = publisher.await.expect("publisher");
        assert_eq!(status, 200, "{answer}");
        seqs.push(seq_of(&answer));
    }
    let commits = metric(&base, "wshub_store_commits_total").await - commits_before;
    assert_eq!(commits, 2.0, "the stalled commit, then one for all {QUEUED} publishes queued behind it");
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), QUEUED + 1, "every publish has its own seq");
    let mut delivered: Vec<u64> = Vec::new();
    for _ in 0..=QUEUED {
        delivered.push(seq_of(&client.next_event().await));
    }
    assert_eq!(delivered, seqs, "delivered once each, in seq order");
    hub.stop().await;
}

#[tokio::test]
async fn with_a_data_dir_concurrent_publishes_acknowledged_before_sigkill_all_survive_it() {
    const PUBLISHERS: usize = 16;
    const EACH: usize = 40;
    const KILL_AFTER: usize = 200;
    let dir = TempDir::new("group-kill");
    let flags = ["--data-dir", dir.path(), "--history-size", "1000"];
    let mut hub = ChildHub::start(&flags).await;
    let port = hub.addr.port();
    let base = format!("http://{}", hub.addr);
    let mut listener = child_client(&hub, "/ws").await;
    assert_eq!(listener.subscribe("load").await["type"], "hub:subscribed");

    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, u64)>::new()));
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let (url, acked) = (format!("{base}/notify"), std::sync::Arc::clone(&acked));
        publishers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let body = json!({"type": "load", "channel": "load", "data": {"p": p, "i": i}});
                match try_publish(&url, &body, &[]).await {
                    Some((200, answer)) => acked.lock().expect("acked").push((id_of(&answer), seq_of(&answer))),
                    _ => return,
                }
            }
        }));
    }
    let count = || acked.lock().expect("acked").len();
    until("enough publishes acknowledged", || count() >= KILL_AFTER).await;
    hub.signal("KILL");
    hub.wait_exit().await;
    for publisher in publishers {
        publisher.await.expect("publisher");
    }
    // Everything the listener got live before the kill.
    let mut live = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, listener.ws.next()).await {
        if let tokio_tungstenite::tungstenite::Message::Text(text) = msg {
            let v: Value = serde_json::from_str(&text).expect("json");
            if v["type"] == "load" {
                live.push((id_of(&v), seq_of(&v)));
            }
        }
    }
    drop(hub);

    let hub = ChildHub::start_on(port, &flags).await;
    let (status, page) = get_json(&hub.url("/channels/load/history?since=0&limit=1000"), &[]).await;
    assert_eq!(status, 200, "{page}");
    let kept: HashMap<String, u64> =
        page["events"].as_array().expect("events").iter().map(|e| (id_of(e), seq_of(e))).collect();
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= KILL_AFTER);
    for (id, seq) in &acked {
        assert_eq!(kept.get(id), Some(seq), "acknowledged {id} (seq {seq}) lost by SIGKILL");
    }
    for (id, seq) in &live {
        assert_eq!(kept.get(id), Some(seq), "{id} (seq {seq}) was delivered but the restart does not know it");
    }
    let distinct: HashSet<u64> = kept.values().copied().collect();
    assert_eq!(distinct.len(), kept.len(), "one event per seq");
}

#[tokio::test]
async fn with_a_data_dir_a_publish_on_disk_when_the_hub_stops_is_answered_200_and_kept_once() {
    let dir = TempDir::new("shutdown");
    let hub = TestHub::start(&["--data-dir", dir.path()]).await;
    let base = format!("http://{}", hub.addr);
    let mut watcher = hub.client().await;
    let stall = wshub::store::stall::hold(std::path::Path::new(dir.path()));
    let url = format!("{base}/notify");
    let body = json!({"type": "in-flight", "channel": "orders"});
    let publisher = tokio::spawn(async move { try_publish(&url, &body, &[("Idempotency-Key", "order-1")]).await });
    until("the publish's commit waits on the disk", || stall.waiting() == 1).await;

    // Shutdown stops the hub actor while the event is being written (the actor closes every
    // socket with 1001 as it stops).
    hub.shutdown.cancel();
    assert_eq!(watcher.ended().await, Ended::Closed(1001));
    drop(stall);
    let (status, answer) = publisher.await.expect("publisher").expect("the in-flight publish is answered");
    assert_eq!(status, 200, "an event on disk is accepted, whatever the hub is doing: {answer}");
    assert_eq!(answer["recipients"], 0, "{answer}");
    let _ = tokio::time::timeout(WAIT, hub.task).await.expect("hub stopped");

    // After the restart the event is there, once: the publisher has no reason to retry.
    let hub = TestHub::start(&["--data-dir", dir.path()]).await;
    let (status, page) = get_json(&hub.url("/channels/orders/history?since=0"), &[]).await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(id_of(&events[0]), id_of(&answer));
    hub.stop().await;
}

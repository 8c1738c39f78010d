//! Issue 10: memory is bounded in bytes whatever a client sends, and a burst a reading client
//! drains never disconnects it. Each test attacks a bound the way a hostile or careless client
//! would, at the default limits, and measures bytes: the `queue_bytes` gauge of `/stats`, or the
//! resident memory of a hub process.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const MIB: u64 = 1 << 20;
/// The default soft bound (`--max-queue-bytes`) and hard cap (soft + 4 x `--max-body-bytes`).
const HARD_CAP: u64 = MIB + 4 * MIB;
const SECRET: &str = "bounds-test-secret";

/// Resident and peak resident memory of a process, in bytes, from /proc.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn stats(url: &str) -> Value {
    get_json(url, &[]).await.1
}

/// Upgrades a raw socket at `path` and never reads from it again.
async fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("handshake");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).await.expect("response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"), "upgrade refused");
    s
}

/// The hub's epoch, from a fresh connection's `hub:connected`.
async fn epoch_of(ws_url: &str) -> String {
    let mut c = Client::connect(ws_url).await;
    let hello = c.next_json().await;
    hello["epoch"].as_str().expect("epoch").to_string()
}

/// Publishes `count` events of `size` bytes of data to `target` (an object like
/// `{"channel":"news"}`, or `{}` for broadcast), in batches under the body limit.
async fn fill_history(url: &str, target: &Value, count: usize, size: usize) {
    let blob = "h".repeat(size);
    let per_batch = (512 * 1024 / size).max(1);
    let mut sent = 0;
    while sent < count {
        let n = per_batch.min(count - sent);
        let batch: Vec<Value> = (sent..sent + n)
            .map(|i| {
                let mut e = json!({"type": "history", "data": {"i": i, "blob": blob}});
                if let (Some(e), Some(t)) = (e.as_object_mut(), target.as_object()) {
                    e.extend(t.clone());
                }
                e
            })
            .collect();
        let (status, answer) = post_json(url, &Value::Array(batch), &[]).await;
        assert_eq!(status, 200, "{answer}");
        sent += n;
    }
}

/// The next frame as JSON, waiting up to a minute: in a storm the hub may be busy for a while
/// (a debug build on a loaded machine), and a slow answer is not what the test is about.
async fn next_json_patiently(c: &mut Client) -> Value {
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(60), c.ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => return serde_json::from_str(&text).expect("JSON frame"),
            Ok(Some(Ok(Message::Close(frame)))) => panic!("closed while reading: {frame:?}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_never_reading_socket_never_holds_more_than_the_hard_cap_and_is_dropped_with_4003() {
    let hub = TestHub::start(&[]).await;
    let _stalled = never_reading_client(&hub).await;
    let mut reader = hub.client().await;
    // Large events, so the hard cap is reached soon after the socket buffers fill up (well
    // before the writer's own 10 s write timeout would end the connection).
    let blob = "x".repeat(256 * 1024);
    let mut peak = 0;
    let mut dropped = false;
    for i in 0..4000 {
        let (status, answer) = hub.notify(json!({"type": "big", "data": {"i": i, "blob": blob}})).await;
        assert_eq!(status, 200);
        assert_eq!(reader.next_event().await["data"]["i"], i, "the reading client gets every event in order");
        let queued = stats(&hub.url("/stats")).await["queue_bytes"].as_u64().expect("queue_bytes");
        peak = peak.max(queued);
        assert!(queued <= HARD_CAP, "{queued} bytes queued after event {i}");
        if answer["recipients"] == 1 {
            dropped = true;
            break;
        }
    }
    assert!(dropped, "the never-reading client was not dropped");
    assert!(peak > MIB, "the stalled queue went over the soft bound before it was dropped ({peak} bytes)");
    let s = stats(&hub.url("/stats")).await;
    assert_eq!(s["slow_consumer_disconnects"], 1, "{s}");
    assert_eq!(s["queue_bytes"], 0, "a dropped connection's queue is released: {s}");
    hub.stop().await;
}

#[tokio::test]
async fn three_hundred_idle_resumes_from_zero_share_one_copy_of_history() {
    let hub = ChildHub::start(&[]).await;
    let epoch = epoch_of(&hub.ws_url("/ws")).await;
    // 1.6 MiB of broadcast history: the default 100 events, 16 KiB each.
    fill_history(&hub.url("/notify"), &json!({}), 100, 16 * 1024).await;
    let (before, _) = memory_of(hub.child.id());
    let path = format!("/ws?since=0&epoch={epoch}");
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(raw_upgrade(hub.addr, &path).await);
    }
    // A reading client resuming after them: once it has its replay, the hub has answered the
    // resumes registered before it.
    let mut last = Client::connect(&hub.ws_url(&path)).await;
    let hello = last.next_json().await;
    assert_eq!((hello["type"].as_str(), hello["replayed"].as_u64()), (Some("hub:connected"), Some(100)), "{hello}");
    for i in 0..100 {
        assert_eq!(last.next_event().await["data"]["i"], i);
    }
    let s = stats(&hub.url("/stats")).await;
    let (after, _) = memory_of(hub.child.id());
    let grown = after.saturating_sub(before);
    println!(
        "300 idle since=0 resumes of 1.6 MiB: RSS +{} KiB, {} bytes counted in queues",
        grown / 1024,
        s["queue_bytes"]
    );
    // Stated bound: one copy of the history's frames plus at most the writer's in-flight batch
    // (64 KiB, held twice) and the connection itself for each of the 300 (about 200 KiB each).
    // Re-serializing per connection cost 600 MiB here.
    assert!(grown < 64 * MIB, "RSS grew by {} MiB", grown / MIB);
    drop(idle);
}

#[tokio::test]
async fn two_hundred_fifty_resume_subscribes_from_one_socket_add_a_bounded_number_of_bytes() {
    let hub = ChildHub::start(&[]).await;
    let epoch = epoch_of(&hub.ws_url("/ws")).await;
    fill_history(&hub.url("/notify"), &json!({"channel": "news"}), 100, 16 * 1024).await;
    let (_, peak_before) = memory_of(hub.child.id());
    let (before, _) = memory_of(hub.child.id());
    // An attacker that asks for the whole history 250 times and never reads.
    let mut attacker = Client::connect(&hub.ws_url("/ws")).await;
    let ask = json!({"type": "subscribe", "channel": "news", "since": 0, "epoch": epoch}).to_string();
    for _ in 0..250 {
        if attacker.ws.send(Message::Text(ask.clone().into())).await.is_err() {
            break; // Dropped as a slow consumer already.
        }
    }
    // A well-behaved client resuming the same channel afterwards still gets its replay.
    let mut honest = Client::connect(&hub.ws_url("/ws")).await;
    honest.next_json().await;
    honest.send_json(json!({"type": "subscribe", "channel": "news", "since": 0, "epoch": epoch})).await;
    let reply = honest.next_reply().await;
    assert_eq!(reply["replayed"], 100, "{reply}");
    for i in 0..100 {
        assert_eq!(honest.next_event().await["data"]["i"], i);
    }
    let (after, peak_after) = memory_of(hub.child.id());
    println!(
        "250 resume-subscribes of 1.6 MiB from one socket: RSS +{} KiB, peak +{} KiB",
        after.saturating_sub(before) / 1024,
        peak_after.saturating_sub(peak_before) / 1024
    );
    // Stated bound: the hard cap of the attacker's queue (5 MiB) plus one copy of the
    // channel's frames; the attacker had 490 MiB before.
    assert!(after.saturating_sub(before) < 24 * MIB, "RSS grew by {} MiB", after.saturating_sub(before) / MIB);
    assert!(
        peak_after.saturating_sub(peak_before) < 32 * MIB,
        "peak RSS grew by {} MiB",
        (peak_after - peak_before) / MIB
    );
}

#[tokio::test]
async fn a_thousand_event_batch_at_the_body_limit_disconnects_no_reading_client() {
    let hub = TestHub::start(&[]).await;
    let mut readers = Vec::new();
    for _ in 0..50 {
        readers.push(hub.client().await);
    }
    // 1,000 events in one body just under the default 1 MiB limit.
    let blob = "b".repeat(1000);
    let batch: Vec<Value> = (0..1000).map(|i| json!({"type": "burst", "data": {"i": i, "b": blob}})).collect();
    let body = Value::Array(batch);
    assert!(body.to_string().len() > 1_000_000 && body.to_string().len() <= 1 << 20);
    let (status, answer) = hub.notify(body).await;
    assert_eq!(status, 200, "{answer}");
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for i in 0..1000 {
                    assert_eq!(c.next_event().await["data"]["i"], i);
                }
                c
            })
        })
        .collect();
    let mut readers = Vec::new();
    for t in tasks {
        readers.push(t.await.expect("every reader got all 1,000 events"));
    }
    let s = stats(&hub.url("/stats")).await;
    assert_eq!((s["connections"].as_u64(), s["slow_consumer_disconnects"].as_u64()), (Some(50), Some(0)), "{s}");
    hub.notify(json!({"type": "after"})).await;
    for c in &mut readers {
        assert_eq!(c.next_event().await["type"], "after");
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_presence_storm_of_1500_users_disconnects_no_reading_client() {
    let dir = TempDir::new("bounds-presence");
    let config = dir.file("ns.toml");
    std::fs::write(&config, "[[namespace]]\nprefix = \"room:\"\npresence = true\n").expect("write config");
    let hub = TestHub::start(&["--jwt-secret", SECRET, "--config", config.to_str().expect("utf-8")]).await;
    let mut readers = Vec::new();
    for r in 0..20 {
        let mut c = hub.client_at(&format!("/ws?token={}", token(SECRET, &format!("reader{r}"), &[], 3600))).await;
        assert_eq!(c.subscribe("room:1").await["type"], "hub:subscribed");
        readers.push(c);
    }
    // Readers read all along (answering pings too), counting the joins of the 1,500 users.
    let tasks: Vec<_> = (0..20)
        .zip(readers)
        .map(|(r, mut c)| {
            tokio::spawn(async move {
                let expected = 1500 + (19 - r);
                let mut joins = 0;
                while joins < expected {
                    if next_json_patiently(&mut c).await["type"] == "hub:join" {
                        joins += 1;
                    }
                }
                (joins - (19 - r), c)
            })
        })
        .collect();
    let connects = futures_util::stream::iter(0..1500).map(|u| {
        let url = hub.ws_url(&format!("/ws?token={}", token(SECRET, &format!("u{u}"), &[], 3600)));
        async move { Client::connect(&url).await }
    });
    let mut joiners: Vec<Client> = connects.buffer_unordered(32).collect().await;
    // The storm: every user joins at once.
    let subscribe = Message::Text(json!({"type": "subscribe", "channel": "room:1"}).to_string().into());
    for j in &mut joiners {
        j.ws.send(subscribe.clone()).await.expect("subscribe");
    }
    let mut readers = Vec::new();
    for t in tasks {
        let (joins, c) = t.await.expect("a reader saw every join");
        assert_eq!(joins, 1500);
        readers.push(c);
    }
    for c in &mut readers {
        c.send_json(json!({"type": "ping"})).await;
        assert_eq!(c.next_reply().await["type"], "hub:pong", "the reader is still connected");
    }
    let s = stats(&hub.url("/stats")).await;
    assert_eq!((s["connections"].as_u64(), s["slow_consumer_disconnects"].as_u64()), (Some(1520), Some(0)), "{s}");
    drop(joiners);
    hub.stop().await;
}

#[tokio::test]
async fn a_client_sending_257_frames_in_one_write_gets_every_answer_and_stays() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let ping = Message::Text(json!({"type": "ping"}).to_string().into());
    for _ in 0..257 {
        c.ws.feed(ping.clone()).await.expect("feed");
    }
    c.ws.flush().await.expect("one write");
    for _ in 0..257 {
        assert_eq!(c.next_json().await["type"], "hub:pong");
    }
    hub.notify(json!({"type": "still-here"})).await;
    assert_eq!(c.next_event().await["type"], "still-here");
    assert_eq!(stats(&hub.url("/stats")).await["slow_consumer_disconnects"], 0);
    hub.stop().await;
}

#[tokio::test]
async fn a_publish_to_a_thousand_users_holds_one_copy_of_the_body() {
    let hub = ChildHub::start(&["--jwt-secret", SECRET]).await;
    let mut clients = Vec::new();
    for u in 0..20 {
        let mut c =
            Client::connect(&hub.ws_url(&format!("/ws?token={}", token(SECRET, &format!("u{u}"), &[], 3600)))).await;
        c.next_json().await;
        clients.push(c);
    }
    let (_, peak_before) = memory_of(hub.child.id());
    let users: Vec<String> = (0..1000).map(|u| format!("u{u}")).collect();
    let blob = "p".repeat(508 * 1024);
    let (status, answer) =
        post_json(&hub.url("/notify"), &json!({"type": "big", "user": users, "data": {"blob": blob}}), &[]).await;
    assert_eq!((status, answer["recipients"].as_u64()), (200, Some(20)), "{answer}");
    for c in &mut clients {
        let event = c.next_event().await;
        assert_eq!(event["data"]["blob"].as_str().map(str::len), Some(508 * 1024));
    }
    let (_, peak_after) = memory_of(hub.child.id());
    let grown = peak_after.saturating_sub(peak_before);
    println!("publish of 508 KiB to 1,000 users (20 connected): peak RSS +{} KiB", grown / 1024);
    // The request body, its parsed event, the history copy and a few frames being written;
    // serializing once per target cost +485 MiB.
    assert!(grown < 40 * MIB, "peak RSS grew by {} MiB", grown / MIB);
}

/// Publishes 5,000 events of 1 KiB, each to a channel name never used before, checking after
/// every batch that the history stays within `budget` bytes.
async fn publish_to_fresh_channels(hub: &TestHub, budget: u64) {
    let blob = "c".repeat(1024);
    for round in 0..10 {
        let batch: Vec<Value> = (0..500)
            .map(|i| json!({"type": "fresh", "channel": format!("chat:{round}-{i}"), "data": {"blob": blob}}))
            .collect();
        let (status, answer) = hub.notify(Value::Array(batch)).await;
        assert_eq!(status, 200, "{answer}");
        let held = stats(&hub.url("/stats")).await["history_bytes"].as_u64().expect("history_bytes");
        assert!(held <= budget, "{held} bytes of history after {} events to fresh channels", (round + 1) * 500);
    }
}

/// Events kept in a channel's history.
async fn kept(hub: &TestHub, channel: &str) -> usize {
    let (_, page) = get_json(&hub.url(&format!("/channels/{channel}/history")), &[]).await;
    page["events"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn the_history_budget_holds_under_publishes_to_fresh_channels() {
    let hub = TestHub::start(&["--history-max-bytes", "1048576"]).await;
    publish_to_fresh_channels(&hub, MIB).await;
    assert_eq!((kept(&hub, "chat:9-499").await, kept(&hub, "chat:0-0").await), (1, 0), "oldest evicted first");
    hub.stop().await;
}

#[tokio::test]
async fn the_history_budget_holds_in_durable_mode_across_a_restart() {
    let dir = TempDir::new("bounds-durable");
    let flags = ["--data-dir", dir.path(), "--history-max-bytes", "1048576"];
    let hub = TestHub::start(&flags).await;
    publish_to_fresh_channels(&hub, MIB).await;
    hub.stop().await;
    // Restoring goes through the same budget (and every eviction is removed from disk in the
    // commit that causes it): the restored history fits, newest events kept.
    let hub = TestHub::start(&flags).await;
    let held = stats(&hub.url("/stats")).await["history_bytes"].as_u64().expect("history_bytes");
    assert!(held > MIB / 2 && held <= MIB, "{held} bytes restored");
    assert_eq!((kept(&hub, "chat:9-499").await, kept(&hub, "chat:0-0").await), (1, 0));
    hub.stop().await;
}

#[tokio::test]
async fn ten_resumes_of_1_6_mib_read_promptly_never_make_a_slow_consumer_and_the_stream_goes_live() {
    let hub = TestHub::start(&[]).await;
    fill_history(&hub.url("/notify"), &json!({"channel": "feed"}), 100, 16 * 1024).await;
    let mut c = hub.client().await;
    let epoch = c.hello["epoch"].as_str().expect("epoch").to_string();
    // Ten resumes in a row of 1.6 MiB each, read promptly: never a slow consumer.
    for _ in 0..10 {
        c.send_json(json!({"type": "subscribe", "channel": "feed", "since": 0, "epoch": epoch})).await;
        let reply = c.next_reply().await;
        assert_eq!(reply["replayed"], 100, "{reply}");
        for i in 0..100 {
            assert_eq!(c.next_event().await["data"]["i"], i);
        }
    }
    hub.notify(json!({"type": "live", "channel": "feed"})).await;
    assert_eq!(c.next_event().await["type"], "live");
    let s = stats(&hub.url("/stats")).await;
    assert_eq!((s["slow_consumer_disconnects"].as_u64(), s["queue_bytes"].as_u64()), (Some(0), Some(0)), "{s}");
    hub.stop().await;
}

#[tokio::test]
async fn the_deprecated_send_queue_flag_still_starts_the_hub() {
    let hub = TestHub::start(&["--send-queue", "8"]).await;
    let mut c = hub.client().await;
    // With 8 frames this burst would have been a slow consumer; now it is 20 small frames.
    for i in 0..20 {
        hub.notify(json!({"type": "n", "data": {"i": i}})).await;
    }
    for i in 0..20 {
        assert_eq!(c.next_event().await["data"]["i"], i);
    }
    hub.stop().await;
}

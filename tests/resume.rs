//! Issue 4: positions, history and exact resume after a reconnect, idempotent publish, and the
//! history endpoint. Real hub, real sockets; every frame is awaited.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "resume-test-secret";

/// The next frame as JSON, or `None` when the connection ends or nothing comes within `wait`.
async fn next_within(c: &mut Client, wait: Duration) -> Option<Value> {
    let read = async {
        loop {
            match c.ws.next().await {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).expect("frame is JSON")),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    };
    tokio::time::timeout(wait, read).await.ok().flatten()
}

/// The next frame, which must be a notification (not a `hub:*` control frame).
async fn next_notification(c: &mut Client) -> Value {
    let v = c.next_json().await;
    assert!(!v["type"].as_str().unwrap_or("hub:").starts_with("hub:"), "expected a notification, got {v}");
    v
}

/// Publishes one notification from loopback and returns its id and seq.
async fn publish(base: &str, body: Value) -> (String, u64) {
    let (status, answer) = post_json(&format!("{base}/notify"), &body, &[]).await;
    assert_eq!(status, 200, "publish {body}: {answer}");
    (answer["id"].as_str().expect("id").to_string(), answer["seq"].as_u64().expect("seq"))
}

fn seq_of(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field].as_str().unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// What a client remembers to resume: the epoch, the last seq of its automatic streams, and the
/// last seq of each subscribed channel.
#[derive(Debug, Clone)]
struct Positions {
    epoch: String,
    auto: u64,
    channels: HashMap<String, u64>,
}

impl Positions {
    /// Starts from a `hub:connected` frame.
    fn from_hello(hello: &Value) -> Self {
        Self { epoch: str_of(hello, "epoch").to_string(), auto: seq_of(hello), channels: HashMap::new() }
    }

    fn is_auto(channel: &str) -> bool {
        channel == "broadcast" || channel.starts_with("user:") || channel.starts_with("role:")
    }

    /// Takes in a `hub:subscribed` frame or a notification.
    fn see(&mut self, v: &Value) {
        let seq = seq_of(v);
        let channel = str_of(v, "channel").to_string();
        if Self::is_auto(&channel) {
            self.auto = self.auto.max(seq);
        } else {
            let entry = self.channels.entry(channel).or_insert(0);
            *entry = (*entry).max(seq);
        }
    }

    fn query(&self, token: Option<&str>) -> String {
        let token = token.map(|t| format!("token={t}&")).unwrap_or_default();
        format!("/ws?{token}since={}&epoch={}", self.auto, self.epoch)
    }

    fn subscribe_frame(&self, channel: &str) -> Value {
        json!({"type": "subscribe", "channel": channel, "since": self.channels[channel], "epoch": self.epoch})
    }
}

/// Checks that `events` are strictly increasing in seq within each stream (`channel`).
fn assert_increasing_per_stream(events: &[Value]) {
    let mut last: HashMap<&str, u64> = HashMap::new();
    for ev in events {
        let channel = str_of(ev, "channel");
        let seq = seq_of(ev);
        if let Some(prev) = last.insert(channel, seq) {
            assert!(seq > prev, "{channel}: seq {seq} after {prev}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Exact resume of the automatic streams and a subscribed channel
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn reconnect_with_positions_replays_exactly_the_missed_events_per_stream_in_order_then_live_ones() {
    const K: usize = 5;
    let hub = TestHub::start(&["--jwt-secret", SECRET]).await;
    let base = format!("http://{}", hub.addr);
    let tok = token(SECRET, "u1", &["staff"], 3600);
    let mut c = hub.client_at(&format!("/ws?token={tok}")).await;
    let mut pos = Positions::from_hello(&c.hello);
    let sub = c.subscribe("svc:1").await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    pos.see(&sub);

    // A few events seen live, one per stream.
    let streams = [("user", "u1"), ("role", "staff"), ("channel", "svc:1")];
    for (field, name) in streams {
        publish(&base, json!({"type": "before", field: name})).await;
    }
    publish(&base, json!({"type": "before"})).await;
    for _ in 0..4 {
        let ev = next_notification(&mut c).await;
        pos.see(&ev);
    }
    assert_eq!(pos.epoch, str_of(&sub, "epoch"));
    c.ws.close(None).await.expect("close");
    drop(c);

    // While it is away: K events to each of its streams, and noise it must never get.
    let mut missed_auto: Vec<(String, u64, String)> = Vec::new();
    let mut missed_svc: Vec<(String, u64)> = Vec::new();
    for i in 0..K {
        let (id, seq) = publish(&base, json!({"type": "missed", "user": "u1", "data": {"i": i}})).await;
        missed_auto.push((id, seq, "user:u1".into()));
        let (id, seq) = publish(&base, json!({"type": "missed", "role": "staff", "data": {"i": i}})).await;
        missed_auto.push((id, seq, "role:staff".into()));
        let (id, seq) = publish(&base, json!({"type": "missed", "data": {"i": i}})).await;
        missed_auto.push((id, seq, "broadcast".into()));
        let (id, seq) = publish(&base, json!({"type": "missed", "channel": "svc:1", "data": {"i": i}})).await;
        missed_svc.push((id, seq));
        publish(&base, json!({"type": "noise", "user": "u2"})).await;
        publish(&base, json!({"type": "noise", "role": "other"})).await;
        publish(&base, json!({"type": "noise", "channel": "svc:2"})).await;
    }

    // Reconnect with the automatic-stream position: reply first, then exactly the missed events.
    let mut c = hub.client_at(&pos.query(Some(&tok))).await;
    assert_eq!(c.hello["recovered"], true, "{}", c.hello);
    assert_eq!(c.hello["replayed"], 3 * K, "{}", c.hello);
    assert_eq!(c.hello["epoch"], pos.epoch.as_str());
    let mut got = Vec::new();
    for _ in 0..3 * K {
        got.push(next_notification(&mut c).await);
    }
    let got_ids: Vec<(String, u64, String)> =
        got.iter().map(|v| (id_of(v), seq_of(v), str_of(v, "channel").to_string())).collect();
    assert_eq!(got_ids, missed_auto, "replay of the automatic streams, in seq order");
    for ev in &got {
        assert_eq!(ev["type"], "missed");
        assert_eq!(ev["epoch"], pos.epoch.as_str());
        pos.see(ev);
    }

    // Re-subscribe the channel with its position.
    c.send_json(pos.subscribe_frame("svc:1")).await;
    let sub = c.next_json().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["channel"], "svc:1");
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["replayed"], K, "{sub}");
    let mut got = Vec::new();
    for _ in 0..K {
        let ev = next_notification(&mut c).await;
        assert_eq!(ev["channel"], "svc:1");
        got.push((id_of(&ev), seq_of(&ev)));
    }
    assert_eq!(got, missed_svc, "replay of svc:1, in seq order");
    c.assert_no_event().await;

    // Then live events, once each, and still none of the noise.
    let mut live = Vec::new();
    for (field, name) in streams {
        live.push(publish(&base, json!({"type": "live", field: name})).await);
        publish(&base, json!({"type": "noise", "user": "u3"})).await;
    }
    live.push(publish(&base, json!({"type": "live"})).await);
    for (id, seq) in &live {
        let ev = next_notification(&mut c).await;
        assert_eq!((&id_of(&ev), seq_of(&ev)), (id, *seq));
    }
    c.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn an_event_in_two_resumed_streams_reaches_the_resumed_connection_once() {
    // PROTOCOL.md: "A connection in several targeted streams receives an event once."
    let hub = TestHub::start(&["--jwt-secret", SECRET]).await;
    let base = format!("http://{}", hub.addr);
    let tok = token(SECRET, "u1", &["staff"], 3600);
    let mut c = hub.client_at(&format!("/ws?token={tok}")).await;
    let mut pos = Positions::from_hello(&c.hello);
    let sub = c.subscribe("svc:1").await;
    pos.see(&sub);
    c.ws.close(None).await.expect("close");
    drop(c);

    let (both, _) = publish(&base, json!({"type": "both", "user": "u1", "channel": "svc:1"})).await;

    let mut c = hub.client_at(&pos.query(Some(&tok))).await;
    assert_eq!(c.hello["recovered"], true, "{}", c.hello);
    let mut ids = Vec::new();
    let replayed = c.hello["replayed"].as_u64().expect("replayed");
    for _ in 0..replayed {
        ids.push(id_of(&next_notification(&mut c).await));
    }
    c.send_json(pos.subscribe_frame("svc:1")).await;
    let sub = c.next_json().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["recovered"], true, "{sub}");
    for _ in 0..sub["replayed"].as_u64().expect("replayed") {
        ids.push(id_of(&next_notification(&mut c).await));
    }
    c.assert_no_event().await;
    assert_eq!(ids, vec![both], "the event targeted to user:u1 and svc:1 must arrive exactly once");
    hub.stop().await;
}

#[tokio::test]
async fn hub_connected_is_the_first_frame_even_when_a_resuming_subscribe_is_sent_before_it_arrives() {
    let hub = TestHub::start(&["--jwt-secret", SECRET]).await;
    let base = format!("http://{}", hub.addr);
    let tok = token(SECRET, "u1", &["staff"], 3600);
    let first = hub.client_at(&format!("/ws?token={tok}")).await;
    let epoch = str_of(&first.hello, "epoch").to_string();
    publish(&base, json!({"type": "x"})).await;
    publish(&base, json!({"type": "x", "channel": "svc:1"})).await;
    for round in 0..30 {
        let url = hub.ws_url(&format!("/ws?token={tok}&since=0&epoch={epoch}"));
        let mut c = Client::connect(&url).await;
        c.send_json(json!({"type": "subscribe", "channel": "svc:1", "since": 0, "epoch": epoch})).await;
        let hello = c.next_json().await;
        assert_eq!(hello["type"], "hub:connected", "round {round}: first frame {hello}");
        assert_eq!(hello["replayed"], 1, "round {round}: {hello}");
        let ev = next_notification(&mut c).await;
        assert_eq!(ev["channel"], "broadcast");
        let sub = c.next_json().await;
        assert_eq!(sub["type"], "hub:subscribed", "round {round}: {sub}");
        assert_eq!(sub["replayed"], 1, "round {round}: {sub}");
        let ev = next_notification(&mut c).await;
        assert_eq!(ev["channel"], "svc:1");
    }
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. and 3. Resume while a publisher runs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_published_while_a_client_keeps_reconnecting_arrive_exactly_once_and_in_order() {
    const N: usize = 300;
    let hub = TestHub::start(&["--jwt-secret", SECRET, "--history-size", "1000"]).await;
    let base = format!("http://{}", hub.addr);
    let tok = token(SECRET, "u1", &["staff"], 3600);
    let mut c = hub.client_at(&format!("/ws?token={tok}")).await;
    let mut pos = Positions::from_hello(&c.hello);

    let publisher = tokio::spawn({
        let base = base.clone();
        async move {
            let mut published = Vec::with_capacity(N);
            for i in 0..N {
                let body = if i % 2 == 0 {
                    json!({"type": "loop", "user": "u1", "data": {"i": i}})
                } else {
                    json!({"type": "loop", "data": {"i": i}})
                };
                published.push(publish(&base, body).await);
            }
            published
        }
    });

    let mut all: Vec<Value> = Vec::new();
    let mut connections = 1;
    let mut overlapped = 0;
    let mut conn_events: Vec<Value> = Vec::new();
    let mut since = pos.auto;
    loop {
        let remaining = N - all.len();
        let want = if connections <= 8 { remaining.min(25) } else { remaining };
        for _ in 0..want {
            let ev = next_notification(&mut c).await;
            assert!(seq_of(&ev) > since, "connection {connections}: seq {} not after since {since}", seq_of(&ev));
            pos.see(&ev);
            conn_events.push(ev.clone());
            all.push(ev);
        }
        assert_increasing_per_stream(&conn_events);
        if all.len() == N {
            break;
        }
        // Leave, gracefully or abruptly, sometimes staying away a moment so events pile up.
        if connections % 2 == 0 {
            c.ws.close(None).await.expect("close");
        }
        drop(c);
        if connections % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        since = pos.auto;
        overlapped += usize::from(!publisher.is_finished());
        c = hub.client_at(&pos.query(Some(&tok))).await;
        connections += 1;
        assert_eq!(c.hello["recovered"], true, "connection {connections}: {}", c.hello);
        conn_events.clear();
    }
    let published = publisher.await.expect("publisher");
    c.assert_no_event().await;

    let received: Vec<String> = all.iter().map(id_of).collect();
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "an event was received twice");
    let expected: HashSet<&String> = published.iter().map(|(id, _)| id).collect();
    assert_eq!(unique, expected, "received set differs from the published set");
    assert!(connections >= 5, "only {connections} connections: the test did not reconnect enough");
    assert!(overlapped >= 2, "only {overlapped} reconnects happened while the publisher was running");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resubscribing_with_a_position_on_a_live_connection_while_a_publisher_runs_loses_and_doubles_nothing() {
    const N: usize = 300;
    let hub = TestHub::start(&["--history-size", "1000"]).await;
    let base = format!("http://{}", hub.addr);
    let mut c = hub.client().await;
    let mut pos = Positions::from_hello(&c.hello);
    let sub = c.subscribe("svc:1").await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    pos.see(&sub);

    let publisher = tokio::spawn({
        let base = base.clone();
        async move {
            let mut published = Vec::with_capacity(N);
            for i in 0..N {
                published.push(publish(&base, json!({"type": "loop", "channel": "svc:1", "data": {"i": i}})).await);
            }
            published
        }
    });

    let mut all: Vec<Value> = Vec::new();
    let mut resubscribes = 0;
    let mut overlapped = 0;
    loop {
        let remaining = N - all.len();
        let want = if resubscribes < 8 { remaining.min(25) } else { remaining };
        for _ in 0..want {
            let ev = next_notification(&mut c).await;
            assert_eq!(ev["channel"], "svc:1");
            pos.see(&ev);
            all.push(ev);
        }
        if all.len() == N {
            break;
        }
        // Leave the channel; events queued before the answer still count.
        c.send_json(json!({"type": "unsubscribe", "channel": "svc:1"})).await;
        loop {
            let v = c.next_json().await;
            if v["type"] == "hub:unsubscribed" {
                break;
            }
            assert_eq!(v["channel"], "svc:1", "{v}");
            pos.see(&v);
            all.push(v);
        }
        if all.len() == N {
            break;
        }
        if resubscribes % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let since = pos.channels["svc:1"];
        overlapped += usize::from(!publisher.is_finished());
        c.send_json(pos.subscribe_frame("svc:1")).await;
        let sub = c.next_json().await;
        assert_eq!(sub["type"], "hub:subscribed", "{sub}");
        assert_eq!(sub["recovered"], true, "{sub}");
        resubscribes += 1;
        // The replayed events and the live ones after them continue the stream exactly.
        let ev = match next_within(&mut c, WAIT).await {
            Some(ev) => ev,
            None => panic!("nothing after resubscribe {resubscribes}"),
        };
        assert!(seq_of(&ev) > since, "seq {} not after since {since}", seq_of(&ev));
        pos.see(&ev);
        all.push(ev);
    }
    let published = publisher.await.expect("publisher");
    c.assert_no_event().await;

    assert_increasing_per_stream(&all);
    let received: Vec<String> = all.iter().map(id_of).collect();
    let unique: HashSet<&String> = received.iter().collect();
    assert_eq!(unique.len(), received.len(), "an event was received twice");
    let expected: HashSet<&String> = published.iter().map(|(id, _)| id).collect();
    assert_eq!(unique, expected, "received set differs from the published set");
    assert!(resubscribes >= 5, "only {resubscribes} resubscribes");
    assert!(overlapped >= 2, "only {overlapped} resubscribes happened while the publisher was running");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. and 5. When a position cannot be recovered
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_position_older_than_the_kept_history_is_not_recovered_and_the_oldest_kept_one_is() {
    let hub = TestHub::start(&["--history-size", "5"]).await;
    let base = format!("http://{}", hub.addr);
    let mut c = hub.client().await;
    let epoch = str_of(&c.hello, "epoch").to_string();
    let sub = c.subscribe("svc:1").await;
    assert_eq!(sub["type"], "hub:subscribed");
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(publish(&base, json!({"type": "b", "data": {"i": i}})).await.1);
    }
    let mut chan = Vec::new();
    for i in 0..10 {
        chan.push(publish(&base, json!({"type": "c", "channel": "svc:1", "data": {"i": i}})).await.1);
    }
    for _ in 0..20 {
        next_notification(&mut c).await;
    }

    // Automatic streams: from the first event, five were trimmed.
    let mut old = hub.client_at(&format!("/ws?since={}&epoch={epoch}", seqs[0])).await;
    assert_eq!(old.hello["recovered"], false, "{}", old.hello);
    let replayed = old.hello["replayed"].as_u64().expect("replayed");
    let mut last = seqs[0];
    for _ in 0..replayed {
        let ev = next_notification(&mut old).await;
        assert!(seq_of(&ev) > last);
        last = seq_of(&ev);
    }
    old.assert_no_event().await;

    // From the fifth event (the newest trimmed one) nothing is missing.
    let mut ok = hub.client_at(&format!("/ws?since={}&epoch={epoch}", seqs[4])).await;
    assert_eq!(ok.hello["recovered"], true, "{}", ok.hello);
    assert_eq!(ok.hello["replayed"], 5, "{}", ok.hello);
    for want in &seqs[5..] {
        assert_eq!(seq_of(&next_notification(&mut ok).await), *want);
    }

    // The same for a subscribed channel.
    ok.send_json(json!({"type": "subscribe", "channel": "svc:1", "since": chan[0], "epoch": epoch})).await;
    let sub = ok.next_json().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["recovered"], false, "{sub}");
    for _ in 0..sub["replayed"].as_u64().expect("replayed") {
        next_notification(&mut ok).await;
    }
    let mut other = hub.client().await;
    other.send_json(json!({"type": "subscribe", "channel": "svc:1", "since": chan[4], "epoch": epoch})).await;
    let sub = other.next_json().await;
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["replayed"], 5, "{sub}");
    for want in &chan[5..] {
        assert_eq!(seq_of(&next_notification(&mut other).await), *want);
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_wrong_or_missing_epoch_is_not_recovered_and_replays_nothing() {
    let hub = TestHub::start(&[]).await;
    let base = format!("http://{}", hub.addr);
    let mut c = hub.client().await;
    let epoch = str_of(&c.hello, "epoch").to_string();
    let (_, first) = publish(&base, json!({"type": "b"})).await;
    publish(&base, json!({"type": "c", "channel": "svc:1"})).await;
    assert_eq!(seq_of(&next_notification(&mut c).await), first);
    for _ in 0..3 {
        publish(&base, json!({"type": "b"})).await;
        publish(&base, json!({"type": "c", "channel": "svc:1"})).await;
    }
    assert_ne!(epoch, "not-the-epoch");

    let mut wrong = hub.client_at(&format!("/ws?since={first}&epoch=not-the-epoch")).await;
    assert_eq!(wrong.hello["recovered"], false, "{}", wrong.hello);
    assert_eq!(wrong.hello["replayed"], 0, "{}", wrong.hello);
    assert_eq!(wrong.hello["epoch"], epoch.as_str(), "the reply names the current epoch");
    wrong.assert_no_event().await;
    wrong.send_json(json!({"type": "subscribe", "channel": "svc:1", "since": first, "epoch": "not-the-epoch"})).await;
    let sub = wrong.next_json().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["recovered"], false, "{sub}");
    assert_eq!(sub["replayed"], 0, "{sub}");
    wrong.assert_no_event().await;

    let mut missing = hub.client_at(&format!("/ws?since={first}")).await;
    assert_eq!(missing.hello["recovered"], false, "{}", missing.hello);
    assert_eq!(missing.hello["replayed"], 0, "{}", missing.hello);
    missing.assert_no_event().await;

    // Live delivery still works on those connections.
    let (id, _) = publish(&base, json!({"type": "live"})).await;
    assert_eq!(id_of(&next_notification(&mut wrong).await), id);
    assert_eq!(id_of(&next_notification(&mut missing).await), id);
    hub.stop().await;
}

#[tokio::test]
async fn a_position_whose_events_passed_the_history_ttl_is_not_recovered_after_a_later_publish() {
    let hub = TestHub::start(&["--history-ttl", "1s"]).await;
    let base = format!("http://{}", hub.addr);
    let c = hub.client().await;
    let pos = Positions::from_hello(&c.hello);
    drop(c);
    publish(&base, json!({"type": "old"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (fresh, _) = publish(&base, json!({"type": "fresh"})).await;
    let mut c = hub.client_at(&pos.query(None)).await;
    assert_eq!(c.hello["recovered"], false, "{}", c.hello);
    for _ in 0..c.hello["replayed"].as_u64().expect("replayed") {
        assert_eq!(id_of(&next_notification(&mut c).await), fresh, "only the fresh event is kept");
    }
    hub.stop().await;
}

#[tokio::test]
async fn a_position_whose_events_passed_the_history_ttl_is_not_recovered_even_with_no_publish_since() {
    let hub = TestHub::start(&["--history-ttl", "1s"]).await;
    let base = format!("http://{}", hub.addr);
    let c = hub.client().await;
    let pos = Positions::from_hello(&c.hello);
    drop(c);
    publish(&base, json!({"type": "old"})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut c = hub.client_at(&pos.query(None)).await;
    assert_eq!(c.hello["recovered"], false, "the only missed event is past --history-ttl: {}", c.hello);
    assert_eq!(c.hello["replayed"], 0, "an expired event must not be replayed: {}", c.hello);
    c.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn after_a_restart_in_memory_mode_resume_is_not_recovered_because_the_epoch_changed() {
    let mut hub = ChildHub::start(&[]).await;
    let port = hub.addr.port();
    let base = format!("http://{}", hub.addr);
    let mut c = Client::connect(&hub.ws_url("/ws")).await;
    c.hello = c.next_json().await;
    assert_eq!(c.hello["type"], "hub:connected");
    let mut pos = Positions::from_hello(&c.hello);
    let sub = c.subscribe("svc:1").await;
    pos.see(&sub);
    publish(&base, json!({"type": "before"})).await;
    publish(&base, json!({"type": "before", "channel": "svc:1"})).await;
    pos.see(&next_notification(&mut c).await);
    pos.see(&next_notification(&mut c).await);

    hub.signal("TERM");
    assert!(hub.wait_exit().await, "graceful exit");
    assert_eq!(c.ended().await, Ended::Closed(1001));
    drop(hub);
    let hub = ChildHub::start_on(port, &[]).await;
    publish(&base, json!({"type": "after-restart"})).await;
    publish(&base, json!({"type": "after-restart", "channel": "svc:1"})).await;

    let mut c = Client::connect(&hub.ws_url(&pos.query(None))).await;
    let hello = c.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "{hello}");
    assert_ne!(hello["epoch"], pos.epoch.as_str(), "a memory-mode restart must change the epoch");
    assert_eq!(hello["recovered"], false, "{hello}");
    assert_eq!(hello["replayed"], 0, "{hello}");
    c.send_json(pos.subscribe_frame("svc:1")).await;
    let sub = c.next_json().await;
    assert_eq!(sub["type"], "hub:subscribed", "{sub}");
    assert_eq!(sub["recovered"], false, "{sub}");
    assert_eq!(sub["replayed"], 0, "{sub}");
    c.assert_no_event().await;
    let (id, _) = publish(&base, json!({"type": "live"})).await;
    assert_eq!(id_of(&next_notification(&mut c).await), id);
}

// ---------------------------------------------------------------------------------------------
// 6. Idempotent publish
// ---------------------------------------------------------------------------------------------

async fn notify_with_key(hub: &TestHub, body: &Value, key: &str) -> Value {
    let (status, answer) = post_json(&hub.url("/notify"), body, &[("Idempotency-Key", key)]).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test]
async fn the_same_idempotency_key_header_twice_returns_the_same_id_and_delivers_once() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let body = json!({"type": "booking", "message": "confirmed"});
    let first = notify_with_key(&hub, &body, "key-1").await;
    let second = notify_with_key(&hub, &body, "key-1").await;
    assert_eq!(first["id"], second["id"], "{first} {second}");
    assert_eq!(first["seq"], second["seq"]);
    assert_eq!(id_of(&next_notification(&mut c).await), id_of(&first));
    c.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_posts_with_one_idempotency_key_deliver_once_and_all_answer_the_same_id() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let url = hub.url("/notify");
    let posts: Vec<_> = (0..10)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                post_json(&url, &json!({"type": "booking"}), &[("Idempotency-Key", "same-key")]).await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for p in posts {
        let (status, answer) = p.await.expect("task");
        assert_eq!(status, 200, "{answer}");
        ids.insert(id_of(&answer));
    }
    assert_eq!(ids.len(), 1, "all answers carry the same id: {ids:?}");
    let ev = next_notification(&mut c).await;
    assert!(ids.contains(&id_of(&ev)));
    c.assert_no_event().await;
    let (_, recent) = get_json(&hub.url("/events?limit=50"), &[]).await;
    let kept = recent["events"].as_array().expect("events").len();
    assert_eq!(kept, 1, "one event was accepted: {recent}");
    hub.stop().await;
}

#[tokio::test]
async fn the_idempotency_key_body_field_deduplicates_like_the_header() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let body = json!({"type": "booking", "idempotency_key": "body-key"});
    let (s1, first) = hub.notify(body.clone()).await;
    let (s2, second) = hub.notify(body).await;
    assert_eq!((s1, s2), (200, 200), "{first} {second}");
    assert_eq!(first["id"], second["id"]);
    assert_eq!(id_of(&next_notification(&mut c).await), id_of(&first));
    c.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn different_idempotency_keys_publish_different_events() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    let body = json!({"type": "booking"});
    let a = notify_with_key(&hub, &body, "key-a").await;
    let b = notify_with_key(&hub, &body, "key-b").await;
    let (_, d) = hub.notify(json!({"type": "booking", "idempotency_key": "key-c"})).await;
    assert_ne!(a["id"], b["id"]);
    assert_ne!(a["id"], d["id"]);
    assert_ne!(b["id"], d["id"]);
    let got: Vec<String> = vec![
        id_of(&next_notification(&mut c).await),
        id_of(&next_notification(&mut c).await),
        id_of(&next_notification(&mut c).await),
    ];
    assert_eq!(got, vec![id_of(&a), id_of(&b), id_of(&d)]);
    c.assert_no_event().await;
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 7. GET /channels/{name}/history
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn channel_history_returns_the_events_after_since_in_order_up_to_limit() {
    let hub = TestHub::start(&[]).await;
    let base = format!("http://{}", hub.addr);
    let mut svc = Vec::new();
    for i in 0..10 {
        svc.push(publish(&base, json!({"type": "h", "channel": "svc:1", "data": {"i": i}})).await);
        publish(&base, json!({"type": "other", "channel": "svc:2"})).await;
        publish(&base, json!({"type": "other"})).await;
    }
    let ids = |v: &Value| -> Vec<(String, u64)> {
        v["events"].as_array().expect("events").iter().map(|e| (id_of(e), seq_of(e))).collect()
    };
    let (status, all) = get_json(&hub.url("/channels/svc:1/history"), &[]).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["channel"], "svc:1");
    assert!(all["epoch"].as_str().is_some_and(|e| !e.is_empty()), "{all}");
    assert_eq!(ids(&all), svc);
    let first = &all["events"][0];
    assert_eq!(first["type"], "h");
    assert_eq!(first["data"], json!({"i": 0}));

    let url = format!("/channels/svc:1/history?since={}", svc[2].1);
    let (_, after) = get_json(&hub.url(&url), &[]).await;
    assert_eq!(ids(&after), svc[3..].to_vec());

    let url = format!("/channels/svc:1/history?since={}&limit=3", svc[2].1);
    let (_, page) = get_json(&hub.url(&url), &[]).await;
    assert_eq!(ids(&page), svc[3..6].to_vec());

    let url = format!("/channels/svc:1/history?since={}", svc[9].1);
    let (_, none) = get_json(&hub.url(&url), &[]).await;
    assert_eq!(ids(&none), vec![]);

    let (status, unknown) = get_json(&hub.url("/channels/never-used/history"), &[]).await;
    assert_eq!(status, 200, "{unknown}");
    assert_eq!(ids(&unknown), vec![]);
    hub.stop().await;
}

#[tokio::test]
async fn channel_history_requires_the_api_key_when_one_is_configured() {
    let hub = TestHub::start(&["--api-key", "k-secret"]).await;
    let key = [("X-API-Key", "k-secret")];
    let (status, answer) = post_json(&hub.url("/notify"), &json!({"type": "h", "channel": "svc:1"}), &key).await;
    assert_eq!(status, 200, "{answer}");
    let url = hub.url("/channels/svc:1/history");
    let (status, body) = get_json(&url, &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = get_json(&url, &[("X-API-Key", "wrong")]).await;
    assert_eq!(status, 401);
    let (status, body) = get_json(&url, &key).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"][0]["id"], answer["id"]);
    let (status, _) = get_json(&url, &[("Authorization", "Bearer k-secret")]).await;
    assert_eq!(status, 200);
    hub.stop().await;
}

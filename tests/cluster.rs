//! Cluster mode on a real Redis: several wshub processes (the real binary, as child processes)
//! share one `redis-server` started by the test, and act as one hub. See docs/CLUSTER.md.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use common::{ChildHub, Client, RedisServer, get_json, post_json, token};
use serde_json::{Value, json};

const SECRET: &str = "cluster-test-secret";
/// `--node-ttl` of every node in these tests: a dead node leaves presence and stats within it.
const NODE_TTL: Duration = Duration::from_secs(3);
/// Longest wait for something that happens at a heartbeat or a reconnect.
const SLOW_WAIT: Duration = Duration::from_secs(15);

/// Starts a node of the cluster on a free port.
async fn node(redis: &RedisServer) -> ChildHub {
    let url = redis.url();
    ChildHub::start(&["--redis-url", &url, "--jwt-secret", SECRET, "--node-ttl", "3s"]).await
}

/// Connects to `path` on `hub` and reads `hub:connected`.
async fn connect(hub: &ChildHub, path: &str) -> Client {
    let mut client = Client::connect(&hub.ws_url(path)).await;
    let hello = client.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "first frame: {hello}");
    client.hello = hello;
    client
}

/// An authenticated client of `sub` with `roles` on `hub`.
async fn user(hub: &ChildHub, sub: &str, roles: &[&str]) -> Client {
    connect(hub, &format!("/ws?token={}", token(SECRET, sub, roles, 3600))).await
}

/// Subscribes and asserts the answer is `hub:subscribed`.
async fn join(client: &mut Client, channel: &str) {
    let reply = client.subscribe(channel).await;
    assert_eq!(reply["type"], "hub:subscribed", "subscribe {channel}: {reply}");
}

async fn notify(hub: &ChildHub, body: Value) -> (u16, Value) {
    post_json(&hub.url("/notify"), &body, &[]).await
}

/// Posts and asserts 200 with the cluster-mode answer shape; returns the answer.
async fn notify_ok(hub: &ChildHub, body: Value) -> Value {
    let (status, answer) = notify(hub, body.clone()).await;
    assert_eq!(status, 200, "POST /notify {body} answered {answer}");
    assert_eq!(answer["success"], true, "{answer}");
    assert!(answer["id"].is_string() && answer["seq"].is_u64(), "{answer}");
    assert!(answer["recipients"].is_null(), "cluster mode cannot count recipients: {answer}");
    assert!(answer["nodes"].is_u64(), "cluster mode reports nodes: {answer}");
    answer
}

/// Polls `check` every 100 ms until it returns `Some`, failing after `within`.
async fn poll<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/health` of `hub` answers 200 with a linked Redis engine.
async fn wait_engine_ok(hub: &ChildHub) {
    poll("health ok", SLOW_WAIT, || async {
        let (status, body) = get_json(&hub.url("/health"), &[]).await;
        (status == 200 && body["status"] == "ok" && body["engine"]["ok"] == true).then_some(())
    })
    .await
}

/// Users (sorted) in a channel's presence as seen from `hub`.
async fn presence_users(hub: &ChildHub, channel: &str) -> Vec<String> {
    let (status, body) = get_json(&hub.url(&format!("/channels/{channel}/presence")), &[]).await;
    assert_eq!(status, 200, "{body}");
    let mut users: Vec<String> =
        body["users"].as_array().expect("users").iter().map(|u| u["user"].as_str().expect("user").into()).collect();
    users.sort();
    users
}

/// Node ids listed in `/stats` `nodes` of `hub`.
async fn live_nodes(hub: &ChildHub) -> Vec<String> {
    let (status, body) = get_json(&hub.url("/stats"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let mut nodes: Vec<String> =
        body["nodes"].as_array().expect("nodes").iter().map(|n| n["node"].as_str().expect("node").into()).collect();
    nodes.sort();
    nodes
}

async fn node_id(hub: &ChildHub) -> String {
    let (_, body) = get_json(&hub.url("/stats"), &[]).await;
    body["node"].as_str().expect("node id").to_string()
}

/// Reads the next `n` notifications and returns their ids.
async fn next_ids(client: &mut Client, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let event = client.next_event().await;
        ids.push(event["id"].as_str().expect("event id").to_string());
    }
    ids
}

#[tokio::test]
async fn every_target_kind_posted_to_any_node_reaches_matching_clients_on_all_nodes_exactly_once() {
    let redis = RedisServer::start();
    let nodes = [node(&redis).await, node(&redis).await, node(&redis).await];

    // alice on nodes 0 and 2, bob on 1, carol on 2, an anonymous client on 1.
    let mut alice0 = user(&nodes[0], "alice", &["staff"]).await;
    let mut bob1 = user(&nodes[1], "bob", &["staff"]).await;
    let mut carol2 = user(&nodes[2], "carol", &["guest"]).await;
    let mut alice2 = user(&nodes[2], "alice", &[]).await;
    let mut anon1 = connect(&nodes[1], "/ws").await;
    join(&mut alice0, "room").await;
    join(&mut carol2, "room").await;

    let broadcast = notify_ok(&nodes[1], json!({"type": "news", "message": "to all"})).await;
    let to_alice = notify_ok(&nodes[1], json!({"type": "dm", "user": "alice"})).await;
    let to_staff = notify_ok(&nodes[2], json!({"type": "memo", "role": "staff"})).await;
    let to_room = notify_ok(&nodes[0], json!({"type": "chat", "channel": "room"})).await;
    // alice0 is in both user:alice and room: still one copy.
    let to_alice_and_room = notify_ok(&nodes[2], json!({"type": "both", "user": "alice", "channel": "room"})).await;
    assert_eq!(broadcast["nodes"], 3, "every node listens to broadcast: {broadcast}");

    let id = |v: &Value| v["id"].as_str().expect("id").to_string();
    let expected: Vec<(&str, &mut Client, Vec<String>)> = vec![
        (
            "alice0",
            &mut alice0,
            vec![id(&broadcast), id(&to_alice), id(&to_staff), id(&to_room), id(&to_alice_and_room)],
        ),
        ("bob1", &mut bob1, vec![id(&broadcast), id(&to_staff)]),
        ("carol2", &mut carol2, vec![id(&broadcast), id(&to_room), id(&to_alice_and_room)]),
        ("alice2", &mut alice2, vec![id(&broadcast), id(&to_alice), id(&to_alice_and_room)]),
        ("anon1", &mut anon1, vec![id(&broadcast)]),
    ];
    for (name, client, ids) in expected {
        assert_eq!(next_ids(client, ids.len()).await, ids, "{name} got the wrong events, or in the wrong order");
        client.assert_no_event().await;
    }
}

#[tokio::test]
async fn client_resuming_on_another_node_gets_exactly_the_missed_events_and_recovered_true() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let jwt = token(SECRET, "alice", &["staff"], 3600);

    let mut alice = connect(&a, &format!("/ws?token={jwt}")).await;
    join(&mut alice, "room").await;
    let epoch = alice.hello["epoch"].as_str().expect("epoch").to_string();
    notify_ok(&b, json!({"type": "seen", "user": "alice"})).await;
    notify_ok(&a, json!({"type": "seen", "channel": "room"})).await;
    let seen_auto = alice.next_event().await;
    let seen_room = alice.next_event().await;
    assert_eq!((seen_auto["channel"].as_str(), seen_room["channel"].as_str()), (Some("user:alice"), Some("room")));
    drop(alice);

    // Missed while away, posted to both nodes; `other` is not for alice.
    let m1 = notify_ok(&a, json!({"type": "missed", "user": "alice"})).await;
    let m2 = notify_ok(&b, json!({"type": "missed", "channel": "room"})).await;
    notify_ok(&a, json!({"type": "other", "user": "bob"})).await;
    let m3 = notify_ok(&b, json!({"type": "missed"})).await;
    let m4 = notify_ok(&a, json!({"type": "missed", "role": "staff"})).await;

    let since = seen_auto["seq"].as_u64().expect("seq");
    let mut back = connect(&b, &format!("/ws?token={jwt}&since={since}&epoch={epoch}")).await;
    assert_eq!(back.hello["recovered"], true, "{}", back.hello);
    assert_eq!(back.hello["replayed"], 3, "{}", back.hello);
    let ids: Vec<String> = next_ids(&mut back, 3).await;
    assert_eq!(ids, [&m1, &m3, &m4].map(|v| v["id"].as_str().expect("id").to_string()));

    back.send_json(json!({"type": "subscribe", "channel": "room", "since": seen_room["seq"], "epoch": epoch})).await;
    let subscribed = back.next_reply().await;
    assert_eq!(subscribed["type"], "hub:subscribed", "{subscribed}");
    assert_eq!(
        (subscribed["recovered"].clone(), subscribed["replayed"].clone()),
        (json!(true), json!(1)),
        "{subscribed}"
    );
    let replayed = back.next_event().await;
    assert_eq!(replayed["id"], m2["id"]);
    assert_eq!(replayed["channel"], "room");
    back.assert_no_event().await;

    // And it is live on the new node.
    let live = notify_ok(&a, json!({"type": "live", "channel": "room"})).await;
    assert_eq!(back.next_event().await["id"], live["id"]);
    back.assert_no_event().await;
}

#[tokio::test]
async fn redis_outage_answers_503_and_a_redis_that_lost_its_data_tells_every_client_to_resync() {
    let mut redis = RedisServer::start();
    let nodes = [node(&redis).await, node(&redis).await];
    let jwts = [token(SECRET, "alice", &[], 3600), token(SECRET, "bob", &[], 3600)];
    let mut clients = [
        connect(&nodes[0], &format!("/ws?token={}", jwts[0])).await,
        connect(&nodes[1], &format!("/ws?token={}", jwts[1])).await,
    ];
    let mut last_seen = [0u64; 2];
    let mut first_epoch = String::new();
    for (i, n) in [0, 1, 0].into_iter().enumerate() {
        notify_ok(&nodes[n], json!({"type": "before", "data": {"i": i}})).await;
    }
    for (client, last) in clients.iter_mut().zip(&mut last_seen) {
        for _ in 0..3 {
            let event = client.next_event().await;
            first_epoch = event["epoch"].as_str().expect("epoch").into();
            *last = event["seq"].as_u64().expect("seq");
        }
    }

    redis.kill();
    // Right away, before the nodes may have noticed: never a 200 for an event nobody can get.
    for hub in &nodes {
        let (status, body) = notify(hub, json!({"type": "during"})).await;
        assert_eq!(status, 503, "publish while Redis is down: {body}");
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "503 without a JSON error: {body}");
    }
    for hub in &nodes {
        poll("health degraded", SLOW_WAIT, || async {
            let (status, body) = get_json(&hub.url("/health"), &[]).await;
            (status == 503
                && body["status"] == "degraded"
                && body["engine"]["kind"] == "redis"
                && body["engine"]["ok"] == false)
                .then_some(())
        })
        .await;
        let (status, body) = notify(hub, json!({"type": "during", "channel": "room"})).await;
        assert_eq!(status, 503, "publish while degraded: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    for client in &mut clients {
        client.assert_alive().await;
    }

    // The restarted Redis is empty: the nodes cannot know what was published just before the
    // crash, so every client is closed with 4006 and its resume answers recovered: false.
    redis.restart();
    for client in &mut clients {
        assert_eq!(client.ended().await, common::Ended::Closed(4006), "told to resync");
    }
    for hub in &nodes {
        wait_engine_ok(hub).await;
    }
    let mut back = Vec::new();
    for ((hub, jwt), since) in nodes.iter().zip(&jwts).zip(last_seen) {
        let client = connect(hub, &format!("/ws?token={jwt}&since={since}&epoch={first_epoch}")).await;
        assert_eq!(client.hello["recovered"], false, "{}", client.hello);
        assert_ne!(client.hello["epoch"], first_epoch.as_str(), "Redis lost its data: a new epoch");
        back.push(client);
    }
    let after = notify_ok(&nodes[1], json!({"type": "after"})).await;
    for client in &mut back {
        assert_eq!(client.next_event().await["id"], after["id"], "first event after the restart");
        client.assert_no_event().await;
    }
}

#[tokio::test]
async fn redis_reset_does_not_swallow_a_new_event_that_reuses_the_last_seen_seq() {
    // After Redis loses its data the seq counter starts again at 1: a client whose last event
    // was seq 1 of the old epoch must still get seq 1 of the new one.
    let mut redis = RedisServer::start();
    let hub = node(&redis).await;
    let jwt = token(SECRET, "alice", &[], 3600);
    let mut alice = connect(&hub, &format!("/ws?token={jwt}")).await;
    let before = notify_ok(&hub, json!({"type": "before"})).await;
    let seen = alice.next_event().await;
    assert_eq!(seen["id"], before["id"]);
    redis.restart();
    assert_eq!(alice.ended().await, common::Ended::Closed(4006), "told to resync");
    wait_engine_ok(&hub).await;
    let since = format!("/ws?token={jwt}&since={}&epoch={}", seen["seq"], seen["epoch"].as_str().expect("epoch"));
    let mut alice = connect(&hub, &since).await;
    assert_eq!(alice.hello["recovered"], false, "{}", alice.hello);
    let after = notify_ok(&hub, json!({"type": "after"})).await;
    assert_eq!(after["seq"], before["seq"], "both are the first seq of their epoch");
    assert_eq!(alice.next_event().await["id"], after["id"]);
}

#[tokio::test]
async fn sigkilled_node_leaves_presence_and_stats_within_node_ttl_and_others_keep_serving() {
    let redis = RedisServer::start();
    let victim = node(&redis).await;
    let survivor = node(&redis).await;
    let (victim_id, survivor_id) = (node_id(&victim).await, node_id(&survivor).await);

    let mut alice = user(&victim, "alice", &[]).await;
    let mut bob = user(&survivor, "bob", &[]).await;
    join(&mut alice, "room").await;
    join(&mut bob, "room").await;
    poll("both users in the cluster presence", SLOW_WAIT, || async {
        (presence_users(&survivor, "room").await == ["alice", "bob"]).then_some(())
    })
    .await;
    let mut both = vec![victim_id.clone(), survivor_id.clone()];
    both.sort();
    poll("both nodes in /stats", SLOW_WAIT, || async { (live_nodes(&survivor).await == both).then_some(()) }).await;

    victim.signal("KILL");
    let killed = Instant::now();
    poll("alice gone from presence", NODE_TTL + Duration::from_secs(3), || async {
        (presence_users(&survivor, "room").await == ["bob"]).then_some(())
    })
    .await;
    poll("the dead node gone from /stats", NODE_TTL + Duration::from_secs(3), || async {
        (live_nodes(&survivor).await == [survivor_id.clone()]).then_some(())
    })
    .await;
    let bound = NODE_TTL + Duration::from_secs(2);
    assert!(killed.elapsed() <= bound, "took {:?}, more than node_ttl + margin {bound:?}", killed.elapsed());

    let event = notify_ok(&survivor, json!({"type": "still-here", "channel": "room"})).await;
    assert_eq!(bob.next_event().await["id"], event["id"]);
    bob.assert_no_event().await;
    let (status, health) = get_json(&survivor.url("/health"), &[]).await;
    assert_eq!((status, health["status"].clone()), (200, json!("ok")), "{health}");
    drop(victim);
}

#[tokio::test]
async fn same_idempotency_key_on_two_nodes_delivers_once_with_the_same_id() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut client = user(&b, "alice", &[]).await;

    let body = json!({"type": "once", "user": "alice", "idempotency_key": "order-7"});
    let first = notify_ok(&a, body.clone()).await;
    let again = notify_ok(&b, body).await;
    assert_eq!((&again["id"], &again["seq"]), (&first["id"], &first["seq"]), "{first} vs {again}");

    // Racing on both nodes at once, with the header form of the key.
    let url_a = a.url("/notify");
    let url_b = b.url("/notify");
    let racing = json!({"type": "raced", "user": "alice"});
    let headers = [("Idempotency-Key", "order-8")];
    let ((sa, ra), (sb, rb)) = tokio::join!(post_json(&url_a, &racing, &headers), post_json(&url_b, &racing, &headers));
    assert_eq!((sa, sb), (200, 200), "{ra} / {rb}");
    assert_eq!(ra["id"], rb["id"], "{ra} / {rb}");

    assert_eq!(client.next_event().await["id"], first["id"]);
    assert_eq!(client.next_event().await["id"], ra["id"]);
    client.assert_no_event().await;
}

#[tokio::test]
async fn receipts_on_one_node_count_acks_and_writes_from_clients_on_another() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let mut bob = user(&b, "bob", &[]).await;
    let mut carol = user(&b, "carol", &[]).await;

    let event = notify_ok(&a, json!({"type": "invoice", "user": ["bob", "carol"]})).await;
    let id = event["id"].as_str().expect("id").to_string();
    assert_eq!(bob.next_event().await["id"], event["id"]);
    assert_eq!(carol.next_event().await["id"], event["id"]);
    bob.send_json(json!({"type": "ack", "ids": [id]})).await;

    let url = a.url(&format!("/events/{id}"));
    let receipts: HashMap<String, Value> = poll("receipts on node A", SLOW_WAIT, || async {
        let (status, body) = get_json(&url, &[]).await;
        assert_eq!(status, 200, "{body}");
        let r = &body["receipts"];
        (r["written"] == 2 && r["acked"] == 1)
            .then(|| r.as_object().expect("receipts").clone().into_iter().collect::<HashMap<String, Value>>())
    })
    .await;
    assert_eq!(receipts["acked_users"], json!(["bob"]));
}

#[tokio::test]
async fn hub_connected_on_a_resume_through_another_node_carries_the_newest_seq() {
    let redis = RedisServer::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let jwt = token(SECRET, "alice", &[], 3600);
    let alice = connect(&a, &format!("/ws?token={jwt}")).await;
    let epoch = alice.hello["epoch"].as_str().expect("epoch").to_string();
    let since = alice.hello["seq"].as_u64().expect("seq");
    drop(alice);
    // Node B never sees these live: nobody on it listens to user:alice.
    let mut newest = 0;
    for i in 0..3 {
        newest =
            notify_ok(&a, json!({"type": "dm", "user": "alice", "data": {"i": i}})).await["seq"].as_u64().expect("seq");
    }
    let mut back = connect(&b, &format!("/ws?token={jwt}&since={since}&epoch={epoch}")).await;
    assert_eq!((back.hello["recovered"].clone(), back.hello["replayed"].clone()), (json!(true), json!(3)));
    assert_eq!(back.hello["seq"], newest, "hub:connected seq is the newest: {}", back.hello);
    let replayed = next_ids(&mut back, 3).await;
    assert_eq!(replayed.len(), 3);
}

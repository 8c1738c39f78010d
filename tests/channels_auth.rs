//! Issue 3: identity (JWT), channels, targeting, permissions, presence, admin and compatibility
//! routes. Real server, real sockets; every test name says the behaviour it proves.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

const SECRET: &str = "channels-auth-test-secret";

/// A valid HS256 token for `sub` with `roles`, valid for an hour.
fn tok(sub: &str, roles: &[&str]) -> String {
    token(SECRET, sub, roles, 3600)
}

/// A hub verifying HS256 tokens with [`SECRET`], plus extra flags.
async fn jwt_hub(extra: &[&str]) -> TestHub {
    let mut flags = vec!["--jwt-secret", SECRET];
    flags.extend_from_slice(extra);
    TestHub::start(&flags).await
}

/// Connects with `?token=` and returns the client (its `hello` is `hub:connected`).
async fn connect_as(hub: &TestHub, sub: &str, roles: &[&str]) -> Client {
    hub.client_at(&format!("/ws?token={}", tok(sub, roles))).await
}

/// Connects with a raw token and expects `hub:error unauthorized` then close 4001.
async fn assert_refused(hub: &TestHub, token: &str, what: &str) {
    let mut c = Client::connect(&hub.ws_url(&format!("/ws?token={token}"))).await;
    let err = c.next_json().await;
    assert_eq!(err["type"], "hub:error", "{what}: {err}");
    assert_eq!(err["code"], "unauthorized", "{what}: {err}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {err}");
    assert_eq!(c.ended().await, Ended::Closed(4001), "{what}");
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("fixture")
}

/// Writes a namespace file for this test and returns its path.
fn namespace_file(name: &str, toml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("wshub-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, toml).expect("write namespace file");
    path
}

const NAMESPACES: &str = r#"
[[namespace]]
prefix = "chat:"
publish = true
presence = true

[[namespace]]
prefix = "staff:"
subscribe = "roles"
roles = ["staff"]
"#;

/// A hub with the JWT secret and the chat/staff namespaces.
async fn namespaced_hub(name: &str) -> TestHub {
    let path = namespace_file(name, NAMESPACES);
    let path = path.to_str().expect("utf-8 path").to_string();
    jwt_hub(&["--config", &path]).await
}

/// Publishes a broadcast marker and returns its id: every client's next notification after a
/// targeted one must be this marker, which proves nothing else (and no duplicate) came before it.
async fn marker(hub: &TestHub) -> String {
    let (status, answer) = hub.notify(json!({"type": "marker"})).await;
    assert_eq!(status, 200, "{answer}");
    answer["id"].as_str().expect("marker id").to_string()
}

/// Asserts the client's next notifications are exactly: the event `id` through `channel` (when
/// given), then the marker.
async fn expect_then_marker(c: &mut Client, who: &str, event: Option<(&str, &str)>, marker_id: &str) {
    if let Some((id, channel)) = event {
        let ev = c.next_event().await;
        assert_eq!(ev["id"], id, "{who} should get the targeted event first: {ev}");
        assert_eq!(ev["channel"], channel, "{who} received it through the wrong stream: {ev}");
    }
    let ev = c.next_event().await;
    assert_eq!(ev["type"], "marker", "{who} got something it should not have: {ev}");
    assert_eq!(ev["id"], marker_id, "{who}: {ev}");
}

/// Polls an admin GET until `ok` holds for its body (state changes made by other connections).
async fn wait_for(url: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = get_json(url, &[]).await;
        assert_eq!(status, 200, "{url}: {body}");
        if ok(&body) {
            return body;
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never reached the expected state: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Connecting and authenticating
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn query_token_connects_with_user_roles_and_automatic_streams_in_hub_connected() {
    let hub = jwt_hub(&[]).await;
    let c = connect_as(&hub, "alice", &["customer", "vip"]).await;
    let hello = &c.hello;
    assert!(hello["client_id"].as_str().is_some_and(|id| !id.is_empty()), "{hello}");
    assert_eq!(hello["user"], "alice");
    assert_eq!(hello["role"], "customer");
    assert_eq!(hello["roles"], json!(["customer", "vip"]));
    assert_eq!(hello["channels"], json!(["broadcast", "user:alice", "role:customer", "role:vip"]));
    hub.stop().await;
}

#[tokio::test]
async fn role_claim_and_roles_claim_are_merged_without_duplicates() {
    let hub = jwt_hub(&[]).await;
    let t = token_with(SECRET, json!({"sub": "carol", "role": "admin", "roles": ["staff", "admin"]}), 3600);
    let c = hub.client_at(&format!("/ws?token={t}")).await;
    assert_eq!(c.hello["role"], "admin");
    assert_eq!(c.hello["roles"], json!(["admin", "staff"]));
    assert_eq!(c.hello["channels"], json!(["broadcast", "user:carol", "role:admin", "role:staff"]));
    hub.stop().await;
}

#[tokio::test]
async fn client_ids_are_unique_per_connection() {
    let hub = jwt_hub(&[]).await;
    let a = connect_as(&hub, "alice", &[]).await;
    let b = connect_as(&hub, "alice", &[]).await;
    assert_ne!(a.hello["client_id"], b.hello["client_id"]);
    hub.stop().await;
}

#[tokio::test]
async fn authorization_bearer_header_authenticates_like_the_query_token() {
    let hub = jwt_hub(&["--require-auth"]).await;
    let bearer = format!("Bearer {}", tok("bob", &["provider"]));
    let mut c = Client::connect_with_headers(&hub.ws_url("/ws"), &[("authorization", &bearer)]).await;
    let hello = c.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "{hello}");
    assert_eq!(hello["user"], "bob");
    assert_eq!(hello["role"], "provider");
    assert_eq!(hello["channels"], json!(["broadcast", "user:bob", "role:provider"]));
    let (_, answer) = hub.notify(json!({"type": "t", "user": "bob"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(c.next_event().await["channel"], "user:bob");
    hub.stop().await;
}

#[tokio::test]
async fn a_bad_token_in_the_bearer_header_is_refused_with_4001() {
    let hub = jwt_hub(&[]).await;
    let bearer = format!("Bearer {}", token("wrong-secret", "bob", &[], 3600));
    let mut c = Client::connect_with_headers(&hub.ws_url("/ws"), &[("authorization", &bearer)]).await;
    let err = c.next_json().await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("hub:error"), Some("unauthorized")), "{err}");
    assert_eq!(c.ended().await, Ended::Closed(4001));
    hub.stop().await;
}

#[tokio::test]
async fn first_auth_frame_authenticates_under_require_auth() {
    let hub = jwt_hub(&["--require-auth"]).await;
    let mut c = Client::connect(&hub.ws_url("/ws")).await;
    c.send_json(json!({"type": "auth", "token": tok("dave", &["customer"])})).await;
    let hello = c.next_json().await;
    assert_eq!(hello["type"], "hub:connected", "{hello}");
    assert_eq!(hello["user"], "dave");
    assert_eq!(hello["channels"], json!(["broadcast", "user:dave", "role:customer"]));
    c.assert_alive().await;
    let (_, answer) = hub.notify(json!({"type": "t", "role": "customer"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(c.next_event().await["channel"], "role:customer");
    hub.stop().await;
}

#[tokio::test]
async fn numeric_sub_is_the_user_id_as_a_string() {
    let hub = jwt_hub(&[]).await;
    let t = token_with(SECRET, json!({"sub": 42, "role": "customer"}), 3600);
    let mut c = hub.client_at(&format!("/ws?token={t}")).await;
    assert_eq!(c.hello["user"], "42");
    assert_eq!(c.hello["channels"], json!(["broadcast", "user:42", "role:customer"]));
    let (_, answer) = hub.notify(json!({"type": "t", "user": 42})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(c.next_event().await["channel"], "user:42");
    assert_eq!(c.subscribe("user:42").await["type"], "hub:subscribed");
    hub.stop().await;
}

#[tokio::test]
async fn without_a_jwt_key_connections_are_anonymous_and_tokens_are_ignored() {
    let hub = TestHub::start(&[]).await;
    let c = hub.client_at(&format!("/ws?token={}", tok("alice", &["admin"]))).await;
    assert_eq!(c.hello["user"], Value::Null);
    assert_eq!(c.hello["role"], Value::Null);
    assert_eq!(c.hello["roles"], json!([]));
    assert_eq!(c.hello["channels"], json!(["broadcast"]));
    hub.stop().await;
}

#[tokio::test]
async fn with_a_key_but_without_require_auth_a_tokenless_connection_is_anonymous() {
    let hub = jwt_hub(&[]).await;
    let mut c = hub.client().await;
    assert_eq!(c.hello["user"], Value::Null);
    assert_eq!(c.hello["channels"], json!(["broadcast"]));
    assert_eq!(c.subscribe("service:1").await["type"], "hub:subscribed");
    hub.stop().await;
}

#[tokio::test]
async fn bad_expired_wrong_algorithm_none_and_garbage_tokens_get_unauthorized_and_4001() {
    let hub = jwt_hub(&[]).await;
    let claims = json!({"sub": "mallory", "role": "admin"});
    let rsa = EncodingKey::from_rsa_pem(&fixture_bytes("rs256_private.pem")).expect("rsa key");
    let cases: Vec<(&str, String)> = vec![
        ("wrong secret", token("another-secret", "mallory", &["admin"], 3600)),
        ("expired an hour ago", token(SECRET, "mallory", &["admin"], -3600)),
        ("expired just beyond the 30 s leeway", token(SECRET, "mallory", &["admin"], -40)),
        (
            "HS384 with the right secret",
            token_signed(Algorithm::HS384, &EncodingKey::from_secret(SECRET.as_bytes()), claims.clone(), 3600),
        ),
        (
            "HS512 with the right secret",
            token_signed(Algorithm::HS512, &EncodingKey::from_secret(SECRET.as_bytes()), claims.clone(), 3600),
        ),
        ("RS256 when HS256 is expected", token_signed(Algorithm::RS256, &rsa, claims.clone(), 3600)),
        ("alg none", unsigned_token(claims.clone(), 3600)),
        ("alg none with the signature of a valid token", {
            let valid = tok("mallory", &["admin"]);
            let sig = valid.rsplit('.').next().expect("signature").to_string();
            format!("{}{sig}", unsigned_token(claims.clone(), 3600))
        }),
        ("garbage", "not-a-jwt".to_string()),
        ("three garbage parts", "a.b.c".to_string()),
        ("no sub", token_with(SECRET, json!({"role": "admin"}), 3600)),
        ("empty sub", token_with(SECRET, json!({"sub": ""}), 3600)),
        ("no exp", {
            let key = EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&jsonwebtoken::Header::default(), &json!({"sub": "mallory"}), &key).expect("encode")
        }),
        ("tampered claims", {
            let valid = tok("mallory", &["customer"]);
            let parts: Vec<&str> = valid.split('.').collect();
            let forged = base64url(
                json!({"sub": "mallory", "roles": ["admin"], "exp": unix_now() + 3600}).to_string().as_bytes(),
            );
            format!("{}.{forged}.{}", parts[0], parts[2])
        }),
    ];
    let mut bystander = connect_as(&hub, "alice", &[]).await;
    for (what, token) in &cases {
        assert_refused(&hub, token, what).await;
    }
    bystander.assert_alive().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_token_inside_the_30s_leeway_is_still_accepted() {
    let hub = jwt_hub(&[]).await;
    let c = hub.client_at(&format!("/ws?token={}", token(SECRET, "alice", &[], -10))).await;
    assert_eq!(c.hello["user"], "alice");
    hub.stop().await;
}

#[tokio::test]
async fn es256_public_key_accepts_es256_and_refuses_hs256_confusion_and_rs256() {
    let key = fixture("es256_public.pem");
    let hub = TestHub::start(&["--jwt-public-key", key.to_str().expect("path")]).await;
    let es = EncodingKey::from_ec_pem(&fixture_bytes("es256_private.pem")).expect("ec key");
    let good = token_signed(Algorithm::ES256, &es, json!({"sub": "erin", "role": "staff"}), 3600);
    let c = hub.client_at(&format!("/ws?token={good}")).await;
    assert_eq!(c.hello["user"], "erin");
    // Algorithm confusion: HMAC keyed with the public key's PEM text.
    let confused = token_signed(
        Algorithm::HS256,
        &EncodingKey::from_secret(&fixture_bytes("es256_public.pem")),
        json!({"sub": "erin"}),
        3600,
    );
    assert_refused(&hub, &confused, "HS256 signed with the public key").await;
    let rsa = EncodingKey::from_rsa_pem(&fixture_bytes("rs256_private.pem")).expect("rsa key");
    assert_refused(&hub, &token_signed(Algorithm::RS256, &rsa, json!({"sub": "erin"}), 3600), "RS256").await;
    assert_refused(&hub, &unsigned_token(json!({"sub": "erin"}), 3600), "alg none").await;
    hub.stop().await;
}

#[tokio::test]
async fn rs256_public_key_accepts_rs256_and_refuses_hs256() {
    let key = fixture("rs256_public.pem");
    let hub = TestHub::start(&["--jwt-public-key", key.to_str().expect("path")]).await;
    let rsa = EncodingKey::from_rsa_pem(&fixture_bytes("rs256_private.pem")).expect("rsa key");
    let good = token_signed(Algorithm::RS256, &rsa, json!({"sub": 7}), 3600);
    let c = hub.client_at(&format!("/ws?token={good}")).await;
    assert_eq!(c.hello["user"], "7");
    assert_refused(&hub, &token(SECRET, "7", &[], 3600), "HS256").await;
    hub.stop().await;
}

#[tokio::test]
async fn bad_token_is_refused_even_without_require_auth() {
    let hub = jwt_hub(&[]).await;
    assert_refused(&hub, &token("nope", "x", &[], 3600), "wrong secret without --require-auth").await;
    hub.stop().await;
}

#[tokio::test]
async fn missing_token_under_require_auth_closes_4001_after_the_auth_timeout() {
    let hub = jwt_hub(&["--require-auth", "--auth-timeout", "300ms"]).await;
    let started = tokio::time::Instant::now();
    let mut c = Client::connect(&hub.ws_url("/ws")).await;
    let err = c.next_json().await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("hub:error"), Some("unauthorized")), "{err}");
    assert_eq!(c.ended().await, Ended::Closed(4001));
    assert!(started.elapsed() >= Duration::from_millis(250), "closed before the auth timeout");
    hub.stop().await;
}

#[tokio::test]
async fn under_require_auth_a_first_frame_that_is_not_a_valid_auth_closes_4001() {
    let hub = jwt_hub(&["--require-auth"]).await;
    let firsts = [
        json!({"type": "subscribe", "channel": "news"}).to_string(),
        json!({"type": "ping"}).to_string(),
        json!({"type": "auth", "token": token("wrong", "a", &[], 3600)}).to_string(),
        json!({"type": "auth", "token": token(SECRET, "a", &[], -3600)}).to_string(),
        json!({"type": "auth"}).to_string(),
        "{not json".to_string(),
    ];
    for first in &firsts {
        let mut c = Client::connect(&hub.ws_url("/ws")).await;
        c.send_text(first).await;
        let err = c.next_json().await;
        assert_eq!(err["code"], "unauthorized", "first frame {first}: {err}");
        assert_eq!(c.ended().await, Ended::Closed(4001), "first frame {first}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn token_expiring_while_connected_gets_token_expired_and_close_4002() {
    let hub = jwt_hub(&[]).await;
    // exp 29 s ago: valid for about one more second thanks to the 30 s leeway.
    let mut c = hub.client_at(&format!("/ws?token={}", token(SECRET, "alice", &[], -29))).await;
    assert_eq!(c.hello["user"], "alice");
    let err = c.next_json().await;
    assert_eq!(err["type"], "hub:error", "{err}");
    assert_eq!(err["code"], "token_expired", "{err}");
    assert_eq!(c.ended().await, Ended::Closed(4002));
    hub.stop().await;
}

#[tokio::test]
async fn a_fresh_auth_before_expiry_keeps_the_connection_open_and_reports_hub_authenticated() {
    let hub = jwt_hub(&[]).await;
    let mut c = hub.client_at(&format!("/ws?token={}", token(SECRET, "alice", &["customer"], -28))).await;
    let fresh_exp = unix_now() + 3600;
    c.send_json(json!({"type": "auth", "token": token(SECRET, "alice", &["customer", "vip"], 3600)})).await;
    let ok = c.next_reply().await;
    assert_eq!(ok["type"], "hub:authenticated", "{ok}");
    assert_eq!(ok["user"], "alice");
    assert_eq!(ok["roles"], json!(["customer", "vip"]));
    assert!(ok["exp"].as_i64().is_some_and(|e| (e - fresh_exp).abs() <= 2), "{ok}");
    // Waiting past the old token's expiry (plus leeway) is the point here.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    c.assert_alive().await;
    let (_, answer) = hub.notify(json!({"type": "t", "role": "vip"})).await;
    assert_eq!(answer["recipients"], 1, "the refreshed roles' streams were joined");
    assert_eq!(c.next_event().await["channel"], "role:vip");
    hub.stop().await;
}

#[tokio::test]
async fn auth_with_a_different_sub_is_refused_and_the_connection_keeps_its_user() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &["customer"]).await;
    c.send_json(json!({"type": "auth", "token": tok("mallory", &["admin"])})).await;
    let err = c.next_reply().await;
    assert_eq!(err["type"], "hub:error", "{err}");
    assert_eq!(err["code"], "unauthorized", "{err}");
    c.assert_alive().await;
    assert_eq!(c.subscribe("role:admin").await["code"], "forbidden");
    let (_, answer) = hub.notify(json!({"type": "t", "user": ["alice", "mallory"]})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(c.next_event().await["channel"], "user:alice");
    hub.stop().await;
}

#[tokio::test]
async fn an_invalid_refresh_token_gets_unauthorized_and_changes_nothing() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &["customer"]).await;
    for bad in
        [token("wrong", "alice", &["admin"], 3600), unsigned_token(json!({"sub": "alice", "role": "admin"}), 3600)]
    {
        c.send_json(json!({"type": "auth", "token": bad})).await;
        let err = c.next_reply().await;
        assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("hub:error"), Some("unauthorized")), "{err}");
    }
    c.assert_alive().await;
    assert_eq!(c.subscribe("role:admin").await["code"], "forbidden");
    hub.stop().await;
}

#[tokio::test]
async fn an_anonymous_connection_can_authenticate_later_and_joins_its_streams() {
    let hub = jwt_hub(&[]).await;
    let mut c = hub.client().await;
    assert_eq!(c.hello["user"], Value::Null);
    c.send_json(json!({"type": "auth", "token": tok("frank", &["provider"])})).await;
    let ok = c.next_reply().await;
    assert_eq!(ok["type"], "hub:authenticated", "{ok}");
    assert_eq!(ok["user"], "frank");
    assert_eq!(ok["role"], "provider");
    let (_, answer) = hub.notify(json!({"type": "t", "user": "frank"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(c.next_event().await["channel"], "user:frank");
    hub.stop().await;
}

#[tokio::test]
async fn auth_frame_without_a_jwt_key_is_an_error_and_the_connection_stays() {
    let hub = TestHub::start(&[]).await;
    let mut c = hub.client().await;
    c.send_json(json!({"type": "auth", "token": tok("alice", &[])})).await;
    let err = c.next_reply().await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("hub:error"), Some("unauthorized")), "{err}");
    c.assert_alive().await;
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Targeting on POST /notify
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn notify_targets_deliver_to_exactly_the_matching_connections_once_each() {
    let hub = jwt_hub(&[]).await;
    // 0,1: alice (two tabs) customer; 2: bob provider; 3: carol admin+provider;
    // 4: user 7 customer; 5: anonymous.
    let mut cs = [
        connect_as(&hub, "alice", &["customer"]).await,
        connect_as(&hub, "alice", &["customer"]).await,
        connect_as(&hub, "bob", &["provider"]).await,
        connect_as(&hub, "carol", &["admin", "provider"]).await,
        hub.client_at(&format!("/ws?token={}", token_with(SECRET, json!({"sub": 7, "role": "customer"}), 3600))).await,
        hub.client().await,
    ];
    let names = ["alice#1", "alice#2", "bob", "carol", "user7", "anonymous"];
    for i in [2, 5] {
        assert_eq!(cs[i].subscribe("service:12").await["type"], "hub:subscribed");
    }
    // Carol also subscribes to her own user stream explicitly: still one copy.
    assert_eq!(cs[3].subscribe("user:carol").await["type"], "hub:subscribed");

    type Case<'a> = (&'a str, Value, Vec<(usize, &'a str)>);
    let cases: Vec<Case> = vec![
        ("user string", json!({"user": "alice"}), vec![(0, "user:alice"), (1, "user:alice")]),
        ("user array", json!({"user": ["alice", "bob"]}), vec![(0, "user:alice"), (1, "user:alice"), (2, "user:bob")]),
        ("user number", json!({"user": 7}), vec![(4, "user:7")]),
        ("user array with a number", json!({"user": [7, "bob"]}), vec![(2, "user:bob"), (4, "user:7")]),
        ("role", json!({"role": "provider"}), vec![(2, "role:provider"), (3, "role:provider")]),
        (
            "role array",
            json!({"role": ["admin", "customer"]}),
            vec![(0, "role:customer"), (1, "role:customer"), (3, "role:admin"), (4, "role:customer")],
        ),
        ("channel", json!({"channel": "service:12"}), vec![(2, "service:12"), (5, "service:12")]),
        (
            "channel + user + role overlapping",
            json!({"channel": "service:12", "user": "bob", "role": "provider"}),
            vec![(2, "service:12"), (3, "role:provider"), (5, "service:12")],
        ),
        (
            "user listed twice and role of the same user",
            json!({"user": ["carol", "carol"], "role": "admin"}),
            vec![(3, "user:carol")],
        ),
        ("nobody there", json!({"user": "zoe", "role": "ghost", "channel": "empty"}), vec![]),
        (
            "no target: broadcast",
            json!({}),
            vec![
                (0, "broadcast"),
                (1, "broadcast"),
                (2, "broadcast"),
                (3, "broadcast"),
                (4, "broadcast"),
                (5, "broadcast"),
            ],
        ),
    ];
    for (what, targets, expected) in cases {
        let mut body = json!({"type": "targeted", "message": what});
        for (k, v) in targets.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (status, answer) = hub.notify(body).await;
        assert_eq!(status, 200, "{what}: {answer}");
        assert_eq!(answer["recipients"], expected.len(), "{what}: recipients counts connections");
        let id = answer["id"].as_str().expect("id").to_string();
        let marker_id = marker(&hub).await;
        for (i, c) in cs.iter_mut().enumerate() {
            let event = expected.iter().find(|(j, _)| *j == i).map(|(_, ch)| (id.as_str(), *ch));
            expect_then_marker(c, &format!("{what} / {}", names[i]), event, &marker_id).await;
        }
    }
    futures_util::future::join_all(cs.iter_mut().map(|c| c.assert_no_event())).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_batch_with_targets_delivers_each_item_to_its_own_set() {
    let hub = jwt_hub(&[]).await;
    let mut alice = connect_as(&hub, "alice", &["customer"]).await;
    let mut bob = connect_as(&hub, "bob", &["provider"]).await;
    let (status, answer) =
        hub.notify(json!([{"type": "a", "user": "alice"}, {"type": "b", "role": "provider"}, {"type": "c"}])).await;
    assert_eq!(status, 200, "{answer}");
    let recipients: Vec<i64> =
        answer.as_array().expect("array").iter().map(|r| r["recipients"].as_i64().expect("n")).collect();
    assert_eq!(recipients, [1, 1, 2]);
    assert_eq!(alice.next_event().await["type"], "a");
    assert_eq!(alice.next_event().await["type"], "c");
    assert_eq!(bob.next_event().await["type"], "b");
    assert_eq!(bob.next_event().await["type"], "c");
    hub.stop().await;
}

#[tokio::test]
async fn notify_rejects_unknown_target_fields_and_wrong_types_naming_the_field() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &[]).await;
    let cases = [
        (json!({"type": "t", "users": "alice"}), "users"),
        (json!({"type": "t", "roles": ["admin"]}), "roles"),
        (json!({"type": "t", "channels": "x"}), "channels"),
        (json!({"type": "t", "user": {}}), "`user`"),
        (json!({"type": "t", "user": true}), "`user`"),
        (json!({"type": "t", "user": [{}]}), "`user`"),
        (json!({"type": "t", "role": 5}), "`role`"),
        (json!({"type": "t", "role": [1]}), "`role`"),
        (json!({"type": "t", "channel": {"name": "x"}}), "`channel`"),
        (json!({"type": "t", "channel": "bad name"}), "`channel`"),
        (json!({"type": "t", "channel": ""}), "`channel`"),
        (json!({"type": "t", "channel": "x".repeat(129)}), "`channel`"),
        (json!({"type": "t", "user": "al ice"}), "`user`"),
        (json!({"type": "hub:connected", "user": "alice"}), "hub:"),
    ];
    for (body, names) in cases {
        let (status, answer) = hub.notify(body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        let msg = answer["error"].as_str().unwrap_or_default();
        assert!(msg.contains(names), "{body}: error should name {names}: {msg}");
    }
    c.assert_no_event().await;
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Subscribe permissions and client messages
// ---------------------------------------------------------------------------------------------

/// Subscribing to `channel` gives `hub:error` with `code` naming the channel; the connection
/// stays usable.
async fn assert_subscribe_refused(c: &mut Client, channel: &str, code: &str) {
    let err = c.subscribe(channel).await;
    assert_eq!(err["type"], "hub:error", "subscribe {channel:?}: {err}");
    assert_eq!(err["code"], code, "subscribe {channel:?}: {err}");
    assert_eq!(err["channel"], channel, "the error names the channel: {err}");
    assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{err}");
    c.assert_alive().await;
}

#[tokio::test]
async fn subscribing_to_another_users_channel_is_forbidden_and_delivers_nothing() {
    let hub = jwt_hub(&[]).await;
    let mut alice = connect_as(&hub, "alice", &["customer"]).await;
    let mut bob = connect_as(&hub, "bob", &["customer"]).await;
    assert_subscribe_refused(&mut alice, "user:bob", "forbidden").await;
    let (_, answer) = hub.notify(json!({"type": "private", "user": "bob"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(bob.next_event().await["type"], "private");
    alice.assert_no_event().await;
    assert_eq!(alice.subscribe("user:alice").await["type"], "hub:subscribed", "own user channel is allowed");
    hub.stop().await;
}

#[tokio::test]
async fn only_holders_of_a_role_may_subscribe_to_its_role_channel() {
    let hub = jwt_hub(&[]).await;
    let mut customer = connect_as(&hub, "alice", &["customer"]).await;
    let mut admin = connect_as(&hub, "root", &["admin"]).await;
    let mut anon = hub.client().await;
    assert_subscribe_refused(&mut customer, "role:admin", "forbidden").await;
    assert_subscribe_refused(&mut anon, "role:admin", "forbidden").await;
    assert_subscribe_refused(&mut anon, "user:alice", "forbidden").await;
    assert_eq!(admin.subscribe("role:admin").await["type"], "hub:subscribed");
    assert_eq!(customer.subscribe("role:customer").await["type"], "hub:subscribed");
    // admin: channels are for admins only.
    assert_subscribe_refused(&mut customer, "admin:audit", "forbidden").await;
    assert_eq!(admin.subscribe("admin:audit").await["type"], "hub:subscribed");
    let (_, answer) = hub.notify(json!({"type": "audit", "role": "admin", "channel": "admin:audit"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(admin.next_event().await["type"], "audit");
    customer.assert_no_event().await;
    anon.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn private_channels_need_a_matching_channels_claim() {
    let hub = jwt_hub(&[]).await;
    let mut plain = connect_as(&hub, "alice", &["customer"]).await;
    let t = token_with(
        SECRET,
        json!({"sub": "bob", "role": "staff", "channels": ["private:team-*", "private:exact"]}),
        3600,
    );
    let mut claimed = hub.client_at(&format!("/ws?token={t}")).await;
    let mut anon = hub.client().await;
    assert_subscribe_refused(&mut plain, "private:team-7", "forbidden").await;
    assert_subscribe_refused(&mut anon, "private:team-7", "forbidden").await;
    assert_eq!(claimed.subscribe("private:team-7").await["type"], "hub:subscribed");
    assert_eq!(claimed.subscribe("private:exact").await["type"], "hub:subscribed");
    assert_subscribe_refused(&mut claimed, "private:other", "forbidden").await;
    assert_subscribe_refused(&mut claimed, "private:exactly", "forbidden").await;
    let (_, answer) = hub.notify(json!({"type": "team", "channel": "private:team-7"})).await;
    assert_eq!(answer["recipients"], 1);
    let ev = claimed.next_event().await;
    assert_eq!((ev["type"].as_str(), ev["channel"].as_str()), (Some("team"), Some("private:team-7")));
    plain.assert_no_event().await;
    anon.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn reserved_names_broadcast_and_hub_prefix_cannot_be_subscribed() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &["admin"]).await;
    for channel in ["broadcast", "hub:x", "hub:connected"] {
        assert_subscribe_refused(&mut c, channel, "forbidden").await;
    }
    hub.stop().await;
}

#[tokio::test]
async fn invalid_channel_names_get_bad_channel_and_the_connection_stays_usable() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &[]).await;
    let long = "a".repeat(129);
    for channel in ["with space", long.as_str(), "café", "ñ", "", "tab\there", "semi;colon", "emoji🎉"] {
        assert_subscribe_refused(&mut c, channel, "bad_channel").await;
    }
    let longest = "a".repeat(128);
    assert_eq!(c.subscribe(&longest).await["type"], "hub:subscribed", "128 characters is allowed");
    assert_eq!(c.subscribe("A-z_0.9:@=/x").await["type"], "hub:subscribed", "every documented character");
    hub.stop().await;
}

#[tokio::test]
async fn subscribed_reply_names_the_channel_and_delivery_says_which_channel() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &[]).await;
    let ok = c.subscribe("service:12").await;
    assert_eq!(ok["type"], "hub:subscribed");
    assert_eq!(ok["channel"], "service:12");
    let (_, answer) = hub.notify(json!({"type": "update", "channel": "service:12", "data": {"n": 1}})).await;
    assert_eq!(answer["recipients"], 1);
    let ev = c.next_event().await;
    assert_eq!(ev["channel"], "service:12");
    assert_eq!(ev["data"], json!({"n": 1}));
    hub.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_errors_for_unknown_or_automatic_streams() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &["customer"]).await;
    assert_eq!(c.subscribe("service:12").await["type"], "hub:subscribed");
    c.send_json(json!({"type": "unsubscribe", "channel": "service:12"})).await;
    let ok = c.next_reply().await;
    assert_eq!((ok["type"].as_str(), ok["channel"].as_str()), (Some("hub:unsubscribed"), Some("service:12")), "{ok}");
    let (_, answer) = hub.notify(json!({"type": "t", "channel": "service:12"})).await;
    assert_eq!(answer["recipients"], 0);
    c.assert_no_event().await;
    let cases = [
        ("service:12", "not_subscribed"),
        ("never-joined", "not_subscribed"),
        ("user:alice", "forbidden"),
        ("role:customer", "forbidden"),
        ("bad name", "bad_channel"),
    ];
    for (channel, code) in cases {
        c.send_json(json!({"type": "unsubscribe", "channel": channel})).await;
        let err = c.next_reply().await;
        assert_eq!(err["type"], "hub:error", "unsubscribe {channel}: {err}");
        assert_eq!(err["code"], code, "unsubscribe {channel}: {err}");
        assert_eq!(err["channel"], channel, "{err}");
    }
    // The automatic streams are still there.
    let (_, answer) = hub.notify(json!({"type": "t", "user": "alice"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(c.next_event().await["channel"], "user:alice");
    hub.stop().await;
}

#[tokio::test]
async fn unknown_message_types_and_malformed_json_get_errors_and_the_connection_stays_up() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &[]).await;
    let cases = [
        (r#"{"type":"dance"}"#, "bad_message"),
        (r#"{"type":"subscribe"}"#, "bad_message"),
        (r#"{"type":"subscribe","channel":5}"#, "bad_message"),
        (r#"{"channel":"news"}"#, "bad_message"),
        (r#"["subscribe"]"#, "bad_message"),
        (r#"{not json"#, "bad_json"),
        (r#""#, "bad_json"),
        (r#"{"type":"subscribe","channel":"x""#, "bad_json"),
    ];
    for (text, code) in cases {
        c.send_text(text).await;
        let err = c.next_reply().await;
        assert_eq!(err["type"], "hub:error", "{text}: {err}");
        assert_eq!(err["code"], code, "{text}: {err}");
    }
    c.send_json(json!({"type": "ping"})).await;
    let pong = c.next_reply().await;
    assert_eq!(pong["type"], "hub:pong");
    assert!(pong["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{pong}");
    assert_eq!(c.subscribe("news").await["type"], "hub:subscribed");
    hub.stop().await;
}

#[tokio::test]
async fn a_rejected_request_leaves_other_clients_unaffected() {
    let hub = jwt_hub(&[]).await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    let mut bob = connect_as(&hub, "bob", &[]).await;
    assert_eq!(bob.subscribe("news").await["type"], "hub:subscribed");
    alice.send_text("{garbage").await;
    alice.subscribe("user:bob").await;
    alice.subscribe("bad name").await;
    let (_, answer) = hub.notify(json!({"type": "t", "channel": "news", "user": "bob"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(bob.next_event().await["type"], "t");
    alice.assert_no_event().await;
    bob.assert_alive().await;
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Namespaces (--config): client publish, presence, role-restricted subscribe
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_publish_reaches_other_subscribers_with_the_senders_user_and_not_the_sender() {
    let hub = namespaced_hub("publish").await;
    let mut alice = connect_as(&hub, "alice", &["customer"]).await;
    let mut bob = connect_as(&hub, "bob", &["customer"]).await;
    let mut carol = connect_as(&hub, "carol", &["customer"]).await;
    let mut outsider = connect_as(&hub, "olga", &["customer"]).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.subscribe("chat:room1").await["type"], "hub:subscribed");
    }
    alice
        .send_json(json!({"type": "publish", "channel": "chat:room1", "event": "chat_message", "message": "hola", "data": {"text": "hi"}}))
        .await;
    // Skip the presence events of bob and carol joining; the next control frame answers the publish.
    let ok = loop {
        let v = alice.next_reply().await;
        if v["type"] != "hub:join" {
            break v;
        }
    };
    assert_eq!(ok["type"], "hub:published", "{ok}");
    assert_eq!(ok["channel"], "chat:room1");
    let id = ok["id"].as_str().expect("id").to_string();
    let metrics = reqwest::get(hub.url("/metrics")).await.expect("GET /metrics").text().await.expect("text");
    assert!(metrics.contains("wshub_events_published_total{namespace=\"chat\"} 1"), "client publishes are counted");
    for c in [&mut bob, &mut carol] {
        let ev = c.next_event().await;
        assert_eq!(ev["id"], id.as_str());
        assert_eq!(ev["type"], "chat_message");
        assert_eq!(ev["message"], "hola");
        assert_eq!(ev["data"], json!({"text": "hi"}));
        assert_eq!(ev["channel"], "chat:room1");
        assert_eq!(ev["from"], "alice", "the server sets from");
    }
    let marker_id = marker(&hub).await;
    expect_then_marker(&mut alice, "sender", None, &marker_id).await;
    expect_then_marker(&mut outsider, "not subscribed", None, &marker_id).await;
    hub.stop().await;
}

#[tokio::test]
async fn a_client_cannot_set_from_on_its_publish() {
    let hub = namespaced_hub("from").await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    let mut bob = connect_as(&hub, "bob", &[]).await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.subscribe("chat:room1").await["type"], "hub:subscribed");
    }
    alice.send_json(json!({"type": "publish", "channel": "chat:room1", "event": "m", "from": "bob"})).await;
    let err = alice.next_of("hub:error").await;
    assert_eq!((err["type"].as_str(), err["code"].as_str()), (Some("hub:error"), Some("bad_message")), "{err}");
    bob.assert_no_event().await;
    alice.send_json(json!({"type": "publish", "channel": "chat:room1", "event": "m"})).await;
    assert_eq!(alice.next_of("hub:published").await["channel"], "chat:room1");
    assert_eq!(bob.next_event().await["from"], "alice");
    hub.stop().await;
}

#[tokio::test]
async fn publish_where_the_namespace_does_not_allow_it_is_publish_forbidden() {
    let hub = namespaced_hub("nopublish").await;
    let mut staff = connect_as(&hub, "sam", &["staff"]).await;
    let mut listener = connect_as(&hub, "lia", &["staff"]).await;
    for channel in ["news", "staff:ops"] {
        assert_eq!(listener.subscribe(channel).await["type"], "hub:subscribed");
        assert_eq!(staff.subscribe(channel).await["type"], "hub:subscribed");
    }
    for channel in ["news", "staff:ops", "user:sam", "role:staff", "broadcast", "user:lia"] {
        staff.send_json(json!({"type": "publish", "channel": channel, "event": "x"})).await;
        let err = staff.next_reply().await;
        assert_eq!(err["type"], "hub:error", "{channel}: {err}");
        assert_eq!(err["code"], "publish_forbidden", "{channel}: {err}");
        assert_eq!(err["channel"], channel);
    }
    listener.assert_no_event().await;
    staff.assert_alive().await;
    hub.stop().await;
}

#[tokio::test]
async fn publish_is_forbidden_without_a_config_file() {
    let hub = jwt_hub(&[]).await;
    let mut c = connect_as(&hub, "alice", &[]).await;
    assert_eq!(c.subscribe("chat:room1").await["type"], "hub:subscribed");
    c.send_json(json!({"type": "publish", "channel": "chat:room1", "event": "x"})).await;
    assert_eq!(c.next_reply().await["code"], "publish_forbidden");
    hub.stop().await;
}

#[tokio::test]
async fn client_publish_with_a_hub_type_is_refused() {
    let hub = namespaced_hub("hubtype").await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    let mut bob = connect_as(&hub, "bob", &[]).await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.subscribe("chat:room1").await["type"], "hub:subscribed");
    }
    for event in ["hub:join", ""] {
        alice.send_json(json!({"type": "publish", "channel": "chat:room1", "event": event})).await;
        assert_eq!(alice.next_of("hub:error").await["code"], "bad_message", "event {event:?}");
    }
    bob.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn roles_namespace_admits_only_the_listed_roles() {
    let hub = namespaced_hub("roles").await;
    let mut staff = connect_as(&hub, "sam", &["customer", "staff"]).await;
    let mut customer = connect_as(&hub, "alice", &["customer"]).await;
    let mut anon = hub.client().await;
    assert_eq!(staff.subscribe("staff:ops").await["type"], "hub:subscribed");
    assert_subscribe_refused(&mut customer, "staff:ops", "forbidden").await;
    assert_subscribe_refused(&mut anon, "staff:ops", "forbidden").await;
    let (_, answer) = hub.notify(json!({"type": "shift", "channel": "staff:ops"})).await;
    assert_eq!(answer["recipients"], 1);
    assert_eq!(staff.next_event().await["type"], "shift");
    customer.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn presence_namespace_sends_join_and_leave_once_per_user() {
    let hub = namespaced_hub("presence").await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    let mut bob1 = connect_as(&hub, "bob", &[]).await;
    let mut bob2 = connect_as(&hub, "bob", &[]).await;
    assert_eq!(alice.subscribe("chat:room").await["type"], "hub:subscribed");
    assert_eq!(bob1.subscribe("chat:room").await["type"], "hub:subscribed");
    let join = alice.next_json().await;
    assert_eq!(join, json!({"type": "hub:join", "channel": "chat:room", "user": "bob"}));

    // Bob's second tab: bob is already present, so no new join for anyone.
    assert_eq!(bob2.subscribe("chat:room").await["type"], "hub:subscribed");
    let (_, answer) = hub.notify(json!({"type": "probe", "channel": "chat:room"})).await;
    assert_eq!(answer["recipients"], 3);
    for (who, c) in [("alice", &mut alice), ("bob1", &mut bob1)] {
        let next = c.next_json().await;
        assert_eq!(next["type"], "probe", "{who} got an extra frame before the probe: {next}");
    }
    assert_eq!(bob2.next_event().await["type"], "probe");

    // One of bob's tabs leaves: bob is still present, so no leave.
    drop(bob2);
    let presence_url = hub.url("/channels/chat:room/presence");
    wait_for(&presence_url, |p| {
        p["users"] == json!([{"user": "alice", "connections": 1}, {"user": "bob", "connections": 1}])
    })
    .await;
    hub.notify(json!({"type": "probe2", "channel": "chat:room"})).await;
    assert_eq!(alice.next_json().await["type"], "probe2", "no hub:leave while bob has a tab");

    // Bob's last tab unsubscribes: alice gets hub:leave.
    bob1.send_json(json!({"type": "unsubscribe", "channel": "chat:room"})).await;
    assert_eq!(bob1.next_of("hub:unsubscribed").await["channel"], "chat:room");
    let leave = alice.next_json().await;
    assert_eq!(leave, json!({"type": "hub:leave", "channel": "chat:room", "user": "bob"}));

    // Bob comes back and then disconnects: join, then leave on disconnect.
    assert_eq!(bob1.subscribe("chat:room").await["type"], "hub:subscribed");
    assert_eq!(alice.next_json().await["type"], "hub:join");
    drop(bob1);
    let leave = alice.next_json().await;
    assert_eq!(leave, json!({"type": "hub:leave", "channel": "chat:room", "user": "bob"}));
    hub.stop().await;
}

#[tokio::test]
async fn channels_without_presence_send_no_join_or_leave() {
    let hub = namespaced_hub("nopresence").await;
    let mut alice = connect_as(&hub, "alice", &["staff"]).await;
    let mut bob = connect_as(&hub, "bob", &["staff"]).await;
    for channel in ["news", "staff:ops"] {
        assert_eq!(alice.subscribe(channel).await["type"], "hub:subscribed");
        assert_eq!(bob.subscribe(channel).await["type"], "hub:subscribed");
    }
    hub.notify(json!({"type": "probe", "channel": "news"})).await;
    assert_eq!(alice.next_json().await["type"], "probe", "no hub:join on a plain channel");
    hub.stop().await;
}

#[tokio::test]
async fn anonymous_subscribers_do_not_cause_presence_events() {
    let hub = namespaced_hub("anonpresence").await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    let mut anon = hub.client().await;
    assert_eq!(alice.subscribe("chat:room").await["type"], "hub:subscribed");
    assert_eq!(anon.subscribe("chat:room").await["type"], "hub:subscribed");
    hub.notify(json!({"type": "probe", "channel": "chat:room"})).await;
    assert_eq!(alice.next_json().await["type"], "probe");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Admin endpoints: channels, presence, clients, disconnect
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn get_channels_lists_streams_with_subscriber_counts() {
    let hub = jwt_hub(&[]).await;
    let mut a1 = connect_as(&hub, "alice", &["customer"]).await;
    let _a2 = connect_as(&hub, "alice", &["customer"]).await;
    let mut b = connect_as(&hub, "bob", &["provider"]).await;
    let _anon = hub.client().await;
    assert_eq!(a1.subscribe("service:12").await["type"], "hub:subscribed");
    assert_eq!(b.subscribe("service:12").await["type"], "hub:subscribed");
    let (status, body) = get_json(&hub.url("/channels"), &[]).await;
    assert_eq!(status, 200, "{body}");
    let counts: std::collections::HashMap<String, u64> = body["channels"]
        .as_array()
        .expect("channels array")
        .iter()
        .map(|r| (r["channel"].as_str().expect("name").to_string(), r["subscribers"].as_u64().expect("n")))
        .collect();
    let expected: std::collections::HashMap<String, u64> = [
        ("broadcast", 4),
        ("user:alice", 2),
        ("role:customer", 2),
        ("service:12", 2),
        ("user:bob", 1),
        ("role:provider", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, expected);
    hub.stop().await;
}

#[tokio::test]
async fn presence_endpoint_lists_users_with_connection_counts_and_anonymous() {
    let hub = jwt_hub(&[]).await;
    let mut cs = [
        connect_as(&hub, "alice", &[]).await,
        connect_as(&hub, "alice", &[]).await,
        connect_as(&hub, "bob", &[]).await,
        hub.client().await,
        connect_as(&hub, "carol", &[]).await,
    ];
    for c in cs.iter_mut().take(4) {
        assert_eq!(c.subscribe("service:1").await["type"], "hub:subscribed");
    }
    let (status, body) = get_json(&hub.url("/channels/service:1/presence"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"channel": "service:1", "users": [{"user": "alice", "connections": 2}, {"user": "bob", "connections": 1}], "anonymous": 1})
    );
    let (_, body) = get_json(&hub.url("/channels/user:alice/presence"), &[]).await;
    assert_eq!(body["users"], json!([{"user": "alice", "connections": 2}]));
    let (_, body) = get_json(&hub.url("/channels/nobody-here/presence"), &[]).await;
    assert_eq!(body["users"], json!([]));
    assert_eq!(body["anonymous"], 0);
    let (status, body) = get_json(&hub.url("/channels/bad%20name/presence"), &[]).await;
    assert_eq!(status, 400, "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn get_clients_lists_connections_with_details_and_paginates() {
    let hub = jwt_hub(&[]).await;
    let mut cs = [
        connect_as(&hub, "alice", &["customer"]).await,
        connect_as(&hub, "bob", &["provider", "staff"]).await,
        hub.client().await,
        connect_as(&hub, "carol", &[]).await,
        connect_as(&hub, "dave", &[]).await,
    ];
    assert_eq!(cs[0].subscribe("service:12").await["type"], "hub:subscribed");
    let ids: Vec<String> = cs.iter().map(|c| c.hello["client_id"].as_str().expect("id").to_string()).collect();

    let (status, all) = get_json(&hub.url("/clients"), &[]).await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total"], 5);
    let rows = all["clients"].as_array().expect("clients");
    assert_eq!(rows.len(), 5);
    let alice = rows.iter().find(|r| r["client_id"] == ids[0].as_str()).expect("alice row");
    assert_eq!(alice["user"], "alice");
    assert_eq!(alice["roles"], json!(["customer"]));
    assert_eq!(alice["channels"], json!(["service:12"]));
    assert!(alice["remote"].as_str().is_some_and(|r| r.starts_with("127.0.0.1:")), "{alice}");
    let now_ms = unix_now() as u64 * 1000;
    for key in ["connected_at_ms", "last_activity_ms"] {
        let t = alice[key].as_u64().expect(key);
        assert!(t <= now_ms + 2000 && t + 60_000 >= now_ms, "{key} = {t}");
    }
    let bob = rows.iter().find(|r| r["client_id"] == ids[1].as_str()).expect("bob row");
    assert_eq!(bob["roles"], json!(["provider", "staff"]));
    let anon = rows.iter().find(|r| r["client_id"] == ids[2].as_str()).expect("anonymous row");
    assert_eq!(anon["user"], Value::Null);

    let mut paged = Vec::new();
    for (offset, want) in [(0, 2), (2, 2), (4, 1), (5, 0)] {
        let (status, page) = get_json(&hub.url(&format!("/clients?offset={offset}&limit=2")), &[]).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["total"], 5);
        assert_eq!(page["offset"], offset);
        assert_eq!(page["limit"], 2);
        let rows = page["clients"].as_array().expect("clients");
        assert_eq!(rows.len(), want, "offset {offset}");
        paged.extend(rows.iter().map(|r| r["client_id"].as_str().expect("id").to_string()));
    }
    let mut sorted = paged.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5, "pages do not overlap: {paged:?}");
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(sorted, expected);
    let (status, _) = get_json(&hub.url("/clients?limit=lots"), &[]).await;
    assert_eq!(status, 400);
    hub.stop().await;
}

#[tokio::test]
async fn admin_disconnect_by_client_id_closes_that_connection_with_4004() {
    let hub = jwt_hub(&[]).await;
    let mut a1 = connect_as(&hub, "alice", &[]).await;
    let mut a2 = connect_as(&hub, "alice", &[]).await;
    let mut bob = connect_as(&hub, "bob", &[]).await;
    let id = a1.hello["client_id"].as_str().expect("id").to_string();
    let (status, body) = post_json(&hub.url("/admin/disconnect"), &json!({"client_id": id}), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], 1);
    assert_eq!(a1.ended().await, Ended::Closed(4004));
    a2.assert_alive().await;
    bob.assert_alive().await;
    let (_, body) = post_json(&hub.url("/admin/disconnect"), &json!({"client_id": id}), &[]).await;
    assert_eq!(body["disconnected"], 0, "already gone");
    let (_, body) = post_json(&hub.url("/admin/disconnect"), &json!({"client_id": "nonsense"}), &[]).await;
    assert_eq!(body["disconnected"], 0);
    hub.stop().await;
}

#[tokio::test]
async fn admin_disconnect_by_user_closes_all_their_connections_with_4004() {
    let hub = jwt_hub(&[]).await;
    let mut b1 = connect_as(&hub, "bob", &[]).await;
    let mut b2 = connect_as(&hub, "bob", &[]).await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    let mut anon = hub.client().await;
    let (status, body) = post_json(&hub.url("/admin/disconnect"), &json!({"user": "bob"}), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["disconnected"], 2);
    assert_eq!(b1.ended().await, Ended::Closed(4004));
    assert_eq!(b2.ended().await, Ended::Closed(4004));
    alice.assert_alive().await;
    anon.assert_alive().await;
    let (_, answer) = hub.notify(json!({"type": "t", "user": "bob"})).await;
    assert_eq!(answer["recipients"], 0);
    let (status, body) = post_json(&hub.url("/admin/disconnect"), &json!({}), &[]).await;
    assert_eq!(status, 400, "{body}");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Publisher authentication (API key / loopback)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_an_api_key_notify_requires_bearer_or_x_api_key() {
    let hub = TestHub::start(&["--api-key", "k3y"]).await;
    let mut c = hub.client().await;
    let url = hub.url("/notify");
    let body = json!({"type": "t"});
    for headers in
        [vec![], vec![("authorization", "Bearer wrong")], vec![("x-api-key", "k3")], vec![("authorization", "k3y")]]
    {
        let (status, answer) = post_json(&url, &body, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {answer}");
        assert!(answer["error"].as_str().is_some_and(|e| e.contains("API key")), "{answer}");
    }
    c.assert_no_event().await;
    let (status, answer) = post_json(&url, &body, &[("authorization", "Bearer k3y")]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(c.next_event().await["id"], answer["id"]);
    let (status, answer) = post_json(&url, &body, &[("x-api-key", "k3y")]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(c.next_event().await["id"], answer["id"]);
    hub.stop().await;
}

#[tokio::test]
async fn with_an_api_key_admin_and_compat_endpoints_require_it() {
    let hub = TestHub::start(&["--api-key", "k3y"]).await;
    for path in ["/clients", "/channels", "/channels/x/presence", "/stats"] {
        let (status, body) = get_json(&hub.url(path), &[]).await;
        assert_eq!(status, 401, "GET {path}: {body}");
        let (status, body) = get_json(&hub.url(path), &[("x-api-key", "k3y")]).await;
        assert_eq!(status, 200, "GET {path} with key: {body}");
    }
    let posts = [
        ("/admin/disconnect", json!({"user": "x"})),
        ("/api/dashboard/emit-event", json!({"type": "t"})),
        ("/api/dashboard/notify-role", json!({"role": "admin", "event": "t"})),
        ("/api/dashboard/notify-user", json!({"userId": "1", "event": "t"})),
        ("/api/dashboard/update-dashboard", json!({"x": 1})),
    ];
    for (path, body) in &posts {
        let (status, answer) = post_json(&hub.url(path), body, &[]).await;
        assert_eq!(status, 401, "POST {path}: {answer}");
        let (status, answer) = post_json(&hub.url(path), &json!("not an object"), &[]).await;
        assert_eq!(status, 401, "POST {path} with a bad body and no key is still 401: {answer}");
        let (status, answer) = post_json(&hub.url(path), body, &[("authorization", "Bearer k3y")]).await;
        assert!(status == 200 || status == 202, "POST {path} with key: {status} {answer}");
    }
    hub.stop().await;
}

#[tokio::test]
async fn without_an_api_key_loopback_publishers_and_admins_are_accepted() {
    let hub = TestHub::start(&[]).await;
    let (status, body) = hub.notify(json!({"type": "t"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_json(&hub.url("/clients"), &[]).await;
    assert_eq!(status, 200, "{body}");
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Compatibility routes (NestJS gateway)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn compat_emit_event_broadcasts_and_answers_202() {
    let hub = jwt_hub(&[]).await;
    let mut alice = connect_as(&hub, "alice", &["customer"]).await;
    let mut anon = hub.client().await;
    let (status, answer) = post_json(
        &hub.url("/api/dashboard/emit-event"),
        &json!({"type": "stats_changed", "data": {"n": 3}, "timestamp": "2026-01-01T00:00:00Z"}),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["recipients"], 2);
    for c in [&mut alice, &mut anon] {
        let ev = c.next_event().await;
        assert_eq!(ev["id"], answer["id"]);
        assert_eq!(ev["type"], "stats_changed");
        assert_eq!(ev["data"], json!({"n": 3}));
        assert_eq!(ev["channel"], "broadcast");
    }
    let (status, answer) = post_json(&hub.url("/api/dashboard/emit-event"), &json!({"data": {}}), &[]).await;
    assert_eq!(status, 400, "type is required: {answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("type")), "{answer}");
    hub.stop().await;
}

#[tokio::test]
async fn compat_notify_role_reaches_only_that_role() {
    let hub = jwt_hub(&[]).await;
    let mut admin = connect_as(&hub, "root", &["admin"]).await;
    let mut customer = connect_as(&hub, "alice", &["customer"]).await;
    let (status, answer) = post_json(
        &hub.url("/api/dashboard/notify-role"),
        &json!({"role": "admin", "event": "new_booking", "payload": {"id": 9}}),
        &[],
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["recipients"], 1);
    let ev = admin.next_event().await;
    assert_eq!((ev["type"].as_str(), ev["channel"].as_str()), (Some("new_booking"), Some("role:admin")));
    assert_eq!(ev["data"], json!({"id": 9}));
    customer.assert_no_event().await;
    let (status, _) = post_json(&hub.url("/api/dashboard/notify-role"), &json!({"event": "x"}), &[]).await;
    assert_eq!(status, 400, "role is required");
    hub.stop().await;
}

#[tokio::test]
async fn compat_notify_user_reaches_only_that_user_with_string_or_number_ids() {
    let hub = jwt_hub(&[]).await;
    let mut u42 = hub.client_at(&format!("/ws?token={}", token_with(SECRET, json!({"sub": 42}), 3600))).await;
    let mut alice = connect_as(&hub, "alice", &[]).await;
    for user_id in [json!(42), json!("42")] {
        let (status, answer) = post_json(
            &hub.url("/api/dashboard/notify-user"),
            &json!({"userId": user_id, "event": "booking_confirmed", "payload": {"ok": true}}),
            &[],
        )
        .await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(answer["recipients"], 1);
        let ev = u42.next_event().await;
        assert_eq!((ev["type"].as_str(), ev["channel"].as_str()), (Some("booking_confirmed"), Some("user:42")));
        assert_eq!(ev["data"], json!({"ok": true}));
    }
    alice.assert_no_event().await;
    let (status, _) = post_json(&hub.url("/api/dashboard/notify-user"), &json!({"userId": "42"}), &[]).await;
    assert_eq!(status, 400, "event is required");
    hub.stop().await;
}

#[tokio::test]
async fn compat_update_dashboard_reaches_dashboard_subscribers_only() {
    let hub = jwt_hub(&[]).await;
    let mut watcher = connect_as(&hub, "alice", &[]).await;
    let mut other = connect_as(&hub, "bob", &[]).await;
    assert_eq!(watcher.subscribe("dashboard").await["type"], "hub:subscribed");
    let (status, answer) =
        post_json(&hub.url("/api/dashboard/update-dashboard"), &json!({"bookings": 12, "revenue": 300}), &[]).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["recipients"], 1);
    let ev = watcher.next_event().await;
    assert_eq!(ev["channel"], "dashboard");
    assert_eq!(ev["type"], "dashboard_update");
    assert_eq!(ev["data"], json!({"bookings": 12, "revenue": 300}));
    let (status, _) =
        post_json(&hub.url("/api/dashboard/update-dashboard"), &json!({"event": "kpi", "payload": {"k": 1}}), &[])
            .await;
    assert_eq!(status, 202);
    let ev = watcher.next_event().await;
    assert_eq!((ev["type"].as_str(), ev["data"].clone()), (Some("kpi"), json!({"k": 1})));
    other.assert_no_event().await;
    hub.stop().await;
}

#[tokio::test]
async fn compat_routes_reject_non_json_and_non_objects() {
    let hub = TestHub::start(&[]).await;
    let (status, body) = post_json(&hub.url("/api/dashboard/emit-event"), &json!([1, 2]), &[]).await;
    assert_eq!(status, 400, "{body}");
    let resp = reqwest::Client::new()
        .post(hub.url("/api/dashboard/emit-event"))
        .header("content-type", "text/plain")
        .body(r#"{"type":"t"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 415);
    hub.stop().await;
}

#[tokio::test]
async fn api_health_answers_ok_with_the_health_body() {
    let hub = TestHub::start(&[]).await;
    let _c = hub.client().await;
    let (status, body) = get_json(&hub.url("/api/health"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["connections"], 1);
    hub.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Development token endpoint and configuration errors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn dev_mode_mints_a_token_that_connects_as_that_user() {
    let hub = jwt_hub(&["--dev"]).await;
    let (status, body) = post_json(
        &hub.url("/dev/token"),
        &json!({"sub": "tester", "role": "admin", "channels": ["private:lab-*"], "ttl_s": 600}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let t = body["token"].as_str().expect("token");
    assert!(body["exp"].as_i64().is_some_and(|e| (e - unix_now() - 600).abs() <= 2), "{body}");
    let mut c = hub.client_at(&format!("/ws?token={t}")).await;
    assert_eq!(c.hello["user"], "tester");
    assert_eq!(c.hello["role"], "admin");
    assert_eq!(c.subscribe("private:lab-1").await["type"], "hub:subscribed");
    let (_, body) = post_json(&hub.url("/dev/token"), &json!({"sub": 5}), &[]).await;
    let c = hub.client_at(&format!("/ws?token={}", body["token"].as_str().expect("token"))).await;
    assert_eq!(c.hello["user"], "5");
    hub.stop().await;
}

#[tokio::test]
async fn dev_token_is_404_without_dev_mode() {
    let hub = jwt_hub(&[]).await;
    let (status, body) = post_json(&hub.url("/dev/token"), &json!({"sub": "tester"}), &[]).await;
    assert_eq!(status, 404, "{body}");
    hub.stop().await;
}

#[tokio::test]
async fn a_config_file_with_an_unknown_key_stops_startup_naming_the_file_and_key() {
    let path = namespace_file("badkey", "[[namespace]]\nprefix = \"chat:\"\npublsh = true\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("run wshub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().expect("path")), "names the file: {err}");
    assert!(err.contains("publsh"), "names the key: {err}");

    let missing = std::env::temp_dir().join("wshub-no-such-file.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--addr", "127.0.0.1:0", "--config"])
        .arg(&missing)
        .output()
        .expect("run wshub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wshub-no-such-file.toml"), "names the missing file: {err}");
}

#[tokio::test]
async fn a_roles_namespace_without_roles_stops_startup() {
    let path = namespace_file("noroles", "[[namespace]]\nprefix = \"staff:\"\nsubscribe = \"roles\"\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--addr", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("run wshub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(path.to_str().expect("path")) && err.contains("roles"), "{err}");
}

#[tokio::test]
async fn require_auth_without_a_jwt_key_stops_startup() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wshub"))
        .args(["--addr", "127.0.0.1:0", "--require-auth"])
        .output()
        .expect("run wshub");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-secret"));
}

#[tokio::test]
async fn a_refreshed_token_that_no_longer_allows_a_channel_leaves_it() {
    let hub = TestHub::start(&["--jwt-secret", "s"]).await;
    let first = token_with("s", json!({"sub": "alice", "channels": ["private:x"]}), 3600);
    let mut c = hub.client_at(&format!("/ws?token={first}")).await;
    assert_eq!(c.subscribe("private:x").await["type"], "hub:subscribed");
    let refreshed = token_with("s", json!({"sub": "alice"}), 3600);
    c.send_json(json!({"type": "auth", "token": refreshed})).await;
    assert_eq!(c.next_of("hub:authenticated").await["user"], "alice");
    assert_eq!(c.next_of("hub:unsubscribed").await["channel"], "private:x");
    hub.notify(json!({"type": "p", "channel": "private:x"})).await;
    c.assert_no_event().await;
    hub.stop().await;
}

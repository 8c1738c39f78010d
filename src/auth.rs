//! Identity and permissions: JWT verification for clients, the API-key/loopback rule for
//! publishers and admin endpoints, and the subscribe permission rules.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::namespace::{Namespaces, SubscribeRule};
use crate::protocol::{BROADCAST, ChannelNameError, validate_channel};

/// Seconds of clock skew tolerated on `exp`.
pub const EXP_LEEWAY_S: u64 = 30;

/// Who a connection is: anonymous, or the claims of a verified token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`, as a string.
    pub user: Option<String>,
    /// Roles from `role` and `roles`.
    pub roles: Vec<String>,
    /// Extra channel patterns from the `channels` claim.
    pub channels: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: Option<u64>,
    /// An operator connection (`/ws?api_key=`): may subscribe `admin:*` channels such as the
    /// dashboard's live stats.
    pub operator: bool,
}

/// The identity every anonymous connection shares, so they allocate none.
static ANONYMOUS: LazyLock<Arc<Identity>> = LazyLock::new(|| Arc::new(Identity::default()));

impl Identity {
    /// This identity behind an `Arc`; anonymous ones share one allocation.
    pub fn shared(self) -> Arc<Self> {
        if self == Self::default() { Arc::clone(&ANONYMOUS) } else { Arc::new(self) }
    }

    /// The automatic streams of this identity: `broadcast`, `user:{sub}`, `role:{r}`.
    pub fn auto_streams(&self) -> Vec<String> {
        let mut streams = vec![BROADCAST.to_string()];
        streams.extend(self.user.iter().map(|u| format!("user:{u}")));
        streams.extend(self.roles.iter().map(|r| format!("role:{r}")));
        streams
    }

    /// The first role, reported as `role` in `hub:connected`.
    pub fn role(&self) -> Option<&str> {
        self.roles.first().map(String::as_str)
    }

    /// True for a connection with a verified token.
    pub fn is_authenticated(&self) -> bool {
        self.user.is_some()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No JWT key is configured, so tokens cannot be checked.
    #[error("this hub has no JWT key configured")]
    NotConfigured,
    /// The token is past its `exp`.
    #[error("token expired")]
    Expired,
    /// Signature, algorithm, format or claims are wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// The key file could not be used.
    #[error("JWT public key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    S(String),
    N(serde_json::Number),
}

#[derive(Deserialize)]
struct Claims {
    sub: StringOrNumber,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    channels: Vec<String>,
    exp: u64,
}

/// Verifies client JWTs with the configured key.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// An HS256 verifier.
    pub fn hs256(secret: &str) -> Self {
        Self::new(DecodingKey::from_secret(secret.as_bytes()), Algorithm::HS256)
    }

    /// An RS256 or ES256 verifier from a PEM public key file.
    pub fn from_pem_file(path: &Path) -> Result<Self, AuthError> {
        let key_err = |message: String| AuthError::Key { path: path.display().to_string(), message };
        let pem = std::fs::read(path).map_err(|e| key_err(e.to_string()))?;
        if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
            return Ok(Self::new(key, Algorithm::RS256));
        }
        DecodingKey::from_ec_pem(&pem)
            .map(|key| Self::new(key, Algorithm::ES256))
            .map_err(|e| key_err(format!("not an RSA or EC public key in PEM form: {e}")))
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = EXP_LEEWAY_S;
        validation.validate_aud = false;
        // `sub` is required by `Claims` itself: the library's own `sub` check only accepts strings,
        // and a numeric `sub` (Django, FastAPI user ids) must be accepted.
        validation.set_required_spec_claims(&["exp"]);
        Self { key, validation }
    }

    /// Checks a token and returns the identity it proves.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
        // A float or a number beyond 64 bits would name a different stream than the same id
        // given to `/notify` (`1e2` is not `100`), so only integers are taken as numbers.
        let user = match c.sub {
            StringOrNumber::S(s) => s,
            StringOrNumber::N(n) if n.is_u64() || n.is_i64() => n.to_string(),
            StringOrNumber::N(n) => {
                return Err(AuthError::Invalid(format!("sub {n} is not an integer: use a string or a whole number")));
            }
        };
        if user.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        if let Err(e) = crate::protocol::validate_channel(&format!("user:{user}")) {
            return Err(AuthError::Invalid(format!("sub cannot name a user stream: {e}")));
        }
        let mut roles: Vec<String> = Vec::new();
        for role in c.role.into_iter().chain(c.roles) {
            if !role.is_empty() && !roles.contains(&role) {
                roles.push(role);
            }
        }
        Ok(Identity { user: Some(user), roles, channels: c.channels, exp: Some(c.exp), operator: false })
    }
}

/// Why a subscribe is refused; the text goes to the client in `hub:error`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    /// Invalid name.
    #[error("{0}")]
    BadName(#[from] ChannelNameError),
    /// A reserved name that cannot be subscribed.
    #[error("channel {0:?} is reserved")]
    Reserved(String),
    /// The rules do not allow this connection.
    #[error("not allowed to subscribe to {0:?}")]
    Forbidden(String),
}

impl SubscribeError {
    /// The `hub:error` code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName(_) => "bad_channel",
            Self::Reserved(_) | Self::Forbidden(_) => "forbidden",
        }
    }
}

/// Decides whether `who` may subscribe to `channel` (see docs/PROTOCOL.md, permissions).
pub fn may_subscribe(who: &Identity, channel: &str, namespaces: &Namespaces) -> Result<(), SubscribeError> {
    validate_channel(channel)?;
    let forbidden = || SubscribeError::Forbidden(channel.to_string());
    if channel == BROADCAST || channel.starts_with("hub:") {
        return Err(SubscribeError::Reserved(channel.to_string()));
    }
    if claim_allows(who, channel) {
        return Ok(());
    }
    if let Some(user) = channel.strip_prefix("user:") {
        return if who.user.as_deref() == Some(user) { Ok(()) } else { Err(forbidden()) };
    }
    if let Some(role) = channel.strip_prefix("role:") {
        return if who.roles.iter().any(|r| r == role) { Ok(()) } else { Err(forbidden()) };
    }
    if channel.starts_with("private:") {
        return Err(forbidden());
    }
    if channel.starts_with("admin:") {
        return if who.operator || who.roles.iter().any(|r| r == "admin") { Ok(()) } else { Err(forbidden()) };
    }
    let allowed = match namespaces.find(channel) {
        None => true,
        Some(ns) => match ns.subscribe {
            SubscribeRule::Any => true,
            SubscribeRule::Authenticated => who.is_authenticated(),
            SubscribeRule::Roles => who.roles.iter().any(|r| ns.roles.contains(r)),
            SubscribeRule::Claim => false,
        },
    };
    if allowed { Ok(()) } else { Err(forbidden()) }
}

/// True when the token's `channels` claim has a pattern matching `channel`.
fn claim_allows(who: &Identity, channel: &str) -> bool {
    who.channels.iter().any(|p| glob_match(p, channel))
}

/// Matches `*` as any run of characters; everything else literally.
fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(i) => remaining = &remaining[i + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Why a publisher or admin request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeyError {
    /// A key is configured and the request did not present it.
    #[error("missing or wrong API key: send Authorization: Bearer <key> or X-API-Key")]
    Unauthorized,
    /// No key is configured and the request is not from loopback.
    #[error(
        "no API key is configured, so only loopback clients may publish or administer; start wshub with --api-key (or WSHUB_API_KEY) to allow remote publishers"
    )]
    NotLoopback,
}

/// Decides whether a connection that presented an API key (`?api_key=` or an `auth` frame with
/// `api_key`) is an operator connection: only with the configured key (compared in constant time)
/// and only from a trusted origin (see `http::origin`). Without a configured key there are no
/// operator connections: loopback alone proves nothing, since any web page on this machine can
/// open a WebSocket to it.
pub fn check_operator(configured: Option<&str>, presented: &str, trusted_origin: bool) -> Result<(), AuthError> {
    let Some(key) = configured else {
        return Err(AuthError::Invalid(
            "operator connections need the hub's API key, and this hub has none: start it with --api-key".into(),
        ));
    };
    if !trusted_origin {
        return Err(AuthError::Invalid(
            "operator connections are accepted only from the hub's own pages or --allowed-origins".into(),
        ));
    }
    if constant_time_eq(key.as_bytes(), presented.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Invalid("wrong api_key".into()))
    }
}

/// Applies the publisher rule: the configured key (compared in constant time), else loopback only.
pub fn check_api_key(configured: Option<&str>, presented: Option<&str>, peer: SocketAddr) -> Result<(), ApiKeyError> {
    match configured {
        Some(key) => match presented {
            Some(p) if constant_time_eq(key.as_bytes(), p.as_bytes()) => Ok(()),
            _ => Err(ApiKeyError::Unauthorized),
        },
        // Canonical form: on a dual-stack listener an IPv4 loopback peer is `::ffff:127.0.0.1`.
        None if peer.ip().to_canonical().is_loopback() => Ok(()),
        None => Err(ApiKeyError::NotLoopback),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(sub: &str, roles: &[&str]) -> Identity {
        Identity { user: Some(sub.into()), roles: roles.iter().map(|r| r.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn subscribe_rules() {
        let ns = Namespaces::default();
        let alice = user("alice", &["customer"]);
        assert!(may_subscribe(&alice, "user:alice", &ns).is_ok());
        assert!(may_subscribe(&alice, "user:bob", &ns).is_err());
        assert!(may_subscribe(&alice, "role:customer", &ns).is_ok());
        assert!(may_subscribe(&alice, "role:admin", &ns).is_err());
        assert!(may_subscribe(&alice, "private:x", &ns).is_err());
        assert!(may_subscribe(&alice, "service:12", &ns).is_ok());
        assert!(may_subscribe(&Identity::default(), "service:12", &ns).is_ok());
        assert_eq!(may_subscribe(&alice, "broadcast", &ns), Err(SubscribeError::Reserved("broadcast".into())));
        assert!(matches!(may_subscribe(&alice, "bad name", &ns), Err(SubscribeError::BadName(_))));
        let claimed = Identity { channels: vec!["private:team-*".into()], ..alice };
        assert!(may_subscribe(&claimed, "private:team-7", &ns).is_ok());
        assert!(may_subscribe(&claimed, "private:other", &ns).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("a*", "abc"));
        assert!(glob_match("*c", "abc"));
        assert!(glob_match("a*c*e", "abcde"));
        assert!(!glob_match("a*c", "ab"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("ab*b", "ab"));
    }

    #[test]
    fn api_key_rule() {
        let lo: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let remote: SocketAddr = "192.0.2.1:1".parse().expect("addr");
        assert_eq!(check_api_key(None, None, lo), Ok(()));
        assert_eq!(check_api_key(None, None, remote), Err(ApiKeyError::NotLoopback));
        assert_eq!(check_api_key(Some("k"), Some("k"), remote), Ok(()));
        assert_eq!(check_api_key(Some("k"), Some("x"), lo), Err(ApiKeyError::Unauthorized));
        assert_eq!(check_api_key(Some("k"), None, lo), Err(ApiKeyError::Unauthorized));
        assert_eq!(check_api_key(Some("k"), Some("kk"), remote), Err(ApiKeyError::Unauthorized));
        assert_eq!(check_api_key(Some("k"), None, remote), Err(ApiKeyError::Unauthorized));
    }

    #[test]
    fn without_a_key_only_loopback_peers_pass_in_every_address_form() {
        for peer in ["127.0.0.1:1", "127.1.2.3:1", "[::1]:1", "[::ffff:127.0.0.1]:1"] {
            let peer: SocketAddr = peer.parse().expect("addr");
            assert_eq!(check_api_key(None, None, peer), Ok(()), "{peer}");
        }
        for peer in ["192.0.2.1:1", "10.0.0.1:1", "[2001:db8::1]:1", "[::ffff:192.0.2.1]:1", "0.0.0.0:1"] {
            let peer: SocketAddr = peer.parse().expect("addr");
            assert_eq!(check_api_key(None, Some("anything"), peer), Err(ApiKeyError::NotLoopback), "{peer}");
        }
        assert!(ApiKeyError::NotLoopback.to_string().contains("--api-key"), "the 403 says how to set a key");
    }

    #[test]
    fn only_operators_and_admins_may_subscribe_admin_channels() {
        let ns = Namespaces::default();
        let operator = Identity { operator: true, ..Default::default() };
        let admin = user("root", &["admin"]);
        let customer = user("alice", &["customer"]);
        for channel in ["admin:dashboard", "admin:audit"] {
            assert!(may_subscribe(&operator, channel, &ns).is_ok(), "{channel}");
            assert!(may_subscribe(&admin, channel, &ns).is_ok(), "{channel}");
            assert_eq!(may_subscribe(&customer, channel, &ns), Err(SubscribeError::Forbidden(channel.into())));
            assert!(may_subscribe(&Identity::default(), channel, &ns).is_err(), "{channel}");
        }
        // Being an operator opens admin channels only, not other people's streams.
        assert!(may_subscribe(&operator, "user:alice", &ns).is_err());
        assert!(may_subscribe(&operator, "role:admin", &ns).is_err());
        assert!(may_subscribe(&operator, "private:x", &ns).is_err());
        let operator_customer = Identity { operator: true, ..customer };
        assert!(may_subscribe(&operator_customer, "admin:dashboard", &ns).is_ok());
    }

    #[test]
    fn operators_need_the_configured_key_and_a_trusted_origin() {
        assert!(check_operator(Some("k"), "k", true).is_ok());
        assert!(matches!(check_operator(Some("k"), "x", true), Err(AuthError::Invalid(_))));
        assert!(matches!(check_operator(Some("k"), "", true), Err(AuthError::Invalid(_))));
        assert!(matches!(check_operator(Some("k"), "kk", true), Err(AuthError::Invalid(_))));
        let foreign = check_operator(Some("k"), "k", false).expect_err("right key from a foreign page");
        assert!(foreign.to_string().contains("--allowed-origins"), "{foreign}");
        for presented in ["", "anything"] {
            let err = check_operator(None, presented, true).expect_err("no configured key, no operators");
            assert!(err.to_string().contains("--api-key"), "{err}");
        }
    }

    fn hs256(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"s");
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).expect("encode")
    }

    fn in_an_hour() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 3600
    }

    #[test]
    fn numeric_sub_is_accepted_as_a_string() {
        let v = Verifier::hs256("s");
        let id = v.verify(&hs256(serde_json::json!({"sub": 42, "exp": in_an_hour()}))).expect("valid");
        assert_eq!(id.user.as_deref(), Some("42"));
        assert!(matches!(v.verify(&hs256(serde_json::json!({"exp": in_an_hour()}))), Err(AuthError::Invalid(_))));
        assert!(matches!(
            v.verify(&hs256(serde_json::json!({"sub": true, "exp": in_an_hour()}))),
            Err(AuthError::Invalid(_))
        ));
        let id = v.verify(&hs256(serde_json::json!({"sub": -7, "exp": in_an_hour()}))).expect("valid");
        assert_eq!(id.user.as_deref(), Some("-7"));
    }

    #[test]
    fn a_sub_that_would_name_another_stream_than_notify_targets_is_refused() {
        let v = Verifier::hs256("s");
        // 1e2 would become user:100.0 while /notify {"user":100} targets user:100; a number beyond
        // 64 bits loses digits, so two users would share a stream.
        for sub in [serde_json::json!(1e2), serde_json::json!(-0.0), serde_json::json!(1.2345678901234568e29)] {
            let refused = v.verify(&hs256(serde_json::json!({"sub": sub, "exp": in_an_hour()})));
            assert!(
                matches!(&refused, Err(AuthError::Invalid(m)) if m.contains("not an integer")),
                "{sub}: {refused:?}"
            );
        }
        let spaced = v.verify(&hs256(serde_json::json!({"sub": "a b", "exp": in_an_hour()})));
        assert!(matches!(&spaced, Err(AuthError::Invalid(m)) if m.contains("user stream")), "{spaced:?}");
    }

    #[test]
    fn role_and_roles_merge_without_duplicates() {
        let v = Verifier::hs256("s");
        let t = hs256(
            serde_json::json!({"sub": "a", "role": "admin", "roles": ["staff", "admin", "", "staff"], "exp": in_an_hour()}),
        );
        assert_eq!(v.verify(&t).expect("valid").roles, ["admin", "staff"]);
    }
}

//! Fuzz target: JWT claims (`auth::Verifier::verify` and the connection's expiry timer,
//! `connection::expiry_deadline`). Tokens signed with the right key carry random claims: valid
//! ones are accepted with the documented identity, any accepted one can be timed without a
//! panic, and anything tampered with, unsigned or signed with another key is refused.

mod strategies;

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use proptest::prelude::*;
use serde_json::value::RawValue;
use strategies::{json_string, json_value, short_valid_name};
use wshub::auth::Verifier;
use wshub::connection::expiry_deadline;
use wshub::protocol::validate_channel;

const SECRET: &str = "fuzz-secret";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An `exp` claim: near now, far in the future, at the top of u64, or of the wrong type.
fn exp() -> impl Strategy<Value = Option<String>> {
    let now = now();
    prop::option::of(prop_oneof![
        4 => (now - 100..now + 100_000).prop_map(|n| n.to_string()),
        2 => (u64::MAX - 100..=u64::MAX).prop_map(|n| n.to_string()),
        2 => prop::sample::select(&["10000000000000000000", "1e19", "-1", "1.5", "\"123\"", "null"][..]).prop_map(str::to_string),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => json_value(),
    ])
}

/// A `sub` claim: a name, a number, an empty string or another type.
fn sub() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        4 => short_valid_name().prop_map(|s| format!("\"{s}\"")),
        2 => any::<u32>().prop_map(|n| n.to_string()),
        1 => json_string(),
        1 => Just("\"\"".to_string()),
        1 => json_value(),
    ])
}

/// A list of strings (or, sometimes, anything else).
fn strings() -> impl Strategy<Value = Option<String>> {
    let item = prop_oneof![4 => short_valid_name().prop_map(|s| format!("\"{s}\"")), 1 => Just("\"\"".to_string())];
    prop::option::of(prop_oneof![
        4 => prop::collection::vec(item, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
        1 => json_value(),
    ])
}

/// The claims object as JSON text, with each claim present or not.
fn claims() -> impl Strategy<Value = String> {
    let role = prop::option::of(prop_oneof![short_valid_name().prop_map(|s| format!("\"{s}\"")), json_value()]);
    (sub(), exp(), role, strings(), strings(), prop::option::of(json_value())).prop_map(
        |(sub, exp, role, roles, channels, extra)| {
            let fields =
                [("sub", sub), ("exp", exp), ("role", role), ("roles", roles), ("channels", channels), ("iat", extra)];
            let parts: Vec<String> =
                fields.into_iter().filter_map(|(k, v)| v.map(|v| format!("\"{k}\":{v}"))).collect();
            format!("{{{}}}", parts.join(","))
        },
    )
}

/// Signs the claims text exactly as written (a `RawValue` is serialized verbatim).
fn sign(claims: &str, secret: &str) -> Option<String> {
    let raw: Box<RawValue> = serde_json::from_str(claims).ok()?;
    jsonwebtoken::encode(&Header::default(), &raw, &EncodingKey::from_secret(secret.as_bytes())).ok()
}

/// True when the claims are valid by docs/PROTOCOL.md: a non-empty string `sub` that can name a
/// user stream, or an integer `sub`; an integer
/// `exp` not more than 30 s in the past, and string / string-array optional claims.
fn documented_valid(claims: &serde_json::Value) -> bool {
    let is_strings = |v: Option<&serde_json::Value>| {
        v.is_none_or(|v| v.as_array().is_some_and(|a| a.iter().all(serde_json::Value::is_string)))
    };
    let sub_ok = match claims.get("sub") {
        Some(serde_json::Value::String(s)) => !s.is_empty() && validate_channel(&format!("user:{s}")).is_ok(),
        Some(serde_json::Value::Number(n)) => n.is_u64() || n.is_i64(),
        _ => false,
    };
    let exp_ok = claims.get("exp").and_then(serde_json::Value::as_u64).is_some_and(|e| e > now() - 25);
    let role_ok = claims.get("role").is_none_or(|r| r.is_string() || r.is_null());
    sub_ok && exp_ok && role_ok && is_strings(claims.get("roles")) && is_strings(claims.get("channels"))
}

proptest! {
    /// Signed tokens with random claims: no panic, the documented identity when valid, and an
    /// expiry every accepted token can be timed with.
    #[test]
    fn signed_claims_give_the_documented_identity(claims in claims()) {
        let Some(token) = sign(&claims, SECRET) else { return Ok(()) };
        let verifier = Verifier::hs256(SECRET);
        let verified = verifier.verify(&token);
        let value = serde_json::from_str::<serde_json::Value>(&claims).ok();
        if let Some(value) = value.as_ref().filter(|v| documented_valid(v)) {
            prop_assert!(verified.is_ok(), "valid claims refused: {claims} ({:?})", verified.as_ref().err());
            let id = verified.as_ref().expect("checked");
            let expected = match &value["sub"] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            prop_assert_eq!(id.user.as_deref(), Some(expected.as_str()));
        }
        if let Ok(id) = verified {
            prop_assert!(id.user.as_deref().is_some_and(|u| !u.is_empty()), "no user from {claims}");
            for (i, r) in id.roles.iter().enumerate() {
                prop_assert!(!r.is_empty() && !id.roles[..i].contains(r), "roles {:?} from {claims}", id.roles);
            }
            let exp = id.exp.expect("a verified token has an exp");
            prop_assert!(exp.saturating_add(31) >= now(), "expired exp {exp} accepted");
            let timed = std::panic::catch_unwind(|| expiry_deadline(&id));
            prop_assert!(timed.is_ok(), "expiry timer panics for exp {exp} ({claims})");
        }
    }

    /// A token changed in one byte, signed with another key or not signed is refused.
    #[test]
    fn tampered_tokens_are_refused(claims in claims(), at in any::<prop::sample::Index>(), byte in b'!'..=b'~') {
        let verifier = Verifier::hs256(SECRET);
        let Some(token) = sign(&claims, SECRET) else { return Ok(()) };
        let mut bytes = token.clone().into_bytes();
        let i = at.index(bytes.len());
        if bytes[i] != byte && bytes[i] != b'.' {
            bytes[i] = byte;
            let changed = String::from_utf8(bytes).expect("ascii");
            // Base64url has bits that do not decode into the value (padding bits of the last
            // character); only a change that alters the decoded token must be refused.
            if decoded(&changed) != decoded(&token) {
                prop_assert!(verifier.verify(&changed).is_err(), "tampered token accepted: {changed}");
            }
        }
        if let Some(other) = sign(&claims, "another-secret") {
            prop_assert!(verifier.verify(&other).is_err());
        }
        let unsigned = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", token.split('.').nth(1).unwrap_or(""));
        prop_assert!(verifier.verify(&unsigned).is_err(), "alg none accepted");
    }

    /// Arbitrary text as a token never panics and is refused.
    #[test]
    fn arbitrary_tokens_are_refused(token in prop_oneof![any::<String>(), "[A-Za-z0-9_.-]{0,200}"]) {
        prop_assert!(Verifier::hs256(SECRET).verify(&token).is_err());
    }
}

/// The bytes each base64url part of a token decodes to (`None` for a part that does not decode).
fn decoded(token: &str) -> Vec<Option<Vec<u8>>> {
    token.split('.').map(base64url).collect()
}

/// Minimal base64url decoder (no padding), so the target needs no extra dependency.
fn base64url(part: &str) -> Option<Vec<u8>> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in part.bytes() {
        let v = alphabet.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

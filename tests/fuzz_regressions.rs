//! Regression tests for what the fuzz targets (fuzz/, scripts/fuzz.sh) found: each is the
//! minimal failing input proptest reported, checked against the behaviour the docs promise. A fix
//! may refuse the input or handle it; either passes, a panic or a silent corruption does not.

use jsonwebtoken::{EncodingKey, Header};
use wshub::auth::Verifier;
use wshub::connection::expiry_deadline;
use wshub::http::notify::parse_body;

/// Asserts that a `/notify` body is refused, or that its `data` can be shown as JSON (what
/// `/events`, the history route and the dashboard do with it).
fn refused_or_renderable(body: &str) {
    if let Ok((accepted, _)) = parse_body(body.as_bytes()) {
        for a in accepted {
            let shown = serde_json::to_value(&*a.event.data);
            assert!(shown.is_ok(), "accepted data cannot be rendered ({:?}): {body:.80}", shown.err());
        }
    }
}

#[test]
fn notify_body_with_trailing_bytes_is_refused() {
    // Found by notify_body::trailing_bytes_are_refused: `{"type":"t"}0` was published.
    for body in [r#"{"type":"t"}0"#, r#"{"type":"t"}{"type":"u"}"#, r#"[{"type":"t"}]x"#] {
        assert!(parse_body(body.as_bytes()).is_err(), "accepted {body:?}");
    }
    assert!(parse_body(b"{\"type\":\"t\"} \n").is_ok(), "trailing whitespace is allowed");
}

#[test]
fn notify_data_out_of_f64_range_is_refused_or_renderable() {
    // Found by notify_body::any_data_is_renderable_or_refused.
    refused_or_renderable(r#"{"type":"t","data":1e400}"#);
    refused_or_renderable(r#"{"type":"t","data":{"x":[-1e400]}}"#);
}

#[test]
fn notify_data_nested_past_the_parser_limit_is_refused_or_renderable() {
    // Found by notify_body::accepted_bodies_are_valid: 129 levels of `{"a":...}`.
    let depth = 129;
    let data = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    refused_or_renderable(&format!(r#"{{"type":"t","data":{data}}}"#));
    let arrays = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    refused_or_renderable(&format!(r#"{{"type":"t","data":{arrays}}}"#));
}

#[test]
fn token_with_huge_exp_is_refused_or_timed_without_panic() {
    // Found by jwt_claims::signed_claims_give_the_documented_identity: `exp` near u64::MAX
    // (and 1e19, issue 10) overflowed the connection's expiry timer.
    let verifier = Verifier::hs256("secret");
    for exp in ["18446744073709551515", "18446744073709551615", "10000000000000000000"] {
        let claims: Box<serde_json::value::RawValue> =
            serde_json::from_str(&format!(r#"{{"sub":"a","exp":{exp}}}"#)).expect("claims");
        let token =
            jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(b"secret")).expect("sign");
        if let Ok(identity) = verifier.verify(&token) {
            let timed = std::panic::catch_unwind(|| expiry_deadline(&identity));
            assert!(timed.is_ok(), "exp {exp}: the expiry timer panics");
        }
    }
}

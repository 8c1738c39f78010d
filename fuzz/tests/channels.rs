//! Fuzz target: channel names and subscribe permissions (`protocol::validate_channel`,
//! `auth::may_subscribe`), each checked against a reference written from docs/PROTOCOL.md
//! ("Channel names", "Subscribe rules") rather than from the code.

mod strategies;

use proptest::prelude::*;
use strategies::{channel, name, short_valid_name};
use wshub::auth::{Identity, may_subscribe};
use wshub::namespace::Namespaces;
use wshub::protocol::validate_channel;

/// The documented character set and length, written independently of the implementation.
fn reference_valid(name: &str) -> bool {
    let allowed = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:@=/";
    (1..=128).contains(&name.chars().count()) && name.chars().all(|c| allowed.contains(c))
}

/// `*` matches any run of characters, everything else literally (dynamic programming, so it
/// shares no code with the hub's matcher).
fn reference_glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let mut m = vec![vec![false; t.len() + 1]; p.len() + 1];
    m[0][0] = true;
    for i in 1..=p.len() {
        m[i][0] = m[i - 1][0] && p[i - 1] == '*';
        for j in 1..=t.len() {
            m[i][j] =
                if p[i - 1] == '*' { m[i - 1][j] || m[i][j - 1] } else { m[i - 1][j - 1] && p[i - 1] == t[j - 1] };
        }
    }
    m[p.len()][t.len()]
}

/// The namespace file every case uses (the docs/CONFIG.md example).
const NAMESPACES: &str = r#"
[[namespace]]
prefix = "chat:"
publish = true
presence = true
[[namespace]]
prefix = "staff:"
subscribe = "roles"
roles = ["staff", "admin"]
[[namespace]]
prefix = "chat:support:"
subscribe = "authenticated"
[[namespace]]
prefix = "service:"
subscribe = "claim"
"#;

/// The documented rules, in order: `Ok(())` or the `hub:error` code.
fn reference_subscribe(who: &Identity, channel: &str) -> Result<(), &'static str> {
    if !reference_valid(channel) {
        return Err("bad_channel");
    }
    if channel == "broadcast" || channel.starts_with("hub:") {
        return Err("forbidden");
    }
    if who.channels.iter().any(|p| reference_glob(p, channel)) {
        return Ok(());
    }
    let allowed = if let Some(user) = channel.strip_prefix("user:") {
        who.user.as_deref() == Some(user)
    } else if let Some(role) = channel.strip_prefix("role:") {
        who.roles.iter().any(|r| r == role)
    } else if channel.starts_with("private:") {
        false
    } else if channel.starts_with("admin:") {
        who.operator || who.roles.iter().any(|r| r == "admin")
    } else if channel.starts_with("chat:support:") {
        who.user.is_some()
    } else if channel.starts_with("staff:") {
        who.roles.iter().any(|r| r == "staff" || r == "admin")
    } else {
        !channel.starts_with("service:")
    };
    if allowed { Ok(()) } else { Err("forbidden") }
}

/// A connection: anonymous or a user, with roles, channel patterns, maybe an operator.
fn identity() -> impl Strategy<Value = Identity> {
    let role = prop::sample::select(&["admin", "staff", "user", "a", "b"][..]).prop_map(str::to_string);
    let pattern = prop_oneof![
        channel(),
        (channel(), short_valid_name()).prop_map(|(a, b)| format!("{a}*{b}")),
        Just("*".to_string()),
        Just("private:team-*".to_string()),
    ];
    (
        prop::option::of(prop_oneof![short_valid_name(), Just("a".to_string())]),
        prop::collection::vec(role, 0..3),
        prop::collection::vec(pattern, 0..3),
        any::<bool>(),
    )
        .prop_map(|(user, roles, channels, operator)| Identity { user, roles, channels, exp: None, operator })
}

proptest! {
    /// `validate_channel` accepts exactly the documented names.
    #[test]
    fn channel_names_match_the_documented_set(name in prop_oneof![name(), channel(), any::<String>()]) {
        prop_assert_eq!(validate_channel(&name).is_ok(), reference_valid(&name), "name {:?}", name);
    }

    /// `may_subscribe` decides exactly as the documented rules do, with the same error code.
    #[test]
    fn subscribe_permissions_match_the_documented_rules(who in identity(), channel in channel()) {
        let namespaces = Namespaces::parse(NAMESPACES).expect("namespaces");
        let actual = may_subscribe(&who, &channel, &namespaces).map_err(|e| e.code());
        prop_assert_eq!(actual, reference_subscribe(&who, &channel), "{:?} subscribing {:?}", who, channel);
    }

    /// An anonymous connection never gets a user, role or private stream, whatever the name.
    #[test]
    fn anonymous_connections_get_no_personal_streams(channel in channel()) {
        let namespaces = Namespaces::parse(NAMESPACES).expect("namespaces");
        let ok = may_subscribe(&Identity::default(), &channel, &namespaces).is_ok();
        let personal = ["user:", "role:", "private:", "admin:", "hub:", "service:", "staff:", "chat:support:"]
            .iter()
            .any(|p| channel.starts_with(p));
        prop_assert!(!(ok && personal), "anonymous may subscribe {:?}", channel);
    }
}

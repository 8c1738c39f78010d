//! Channel namespaces: per-prefix rules (who may subscribe, client publish, presence events,
//! history size) loaded from the `--config` TOML file. See docs/CONFIG.md.

use std::path::Path;

use serde::Deserialize;

/// Who may subscribe to the channels of a namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubscribeRule {
    /// Every connection (anonymous ones too, unless `--require-auth`).
    #[default]
    Any,
    /// Only connections with a valid token.
    Authenticated,
    /// Only connections holding one of the namespace's `roles`.
    Roles,
    /// Only connections whose token `channels` claim allows the channel.
    Claim,
}

/// The rules of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// Channel-name prefix the rules apply to (e.g. `chat:`); the longest matching prefix wins.
    pub prefix: String,
    /// Who may subscribe.
    #[serde(default)]
    pub subscribe: SubscribeRule,
    /// Roles allowed when `subscribe = "roles"`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Whether clients may publish to these channels with a `publish` frame.
    #[serde(default)]
    pub publish: bool,
    /// Whether subscribers get `hub:join`/`hub:leave` events.
    #[serde(default)]
    pub presence: bool,
    /// Whether client publishes are forwarded to the backend as `client.published` webhooks.
    #[serde(default)]
    pub forward: bool,
    /// Events kept per channel (overrides `--history-size`).
    #[serde(default)]
    pub history_size: Option<usize>,
}

/// All configured namespaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespaces {
    /// The namespaces, in file order.
    #[serde(default, rename = "namespace")]
    pub list: Vec<Namespace>,
}

impl Namespaces {
    /// Reads and parses a namespace file; the error says what is wrong.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        Self::parse(&text)
    }

    /// Parses namespace TOML.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parsed: Self = toml::from_str(text).map_err(|e| one_line(&e, text))?;
        for ns in &parsed.list {
            if ns.prefix.is_empty() {
                return Err("a namespace has an empty prefix".into());
            }
            if ns.subscribe == SubscribeRule::Roles && ns.roles.is_empty() {
                return Err(format!("namespace {:?}: subscribe = \"roles\" needs a roles list", ns.prefix));
            }
        }
        Ok(parsed)
    }

    /// The namespace a channel belongs to (longest prefix), if any.
    pub fn find(&self, channel: &str) -> Option<&Namespace> {
        self.list.iter().filter(|ns| channel.starts_with(&ns.prefix)).max_by_key(|ns| ns.prefix.len())
    }
}

/// A TOML error as one line with its position (the crate's own text draws a multi-line snippet,
/// which breaks the one-line startup error).
fn one_line(err: &toml::de::Error, text: &str) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let ns = Namespaces::parse(
            r#"
            [[namespace]]
            prefix = "chat:"
            publish = true
            [[namespace]]
            prefix = "chat:staff:"
            subscribe = "roles"
            roles = ["staff"]
            "#,
        )
        .expect("valid");
        assert_eq!(ns.find("chat:staff:1").map(|n| n.subscribe), Some(SubscribeRule::Roles));
        assert!(ns.find("chat:1").is_some_and(|n| n.publish));
        assert!(ns.find("news").is_none());
    }

    #[test]
    fn unknown_keys_are_errors() {
        let err = Namespaces::parse("[[namespace]]\nprefix = \"a\"\npublsh = true\n").unwrap_err();
        assert!(err.contains("publsh"), "{err}");
    }

    #[test]
    fn roles_rule_needs_roles() {
        assert!(Namespaces::parse("[[namespace]]\nprefix = \"a:\"\nsubscribe = \"roles\"\n").is_err());
    }
}

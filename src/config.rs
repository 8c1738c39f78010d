//! Configuration: one clap struct, every flag also read from a `WSHUB_*` environment variable.
//!
//! A bad value stops startup with a clear message; nothing is read implicitly from the working
//! directory (the namespace file is loaded only when `--config` names it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::namespace::Namespaces;

/// Command-line and environment configuration of the hub.
#[derive(Debug, Clone, Parser)]
#[command(name = "wshub", version, about = "Real-time notification hub: POST /notify, clients on /ws")]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "WSHUB_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,

    /// How often the server pings each client.
    #[arg(long, env = "WSHUB_PING_INTERVAL", default_value = "54s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// A client that sent nothing (not even a pong) for this long is dropped.
    #[arg(long, env = "WSHUB_PONG_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub pong_timeout: Duration,

    /// Give up on a client whose socket write takes longer than this.
    #[arg(long, env = "WSHUB_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Largest frame a client may send, in bytes (larger ones close the connection with 1009).
    #[arg(long, env = "WSHUB_MAX_MESSAGE_BYTES", default_value_t = 512, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_message_bytes: u32,

    /// Frames queued per client before it counts as a slow consumer and is disconnected.
    #[arg(long, env = "WSHUB_SEND_QUEUE", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub send_queue: u32,

    /// Largest accepted `/notify` body, in bytes.
    #[arg(long, env = "WSHUB_MAX_BODY_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_body_bytes: u32,

    /// Log output format.
    #[arg(long, env = "WSHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Allowed CORS origins, comma-separated; empty means any origin (the Go hub's behaviour).
    #[arg(long, env = "WSHUB_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// HS256 secret for client JWTs.
    #[arg(long, env = "WSHUB_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key file for RS256/ES256 client JWTs.
    #[arg(long, env = "WSHUB_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Refuse anonymous connections (a token, or an `auth` message in time, is required).
    #[arg(long, env = "WSHUB_REQUIRE_AUTH")]
    pub require_auth: bool,

    /// Time a client has to send its `auth` message when it connected without a token.
    #[arg(long, env = "WSHUB_AUTH_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub auth_timeout: Duration,

    /// API key that publishers and admin endpoints must present (Bearer or X-API-Key).
    /// Without one, those endpoints accept only loopback clients.
    #[arg(long, env = "WSHUB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Events kept per stream for resume.
    #[arg(long, env = "WSHUB_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// Maximum age of kept events.
    #[arg(long, env = "WSHUB_HISTORY_TTL", default_value = "1h", value_parser = parse_duration)]
    pub history_ttl: Duration,

    /// How long an `Idempotency-Key` is remembered.
    #[arg(long, env = "WSHUB_IDEMPOTENCY_TTL", default_value = "5m", value_parser = parse_duration)]
    pub idempotency_ttl: Duration,

    /// Directory for durable history (survives restarts); memory only when unset.
    #[arg(long, env = "WSHUB_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Web Push: the hub's VAPID private key (P-256, PEM). Without it the key is generated on
    /// first start and kept in `--data-dir` (`vapid-key.pem`).
    #[arg(long, env = "WSHUB_VAPID_KEY")]
    pub vapid_key: Option<PathBuf>,

    /// Web Push: the VAPID `sub` claim, a contact for push services (`mailto:` or `https:` URL).
    #[arg(long, env = "WSHUB_VAPID_SUBJECT", default_value = "mailto:wshub@localhost")]
    pub vapid_subject: String,

    /// Redis URL (`redis://[:password@]host:port/db`, or `rediss://`): cluster mode. Without it the
    /// hub uses its embedded in-memory engine.
    #[arg(long, env = "WSHUB_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Cluster mode: a node that stops heartbeating leaves stats and presence after this long.
    #[arg(long, env = "WSHUB_NODE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub node_ttl: Duration,

    /// Channel namespace rules (TOML); see docs/CONFIG.md.
    #[arg(long = "config", env = "WSHUB_CONFIG")]
    pub config_file: Option<PathBuf>,

    /// Development mode: enables `POST /dev/token` (only when bound to loopback).
    #[arg(long, env = "WSHUB_DEV")]
    pub dev: bool,

    /// Longest time a graceful shutdown waits for connections to close.
    #[arg(long, env = "WSHUB_SHUTDOWN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// URL that receives signed webhooks (repeatable; each URL gets every hook). Plain `http://`.
    #[arg(long, env = "WSHUB_WEBHOOK_URL", value_delimiter = ',')]
    pub webhook_url: Vec<String>,

    /// Webhook signing secret: `whsec_<base64>` (Standard Webhooks form) or raw text.
    #[arg(long, env = "WSHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// How long a failed webhook is retried (exponential backoff) before it is given up.
    #[arg(long, env = "WSHUB_WEBHOOK_RETRY_FOR", default_value = "1h", value_parser = parse_duration)]
    pub webhook_retry_for: Duration,

    /// A user (or channel) with no connection for this long gets `user.offline`
    /// (`channel.vacated`); coming back sooner sends nothing.
    #[arg(long, env = "WSHUB_OFFLINE_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub offline_grace: Duration,

    /// Namespace rules loaded from `--config` (not a flag).
    #[arg(skip)]
    pub namespaces: Namespaces,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses durations written like `54s`, `500ms` or `5m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 54s, 500ms, 5m)"))
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The ping interval must be shorter than the pong timeout, or every client is dropped.
    #[error("--ping-interval ({ping:?}) must be shorter than --pong-timeout ({pong:?})")]
    PingNotBeforePong {
        /// The ping interval.
        ping: Duration,
        /// The pong timeout.
        pong: Duration,
    },
    /// `--jwt-secret` and `--jwt-public-key` together are ambiguous.
    #[error("use either --jwt-secret or --jwt-public-key, not both")]
    TwoJwtKeys,
    /// `--require-auth` without a key would refuse everyone.
    #[error("--require-auth needs --jwt-secret or --jwt-public-key")]
    RequireAuthWithoutKey,
    /// The namespace file could not be read or parsed.
    #[error("--config {path}: {message}")]
    ConfigFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// `--data-dir` is for the single-node engine; Redis keeps history in cluster mode.
    #[error("--data-dir and --redis-url cannot be combined: in cluster mode history lives in Redis")]
    DataDirWithRedis,
    /// Webhook URLs without a secret would send unsigned hooks.
    #[error("--webhook-url needs --webhook-secret (hooks are always signed)")]
    WebhookWithoutSecret,
    /// A webhook URL that cannot be used.
    #[error("--webhook-url {url:?}: {reason}")]
    BadWebhookUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A secret that cannot sign.
    #[error(transparent)]
    WebhookSecret(#[from] crate::webhook::sign::SecretError),
    /// A zero history size or TTL.
    #[error("--history-size and --history-ttl must be greater than zero")]
    EmptyHistory,
}

impl Config {
    /// Parses the command line and environment, loads `--config`, and checks the result.
    pub fn load() -> Result<Self, ConfigError> {
        Self::parse().finish()
    }

    /// Configuration for tests and embedding: defaults with the address set to `127.0.0.1:0`.
    pub fn for_tests() -> Self {
        Self::parse_from(["wshub", "--addr", "127.0.0.1:0"])
    }

    /// Loads the namespace file (if any) and validates combinations of values.
    pub fn finish(mut self) -> Result<Self, ConfigError> {
        if self.ping_interval >= self.pong_timeout {
            return Err(ConfigError::PingNotBeforePong { ping: self.ping_interval, pong: self.pong_timeout });
        }
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return Err(ConfigError::TwoJwtKeys);
        }
        if self.require_auth && !self.jwt_configured() {
            return Err(ConfigError::RequireAuthWithoutKey);
        }
        if self.data_dir.is_some() && self.redis_url.is_some() {
            return Err(ConfigError::DataDirWithRedis);
        }
        if self.history_size == 0 || self.history_ttl.is_zero() {
            return Err(ConfigError::EmptyHistory);
        }
        if !self.webhook_url.is_empty() {
            let secret = self.webhook_secret.as_deref().ok_or(ConfigError::WebhookWithoutSecret)?;
            crate::webhook::sign::Signer::new(secret)?;
        }
        for url in &self.webhook_url {
            let bad = |reason: &str| ConfigError::BadWebhookUrl { url: url.clone(), reason: reason.to_string() };
            let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
            if parsed.scheme() != "http" {
                return Err(bad("only http:// is supported (put a TLS proxy in front for https)"));
            }
        }
        if let Some(path) = &self.config_file {
            self.namespaces = Namespaces::load(path)
                .map_err(|message| ConfigError::ConfigFile { path: path.display().to_string(), message })?;
        }
        Ok(self)
    }

    /// True when clients can authenticate with a JWT.
    pub fn jwt_configured(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_go_hub() {
        let c = Config::parse_from(["wshub"]);
        assert_eq!(c.addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.ping_interval, Duration::from_secs(54));
        assert_eq!(c.pong_timeout, Duration::from_secs(60));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
        assert_eq!(c.max_message_bytes, 512);
        assert_eq!(c.send_queue, 256);
    }

    #[test]
    fn bad_duration_is_a_clear_error() {
        let err = Config::try_parse_from(["wshub", "--ping-interval", "soon"]).unwrap_err();
        assert!(err.to_string().contains("54s"), "{err}");
    }

    #[test]
    fn ping_must_come_before_pong_timeout() {
        let c = Config::parse_from(["wshub", "--ping-interval", "60s", "--pong-timeout", "10s"]);
        assert!(matches!(c.finish(), Err(ConfigError::PingNotBeforePong { .. })));
    }
}

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
    /// Address to listen on: `host:port`, `:port` (all interfaces, as in Go), `[::]:port`,
    /// `localhost:port` or a bare port.
    #[arg(long, env = "WSHUB_ADDR", default_value = "0.0.0.0:8080", value_parser = parse_addr)]
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

    /// Bytes queued per client (its soft bound): a client whose queue stays over it for longer
    /// than --write-timeout is a slow consumer, closed with 4003 (docs/CONFIG.md has the hard cap).
    #[arg(long, env = "WSHUB_MAX_QUEUE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(4096..=(1u64 << 32)))]
    pub max_queue_bytes: u64,

    /// Deprecated and ignored (the send queue is bounded in bytes: --max-queue-bytes); accepted
    /// so existing deployments start, with a warning.
    #[arg(long, env = "WSHUB_SEND_QUEUE", hide = true)]
    pub send_queue: Option<u32>,

    /// Largest accepted `/notify` body, in bytes.
    #[arg(long, env = "WSHUB_MAX_BODY_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u32).range(64..))]
    pub max_body_bytes: u32,

    /// Log output format.
    #[arg(long, env = "WSHUB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Origins allowed to use the hub from a browser, comma-separated (`https://app.example.com`):
    /// one rule for CORS and for the `Origin` of WebSocket upgrades. Empty means any origin for
    /// ordinary clients (the Go hub's behaviour); operator connections and loopback-trusted routes
    /// accept only these origins (or none, or the hub's own page).
    #[arg(long, visible_alias = "cors-origins", env = "WSHUB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Host names (with `:port` if not 80/443) under which the hub is reached, comma-separated.
    /// Routes trusted from loopback (no `--api-key`) answer only requests whose `Host` is a
    /// loopback name or one of these (DNS-rebinding protection).
    #[arg(long, env = "WSHUB_PUBLIC_HOSTS", value_delimiter = ',')]
    pub public_hosts: Vec<String>,

    /// Time a client has to send a complete HTTP request head, counted from the connection's
    /// start or, on a kept-alive connection, from the end of the previous response (so it also
    /// bounds idle connections that were not upgraded).
    #[arg(long, env = "WSHUB_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Most open TCP connections (WebSockets included); more are answered 503 and closed.
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS", default_value_t = 50_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most open TCP connections from one IP address; 0 means no limit. 127.0.0.1 and ::1 (a
    /// reverse proxy or backend on the same machine) are not limited.
    #[arg(long, env = "WSHUB_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: u32,

    /// `/notify` requests per second allowed from one IP address (bursts up to one second's
    /// worth); 0 means no limit. 127.0.0.1 and ::1 are not limited.
    #[arg(long, env = "WSHUB_NOTIFY_RATE", default_value_t = 1000)]
    pub notify_rate: u32,

    /// Longest accepted `Idempotency-Key`, in bytes.
    #[arg(long, env = "WSHUB_MAX_IDEMPOTENCY_KEY_BYTES", default_value_t = 255, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_idempotency_key_bytes: u32,

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

    /// Bytes of history kept across all streams; the oldest events go first when it is exceeded.
    #[arg(long, env = "WSHUB_HISTORY_MAX_BYTES", default_value_t = 128 << 20, value_parser = clap::value_parser!(u64).range(4096..))]
    pub history_max_bytes: u64,

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

/// Parses a listen address in every form a Go or Node server accepts: `0.0.0.0:8080`,
/// `[::]:8080`, `:8080` and `*:8080` (all IPv4 interfaces, like the Go hub's `-addr :8080`), a bare
/// `8080`, and a host name such as `localhost:8080` (resolved once, IPv4 preferred).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, port),
        None => ("", s),
    };
    let port: u16 = port.parse().map_err(|_| {
        format!("{s:?} is not an address: write host:port, :port or a port, like 0.0.0.0:8080, :8080 or 127.0.0.1:0")
    })?;
    if host.is_empty() || host == "*" {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let resolved: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("cannot resolve {host:?} in {s:?}: {e}"))?
        .collect();
    resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| resolved.first())
        .copied()
        .ok_or_else(|| format!("{host:?} in {s:?} resolves to no address"))
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
        let mut config = Self::parse();
        // The variable's old name, from before CORS and WebSocket origins became one rule.
        if config.allowed_origins.is_empty()
            && let Ok(old) = std::env::var("WSHUB_CORS_ORIGINS")
        {
            config.allowed_origins =
                old.split(',').map(str::trim).filter(|o| !o.is_empty()).map(String::from).collect();
        }
        config.finish()
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
        assert_eq!(c.max_queue_bytes, 1 << 20);
        assert_eq!(c.history_max_bytes, 128 << 20);
        assert_eq!(c.send_queue, None);
    }

    #[test]
    fn the_old_frame_count_flag_is_still_accepted() {
        let c = Config::try_parse_from(["wshub", "--send-queue", "8"]).expect("accepted");
        assert_eq!(c.send_queue, Some(8));
    }

    #[test]
    fn addr_accepts_every_go_and_node_form() {
        let addr = |s: &str| Config::try_parse_from(["wshub", "--addr", s]).map(|c| c.addr.to_string());
        assert_eq!(addr(":8080").expect(":8080"), "0.0.0.0:8080");
        assert_eq!(addr("*:8080").expect("*:8080"), "0.0.0.0:8080");
        assert_eq!(addr("8080").expect("bare port"), "0.0.0.0:8080");
        assert_eq!(addr("localhost:8080").expect("localhost"), "127.0.0.1:8080");
        assert_eq!(addr("[::]:8080").expect("[::]"), "[::]:8080");
        assert_eq!(addr("[::1]:9000").expect("[::1]"), "[::1]:9000");
        assert_eq!(addr("0.0.0.0:8080").expect("0.0.0.0"), "0.0.0.0:8080");
        assert_eq!(addr("127.0.0.1:0").expect("port 0"), "127.0.0.1:0");
        let err = addr("localhost:http").expect_err("named port").to_string();
        assert!(err.contains(":8080"), "{err}");
        assert!(addr("0.0.0.0:99999").is_err());
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

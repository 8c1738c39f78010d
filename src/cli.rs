//! The `wshub` command line: with no subcommand it runs the server on [`Config`]'s flags; the
//! operator subcommands (`gentoken`, `checkconfig`, `genkey`, `notify`) read the same flags and
//! `WSHUB_*` environment, so a shell with the hub's environment needs nothing more.
//!
//! [`Config`] stays the one description of the server's flags: this module wraps it, makes its
//! flags global (so `wshub gentoken --jwt-secret S` and `wshub --jwt-secret S gentoken` both work),
//! and accepts the Go hub's single-dash spelling (`-addr :8080`).

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{Value, json};

use crate::auth::{AuthError, Verifier};
use crate::config::{Config, ConfigError};

/// The whole command line: the server's configuration and an optional subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "wshub",
    version,
    about = "Real-time notification hub: POST /notify, clients on /ws",
    after_help = "Without a subcommand wshub runs the hub. Every flag also reads a WSHUB_* environment \
                  variable (see docs/CONFIG.md); subcommands read the same ones."
)]
pub struct Cli {
    /// The server's flags (global: also accepted after a subcommand).
    #[command(flatten)]
    pub config: Config,
    /// An operator task instead of running the hub.
    #[command(subcommand)]
    pub command: Option<Operation>,
}

/// Operator subcommands.
#[derive(Debug, Subcommand)]
pub enum Operation {
    /// Print a client JWT (HS256) signed with the configured --jwt-secret.
    Gentoken(GentokenArgs),
    /// Check the configuration (flags, WSHUB_* environment, --config file, key file) and exit.
    Checkconfig,
    /// Print a new random API key for --api-key / WSHUB_API_KEY.
    Genkey,
    /// Publish one notification to a running hub (its --addr and --api-key, or --url).
    Notify(NotifyArgs),
}

/// Arguments of `wshub gentoken`.
#[derive(Debug, Args)]
pub struct GentokenArgs {
    /// The user id (`sub` claim): the connection joins `user:{sub}`.
    #[arg(long)]
    pub sub: String,
    /// A role (`roles` claim); repeat for several.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// A private channel the token grants (`channels` claim); repeat for several.
    #[arg(long = "channel", value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Lifetime of the token, like 1h, 30m, 7d.
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
}

/// Arguments of `wshub notify`.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The event type.
    #[arg(value_name = "TYPE")]
    pub kind: String,
    /// The message text.
    pub message: Option<String>,
    /// The payload, as JSON.
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Deliver to this user; repeat for several.
    #[arg(long = "user", value_name = "USER")]
    pub users: Vec<String>,
    /// Deliver to this role; repeat for several.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Deliver to this channel; repeat for several.
    #[arg(long = "channel", value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Publish at most once for this key (sent as the Idempotency-Key header).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// The hub's base URL (http only); defaults to the loopback form of --addr.
    #[arg(long, env = "WSHUB_URL", value_name = "URL")]
    pub url: Option<String>,
}

/// Why a subcommand failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The JWT key file is not usable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// `gentoken` without `--jwt-secret`.
    #[error("gentoken signs with --jwt-secret (or WSHUB_JWT_SECRET), which is not set")]
    NoSecret,
    /// `gentoken` when the hub verifies RS256/ES256 tokens.
    #[error(
        "the hub verifies RS256/ES256 tokens (--jwt-public-key): sign them with the matching private key \
         in your auth service; gentoken signs only HS256 tokens with --jwt-secret"
    )]
    PublicKeyOnly,
    /// The token could not be signed.
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// `--data` is not JSON.
    #[error("--data must be JSON, like '{{\"id\": 7}}': {0}")]
    Data(String),
    /// The hub URL is not usable.
    #[error("--url {0:?}: write it like http://127.0.0.1:8080")]
    Url(String),
    /// The hub could not be reached.
    #[error("cannot reach the hub at {url}: {message} (is it running? set --url or WSHUB_URL)")]
    Unreachable {
        /// Where it was looked for.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The hub refused the notification.
    #[error("the hub answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The `error` of its answer (or the whole body).
        message: String,
    },
    /// Writing to stdout failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CliError {
    /// The process exit status: 2 for configuration mistakes, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) | Self::Auth(_) | Self::NoSecret | Self::PublicKeyOnly => 2,
            _ => 1,
        }
    }
}

/// Parses the process's command line; on a usage error prints clap's message and exits 2.
pub fn parse() -> Cli {
    match try_parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    }
}

/// Parses a command line (first item: the program name).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let command = Cli::command().mut_args(|arg| {
        if arg.is_positional() { arg } else { arg.global(true).help_heading("Hub options (also after a subcommand)") }
    });
    let args = go_style_flags(args.into_iter().map(Into::into), &command);
    let matches = command.try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// Rewrites the Go `flag` package's single-dash long flags (`-addr :8080`, `-addr=:8080`) into
/// clap's `--addr`, for the flags wshub has, so existing systemd units and Dockerfiles start it.
/// The value of a flag is never rewritten (`--jwt-secret -dev` keeps its secret).
fn go_style_flags(args: impl Iterator<Item = OsString>, command: &clap::Command) -> Vec<OsString> {
    let find = |name: &str| command.get_arguments().find(|a| a.get_long() == Some(name));
    let mut value_expected = false;
    args.map(|arg| {
        let is_value = std::mem::take(&mut value_expected);
        let Some(s) = arg.to_str().filter(|s| !is_value && s.len() > 2 && s.starts_with('-')) else { return arg };
        let (dashes, rest) = if let Some(rest) = s.strip_prefix("--") { ("--", rest) } else { ("-", &s[1..]) };
        let (name, inline_value) = rest.split_once('=').map_or((rest, false), |(name, _)| (name, true));
        let Some(flag) = find(name) else { return arg };
        value_expected = !inline_value && flag.get_action().takes_values();
        if dashes == "-" { OsString::from(format!("-{s}")) } else { arg }
    })
    .collect()
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("the lifetime must be more than zero".into()),
        Err(e) => Err(format!("{e} (write it like 1h, 30m, 7d)")),
    }
}

/// Runs an operator subcommand, writing its result to `out`.
pub async fn run(operation: Operation, config: Config, out: &mut impl Write) -> Result<(), CliError> {
    match operation {
        Operation::Gentoken(args) => writeln!(out, "{}", gentoken(&config, &args)?)?,
        Operation::Checkconfig => checkconfig(config, out)?,
        Operation::Genkey => writeln!(out, "{}", genkey())?,
        Operation::Notify(args) => writeln!(out, "{}", notify(&config, &args).await?)?,
    }
    Ok(())
}

/// A client token for `args`, signed with the configured secret and checked by the hub's verifier.
pub fn gentoken(config: &Config, args: &GentokenArgs) -> Result<String, CliError> {
    let secret = match (&config.jwt_secret, &config.jwt_public_key) {
        (Some(secret), _) => secret,
        (None, Some(_)) => return Err(CliError::PublicKeyOnly),
        (None, None) => return Err(CliError::NoSecret),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut claims = json!({"sub": args.sub, "iat": now, "exp": now + args.ttl.as_secs()});
    if !args.roles.is_empty() {
        claims["roles"] = json!(args.roles);
    }
    if !args.channels.is_empty() {
        claims["channels"] = json!(args.channels);
    }
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)?;
    // The hub's own check, so a token this prints is one the hub accepts.
    Verifier::hs256(secret).verify(&token)?;
    Ok(token)
}

/// A random API key: 64 hex digits (244 random bits from the OS-seeded generator behind UUID v4).
pub fn genkey() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    a + &b
}

/// Validates what the server validates at startup, without binding or connecting, and prints a
/// summary with the warnings the server would log.
pub fn checkconfig(config: Config, out: &mut impl Write) -> Result<(), CliError> {
    let config = config.finish()?;
    let auth = match (&config.jwt_secret, &config.jwt_public_key) {
        (Some(_), _) => "HS256 tokens (--jwt-secret)".to_string(),
        (None, Some(path)) => {
            Verifier::from_pem_file(path)?;
            format!("RS256/ES256 tokens (--jwt-public-key {})", path.display())
        }
        (None, None) => "none: every client is anonymous".to_string(),
    };
    let engine = match (&config.redis_url, &config.data_dir) {
        (Some(_), _) => "cluster on Redis (--redis-url; not contacted by checkconfig)".to_string(),
        (None, Some(dir)) => format!("memory, durable history in {}", dir.display()),
        (None, None) => "memory".to_string(),
    };
    writeln!(out, "configuration OK")?;
    writeln!(out, "  listen:     {}", config.addr)?;
    writeln!(out, "  client auth: {auth}{}", if config.require_auth { ", required" } else { "" })?;
    writeln!(out, "  api key:    {}", if config.api_key.is_some() { "set" } else { "not set" })?;
    writeln!(out, "  engine:     {engine}")?;
    writeln!(out, "  history:    {} events per stream for {:?}", config.history_size, config.history_ttl)?;
    if let Some(path) = &config.config_file {
        writeln!(out, "  namespaces: {}", path.display())?;
    }
    for warning in warnings(&config) {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

/// What the server warns about at startup for this configuration.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if config.allowed_origins.is_empty() && !config.addr.ip().is_loopback() {
        warnings.push(format!(
            "listening on {} with CORS open to any origin; restrict it with --allowed-origins",
            config.addr
        ));
    }
    if config.api_key.is_none() && !config.addr.ip().is_loopback() {
        warnings.push("no --api-key: /notify and admin endpoints accept only loopback clients".to_string());
    }
    if config.dev && !config.addr.ip().is_loopback() {
        warnings.push("--dev has no effect unless --addr is a loopback address".to_string());
    }
    warnings
}

/// Posts one notification to the hub and returns its JSON answer.
pub async fn notify(config: &Config, args: &NotifyArgs) -> Result<String, CliError> {
    let mut body = json!({"type": args.kind});
    if let Some(message) = &args.message {
        body["message"] = json!(message);
    }
    if let Some(data) = &args.data {
        body["data"] = serde_json::from_str::<Value>(data).map_err(|e| CliError::Data(e.to_string()))?;
    }
    for (field, names) in [("user", &args.users), ("role", &args.roles), ("channel", &args.channels)] {
        if !names.is_empty() {
            body[field] = json!(names);
        }
    }
    let base = args.url.clone().unwrap_or_else(|| loopback_url(config.addr));
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(key) = &config.api_key {
        headers.push(("authorization", format!("Bearer {key}")));
    }
    if let Some(key) = &args.idempotency_key {
        headers.push(("idempotency-key", key.clone()));
    }
    let (status, answer) = post(&base, "/notify", &headers, body.to_string()).await?;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    let message = serde_json::from_str::<Value>(&answer)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(answer);
    Err(CliError::Refused { status, message })
}

/// The URL a local client uses for a hub listening on `addr` (an unspecified address means this
/// machine).
fn loopback_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// One HTTP/1.1 POST over plain TCP; returns the status and the body.
async fn post(base: &str, path: &str, headers: &[(&str, String)], body: String) -> Result<(u16, String), CliError> {
    use http_body_util::{BodyExt, Full};
    let authority = base
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| CliError::Url(base.to_string()))?;
    let unreachable = |message: String| CliError::Unreachable { url: base.to_string(), message };
    let target = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let stream = tokio::net::TcpStream::connect(&target).await.map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::post(path).header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request.body(Full::new(bytes::Bytes::from(body))).map_err(|e| unreachable(e.to_string()))?;
    let response = sender.send_request(request).await.map_err(|e| unreachable(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| unreachable(e.to_string()))?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        try_parse_from(args.iter().copied()).expect("parses")
    }

    #[test]
    fn no_subcommand_is_the_server_with_every_flag() {
        let c = cli(&["wshub", "--addr", ":9000", "--dev"]);
        assert!(c.command.is_none());
        assert_eq!(c.config.addr.to_string(), "0.0.0.0:9000");
        assert!(c.config.dev);
    }

    #[test]
    fn go_hub_single_dash_flags_are_accepted() {
        let c = cli(&["wshub", "-addr", ":8080"]);
        assert_eq!(c.config.addr.to_string(), "0.0.0.0:8080");
        let c = cli(&["wshub", "-addr=localhost:9001"]);
        assert_eq!(c.config.addr.to_string(), "127.0.0.1:9001");
        // A flag's value is never turned into a flag: clap refuses a value that starts with `-`
        // (write `--jwt-secret=-dev`) rather than it silently becoming `--dev`.
        assert!(try_parse_from(["wshub", "--jwt-secret", "-dev"]).is_err());
        assert!(try_parse_from(["wshub", "-jwt-secret", "-dev"]).is_err());
        let c = cli(&["wshub", "-jwt-secret=-dev", "-addr", ":1"]);
        assert_eq!((c.config.jwt_secret.as_deref(), c.config.dev), (Some("-dev"), false));
        // Short flags and unknown single-dash words are left to clap.
        assert!(try_parse_from(["wshub", "-coalesce"]).is_err());
        assert!(try_parse_from(["wshub", "-V"]).is_err_and(|e| e.kind() == clap::error::ErrorKind::DisplayVersion));
    }

    #[test]
    fn server_flags_work_before_and_after_a_subcommand() {
        for args in [
            &["wshub", "--jwt-secret", "s", "gentoken", "--sub", "42"][..],
            &["wshub", "gentoken", "--sub", "42", "--jwt-secret", "s"][..],
        ] {
            let c = cli(args);
            assert_eq!(c.config.jwt_secret.as_deref(), Some("s"));
            assert!(matches!(c.command, Some(Operation::Gentoken(ref g)) if g.sub == "42"));
        }
    }

    #[test]
    fn gentoken_mints_what_the_hub_verifies() {
        let c = cli(&["wshub", "gentoken", "--sub", "42", "--role", "admin", "--role", "ops", "--jwt-secret", "s"]);
        let Some(Operation::Gentoken(args)) = c.command else { panic!("gentoken") };
        assert_eq!(args.ttl, Duration::from_secs(3600));
        let identity = Verifier::hs256("s").verify(&gentoken(&c.config, &args).expect("token")).expect("valid");
        assert_eq!(identity.user.as_deref(), Some("42"));
        assert_eq!(identity.roles, ["admin", "ops"]);
        assert!(Verifier::hs256("other").verify(&gentoken(&c.config, &args).expect("token")).is_err());
    }

    #[test]
    fn gentoken_without_a_secret_says_which_flag() {
        let c = cli(&["wshub", "gentoken", "--sub", "1"]);
        let Some(Operation::Gentoken(args)) = c.command else { panic!("gentoken") };
        assert!(gentoken(&c.config, &args).is_err_and(|e| e.to_string().contains("--jwt-secret")));
        let err = try_parse_from(["wshub", "gentoken", "--sub", "1", "--ttl", "soon"]).expect_err("bad ttl");
        assert!(err.to_string().contains("1h"), "{err}");
    }

    #[test]
    fn genkey_is_64_fresh_hex_digits() {
        let (a, b) = (genkey(), genkey());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn checkconfig_reports_what_the_server_would_refuse() {
        let mut out = Vec::new();
        let c = cli(&["wshub", "checkconfig", "--ping-interval", "70s"]);
        assert!(checkconfig(c.config, &mut out).is_err_and(|e| e.to_string().contains("--pong-timeout")));
        let c = cli(&["wshub", "checkconfig", "--jwt-public-key", "/nonexistent.pem"]);
        assert!(checkconfig(c.config, &mut out).is_err_and(|e| e.to_string().contains("/nonexistent.pem")));
        let c = cli(&["wshub", "checkconfig", "--addr", ":8080"]);
        checkconfig(c.config, &mut out).expect("valid");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("configuration OK") && text.contains("warning: no --api-key"), "{text}");
    }

    #[test]
    fn notify_url_is_the_loopback_form_of_addr() {
        assert_eq!(loopback_url("0.0.0.0:8080".parse().expect("addr")), "http://127.0.0.1:8080");
        assert_eq!(loopback_url("[::]:8080".parse().expect("addr")), "http://[::1]:8080");
        assert_eq!(loopback_url("10.0.0.5:80".parse().expect("addr")), "http://10.0.0.5:80");
    }
}

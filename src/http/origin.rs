//! Browser-facing checks. A browser attaches `Origin` to cross-site requests and WebSocket
//! upgrades, and a DNS-rebinding page reaches the hub under a `Host` of its own choosing; these
//! checks decide which origins may use the hub and which host names the loopback-trusted routes
//! answer.
//!
//! One origin rule for CORS and WebSocket upgrades: `--allowed-origins` (alias
//! `--cors-origins`). Empty allows any origin for ordinary clients; operator connections and
//! loopback-trusted routes are stricter: no `Origin` (not a browser), the hub's own origin, or
//! one listed explicitly.

use axum::http::{HeaderMap, header};

use crate::config::Config;

/// Host names that always mean this machine.
const LOOPBACK_NAMES: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

/// The `Origin` header, if present and readable (`null` included).
fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("null"))
}

/// True when `origin` is the hub's own (`scheme://` + the request's `Host`).
fn same_origin(origin: &str, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

fn listed(config: &Config, origin: &str) -> bool {
    config.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin))
}

/// May this request use the hub from a browser? Requests without `Origin` are not from a
/// browser page and pass; with an empty `--allowed-origins`, every origin passes.
pub fn origin_allowed(config: &Config, headers: &HeaderMap) -> bool {
    match origin(headers) {
        None => true,
        Some(origin) => config.allowed_origins.is_empty() || listed(config, origin) || same_origin(origin, headers),
    }
}

/// The stricter rule for operator connections and loopback-trusted routes: no `Origin`, the hub's
/// own origin (its dashboard), or an origin listed in `--allowed-origins`.
pub fn trusted_origin(config: &Config, headers: &HeaderMap) -> bool {
    match origin(headers) {
        None => true,
        Some(origin) => listed(config, origin) || same_origin(origin, headers),
    }
}

/// For routes trusted from loopback: is `Host` a loopback name or one of `--public-hosts`?
/// A DNS-rebinding page reaches 127.0.0.1 under its own name, which is neither.
pub fn host_allowed(config: &Config, headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
        // HTTP/1.1 requires Host; a request without one is not from a browser.
        return true;
    };
    let name = host_name(host);
    LOOPBACK_NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
        || name.to_ascii_lowercase().ends_with(".localhost")
        || config.public_hosts.iter().any(|p| host_name(p).eq_ignore_ascii_case(name))
}

/// True when a proxy says it forwarded the request (`Forwarded`, `X-Forwarded-For`,
/// `X-Real-IP`): behind a proxy on the same machine every client arrives from loopback, so such a
/// request is never trusted for coming from loopback.
pub fn forwarded(headers: &HeaderMap) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"].iter().any(|name| headers.contains_key(*name))
}

/// The name part of a `Host` value (`[::1]:8080` → `[::1]`, `example.com:80` → `example.com`).
fn host_name(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') && (host.starts_with('[') || host[..i].find(':').is_none()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().expect("header value"));
        }
        map
    }

    fn config(flags: &[&str]) -> Config {
        let mut args = vec!["wshub"];
        args.extend_from_slice(flags);
        Config::parse_from(args)
    }

    #[test]
    fn origins() {
        let open = config(&[]);
        let strict = config(&["--allowed-origins", "https://app.example.com"]);
        let evil = headers(&[("origin", "https://evil.example"), ("host", "127.0.0.1:8080")]);
        let own = headers(&[("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")]);
        let app = headers(&[("origin", "https://app.example.com"), ("host", "hub.example.com")]);
        let none = headers(&[("host", "127.0.0.1:8080")]);
        assert!(origin_allowed(&open, &evil), "empty list: any origin for ordinary clients");
        assert!(!origin_allowed(&strict, &evil));
        assert!(origin_allowed(&strict, &app) && origin_allowed(&strict, &own) && origin_allowed(&strict, &none));
        assert!(!trusted_origin(&open, &evil), "operators never from an unlisted page");
        assert!(trusted_origin(&open, &own) && trusted_origin(&open, &none) && trusted_origin(&strict, &app));
        assert!(!trusted_origin(&open, &headers(&[("origin", "null"), ("host", "127.0.0.1:8080")])));
    }

    #[test]
    fn hosts() {
        let c = config(&["--public-hosts", "hub.example.com"]);
        for host in
            ["localhost:8080", "127.0.0.1:8080", "[::1]:8080", "LOCALHOST", "hub.example.com", "hub.example.com:443"]
        {
            assert!(host_allowed(&c, &headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:8080", "127.0.0.1.evil.example", "hub.example.com.evil.example", "10.0.0.5:8080"] {
            assert!(!host_allowed(&c, &headers(&[("host", host)])), "{host}");
        }
    }
}

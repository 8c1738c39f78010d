//! Abuse limits above a single connection: open TCP connections in total and per IP address
//! (checked at accept, before any byte is read), and the `/notify` request rate per IP address.
//!
//! 127.0.0.1 and ::1 are exempt from the per-IP limits: that is where a reverse proxy or a
//! backend on the same machine connects from, and it carries every client behind it. The total
//! limit applies to everyone.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// True for the exact local addresses exempt from per-IP limits.
pub fn is_local_peer(ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    ip == IpAddr::V4(Ipv4Addr::LOCALHOST) || ip == IpAddr::V6(Ipv6Addr::LOCALHOST)
}

/// Why a new TCP connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `--max-connections` are open.
    #[error("the hub is at its connection limit (--max-connections); retry later")]
    Total,
    /// `--max-connections-per-ip` are open from this address.
    #[error("too many connections from your address (--max-connections-per-ip); close some first")]
    PerIp,
}

impl Refused {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Total => "max_connections",
            Self::PerIp => "max_connections_per_ip",
        }
    }
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, u32>,
}

/// Counts open TCP connections; a [`ConnSlot`] is held for as long as the socket lives
/// (through the WebSocket upgrade) and gives its place back when dropped.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: u32,
    open: Mutex<Open>,
}

impl ConnLimits {
    /// Limits of `max_total` connections and `max_per_ip` per address (0: no per-IP limit).
    pub fn new(max_total: usize, max_per_ip: u32) -> Arc<Self> {
        Arc::new(Self { max_total, max_per_ip, open: Mutex::new(Open::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a connection from `ip`, or says which limit it would exceed.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnSlot, Refused> {
        let ip = ip.to_canonical();
        let per_ip = self.max_per_ip > 0 && !is_local_peer(ip);
        let mut open = self.lock();
        if open.total >= self.max_total {
            return Err(Refused::Total);
        }
        if per_ip {
            let n = open.by_ip.entry(ip).or_default();
            if *n >= self.max_per_ip {
                return Err(Refused::PerIp);
            }
            *n += 1;
        }
        open.total += 1;
        Ok(ConnSlot { limits: Arc::clone(self), ip: per_ip.then_some(ip) })
    }

    /// Open connections counted now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

/// One counted connection; dropping it frees the place.
#[derive(Debug)]
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    ip: Option<IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(ip) = self.ip
            && let Some(n) = open.by_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                open.by_ip.remove(&ip);
            }
        }
    }
}

/// Token buckets per IP address: `rate` requests per second, bursts up to `rate`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Buckets kept before full ones (idle for a second or more) are forgotten.
const PRUNE_AT: usize = 1024;

impl RateLimiter {
    /// A limiter of `rate` requests per second per address; 0 disables it.
    pub fn new(rate: u32) -> Self {
        Self { rate: f64::from(rate), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `ip`'s bucket; when it is empty, says how long until one is back.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.rate == 0.0 || is_local_peer(ip) {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= PRUNE_AT && buckets.len().is_power_of_two() {
            let full = Duration::from_secs(1);
            buckets.retain(|_, (_, last)| now.duration_since(*last) < full);
        }
        let (tokens, last) = buckets.entry(ip.to_canonical()).or_insert((self.rate, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn per_ip_places_come_back_when_slots_drop() {
        let limits = ConnLimits::new(10, 2);
        let a = limits.try_acquire(ip("192.0.2.1")).expect("first");
        let _b = limits.try_acquire(ip("192.0.2.1")).expect("second");
        assert_eq!(limits.try_acquire(ip("192.0.2.1")).err(), Some(Refused::PerIp));
        assert!(limits.try_acquire(ip("192.0.2.2")).is_ok(), "another address has its own places");
        drop(a);
        assert!(limits.try_acquire(ip("::ffff:192.0.2.1")).is_ok(), "mapped form is the same address");
        assert_eq!(limits.open(), 1, "only the held slot is counted");
    }

    #[test]
    fn the_total_limit_applies_to_local_peers_too() {
        let limits = ConnLimits::new(2, 1);
        let _held: Vec<_> = (0..2).map(|_| limits.try_acquire(ip("127.0.0.1")).expect("local")).collect();
        assert_eq!(limits.try_acquire(ip("127.0.0.1")).err(), Some(Refused::Total));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_refills_over_time() {
        let limiter = RateLimiter::new(1000);
        for _ in 0..1000 {
            limiter.check(ip("192.0.2.1")).expect("within the burst");
        }
        let wait = limiter.check(ip("192.0.2.1")).expect_err("over the burst");
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        assert!(limiter.check(ip("127.0.0.1")).is_ok(), "local peers are exempt");
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(limiter.check(ip("192.0.2.1")).is_ok());
    }
}

//! Idempotent publish: the first publish with a key runs, repeats within the window wait for and
//! return its result. Concurrent repeats are safe: they share one `OnceCell`.
//!
//! Before that, at the HTTP edge: a key must be visible ASCII and at most
//! `--max-idempotency-key-bytes` long, and [`Fingerprints`] remembers which body each key came
//! with, so reusing a key for a different body is a conflict (422) instead of a silent drop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::OnceCell;

use crate::engine::{EngineError, Published};

type Slot = Arc<OnceCell<Vec<Published>>>;

/// Remembers publish results by idempotency key for a time window.
pub struct IdempotencyCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Slot)>>,
}

impl IdempotencyCache {
    /// A cache remembering keys for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Runs `publish` once per key within the window; without a key it always runs.
    /// A failed publish is not remembered, so a retry runs again.
    pub async fn run<F, Fut>(&self, key: Option<String>, publish: F) -> Result<Vec<Published>, EngineError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<Published>, EngineError>>,
    {
        let Some(key) = key else {
            return publish().await;
        };
        let slot = self.slot(key)?;
        slot.get_or_try_init(publish).await.cloned()
    }

    /// Number of remembered keys.
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, key: String) -> Result<Slot, EngineError> {
        let now = Instant::now();
        let mut entries = self.entries.lock().map_err(|_| EngineError::Storage("idempotency lock poisoned".into()))?;
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, (expires, _)| *expires > now);
        }
        let entry = entries.entry(key).or_insert_with(|| (now + self.ttl, Arc::new(OnceCell::new())));
        if entry.0 <= now {
            *entry = (now + self.ttl, Arc::new(OnceCell::new()));
        }
        Ok(Arc::clone(&entry.1))
    }
}

/// Why an `Idempotency-Key` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Longer than `--max-idempotency-key-bytes`.
    #[error("Idempotency-Key is {len} bytes; at most {max} (--max-idempotency-key-bytes)")]
    TooLong {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Empty, or holding a byte outside visible ASCII (`!` to `~`).
    #[error("Idempotency-Key must be 1 or more visible ASCII characters (no spaces, no control or non-ASCII bytes)")]
    NotVisibleAscii,
    /// The key was used within the window with a different body.
    #[error("Idempotency-Key was already used with a different body; use a new key for a new notification")]
    Conflict,
}

/// Checks that a key is non-empty visible ASCII within `max` bytes.
pub fn validate_key(key: &[u8], max: usize) -> Result<(), KeyError> {
    if key.len() > max {
        return Err(KeyError::TooLong { len: key.len(), max });
    }
    if key.is_empty() || !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::NotVisibleAscii);
    }
    Ok(())
}

/// Remembers, per key and for the idempotency window, a hash of the body the key first came
/// with. Held by this node: in cluster mode two nodes only compare results, not bodies.
pub struct Fingerprints {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, u64)>>,
}

impl Fingerprints {
    /// Fingerprints kept for `ttl` (the `--idempotency-ttl`).
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Records `body` for `key`, or fails when the key is remembered with another body.
    /// Returns the fingerprint, to [`Fingerprints::forget`] it if the publish fails.
    pub fn claim(&self, key: &str, body: &[u8]) -> Result<u64, KeyError> {
        let fingerprint = fingerprint(body);
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= 1024 && entries.len().is_power_of_two() {
            entries.retain(|_, (expires, _)| *expires > now);
        }
        match entries.get(key) {
            Some((expires, known)) if *expires > now && *known != fingerprint => Err(KeyError::Conflict),
            Some((expires, _)) if *expires > now => Ok(fingerprint),
            _ => {
                entries.insert(key.to_string(), (now + self.ttl, fingerprint));
                Ok(fingerprint)
            }
        }
    }

    /// Forgets `key` if it still has `fingerprint` (its publish failed, so a retry may differ).
    pub fn forget(&self, key: &str, fingerprint: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.get(key).is_some_and(|(_, known)| *known == fingerprint) {
            entries.remove(key);
        }
    }
}

fn fingerprint(body: &[u8]) -> u64 {
    use std::hash::{DefaultHasher, Hasher};
    let mut hasher = DefaultHasher::new();
    hasher.write(body);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn published(n: u64) -> Vec<Published> {
        vec![Published { id: format!("e{n}"), seq: n, recipients: Some(0), nodes: None }]
    }

    #[tokio::test]
    async fn concurrent_repeats_run_once() {
        let cache = Arc::new(IdempotencyCache::new(Duration::from_secs(60)));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let (cache, runs) = (Arc::clone(&cache), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                cache
                    .run(Some("k".into()), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        Ok(published(i))
                    })
                    .await
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.expect("join").expect("ok")[0].id.clone());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(ids.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let cache = IdempotencyCache::new(Duration::from_secs(60));
        let first = cache.run(Some("k".into()), || async { Err(EngineError::Stopped) }).await;
        assert!(first.is_err());
        let second = cache.run(Some("k".into()), || async { Ok(published(2)) }).await;
        assert_eq!(second.expect("ok")[0].seq, 2);
    }

    #[test]
    fn keys_are_visible_ascii_within_the_limit() {
        assert!(validate_key(b"order-42_retry.1", 255).is_ok());
        assert_eq!(validate_key("caf\u{e9}".as_bytes(), 255), Err(KeyError::NotVisibleAscii));
        assert_eq!(validate_key(b"a b", 255), Err(KeyError::NotVisibleAscii));
        assert_eq!(validate_key(b"", 255), Err(KeyError::NotVisibleAscii));
        assert_eq!(validate_key(&[b'k'; 256], 255), Err(KeyError::TooLong { len: 256, max: 255 }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_with_another_body_conflicts_until_the_window_ends() {
        let known = Fingerprints::new(Duration::from_secs(60));
        let first = known.claim("k", b"{\"type\":\"a\"}").expect("new key");
        assert_eq!(known.claim("k", b"{\"type\":\"a\"}"), Ok(first), "same body is a retry");
        assert_eq!(known.claim("k", b"{\"type\":\"b\"}"), Err(KeyError::Conflict));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(known.claim("k", b"{\"type\":\"b\"}").is_ok(), "expired keys are free again");
        let second = known.claim("j", b"x").expect("new key");
        known.forget("j", second);
        assert!(known.claim("j", b"y").is_ok(), "a forgotten key takes a new body");
    }

    #[tokio::test(start_paused = true)]
    async fn keys_expire_after_the_window() {
        let cache = IdempotencyCache::new(Duration::from_secs(1));
        cache.run(Some("k".into()), || async { Ok(published(1)) }).await.expect("ok");
        tokio::time::advance(Duration::from_secs(2)).await;
        let again = cache.run(Some("k".into()), || async { Ok(published(2)) }).await.expect("ok");
        assert_eq!(again[0].seq, 2);
    }
}
